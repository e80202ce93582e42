"""Reading label PNGs in the conventions practitioners bring, into weakshot's ids (255 = ignore)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from weakshot_cli.errors import UserError

IGNORE = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png",)
MAX_PIXELS = 100_000_000  # beyond this an image is treated as a decompression bomb

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class LabelConvention:
    """How source label values become class ids: ``label_map`` first, else reduce-zero, else identity.

    Source values equal to ``ignore_index`` become 255; with a label map, values it does not list
    become 255 too (the Cityscapes labelIds -> trainIds rule).
    """

    ignore_index: int = IGNORE
    reduce_zero_label: bool = False
    label_map: dict[int, int] | None = field(default=None, hash=False)

    def lut(self) -> np.ndarray:
        lut = np.arange(256, dtype=np.int64)
        if self.label_map is not None:
            lut[:] = IGNORE
            for src, dst in self.label_map.items():
                lut[src] = dst
        elif self.reduce_zero_label:
            lut = lut - 1
            lut[0] = IGNORE
        lut[self.ignore_index] = IGNORE
        return lut

    def as_dict(self) -> dict:
        return {
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "label_map": None if self.label_map is None else {str(k): v for k, v in self.label_map.items()},
        }


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line; line i is class id i. Blank lines at the end are dropped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read class names ({e.__class__.__name__})", path) from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise UserError("no class names (expected one name per line)", path)
    if "" in names:
        raise UserError(f"blank class name on line {names.index('') + 1}", path)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"duplicate class names: {', '.join(dupes)}", path)
    if len(names) > 255:
        raise UserError(f"{len(names)} classes; at most 255 fit in 8-bit labels with 255 = ignore", path)
    return names


def _map_value(raw: object, path: Path, key: object) -> int:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("ignore", "255", "")):
        return IGNORE
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"label map value {raw!r} for {key!r} is not an integer or 'ignore'", path) from None
    if not (0 <= value <= 255):
        raise UserError(f"label map value {value} for {key!r} is outside 0..255", path)
    return value


def read_label_map(path: str | Path) -> dict[int, int]:
    """A JSON object ``{"7": 0, "0": "ignore"}`` or a CSV of ``source,target`` rows."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read label map ({e.__class__.__name__})", path) from None
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON in label map (line {e.lineno})", path) from None
        if not isinstance(obj, dict):
            raise UserError("label map must be a JSON object of source id -> class id", path)
        pairs = list(obj.items())
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
        if any(len(r) != 2 for r in rows):
            raise UserError("label map CSV rows must be 'source,target'", path)
        pairs = [(r[0].strip(), r[1].strip()) for r in rows]
    mapping: dict[int, int] = {}
    for key, raw in pairs:
        try:
            src = int(key)
        except (TypeError, ValueError):
            raise UserError(f"label map key {key!r} is not an integer", path) from None
        if not (0 <= src <= 255):
            raise UserError(f"label map key {src} is outside 0..255 (8-bit labels)", path)
        mapping[src] = _map_value(raw, path, key)
    if not mapping:
        raise UserError("label map is empty", path)
    return mapping


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here with a clear message."""
    path = Path(path)
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError:
        raise UserError(f"image is larger than {MAX_PIXELS:,} pixels (decompression-bomb limit)", path) from None
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        detail = str(e).split("\n")[0] or e.__class__.__name__
        raise UserError(f"unreadable or truncated image ({detail})", path) from None
    return img


def read_raw_label(path: str | Path) -> np.ndarray:
    """Label values as stored: single-channel or palette PNG indices (never palette colours)."""
    img = open_image(path)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA", "LA"):
        raise UserError(
            f"label PNG is colour-coded ({img.mode}); labels must be single-channel or palette ('P') "
            "PNGs whose values are class indices",
            path,
        )
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise UserError(f"label PNG is {img.mode} (16/32-bit); save labels as 8-bit single-channel PNGs", path)
    raise UserError(f"label PNG has unsupported mode {img.mode}", path)


def read_label(path: str | Path, convention: LabelConvention) -> np.ndarray:
    """Label in weakshot ids (0..K-1, 255 = ignore)."""
    return convention.lut()[read_raw_label(path)].astype(np.uint8)
