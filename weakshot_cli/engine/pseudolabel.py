"""``weakshot pseudolabel``: novel-class masks for the training images, kept only where the image's tags
allow (keep mode) or chosen among the classes they allow (choose mode), with base ground truth winning (a
tag-only image, having none, takes any class it is tagged with); written as a new dataset, resumably, the input
left untouched, with a report of what the tags alone can check (and, in benchmark mode, the full masks)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader

from weakshot_cli import folders
from weakshot_cli.data.coco import stuff_coco
from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.identify import flagged
from weakshot_cli.data.labels import IGNORE, read_raw_label
from weakshot_cli.data.manifest import MANIFEST, Item, Manifest, load_manifest
from weakshot_cli.engine.checks import check_classes, check_image_sizes
from weakshot_cli.engine.inference import Inference, InferenceOptions, ScoreMap
from weakshot_cli.engine.metrics import confusion
from weakshot_cli.engine.progress import image_bar
from weakshot_cli.errors import Interrupted, UserError
from weakshot_cli.io import write_json, write_label_png

STATE = ".pseudolabel-state.json"
REPORT = "pseudolabel.json"
COCO = "coco.json"
MODES = ("keep", "choose")


@dataclass(kw_only=True)
class PseudolabelOptions(InferenceOptions):
    dataset: Path
    out: Path
    min_score: float = 0.0
    tag_only_min_score: float | None = None  # None: min_score
    mode: str = "choose"
    exist_ok: bool = False
    coco: bool = False

    def check(self) -> None:
        for option, value in (("--min-score", self.min_score), ("--tag-only-min-score", self.tag_only_min_score)):
            if value is not None and not 0 <= value < float("inf"):  # also refuses nan; inf would drop every pixel
                raise UserError(f"{option} must be >= 0 and finite, got {value}")
        if self.mode not in MODES:
            raise UserError(f"--mode must be keep or choose, got {self.mode!r}")
        super().check()

    def threshold(self, item: Item) -> float:
        """A tag-only image's labels all come from the model, so they may need a stricter score than novel pixels
        beside a base mask."""
        return self.min_score if item.label is not None else self.tag_only_threshold

    @property
    def tag_only_threshold(self) -> float:
        return self.min_score if self.tag_only_min_score is None else self.tag_only_min_score


def pseudo_label(scores: torch.Tensor, base_label: np.ndarray, tags: Sequence[int], min_score: float = 0.0,
                 mode: str = "keep") -> np.ndarray:
    """Ignore everywhere, except: a pixel takes a class of ``tags`` whose score is at least ``min_score``, and a
    base ground-truth pixel keeps its class. Keep mode (the paper's) takes only the pixel's winning class, so a
    tagged class that loses to an untagged one is lost; choose mode takes the best of ``tags``, so a novel class
    the model confuses with a base class still gets its pixels."""
    tags = list(tags)
    candidates = tags if mode == "choose" else list(range(scores.shape[0]))
    out = np.full(base_label.shape, IGNORE, np.uint8)
    if candidates:  # choose mode with no allowed class leaves everything unknown as ignore
        score, best = scores[candidates].max(0)
        pred = np.asarray(candidates)[best.numpy()]
        chosen = np.isin(pred, tags) & (score.numpy() >= min_score)
        out[chosen] = pred[chosen]
    known = base_label != IGNORE
    out[known] = base_label[known]
    return out


def keep_classes(item: Item, novel: Sequence[int]) -> list[int]:
    """The classes a pixel's prediction may keep: a masked image's base classes are all in its mask, so only its
    novel tags; a tag-only image (no mask) has no base ground truth, so every tag, base or novel."""
    return list(item.tags) if item.label is None else [t for t in item.tags if t in novel]


def image_stats(scores: torch.Tensor, base_label: np.ndarray, pseudo: np.ndarray, classes: Sequence[str],
                novel: Sequence[int], min_score: float = 0.0) -> dict:
    """What one image contributes to ``tag_check``, saved beside its label so a resumed run reports on the images
    labelled before the interruption too: its unknown pixels (no base ground truth), how many got a
    pseudo-label, per novel class pseudo-labelled on at least one of them the pixel count and the class's summed
    score there (its winning score in keep mode; choose mode may label a class that did not win), and the novel
    classes *predicted* on them (winning class, score at least ``min_score``; before the tag filter)."""
    unknown = base_label == IGNORE
    ys, xs = np.nonzero(unknown & (pseudo != IGNORE))
    got = pseudo[ys, xs]
    k = scores.shape[0]
    pixels = np.bincount(got, minlength=k)
    score_sum = np.bincount(got, weights=scores.numpy()[got, ys, xs].astype(np.float64), minlength=k)
    score, pred = scores.max(0)
    predicted = set(pred.numpy()[unknown & (score.numpy() >= min_score)].tolist())
    return {"unknown": int(unknown.sum()), "labelled": len(got),
            "pseudo": {classes[c]: {"pixels": int(pixels[c]), "score_sum": float(score_sum[c])}
                       for c in novel if pixels[c]},
            "predicted": [classes[c] for c in novel if c in predicted]}


def tag_check(stats: Sequence[dict], tags: Sequence[Sequence[int]], classes: Sequence[str],
              novel: Sequence[int]) -> dict:
    """The quality signal that needs no ground truth, from ``image_stats`` and each image's tags. Per novel class c:
    found_pct: images tagged c with at least one pixel pseudo-labelled c, % of the images tagged c;
    untagged_predicted_pct: images not tagged c where c was predicted (then refused by the tag filter: left
    ignore, or in choose mode given a tagged class), % of the images not tagged c; coverage_pct: pixels
    pseudo-labelled c, % of the unknown pixels of the images tagged c; mean_score: mean score of c (the
    --min-score scale, 3 decimals) over the pixels pseudo-labelled c. Overall: labelled_pct, the share of all
    unknown pixels that got a pseudo-label. A share of nothing is None."""
    pct = lambda a, b: 100 * a / b if b else None  # noqa: E731
    per_class = {}
    for c in novel:
        name = classes[c]
        tagged = [s for s, t in zip(stats, tags) if c in t]
        untagged = [s for s, t in zip(stats, tags) if c not in t]
        found = [s["pseudo"][name] for s in tagged if name in s["pseudo"]]
        pixels = sum(f["pixels"] for f in found)
        per_class[name] = {
            "tagged_images": len(tagged), "found_pct": pct(len(found), len(tagged)),
            "untagged_images": len(untagged),
            "untagged_predicted_pct": pct(sum(name in s["predicted"] for s in untagged), len(untagged)),
            "pixels": pixels, "coverage_pct": pct(pixels, sum(s["unknown"] for s in tagged)),
            "mean_score": round(sum(f["score_sum"] for f in found) / pixels, 3) if pixels else None}
    unknown = sum(s["unknown"] for s in stats)
    return {"per_class": per_class, "unknown_pixels": unknown,
            "labelled_pct": pct(sum(s["labelled"] for s in stats), unknown)}


def _label_names(items: list[Item]) -> list[str]:
    """labels/train/<image stem>.png, prefixed with the item's index where two stems collide."""
    stems = [Path(it.image).stem for it in items]
    counts = Counter(stems)
    return [f"labels/train/{s if counts[s] == 1 else f'{i:06d}_{s}'}.png" for i, s in enumerate(stems)]


def _stats_name(label_name: str) -> str:
    """stats/train/<name>.json beside labels/train/<name>.png: the image's ``image_stats``."""
    return f"stats/train/{Path(label_name).stem}.json"


def _unfinished(out: Path, names: list[str]) -> set[int]:
    """Images still to label: the label or its statistics is missing."""
    return {i for i, name in enumerate(names) if not (out / name).exists() or not (out / _stats_name(name)).exists()}


def _batches(m: Manifest, indices: list[int], batch: int) -> list[list[int]]:
    """Batches of images with the same original size: padding never differs from an image's own, so its
    pseudo-label does not depend on its batch neighbours and a resumed run labels as an uninterrupted one."""
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for i in indices:
        try:
            with Image.open(m.resolve(m.splits["train"][i].image)) as im:  # reads the header only
                size = im.size
        except (OSError, Image.DecompressionBombError):
            size = None  # the loader reports the file properly
        groups.setdefault(size, []).append(i)
    return [g[j:j + batch] for g in groups.values() for j in range(0, len(g), batch)]


def _prepare(out: Path, root: Path, state: dict, exist_ok: bool) -> None:
    """Start, resume (same options) or, with --exist-ok, start over; never write into the input, and never into a
    folder pseudolabel did not make."""
    src, dst = root.resolve(), out.resolve()
    if dst == src or dst.is_relative_to(src):
        raise UserError("the output folder may not be the input dataset or lie inside it", out)
    state_path = out / STATE
    if folders.claim(out, "pseudolabel"):
        pass  # a new folder
    elif exist_ok:
        own = [out / name for name in (MANIFEST, REPORT, STATE, COCO)]
        for folder, pattern in (("labels", "*.png"), ("stats", "*.json")):
            own += (out / folder / "train").glob(pattern)
        folders.remove_own(out, "pseudolabel", own)
    elif (out / MANIFEST).exists():
        raise UserError("already holds a finished dataset; pass --exist-ok to redo it or choose another -o", out)
    elif state_path.exists():
        try:
            previous = json.loads(state_path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != state:
            changed = sorted(k for k in state if not isinstance(previous, dict) or previous.get(k) != state[k])
            raise UserError("holds an unfinished pseudo-labelling run with other options "
                            f"({', '.join(changed[:3]) or 'unreadable'}); rerun with the same options to resume, "
                            "pass --exist-ok to start over, or choose another -o", out)
    write_json(state_path, state)
    for folder in ("labels", "stats"):
        folders.remove_interrupted_writes(out / folder / "train")


def quality(cm: np.ndarray, m: Manifest) -> dict:
    """Novel IoU of pseudo-labels against the full masks; pixels left ignore (column k) count as misses."""
    k = len(m.classes)
    tp, gt, pred = np.diag(cm)[:k], cm[:k].sum(1), cm[:, :k].sum(0)
    pct = lambda a, b: 100 * float(a / b) if b else None  # noqa: E731
    iou = {m.classes[c]: pct(tp[c], gt[c] + pred[c] - tp[c]) for c in m.novel}
    values = [v for v in iou.values() if v is not None]
    novel_gt, labelled = int(gt[m.novel].sum()), int(cm[m.novel, :k].sum())
    return {"novel_mIoU": float(np.mean(values)) if values else None, "novel_IoU": iou,
            "precision": {m.classes[c]: pct(tp[c], pred[c]) for c in m.novel}, "coverage": pct(labelled, novel_gt),
            "pixels": {"novel_ground_truth": novel_gt, "novel_labelled": labelled,
                       "per_class": {m.classes[c]: {"ground_truth": int(gt[c]), "pseudo": int(pred[c]),
                                                    "correct": int(tp[c])} for c in m.novel}}}


def _run_state(o: PseudolabelOptions, imgsz: int) -> dict:
    """What a run resumes only with: the same checkpoint file (path, size, time), dataset, label options, and what
    changes the scores: precision and batch (an image's padded batch neighbours)."""
    checkpoint = Path(o.checkpoint)
    stat = os.stat(checkpoint if checkpoint.is_file() else checkpoint / "weights" / "last.pt")
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_bytes": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "dataset": str(o.dataset.resolve()), "imgsz": imgsz,
            "min_score": o.min_score, "tag_only_min_score": o.tag_only_threshold, "mode": o.mode, "flip": o.flip,
            "scales": list(o.scales), "amp": o.amp, "batch": o.batch}


def label_image(scores: ScoreMap, base: np.ndarray, item: Item, m: Manifest, min_score: float,
                mode: str) -> tuple[np.ndarray, dict]:
    """pseudo_label and image_stats of one image, a strip of rows at a time (scores at full size can take GBs)."""
    pseudo = np.empty_like(base)
    parts = []
    for y0, strip in scores.strips():
        rows = slice(y0, y0 + strip.shape[1])
        strip = strip.cpu()
        pseudo[rows] = pseudo_label(strip, base[rows], keep_classes(item, m.novel), min_score, mode)
        parts.append(image_stats(strip, base[rows], pseudo[rows], m.classes, m.novel, min_score))
    return pseudo, merge_stats(parts, [m.classes[c] for c in m.novel])


def merge_stats(parts: Sequence[dict], novel_names: Sequence[str]) -> dict:
    """The image_stats of a whole image from those of its strips."""
    pseudo = {}
    for name in novel_names:
        found = [p["pseudo"][name] for p in parts if name in p["pseudo"]]
        if found:
            pseudo[name] = {"pixels": sum(f["pixels"] for f in found), "score_sum": sum(f["score_sum"] for f in found)}
    return {"unknown": sum(p["unknown"] for p in parts), "labelled": sum(p["labelled"] for p in parts),
            "pseudo": pseudo, "predicted": [n for n in novel_names if any(n in p["predicted"] for p in parts)]}


def _label_images(run: Inference, loader: DataLoader, m: Manifest, names: list[str], todo: set[int],
                  o: PseudolabelOptions, console: Console, total: int, done: int) -> None:
    """Pseudo-label the images in ``todo`` that this process's loader holds; each image's statistics are written
    before its label, so a label on disk always has its statistics beside it."""
    items = m.splits["train"]
    with image_bar(console) as bar:
        task = bar.add_task("pseudo-label", total=total, completed=done)
        for b in loader:
            scores = run(b["image"], b["sizes"], [x.shape for x in b["labels"]])
            for s, base_label, i in zip(scores, b["labels"], b["index"]):
                if i not in todo:
                    continue
                pseudo, stats = label_image(s, base_label.numpy().astype(np.uint8), items[i], m,
                                            o.threshold(items[i]), o.mode)
                write_json(o.out / _stats_name(names[i]), stats)
                write_label_png(o.out / names[i], pseudo)
                bar.advance(task)


def _report(o: PseudolabelOptions, m: Manifest, names: list[str]) -> dict:
    """The labelling rule, the tag check over every image's statistics and, in benchmark mode, the scores against
    the full masks."""
    out, items = o.out, m.splits["train"]
    stats = [json.loads((out / _stats_name(name)).read_text()) for name in names]
    report: dict = {"mode": o.mode, "min_score": o.min_score, "tag_only_min_score": o.tag_only_threshold,
                    "images": len(items), "tag_only_images": sum(it.label is None for it in items),
                    "tag_check": tag_check(stats, [it.tags for it in items], m.classes, m.novel)}
    for p in flagged(m.source.get("identifiability") or []):  # split's warning, beside the check it explains
        for name, other in ((p["novel"], p["other"]), (p["other"], p["novel"])):
            if name in report["tag_check"]["per_class"]:
                report["tag_check"]["per_class"][name].setdefault("tags_cannot_separate", []).append(other)
    sources = {"masked": [i for i, it in enumerate(items) if it.label is not None],
               "tag_only": [i for i, it in enumerate(items) if it.label is None]}
    if all(sources.values()):  # each kind apart: a tag-only image has no base mask to win over the model
        report["by_source"] = {
            kind: {"images": len(idx), "tag_check": tag_check([stats[i] for i in idx], [items[i].tags for i in idx],
                                                              m.classes, m.novel)} for kind, idx in sources.items()}
    if all(it.full for it in items):  # benchmark mode: score against the kept full masks
        k = len(m.classes)
        cms = {kind: torch.zeros(k + 1, k + 1, dtype=torch.long) for kind in sources}
        for kind, idx in sources.items():
            for i in idx:
                pseudo = torch.from_numpy(read_raw_label(out / names[i]).astype(np.int64))
                gt = torch.from_numpy(read_raw_label(m.resolve(items[i].full)).astype(np.int64))
                cms[kind] += confusion(torch.where(pseudo == IGNORE, k, pseudo), gt, k + 1)  # ignore -> column k
        report |= quality(sum(cms.values()).numpy(), m)
        for kind in report.get("by_source", {}):
            report["by_source"][kind] |= quality(cms[kind].numpy(), m)
    return report


def _pseudo_manifest(m: Manifest, names: list[str], state: dict, novel_pixels: int) -> Manifest:
    """The input dataset with absolute paths, its training labels replaced by the pseudo-labels in ``names``."""
    absolute = lambda rel: str(m.resolve(rel)) if rel is not None else None  # noqa: E731
    splits = {name: [Item(absolute(it.image), absolute(it.label), it.tags, absolute(it.full))
                     for it in split_items] for name, split_items in m.splits.items()}
    splits["train"] = [Item(absolute(it.image), name, it.tags, absolute(it.full))
                       for it, name in zip(m.splits["train"], names)]
    tag_only = [name for it, name in zip(m.splits["train"], names) if it.label is None]
    return Manifest(m.classes, m.base, m.novel, splits, novel_masks=True,
                    source={"command": "pseudolabel", **state, "novel_pixels": novel_pixels,
                            "tag_only_labels": tag_only})


def _write_coco(out: Path, m: Manifest, names: list[str]) -> None:
    """The expanded training labels as one COCO stuff JSON; file names are relative to the folder all training
    images lie below (``info.images``), so that ``split --images THAT --coco coco.json`` reads them back."""
    images = [m.resolve(it.image) for it in m.splits["train"]]
    root = Path(os.path.commonpath([p.parent for p in images]))
    labels = ((p.relative_to(root).as_posix(), read_raw_label(out / name)) for p, name in zip(images, names))
    write_json(out / COCO, stuff_coco(labels, m.classes, {"description": "weakshot pseudolabel: training labels",
                                                          "images": str(root)}))


def run_pseudolabel(o: PseudolabelOptions, console: Console, err: Console | None = None) -> dict:
    """Check everything before the output folder is touched, label the images an earlier run left, then write the
    report and the new dataset; returns the report (the CLI prints it as tables). Warnings go to ``err`` (default
    stderr)."""
    o.check()
    run = Inference.load(o)
    ckpt, imgsz = run.ckpt, run.imgsz
    m = load_manifest(o.dataset)
    check_classes(ckpt, m, o.checkpoint)
    if not m.splits.get("train"):
        raise UserError("the dataset has no training images to pseudo-label", o.dataset)
    state = _run_state(o, imgsz)
    check_image_sizes(m, "train", imgsz, o.scales)
    ddp = run.ddp
    ddp.on_main(lambda: _prepare(o.out, m.root, state, o.exist_ok))
    items = m.splits["train"]
    names = _label_names(items)
    todo = _unfinished(o.out, names)
    # Batches are cut from all images, then only those with work left run: a resumed run scores every image with
    # the same batch neighbours as an uninterrupted one (scores differ in the last bits with batch composition).
    # Under torchrun each process takes every world-th of them, so N processes write what one writes.
    batches = ddp.shard([b for b in _batches(m, list(range(len(items))), o.batch) if todo.intersection(b)])
    loader = DataLoader(EvalDataset(m, "train", imgsz or None), batch_sampler=batches, collate_fn=collate_eval,
                        num_workers=o.workers)
    shown = console if ddp.main else Console(quiet=True)
    done = len(items) - len(todo)
    try:
        _label_images(run, loader, m, names, todo, o, shown, done + sum(len(todo.intersection(b)) for b in batches),
                      done)
        ddp.barrier()
        if not ddp.main:
            return {}
        report = _report(o, m, names)
        per_class = report["tag_check"]["per_class"]
        new = _pseudo_manifest(m, names, state, sum(c["pixels"] for c in per_class.values()))
        write_json(o.out / REPORT, report)
        if o.coco:
            _write_coco(o.out, m, names)
        new.save(o.out)  # last: its presence marks a finished dataset
    except KeyboardInterrupt:
        kept = len(items) - len(_unfinished(o.out, names))
        raise Interrupted(f"interrupted: {kept} of {len(items)} pseudo-labels kept in {o.out}; rerun the same "
                          "command to resume") from None
    console.print(f"Pseudo-labelled {len(items)} training images ({len(items) - len(todo)} from an earlier run); "
                  f"dataset: [bold]{o.out / MANIFEST}[/]" + (f", COCO: {o.out / COCO}" if o.coco else ""))
    empty = [name for name, c in per_class.items() if c["tagged_images"] and not c["pixels"]]
    if empty:
        err = err or Console(stderr=True, highlight=False)
        err.print(f"[yellow]warning:[/] {len(empty)} of {len(per_class)} novel classes got no pixel "
                  f"({', '.join(empty)}){' at --min-score ' + str(o.min_score) if o.min_score else ''}; retrain "
                  "cannot learn them", soft_wrap=True)
    return report
