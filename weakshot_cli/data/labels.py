"""Reading label PNGs in the conventions practitioners bring, into weakshot's ids (255 = ignore)."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models import IGNORE
from weakshot_cli.errors import UserError
from weakshot_cli.io import read_json, read_text

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png",)
MAX_PIXELS = 100_000_000  # beyond this an image is treated as a decompression bomb

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class LabelConvention:
    """How source label values become class ids: ``label_map`` first, else reduce-zero, else identity.

    Source values equal to ``ignore_index`` become 255; with a label map, values it does not list
    become 255 too (the Cityscapes labelIds -> trainIds rule). ``unknown_class`` (a class id) becomes 255
    as well: masks that call every unannotated object "background" say nothing about those pixels.
    """

    ignore_index: int = IGNORE
    reduce_zero_label: bool = False
    label_map: dict[int, int] | None = field(default=None, hash=False)
    unknown_class: int | None = None

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
        if self.unknown_class is not None:
            lut[lut == self.unknown_class] = IGNORE
        return lut

    def as_dict(self) -> dict:
        return {
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "label_map": None if self.label_map is None else {str(k): v for k, v in self.label_map.items()},
            "unknown_class": self.unknown_class,
        }


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line; line i is class id i. Blank lines at the end are dropped."""
    path = Path(path)
    names = [line.strip() for line in read_text(path, "class names").splitlines()]
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


def _as_int(raw: object) -> int | None:
    """An integer written as 7, "7" or 7.0; None for anything else (true, 7.5, inf, lists, ...)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:  # also digit strings too long to convert
            return None
    return None


def _map_value(raw: object, path: Path, key: object) -> int:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("ignore", "255", "")):
        return IGNORE
    value = _as_int(raw)
    if value is None:
        raise UserError(f"label map value {raw!r:.40} for {key!r:.40} is not an integer or 'ignore'", path)
    if not (0 <= value <= 255):
        raise UserError(f"label map value {value} for {key!r:.40} is outside 0..255", path)
    return value


def read_label_map(path: str | Path) -> dict[int, int]:
    """A JSON object ``{"7": 0, "0": "ignore"}`` or a CSV of ``source,target`` rows."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        obj = read_json(path, "label map")
        if not isinstance(obj, dict):
            raise UserError("label map must be a JSON object of source id -> class id", path)
        pairs = list(obj.items())
    else:
        text = read_text(path, "label map")
        try:
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        except csv.Error as e:
            raise UserError(f"malformed label map CSV ({e})", path) from None
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
        if any(len(r) != 2 for r in rows):
            raise UserError("label map CSV rows must be 'source,target'", path)
        pairs = [(r[0].strip(), r[1].strip()) for r in rows]
    mapping: dict[int, int] = {}
    for key, raw in pairs:
        src = _as_int(key)
        if src is None:
            raise UserError(f"label map key {key!r:.40} is not an integer", path)
        if not (0 <= src <= 255):
            raise UserError(f"label map key {src} is outside 0..255 (8-bit labels)", path)
        mapping[src] = _map_value(raw, path, key)
    if not mapping:
        raise UserError("label map is empty", path)
    return mapping


def _unreadable(e: Exception, path: Path) -> UserError:
    detail = str(e).split("\n")[0] or e.__class__.__name__
    return UserError(f"unreadable or truncated image ({detail})", path)


def _open(path: Path) -> Image.Image:
    """``Image.open`` (header only) with every way it fails on a bad file as a UserError naming it."""
    try:
        with warnings.catch_warnings():  # PIL only warns between MAX_PIXELS and twice that; refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image is larger than {MAX_PIXELS:,} pixels (decompression-bomb limit)", path) from None
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(e, path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    with _open(Path(path)) as img:
        return img.height, img.width


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here with a clear message."""
    path = Path(path)
    img = _open(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(e, path) from None
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
