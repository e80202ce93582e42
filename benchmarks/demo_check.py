"""The demo's whole path with a recipe change, beside the demo as shipped, on the same seeds: a change's check on
the synthetic data, which the benchmarks on MSRC cannot replace (a few minutes per run, from scratch).

    python benchmarks/demo_check.py --set num_points=1024 --seeds 0,1    # results/demo-check-num_points1024.json

Each seed runs the demo twice in its own folder under --work, once as shipped and once with every --set added to
both trainings; the report gives novel and base mIoU after train and after retrain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
from weakshot_cli.demo import run_demo  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402


def figures(result: dict) -> dict:
    return {f"{stage}_{k}": round(result[stage][k], 2) for stage in ("train", "retrain")
            for k in ("novel_mIoU", "base_mIoU")} | {"seconds": round(result["seconds"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="sets", action="append", required=True, metavar="KEY=VALUE")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmarks" / "demo-check")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = "-".join(kv.replace("=", "") for kv in args.sets)
    arms = {"shipped": (), name: tuple(args.sets)}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm, sets in arms.items():
            folder = args.work / name / f"seed{seed}" / arm
            result = run_demo(folder, seed, True, Console(quiet=True), sets=sets)
            runs.append({"arm": arm, "seed": seed, **figures(result)})
            print(json.dumps(runs[-1]), flush=True)
    summary = {arm: {k: round(float(np.mean([r[k] for r in runs if r["arm"] == arm])), 2)
                     for k in runs[0] if k not in ("arm", "seed")} for arm in arms}
    out = args.out / f"demo-check-{name}.json"
    atomic_write(out, lambda p: p.write_text(json.dumps({"sets": args.sets, "runs": runs, "mean": summary},
                                                        indent=2) + "\n"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
