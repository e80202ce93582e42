"""What a few example masks buy: novel mIoU against K example masks per novel class, from quality.py's reports.

    python benchmarks/quality.py --dataset camvid --examples 2 --runs tags-pp,tags-pp-cal,tags-pp-cal-retrain
    python benchmarks/examples.py          # examples.json, examples.png and a table from the finished reports

K = 0 is the plain split's report (quality-<dataset>.json; for a recipe, quality-<dataset>-<settings>.json), K > 0
the ``--examples K`` variant's (quality-<dataset>-k<K>.json, its examples drawn with the run's seed). One stage is
``train``'s default (tags-pp-cal), the two-stage path the README's (tags-pp-cal-retrain; see STAGES); the oracle
(all masks) is the plain split's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_table  # noqa: E402

sys.path.insert(0, str(ROOT))
from weakshot_cli.io import atomic_write  # noqa: E402

# the README's two-stage path pseudo-labels with the calibrated checkpoint (tags-pp-cal-retrain); the benchmark's
# earlier two-stage runs used the uncalibrated weights (tags-pp-retrain), which per-class factors cannot reach
STAGES = {"one stage": "tags-pp-cal", "two stages, uncalibrated pseudo-labels": "tags-pp-retrain",
          "two-stage path (README)": "tags-pp-cal-retrain"}
DATASETS = ("camvid", "msrc")
EXAMPLES_ONLY = ("example_repeat",)  # settings that act on example images alone: without examples they change nothing


def _k0_recipe(recipe: str) -> str:
    """The settings of ``recipe`` that matter without examples: its K = 0 runs are the report with those."""
    return "-".join(part for part in recipe.split("-") if part and not part.startswith(EXAMPLES_ONLY))


def gather(results: Path) -> list[dict]:
    """One row per dataset, recipe, K, seed and stage with a finished run. A recipe's K = 0 row comes from the
    report with its settings (less those that act on examples alone); a recipe without one has no K = 0 row."""
    rows = []
    for dataset in DATASETS:
        plain = results / f"quality-{dataset}.json"
        if not plain.exists():
            continue
        oracle = json.loads(plain.read_text())["runs"].get("oracle")
        if oracle is None:
            continue
        oracle_novel = dict(zip(oracle["seeds"], oracle["novel_mIoU"]["values"]))
        examples = sorted((int(m.group(1)), (m.group(2) or "").lstrip("-"), p)
                          for p in results.glob(f"quality-{dataset}-k*.json")
                          if (m := re.fullmatch(rf"quality-{dataset}-k(\d+)(-.+)?\.json", p.name)))
        reports = []
        for recipe in sorted({"", *(r for _, r, _ in examples)}):
            base = _k0_recipe(recipe)
            k0 = results / (f"quality-{dataset}-{base}.json" if base else plain.name)
            reports += [(0, recipe, k0)] if k0.exists() else []
        for k, recipe, path in reports + examples:
            runs = json.loads(path.read_text())["runs"]
            for stage, name in STAGES.items():
                if name not in runs:
                    continue
                for seed, novel in zip(runs[name]["seeds"], runs[name]["novel_mIoU"]["values"]):
                    reference = oracle_novel.get(seed, float(np.mean(list(oracle_novel.values()))))
                    rows.append({"dataset": dataset, "recipe": recipe or "default", "k": k, "seed": seed,
                                 "stage": stage, "novel_mIoU": round(novel, 2),
                                 "oracle_novel_mIoU": round(reference, 2)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| dataset | recipe | K | stage | novel mIoU (seeds) | novel / oracle | seed spread |",
             "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["dataset"], r["recipe"], r["k"], r["stage"]) for r in rows)
    for dataset, recipe, k, stage in sorted(keys, key=lambda t: (t[0], t[1], t[3], t[2])):
        mine = [r for r in rows if (r["dataset"], r["recipe"], r["k"], r["stage"]) == (dataset, recipe, k, stage)]
        values = [r["novel_mIoU"] for r in mine]
        ratio = np.mean([r["novel_mIoU"] / r["oracle_novel_mIoU"] for r in mine])
        lines.append(f"| {dataset} | {recipe} | {k} | {stage} | {np.mean(values):.1f} "
                     f"({', '.join(f'{v:.1f}' for v in values)}) | {100 * ratio:.0f}% | "
                     f"{max(values) - min(values):.1f} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    """Novel / oracle against K, a line per dataset and stage (means), each seed a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for dataset, recipe in dict.fromkeys((r["dataset"], r["recipe"]) for r in rows):
        for stage, style in zip(STAGES, (":", "--", "-")):
            mine = [r for r in rows if (r["dataset"], r["recipe"], r["stage"]) == (dataset, recipe, stage)]
            if not mine:
                continue
            ks = sorted({r["k"] for r in mine})
            ratio = lambda r: 100 * r["novel_mIoU"] / r["oracle_novel_mIoU"]  # noqa: E731
            line, = ax.plot(ks, [np.mean([ratio(r) for r in mine if r["k"] == k]) for k in ks], style, marker="o",
                            label=f"{dataset}, {recipe}, {stage}")
            ax.scatter([r["k"] for r in mine], [ratio(r) for r in mine], s=12, color=line.get_color(), alpha=0.5)
    ax.axhline(80, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("example masks per novel class (K)")
    ax.set_ylabel("novel mIoU, % of the oracle's")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes, not over the lines
    ax.set_title("What a few example masks buy (mobile preset, val)")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    rows = gather(args.results)
    if not rows:
        sys.exit(f"no quality reports with an oracle in {args.results}")
    atomic_write(args.results / "examples.json", lambda p: p.write_text(json.dumps({"runs": rows}, indent=2) + "\n"))
    chart(rows, args.results / "examples.png")
    text = table(rows)
    print(text)
    write_table(ROOT / "benchmarks" / "README.md", "examples.py", text)


if __name__ == "__main__":
    main()
