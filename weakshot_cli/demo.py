"""``weakshot demo``: the whole path on a synthetic dataset the package makes from a seed."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from weakshot_cli import folders
from weakshot_cli.data.split import SplitOptions, run_split
from weakshot_cli.data.synthetic import DEMO_NOVEL, make_synthetic
from weakshot_cli.engine.config import TrainConfig, build_config
from weakshot_cli.engine.evaluate import EvaluateOptions, run_evaluate
from weakshot_cli.engine.predict import PredictOptions, run_predict
from weakshot_cli.engine.pseudolabel import PseudolabelOptions, run_pseudolabel
from weakshot_cli.engine.train import retrain_start, run_train
from weakshot_cli.errors import UserError
from weakshot_cli.tables import dataset_table, demo_table, print_evaluation, pseudolabel_tables, value_table

# The small preset shrunk to the 96-pixel synthetic images, sized for a few minutes on a 2-core CPU.
DEMO_TRAIN = ["num_queries=16", "imgsz=64", "scale_min=0.75", "scale_max=1.5", "val_imgsz=64", "num_points=0",
              "num_sim_points=32", "sim_class_points=24", "num_dist_points=32", "workers=0", "log_every=50"]


def _check_options(out: Path, exist_ok: bool, seed: int, iters: int, retrain_iters: int, amp: str,
                   sets: tuple[str, ...]) -> tuple[TrainConfig, TrainConfig]:
    """Refuse bad options now, not after minutes of dataset making and training; return both training
    configurations."""
    for option, n in (("--iters", iters), ("--retrain-iters", retrain_iters)):
        if n < 1:
            raise UserError(f"{option} must be >= 1, got {n}")
    train_cfg, retrain_cfg = (build_config("small", {"iters": n, "seed": seed, "amp": amp}, [*DEMO_TRAIN, *sets])
                              for n in (iters, retrain_iters))
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another -o", out)
    if out.exists() and any(out.iterdir()) and not exist_ok:
        raise UserError("demo folder already exists; pass --exist-ok to reuse it or choose another -o", out)
    folders.claim(out, "demo")
    return train_cfg, retrain_cfg


def run_demo(out: Path, seed: int, exist_ok: bool, console: Console, iters: int = 300,
             retrain_iters: int = 150, amp: str = "auto", sets: tuple[str, ...] = ()) -> dict:
    """split -> train -> evaluate -> pseudolabel -> retrain -> evaluate -> predict; returns the figures. ``sets``
    (``key=value``, as train's --set) change both trainings: how benchmarks/demo_check.py tries a recipe change."""
    train_cfg, retrain_cfg = _check_options(out, exist_ok, seed, iters, retrain_iters, amp, sets)
    t0 = time.time()
    step = lambda n, text: console.print(f"\n[bold]{n}.[/] {text}  [dim]({time.time() - t0:.0f} s)[/]")  # noqa: E731
    source, dataset, pseudo, runs = out / "synthetic", out / "dataset", out / "dataset-pl", out / "runs"
    if not (source / "classes.txt").exists():
        step(1, f"generating the synthetic dataset (seed {seed}) in {source}")
        make_synthetic(source, seed=seed)
    step(2, f"split: hiding novel classes {', '.join(DEMO_NOVEL)} from the training labels")
    opts = SplitOptions(out=dataset, images=source / "images", masks=source / "labels",
                        classes=source / "classes.txt", novel=list(DEMO_NOVEL), exist_ok=True)
    console.print(dataset_table(run_split(opts, console, argv=["split", "(demo)"],
                                          show_values=lambda values: console.print(value_table(values)))))

    step(3, f"train: SimFormer, small preset, {iters} iterations")
    trained = Path(run_train(dataset, lambda: train_cfg, runs, "train", True, None, None, console)["run_dir"])
    step(4, "evaluate the SimFormer checkpoint on val")
    first = run_evaluate(EvaluateOptions(checkpoint=trained / "weights" / "last.pt", dataset=dataset, project=runs, name="train",
                                         exist_ok=True, batch=8), console)
    print_evaluation(console, first)
    step(5, "pseudolabel: novel masks for the training images, where their tags allow")
    report = run_pseudolabel(PseudolabelOptions(checkpoint=trained / "weights" / "last.pt", dataset=dataset, out=pseudo, batch=8,
                                                exist_ok=True), console)
    console.print(*pseudolabel_tables(report))
    step(6, f"retrain: plain MaskFormer on the pseudo-labelled data, {retrain_iters} iterations from the "
            "SimFormer weights")
    _, start = retrain_start(pseudo, {"iters": retrain_iters}, [], None, iters)  # retrain's own default start
    retrained = Path(run_train(pseudo, lambda: retrain_cfg, runs, "retrain", True, None, start, console,
                               stage="retrain")["run_dir"])
    step(7, "evaluate the retrained checkpoint on val")
    second = run_evaluate(EvaluateOptions(checkpoint=retrained / "weights" / "last.pt", dataset=pseudo, project=runs, name="retrain",
                                          exist_ok=True, batch=8), console)
    print_evaluation(console, second)
    step(8, "predict: segment the val images with the retrained checkpoint")
    predicted = run_predict(PredictOptions(checkpoint=retrained / "weights" / "last.pt",
                                           source=str(source / "images" / "val"), project=runs, name="predict",
                                           exist_ok=True, save_overlay=True), console)

    console.print()
    console.print(demo_table(DEMO_NOVEL, first, second, report))
    console.print(f"Finished in {time.time() - t0:.0f} s. Outputs:\n"
                  f"  dataset            {dataset / 'weakshot.json'}\n"
                  f"  SimFormer run      {trained} (weights/last.pt, plots/losses.png)\n"
                  f"  its evaluation     {first['run_dir']} (metrics.json, plots/)\n"
                  f"  pseudo-labelled    {pseudo / 'weakshot.json'} (pseudolabel.json)\n"
                  f"  retrained run      {retrained}\n"
                  f"  its evaluation     {second['run_dir']}\n"
                  f"  predictions        {predicted['run_dir']} (labels/, overlays/)")
    return {"train": first, "pseudolabel": report, "retrain": second, "seconds": time.time() - t0}
