"""Shared test helpers: run the real CLI (in this process, or in a child process where the process itself is under
test), write small datasets to disk, and the session-wide synthetic dataset and tiny checkpoint that tests only read.
"""

from __future__ import annotations

import os

# Two OpenMP threads that spin while waiting are many times slower on a loaded 2-core machine; this must be
# set before torch is first imported in the test process and its subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import contextlib
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def interruptible() -> None:
    """A child's preexec_fn for Ctrl-C tests: a shell that starts jobs in the background (nohup, '&', some CI
    runners) hands them SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# What the console script sees in the child processes of run_process: a 200-column terminal.
COLUMNS = "200"
_MISSING = object()


@contextlib.contextmanager
def _as_in_a_child(argv: list[str] | None = None) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Stdout and stderr into strings that are no terminal, COLUMNS as run_process sets it, and ``sys.argv`` and
    ``__main__.__package__`` as ``python -m weakshot_cli`` has them (Typer names the program from them in usage
    messages); every part of the process state that the CLI touches or reads is put back afterwards (environment,
    working folder, signal handlers and the excepthook Typer installs, torch threads, the random generators)."""
    out, err = io.StringIO(), io.StringIO()
    main = sys.modules["__main__"]
    saved_env, saved_cwd, saved_argv, saved_hook = dict(os.environ), os.getcwd(), sys.argv, sys.excepthook
    saved_package = main.__dict__.get("__package__", _MISSING)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_num_threads(), torch.get_rng_state()) if torch else None
    saved_random = random.getstate(), np.random.get_state()
    os.environ["COLUMNS"] = COLUMNS
    if argv is not None:
        sys.argv, main.__package__ = argv, "weakshot_cli"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _fresh_warnings():
            yield out, err
    finally:
        if dict(os.environ) != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv, sys.excepthook = saved_argv, saved_hook
        if saved_package is _MISSING:
            main.__dict__.pop("__package__", None)
        else:
            main.__package__ = saved_package
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
        if saved_torch is not None:
            torch.set_num_threads(saved_torch[0])
            torch.set_rng_state(saved_torch[1])
        random.setstate(saved_random[0])
        np.random.set_state(saved_random[1])


@contextlib.contextmanager
def _fresh_warnings() -> Iterator[None]:
    """Warnings as a fresh interpreter shows them: Python's default filters (not pytest's), printed on (the
    redirected) stderr instead of recorded by pytest, each location once per run."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.resetwarnings()  # also forgets which warnings were shown already
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = show
        yield


# The CLI's module-level rich consoles take their width and colours from the process they are made in: make them
# as the console script's child process would (COLUMNS=200, output not a terminal) before any test imports them.
with _as_in_a_child():
    from weakshot_cli import cli as _cli


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in this process: ``weakshot_cli.cli.main``, the console script's entry point, with ``args`` as
    its command line, and return what a child process would have given (exit status, stdout, stderr). For the
    cases where the process itself is under test (resource limits, signals, exit status of the real interpreter,
    torchrun) use run_process."""
    argv = [str(a) for a in args]
    import torch  # noqa: F401  (so that its thread count and random state are put back after the run)

    saved_state = dict(getattr(_cli, "state", {}))
    code = 0
    with _as_in_a_child([str(ROOT / "weakshot_cli" / "__main__.py"), *argv]) as (out, err):
        if cwd is not None:
            os.chdir(cwd)
        try:
            _cli.main()
        except SystemExit as e:  # as the interpreter turns it into an exit status
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # uncaught: the interpreter prints it through sys.excepthook and exits 1
            sys.excepthook(*sys.exc_info())
            code = 1
        finally:
            if hasattr(_cli, "state"):
                _cli.state.clear()
                _cli.state.update(saved_state)
    return subprocess.CompletedProcess([sys.executable, "-m", "weakshot_cli", *argv], code, out.getvalue(),
                                       err.getvalue())


def run_process(*args: object, cwd: Path | None = None,
                preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a child process (``python -m weakshot_cli``). ``preexec_fn`` runs in the child before the CLI
    starts, e.g. to impose resource limits."""
    env = {**os.environ, "COLUMNS": COLUMNS, "PYTHONPATH": str(ROOT)}
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


def snapshot(*roots: Path) -> dict[str, str]:
    """Every folder, link and file (by content) under the roots: equal snapshots mean nothing was created,
    changed or removed."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(folder, name)
                state[str(p)] = ("-> " + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir()
                                 else hashlib.sha256(p.read_bytes()).hexdigest())
    return state


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


def coco_box(x0, y0, x1, y1) -> list[list]:
    """A rectangle as a COCO polygon."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(tmp_path: Path, annotations: list[dict], h: int = 20, w: int = 30) -> tuple[Path, Path]:
    """One black h x w image a.jpg and a COCO file with its annotations (categories grass 5, dog 2, ball 9)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (w, h)).save(images / "a.jpg")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": annotations,
        "categories": [{"id": 5, "name": "grass"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "ball"}],
    }
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(data))
    return images, path


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


# ---- tiny training runs -------------------------------------------------------------------------------------------

# A model and schedule small enough for CPU tests (train and retrain options).
TINY = ["--preset", "small", "--imgsz", "64", "--batch", "4", "--workers", "0", "--device", "cpu",
        "--set", "hidden_dim=32", "--set", "mask_dim=32", "--set", "dim_feedforward=64", "--set", "num_queries=8",
        "--set", "dec_layers=2", "--set", "num_points=256", "--set", "num_sim_points=16",
        "--set", "sim_class_points=12", "--set", "num_dist_points=16", "--set", "log_every=1", "--set", "val_imgsz=64"]


def model_state(run: Path) -> dict:
    """The model weights of a run's last checkpoint."""
    from weakshot_cli.engine.checkpoint import load_checkpoint

    return load_checkpoint(run / "weights" / "last.pt")["model"]


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Iterator[Path]:
    """A benchmark-mode weak-shot dataset (star, ring and brick novel) of 12 training and 4 validation synthetic
    images of 64 px, made once per session; its source (images, labels, classes.txt) is the folder beside it,
    ``synth.parent / "src"``. Shared by every test that asks for it: only read it; copy it to change it (checked at
    the end of the session)."""
    from weakshot_cli.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root / "src", n_train=12, n_val=4, size=64, seed=1)
    r = run_cli("split", "--images", root / "src" / "images", "--masks", root / "src" / "labels", "--classes",
                root / "src" / "classes.txt", "--novel", "star,ring,brick", "-o", root / "ws")
    assert r.returncode == 0, r.stderr
    before = snapshot(root)
    yield root / "ws"
    assert snapshot(root) == before, "a test changed the shared synthetic dataset: copy it first"


@pytest.fixture(scope="session")
def tiny_run(synth, tmp_path_factory) -> Iterator[Path]:
    """A finished 2-iteration TINY training run on ``synth`` (validated once, at its end), made once per session:
    only read it (weights/last.pt is the tiny checkpoint that evaluate, predict and pseudolabel tests use). What the
    command printed is in ``tiny_run.parents[1] / "stdout.txt"``."""
    runs = tmp_path_factory.mktemp("tiny-run")
    r = run_cli("train", synth, *TINY, "--iters", "2", "--project", runs)
    assert r.returncode == 0, r.stderr
    (runs / "stdout.txt").write_text(r.stdout)
    before = snapshot(runs)
    yield runs / "train" / "train"
    assert snapshot(runs) == before, "a test changed the shared tiny training run: copy it first"


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    return tiny_run / "weights" / "last.pt"
