"""Finding image/label pairs in the folders and COCO files a practitioner brings."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from weakshot_cli.data.labels import IMAGE_EXTS, LABEL_EXTS
from weakshot_cli.errors import UserError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}


@dataclass(slots=True)  # one per image: tens of thousands at COCO's scale
class Pair:
    """An image and its label PNG; ``label`` is None for an image without one (tag-only in real mode). Paths are
    kept as strings: a Path object is several times the memory, and a dataset has one Pair per image."""

    split: str
    stem: str
    image: str
    label: str | None


@dataclass
class Discovery:
    pairs: list[Pair]
    unlabelled: list[Pair]
    orphan_labels: list[str]


def _split_of(rel: Path) -> str:
    """Top-level folder names like train/ or validation/ name the split; anything else is train."""
    return SPLIT_NAMES.get(rel.parts[0].lower(), "train") if len(rel.parts) > 1 else "train"


def _index(root: Path, exts: tuple[str, ...], suffix: str, kind: str) -> dict[tuple[str, str], str]:
    if not root.is_dir():
        raise UserError(f"{kind} folder not found", root)
    found: dict[tuple[str, str], str] = {}
    for p in sorted(root.rglob("*")):
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        stem = p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem
        if not stem:  # its outputs would be hidden files named '.png'
            option = "--img-suffix" if kind == "image" else "--mask-suffix"
            raise UserError(f"{option} {suffix!r} is the whole file stem, leaving an empty name", p)
        # a macOS copy may store a name decomposed (e + combining accent): pair names as they read, not as bytes
        key = (_split_of(p.relative_to(root)), unicodedata.normalize("NFC", stem))
        if key in found:
            raise UserError(f"duplicate {kind} stem {stem!r} in split {key[0]!r} (also {found[key]})", p)
        found[key] = str(p)
    return found


def discover_folders(images: Path, masks: Path, img_suffix: str = "", mask_suffix: str = "") -> Discovery:
    """Pair images and label PNGs by stem, split by top-level folder name (nested folders allowed)."""
    imgs = _index(images, IMAGE_EXTS, img_suffix, "image")
    labels = _index(masks, LABEL_EXTS, mask_suffix, "label")
    if not imgs:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found", images)
    pairs = [Pair(split, stem, p, labels.get((split, stem))) for (split, stem), p in imgs.items()]
    return Discovery(
        pairs=[p for p in pairs if p.label is not None],
        unlabelled=[p for p in pairs if p.label is None],
        orphan_labels=[p for k, p in labels.items() if k not in imgs],
    )


def safe_join(root: Path, rel: str, where: Path) -> Path:
    """``root / rel`` where ``rel`` comes from a file the user handed us: it may not escape ``root``."""
    p = Path(rel)
    full = (root / p).resolve()
    if p.is_absolute() or not full.is_relative_to(root.resolve()):
        raise UserError(f"path {rel!r} escapes the images folder {root}", where)
    return full
