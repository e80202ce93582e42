"""``weakshot split``: turn a user's dataset into a weak-shot dataset folder.

Everything is checked before anything is written; outputs are written into a staging folder beside
the target and moved into place at the end, so a failure leaves nothing behind and the user's
source files are only ever read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import track

from weakshot_cli import folders
from weakshot_cli.data import coco
from weakshot_cli.data.compact import ClassSets
from weakshot_cli.data.identify import flagged, tag_pairs
from weakshot_cli.data.labels import IGNORE, LabelConvention, open_image, read_class_names, read_label_map, \
    read_raw_label
from weakshot_cli.data.manifest import MANIFEST, Item, Manifest
from weakshot_cli.data.presets import PRESETS, preset_num_classes
from weakshot_cli.data.sources import SPLIT_NAMES, SPLITS, Listing, discover_folders, file_stem, safe_join
from weakshot_cli.data.tags import Tags, load_tags
from weakshot_cli.errors import Interrupted, UserError
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
    unknown_class: str | None = None
    background: str | None = None
    tag_only_fraction: float = 0.0
    examples: int = 0
    all_values: bool = False
    strict: bool = False
    exist_ok: bool = False

    def check(self) -> None:
        """Refuse out-of-range or contradictory options before anything is read."""
        if not 0 <= self.ignore_index <= 255:
            raise UserError(f"--ignore-index must be in 0..255, got {self.ignore_index}")
        if self.coco and (self.masks is not None or self.classes is not None):
            raise UserError("with --coco, class names and masks come from the COCO JSON; drop --masks/--classes")
        if not self.coco and (self.masks is None or self.classes is None):
            raise UserError("give --masks and --classes (or --coco for COCO JSON)")
        if self.background is not None and not self.coco:
            raise UserError("--background names the class of pixels outside every COCO annotation; it needs --coco")
        if not 0 <= self.tag_only_fraction < 1:
            raise UserError(f"--tag-only-fraction must be in [0, 1), got {self.tag_only_fraction}")
        if self.examples < 0:
            raise UserError(f"--examples must be >= 0, got {self.examples}")
        if self.examples and self.tags is not None:
            raise UserError("--examples draws example masks in benchmark mode; with --tags, a training mask that "
                            "labels a novel class (named with --novel) is an example already")
        if self.tag_only_fraction and self.tags is not None:
            raise UserError("--tag-only-fraction simulates tag-only images in benchmark mode; with --tags, images "
                            "without a label PNG are tag-only already")


@dataclass
class Scan:
    """What reading every label once found, per image of the listing: the class ids present after conversion and
    the pixels that are 255 after conversion (every pixel of a tag-only image)."""

    present: ClassSets
    unknown: np.ndarray  # int64 [images]
    hist: np.ndarray  # [256] pixels per label value as stored, over every label


class Warnings:
    """Prints the label-convention warnings on ``err`` (stderr), one unwrapped line each; ``--strict`` makes
    the first one an error. ``note`` reports facts that are no error under ``--strict``."""

    def __init__(self, err: Console, strict: bool):
        self.err, self.strict = err, strict

    def __call__(self, message: str, path: Path | str | None = None) -> None:
        if self.strict:
            raise UserError(f"{message} (--strict)", path)
        self._print("[yellow]warning:[/]", message, path)

    def note(self, message: str, path: Path | str | None = None) -> None:
        self._print("note:", message, path)

    def _print(self, prefix: str, message: str, path: Path | str | None) -> None:
        where = f"{path}: " if path else ""
        self.err.print(f"{prefix} {escape(where + message)}", highlight=False, soft_wrap=True)


def _check_out(opts: SplitOptions) -> set[Path]:
    """Refuse an output that is not ours to write; return the files of the weak-shot dataset that
    ``--exist-ok`` replaces (its manifest and the label files it lists), the only ones split may remove."""
    out = opts.out.resolve()
    for src in (opts.images, opts.masks):
        if src is None:
            continue
        src = src.resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise UserError(f"output folder overlaps the source folder {src}; choose another -o", opts.out)
    if folders.claim(opts.out, "split", mark_new=False):
        return set()
    if not opts.exist_ok:
        raise UserError("already holds a weak-shot dataset; pass --exist-ok to replace it", opts.out)
    return _own_files(opts.out)


def _own_files(out: Path) -> set[Path]:
    """The manifest of the dataset in ``out`` and the label files it lists inside ``out``."""
    try:
        obj = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        rels = [it.get(key) for items in obj["splits"].values() for it in items for key in ("label", "full")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"cannot read the dataset already there ({e.__class__.__name__}), so cannot tell its files "
                        "from others; choose a new -o", out / MANIFEST) from None
    root = out.resolve()
    own = {root / MANIFEST}
    for rel in rels:
        if isinstance(rel, str) and not Path(rel).is_absolute():
            path = Path(os.path.normpath(root / rel))  # split writes no links: never follow one
            if path.is_relative_to(root) and path.is_file() and not path.is_symlink():
                own.add(path)
    return own


# Real mode: at most this share of the training masks may label a novel class (they are its example masks); more,
# and the class is a base class that the masks label.
EXAMPLE_SHARE = 0.1
UNANNOTATED_WARN = 0.25  # share of pixels outside every COCO annotation above which the lack of a background class is named


def _coco_pairs(opts: SplitOptions, staging: Path, warn: Warnings) -> tuple[Listing, list[str]]:
    """Rasterise each COCO JSON (``[split=]path``) into label PNGs cached in the new dataset's full/ folder. Pixels
    outside every annotation are ignore, or the class ``--background`` (a category, or a new last class)."""
    listing, names = Listing(opts.images, staging / "full"), None
    unannotated = total = 0
    for spec in opts.coco:
        split, _, path = spec.rpartition("=")
        if split and split.lower() not in SPLIT_NAMES:
            raise UserError(f"--coco {spec}: unknown split {split!r}; use train, val or test (or no SPLIT=)")
        split, path = SPLIT_NAMES[split.lower()] if split else "train", Path(path)
        images, these_names, cat_to_id = coco.load_coco(path)
        if names is not None and these_names != names:
            raise UserError("categories differ from the first COCO file", path)
        names = these_names
        background = coco.IGNORE
        if opts.background is not None:
            background = names.index(opts.background) if opts.background in names else len(names)
            if background >= coco.IGNORE:
                raise UserError(f"--background {opts.background!r} would be class 255, the ignore value: "
                                f"{len(names)} categories leave no room for it", path)
        with tempfile.TemporaryDirectory(dir=staging, prefix=".coco-") as scratch:  # one map in memory at a time
            labels = coco.rasterise(path, images, cat_to_id, Path(scratch), background)
            for i, (_, label) in enumerate(labels):
                unannotated, total = unannotated + int((label == coco.IGNORE).sum()), total + label.size
                _add_coco_image(opts, listing, split, images[i], label, path)
    if opts.background is None and total and unannotated > UNANNOTATED_WARN * total:
        warn(f"{100 * unannotated / total:.0f}% of pixels lie outside every COCO annotation and become ignore, so "
             "the model learns no background and labels every pixel as some object; pass --background NAME to "
             "make them a class")
    if opts.background is not None and opts.background not in (names or []):
        names = [*(names or []), opts.background]
    return listing, names or []


def _add_coco_image(opts: SplitOptions, listing: Listing, split: str, im: coco.CocoImage, label: np.ndarray,
                    path: Path) -> None:
    """An image of a COCO file and its rasterised label, written to the staged dataset's full/ folder."""
    rel = im.file_name
    image = safe_join(opts.images, rel, path)
    if not image.exists() and (opts.images / split).is_dir():
        rel = f"{split}/{rel}"
        image = safe_join(opts.images, rel, path)
    coco.check_image_size(im, image, path)
    stem = file_stem(rel.rpartition("/")[2], "")
    label_rel = f"{split}/{stem}.png"
    if (listing.label_root / label_rel).exists():
        raise UserError(f"duplicate image stem {stem!r} in split {split!r}", path)
    write_label_png(listing.label_root / label_rel, label)
    listing.add(split, rel, label_rel)


