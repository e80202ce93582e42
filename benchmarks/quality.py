"""Quality benchmark: weak-shot SimFormer and its ablations against the fully supervised oracle, over seeds.

    python benchmarks/quality.py --dataset msrc               # every run, 2 seeds, the documented budget
    python benchmarks/quality.py --dataset camvid --seeds 0   # CamVid, one seed
    python benchmarks/quality.py --runs oracle,full --seeds 1 # a subset (e.g. one per core, in two shells)
    python benchmarks/quality.py --dataset msrc --report      # only assemble results, table and chart
    python benchmarks/quality.py --quick                      # a 20-iteration smoke budget

Every run goes through the weakshot CLI exactly as a user would run it (split, train, evaluate, pseudolabel,
retrain) on the ``mobile`` preset (ImageNet MobileNetV2), with the same budget, in float32 (``--amp off``: an AMX CPU's
``auto`` would pick bf16; only ``full-bf16`` trains under bf16 autocast); ``reference`` is a plain per-pixel
head on the same trunk and budget (benchmarks/per_pixel.py), which says whether the oracle is undertrained. Every
run is scored with its final weights (``last.pt``): no checkpoint is picked on the val set it is scored on.
``tags-pp-cal`` and ``full-cal`` are not trained anew: they apply training's last step, the novel-score calibration
(calibrate.py), to ``tags-pp``'s and ``full``'s final weights, which is what training with ``calibrate`` on would
save. Each
finished run leaves ``WORK/<dataset>/<budget>/seed<N>/<run>/result.json``; the report gathers them into
``benchmarks/results/quality-<dataset>.json`` and a chart.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, seed_summary, weakshot, write_table  # noqa: E402

sys.path.insert(0, str(ROOT))

from weakshot_cli.data.manifest import load_manifest  # noqa: E402
from weakshot_cli.engine.calibrate import choose_class_scales, choose_novel_scale  # noqa: E402
from weakshot_cli.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from weakshot_cli.engine.config import PRESETS  # noqa: E402
from weakshot_cli.engine.inference import inference_size, model_from_checkpoint  # noqa: E402
from weakshot_cli.engine.weights import imagenet_file  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402
from models.simnet import SimNet  # noqa: E402

NOVEL = "tree,car,sign_symbol"
DATASETS = {  # name: (data folder, novel classes, ignore index, title)
    "msrc": (SHARED / "data" / "msrc", "tree,water,cow,car,book", 255, "MSRC-21 (452 train / 139 val, 21 classes)"),
    "camvid": (SHARED / "data" / "camvid", NOVEL, 11, "CamVid (367 train / 101 val, 11 classes)"),
}
# MSRC splits beside the open one, on which no recipe was tuned: the 16 classes outside the open split, shuffled by
# numpy.random.default_rng(0).permutation, dealt in three fives (boat, the sixteenth, is novel in none).
MSRC_SPLITS = ("sheep,road,sky,chair,building", "aeroplane,flower,face,body,cat", "bicycle,bird,dog,sign,grass")
DATASETS |= {f"msrc-s{i}": (SHARED / "data" / "msrc", novel, 255, f"MSRC-21 split {i} (452 train / 139 val)")
             for i, novel in enumerate(MSRC_SPLITS, 1)}
PAPER, DENSE = ["--method", "paper"], ["--set", "semantic_weight=1"]
WEAK_DENSE = [*DENSE, "--set", "semantic_weak=true"]  # on base pixels in weak-shot training too
TAGS_PP = ["--method", "tags", "--set", "calibrate=false"]  # --method tags, scored without the calibration
RUNS = {  # name: (label, train flags); None: not a plain train run (see run_one)
    "reference": ("per-pixel reference: same trunk, all masks, cross-entropy", None),
    "oracle": ("(a) oracle: all masks, MaskFormer + dense cross-entropy", ["--oracle", *PAPER, *DENSE]),
    "oracle-plain": ("(a0) oracle: all masks, plain MaskFormer", ["--oracle", *PAPER]),
    "oracle-bn": ("(a1) as (a), the ImageNet backbone's BatchNorm trained (norm=bn; the preset freezes it)",
                  ["--oracle", *PAPER, *DENSE, "--set", "norm=bn"]),
    "oracle-blr": ("(a2) as (a), the backbone at lr 2e-4 like the reference's (backbone_lr_mult 0.4; the preset 0.1)",
                   ["--oracle", *PAPER, *DENSE, "--set", "backbone_lr_mult=0.4"]),
    "oracle-q100": ("(a3) as (a), 100 queries as in the paper (the preset 30)",
                    ["--oracle", *PAPER, *DENSE, "--set", "num_queries=100"]),
    "oracle-ce2": ("(a4) as (a), class loss weight 2 as in Mask2Former (the preset 1)",
                   ["--oracle", *PAPER, *DENSE, "--set", "ce_weight=2"]),
    "oracle-sem3": ("(a5) as (a), the dense cross-entropy at weight 3 (the preset 1)",
                    ["--oracle", *PAPER, "--set", "semantic_weight=3"]),
    "oracle-drop0": ("(a6) as (a), no dropout in the decoder, as in Mask2Former (the preset 0.1)",
                     ["--oracle", *PAPER, *DENSE, "--set", "dropout=0"]),
    "oracle-ce2-sem3": ("(a7) as (a), class loss weight 2 and the dense cross-entropy at weight 3 ((a4) and (a5))",
                        ["--oracle", *PAPER, "--set", "ce_weight=2", "--set", "semantic_weight=3"]),
    "oracle-md128": ("(a8) as (a), the pixel decoder and mask embeddings 128 wide (the preset 64)",
                     ["--oracle", *PAPER, *DENSE, "--set", "mask_dim=128"]),
    "transfer": ("(b) proposal-pixel transfer only", [*PAPER, "--no-sim", "--no-dist", "--no-comp"]),
    "comp": ("(c) + complementary loss", [*PAPER, "--no-sim", "--no-dist"]),
    "full": ("(d) + SimNet and distillation (SimFormer, paper)", PAPER),
    "full-cal": ("(d1) (d) + novel scores calibrated on base masks (--set calibrate=true)", None),
    "full-bf16": ("(d) trained under bf16 autocast (--amp bf16), scored in float32", [*PAPER, "--amp", "bf16"]),
    "retrain": ("(e) SimFormer + pseudolabel + retrain (paper)", None),
    "retrain-choose": ("(f) SimFormer + choosing pseudolabels + retrain with dense cross-entropy (weakshot)", None),
    "retrain-choose-init": ("(f0) as (f), retrained from ImageNet weights", None),
    "comp-retrain": ("(f1) (c) + choosing pseudolabels + retrain with dense cross-entropy", None),
    "semantic": ("(g) SimFormer + dense cross-entropy on base pixels", [*PAPER, *WEAK_DENSE]),
    "tags": ("(h) (g) + tag terms, crop tags kept (tag_keep 0), tag pairing, distillation warm-up",
             ["--method", "tags", "--set", "tag_per_pixel=false", "--set", "calibrate=false"]),
    "tags-pp": ("(h1) (h) + the partial-label tag term per pixel (tag_per_pixel)", TAGS_PP),
    "tags-pp-cal": ("(h2) (h1) + novel scores calibrated on base masks: --method tags", None),
    # (h1) less one switch each: what each contributes to the best single stage
    "tags-pp-no-sem": ("(h1) without the dense loss on base pixels (semantic_weak false)",
                       [*TAGS_PP, "--set", "semantic_weak=false"]),
    "tags-pp-no-tags": ("(h1) without the tag terms (tag_weight 0)", [*TAGS_PP, "--set", "tag_weight=0"]),
    "tags-pp-no-keep": ("(h1) with the paper's crop tags (tag_keep 0.5)", [*TAGS_PP, "--set", "tag_keep=0.5"]),
    "tags-pp-no-pair": ("(h1) with the paper's pairing (pairing paper)", [*TAGS_PP, "--set", "pairing=paper"]),
    "tags-pp-no-warm": ("(h1) with distillation from the start (dist_start 0, dist_warmup 0)",
                        [*TAGS_PP, "--set", "dist_start=0", "--set", "dist_warmup=0"]),
    "tags-k02": ("(h3) (h2) with the present term on the top 2% of the region (tag_topk 0.02; 0.1 in (h)-(h2))",
                 ["--method", "tags", "--set", "tag_topk=0.02"]),
    "tags-retrain": ("(i) (h) + choosing pseudolabels + retrain with dense cross-entropy", None),
    "tags-retrain-init": ("(j) as (i), retrained from ImageNet weights", None),
    "tags-pp-retrain": ("(i1) (h2) + choosing pseudolabels (uncalibrated scores) + retrain with dense cross-entropy",
                        None),
    "tags-pp-cal-retrain": ("(i2) (h2) + choosing pseudolabels with its calibrated scores + retrain: the README's "
                            "path exactly (pseudolabel applies the checkpoint's calibration)", None),
    "tags-pp-retrain-all": ("(i3) as (i1), retrained on every pseudo-labelled image, tag-only ones included (tag_only "
                            "true; with --masked-only the first stage saw the masked images alone)", None),
    "tags-pp-retrain-novel": ("(i4) as (i3), the tag-only images' pseudo-labels keeping their novel classes alone "
                              "(tag_only_base false: base pixels ignore)", None),
    "tags-pp-retrain-all-t75": ("(i5) as (i3), a tag-only image's pixels labelled only where their score reaches 0.75 "
                                "(pseudolabel --tag-only-min-score 0.75)", None),
    "tags-pp-retrain-round2": ("(i6) (i1) once more: pseudo-labelled by its retrained weights, retrained from them",
                               None),
    "tags-pp-retrain-all-round2": ("(i7) as (i6), the second round retrained on every image, tag-only ones included "
                                   "(tag_only true)", None),
}
RETRAINS = {  # retrain run: (the run it pseudo-labels with, pseudolabel --mode, retrain flags, from its weights)
    "retrain": ("full", "keep", PAPER, True),
    "retrain-choose": ("full", "choose", ["--method", "dense"], True),
    "retrain-choose-init": ("full", "choose", ["--method", "dense"], False),
    "comp-retrain": ("comp", "choose", ["--method", "dense"], True),
    "tags-retrain": ("tags", "choose", ["--method", "dense"], True),
    "tags-retrain-init": ("tags", "choose", ["--method", "dense"], False),
    "tags-pp-retrain": ("tags-pp", "choose", ["--method", "dense"], True),
    "tags-pp-cal-retrain": ("tags-pp-cal", "choose", ["--method", "dense"], True),
    "tags-pp-retrain-all": ("tags-pp", "choose", ["--method", "dense", "--set", "tag_only=true"], True),
    "tags-pp-retrain-novel": ("tags-pp", "choose", ["--method", "dense", "--set", "tag_only=true", "--set",
                                                    "tag_only_base=false"], True),
    "tags-pp-retrain-all-t75": ("tags-pp", "choose", ["--method", "dense", "--set", "tag_only=true"], True),
    "tags-pp-retrain-round2": ("tags-pp-retrain", "choose", ["--method", "dense"], True),
    "tags-pp-retrain-all-round2": ("tags-pp-retrain", "choose", ["--method", "dense", "--set", "tag_only=true"], True),
}
PSEUDOLABEL_FLAGS = {"tags-pp-retrain-all-t75": ["--tag-only-min-score", "0.75"]}  # beyond --mode
# run: the run whose final weights it calibrates (what training does with calibrate on)
CALIBRATED = {"tags-pp-cal": "tags-pp", "full-cal": "full"}
MOBILE = PRESETS["mobile"]
BUDGETS = {
    # The mobile preset's own schedule: about 11 minutes per training run on one core of the 2-core CPU.
    "full": dict(preset="mobile", iters=MOBILE["iters"], retrain_iters=MOBILE["iters"] // 2, batch=MOBILE["batch"],
                 imgsz=MOBILE["imgsz"]),
    "quick": dict(preset="mobile", iters=20, retrain_iters=10, batch=4, imgsz=MOBILE["imgsz"]),
}


def train_args(budget: dict, iters: int, seed: int = 0) -> list[str]:
    return ["--preset", budget.get("preset", "small"), "--iters", iters, "--batch", budget["batch"],
            "--imgsz", budget["imgsz"], "--device", "cpu", "--workers", 1, "--seed", seed,
            "--set", f"val_every={max(1, iters // 4)}", "--amp", "off", "--exist-ok", *budget.get("flags", [])]


def evaluate(ckpt: Path, dataset: Path, work: Path, name: str, threads: int) -> dict:
    weakshot("evaluate", ckpt, dataset, "--split", "val", "--project", work / "runs", "--name", name, "--exist-ok",
             "--device", "cpu", "--amp", "off", threads=threads)
    metrics = json.loads((work / "runs" / "evaluate" / name / "metrics.json").read_text())
    return {k: metrics[k] for k in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU", "pAcc")} | {
        "class_IoU": {c: None if v["IoU"] is None else round(v["IoU"], 2) for c, v in metrics["classes"].items()}}


@torch.no_grad()
def simnet_f1(last: Path, dataset: Path, pixels_per_class: int = 20, seed: int = 0) -> dict:
    """The SimNet's transfer quality (paper Table 3): F1 of 'similar' and 'dissimilar' decisions on pairs of
    val pixels from two different images, base-class pairs vs novel-class pairs; classes sampled equally."""
    ckpt = load_checkpoint(last)
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    simnet = SimNet(ckpt["config"]["mask_dim"], ckpt["config"].get("simnet_width", 256))
    simnet.load_state_dict({k[len("simnet."):]: v for k, v in ckpt["criterion"].items() if k.startswith("simnet.")})
    # The teacher that distillation uses runs in training mode, normalising each pair grid by its own statistics;
    # the running statistics are never used in training (and the teacher pass keeps moving them): measure that net.
    simnet.train()
    m = load_manifest(dataset)
    from weakshot_cli.data.dataset import EvalDataset

    data = EvalDataset(m, "val", inference_size(ckpt, None))
    g = torch.Generator().manual_seed(seed)

    @functools.lru_cache(maxsize=2)  # each image serves two pairs, each for base and novel classes
    def features(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = data[index]
        feats = model(x["image"][None])["pixel_features"][0]  # [C, h, w]
        label = x["label"][None, None].float()
        return feats, torch.nn.functional.interpolate(label, size=feats.shape[-2:], mode="nearest")[0, 0].long()

    def sample(index: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, label = features(index)
        picked = []
        for c in classes:
            where = (label == c).flatten().nonzero()[:, 0]
            if len(where):
                picked.append(where[torch.randint(len(where), (pixels_per_class,), generator=g)])
        if not picked:
            return None
        idx = torch.cat(picked)
        return feats.flatten(1)[:, idx].T, label.flatten()[idx]

    counts = {kind: np.zeros((2, 2), np.int64) for kind in ("base", "novel")}  # [truth similar][predicted similar]
    for i in range(len(data) - 1):
        for kind, classes in (("base", m.base), ("novel", m.novel)):
            a, b = sample(i, classes), sample(i + 1, classes)
            if a is None or b is None:  # an image without a class of this kind (common on MSRC)
                continue
            (fa, la), (fb, lb) = a, b
            p = simnet(fa.repeat_interleave(len(fb), 0), fb.repeat(len(fa), 1)) > 0.5
            truth = (la[:, None] == lb[None]).flatten()
            np.add.at(counts[kind], (truth.numpy().astype(int), p.numpy().astype(int)), 1)

    def f1(cm: np.ndarray, positive: int) -> float:
        tp = cm[positive, positive]
        return 100 * 2 * tp / max(1, 2 * tp + cm[positive, 1 - positive] + cm[1 - positive, positive])

    return {kind: {"similar_F1": round(f1(cm, 1), 1), "dissimilar_F1": round(f1(cm, 0), 1),
                   "pairs": int(cm.sum())} for kind, cm in counts.items()}


def run_one(name: str, dataset: Path, work: Path, budget: dict, seed: int, threads: int) -> dict:
    """Train (and score) one run of one seed in ``work`` (the seed's folder)."""
    runs = work / "runs"
    result: dict = {"run": name, "label": RUNS[name][0], "seed": seed}
    if name == "reference":
        out = work / name / "per-pixel.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # the same iterations, batch and crops; its own optimiser settings (per_pixel.py's defaults)
        args = [ROOT / "benchmarks" / "per_pixel.py", dataset, "--iters", budget["iters"], "--batch", budget["batch"],
                "--imgsz", budget["imgsz"], "--seed", seed, "--val-every", max(1, budget["iters"] // 8), "-o", out]
        subprocess.run([sys.executable, *map(str, args)], env=env, check=True)
        result |= json.loads(out.read_text())
        atomic_write(work / name / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
        return result
    if name in CALIBRATED:
        ckpt, seconds, result["novel_scale"], result["calibration_mIoU"] = calibrated(work, CALIBRATED[name], name,
                                                                                     dataset)
    elif name in RETRAINS:
        source, mode, flags, from_source = RETRAINS[name]
        first = (work / source / "last.pt" if source in CALIBRATED else
                 runs / ("retrain" if source in RETRAINS else "train") / source / "weights" / "last.pt")
        if not first.exists():
            sys.exit(f"run {name!r} needs the {source!r} run of seed {seed} first")
        seconds = json.loads((work / source / "result.json").read_text())["train_seconds"]
        pl_flags = PSEUDOLABEL_FLAGS.get(name, [])
        pl = work / ("dataset-pl" if mode == "keep" else f"dataset-pl-{source}-{mode}")
        pl = pl.with_name(pl.name + "".join(pl_flags).replace("--", "-"))
        if not (pl / "pseudolabel.json").exists():  # shared by the retrain runs that differ only in their start
            seconds += weakshot("pseudolabel", first, dataset, "-o", pl, "--mode", mode, *pl_flags, "--device", "cpu",
                                "--amp", "off", "--exist-ok", threads=threads)
        # from the source run: the README's command, whose defaults start from the checkpoint that made the
        # pseudo-labels for half the preset's iterations; else from ImageNet for the same iterations
        args = train_args(budget, budget["retrain_iters"], seed)
        if from_source and budget["retrain_iters"] == MOBILE["iters"] // 2:
            del args[args.index("--iters"):args.index("--iters") + 2]
        start = [] if from_source else ["--backbone-weights", "imagenet", "--iters", budget["retrain_iters"]]
        seconds += weakshot("retrain", pl, *args, *flags, *start, "--project", runs, "--name", name, threads=threads)
        quality = json.loads((pl / "pseudolabel.json").read_text())
        result["pseudolabels"] = {k: v for k, v in quality.items() if not isinstance(v, (dict, list))}
        for kind, part in quality.get("by_source", {}).items():  # masked and tag-only images apart
            result["pseudolabels"] |= {f"{kind}_{k}": part[k] for k in ("images", "novel_mIoU", "coverage")
                                       if k in part}
        ckpt = runs / "retrain" / name / "weights" / "last.pt"
    else:
        ckpt = runs / "train" / name / "weights" / "last.pt"
        seconds = trained_seconds(runs / "train" / name, budget["iters"])
        if seconds is None:
            seconds = weakshot("train", dataset, *train_args(budget, budget["iters"], seed), *RUNS[name][1],
                               "--project", runs, "--name", name, threads=threads)
        if not {"--oracle", "--no-sim"} & set(RUNS[name][1]):  # a run that trains SimNet
            result["simnet_F1"] = simnet_f1(ckpt, dataset)
    result["train_seconds"] = round(seconds, 1)
    result |= evaluate(ckpt, dataset, work, name, threads)
    result |= novel_diagnosis(work / "runs" / "evaluate" / name / "metrics.json")
    atomic_write(work / name / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    return result


def calibrated(work: Path, source: str, name: str, dataset: Path) -> tuple[Path, float, float, dict]:
    """A copy of the source run's last.pt with its novel-score factor chosen as training chooses it (calibrate.py);
    its path, the source's training time plus this, the factor and the criterion per factor."""
    last = work / "runs" / "train" / source / "weights" / "last.pt"
    if not last.exists():
        sys.exit(f"run {name!r} needs the {source!r} run of its seed first")
    start = time.perf_counter()
    ckpt, cpu, m = load_checkpoint(last), torch.device("cpu"), load_manifest(dataset)
    model, size = model_from_checkpoint(ckpt, cpu), inference_size(ckpt, None)
    off = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    factor, miou = choose_novel_scale(model, m, size, cpu, off)
    per_class = choose_class_scales(model, m, size, cpu, off, factor)  # {} without example masks
    out = save_checkpoint(work / name / "last.pt", ckpt | {"novel_scale": factor, "novel_class_scale": per_class})
    seconds = json.loads((work / source / "result.json").read_text())["train_seconds"] + time.perf_counter() - start
    return out, seconds, factor, {str(f): round(v, 1) for f, v in miou.items()}


def trained_seconds(run: Path, iters: int) -> float | None:
    """Training time of a run folder whose training already finished (so a rerun only scores it), else None."""
    done = run / "results.json"
    if not done.exists() or json.loads(done.read_text()).get("iter") != iters:
        return None
    return (run / "weights" / "last.pt").stat().st_mtime - (run / "config.json").stat().st_mtime


def val_curve(metrics_jsonl: Path) -> list[dict]:
    """The run's validation mIoU against iteration, from its metrics.jsonl."""
    records = map(json.loads, metrics_jsonl.read_text().splitlines())
    return [{"iter": r["iter"], "mIoU": round(r["mIoU"], 2)} for r in records if r.get("type") == "val"]


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
    pct = lambda a, b: round(100 * float(a) / float(b), 2) if b else None  # noqa: E731
    precision = {names[c]: pct(cm[c, c], cm[:, c].sum()) for c in range(k)}
    found = [precision[names[c]] for c in novel if precision[names[c]] is not None]
    return {"novel_region_IoU": round(float(region), 1), "novel_pixels_predicted_as": where,
            "class_precision": precision, "class_recall": {names[c]: pct(cm[c, c], cm[c].sum()) for c in range(k)},
            "novel_precision": round(float(np.mean(found)), 2) if found else None}


def tag_statistics(dataset: Path) -> dict:
    """How often each set of novel tags occurs on the training images: tags that rarely vary cannot tell the
    novel classes apart."""
    m = load_manifest(dataset)
    counts: dict[str, int] = {}
    for item in m.splits["train"]:
        key = "+".join(m.classes[c] for c in sorted(set(item.tags) & set(m.novel))) or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def summarise(per_seed: list[dict], oracle_novel: float | None) -> dict:
    """Mean and per-seed values of every figure; novel / oracle is the ratio of the means over seeds."""
    first = per_seed[0]
    out = {"label": first["label"], "seeds": [r["seed"] for r in per_seed],
           **{k: seed_summary([r[k] for r in per_seed]) for k in ("novel_mIoU", "base_mIoU", "mIoU", "train_seconds")}}
    if "novel_region_IoU" in first:
        out["novel_region_IoU"] = seed_summary([r["novel_region_IoU"] for r in per_seed])
    if all(r.get("novel_precision") is not None for r in per_seed):
        out["novel_precision"] = seed_summary([r["novel_precision"] for r in per_seed])
    out["novel_vs_oracle"] = round(out["novel_mIoU"]["mean"] / oracle_novel, 3) if oracle_novel else None
    for key in ("novel_pixels_predicted_as", "class_IoU", "class_precision", "class_recall", "simnet_F1",
                "pseudolabels", "novel_scale", "curve"):
        if key in first:
            out[key] = {f"seed{r['seed']}": r[key] for r in per_seed}
    return out


def committed_results(path: Path) -> dict[str, list[dict]]:
    """The per-seed results inside an earlier report (``summarise`` undone), so that runs finished on another
    machine or in an earlier session stay in the report when this one adds others."""
    if not path.exists():
        return {}
    found: dict[str, list[dict]] = {}
    for name, r in json.loads(path.read_text())["runs"].items():
        for i, seed in enumerate(r["seeds"]):
            result = {"run": name, "label": r["label"], "seed": seed}
            result |= {k: v["values"][i] for k, v in r.items() if isinstance(v, dict) and "values" in v}
            result |= {k: v[f"seed{seed}"] for k, v in r.items() if isinstance(v, dict) and f"seed{seed}" in v}
            found.setdefault(name, []).append(result)
    return found


def report(dataset_name: str, work: Path, budget_name: str, out: Path, variant: str = "") -> None:
    stem = f"quality-{dataset_name}{variant}" + ("" if budget_name == "full" else f"-{budget_name}")
    found = committed_results(out / f"{stem}.json")
    for seed_dir in sorted(work.glob("seed*")):
        for name in RUNS:
            if (seed_dir / name / "result.json").exists():
                result = json.loads((seed_dir / name / "result.json").read_text())
                scored = seed_dir / "runs" / "evaluate" / name / "metrics.json"
                if scored.exists():  # precision and recall, also for runs scored before they were kept
                    result |= novel_diagnosis(scored)
                if RUNS[name][1] is not None:  # a plain train run (the reference records its own curve)
                    result["curve"] = val_curve(seed_dir / "runs" / "train" / name / "metrics.jsonl")
                kept = [r for r in found.get(name, []) if r["seed"] != result["seed"]]  # a rerun replaces its seed
                found[name] = sorted([*kept, result], key=lambda r: r["seed"])
    oracle = found.get("oracle")
    oracle_novel = float(np.mean([r["novel_mIoU"] for r in oracle])) if oracle else None
    runs = {name: summarise(found[name], oracle_novel) | {"label": RUNS[name][0]} for name in RUNS if name in found}
    _, novel, _, title = DATASETS[dataset_name]
    doc = {"dataset": title, "variant": variant.lstrip("-") or None, "novel": novel.split(","),
           "budget": {"name": budget_name, **BUDGETS[budget_name], "backbone": "mobilenet_v2, ImageNet weights",
                      "transformer_in": MOBILE["transformer_in"],
                      "precision": "float32"},
           "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU, one thread per run",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "novel_tags": tag_statistics(next(work.glob("seed*/dataset"), None) or
                                         split_dataset(dataset_name, work / "dataset", 1)), "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    cell = lambda r, k: f"{r[k]['mean']:.1f} ({', '.join(f'{v:.1f}' for v in r[k]['values'])})"  # noqa: E731
    print("| run | novel mIoU (mean; seeds) | base mIoU | mIoU | novel / oracle | novel region IoU | train time |\n"
          "|---|---|---|---|---|---|---|")
    for r in runs.values():
        frac = f"{100 * r['novel_vs_oracle']:.0f}%" if r["novel_vs_oracle"] else "-"
        region = cell(r, "novel_region_IoU") if "novel_region_IoU" in r else "-"
        print(f"| {r['label']} | {cell(r, 'novel_mIoU')} | {cell(r, 'base_mIoU')} | {cell(r, 'mIoU')} | {frac} | "
              f"{region} | {r['train_seconds']['mean'] / 60:.0f} min |")
    if runs:
        chart(runs, f"{title.split(' (')[0]}, novel = {novel.replace(',', ', ')}", out / f"{stem}.png")


# What the summary over splits reads from each split's report: the oracle, `train` with its defaults (one stage) and
# the README's whole path (pseudolabel + retrain with their defaults), and SimFormer as published.
SPLIT_RUNS = {"oracle": "oracle", "single": "tags-pp-cal", "default": "tags-pp-cal-retrain", "paper": "full"}


def split_run(runs: dict, key: str) -> str:
    """The run SPLIT_RUNS names for ``key``; for the README's path, tags-pp-retrain where that is the same run:
    it pseudo-labels with tags-pp's weights, which are tags-pp-cal's (CALIBRATED) without their calibration, so
    where every seed's calibration chose x1 (and no per-class factor, which only example masks give) both
    pseudo-label and retrain alike."""
    run = SPLIT_RUNS[key]
    cal = runs.get("tags-pp-cal", {})
    if (run == "tags-pp-cal-retrain" and run not in runs and "tags-pp-retrain" in runs
            and all(v == 1.0 for v in cal.get("novel_scale", {}).values())
            and set(cal.get("novel_scale", {})) >= {f"seed{s}" for s in runs["tags-pp-retrain"]["seeds"]}):
        return "tags-pp-retrain"
    return run


def precision_from_recall(run: dict, seed: int) -> float | None:
    """Mean novel precision of a run scored before precision was kept, from its per-class IoU and recall (the share
    of a class's pixels predicted as itself): 1/IoU = 1/recall + 1/precision - 1."""
    key = f"seed{seed}"
    where, iou = run.get("novel_pixels_predicted_as", {}).get(key), run.get("class_IoU", {}).get(key)
    if not where or not iou:
        return None
    values = []
    for name, predicted in where.items():
        recall, i = predicted.get(name), iou.get(name)
        if not recall or not i:
            return None
        values.append(100 / (100 / i - 100 / recall + 1))
    return round(float(np.mean(values)), 2)


def splits_report(out: Path) -> None:
    """quality-msrc-splits.json from the MSRC reports (open split and msrc-s1..s3): per split and seed the novel
    mIoU, base mIoU and novel precision of SPLIT_RUNS; then a table of novel / oracle per split (each run's mean
    over the seeds it has), the mean over splits and the worst split."""
    rows = []
    for name in ("msrc", *(f"msrc-s{i}" for i in range(1, len(MSRC_SPLITS) + 1))):
        path = out / f"quality-{name}.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())["runs"]
        chosen = {key: split_run(runs, key) for key in SPLIT_RUNS}
        seeds = sorted(set.union(*(set(runs[r]["seeds"]) for r in chosen.values() if r in runs)))
        for seed in seeds:
            row = {"split": name, "novel": DATASETS[name][1].split(","), "seed": seed}
            for key, run in chosen.items():
                if run in runs and seed in runs[run]["seeds"]:
                    i = runs[run]["seeds"].index(seed)
                    row[key] = runs[run]["novel_mIoU"]["values"][i]
                    row[f"{key}_base"] = runs[run]["base_mIoU"]["values"][i]
                    if "novel_precision" in runs[run]:
                        row[f"{key}_precision"] = runs[run]["novel_precision"]["values"][i]
                    elif (derived := precision_from_recall(runs[run], seed)) is not None:
                        row[f"{key}_precision"] = derived
                    row.setdefault("runs", {})[key] = run
            rows.append(row)
    atomic_write(out / "quality-msrc-splits.json",
                 lambda p: p.write_text(json.dumps({"splits": rows, "runs": SPLIT_RUNS}, indent=2) + "\n"))
    table = ["| split (novel classes) | seeds | oracle novel | one stage / oracle | whole path / oracle | paper / oracle "
             "| whole path base / oracle base | novel precision: whole path, oracle |", "|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, list[float]] = {k: [] for k in ("single", "default", "paper", "base")}
    precision: dict[str, list[float]] = {"default": [], "oracle": []}
    for name in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == name]
        # each figure over the seeds it was run with (SimFormer as published: seed 0 alone on some splits)
        mean = lambda key: float(np.mean(v)) if (v := [r[key] for r in mine if key in r]) else None  # noqa: E731
        oracle, cells = mean("oracle"), []
        for key, num, den in (("single", "single", oracle), ("default", "default", oracle),
                              ("paper", "paper", oracle), ("base", "default_base", mean("oracle_base"))):
            value = mean(num)
            if value is None or not den:
                cells.append("-")
                continue
            ratios[key].append(value / den)
            cells.append(f"{100 * value / den:.0f}% ({value:.1f})")
        pair = [mean(f"{k}_precision") for k in ("default", "oracle")]
        for k, v in zip(("default", "oracle"), pair):
            if v is not None:
                precision[k].append(v)
        cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in pair))
        seeds = {k: sum(k in r for r in mine) for k in ("default", "paper")}
        count = str(seeds["default"]) + (f" ({seeds['paper']} paper)" if seeds["paper"] != seeds["default"] else "")
        table.append(f"| {name} ({', '.join(mine[0]['novel'])}) | {count} | {oracle:.1f} | {' | '.join(cells)} |")
    summary = " | ".join(f"{100 * np.mean(v):.0f}% (worst {100 * min(v):.0f}%)" if v else "-" for v in ratios.values())
    means = " / ".join(f"{np.mean(v):.1f}" if v else "-" for v in precision.values())
    table.append(f"| **mean over splits** | | | {summary} | {means} |")
    print("\n".join(table))
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):  # their results tables are this one
        write_table(readme, "quality.py --splits-report", "\n".join(table))


def chart(runs: dict, title: str, path: Path) -> None:
    """Bars (mean over seeds, each seed a dot) and the oracle's and reference's validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    x = np.arange(len(names))
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [2.6, 1]})
    series = (("novel_mIoU", "novel mIoU", "tab:red"), ("novel_region_IoU", "novel region IoU (class-agnostic)",
              "tab:orange"), ("base_mIoU", "base mIoU", "tab:blue"), ("mIoU", "all mIoU", "tab:gray"))
    for i, (key, label, colour) in enumerate(series):
        have = [n for n in names if key in runs[n]]
        pos = np.array([names.index(n) for n in have]) + (i - 1.5) * 0.2
        bars = ax.bar(pos, [runs[n][key]["mean"] for n in have], 0.2, label=label, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
        for p, n in zip(pos, have):
            ax.plot([p] * len(runs[n][key]["values"]), runs[n][key]["values"], "k.", markersize=3)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("val IoU (%), mean over seeds (dots: each seed)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    for name, style in (("oracle", "-"), ("reference", "--")):
        for seed, curve in runs.get(name, {}).get("curve", {}).items():
            curves.plot([c["iter"] for c in curve], [c["mIoU"] for c in curve], style, label=f"{name} {seed}")
    curves.set_xlabel("iteration")
    curves.set_ylabel("val mIoU (%)")
    curves.set_title("validation curves")
    if curves.get_legend_handles_labels()[0]:  # a variant's report may have no oracle or reference curve
        curves.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def selected_runs(spec: str, runs: dict) -> list[str]:
    """The comma-separated run names of ``--runs``; an unknown one ends the benchmark with the choices."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if unknown := set(names) - set(runs):
        sys.exit(f"unknown run(s): {', '.join(sorted(unknown))}; choose from {', '.join(runs)}")
    return names


def offline_weights(work: Path) -> None:
    """Let torchvision's weights API find ../shared's ImageNet MobileNetV2 offline: unless $TORCH_HOME already holds
    it, point TORCH_HOME (for this process and every run it starts) at a folder in ``work`` that links to it."""
    name = imagenet_file("mobilenet_v2").name
    if imagenet_file("mobilenet_v2").exists() or not (SHARED / "weights" / name).exists():
        return
    home = work / "torch-home"
    link = home / "hub" / "checkpoints" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(SHARED / "weights" / name)
    os.environ["TORCH_HOME"] = str(home)


def split_dataset(name: str, dataset: Path, threads: int, *extra: object) -> Path:
    """The benchmark's weak-shot split of ``name`` into ``dataset`` (made once); ``extra`` split options."""
    data, novel, ignore, _ = DATASETS[name]
    if not (dataset / "weakshot.json").exists():
        weakshot("split", "--images", data / "images", "--masks", data / "labels", "--classes", data / "classes.txt",
                 "--ignore-index", ignore, "--novel", novel, *extra, "-o", dataset, threads=threads)
    return dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="msrc")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmarks" / "quality")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--quick", action="store_true", help="20 iterations per run: a smoke test of the pipeline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only gather finished runs into the results")
    ap.add_argument("--splits-report", action="store_true",
                    help="only summarise the MSRC reports over splits into quality-msrc-splits.json")
    ap.add_argument("--examples", type=int, default=0, help="split --examples K: full masks of K training images "
                    "per novel class, drawn with the run's seed (issue 28)")
    ap.add_argument("--tag-only-fraction", type=float, default=0.0, help="split --tag-only-fraction F: that share "
                    "of the training images keeps only its tags, drawn with the run's seed (issue 29)")
    ap.add_argument("--masked-only", action="store_true", help="train and retrain with --set tag_only=false: "
                    "the masked images alone")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting for train and retrain (repeatable), e.g. simnet_width=128 (issue 33)")
    args = ap.parse_args()
    if args.splits_report:
        return splits_report(args.out)
    torch.set_num_threads(args.threads)  # the in-process scoring (SimNet F1, calibration) keeps to its share too
    budget_name = "quick" if args.quick else "full"
    # a variant of the dataset's split has its own work folder and report: quality-<dataset><variant>.json
    variant = (f"-k{args.examples}" if args.examples else "") + \
        (f"-to{round(100 * args.tag_only_fraction)}" if args.tag_only_fraction else "") + \
        ("-masked" if args.masked_only else "") + "".join(f"-{kv.replace('=', '')}" for kv in args.sets)
    split_args = [*(["--examples", args.examples] if args.examples else []),
                  *(["--tag-only-fraction", args.tag_only_fraction] if args.tag_only_fraction else [])]
    sets = [*(["tag_only=false"] if args.masked_only else []), *args.sets]
    budget = BUDGETS[budget_name] | {"flags": [a for kv in sets for a in ("--set", kv)]}
    work = args.work / f"{args.dataset}{variant}" / budget_name
    names = selected_runs(args.runs, RUNS)
    if not args.report:
        offline_weights(args.work)
        for seed in (int(s) for s in args.seeds.split(",")):
            seed_work = work / f"seed{seed}"
            # the plain split is the same for every seed, a variant's draw follows the seed; each seed's folder
            # holds its own copy for its pseudo-labels
            draw = ["--seed", seed] if split_args else []
            dataset = split_dataset(args.dataset, seed_work / "dataset", args.threads, *split_args, *draw)
            for name in names:
                r = run_one(name, dataset, seed_work, budget, seed, args.threads)
                print(f"{args.dataset}{variant} seed {seed} {name}: novel {r['novel_mIoU']:.1f}  "
                      f"base {r['base_mIoU']:.1f}  all {r['mIoU']:.1f}  ({r['train_seconds'] / 60:.1f} min)",
                      flush=True)
    report(args.dataset, work, budget_name, args.out, variant)


if __name__ == "__main__":
    main()
