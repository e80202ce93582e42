"""Do tag-only images pay? Three arms of the README's path on one dataset, from quality.py's reports.

    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --masked-only --runs tags-pp,tags-pp-cal,tags-pp-retrain  # (A)
    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --runs tags-pp,tags-pp-cal,tags-pp-retrain  # (B)
    python benchmarks/tag_only.py --dataset msrc        # tag-only.json and a table

``--tag-only-fraction 0.5`` keeps the masks of half the training images (drawn with the run's seed) and only the
tags of the other half. (A) trains and retrains on the masked half alone (``--set tag_only=false``); (B) adds the
tag-only half, which pseudolabel labels and retrain trains on; (C) is the plain split, every image masked. One
stage is ``train``'s default (tags-pp-cal), the two-stage path the README's (tags-pp-retrain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_table  # noqa: E402

sys.path.insert(0, str(ROOT))
from weakshot_cli.io import atomic_write  # noqa: E402

ARMS = {"A": ("masked half alone", "-to50-masked"), "B": ("masked half + tag-only half", "-to50"),
        "C": ("every image masked", "")}
STAGES = {"one stage": "tags-pp-cal", "two-stage path": "tags-pp-retrain"}


def gather(results: Path, dataset: str) -> list[dict]:
    """One row per arm, seed and stage with a finished run; the two-stage rows carry the pseudo-labels' novel mIoU
    on masked and tag-only training images apart, where the run had both."""
    rows = []
    for arm, (_, suffix) in ARMS.items():
        path = results / f"quality-{dataset}{suffix}.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())["runs"]
        for stage, name in STAGES.items():
            if name not in runs:
                continue
            r = runs[name]
            for i, seed in enumerate(r["seeds"]):
                row = {"dataset": dataset, "arm": arm, "seed": seed, "stage": stage,
                       "novel_mIoU": round(r["novel_mIoU"]["values"][i], 2),
                       "base_mIoU": round(r["base_mIoU"]["values"][i], 2)}
                for key in ("masked_novel_mIoU", "tag_only_novel_mIoU", "novel_mIoU"):
                    value = r.get("pseudolabels", {}).get(f"seed{seed}", {}).get(key)
                    if value is not None:
                        row[f"pseudolabels_{key}"] = round(value, 2)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arm | stage | novel mIoU (seeds) | base mIoU (seeds) |", "|---|---|---|---|"]
    for stage in STAGES:
        for arm, (label, _) in ARMS.items():
            mine = [r for r in rows if r["arm"] == arm and r["stage"] == stage]
            if mine:
                cells = [f"{np.mean([r[k] for r in mine]):.1f} ({', '.join(f'{r[k]:.1f}' for r in mine)})"
                         for k in ("novel_mIoU", "base_mIoU")]
                lines.append(f"| ({arm}) {label} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="msrc")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rows = gather(args.results, args.dataset)
    if not rows:
        sys.exit(f"no tag-only reports for {args.dataset} in {args.results}")
    path = args.results / "tag-only.json"
    earlier = json.loads(path.read_text()).get("runs") if path.exists() else None  # other datasets' rows stay
    kept = [r for r in earlier if r.get("dataset") != args.dataset] if isinstance(earlier, list) else []
    atomic_write(path, lambda p: p.write_text(json.dumps({"runs": kept + rows}, indent=2) + "\n"))
    text = table(rows)
    print(text)
    write_table(ROOT / "benchmarks" / "README.md", "tag_only.py", text)


if __name__ == "__main__":
    main()
