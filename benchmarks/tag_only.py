"""Do tag-only images pay? Arms of the README's path on one dataset, from quality.py's reports.

    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --masked-only \
        --runs tags-pp,tags-pp-cal,tags-pp-retrain,tags-pp-retrain-all,tags-pp-retrain-novel,tags-pp-retrain-all-t75
        # (A), (D), (E), (F)
    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --runs tags-pp,tags-pp-cal,tags-pp-retrain  # (B)
    python benchmarks/quality.py --dataset msrc --tag-only-fraction 0.5 --masked-only --set num_sim_points=32 \
        --set sim_class_points=24 --set num_dist_points=32 --runs tags-pp,tags-pp-cal,tags-pp-retrain,\
        tags-pp-retrain-all,tags-pp-retrain-round2,tags-pp-retrain-all-round2    # (A32), (D32), (H), (G)
    python benchmarks/tag_only.py --dataset msrc        # tag-only.json and a table

``--tag-only-fraction 0.5`` keeps the masks of half the training images (drawn with the run's seed) and only the
tags of the other half. (A) trains and retrains on the masked half alone (``--set tag_only=false``); (B) adds the
tag-only half to both stages: train reads their tags, pseudolabel labels them and retrain trains on them; (C) is
the plain split, every image masked; (D) trains the first stage as (A) does, on the masked half alone, and brings
the tag-only half in through pseudolabel and retrain only (``tags-pp-retrain-all``); (E) as (D), but retrain reads
only the novel classes of the tag-only half's pseudo-labels (``--set tag_only_base=false``: a tag-only image has
no base mask, so its base pixels come from the model); (F) as (D), with the tag-only half's pixels labelled only
where their score reaches 0.75 (``pseudolabel --tag-only-min-score 0.75``). One stage is ``train``'s
default (tags-pp-cal), the two-stage path the README's (tags-pp-retrain). (A32), (C32) and (D32) are (A), (C) and
(D) with the preset's 32 SimNet pixels (64 before 2026-12-08); (G) takes (A32)'s retrained weights through a second
pseudolabel and retrain, the tag-only half included; (H) is that round on the masked half alone.
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
P32 = "-num_sim_points32-sim_class_points24-num_dist_points32"  # the preset's 32 SimNet pixels (64 until 2026-12-08)
ARMS = {  # arm: (label, report suffix, stage -> run, the (A) and (C) arms it is held against)
    "A": ("masked half alone", "-to50-masked", STAGES, ("A", "C")),
    "B": ("masked half + tag-only half", "-to50", STAGES, ("A", "C")),
    "C": ("every image masked", "", STAGES, ("A", "C")),
    "D": ("masked half alone, then the tag-only half through pseudolabel and retrain", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-all"}, ("A", "C")),
    "E": ("as (D), the tag-only half's pseudo-labels keeping their novel classes alone", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-novel"}, ("A", "C")),
    "F": ("as (D), the tag-only half labelled only where its score reaches 0.75", "-to50-masked",
          {"two-stage path": "tags-pp-retrain-all-t75"}, ("A", "C")),
    # the same arms with the preset's 32 SimNet pixels, and a second round
    "A32": ("as (A), 32 SimNet pixels", "-to50-masked" + P32, STAGES, ("A32", "C32")),
    "C32": ("as (C), 32 SimNet pixels", P32, {"one stage": "tags-pp-cal", "two-stage path": "tags-pp-cal-retrain"},
            ("A32", "C32")),
    "D32": ("as (D), 32 SimNet pixels", "-to50-masked" + P32, {"two-stage path": "tags-pp-retrain-all"},
            ("A32", "C32")),
    "G": ("(A32), then a second round: the tag-only half too, pseudo-labelled by (A32)'s retrained weights",
          "-to50-masked" + P32, {"second round": "tags-pp-retrain-all-round2"}, ("A32", "C32")),
    "H": ("(A32), then a second round on the masked half alone (what (G) adds the tag-only half to)",
          "-to50-masked" + P32, {"second round": "tags-pp-retrain-round2"}, ("A32", "C32")),
}
CONTROLS = ("H",)  # arms that add no tag-only image: no verdict of their own


def gather(results: Path, dataset: str) -> list[dict]:
    """One row per arm, seed and stage with a finished run; the two-stage rows carry the pseudo-labels' novel mIoU
    on masked and tag-only training images apart, where the run had both."""
    rows = []
    for arm, (_, suffix, stages, _) in ARMS.items():
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
    for stage in (*STAGES, "second round"):
        for arm, (label, _, _, _) in ARMS.items():
            mine = [r for r in rows if r["arm"] == arm and r["stage"] == stage]
            if mine:
                cells = [f"{np.mean([r[k] for r in mine]):.1f} ({', '.join(f'{r[k]:.1f}' for r in mine)})"
                         for k in ("novel_mIoU", "base_mIoU")]
                lines.append(f"| ({arm}) {label} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[dict]:
    """Issue 29's test for each arm that adds the tag-only half (or a round), at its last stage, against its (A)
    after the two-stage path: does it beat (A) by more than the seed spread (the wider of the two arms'), close half
    the (A)-(C) gap, and keep base mIoU within 2 points of (A)'s? The paired differences share a seed, and with it
    the first stage of every arm trained on the masked half alone."""
    final = lambda arm: list(ARMS[arm][2])[-1]  # noqa: E731
    by_arm = {arm: {r["seed"]: r for r in rows if r["arm"] == arm and r["stage"] == final(arm)} for arm in ARMS}
    mean = lambda arm, k: float(np.mean([r[k] for r in by_arm[arm].values()]))  # noqa: E731
    spread = lambda arm: float(np.ptp([r["novel_mIoU"] for r in by_arm[arm].values()]))  # noqa: E731
    out = []
    for arm, (_, _, _, (a, c)) in ARMS.items():
        if arm in (a, c, *CONTROLS) or not by_arm[arm] or not by_arm[a]:
            continue
        gain = mean(arm, "novel_mIoU") - mean(a, "novel_mIoU")
        gap = mean(c, "novel_mIoU") - mean(a, "novel_mIoU") if by_arm[c] else None
        paired = {s: round(by_arm[arm][s]["novel_mIoU"] - by_arm[a][s]["novel_mIoU"], 2)
                  for s in sorted(by_arm[arm].keys() & by_arm[a].keys())}
        base = mean(arm, "base_mIoU") - mean(a, "base_mIoU")
        seed_spread = max(spread(arm), spread(a))
        out.append({"arm": arm, "stage": final(arm), "against": a, "seeds": sorted(by_arm[arm]),
                    "novel_gain_over_A": round(gain, 2), "paired_gain_over_A": paired,
                    "seed_spread": round(seed_spread, 2), "gap_A_to_C": round(gap, 2) if gap is not None else None,
                    "gap_closed": round(gain / gap, 2) if gap else None, "base_change_vs_A": round(base, 2),
                    "met": bool(gain > seed_spread and gap and gain >= gap / 2 and base >= -2)})
    return out


def describe(v: dict) -> str:
    paired = ", ".join(f"{d:+.1f}" for d in v["paired_gain_over_A"].values())
    a, c = v["against"], ARMS[v["arm"]][3][1]
    gap = "" if v["gap_closed"] is None else f", {100 * v['gap_closed']:.0f}% of the ({a})-({c}) gap"
    return (f"({v['arm']}) {v['stage']} against ({a}) two-stage path, seeds {', '.join(map(str, v['seeds']))}: "
            f"novel {v['novel_gain_over_A']:+.1f} (paired by seed: {paired}), seed spread {v['seed_spread']:.1f}"
            f"{gap}, base {v['base_change_vs_A']:+.1f}: target {'met' if v['met'] else 'missed'}")


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
