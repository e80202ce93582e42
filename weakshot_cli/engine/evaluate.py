"""``weakshot evaluate``: one confusion matrix at original resolution, metrics and plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from weakshot_cli.data.dataset import EvalDataset, collate_eval, load_rgb
from weakshot_cli.data.labels import read_raw_label
from weakshot_cli.data.manifest import Manifest, load_manifest
from weakshot_cli.engine.checks import check_classes, check_image_sizes
from weakshot_cli.engine.inference import Inference, InferenceOptions, confusion_over
from weakshot_cli.engine.metrics import compute_metrics
from weakshot_cli.engine.plots import plot_class_iou, plot_confusion, plot_samples
from weakshot_cli.engine.progress import image_bar
from weakshot_cli.folders import provisional_run_dir
from weakshot_cli.engine.visualise import default_palette, legend_entries, overlay, untinted
from weakshot_cli.errors import UserError
from weakshot_cli.io import finite_or_null, write_json


@dataclass(kw_only=True)
class EvaluateOptions(InferenceOptions):
    dataset: Path
    split: str = "val"
    project: Path = Path("runs")
    name: str | None = None
    exist_ok: bool = False
    samples: int = 6

    def check(self) -> None:
        super().check()
        if self.samples < 0:
            raise UserError(f"--samples must be >= 0, got {self.samples}")


def check_split(m: Manifest, split: str, dataset: Path) -> None:
    """Refuse splits without full ground truth: training labels hide the novel classes."""
    if split not in m.splits or not m.splits[split]:
        raise UserError(f"no split {split!r} in the dataset (it has: {', '.join(m.splits)})", dataset)
    items = m.splits[split]
    if any(it.label is None for it in items):
        raise UserError(f"split {split!r} has images without masks; evaluate needs ground truth", dataset)
    if split == "train" and any(it.full is None for it in items):
        raise UserError("training labels hide the novel classes and this dataset keeps no full masks; "
                        "evaluate a split with full ground truth (--split val)", dataset)


def _plot_samples(kept: dict[int, torch.Tensor], m: Manifest, split: str, palette: list[int], path: Path) -> None:
    """Image, ground truth and prediction of the kept images, one row each."""
    rows, shown, skip = [], [], untinted(m.classes)
    for i, pred in sorted(kept.items()):
        item = m.splits[split][i]
        image = load_rgb(m.resolve(item.image)).permute(1, 2, 0).numpy()
        gt = read_raw_label(m.resolve(item.full or item.label))
        label = pred.numpy().astype(np.uint8)
        rows.append((image, overlay(image, gt, palette, skip=skip), overlay(image, label, palette, skip=skip)))
        shown += [gt, label]
    plot_samples(rows, path, legend_entries(shown, m.classes, palette))


def run_evaluate(o: EvaluateOptions, console: Console) -> dict:
    """Check everything before the run folder exists, then score the split; returns metrics.json's content and
    the run folder (the CLI prints it as a table)."""
    o.check()
    run = Inference.load(o)
    ckpt, imgsz = run.ckpt, run.imgsz
    m = load_manifest(o.dataset)
    check_classes(ckpt, m, o.checkpoint)
    check_split(m, o.split, o.dataset)
    check_image_sizes(m, o.split, imgsz, o.scales)
    data, ddp = EvalDataset(m, o.split, imgsz or None, full=True), run.ddp
    # under torchrun each process scores every world-th batch; their confusion matrices add up
    batches = ddp.shard([list(range(i, min(i + o.batch, len(data)))) for i in range(0, len(data), o.batch)])
    loader = DataLoader(data, batch_sampler=batches, collate_fn=collate_eval, num_workers=o.workers)
    kept: dict[int, torch.Tensor] = {}

    def keep(index: int, pred: torch.Tensor) -> None:  # the first few predictions, for the overlay grid
        if index < o.samples:
            kept[index] = pred

    with provisional_run_dir(o.project, "evaluate", o.name, o.exist_ok, ddp=ddp) as run_dir:
        with image_bar(console if ddp.main else Console(quiet=True)) as bar:
            task = bar.add_task(f"evaluate {o.split}", total=sum(map(len, batches)))
            cm = confusion_over(run, loader, len(m.classes), lambda n: bar.advance(task, n), keep)
        cm = sum(ddp.gather(cm))
        kept = {i: pred for part in ddp.gather(kept) for i, pred in part.items()}
        metrics = compute_metrics(cm, m.base, m.novel)
        if not ddp.main:
            return {}
        per_class = {name: {"type": "novel" if i in m.novel else "base", "IoU": metrics["IoU"][i],
                            "Acc": metrics["Acc"][i], "Precision": metrics["Precision"][i]}
                     for i, name in enumerate(m.classes)}
        result = {"checkpoint": str(o.checkpoint), "dataset": str(o.dataset), "split": o.split,
                  "images": len(data), "imgsz": imgsz, "flip": o.flip, "scales": list(o.scales),
                  "novel_scale": ckpt.get("novel_scale", 1.0),
                  "novel_class_scale": ckpt.get("novel_class_scale") or {},
                  **{k: v for k, v in metrics.items() if k not in ("IoU", "Acc", "Precision")}, "classes": per_class,
                  "confusion": cm.astype(int).tolist()}
        write_json(run_dir / "metrics.json", finite_or_null(result), allow_nan=False)  # undefined means: null
        palette = ckpt.get("palette") or default_palette(len(m.classes))
        plot_confusion(cm, m.classes, run_dir / "plots" / "confusion_matrix.png")
        plot_class_iou(metrics["IoU"], m.classes, m.novel, run_dir / "plots" / "per_class_iou.png")
        if kept:
            _plot_samples(kept, m, o.split, palette, run_dir / "plots" / "samples.png")
    return {**result, "run_dir": str(run_dir)}
