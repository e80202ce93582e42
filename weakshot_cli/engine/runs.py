"""What a run folder records; making and claiming run folders is folders.py's."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Records of a run's metrics.jsonl, optionally only those of one type ("train" or "val")."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("type") == kind]
