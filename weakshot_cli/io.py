"""Reading users' text and JSON files, and atomic file writes: a file that cannot be read or parsed, or a failed
write (disk full, no permission), is a one-line error naming the file, and a crash never leaves a half-written
file where a good one is expected."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from weakshot_cli.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def read_text(path: Path, what: str, missing: str = "file not found") -> str:
    """The file's text (UTF-8; a leading BOM, as Notepad writes, is dropped); ``what`` names the file in errors,
    ``missing`` is the error for a file that is not there."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(missing, path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} ({e.__class__.__name__})", path) from None


def read_json(path: Path, what: str, missing: str = "file not found") -> Any:
    """The file's JSON value (see read_text); what the value must hold is the caller's to check."""
    text = read_text(path, what, missing)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer too long to convert, or deep nesting
        raise UserError(f"invalid JSON in {what} ({str(e).splitlines()[0][:80]})", path) from None


class WriteError(UserError):
    """A file could not be written; ``reason`` is the system's word for why (e.g. 'No space left on device')."""

    def __init__(self, reason: str, path: Path):
        self.reason = reason
        super().__init__(f"cannot write ({reason})", path)


TMP_SUFFIX = ".tmp"


def append_line(path: Path, line: str) -> None:
    """Append one line to a log; a failed write is a WriteError naming the file, as for atomic writes."""
    try:
        with path.open("a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise WriteError(e.strerror or e.__class__.__name__, path) from None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place. A process killed
    mid-write can leave a ``.NAME.*.tmp`` file beside ``path`` (see folders.remove_interrupted_writes), never a
    half-written ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give what a plain open() would
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteError(e.strerror or str(e) or e.__class__.__name__, path) from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any, allow_nan: bool = True) -> Path:
    """Streamed to the file, never held as one string: a manifest or COCO file of 100k images stays out of memory.
    ``allow_nan=False`` refuses NaN and infinities (a ValueError), which strict JSON readers reject: for files
    scripts read, after ``finite_or_null``."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, allow_nan=allow_nan)
            f.write("\n")
    return atomic_write(path, write)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float, in nested dicts and lists too, replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def write_label_png(path: str | Path, label: np.ndarray, palette: list[int] | None = None) -> Path:
    """Save a uint8 index map losslessly; with a palette it becomes a 'P' PNG (VOC style)."""
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    if palette is not None:
        img.putpalette(palette)  # an 'L' image becomes 'P' with its indices unchanged
    return atomic_write(path, lambda p: img.save(p, format="PNG"))
