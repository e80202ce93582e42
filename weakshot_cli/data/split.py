"""``weakshot split``: turn a user's dataset into a weak-shot dataset folder.

Everything is checked before anything is written; outputs are written into a staging folder beside
the target and moved into place at the end, so a failure leaves nothing behind and the user's
source files are only ever read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from weakshot_cli.data import coco
from weakshot_cli.data.labels import IGNORE, LabelConvention, open_image, read_class_names, read_label_map, \
    read_raw_label
from weakshot_cli.data.manifest import MANIFEST, Item, Manifest
from weakshot_cli.data.presets import PRESETS, preset_num_classes
from weakshot_cli.data.sources import SPLIT_NAMES, Discovery, Pair, discover_folders, safe_join
from weakshot_cli.data.tags import load_tags
from weakshot_cli.errors import UserError
from weakshot_cli.io import WriteError, write_label_png


@dataclass
class SplitOptions:
    out: Path
    images: Path
    masks: Path | None = None
    coco: list[str] = field(default_factory=list)
    classes: Path | None = None
    ignore_index: int = IGNORE
    reduce_zero_label: bool = False
    label_map: Path | None = None
    img_suffix: str = ""
    mask_suffix: str = ""
    novel: list[str] | None = None
    novel_ratio: float | None = None
    preset: str | None = None
    seed: int = 0
    tags: Path | None = None
    strict: bool = False
    exist_ok: bool = False


@dataclass
class Scanned:
    pair: Pair
    present: set[int]  # class ids in the label after conversion


class Warnings:
    """Collects the label-convention warnings; ``--strict`` makes the first one an error."""

    def __init__(self, console: Console, strict: bool):
        self.console, self.strict = console, strict

    def __call__(self, message: str, path: Path | str | None = None) -> None:
        if self.strict:
            raise UserError(f"{message} (--strict)", path)
        where = f"{path}: " if path else ""
        self.console.print(f"[yellow]warning:[/] {escape(where + message)}", highlight=False)


def _check_out(opts: SplitOptions) -> None:
    out = opts.out.resolve()
    for src in (opts.images, opts.masks):
        if src is None:
            continue
        src = src.resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise UserError(f"output folder overlaps the source folder {src}; choose another -o", opts.out)
    if (opts.out / MANIFEST).exists() and not opts.exist_ok:
        raise UserError("already holds a weak-shot dataset; pass --exist-ok to replace it", opts.out)
    if opts.out.exists() and not opts.out.is_dir():
        raise UserError("output path exists and is not a folder", opts.out)


def _coco_pairs(opts: SplitOptions, staging: Path) -> tuple[Discovery, list[str]]:
    """Rasterise each COCO JSON (``[split=]path``) into label PNGs cached in the new dataset."""
    pairs, names = [], None
    for spec in opts.coco:
        split, _, path = spec.rpartition("=")
        if split and split.lower() not in SPLIT_NAMES:
            raise UserError(f"--coco {spec}: unknown split {split!r}; use train, val or test (or no SPLIT=)")
        split, path = SPLIT_NAMES[split.lower()] if split else "train", Path(path)
        data, these_names, cat_to_id = coco.load_coco(path)
        if names is not None and these_names != names:
            raise UserError("categories differ from the first COCO file", path)
        names = these_names
        images = {im.id: im for im in coco.coco_images(data, path)}
        for image_id, label in coco.rasterise(data, path, cat_to_id).items():
            im = images[image_id]
            image = safe_join(opts.images, im.file_name, path)
            if not image.exists() and (opts.images / split).is_dir():
                image = safe_join(opts.images / split, im.file_name, path)
            stem = Path(im.file_name).stem
            label_path = staging / "full" / split / f"{stem}.png"
            if label_path.exists():
                raise UserError(f"duplicate image stem {stem!r} in split {split!r}", path)
            write_label_png(label_path, label)
            pairs.append(Pair(split, stem, image, label_path))
    return Discovery(pairs, [], []), names or []


def _scan(found: Discovery, k: int, convention: LabelConvention, warn: Warnings, console: Console,
          coco_mode: bool) -> tuple[list[Scanned], np.ndarray]:
    """Read every image and label once: sizes, truncation, value histogram, classes present."""
    if found.unlabelled_images:
        warn(f"{len(found.unlabelled_images)} image(s) have no label PNG and are skipped "
             f"(first: {found.unlabelled_images[0]})")
    if found.orphan_labels:
        warn(f"{len(found.orphan_labels)} label PNG(s) have no image (first: {found.orphan_labels[0]})")
    if not found.pairs:
        raise UserError("empty dataset: no image has a matching label", found.unlabelled_images[0].parent
                        if found.unlabelled_images else None)
    lut = convention.lut()
    hist = np.zeros(256, dtype=np.int64)
    scanned = []
    for pair in track(found.pairs, description="Scanning labels", console=console, transient=True,
                      disable=not console.is_terminal):
        img = open_image(pair.image)
        raw = read_raw_label(pair.label)
        if raw.shape != (img.height, img.width):
            raise UserError(f"label is {raw.shape[1]}x{raw.shape[0]} but its image {pair.image.name} is "
                            f"{img.width}x{img.height}", pair.label)
        counts = np.bincount(raw.ravel(), minlength=256)
        hist += counts
        ids = set(int(v) for v in np.unique(lut[np.flatnonzero(counts)]))
        bad = sorted(int(v) for v in np.flatnonzero(counts) if lut[v] != IGNORE and lut[v] >= k)
        if bad:
            raise UserError(f"label values {bad} exceed the {k} classes (ids 0..{k - 1}); check "
                            "--ignore-index / --reduce-zero-label / --label-map", pair.label)
        scanned.append(Scanned(pair, ids - {IGNORE}))
    if not coco_mode:
        used = set(np.flatnonzero(hist))
        if used <= {0, 255} and k > 2 and 255 in used:
            warn("labels hold only the values 0 and 255: binary masks saved as 0/255? "
                 "255 is read as ignore, so the foreground would be lost")
        if convention.label_map is None and convention.ignore_index != IGNORE and hist[convention.ignore_index] == 0:
            warn(f"ignore value {convention.ignore_index} never occurs in the labels")
        if convention.reduce_zero_label and hist[0] == 0:
            warn("--reduce-zero-label is set but no label contains 0; are the labels already 0-based?")
    return scanned, hist


def _value_table(hist: np.ndarray, scanned: list[Scanned], classes: list[str], convention: LabelConvention,
                 coco_mode: bool) -> Table:
    lut = convention.lut()
    images_with = Counter(c for s in scanned for c in s.present)
    total = max(int(hist.sum()), 1)
    table = Table(title="Label values" + (" (rasterised from COCO)" if coco_mode else ""))
    for col in ("value", "class id", "class", "pixels", "%", "images"):
        table.add_column(col, justify="right" if col not in ("class",) else "left")
    for v in np.flatnonzero(hist):
        cid = int(lut[v])
        name = "ignore" if cid == IGNORE else classes[cid]
        table.add_row(str(v), "-" if cid == IGNORE else str(cid), name, f"{int(hist[v]):,}",
                      f"{100 * hist[v] / total:.2f}", "-" if cid == IGNORE else str(images_with[cid]))
    return table


def _choose_novel(opts: SplitOptions, classes: list[str], warn: Warnings) -> list[int]:
    chosen = [o for o in ("novel", "novel_ratio", "preset") if getattr(opts, o) is not None]
    if len(chosen) > 1:
        raise UserError("give only one of --novel, --novel-ratio, --preset")
    k = len(classes)
    if opts.preset is not None:
        if opts.preset not in PRESETS:
            raise UserError(f"unknown preset {opts.preset!r}; choose from {', '.join(PRESETS)}")
        if k != preset_num_classes(opts.preset):
            raise UserError(f"preset {opts.preset} needs {preset_num_classes(opts.preset)} classes, the dataset has {k}")
        norm = lambda s: s.lower().replace("_", " ").replace("-", " ").strip()  # noqa: E731
        mismatched = [f"{i}={classes[i]!r} (preset: {n!r})" for i, n in PRESETS[opts.preset].items()
                      if norm(n) not in norm(classes[i])]
        if mismatched:
            warn(f"{len(mismatched)} preset class names differ from yours, e.g. {mismatched[0]}; "
                 "check the class order")
        return sorted(PRESETS[opts.preset])
    if opts.novel_ratio is not None:
        if not 0 < opts.novel_ratio < 1:
            raise UserError(f"--novel-ratio must be between 0 and 1, got {opts.novel_ratio}")
        n = min(max(1, round(k * opts.novel_ratio)), k - 1)
        return sorted(int(i) for i in np.random.default_rng(opts.seed).choice(k, n, replace=False))
    if opts.novel is not None:
        index = {c: i for i, c in enumerate(classes)}
        unknown = [n for n in opts.novel if n not in index]
        if unknown:
            raise UserError(f"--novel names unknown class {unknown[0]!r}; classes are: {', '.join(classes)}")
        novel = sorted({index[n] for n in opts.novel})
        if not novel or len(novel) >= k:
            raise UserError("--novel must name at least one class and leave at least one base class")
        return novel
    raise UserError("choose the novel classes with --novel, --novel-ratio or --preset (or give --tags)")


def _real_mode(opts: SplitOptions, scanned: list[Scanned], classes: list[str], warn: Warnings
               ) -> tuple[list[int], dict[str, set[int]]]:
    """Base-only masks + a tags file: novel = the classes no training mask contains (or --novel)."""
    tags = load_tags(opts.tags, classes)
    in_train_masks = {c for s in scanned if s.pair.split == "train" for c in s.present}
    if opts.novel is not None:
        novel = _choose_novel(opts, classes, warn)
        for s in scanned:
            clash = s.present & set(novel)
            if s.pair.split == "train" and clash:
                raise UserError(f"novel class {classes[min(clash)]!r} is also a base class: it occurs in this "
                                "training mask", s.pair.label)
    else:
        novel = sorted(set(range(len(classes))) - in_train_masks)
        if not novel:
            raise UserError("every class occurs in the training masks, so there is no novel class; "
                            "use --novel to name them", opts.masks)
    stems = {s.pair.stem for s in scanned}
    unknown = sorted(set(tags) - stems)
    if unknown:
        warn(f"{len(unknown)} tagged image(s) are not in the dataset (first: {unknown[0]!r})", opts.tags)
    return novel, tags


def _commit(staging: Path, out: Path) -> None:
    """Move staged files into ``out``; the manifest goes last so a crash never leaves a valid-looking
    dataset with missing labels."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        entry.replace(target)
    staging.rmdir()


