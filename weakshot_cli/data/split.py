"""``weakshot split``: turn a user's dataset into a weak-shot dataset folder.

Everything is checked before anything is written; outputs are written into a staging folder beside
the target and moved into place at the end, so a failure leaves nothing behind and the user's
source files are only ever read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import track

from weakshot_cli import folders
from weakshot_cli.data import coco
from weakshot_cli.data.identify import flagged, tag_pairs
from weakshot_cli.data.labels import IGNORE, LabelConvention, open_image, read_class_names, read_label_map, \
    read_raw_label
from weakshot_cli.data.manifest import MANIFEST, Item, Manifest, image_counts
from weakshot_cli.data.presets import PRESETS, preset_num_classes
from weakshot_cli.data.sources import SPLIT_NAMES, Discovery, Pair, discover_folders, safe_join
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


@dataclass(slots=True)  # one per image: tens of thousands at COCO's scale
class Scanned:
    pair: Pair
    present: tuple[int, ...]  # class ids in the label after conversion (a tuple: a set is 3x the memory)
    unknown: int  # pixels that are 255 after conversion (every pixel of a tag-only image)

    @property
    def masked(self) -> bool:
        return self.pair.label is not None


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


def _coco_pairs(opts: SplitOptions, staging: Path, warn: Warnings) -> tuple[Discovery, list[str]]:
    """Rasterise each COCO JSON (``[split=]path``) into label PNGs cached in the new dataset. Pixels outside
    every annotation are ignore, or the class ``--background`` (a category, or a new last class)."""
    pairs, names = [], None
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
        by_id = {im.id: im for im in images}
        with tempfile.TemporaryDirectory(dir=staging, prefix=".coco-") as scratch:  # one map in memory at a time
            for image_id, label in coco.rasterise(path, images, cat_to_id, Path(scratch), background):
                unannotated, total = unannotated + int((label == coco.IGNORE).sum()), total + label.size
                pairs.append(_coco_pair(opts, split, by_id[image_id], label, staging, path))
    if opts.background is None and total and unannotated > UNANNOTATED_WARN * total:
        warn(f"{100 * unannotated / total:.0f}% of pixels lie outside every COCO annotation and become ignore, so "
             "the model learns no background and labels every pixel as some object; pass --background NAME to "
             "make them a class")
    if opts.background is not None and opts.background not in (names or []):
        names = [*(names or []), opts.background]
    return Discovery(pairs, [], []), names or []


def _coco_pair(opts: SplitOptions, split: str, im: coco.CocoImage, label: np.ndarray, staging: Path,
               path: Path) -> Pair:
    """An image of a COCO file and its rasterised label, written to the staged dataset's full/ folder."""
    image = safe_join(opts.images, im.file_name, path)
    if not image.exists() and (opts.images / split).is_dir():
        image = safe_join(opts.images / split, im.file_name, path)
    coco.check_image_size(im, image, path)
    stem = Path(im.file_name).stem
    label_path = staging / "full" / split / f"{stem}.png"
    if label_path.exists():
        raise UserError(f"duplicate image stem {stem!r} in split {split!r}", path)
    write_label_png(label_path, label)
    return Pair(split, stem, str(image), str(label_path))


def _usable(found: Discovery, tags: Tags | None, images: Path, warn: Warnings) -> list[Pair]:
    """The pairs, and in real mode each training image with tags but no label PNG as a tag-only image; any
    other image without a label is skipped, with a warning. A dataset without training images is refused."""
    tagged = [tags is not None and p.split == "train" and bool(_tags_of(tags, p)) for p in found.unlabelled]
    kept = [p for p, t in zip(found.unlabelled, tagged) if t]
    usable = found.pairs + kept
    if not usable:
        raise UserError("empty dataset: no image has a matching label" + (" or tags" if tags else ""), images)
    if not any(p.split == "train" for p in usable):
        raise UserError("no training images: every image found lies in val/ or test/ folders or has no label; do "
                        "image and mask names match (they are compared exactly, case included)?", images)
    skipped = [p.image for p, t in zip(found.unlabelled, tagged) if not t]
    if skipped:
        why = ("without tags (or with an empty tag list) or outside train" if tags is not None
               else "(give --tags to train on them as tag-only)")
        warn(f"{len(skipped)} image(s) have no label PNG and are skipped {why} (first: {skipped[0]})")
    if found.orphan_labels:
        warn(f"{len(found.orphan_labels)} label PNG(s) have no image (first: {found.orphan_labels[0]})")
    return usable


def _tags_of(tags: Tags, pair: Pair) -> set[int] | None:
    """Tags are keyed by the image's stem, with or without --img-suffix."""
    found = tags.get(pair.stem)
    return found if found is not None else tags.get(Path(pair.image).stem)


