"""CamVid quality benchmark: weak-shot SimFormer and its ablations against the fully supervised oracle.

    python benchmarks/quality.py                      # every run, the documented budget
    python benchmarks/quality.py --quick              # a 60-iteration smoke budget
    python benchmarks/quality.py --runs oracle,full   # a subset (e.g. one per core, in two shells)
    python benchmarks/quality.py --report             # only assemble results, table and chart

Every run goes through the weakshot CLI exactly as a user would run it (split, train, evaluate, pseudolabel,
retrain), with the same budget and seed; novel = tree, car, sign_symbol. Every run is scored with its final
weights (``last.pt``): no checkpoint is picked on the val set it is scored on. Each finished run leaves
``WORK/<run>/result.json``; the report gathers them into ``benchmarks/results/quality.json``, a markdown table
and ``benchmarks/results/quality.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakshot_cli.data.manifest import load_manifest  # noqa: E402
from weakshot_cli.engine.checkpoint import load_checkpoint  # noqa: E402
from weakshot_cli.engine.inference import inference_size, model_from_checkpoint  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402
from models.simnet import SimNet  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
NOVEL = "tree,car,sign_symbol"
RUNS = {  # name: (label, train flags); "retrain" = full SimFormer, then pseudolabel + retrain
    "oracle": ("(a) oracle: all masks, plain MaskFormer", ["--oracle"]),
    "transfer": ("(b) proposal-pixel transfer only", ["--no-sim", "--no-dist", "--no-comp"]),
    "comp": ("(c) + complementary loss", ["--no-sim", "--no-dist"]),
    "full": ("(d) + SimNet and distillation (SimFormer)", []),
    "retrain": ("(e) SimFormer + pseudolabel + retrain", None),
    # Changes tried to close the gap to the oracle, each measured at the same budget:
    "full_alpha05": ("(d') SimFormer, distillation weight 0.5 (authors' ADE20K value)", ["--set", "dist_weight=0.5"]),
}
BUDGETS = {
    # About 30 min per training run on one core of the 2-core development CPU, two runs side by side.
    "full": dict(iters=600, retrain_iters=300, batch=4, imgsz=256),
    "quick": dict(iters=60, retrain_iters=30, batch=4, imgsz=256),
}


def weakshot(*args: object, threads: int) -> float:
    """Run one CLI command; return its wall time in seconds. Fails loudly, with the tool's own message."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "from weakshot_cli.cli import main; main()", *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"weakshot {' '.join(map(str, args[:2]))} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def train_args(budget: dict, iters: int, seed: int = 0) -> list[str]:
    return ["--preset", "small", "--iters", iters, "--batch", budget["batch"], "--imgsz", budget["imgsz"],
            "--device", "cpu", "--workers", 1, "--seed", seed, "--set", f"val_every={max(1, iters // 2)}",
            "--exist-ok"]


def evaluate(ckpt: Path, dataset: Path, work: Path, name: str, threads: int) -> dict:
    weakshot("evaluate", ckpt, dataset, "--split", "val", "--project", work / "runs", "--name", name, "--exist-ok",
             "--device", "cpu", threads=threads)
    metrics = json.loads((work / "runs" / "evaluate" / name / "metrics.json").read_text())
    return {k: metrics[k] for k in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU", "pAcc")} | {
        "class_IoU": {c: round(v["IoU"], 2) for c, v in metrics["classes"].items()}}