def _usable(listing: Listing, orphan_labels: list[str], tags: Tags | None, images: Path, warn: Warnings) -> Listing:
    """The images with a label, and in real mode each training image with tags but no label PNG as a tag-only
    image; any other image without a label is skipped, with a warning. A dataset without training images is
    refused."""
    usable = Listing(listing.image_root, listing.label_root, listing.suffix)
    skipped = []
    for i in range(len(listing)):
        if listing.labels[i] or tags is not None and listing.split(i) == "train" and _tags_of(tags, listing, i):
            usable.add(listing.split(i), listing.images[i], listing.labels[i] or None)
        else:
            skipped.append(i)
    if not usable:
        raise UserError("empty dataset: no image has a matching label" + (" or tags" if tags else ""), images)
    if not usable.in_split("train").any():
        raise UserError("no training images: every image found lies in val/ or test/ folders or has no label; do "
                        "image and mask names match (they are compared exactly, case included)?", images)
    if skipped:
        why = ("without tags (or with an empty tag list) or outside train" if tags is not None
               else "(give --tags to train on them as tag-only)")
        warn(f"{len(skipped)} image(s) have no label PNG and are skipped {why} (first: {listing.image(skipped[0])})")
    if orphan_labels:
        warn(f"{len(orphan_labels)} label PNG(s) have no image (first: {orphan_labels[0]})")
    return usable