def _scan(pairs: list[Pair], k: int, convention: LabelConvention, warn: Warnings, console: Console,
          coco_mode: bool) -> tuple[list[Scanned], np.ndarray]:
    """Read every image and label once: sizes, truncation, value histogram, classes present."""
    lut = convention.lut()
    hist = np.zeros(256, dtype=np.int64)
    scanned = []
    for pair in track(pairs, description="Scanning labels", console=console, transient=True,
                      disable=not console.is_terminal):
        img = open_image(pair.image)
        if pair.label is None:
            scanned.append(Scanned(pair, (), img.width * img.height))
            continue
        raw = read_raw_label(pair.label)
        if raw.shape != (img.height, img.width):
            raise UserError(f"label is {raw.shape[1]}x{raw.shape[0]} but its image {Path(pair.image).name} is "
                            f"{img.width}x{img.height}", pair.label)
        counts = np.bincount(raw.ravel(), minlength=256)
        hist += counts
        values = np.flatnonzero(counts)
        ids = set(int(v) for v in np.unique(lut[values]))
        bad = sorted(int(v) for v in values if lut[v] != IGNORE and lut[v] >= k)
        if bad:
            raise UserError(f"label values {bad} exceed the {k} classes (ids 0..{k - 1}); check "
                            "--ignore-index / --reduce-zero-label / --label-map", pair.label)
        scanned.append(Scanned(pair, tuple(sorted(ids - {IGNORE})), int(counts[lut == IGNORE].sum())))
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


def _label_values(hist: np.ndarray, scanned: list[Scanned], classes: list[str], convention: LabelConvention,
                  coco_mode: bool, all_values: bool) -> LabelValues:
    lut = convention.lut()
    images_with = Counter(c for s in scanned for c in s.present)
    values = np.flatnonzero(hist)
    shown = values if all_values or len(values) <= VALUE_ROWS else values[np.sort(np.argsort(-hist[values])[:VALUE_ROWS])]
    rows = []
    for v in shown:
        cid = int(lut[v])
        known = cid != IGNORE
        rows.append(ValueRow(int(v), cid if known else None, classes[cid] if known else "ignore", int(hist[v]),
                             images_with[cid] if known else None))
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


def _real_mode(opts: SplitOptions, scanned: list[Scanned], classes: list[str], tags: Tags, warn: Warnings
               ) -> tuple[list[int], list[int]]:
    """Base-only masks + a tags file: novel = the classes that no training mask contains and some training
    image is tagged with (or --novel); a class in neither is unused. Returns (novel, unused)."""
    train = [s for s in scanned if s.pair.split == "train"]
    in_train_masks = {c for s in train for c in s.present}
    tagged = {c for s in train for c in _tags_of(tags, s.pair) or ()}
    unused = sorted(set(range(len(classes))) - in_train_masks - tagged)
    if opts.novel is not None:
        novel = _choose_novel(opts, classes, warn)
        masked = [s for s in train if s.masked]
        for c in novel:  # a mask that labels a novel class is an example, as long as such masks are a few
            labelled = [s for s in masked if c in s.present]
            if len(labelled) > EXAMPLE_SHARE * len(masked):
                raise UserError(f"novel class {classes[c]!r} is labelled in {len(labelled)} of {len(masked)} training "
                                f"masks, more than examples ({EXAMPLE_SHARE:.0%} at most), so it is also a base class: "
                                "leave it out of --novel", labelled[0].pair.label)
        unused = [c for c in unused if c not in novel]
    else:
        novel = sorted(tagged - in_train_masks)
        if not novel:
            raise UserError("no class is missing from the training masks and tagged in a training image, so there "
                            "is no novel class; use --novel to name them", opts.tags)
    tagged_novel = [s for s in train if s.masked and (_tags_of(tags, s.pair) or set()) & set(novel)
                    and set(novel).isdisjoint(s.present)]  # an example labels its novel classes
    nowhere = [s for s in tagged_novel if s.unknown == 0]
    if nowhere:
        warn(f"{len(nowhere)} of {len(tagged_novel)} masked training images tagged with a novel class have no "
             f"unknown (ignore) pixel for it (first: {nowhere[0].pair.label}); masks that label unannotated "
             "objects as a base class (often background) hide the novel classes: pass --unknown-class NAME to "
             "make that class unknown")
    matched = {s.pair.stem for s in scanned} | {Path(s.pair.image).stem for s in scanned}
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
            convention = LabelConvention()
        else:
            label_map = read_label_map(opts.label_map) if opts.label_map else None
            convention = LabelConvention(opts.ignore_index, opts.reduce_zero_label, label_map)
            classes = read_class_names(opts.classes)
            found = discover_folders(opts.images, opts.masks, opts.img_suffix, opts.mask_suffix)
        if opts.unknown_class is not None:
            convention = replace(convention, unknown_class=_class_id(opts.unknown_class, classes, "--unknown-class"))
        tags = load_tags(opts.tags, classes) if opts.tags is not None else None
        pairs = _usable(found, tags, opts.images, warn)
        scanned, hist = _scan(pairs, len(classes), convention, warn, console, coco_mode)
        if show_values is not None:
            show_values(_label_values(hist, scanned, classes, convention, coco_mode, opts.all_values))
        if tags is not None:
            novel, unused = _real_mode(opts, scanned, classes, tags, warn)
        else:
            novel = _choose_novel(opts, classes, warn)
            unused = sorted(set(range(len(classes))) - set(novel)
                            - {c for s in scanned if s.pair.split == "train" for c in s.present})
        if unused:
            warn.note(f"{len(unused)} class(es) occur in no training mask and no tag and cannot be learned; they "
                      f"are kept as unused base classes: {', '.join(classes[c] for c in unused)}")
        manifest = _write(opts, staging, scanned, classes, novel, unused, tags or {}, convention, argv, warn,
                          console)
        folders.commit(staging, opts.out, "split", replaced, last=MANIFEST)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: nothing was written to {opts.out}") from None
    except WriteError as e:  # name the file where it was going, not its staging copy
        raise UserError(f"cannot write ({e.reason})", opts.out / Path(e.path).relative_to(staging)) from None
    except OSError as e:
        raise UserError(f"cannot write the output folder ({e.strerror})", opts.out) from None
    return manifest