@torch.no_grad()
def simnet_f1(last: Path, dataset: Path, pixels_per_class: int = 20, seed: int = 0) -> dict:
    """The SimNet's transfer quality (paper Table 3): F1 of 'similar' and 'dissimilar' decisions on pairs of
    val pixels from two different images, base-class pairs vs novel-class pairs; classes sampled equally."""
    ckpt = load_checkpoint(last)
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    simnet = SimNet(ckpt["config"]["mask_dim"])
    simnet.load_state_dict({k[len("simnet."):]: v for k, v in ckpt["criterion"].items() if k.startswith("simnet.")})
    # The teacher that distillation uses runs in training mode, normalising each pair grid by its own statistics;
    # the running statistics are never used in training (and the teacher pass keeps moving them): measure that net.
    simnet.train()
    m = load_manifest(dataset)
    from weakshot_cli.data.dataset import EvalDataset

    data = EvalDataset(m, "val", inference_size(ckpt, None))
    g = torch.Generator().manual_seed(seed)

    def sample(index: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = data[index]
        feats = model(x["image"][None])["pixel_features"][0]  # [C, h, w]
        label = x["label"][None, None].float()
        label = torch.nn.functional.interpolate(label, size=feats.shape[-2:], mode="nearest")[0, 0].long()
        picked = []
        for c in classes:
            where = (label == c).flatten().nonzero()[:, 0]
            if len(where):
                picked.append(where[torch.randint(len(where), (pixels_per_class,), generator=g)])
        idx = torch.cat(picked)
        return feats.flatten(1)[:, idx].T, label.flatten()[idx]

    counts = {kind: np.zeros((2, 2), np.int64) for kind in ("base", "novel")}  # [truth similar][predicted similar]
    for i in range(len(data) - 1):
        for kind, classes in (("base", m.base), ("novel", m.novel)):
            fa, la = sample(i, classes)
            fb, lb = sample(i + 1, classes)
            p = simnet(fa.repeat_interleave(len(fb), 0), fb.repeat(len(fa), 1)) > 0.5
            truth = (la[:, None] == lb[None]).flatten()
            np.add.at(counts[kind], (truth.numpy().astype(int), p.numpy().astype(int)), 1)

    def f1(cm: np.ndarray, positive: int) -> float:
        tp = cm[positive, positive]
        return 100 * 2 * tp / max(1, 2 * tp + cm[positive, 1 - positive] + cm[1 - positive, positive])

    return {kind: {"similar_F1": round(f1(cm, 1), 1), "dissimilar_F1": round(f1(cm, 0), 1),
                   "pairs": int(cm.sum())} for kind, cm in counts.items()}


def run_one(name: str, dataset: Path, work: Path, budget: dict, threads: int) -> dict:
    runs = work / "runs"
    if name == "retrain":
        full = runs / "train" / "full" / "weights" / "last.pt"
        if not full.exists():
            sys.exit("run 'retrain' needs the 'full' run first")
        seconds = json.loads((work / "full" / "result.json").read_text())["train_seconds"]
        pl = work / "dataset-pl"
        seconds += weakshot("pseudolabel", full, dataset, "-o", pl, "--device", "cpu", "--exist-ok", threads=threads)
        seconds += weakshot("retrain", pl, *train_args(budget, budget["retrain_iters"]), "--weights", full,
                            "--project", runs, "--name", name, threads=threads)
        quality = json.loads((pl / "pseudolabel.json").read_text())
        result = {"pseudolabels": {k: v for k, v in quality.items() if not isinstance(v, (dict, list))}}
        ckpt = runs / "retrain" / name / "weights" / "last.pt"
    else:
        seconds = weakshot("train", dataset, *train_args(budget, budget["iters"]), *RUNS[name][1],
                           "--project", runs, "--name", name, threads=threads)
        result = {}
        ckpt = runs / "train" / name / "weights" / "last.pt"
        if name.startswith("full"):
            result["simnet_F1"] = simnet_f1(ckpt, dataset)
    result |= {"run": name, "label": RUNS[name][0], "train_seconds": round(seconds, 1)}
    result |= evaluate(ckpt, dataset, work, name, threads)
    atomic_write(work / name / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


def novel_diagnosis(metrics_file: Path) -> dict:
    """Is the novel region found, and are novel classes told apart? The class-agnostic IoU of 'any novel class'
    and, per novel class, where its val pixels go (% of the class's pixels, top three predictions)."""
    metrics = json.loads(metrics_file.read_text())
    names = list(metrics["classes"])
    k = len(names)
    cm = np.array(metrics["confusion"])[:k, :k]
    novel = [i for i, n in enumerate(names) if metrics["classes"][n]["type"] == "novel"]
    inside = np.isin(np.arange(k), novel)
    tp = cm[np.ix_(inside, inside)].sum()
    region = 100 * tp / (cm[inside].sum() + cm[:, inside].sum() - tp)
    where = {names[c]: {names[t]: round(100 * cm[c, t] / cm[c].sum(), 1) for t in np.argsort(cm[c])[::-1][:3]}
             for c in novel}
    return {"novel_region_IoU": round(float(region), 1), "novel_pixels_predicted_as": where}


def tag_statistics(dataset: Path) -> dict:
    """How often each set of novel tags occurs on the training images: tags that rarely vary cannot tell the
    novel classes apart."""
    m = load_manifest(dataset)
    counts: dict[str, int] = {}
    for item in m.splits["train"]:
        key = "+".join(m.classes[c] for c in sorted(set(item.tags) & set(m.novel))) or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def report(work: Path, budget_name: str, out: Path) -> None:
    results = {n: json.loads((work / n / "result.json").read_text()) for n in RUNS if (work / n / "result.json").exists()}
    for n, r in results.items():
        r |= novel_diagnosis(work / "runs" / "evaluate" / n / "metrics.json")
    oracle = results.get("oracle", {}).get("novel_mIoU")
    for r in results.values():
        r["novel_vs_oracle"] = round(r["novel_mIoU"] / oracle, 3) if oracle else None
    doc = {"dataset": "CamVid (367 train / 101 val, 11 classes)", "novel": NOVEL.split(","),
           "budget": {"name": budget_name, **BUDGETS[budget_name], "preset": "small", "seed": 0,
                      "backbone": "resnet18 from scratch"},
           "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "novel_tags": tag_statistics(work / "dataset"), "runs": results}
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if budget_name == "full" else f"-{budget_name}"
    atomic_write(out / f"quality{suffix}.json", lambda p: p.write_text(json.dumps(doc, indent=2)))
    print("| run | novel mIoU | base mIoU | mIoU | novel / oracle | novel region IoU | train time |\n"
          "|---|---|---|---|---|---|---|")
    for r in results.values():
        frac = f"{100 * r['novel_vs_oracle']:.0f}%" if r["novel_vs_oracle"] else "-"
        print(f"| {r['label']} | {r['novel_mIoU']:.1f} | {r['base_mIoU']:.1f} | {r['mIoU']:.1f} | {frac} | "
              f"{r['novel_region_IoU']:.1f} | {r['train_seconds'] / 60:.0f} min |")
    if results:
        bar_chart(results, out / f"quality{suffix}.png")


def bar_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    series = (("novel_mIoU", "novel mIoU", "tab:red"), ("novel_region_IoU", "novel region IoU (class-agnostic)",
              "tab:orange"), ("base_mIoU", "base mIoU", "tab:blue"), ("mIoU", "all mIoU", "tab:gray"))
    for i, (key, label, colour) in enumerate(series):
        bars = ax.bar(x + (i - 1.5) * 0.2, [results[n][key] for n in names], 0.2, label=label, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylabel("val IoU (%)")
    ax.set_title("CamVid, novel = tree, car, sign_symbol")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def selected_runs(spec: str, runs: dict) -> list[str]:
    """The comma-separated run names of ``--runs``; an unknown one ends the benchmark with the choices."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if unknown := set(names) - set(runs):
        sys.exit(f"unknown run(s): {', '.join(sorted(unknown))}; choose from {', '.join(runs)}")
    return names


def camvid_split(data: Path, dataset: Path, threads: int, *extra: object) -> Path:
    """The benchmark's weak-shot CamVid (novel = NOVEL), split once into ``dataset``; ``extra`` split options."""
    if not (dataset / "weakshot.json").exists():
        weakshot("split", "--images", data / "images", "--masks", data / "labels", "--classes", data / "classes.txt",
                 "--ignore-index", 11, "--novel", NOVEL, *extra, "-o", dataset, threads=threads)
    return dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=CAMVID)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmarks" / "quality")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    ap.add_argument("--quick", action="store_true", help="60 iterations per run: a smoke test of the pipeline")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--report", action="store_true", help="only gather finished runs into the results")
    args = ap.parse_args()
    budget_name = "quick" if args.quick else "full"
    work = args.work / budget_name
    names = selected_runs(args.runs, RUNS)
    if not args.report:
        dataset = camvid_split(args.data, work / "dataset", args.threads)
        for name in names:
            r = run_one(name, dataset, work, BUDGETS[budget_name], args.threads)
            print(f"{name}: novel {r['novel_mIoU']:.1f}  base {r['base_mIoU']:.1f}  all {r['mIoU']:.1f}  "
                  f"({r['train_seconds'] / 60:.1f} min)", flush=True)
    report(work, budget_name, args.out)


if __name__ == "__main__":
    main()
