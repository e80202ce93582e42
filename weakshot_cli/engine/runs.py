"""Run folders as practitioners know them: runs/<stage>/<name>, auto-incremented (train, train2, ...)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from weakshot_cli.errors import UserError


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Records of a run's metrics.jsonl, optionally only those of one type ("train" or "val")."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("type") == kind]


def check_run_name(name: str) -> None:
    """A run name is one folder under <project>/<stage>: '../../x' or 'a/b' would write elsewhere."""
    if name in (".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
        raise UserError(f"--name {name!r}: a run name must be a single folder name (no path separators, "
                        "not '.' or '..')")


def new_run_dir(project: Path, stage: str, name: str | None, exist_ok: bool) -> Path:
    base = project / stage
    if name:
        check_run_name(name)
    name = name or stage
    candidate = base / name
    if candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        if exist_ok and candidate.is_dir():
            return candidate
        if name != stage:
            raise UserError("run folder already exists; pass --exist-ok or choose another --name"
                            if candidate.is_dir() else "run folder path exists and is not a folder; choose "
                            "another --name", candidate)
        n = 2
        while (base / f"{name}{n}").exists():
            n += 1
        candidate = base / f"{name}{n}"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder ({e.strerror})", candidate) from None
    return candidate


@contextmanager
def provisional_run_dir(project: Path, stage: str, name: str | None, exist_ok: bool,
                        keep: Callable[[Path], bool] = lambda run_dir: False) -> Iterator[Path]:
    """A new run folder that disappears again, with the parents made for it, if the block raises an error
    (bad input found mid-run, a full disk) and ``keep(run_dir)`` is false: a failed run leaves nothing behind.
    Ctrl-C keeps what is there."""
    made = [p for p in (project / stage, *(project / stage).parents) if not p.exists()]
    run_dir = new_run_dir(project, stage, name, exist_ok)
    fresh = not any(run_dir.iterdir())
    try:
        yield run_dir
    except Exception:
        if fresh and not keep(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        for p in made:  # innermost first; a folder something else wrote into meanwhile stays
            with suppress(OSError):
                p.rmdir()
        raise
