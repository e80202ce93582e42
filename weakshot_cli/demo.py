"""``weakshot demo``: the whole path on a synthetic dataset the package makes from a seed."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from weakshot_cli.data.split import SplitOptions, run_split, summary_table
from weakshot_cli.data.synthetic import DEMO_NOVEL, make_synthetic
from weakshot_cli.engine.config import build_config
from weakshot_cli.engine.runs import read_metrics
from weakshot_cli.engine.train import run_train
from weakshot_cli.errors import UserError

# The small preset shrunk to the 96-pixel synthetic images, sized for a few minutes on a 2-core CPU.
DEMO_TRAIN = ["num_queries=16", "imgsz=64", "scale_min=0.75", "scale_max=1.5", "val_imgsz=64", "num_points=0",
              "num_sim_points=32", "sim_class_points=24", "num_dist_points=32", "workers=0", "log_every=50"]


def run_demo(out: Path, seed: int, exist_ok: bool, console: Console, iters: int = 300) -> dict:
    if out.exists() and any(out.iterdir()) and not exist_ok:
        raise UserError("demo folder already exists; pass --exist-ok to reuse it or choose another -o", out)
    source = out / "synthetic"
    if not (source / "classes.txt").exists():
        console.print(f"[bold]1. data[/]  generating the synthetic dataset (seed {seed}) in {source}")
        make_synthetic(source, seed=seed)
    dataset = out / "dataset"
    console.print(f"[bold]2. split[/] hiding novel classes {', '.join(DEMO_NOVEL)} from the training labels")
    opts = SplitOptions(out=dataset, images=source / "images", masks=source / "labels",
                        classes=source / "classes.txt", novel=list(DEMO_NOVEL), exist_ok=True)
    manifest = run_split(opts, console, argv=["split", "(demo)"])
    console.print(summary_table(manifest))
    console.print(f"[bold]3. train[/] SimFormer, small preset, {iters} iterations on the CPU or GPU")
    summary = run_train(dataset, lambda: build_config("small", {"iters": iters, "seed": seed}, DEMO_TRAIN),
                        out / "runs", "train", True, None, None, console)
    run_dir = Path(summary["run_dir"])
    final = read_metrics(run_dir, "val")[-1]
    table = Table(title="weakshot demo: validation after training (%)")
    for col in ("stage", "mIoU", "base mIoU", "novel mIoU", "hIoU"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    table.add_row("SimFormer", *(f"{final[k]:.1f}" for k in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU")))
    console.print(table)
    console.print(f"Dataset: {dataset / 'weakshot.json'}\nRun:     {run_dir} (weights/best.pt, plots/losses.png)")
    return final
