"""What the benchmarks share: where the repository and the shared data are, running the CLI as a user would, the
mean-over-seeds summary their reports use, and the tables they write into READMEs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The data and weights kept beside the repository; WEAKSHOT_SHARED points elsewhere.
SHARED = Path(os.environ.get("WEAKSHOT_SHARED", ROOT.parent / "shared"))


def weakshot(*args: object, threads: int) -> float:
    """Run one CLI command in a fresh process with ``threads`` OpenMP threads; return its wall time in seconds.
    A failure ends the benchmark with the tool's own message."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "from weakshot_cli.cli import main; main()", *map(str, args)], env=env,
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"weakshot {' '.join(map(str, args[:2]))} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def seed_summary(values: list[float]) -> dict:
    """Mean over seeds and each seed's value, rounded for the reports."""
    return {"mean": round(float(np.mean(values)), 2), "values": [round(v, 2) for v in values]}


def write_table(readme: Path, marker: str, table: str) -> None:
    """Replace what stands between ``<!-- results: MARKER -->`` and the next ``<!-- /results -->`` in ``readme``
    with ``table``; a README without that marker is left alone."""
    from weakshot_cli.io import atomic_write

    start, end = f"<!-- results: {marker} -->\n", "<!-- /results -->"
    text = readme.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        new = head + start + table + "\n" + end + rest.split(end, 1)[1]
        atomic_write(readme, lambda p: p.write_text(new))
