"""Checkpoints: one torch.save of plain containers and tensors, loadable with weights_only=True."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from weakshot_cli import __version__
from weakshot_cli.engine.config import ARCH_KEYS
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write


def save_checkpoint(path: Path, state: dict) -> Path:
    def save(tmp: Path) -> None:
        try:
            torch.save({**state, "version": __version__}, tmp)
        except RuntimeError as e:  # torch reports a short write (disk full, file-size limit) as a RuntimeError
            raise OSError(f"torch.save failed, is the disk full? ({str(e).strip()[:160]})") from None

    return atomic_write(path, save)


def load_checkpoint(path: str | Path) -> dict:
    """Load safely: ``weights_only=True`` refuses anything that could run code while unpickling."""
    path = Path(path)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("checkpoint not found", path) from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"not a weakshot checkpoint or refused as unsafe ({first[:160]})", path) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt or "classes" not in ckpt:
        raise UserError("not a weakshot checkpoint (missing model, config or classes)", path)
    classes, config = ckpt["classes"], ckpt["config"]
    if not isinstance(ckpt["model"], dict) or not isinstance(config, dict) or not isinstance(classes, list) \
            or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError("not a weakshot checkpoint (model, config or classes of the wrong type)", path)
    missing = [k for k in (*ARCH_KEYS, "imgsz") if k not in config]
    if missing:
        raise UserError(f"not a weakshot checkpoint (its config lacks {', '.join(missing)})", path)
    return ckpt