def _tags_of(tags: Tags, listing: Listing, i: int) -> set[int] | None:
    """Tags are keyed by the image's stem, with or without --img-suffix."""
    found = tags.get(listing.stem(i))
    return found if found is not None else tags.get(listing.image_stem(i))


def _scan(listing: Listing, k: int, convention: LabelConvention, warn: Warnings, console: Console,
          coco_mode: bool) -> Scan:
    """Read every image and label once: sizes, truncation, value histogram, classes present."""
    lut = convention.lut()
    scan = Scan(ClassSets(len(listing), k), np.zeros(len(listing), dtype=np.int64), np.zeros(256, dtype=np.int64))
    for i in track(range(len(listing)), description="Scanning labels", console=console, transient=True,
                   disable=not console.is_terminal):
        img = open_image(listing.image(i))
        label = listing.label(i)
        if label is None:
            scan.unknown[i] = img.width * img.height
            continue
        raw = read_raw_label(label)
        if raw.shape != (img.height, img.width):
            raise UserError(f"label is {raw.shape[1]}x{raw.shape[0]} but its image {Path(listing.image(i)).name} is "
                            f"{img.width}x{img.height}", label)
        counts = np.bincount(raw.ravel(), minlength=256)
        scan.hist += counts
        values = np.flatnonzero(counts)
        bad = sorted(int(v) for v in values if lut[v] != IGNORE and lut[v] >= k)
        if bad:
            raise UserError(f"label values {bad} exceed the {k} classes (ids 0..{k - 1}); check "
                            "--ignore-index / --reduce-zero-label / --label-map", label)
        scan.present.set(i, [int(c) for c in np.unique(lut[values]) if c != IGNORE])
        scan.unknown[i] = int(counts[lut == IGNORE].sum())
    hist = scan.hist
    if not coco_mode:
        used = set(np.flatnonzero(hist))
        if used <= {0, 255} and k > 2 and 255 in used:
            warn("labels hold only the values 0 and 255: binary masks saved as 0/255? "
                 "255 is read as ignore, so the foreground would be lost")
        if convention.label_map is None and convention.ignore_index != IGNORE and hist[convention.ignore_index] == 0:
            warn(f"ignore value {convention.ignore_index} never occurs in the labels")
        if convention.reduce_zero_label and hist[0] == 0:
            warn("--reduce-zero-label is set but no label contains 0; are the labels already 0-based?")
    return scan


VALUE_ROWS = 20  # the value table shows this many of the commonest values unless --all-values


@dataclass
class ValueRow:
    """One label value as stored, and what split makes of it."""

    value: int  # as stored in the label files
    class_id: int | None  # None: ignore
    name: str
    pixels: int
    images: int | None  # images (any split) holding the class; None for ignore


@dataclass
class LabelValues:
    """What the scan found per label value, shown before novel classes are chosen: the rows (the commonest
    VALUE_ROWS unless --all-values), all label pixels, and how many rarer values were left out."""

    rows: list[ValueRow]
    pixels: int
    hidden: int
    coco: bool


