"""``weakshot demo``: the whole path on a synthetic dataset the package makes from a seed."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from weakshot_cli.data.split import SplitOptions, run_split, summary_table
from weakshot_cli.data.synthetic import DEMO_NOVEL, make_synthetic
from weakshot_cli.errors import UserError


def run_demo(out: Path, seed: int, exist_ok: bool, console: Console) -> None:
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
    console.print(f"Weak-shot dataset: [bold]{dataset / 'weakshot.json'}[/]")