def run_split(opts: SplitOptions, console: Console, argv: list[str] | None = None) -> Manifest:
    warn = Warnings(console, opts.strict)
    _check_out(opts)
    coco_mode = bool(opts.coco)
    if coco_mode and (opts.masks is not None or opts.classes is not None):
        raise UserError("with --coco, class names and masks come from the COCO JSON; drop --masks/--classes")
    if not coco_mode and (opts.masks is None or opts.classes is None):
        raise UserError("give --masks and --classes (or --coco for COCO JSON)")
    if not opts.images.is_dir():
        raise UserError("image folder not found", opts.images)
    parent = opts.out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.staging-", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write the output folder ({e.strerror})", opts.out) from None
    try:
        if coco_mode:
            convention = LabelConvention()
            found, classes = _coco_pairs(opts, staging)
        else:
            label_map = read_label_map(opts.label_map) if opts.label_map else None
            convention = LabelConvention(opts.ignore_index, opts.reduce_zero_label, label_map)
            classes = read_class_names(opts.classes)
            found = discover_folders(opts.images, opts.masks, opts.img_suffix, opts.mask_suffix)
        scanned, hist = _scan(found, len(classes), convention, warn, console, coco_mode)
        console.print(_value_table(hist, scanned, classes, convention, coco_mode))
        if opts.tags is not None:
            novel, tags = _real_mode(opts, scanned, classes, warn)
        else:
            novel, tags = _choose_novel(opts, classes, warn), {}
        manifest = _write(opts, staging, scanned, classes, novel, tags, convention, argv, warn, console)
        _commit(staging, opts.out)
    except WriteError as e:  # name the file where it was going, not its staging copy
        raise UserError(f"cannot write ({e.reason})", opts.out / Path(e.path).relative_to(staging)) from None
    except OSError as e:
        raise UserError(f"cannot write the output folder ({e.strerror})", opts.out) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest.root = opts.out
    return manifest


