"""Shared test helpers: run the real CLI in a subprocess, and write small datasets to disk."""

from __future__ import annotations

import os

# Two OpenMP threads that spin while waiting are many times slower on a loaded 2-core machine; this must be
# set before torch is first imported in the test process and its subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def run_cli(*args: str, cwd: Path | None = None,
            preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``preexec_fn`` runs in the child before the CLI starts, e.g. to impose resource limits."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "weakshot_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600, preexec_fn=preexec_fn)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one line on stderr that contains every fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def write_dataset(root: Path, labels: dict[str, dict[str, np.ndarray]], classes: list[str], *,
                  image_ext: str = ".png", palette: bool = False) -> tuple[Path, Path, Path]:
    """Write images/<split>/<stem>, labels/<split>/<stem>.png and classes.txt; return the three paths."""
    rng = np.random.default_rng(0)
    for split, items in labels.items():
        for stem, label in items.items():
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 255, (*label.shape, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "images" / split / f"{stem}{image_ext}")
            lab = Image.fromarray(label.astype(np.uint8))
            if palette:
                lab.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 80 % 256, i * 120 % 256)])
            lab.save(root / "labels" / split / f"{stem}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root / "images", root / "labels", root / "classes.txt"


def blocks(h: int, w: int, values: list[int]) -> np.ndarray:
    """A label made of vertical stripes, one per value."""
    label = np.zeros((h, w), dtype=np.uint8)
    for i, v in enumerate(values):
        label[:, i * w // len(values):(i + 1) * w // len(values)] = v
    return label


@pytest.fixture
def toy(tmp_path: Path) -> dict:
    """4 classes (a, b, c, d); train images with varied class sets, val with everything."""
    classes = ["a", "b", "c", "d"]
    train = {
        "t0": blocks(16, 20, [0, 1, 2]),
        "t1": blocks(16, 20, [0, 3]),
        "t2": blocks(16, 20, [1, 2, 255]),
        "t3": blocks(16, 20, [0, 1, 3, 2]),
    }
    val = {"v0": blocks(16, 20, [0, 1, 2, 3]), "v1": blocks(16, 20, [3, 2])}
    images, masks, names = write_dataset(tmp_path / "src", {"train": train, "val": val}, classes)
    return {"images": images, "masks": masks, "classes": names, "train": train, "val": val, "tmp": tmp_path}
