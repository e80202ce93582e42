"""Progress on the console. Training: a rich bar with ETA, it/s, loss terms, lr and memory on a terminal, plain
log lines otherwise, everything also in log.txt. Passes over images (evaluate, predict, pseudolabel): a transient
bar on a terminal only. And the one format of a percentage figure in log lines and tables."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models import LOSS_KEYS
from weakshot_cli.io import append_line

if TYPE_CHECKING:  # imported where used: the tables print split's results, which need no torch
    import torch

SHORT = {key: key.removeprefix("loss_") for key in ("loss", *LOSS_KEYS)}  # loss_ce -> ce


def figure(value: float | None) -> str:
    """A percentage for a log line or table: one decimal, "-" where undefined (None)."""
    return "-" if value is None else f"{value:.1f}"


def image_bar(console: Console) -> Progress:
    """The bar of a pass over images: on a terminal only (logs and pipes stay clean), gone when done."""
    return Progress(console=console, transient=True, disable=not console.is_terminal)


def memory(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"
    try:
        import resource

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G"
    except ImportError:  # not on Windows
        return "-"


class TrainProgress:
    def __init__(self, console: Console, log_path: Path, start: int, total: int, enabled: bool, every: int):
        self.console, self.log_path, self.start, self.total = console, log_path, start, total
        self.enabled, self.every = enabled, every
        self.rich = enabled and console.is_terminal
        self.t0 = time.time()
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=console, disable=not self.rich)
        self.task = self.bar.add_task("train", total=total, completed=start, rate="", info="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def _write(self, line: str) -> None:
        if self.enabled:
            append_line(self.log_path, line)

    def update(self, it: int, losses: dict[str, float], lr: float, device: torch.device) -> None:
        if not self.enabled:
            return
        rate = (it - self.start) / max(time.time() - self.t0, 1e-9)
        terms = " ".join(f"{SHORT[k]} {v + 0.0:.3f}" for k, v in losses.items())  # + 0.0 turns -0.0 into 0.0
        info = f"{terms} lr {lr:.2e} mem {memory(device)}"
        self.bar.update(self.task, completed=it, rate=f"{rate:.2f} it/s", info=info)
        if it % self.every == 0 or it == self.total:
            eta = (self.total - it) / max(rate, 1e-9)
            line = f"iter {it}/{self.total}  {rate:.2f} it/s  eta {int(eta) // 60}m{int(eta) % 60:02d}s  {info}"
            self._write(line)
            if not self.rich:
                self.console.print(line, highlight=False, soft_wrap=True)

    def note(self, line: str) -> None:
        if self.enabled:
            self._write(line)
            self.console.print(line, highlight=False, soft_wrap=True)

    def record(self, line: str) -> None:
        """Into log.txt only: for what the command reports elsewhere (an interruption, on stderr)."""
        self._write(line)
