"""Plots written into run folders (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
    for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_comp", "loss_sim", "loss_dist"):
        values = [r.get(key, 0.0) for r in train]
        if any(values):
            ax.plot(iters, values, label=key, lw=2 if key == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    if val:
        ax = axes[0][1]
        for key in ("mIoU", "base_mIoU", "novel_mIoU"):
            ax.plot([r["iter"] for r in val], [r[key] for r in val], marker="o", label=key)
        ax.set_xlabel("iteration")
        ax.set_title("validation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out
