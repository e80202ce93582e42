"""Do tag-only images help? SimFormer on CamVid with a share of the training images reduced to their tags.

    python benchmarks/tag_only.py                          # both runs, seeds 0 and 1, 300 iterations
    python benchmarks/tag_only.py --runs with --seeds 0    # a subset (e.g. one per core, in two shells)
    python benchmarks/tag_only.py --report                 # only gather finished runs

``split --tag-only-fraction 0.5`` keeps the masks of half the training images (drawn with seed 0) and only the
image-level tags of the other half. Two runs at one budget and seed: ``masked`` trains on the masked half alone
(``--set tag_only=false``), ``with`` adds the tag-only half. quality.py's model, batch and crops, 300 iterations;
every run scored with its final weights on val. Results: ``benchmarks/results/tag-only.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, seed_summary, weakshot  # noqa: E402
from quality import NOVEL, evaluate, selected_runs, split_dataset, train_args  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402

RUNS = {"masked": ("masked half only", ["--set", "tag_only=false"]), "with": ("masked half + tag-only half", [])}
BUDGETS = {  # quality.py's model, batch and crops at half its iterations: two seeds x two runs in about an hour
    "full": dict(iters=300, batch=4, imgsz=256),
    "quick": dict(iters=60, batch=4, imgsz=256),
}


def run_one(name: str, seed: int, dataset: Path, work: Path, budget: dict, threads: int) -> dict:
    run = f"{name}-s{seed}"
    seconds = weakshot("train", dataset, *train_args(budget, budget["iters"], seed), *RUNS[name][1],
                       "--project", work / "runs", "--name", run, threads=threads)
    result = {"run": name, "seed": seed, "train_seconds": round(seconds, 1)}
    result |= evaluate(work / "runs" / "train" / run / "weights" / "last.pt", dataset, work, run, threads)
    atomic_write(work / run / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


def report(work: Path, fraction: float, budget_name: str, out: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(work.glob("*/result.json"))]
    summary = {}
    for name, (label, _) in RUNS.items():
        runs = [r for r in results if r["run"] == name]
        if runs:
            summary[name] = {"label": label, "seeds": [r["seed"] for r in runs],
                             **{k: seed_summary([r[k] for r in runs]) for k in ("novel_mIoU", "base_mIoU", "mIoU")}}
    doc = {"dataset": "CamVid", "novel": NOVEL.split(","), "tag_only_fraction": fraction,
           "budget": {"name": budget_name, **BUDGETS[budget_name], "preset": "small"}, "runs": summary}
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if budget_name == "full" else f"-{budget_name}"
    atomic_write(out / f"tag-only{suffix}.json", lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    print("| run | novel mIoU (mean; seeds) | base mIoU | mIoU |\n|---|---|---|---|")
    for r in summary.values():
        cell = lambda k: f"{r[k]['mean']:.1f} ({', '.join(f'{v:.1f}' for v in r[k]['values'])})"  # noqa: E731
        print(f"| {r['label']} | {cell('novel_mIoU')} | {cell('base_mIoU')} | {cell('mIoU')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmarks" / "tag-only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--fraction", type=float, default=0.5, help="share of training images reduced to tags")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    ap.add_argument("--seeds", default="0,1", help="training seeds")
    ap.add_argument("--quick", action="store_true", help="60 iterations per run: a smoke test")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only gather finished runs into the results")
    args = ap.parse_args()
    budget_name = "quick" if args.quick else "full"
    work = args.work / budget_name
    names = selected_runs(args.runs, RUNS)
    if not args.report:
        dataset = split_dataset("camvid", work / "dataset", args.threads, "--tag-only-fraction", args.fraction,
                                "--seed", 0)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in names:
                r = run_one(name, seed, dataset, work, BUDGETS[budget_name], args.threads)
                print(f"{name} seed {seed}: novel {r['novel_mIoU']:.1f}  base {r['base_mIoU']:.1f}  "
                      f"all {r['mIoU']:.1f}  ({r['train_seconds'] / 60:.1f} min)", flush=True)
    report(work, args.fraction, budget_name, args.out)


if __name__ == "__main__":
    main()
