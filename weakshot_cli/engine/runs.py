"""Run folders as practitioners know them: runs/<stage>/<name>, auto-incremented (train, train2, ...)."""

from __future__ import annotations

import json
from pathlib import Path

from weakshot_cli.errors import UserError


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Records of a run's metrics.jsonl, optionally only those of one type ("train" or "val")."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("type") == kind]


def new_run_dir(project: Path, stage: str, name: str | None, exist_ok: bool) -> Path:
    base = project / stage
    name = name or stage
    candidate = base / name
    if candidate.exists() and any(candidate.iterdir()):
        if exist_ok:
            return candidate
        if name != stage:
            raise UserError("run folder already exists; pass --exist-ok or choose another --name", candidate)
        n = 2
        while (base / f"{name}{n}").exists():
            n += 1
        candidate = base / f"{name}{n}"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder ({e.strerror})", candidate) from None
    return candidate
