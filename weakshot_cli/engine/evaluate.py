"""``weakshot evaluate``: one confusion matrix at original resolution, metrics, a table and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch.utils.data import DataLoader

from weakshot_cli.data.dataset import EvalDataset, check_inference_size, collate_eval, load_rgb
from weakshot_cli.data.labels import image_size, read_raw_label
from weakshot_cli.data.manifest import Manifest, load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.distributed import resolve_device
from weakshot_cli.engine.inference import evaluate_loader, inference_size, model_from_checkpoint
from weakshot_cli.engine.plots import plot_class_iou, plot_confusion, plot_samples
from weakshot_cli.engine.runs import provisional_run_dir
from weakshot_cli.engine.visualise import default_palette, legend_entries, overlay, untinted
from weakshot_cli.errors import UserError
from weakshot_cli.io import finite_or_null, write_json


def check_classes(ckpt: dict, m: Manifest, checkpoint: Path) -> None:
    if ckpt["classes"] != m.classes:
        raise UserError(f"checkpoint was trained on a different class set ({len(ckpt['classes'])} classes: "
                        f"{', '.join(ckpt['classes'][:4])}, ...) than the dataset's", checkpoint)


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


def check_image_sizes(m: Manifest, split: str, imgsz: int, scales: Sequence[float]) -> None:
    """Read every image header of the split up front: a missing, oversized or too small image fails before
    any output exists, not after part of a long run."""
    for it in m.splits[split]:
        path = m.resolve(it.image)
        check_inference_size(path, *image_size(path), imgsz, scales)


def results_table(metrics: dict, m: Manifest, title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("class", "left"), ("type", "left"), ("IoU", "right"), ("Acc", "right")):
        table.add_column(col, justify=justify)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for i, name in enumerate(m.classes):
        kind = "[orange3]novel[/]" if i in m.novel else "base"
        table.add_row(name, kind, fmt(metrics["IoU"][i]), fmt(metrics["Acc"][i]))
    table.add_section()
    for key, label in (("mIoU", "mIoU (all)"), ("base_mIoU", "base mIoU"), ("novel_mIoU", "[bold]novel mIoU[/]"),
                       ("hIoU", "harmonic mean"), ("pAcc", "pixel accuracy"), ("mAcc", "mean accuracy")):
        table.add_row(label, "", fmt(metrics[key]), "")
    return table


def run_evaluate(checkpoint: Path, dataset: Path, split: str, project: Path, name: str | None, exist_ok: bool,
                 device: str, imgsz: int | None, batch: int, workers: int, flip: bool, scales: Sequence[float],
                 samples: int, console: Console) -> dict:
    ckpt = load_checkpoint(checkpoint)
    m = load_manifest(dataset)
    check_classes(ckpt, m, checkpoint)
    check_split(m, split, dataset)
    imgsz = inference_size(ckpt, imgsz)
    check_image_sizes(m, split, imgsz, scales)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, dev, str(checkpoint))
    loader = DataLoader(EvalDataset(m, split, imgsz or None, full=True), batch_size=batch, collate_fn=collate_eval,
                        num_workers=workers)
    kept: dict[int, torch.Tensor] = {}

    def keep(index: int, pred: torch.Tensor) -> None:  # the first few predictions, for the overlay grid
        if index < samples:
            kept[index] = pred

    with provisional_run_dir(project, "evaluate", name, exist_ok) as run_dir:
        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(f"evaluate {split}", total=len(loader.dataset))
            metrics, cm = evaluate_loader(model, loader, len(m.classes), m.base, m.novel, dev,
                                          lambda: torch.autocast(dev.type, enabled=False),
                                          lambda n: bar.advance(task, n), flip, scales, keep)
        per_class = {name: {"type": "novel" if i in m.novel else "base", "IoU": metrics["IoU"][i],
                            "Acc": metrics["Acc"][i]} for i, name in enumerate(m.classes)}
        result = {"checkpoint": str(checkpoint), "dataset": str(dataset), "split": split,
                  "images": len(loader.dataset), "imgsz": imgsz, "flip": flip, "scales": list(scales),
                  **{k: v for k, v in metrics.items() if k not in ("IoU", "Acc")}, "classes": per_class,
                  "confusion": cm.astype(int).tolist()}
        write_json(run_dir / "metrics.json", finite_or_null(result), allow_nan=False)  # undefined means: null
        palette = ckpt.get("palette") or default_palette(len(m.classes))
        plot_confusion(cm, m.classes, run_dir / "plots" / "confusion_matrix.png")
        plot_class_iou(metrics["IoU"], m.classes, m.novel, run_dir / "plots" / "per_class_iou.png")
        if kept:
            rows, shown, skip = [], [], untinted(m.classes)
            for i, pred in sorted(kept.items()):
                item = m.splits[split][i]
                image = load_rgb(m.resolve(item.image)).permute(1, 2, 0).numpy()
                gt = read_raw_label(m.resolve(item.full or item.label))
                label = pred.numpy().astype(np.uint8)
                rows.append((image, overlay(image, gt, palette, skip=skip), overlay(image, label, palette, skip=skip)))
                shown += [gt, label]
            plot_samples(rows, run_dir / "plots" / "samples.png", legend_entries(shown, m.classes, palette))
    console.print(results_table(metrics, m, f"{split}: {len(loader.dataset)} images (%)"))
    console.print(f"Results: [bold]{run_dir / 'metrics.json'}[/] and plots in {run_dir / 'plots'}")
    return {**result, "run_dir": str(run_dir)}