def _label_values(scan: Scan, classes: list[str], convention: LabelConvention, coco_mode: bool,
                  all_values: bool) -> LabelValues:
    lut, hist = convention.lut(), scan.hist
    images_with = scan.present.counts()
    values = np.flatnonzero(hist)
    shown = values if all_values or len(values) <= VALUE_ROWS else values[np.sort(np.argsort(-hist[values])[:VALUE_ROWS])]
    rows = []
    for v in shown:
        cid = int(lut[v])
        known = cid != IGNORE
        rows.append(ValueRow(int(v), cid if known else None, classes[cid] if known else "ignore", int(hist[v]),
                             int(images_with[cid]) if known else None))
    return LabelValues(rows, int(hist.sum()), len(values) - len(shown), coco_mode)


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


def _class_id(name: str, classes: list[str], option: str) -> int:
    if name not in classes:
        raise UserError(f"{option} names unknown class {name!r}; classes are: {', '.join(classes)}")
    return classes.index(name)


def _real_mode(opts: SplitOptions, listing: Listing, scan: Scan, classes: list[str], tags: Tags, warn: Warnings
               ) -> tuple[list[int], list[int]]:
    """Base-only masks + a tags file: novel = the classes that no training mask contains and some training
    image is tagged with (or --novel); a class in neither is unused. Returns (novel, unused)."""
    train, masked = listing.indices("train"), listing.masked()
    in_train_masks = set(np.flatnonzero(scan.present.counts(train)).tolist())
    tagged = {c for i in train for c in _tags_of(tags, listing, i) or ()}
    unused = sorted(set(range(len(classes))) - in_train_masks - tagged)
    if opts.novel is not None:
        novel = _choose_novel(opts, classes, warn)
        masked_train = train[masked[train]]
        for c in novel:  # a mask that labels a novel class is an example, as long as such masks are a few
            labelled = masked_train[scan.present.column(c)[masked_train]]
            if len(labelled) > EXAMPLE_SHARE * len(masked_train):
                raise UserError(f"novel class {classes[c]!r} is labelled in {len(labelled)} of {len(masked_train)} "
                                f"training masks, more than examples ({EXAMPLE_SHARE:.0%} at most), so it is also a "
                                "base class: leave it out of --novel", listing.label(labelled[0]))
        unused = [c for c in unused if c not in novel]
    else:
        novel = sorted(tagged - in_train_masks)
        if not novel:
            raise UserError("no class is missing from the training masks and tagged in a training image, so there "
                            "is no novel class; use --novel to name them", opts.tags)
    has_novel = np.logical_or.reduce([scan.present.column(c) for c in novel])  # an example labels its novel classes
    tagged_novel = [i for i in train if masked[i] and (_tags_of(tags, listing, i) or set()) & set(novel)
                    and not has_novel[i]]
    nowhere = [i for i in tagged_novel if scan.unknown[i] == 0]
    if nowhere:
        warn(f"{len(nowhere)} of {len(tagged_novel)} masked training images tagged with a novel class have no "
             f"unknown (ignore) pixel for it (first: {listing.label(nowhere[0])}); masks that label unannotated "
             "objects as a base class (often background) hide the novel classes: pass --unknown-class NAME to "
             "make that class unknown")
    matched = {listing.stem(i) for i in range(len(listing))} | {listing.image_stem(i) for i in range(len(listing))}
    unmatched = sorted(set(tags) - matched)
    if unmatched:
        warn(f"{len(unmatched)} tagged image(s) are not in the dataset (first: {unmatched[0]!r})", opts.tags)
    return novel, unused


def run_split(opts: SplitOptions, console: Console, argv: list[str] | None = None, err: Console | None = None,
              show_values: Callable[[LabelValues], None] | None = None) -> Manifest:
    """``console`` gets the progress bars, ``err`` (default stderr) the warnings; ``show_values`` gets the label
    values as soon as they are scanned, before novel classes are chosen (whose errors they help to read)."""
    opts.check()
    warn = Warnings(err or Console(stderr=True, highlight=False), opts.strict)
    replaced = _check_out(opts)
    coco_mode = bool(opts.coco)
    if not opts.images.is_dir():
        raise UserError("image folder not found", opts.images)
    with folders.staging_folder(opts.out) as staging:
        manifest = _stage(opts, staging, replaced, coco_mode, warn, console, argv, show_values)
    manifest.root = opts.out
    return manifest


