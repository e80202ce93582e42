"""``weakshot demo``: the whole path on a synthetic dataset the package makes from a seed."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from weakshot_cli.data.split import SplitOptions, run_split, summary_table
from weakshot_cli.data.synthetic import DEMO_NOVEL, make_synthetic
from weakshot_cli.engine.config import build_config
from weakshot_cli.engine.evaluate import run_evaluate
from weakshot_cli.engine.predict import PredictOptions, run_predict
from weakshot_cli.engine.pseudolabel import report_tables, run_pseudolabel
from weakshot_cli.engine.train import run_train
from weakshot_cli.errors import UserError

# The small preset shrunk to the 96-pixel synthetic images, sized for a few minutes on a 2-core CPU.
DEMO_TRAIN = ["num_queries=16", "imgsz=64", "scale_min=0.75", "scale_max=1.5", "val_imgsz=64", "num_points=0",
              "num_sim_points=32", "sim_class_points=24", "num_dist_points=32", "workers=0", "log_every=50"]


def run_demo(out: Path, seed: int, exist_ok: bool, console: Console, iters: int = 300,
             retrain_iters: int = 150) -> dict:
    """split -> train -> evaluate -> pseudolabel -> retrain -> evaluate -> predict; returns the figures."""
    for option, n in (("--iters", iters), ("--retrain-iters", retrain_iters)):
        if n < 1:
            raise UserError(f"{option} must be >= 1, got {n}")
    # both configurations checked now, not after minutes of dataset making and training
    train_cfg, retrain_cfg = (build_config("small", {"iters": n, "seed": seed}, DEMO_TRAIN)
                              for n in (iters, retrain_iters))
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another -o", out)
    if out.exists() and any(out.iterdir()) and not exist_ok:
        raise UserError("demo folder already exists; pass --exist-ok to reuse it or choose another -o", out)
    t0 = time.time()
    step = lambda n, text: console.print(f"\n[bold]{n}.[/] {text}  [dim]({time.time() - t0:.0f} s)[/]")  # noqa: E731
    source, dataset, pseudo, runs = out / "synthetic", out / "dataset", out / "dataset-pl", out / "runs"
    if not (source / "classes.txt").exists():
        step(1, f"generating the synthetic dataset (seed {seed}) in {source}")
        make_synthetic(source, seed=seed)
    step(2, f"split: hiding novel classes {', '.join(DEMO_NOVEL)} from the training labels")
    opts = SplitOptions(out=dataset, images=source / "images", masks=source / "labels",
                        classes=source / "classes.txt", novel=list(DEMO_NOVEL), exist_ok=True)
    console.print(summary_table(run_split(opts, console, argv=["split", "(demo)"])))

    step(3, f"train: SimFormer, small preset, {iters} iterations")
    trained = Path(run_train(dataset, lambda: train_cfg, runs, "train", True, None, None, console)["run_dir"])
    step(4, "evaluate the SimFormer checkpoint on val")
    first = run_evaluate(trained / "weights" / "best.pt", dataset, "val", runs, "train", True, "auto", None, 8, 0,
                         False, (1.0,), 6, console)
    step(5, "pseudolabel: novel masks for the training images, where their tags allow")
    report = run_pseudolabel(trained / "weights" / "best.pt", dataset, pseudo, "auto", None, 8, 0, 0.0, False,
                             (1.0,), True, console)
    console.print(*report_tables(report))
    step(6, f"retrain: plain MaskFormer on the pseudo-labelled data, {retrain_iters} iterations from the "
            "SimFormer weights")
    retrained = Path(run_train(pseudo, lambda: retrain_cfg, runs, "retrain", True, None,
                               trained / "weights" / "best.pt", console, stage="retrain")["run_dir"])
    step(7, "evaluate the retrained checkpoint on val")
    second = run_evaluate(retrained / "weights" / "best.pt", pseudo, "val", runs, "retrain", True, "auto", None, 8,
                          0, False, (1.0,), 6, console)
    step(8, "predict: segment the val images with the retrained checkpoint")
    predicted = run_predict(PredictOptions(retrained / "weights" / "best.pt", str(source / "images" / "val"),
                                           runs, "predict", True, save_overlay=True), console)

    table = Table(title=f"weakshot demo: novel classes {', '.join(DEMO_NOVEL)} learnt from tags (%, val)")
    for col in ("stage", "mIoU", "base mIoU", "novel mIoU", "hIoU"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, r in (("SimFormer (train)", first), ("after pseudolabel + retrain", second)):
        table.add_row(name, *(f"{r[k]:.1f}" for k in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU")))
    table.add_row("pseudo-labels (training images)", "", "", f"{report['novel_mIoU']:.1f}", "")
    console.print()
    console.print(table)
    console.print(f"Finished in {time.time() - t0:.0f} s. Outputs:\n"
                  f"  dataset            {dataset / 'weakshot.json'}\n"
                  f"  SimFormer run      {trained} (weights/best.pt, plots/losses.png)\n"
                  f"  its evaluation     {first['run_dir']} (metrics.json, plots/)\n"
                  f"  pseudo-labelled    {pseudo / 'weakshot.json'} (pseudolabel.json)\n"
                  f"  retrained run      {retrained}\n"
                  f"  its evaluation     {second['run_dir']}\n"
                  f"  predictions        {predicted['run_dir']} (labels/, overlays/)")
    return {"train": first, "pseudolabel": report, "retrain": second, "seconds": time.time() - t0}