def _write(opts: SplitOptions, staging: Path, scanned: list[Scanned], classes: list[str], novel: list[int],
           tags: dict[str, set[int]], convention: LabelConvention, argv: list[str] | None,
           warn: Warnings, console: Console) -> Manifest:
    benchmark = opts.tags is None
    lut = convention.lut()
    hide = np.arange(256, dtype=np.uint8)
    hide[novel] = IGNORE
    splits: dict[str, list[Item]] = {}
    for s in track(scanned, description="Writing labels", console=console, transient=True,
                   disable=not console.is_terminal):
        label = lut[read_raw_label(s.pair.label)].astype(np.uint8)
        train = s.pair.split == "train"
        item_tags = set(s.present) if benchmark else s.present | tags.get(s.pair.stem, set())
        full = None
        if train and benchmark:
            full = f"full/train/{s.pair.stem}.png"
            if s.pair.label != staging / full:  # COCO input already cached it there
                write_label_png(staging / full, label)
            label = hide[label]  # honest weak-shot: novel pixels never reach training
        rel = f"labels/{s.pair.split}/{s.pair.stem}.png"
        write_label_png(staging / rel, label)
        splits.setdefault(s.pair.split, []).append(Item(str(s.pair.image.resolve()), rel, sorted(item_tags), full))
    for c in novel:
        if not any(c in it.tags for it in splits.get("train", [])):
            warn(f"novel class {classes[c]!r} is tagged in no training image; it cannot be learned")
    manifest = Manifest(
        classes=classes,
        base=[c for c in range(len(classes)) if c not in novel],
        novel=novel,
        splits=dict(sorted(splits.items(), key=lambda kv: ["train", "val", "test"].index(kv[0]))),
        source={
            "mode": "benchmark" if benchmark else "real",
            "command": argv,
            "images": str(opts.images.resolve()),
            "masks": str(opts.masks.resolve()) if opts.masks else None,
            "coco": opts.coco,
            "tags": str(opts.tags.resolve()) if opts.tags else None,
            "novel_ratio": opts.novel_ratio,
            "preset": opts.preset,
            "seed": opts.seed,
            "label_convention": convention.as_dict(),
        },
    )
    manifest.save(staging)
    return manifest


def summary_table(m: Manifest) -> Table:
    table = Table(title=f"Weak-shot dataset: {len(m.base)} base + {len(m.novel)} novel classes")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("role")
    for name in m.splits:
        table.add_column(f"{name} images", justify="right")
    counts = {name: Counter(t for it in items for t in it.tags) for name, items in m.splits.items()}
    for c, cname in enumerate(m.classes):
        role = "[magenta]novel[/]" if c in m.novel else "base"
        table.add_row(str(c), cname, role, *(str(counts[n][c]) for n in m.splits))
    table.add_section()
    table.add_row("", "all images", "", *(str(len(items)) for items in m.splits.values()))
    return table
