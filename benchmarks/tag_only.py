"""Do tag-only images pay? Six arms of the README's path on one dataset, from quality.py's reports.

    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --masked-only \
        --runs tags-pp,tags-pp-cal,tags-pp-retrain,tags-pp-retrain-all,tags-pp-retrain-novel,tags-pp-retrain-all-t75
        # (A), (D), (E), (F)
    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --runs tags-pp,tags-pp-cal,tags-pp-retrain  # (B)
    python benchmarks/tag_only.py --dataset msrc        # tag-only.json and a table

``--tag-only-fraction 0.5`` keeps the masks of half the training images (drawn with the run's seed) and only the
tags of the other half. (A) trains and retrains on the masked half alone (``--set tag_only=false``); (B) adds the
tag-only half to both stages: train reads their tags, pseudolabel labels them and retrain trains on them; (C) is
the plain split, every image masked; (D) trains the first stage as (A) does, on the masked half alone, and brings
the tag-only half in through pseudolabel and retrain only (``tags-pp-retrain-all``); (E) as (D), but retrain reads
only the novel classes of the tag-only half's pseudo-labels (``--set tag_only_base=false``: a tag-only image has
no base mask, so its base pixels come from the model); (F) as (D), with the tag-only half's pixels labelled only
where their score reaches 0.75 (``pseudolabel --tag-only-min-score 0.75``). One stage is ``train``'s
default (tags-pp-cal), the two-stage path the README's (tags-pp-retrain).
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

STAGES = {"one stage": "tags-pp-cal", "two-stage path": "tags-pp-retrain"}
ARMS = {  # arm: (label, report suffix, stage -> run)
    "A": ("masked half alone", "-to50-masked", STAGES),
    "B": ("masked half + tag-only half", "-to50", STAGES),
    "C": ("every image masked", "", STAGES),
    "D": ("masked half alone, then the tag-only half through pseudolabel and retrain", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-all"}),
    "E": ("as (D), the tag-only half's pseudo-labels keeping their novel classes alone", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-novel"}),
    "F": ("as (D), the tag-only half labelled only where its score reaches 0.75", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-all-t75"}),
}


def gather(results: Path, dataset: str) -> list[dict]:
    """One row per arm, seed and stage with a finished run; the two-stage rows carry the pseudo-labels' novel mIoU
    on masked and tag-only training images apart, where the run had both."""
    rows = []
    for arm, (_, suffix, stages) in ARMS.items():
        path = results / f"quality-{dataset}{suffix}.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())["runs"]
        for stage, name in stages.items():
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
        for arm, (label, _, _) in ARMS.items():
            mine = [r for r in rows if r["arm"] == arm and r["stage"] == stage]
            if mine:
                cells = [f"{np.mean([r[k] for r in mine]):.1f} ({', '.join(f'{r[k]:.1f}' for r in mine)})"
                         for k in ("novel_mIoU", "base_mIoU")]
                lines.append(f"| ({arm}) {label} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def verdict(rows: list[dict], stage: str = "two-stage path") -> list[dict]:
    """Issue 29's test for each arm that adds the tag-only half, against (A): does it beat (A) by more than the seed
    spread (the wider of the two arms'), close half the (A)-(C) gap, and keep base mIoU within 2 points of (A)'s?
    The paired differences share a seed, and with it (D)'s first stage with (A)'s."""
    by_arm = {arm: {r["seed"]: r for r in rows if r["arm"] == arm and r["stage"] == stage} for arm in ARMS}
    mean = lambda arm, k: float(np.mean([r[k] for r in by_arm[arm].values()]))  # noqa: E731
    spread = lambda arm: float(np.ptp([r["novel_mIoU"] for r in by_arm[arm].values()]))  # noqa: E731
    out = []
    for arm in (a for a in ARMS if a not in "AC"):
        if not by_arm[arm] or not by_arm["A"]:
            continue
        gain = mean(arm, "novel_mIoU") - mean("A", "novel_mIoU")
        gap = mean("C", "novel_mIoU") - mean("A", "novel_mIoU") if by_arm["C"] else None
        paired = {s: round(by_arm[arm][s]["novel_mIoU"] - by_arm["A"][s]["novel_mIoU"], 2)
                  for s in sorted(by_arm[arm].keys() & by_arm["A"].keys())}
        base = mean(arm, "base_mIoU") - mean("A", "base_mIoU")
        seed_spread = max(spread(arm), spread("A"))
        out.append({"arm": arm, "stage": stage, "seeds": sorted(by_arm[arm]), "novel_gain_over_A": round(gain, 2),
                    "paired_gain_over_A": paired, "seed_spread": round(seed_spread, 2),
                    "gap_A_to_C": round(gap, 2) if gap is not None else None,
                    "gap_closed": round(gain / gap, 2) if gap else None, "base_change_vs_A": round(base, 2),
                    "met": bool(gain > seed_spread and gap and gain >= gap / 2 and base >= -2)})
    return out


def describe(v: dict) -> str:
    paired = ", ".join(f"{d:+.1f}" for d in v["paired_gain_over_A"].values())
    gap = "" if v["gap_closed"] is None else f", {100 * v['gap_closed']:.0f}% of the (A)-(C) gap"
    return (f"({v['arm']}) against (A), {v['stage']}, seeds {', '.join(map(str, v['seeds']))}: novel "
            f"{v['novel_gain_over_A']:+.1f} (paired by seed: {paired}), seed spread {v['seed_spread']:.1f}{gap}, base "
            f"{v['base_change_vs_A']:+.1f}: target {'met' if v['met'] else 'missed'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="msrc")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rows = gather(args.results, args.dataset)
    if not rows:
        sys.exit(f"no tag-only reports for {args.dataset} in {args.results}")
    path = args.results / "tag-only.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}  # other datasets' rows and verdicts stay
    kept = [r for r in earlier.get("runs") or [] if r.get("dataset") != args.dataset]
    verdicts = verdict(rows)
    doc = {"runs": kept + rows, "verdict": {**earlier.get("verdict", {}), args.dataset: verdicts}}
    atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    text = "\n\n".join([table(rows), *map(describe, verdicts)])
    print(text)
    write_table(ROOT / "benchmarks" / "README.md", "tag_only.py", text)


if __name__ == "__main__":
    main()
