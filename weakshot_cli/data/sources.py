"""Finding image/label pairs in the folders and COCO files a practitioner brings.

``split`` keeps one listing of the whole dataset for its whole run, so the listing holds no object per image: two
packed buffers of relative paths and a split code per image (COCO's 118k images cost about 20 MB as Path objects
and dataclasses, a tenth of that here)."""

from __future__ import annotations

import os
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weakshot_cli.data.compact import Strings
from weakshot_cli.data.labels import IMAGE_EXTS, LABEL_EXTS
from weakshot_cli.errors import UserError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
SPLITS = ("train", "val", "test")


@dataclass
class Listing:
    """Images (paths relative to ``image_root``, in the order split lists them), their label files (relative to
    ``label_root``; empty for an image without one) and their splits (indices into SPLITS)."""

    image_root: Path
    label_root: Path
    suffix: str = ""  # --img-suffix, cut from image stems
    images: Strings = field(default_factory=Strings)
    labels: Strings = field(default_factory=Strings)
    splits: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.images)

    def add(self, split: str, image: str, label: str | None) -> None:
        self.images.append(image)
        self.labels.append(label or "")
        self.splits.append(SPLITS.index(split))

    def split(self, i: int) -> str:
        return SPLITS[self.splits[i]]

    def in_split(self, name: str) -> np.ndarray:
        """[images] bool: which lie in split ``name``."""
        return np.frombuffer(self.splits, dtype=np.uint8) == SPLITS.index(name)

    def indices(self, name: str) -> np.ndarray:
        """The positions of split ``name``'s images, in listing order."""
        return np.flatnonzero(self.in_split(name))

    def image(self, i: int) -> str:
        return str(self.image_root / self.images[i])

    def label(self, i: int) -> str | None:
        rel = self.labels[i]
        return str(self.label_root / rel) if rel else None

    def masked(self) -> np.ndarray:
        """[images] bool: which have a label file."""
        return self.labels.lengths() > 0

    def stem(self, i: int) -> str:
        """The name the image's outputs take: its file stem without --img-suffix, as it reads (NFC)."""
        return file_stem(self.images[i].rpartition("/")[2], self.suffix)

    def image_stem(self, i: int) -> str:
        """The file stem as stored (tags may name an image by it, suffix included)."""
        return self.images[i].rpartition("/")[2].rpartition(".")[0]


def file_stem(name: str, suffix: str) -> str:
    stem = name.rpartition(".")[0]
    stem = stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem
    # a macOS copy may store a name decomposed (e + combining accent): pair names as they read, not as bytes
    return unicodedata.normalize("NFC", stem)


def _walk(root: Path, exts: tuple[str, ...], rel: str = "") -> Iterator[str]:
    """Files under ``root`` with one of ``exts``, relative, in sorted path order (each folder's entries sorted by
    name, a folder's files right after it), one folder's names in memory at a time. Hidden files and folders are
    skipped (a .ipynb_checkpoints copy would pair twice), and so are links to folders (a loop would never end)."""
    try:
        names = sorted(os.listdir(root / rel))
    except OSError as e:
        raise UserError(f"cannot list this folder ({e.strerror})", root / rel) from None
    for name in names:
        if name.startswith("."):
            continue
        path = f"{rel}/{name}" if rel else name
        full = root / path
        if full.is_dir():
            if not full.is_symlink():
                yield from _walk(root, exts, path)
        elif os.path.splitext(name)[1].lower() in exts and full.is_file():
            yield path


def _split_of(rel: str) -> str:
    """Top-level folder names like train/ or validation/ name the split; anything else is train."""
    top, slash, _ = rel.partition("/")
    return SPLIT_NAMES.get(top.lower(), "train") if slash else "train"


def _parts(rel: str) -> list[str]:
    """Path order: folder by folder, as Path objects sort."""
    return rel.split("/")


def _key(rel: str, suffix: str) -> str:
    """What pairs an image with its label: 'split/stem'."""
    return f"{_split_of(rel)}/{file_stem(rel.rpartition('/')[2], suffix)}"


def _files(root: Path, exts: tuple[str, ...], suffix: str, kind: str) -> list[str]:
    """The files of one folder in path order; a stem that the suffix empties or that repeats within a split is
    refused."""
    if not root.is_dir():
        raise UserError(f"{kind} folder not found", root)
    paths = list(_walk(root, exts))
    keys = sorted(_key(p, suffix) for p in paths)
    for key, after in zip(keys, keys[1:] + [None]):
        split, _, stem = key.partition("/")
        if not stem:  # its outputs would be hidden files named '.png'
            option = "--img-suffix" if kind == "image" else "--mask-suffix"
            bad = next(p for p in paths if _key(p, suffix) == key)
            raise UserError(f"{option} {suffix!r} is the whole file stem, leaving an empty name", root / bad)
        if key == after:
            first, second = [p for p in paths if _key(p, suffix) == key][:2]
            raise UserError(f"duplicate {kind} stem {stem!r} in split {split!r} (also {root / first})", root / second)
    return paths


def discover_folders(images: Path, masks: Path, img_suffix: str = "", mask_suffix: str = ""
                     ) -> tuple[Listing, list[str]]:
    """Pair images and label PNGs by stem, split by top-level folder name (nested folders allowed): the listing
    (images with a label first, then those without, each in path order) and the label files without an image."""
    image_paths = _files(images, IMAGE_EXTS, img_suffix, "image")
    if not image_paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found", images)
    label_paths = _files(masks, LABEL_EXTS, mask_suffix, "label")
    label_paths.sort(key=lambda p: _key(p, mask_suffix))
    label_keys = [_key(p, mask_suffix) for p in label_paths]
    match = array("q")
    for p in image_paths:
        key = _key(p, img_suffix)
        at = bisect_left(label_keys, key)
        match.append(at if at < len(label_keys) and label_keys[at] == key else -1)
    del label_keys
    listing = Listing(images, masks, img_suffix)
    for labelled in (True, False):
        for p, m in zip(image_paths, match):
            if (m >= 0) == labelled:
                listing.add(_split_of(p), p, label_paths[m] if labelled else None)
    used = bytearray(len(label_paths))
    for m in match:
        if m >= 0:
            used[m] = 1
    orphans = [str(masks / p) for p in sorted((p for p, u in zip(label_paths, used) if not u), key=_parts)]
    return listing, orphans


def safe_join(root: Path, rel: str, where: Path) -> Path:
    """``root / rel`` where ``rel`` comes from a file the user handed us: it may not escape ``root``."""
    p = Path(rel)
    full = (root / p).resolve()
    if p.is_absolute() or not full.is_relative_to(root.resolve()):
        raise UserError(f"path {rel!r} escapes the images folder {root}", where)
    return full