def _stage(opts: SplitOptions, staging: Path, replaced: set[Path], coco_mode: bool, warn: Warnings,
           console: Console, argv: list[str] | None, show_values: Callable[[LabelValues], None] | None) -> Manifest:
    """Build the dataset in ``staging``, then move it into --out."""
    try:
        if coco_mode:
            found, classes = _coco_pairs(opts, staging, warn)
            orphans: list[str] = []
            convention = LabelConvention()
        else:
            label_map = read_label_map(opts.label_map) if opts.label_map else None
            convention = LabelConvention(opts.ignore_index, opts.reduce_zero_label, label_map)
            classes = read_class_names(opts.classes)
            found, orphans = discover_folders(opts.images, opts.masks, opts.img_suffix, opts.mask_suffix)
        if opts.unknown_class is not None:
            convention = replace(convention, unknown_class=_class_id(opts.unknown_class, classes, "--unknown-class"))
        tags = load_tags(opts.tags, classes) if opts.tags is not None else None
        listing = _usable(found, orphans, tags, opts.images, warn)
        del found, orphans
        scan = _scan(listing, len(classes), convention, warn, console, coco_mode)
        if show_values is not None:
            show_values(_label_values(scan, classes, convention, coco_mode, opts.all_values))
        if tags is not None:
            novel, unused = _real_mode(opts, listing, scan, classes, tags, warn)
        else:
            novel = _choose_novel(opts, classes, warn)
            in_train_masks = np.flatnonzero(scan.present.counts(listing.indices("train"))).tolist()
            unused = sorted(set(range(len(classes))) - set(novel) - set(in_train_masks))
        if unused:
            warn.note(f"{len(unused)} class(es) occur in no training mask and no tag and cannot be learned; they "
                      f"are kept as unused base classes: {', '.join(classes[c] for c in unused)}")
        manifest = _write(opts, staging, listing, scan, classes, novel, unused, tags or {}, convention, argv, warn,
                          console)
        folders.commit(staging, opts.out, "split", replaced, last=MANIFEST)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was written to {opts.out}") from None
    except WriteError as e:  # name the file where it was going, not its staging copy
        raise UserError(f"cannot write ({e.reason})", opts.out / Path(e.path).relative_to(staging)) from None
    except OSError as e:
        raise UserError(f"cannot write the output folder ({e.strerror})", opts.out) from None
    return manifest


