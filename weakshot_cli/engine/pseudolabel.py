"""``weakshot pseudolabel``: novel-class masks for the training images, kept only where the image's tags
allow, with base ground truth winning; written as a new dataset, resumably, the input left untouched."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch.utils.data import DataLoader

from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.labels import IGNORE, read_raw_label
from weakshot_cli.data.manifest import MANIFEST, Item, Manifest, load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.distributed import resolve_device
from weakshot_cli.engine.evaluate import check_classes, check_image_sizes
from weakshot_cli.engine.inference import class_scores, inference_size, model_from_checkpoint
from weakshot_cli.engine.metrics import confusion
from weakshot_cli.errors import UserError
from weakshot_cli.io import remove_interrupted_writes, write_json, write_label_png

STATE = ".pseudolabel-state.json"
REPORT = "pseudolabel.json"


def pseudo_label(scores: torch.Tensor, base_label: np.ndarray, novel_tags: Sequence[int],
                 min_score: float = 0.0) -> np.ndarray:
    """Ignore everywhere, except: a pixel whose winning class is a novel class in the image's tags (with a
    score of at least ``min_score``) takes that class, and a base ground-truth pixel keeps its class."""
    score, pred = scores.max(0)
    pred, score = pred.numpy(), score.numpy()
    out = np.full(base_label.shape, IGNORE, np.uint8)
    novel = np.isin(pred, list(novel_tags)) & (score >= min_score)
    out[novel] = pred[novel]
    known = base_label != IGNORE
    out[known] = base_label[known]
    return out


def _label_names(items: list[Item]) -> list[str]:
    """labels/train/<image stem>.png, prefixed with the item's index where two stems collide."""
    stems = [Path(it.image).stem for it in items]
    counts = Counter(stems)
    return [f"labels/train/{s if counts[s] == 1 else f'{i:06d}_{s}'}.png" for i, s in enumerate(stems)]


def _batches(m: Manifest, todo: list[int], batch: int) -> list[list[int]]:
    """Batches of images with the same original size: padding never differs from an image's own, so its
    pseudo-label does not depend on its batch neighbours and a resumed run labels as an uninterrupted one."""
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for i in todo:
        try:
            with Image.open(m.resolve(m.splits["train"][i].image)) as im:  # reads the header only
                size = im.size
        except (OSError, Image.DecompressionBombError):
            size = None  # the loader reports the file properly
        groups.setdefault(size, []).append(i)
    return [g[j:j + batch] for g in groups.values() for j in range(0, len(g), batch)]


def _prepare(out: Path, root: Path, state: dict, exist_ok: bool) -> None:
    """Start, resume (same options) or, with --exist-ok, start over; never write into the input."""
    src, dst = root.resolve(), out.resolve()
    if dst == src or dst.is_relative_to(src):
        raise UserError("the output folder may not be the input dataset or lie inside it", out)
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder", out)
    state_path = out / STATE
    if exist_ok:
        for name in (MANIFEST, REPORT, STATE):
            (out / name).unlink(missing_ok=True)
        for png in (out / "labels" / "train").glob("*.png") if (out / "labels" / "train").is_dir() else []:
            png.unlink()
    elif (out / MANIFEST).exists():
        raise UserError("already holds a finished dataset; pass --exist-ok to redo it or choose another -o", out)
    elif state_path.exists():
        try:
            previous = json.loads(state_path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != state:
            raise UserError("holds an unfinished pseudo-labelling run with other options; rerun with the same "
                            "options to resume, pass --exist-ok to start over, or choose another -o", out)
    elif out.exists() and any(out.iterdir()):
        raise UserError("folder exists and is not a pseudo-labelling run; choose another -o", out)
    write_json(state_path, state)
    remove_interrupted_writes(out / "labels" / "train")


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


def run_pseudolabel(checkpoint: Path, dataset: Path, out: Path, device: str, imgsz: int | None, batch: int,
                    workers: int, min_score: float, flip: bool, scales: Sequence[float], exist_ok: bool,
                    console: Console) -> dict:
    ckpt = load_checkpoint(checkpoint)
    m = load_manifest(dataset)
    check_classes(ckpt, m, checkpoint)
    if not m.splits.get("train"):
        raise UserError("the dataset has no training images to pseudo-label", dataset)
    imgsz = inference_size(ckpt, imgsz)
    stat = os.stat(checkpoint if Path(checkpoint).is_file() else Path(checkpoint) / "weights" / "last.pt")
    state = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_bytes": stat.st_size,
             "checkpoint_mtime_ns": stat.st_mtime_ns, "dataset": str(dataset.resolve()), "imgsz": imgsz,
             "min_score": min_score, "flip": flip, "scales": list(scales)}
    check_image_sizes(m, "train", imgsz, scales)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, str(checkpoint))
    _prepare(out, m.root, state, exist_ok)
    items = m.splits["train"]
    names = _label_names(items)
    todo = [i for i, name in enumerate(names) if not (out / name).exists()]
    loader = DataLoader(EvalDataset(m, "train", imgsz or None), batch_sampler=_batches(m, todo, batch),
                        collate_fn=collate_eval, num_workers=workers)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("pseudo-label", total=len(items), completed=len(items) - len(todo))
        for b in loader:
            scores = class_scores(model, b["image"].to(dev), b["sizes"], [x.shape for x in b["labels"]], flip, scales)
            for s, base_label, i in zip(scores, b["labels"], b["index"]):
                tags = [t for t in items[i].tags if t in m.novel]
                write_label_png(out / names[i], pseudo_label(s.cpu(), base_label.numpy().astype(np.uint8), tags,
                                                             min_score))
            bar.advance(task, len(b["index"]))

    report: dict = {"images": len(items)}
    if all(it.full for it in items):  # benchmark mode: score against the kept full masks
        k = len(m.classes)
        cm = torch.zeros(k + 1, k + 1, dtype=torch.long)
        for it, name in zip(items, names):
            pseudo = torch.from_numpy(read_raw_label(out / name).astype(np.int64))
            gt = torch.from_numpy(read_raw_label(m.resolve(it.full)).astype(np.int64))
            cm += confusion(torch.where(pseudo == IGNORE, k, pseudo), gt, k + 1)  # ignore -> extra column k
        report |= quality(cm.numpy(), m)
    absolute = lambda rel: str(m.resolve(rel)) if rel is not None else None  # noqa: E731
    splits = {name: [Item(absolute(it.image), absolute(it.label), it.tags, absolute(it.full)) for it in split_items]
              for name, split_items in m.splits.items()}
    splits["train"] = [Item(absolute(it.image), name, it.tags, absolute(it.full)) for it, name in zip(items, names)]
    new = Manifest(m.classes, m.base, m.novel, splits, novel_masks=True,
                   source={"command": "pseudolabel", **state})
    write_json(out / REPORT, report)
    new.save(out)  # last: its presence marks a finished dataset
    if report.get("novel_mIoU") is not None:
        table = Table(title="pseudo-labels vs full masks, training images (%)")
        for col in ("novel class", "IoU", "precision"):
            table.add_column(col, justify="left" if col == "novel class" else "right")
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        for c in m.novel:
            name = m.classes[c]
            table.add_row(name, fmt(report["novel_IoU"][name]), fmt(report["precision"][name]))
        table.add_section()
        table.add_row("novel mIoU", fmt(report["novel_mIoU"]), "")
        table.add_row("coverage of novel pixels", fmt(report["coverage"]), "")
        console.print(table)
    console.print(f"Pseudo-labelled {len(items)} training images ({len(items) - len(todo)} from an earlier run); "
                  f"dataset: [bold]{out / MANIFEST}[/]")
    return report
