"""Plots written into run folders (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from models import LOSS_KEYS  # noqa: E402
from weakshot_cli.engine.runs import read_metrics  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402


def plot_losses(run_dir: Path, out: Path) -> Path | None:
    """Loss terms against iteration, and validation mIoU when present."""
    train, val = read_metrics(run_dir, "train"), read_metrics(run_dir, "val")
    if not train:
        return None
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(12 if val else 7, 4), squeeze=False)
    ax = axes[0][0]
    iters = [r["iter"] for r in train]
    for key in ("loss", *LOSS_KEYS):
        values = [r.get(key, 0.0) for r in train]
        if any(values):
            ax.plot(iters, values, label=key, lw=2 if key == "loss" else 1,
                    marker="o" if len(iters) == 1 else None)  # a line through one point would draw nothing
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    if val:
        ax = axes[0][1]
        for key in ("mIoU", "base_mIoU", "novel_mIoU"):
            ax.plot([r["iter"] for r in val], [np.nan if r[key] is None else r[key] for r in val], marker="o",
                    label=key)  # None: undefined (no class of the kind in ground truth or prediction)
        ax.set_xlabel("iteration")
        ax.set_title("validation")
        ax.legend(fontsize=8)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out


def plot_confusion(cm: np.ndarray, classes: list[str], out: Path) -> Path:
    """Rows normalised to 1: row i shows where class i's pixels went."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("confusion matrix (rows normalised)")
    return _save(fig, out)


def plot_class_iou(iou: list[float | None], classes: list[str], novel: list[int], out: Path) -> Path:
    """Per-class IoU bars, novel classes in orange; classes absent from GT and prediction are left empty."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * n + 2), 4))
    values = [v if v is not None else 0.0 for v in iou]
    colours = ["tab:orange" if i in novel else "tab:blue" for i in range(n)]
    ax.bar(range(n), values, color=colours)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.legend(handles=[Patch(color="tab:blue", label="base"), Patch(color="tab:orange", label="novel")], fontsize=8)
    ax.set_title("per-class IoU")
    return _save(fig, out)


def plot_samples(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], out: Path,
                 legend: Sequence[tuple[str, tuple[int, int, int]]] = ()) -> Path:
    """One row per image: image, ground truth overlay, prediction overlay (all RGB uint8); below them a legend of
    (class name, RGB colour) swatches, the classes the overlays tint."""
    ncol = min(len(legend), 5) or 1
    legend_height = [0.35 * math.ceil(len(legend) / ncol) + 0.2] if legend else []
    fig = plt.figure(figsize=(9, 3 * len(samples) + sum(legend_height)))
    grid = fig.add_gridspec(len(samples) + len(legend_height), 3, height_ratios=[3] * len(samples) + legend_height)
    for r, images in enumerate(samples):
        for c, (img, title) in enumerate(zip(images, ("image", "ground truth", "prediction"))):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    if legend:
        ax = fig.add_subplot(grid[-1, :])
        ax.axis("off")
        ax.legend(handles=[Patch(facecolor=np.asarray(rgb) / 255, edgecolor="black", label=name)
                           for name, rgb in legend], loc="center", ncol=ncol, fontsize=9, frameon=False)
    return _save(fig, out)
