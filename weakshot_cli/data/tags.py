"""Image-level tags from JSON, CSV or the WSSS ``cls_labels.npy`` convention, as class-id sets."""

from __future__ import annotations

import csv
import io
import math
import pickle
import unicodedata
from pathlib import Path

import numpy as np

from weakshot_cli.data.labels import IMAGE_EXTS
from weakshot_cli.errors import UserError
from weakshot_cli.io import read_json, read_text

Tags = dict[str, set[int]]

# What a pickled ``{name: multi-hot array}`` .npy needs, and nothing that can run code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_npy_dict(path: Path) -> dict:
    """Load a pickled dict .npy with an allow-list unpickler: plain arrays and dicts only."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                obj = _SafeUnpickler(io.BytesIO(f.read())).load()
            else:
                # a header may claim any shape: check it against the file before numpy allocates for it
                if math.prod(shape) * dtype.itemsize > path.stat().st_size - f.tell():
                    raise ValueError(f"header claims shape {shape}, more data than the file holds")
                f.seek(0)
                obj = np.load(f, allow_pickle=False)
    except Exception as e:  # corrupt pickles raise almost any type; nothing here can run code (allow-list)
        raise UserError(f"not a plain .npy dict of multi-hot arrays ({str(e).strip()[:120]})", path) from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise UserError("expected a .npy holding a dict {image name: multi-hot vector}", path)
    return obj


def _names_to_ids(names: list[str], classes: list[str], path: Path, stem: str) -> set[int]:
    index = {n: i for i, n in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"image {stem!r} is tagged with unknown class {unknown[0]!r}", path)
    return {index[n] for n in names}


def _stem(key: object, path: Path) -> str:
    if isinstance(key, (int, np.integer)):
        return str(int(key))
    if not isinstance(key, str) or not key.strip():
        raise UserError(f"tag key {key!r} is not an image name", path)
    name = Path(key.strip()).name
    if name != key.strip() or name in (".", ".."):
        raise UserError(f"tag key {key!r} must be an image name, not a path", path)
    name = unicodedata.normalize("NFC", name)  # as image names are paired (sources.py)
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name


def load_tags(path: str | Path, classes: list[str]) -> Tags:
    """Tags keyed by image stem. Formats by suffix: .json, .csv, .npy."""
    path = Path(path)
    suffix = path.suffix.lower()
    tags: Tags = {}
    if suffix == ".json":
        obj = read_json(path, "tags")
        if not isinstance(obj, dict):
            raise UserError('tags JSON must be an object {"image_stem": ["class", ...]}', path)
        for key, names in obj.items():
            stem = _stem(key, path)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UserError(f"tags for {stem!r} must be a list of class names", path)
            tags[stem] = _names_to_ids(names, classes, path, stem)
    elif suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(read_text(path, "tags"))))
        except csv.Error as e:
            raise UserError(f"malformed CSV ({e})", path) from None
        if not rows or not {"image", "labels"} <= set(rows[0].keys()):
            raise UserError("tags CSV needs a header 'image,labels' and at least one row", path)
        for row in rows:
            stem = _stem(row["image"], path)
            # names past the last column (img,car,tree) are tags too, as are ';'-separated ones (img,car;tree)
            cells = [row["labels"] or "", *row.get(None, [])]
            names = [n.strip() for cell in cells for n in cell.split(";") if n.strip()]
            tags[stem] = _names_to_ids(names, classes, path, stem)
    elif suffix == ".npy":
        for key, vec in _load_npy_dict(path).items():
            stem = _stem(key, path)
            try:
                arr = np.asarray(vec)
            except ValueError:  # ragged nested lists
                arr = None
            if arr is None or arr.ndim != 1 or arr.dtype.kind not in "biuf":
                raise UserError(f"tags for {stem!r} must be a 1-D multi-hot vector", path)
            if len(arr) == len(classes):
                offset = 0
            elif len(arr) == len(classes) - 1:
                offset = 1  # WSSS convention: background (class 0) is left out of the vector
            else:
                raise UserError(
                    f"multi-hot vector for {stem!r} has length {len(arr)}; expected {len(classes)} "
                    f"(one per class) or {len(classes) - 1} (background excluded)",
                    path,
                )
            tags[stem] = {int(i) + offset for i in np.flatnonzero(arr > 0.5)}
    else:
        raise UserError("unknown tags format; use .json, .csv or .npy", path)
    if not tags:
        raise UserError("no image tags found", path)
    return tags