def _draw_examples(scanned: list[Scanned], train: list[int], novel: list[int], k: int, simulated: set[int],
                   seed: int, warn: Warnings, classes: list[str]) -> set[int]:
    """Benchmark mode's --examples: K masked training images per novel class, drawn with the seed among those whose
    mask contains it; they keep their full masks."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the tag-only draw is the same with or without examples
    chosen: set[int] = set()
    for c in novel if k else []:
        candidates = [i for i in train if c in scanned[i].present and i not in simulated]
        if len(candidates) < k:
            warn(f"--examples {k}: novel class {classes[c]!r} is in only {len(candidates)} training masks; all are "
                 "examples")
        chosen |= set(rng.choice(candidates, min(k, len(candidates)), replace=False).tolist()) if candidates else set()
    return chosen


def _write(opts: SplitOptions, staging: Path, scanned: list[Scanned], classes: list[str], novel: list[int],
           unused: list[int], tags: Tags, convention: LabelConvention, argv: list[str] | None,
           warn: Warnings, console: Console) -> Manifest:
    benchmark = opts.tags is None
    lut = convention.lut()
    hide = np.arange(256, dtype=np.uint8)
    hide[novel] = IGNORE
    train = [i for i, s in enumerate(scanned) if s.pair.split == "train"]
    rng = np.random.default_rng(opts.seed)
    simulated = set(rng.choice(train, round(len(train) * opts.tag_only_fraction), replace=False).tolist())
    examples = _draw_examples(scanned, train, novel, opts.examples, simulated, opts.seed, warn, classes)
    if all(scanned[i].pair.label is None or i in simulated for i in train):
        why = (f"--tag-only-fraction {opts.tag_only_fraction} takes the mask of every one of the {len(train)} "
               "training images" if simulated else "no training image has a mask (masks in val/ or test/ only)")
        raise UserError(f"{why}; weak-shot training learns the base classes from training masks", opts.out)
    splits: dict[str, list[Item]] = {}
    for i, s in enumerate(track(scanned, description="Writing labels", console=console, transient=True,
                                disable=not console.is_terminal)):
        split = s.pair.split
        if s.pair.label is None:  # real mode: tags, no mask
            splits.setdefault(split, []).append(Item(str(Path(s.pair.image).resolve()), None,
                                                     sorted(_tags_of(tags, s.pair)), None))
            continue
        label = lut[read_raw_label(s.pair.label)].astype(np.uint8)
        item_tags = set(s.present) | (set() if benchmark else _tags_of(tags, s.pair) or set())
        full = None
        example = split == "train" and (i in examples if benchmark else not set(novel).isdisjoint(s.present))
        if split == "train" and benchmark:
            full = f"full/train/{s.pair.stem}.png"
            if s.pair.label != str(staging / full):  # COCO input already cached it there
                write_label_png(staging / full, label)
            if not example:
                label = hide[label]  # honest weak-shot: novel pixels never reach training, but on examples
        rel = None
        if i not in simulated:  # --tag-only-fraction: the image keeps its tags and loses its mask
            rel = f"labels/{split}/{s.pair.stem}.png"
            write_label_png(staging / rel, label)
        splits.setdefault(split, []).append(Item(str(Path(s.pair.image).resolve()), rel, sorted(item_tags), full,
                                                 example and rel is not None))
    train_items = splits.get("train", [])
    pairs = tag_pairs([set(it.tags) for it in train_items], [it.label is None for it in train_items], classes, novel)
    for p in flagged(pairs):
        warn(f"tags cannot tell {p['novel']} from {p['other']}: {p['separating']} of {len(train_items)} training "
             f"images separate them ({p['together']} are tagged with both); expect their names to be confused, or "
             "add masks that label them")
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
            "tag_only_fraction": opts.tag_only_fraction,
            "examples": {classes[c]: sum(it.example and c in it.tags for it in splits.get("train", []))
                         for c in novel},
            "background": opts.background,
            "label_convention": convention.as_dict(),
            "unused": unused,
            "counts": {name: image_counts(items) for name, items in splits.items()},
            "identifiability": pairs,
        },
    )
    manifest.save(staging)
    return manifest
