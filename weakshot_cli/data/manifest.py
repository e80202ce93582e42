"""The ``weakshot.json`` manifest: the one object that carries a dataset through every stage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from models import IGNORE
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write, read_json

MANIFEST = "weakshot.json"
VERSION = 1


@dataclass(slots=True)  # one per image: tens of thousands at COCO's scale
class Item:
    """``full`` (benchmark-mode training items only) holds the unhidden mask: read by ``--oracle``
    and never by weak-shot training. An ``example`` is a training image whose label marks its novel classes too (a
    few example masks of the new classes): weak-shot training supervises them there like base classes."""

    image: str
    label: str | None
    tags: list[int]
    full: str | None = None
    example: bool = False


@dataclass
class Manifest:
    """Class ids are positions in ``classes``; ``base`` and ``novel`` partition them.

    ``novel_masks`` is False for a weak-shot dataset (training labels hide every novel pixel) and
    True after pseudo-labelling, when training labels carry novel masks too.
    """

    classes: list[str]
    base: list[int]
    novel: list[int]
    splits: dict[str, Sequence[Item]]
    root: Path = field(default=Path("."), compare=False)
    novel_masks: bool = False
    source: dict = field(default_factory=dict)
    ignore_index: int = IGNORE
    version: int = VERSION
    # label path -> rejected class ids (None: all its pseudo-labels); read by item_label, never saved (rejections.py)
    rejected: dict = field(default_factory=dict, compare=False)

    def resolve(self, rel: str) -> Path:
        """Absolute path of a manifest entry; relative entries may not leave the dataset root."""
        p = Path(rel)
        if p.is_absolute():
            return p
        try:
            full = (self.root / p).resolve()
        except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop; ValueError: a NUL byte
            raise UserError(f"path {rel!r:.80} cannot be resolved", self.root / MANIFEST) from None
        if not full.is_relative_to(self.root.resolve()):
            raise UserError(f"path {rel!r} escapes the dataset folder", self.root / MANIFEST)
        return full

    def save(self, root: str | Path) -> Path:
        """Written as a stream, one line per item: a split's items may be made as they are read (split's are)."""
        self.root = Path(root)
        head = {"version": self.version, "classes": self.classes, "base": self.base, "novel": self.novel,
                "ignore_index": self.ignore_index, "novel_masks": self.novel_masks, "source": self.source}

        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                _stream(f, head, self.splits)
        return atomic_write(self.root / MANIFEST, write)


def _stream(f: TextIO, head: dict, splits: dict[str, Sequence[Item]]) -> None:
    """The manifest's JSON: ``head``'s fields, then the splits, one item a line."""
    f.write("{\n")
    for key, value in head.items():
        f.write(f"  {json.dumps(key)}: {json.dumps(value, indent=2).replace(chr(10), chr(10) + '  ')},\n")
    f.write('  "splits": {')
    for n, (name, items) in enumerate(splits.items()):
        f.write(f"{',' if n else ''}\n    {json.dumps(name)}: [")
        for i, it in enumerate(items):
            f.write(f"{',' if i else ''}\n      {json.dumps(_item_dict(it))}")
        f.write("\n    ]")
    f.write("\n  }\n}\n")


def _item_dict(it: Item) -> dict:
    return {"image": it.image, "label": it.label, "tags": it.tags, **({"full": it.full} if it.full else {}),
            **({"example": True} if it.example else {})}


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"inconsistent manifest: {msg}", path)


def _is_id(v: object, k: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < k


def _class_roles(obj: dict, path: Path) -> tuple[list[str], list[int], list[int]]:
    """Class names, base ids and novel ids: unique names, and every class either base or novel."""
    classes, base, novel = obj.get("classes"), obj.get("base"), obj.get("novel")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise _fail(path, "'classes' must be a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise _fail(path, "'classes' has duplicate names")
    k = len(classes)
    for name, ids in (("base", base), ("novel", novel)):
        if not isinstance(ids, list) or not all(_is_id(i, k) for i in ids):
            raise _fail(path, f"'{name}' must be a list of class ids in 0..{k - 1}")
    if set(base) & set(novel):
        raise _fail(path, f"classes {sorted(set(base) & set(novel))} are both base and novel")
    if set(base) | set(novel) != set(range(k)) or len(base) + len(novel) != k:
        raise _fail(path, "'base' and 'novel' must together list every class exactly once")
    return classes, sorted(base), sorted(novel)


def _splits(splits_obj: object, k: int, path: Path) -> dict[str, list[Item]]:
    """The items of every split, each with an image path, optional label and full-mask paths and class-id tags."""
    if not isinstance(splits_obj, dict) or not splits_obj:
        raise _fail(path, "'splits' must be an object of split name -> items")
    splits: dict[str, list[Item]] = {}
    for name, items in splits_obj.items():
        if not isinstance(items, list):
            raise _fail(path, f"split {name!r} must be a list")
        parsed = []
        for n, it in enumerate(items):
            if not isinstance(it, dict) or not isinstance(it.get("image"), str):
                raise _fail(path, f"item {n} of split {name!r} needs an 'image' path")
            label, tags, full = it.get("label"), it.get("tags", []), it.get("full")
            if label is not None and not isinstance(label, str) or full is not None and not isinstance(full, str):
                raise _fail(path, f"item {n} of split {name!r}: 'label' and 'full' must be paths or null")
            if not isinstance(tags, list) or not all(_is_id(t, k) for t in tags):
                raise _fail(path, f"item {n} of split {name!r}: 'tags' must be class ids in 0..{k - 1}")
            example = it.get("example", False)
            if not isinstance(example, bool) or example and label is None:
                raise _fail(path, f"item {n} of split {name!r}: 'example' must be true or false, and true only with a "
                                  "label")
            parsed.append(Item(it["image"], label, sorted(set(tags)), full, example))
        splits[name] = parsed
    return splits


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest (a dataset folder or the JSON file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    obj = read_json(path, "manifest", missing=f"no {MANIFEST} here; make a dataset with 'weakshot split' first")
    if not isinstance(obj, dict):
        raise _fail(path, "top level must be an object")
    if obj.get("version") != VERSION:
        raise _fail(path, f"unsupported version {obj.get('version')!r} (this weakshot reads {VERSION})")
    classes, base, novel = _class_roles(obj, path)
    if obj.get("ignore_index", IGNORE) != IGNORE:
        raise _fail(path, "'ignore_index' must be 255 inside a weak-shot dataset")
    if not isinstance(obj.get("novel_masks", False), bool) or not isinstance(obj.get("source") or {}, dict):
        raise _fail(path, "'novel_masks' must be true or false and 'source' an object")
    m = Manifest(classes=classes, base=base, novel=novel, splits=_splits(obj.get("splits"), len(classes), path),
                 root=path.parent, novel_masks=obj.get("novel_masks", False), source=obj.get("source") or {})
    for name, items in m.splits.items():  # every file is there now, not only when a run reaches it
        for n, it in enumerate(items):
            for kind, rel in (("image", it.image), ("label", it.label), ("full", it.full)):
                if rel is not None and not m.resolve(rel).is_file():
                    raise _fail(path, f"item {n} of split {name!r}: {kind} file {rel!r:.200} not found")
    return m