def _draw_examples(present: ClassSets, train: np.ndarray, novel: list[int], k: int, simulated: np.ndarray,
                   seed: int, warn: Warnings, classes: list[str]) -> np.ndarray:
    """Benchmark mode's --examples: K masked training images per novel class, drawn with the seed among those whose
    mask contains it; they keep their full masks. Returns [images] bool."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the tag-only draw is the same with or without examples
    chosen = np.zeros(len(present), dtype=bool)
    for c in novel if k else []:
        candidates = train[present.column(c)[train] & ~simulated[train]]
        if len(candidates) < k:
            warn(f"--examples {k}: novel class {classes[c]!r} is in only {len(candidates)} training masks; all are "
                 "examples")
        if len(candidates):
            chosen[rng.choice(candidates, min(k, len(candidates)), replace=False)] = True
    return chosen


@dataclass
class _Written:
    """What split wrote for each image of the listing, from which its manifest item is made on demand."""

    listing: Listing
    tags: ClassSets  # the item's tags
    label: np.ndarray  # [images] bool: a label file under labels/ (not tag-only)
    full: np.ndarray  # [images] bool: a full mask under full/train/ (benchmark mode's training images)
    example: np.ndarray  # [images] bool

    def item(self, i: int) -> Item:
        split, stem = self.listing.split(i), self.listing.stem(i)
        return Item(str(Path(self.listing.image(i)).resolve()),
                    f"labels/{split}/{stem}.png" if self.label[i] else None, self.tags.get(i),
                    f"full/train/{stem}.png" if self.full[i] else None, bool(self.example[i]))


class _Items(Sequence[Item]):
    """One split's manifest items, made when read: a list of Item objects would be split's largest memory cost."""

    def __init__(self, written: _Written, indices: np.ndarray):
        self.written, self.indices = written, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, n: int) -> Item:  # type: ignore[override]  # no slices: nothing reads them
        return self.written.item(int(self.indices[n]))

    def __iter__(self) -> Iterator[Item]:
        return map(self.written.item, self.indices.tolist())


def _write(opts: SplitOptions, staging: Path, listing: Listing, scan: Scan, classes: list[str], novel: list[int],
           unused: list[int], tags: Tags, convention: LabelConvention, argv: list[str] | None,
           warn: Warnings, console: Console) -> Manifest:
    benchmark = opts.tags is None
    lut = convention.lut()
    hide = np.arange(256, dtype=np.uint8)
    hide[novel] = IGNORE
    n, train, masked = len(listing), listing.indices("train"), listing.masked()
    rng = np.random.default_rng(opts.seed)
    simulated = np.zeros(n, dtype=bool)
    simulated[rng.choice(train, round(len(train) * opts.tag_only_fraction), replace=False)] = True
    examples = _draw_examples(scan.present, train, novel, opts.examples, simulated, opts.seed, warn, classes)
    if not (masked[train] & ~simulated[train]).any():
        why = (f"--tag-only-fraction {opts.tag_only_fraction} takes the mask of every one of the {len(train)} "
               "training images" if simulated.any() else "no training image has a mask (masks in val/ or test/ only)")
        raise UserError(f"{why}; weak-shot training learns the base classes from training masks", opts.out)
    written = _Written(listing, ClassSets(n, len(classes)), label=masked & ~simulated,
                       full=masked & listing.in_split("train") & benchmark, example=np.zeros(n, dtype=bool))
    cached = listing.label_root == staging / "full"  # COCO input: full/ holds the rasterised labels already
    for i in track(range(n), description="Writing labels", console=console, transient=True,
                   disable=not console.is_terminal):
        split, stem = listing.split(i), listing.stem(i)
        if not masked[i]:  # real mode: tags, no mask
            written.tags.set(i, _tags_of(tags, listing, i))
            continue
        label = lut[read_raw_label(listing.label(i))].astype(np.uint8)
        if cached and not written.full[i]:  # full/ keeps benchmark mode's training masks alone (for --oracle)
            Path(listing.label(i)).unlink()
        present = scan.present.get(i)
        written.tags.set(i, present if benchmark else set(present) | (_tags_of(tags, listing, i) or set()))
        example = split == "train" and (examples[i] if benchmark else not set(novel).isdisjoint(present))
        if written.full[i]:
            if not cached:
                write_label_png(staging / f"full/train/{stem}.png", label)
            if not example:
                label = hide[label]  # honest weak-shot: novel pixels never reach training, but on examples
        if written.label[i]:  # --tag-only-fraction: the image keeps its tags and loses its mask
            write_label_png(staging / f"labels/{split}/{stem}.png", label)
        written.example[i] = example and written.label[i]
    splits = {name: _Items(written, listing.indices(name)) for name in SPLITS if listing.in_split(name).any()}
    pairs = tag_pairs(lambda rows: written.tags.matrix(train[rows]), ~written.label[train], classes, novel)
    for p in flagged(pairs):
        warn(f"tags cannot tell {p['novel']} from {p['other']}: {p['separating']} of {len(train)} training "
             f"images separate them ({p['together']} are tagged with both); expect their names to be confused, or "
             "add masks that label them")
    tag_counts = written.tags.counts(train)
    for c in novel:
        if not tag_counts[c]:
            warn(f"novel class {classes[c]!r} is tagged in no training image; it cannot be learned")
    examples_of = written.tags.counts(train[written.example[train]])
    manifest = Manifest(
        classes=classes,
        base=[c for c in range(len(classes)) if c not in novel],
        novel=novel,
        splits=splits,
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
            "tag_only_fraction": opts.tag_only_fraction,
            "examples": {classes[c]: int(examples_of[c]) for c in novel},
            "background": opts.background,
            "label_convention": convention.as_dict(),
            "unused": unused,
            "counts": {name: {"masked": int(written.label[items.indices].sum()),
                              "tag_only": int((~written.label[items.indices]).sum()),
                              "examples": int(written.example[items.indices].sum())} for name, items in splits.items()},
            "identifiability": pairs,
        },
    )
    manifest.save(staging)
    return manifest
