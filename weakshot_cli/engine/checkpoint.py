"""Checkpoints: one torch.save of plain containers and tensors, loadable with weights_only=True.

This module owns the format. Every checkpoint holds the weights state (best.pt holds only that): the network and
what rebuilds and labels it; last.pt adds the training state that --resume continues from exactly.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from weakshot_cli import __version__
from weakshot_cli.engine.config import ARCH_KEYS, TrainConfig
from weakshot_cli.engine.visualise import default_palette
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write


def weights_state(model: nn.Module, cfg: TrainConfig, classes: list[str], base: list[int], novel: list[int], *,
                  iteration: int, best: float | None, best_iter: int | None, stage: str) -> dict:
    """The network with its config and class list (which alone fix its shape: see model_from_checkpoint), the
    class split and palette its outputs use, and where in its run it was saved."""
    return {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes, "base": base, "novel": novel,
            "palette": default_palette(len(classes)), "iter": iteration, "best": best, "best_iter": best_iter,
            "stage": stage}


def training_state(criterion: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                   device: torch.device) -> dict:
    """What --resume needs besides the weights to go on as if never stopped: the criterion's buffers (SimNet's
    pair balance), optimiser, schedule, grad scaler and random state."""
    return {"criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}


def load_training_state(ckpt: dict, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                        device: torch.device) -> None:
    """The reverse of training_state, random state included."""
    criterion.load_state_dict(ckpt["criterion"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)


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
