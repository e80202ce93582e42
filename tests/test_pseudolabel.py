"""`weakshot pseudolabel`: the labelling rules pixel by pixel, a new dataset beside an untouched input,
resumability, the benchmark-mode report, errors; and retrain reading the result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, assert_user_error, run_cli
from test_train import TINY, synth  # noqa: F401  (fixture)
from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.manifest import Item, Manifest, load_manifest
from weakshot_cli.data.synthetic import make_synthetic
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint
from weakshot_cli.engine.pseudolabel import _batches, pseudo_label

IMGSZ = ["--imgsz", "64", "--device", "cpu"]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(synth, tmp_path_factory) -> Path:  # noqa: F811
    """A 2-iteration checkpoint whose novel class logits are raised so that novel classes win on the
    unlabelled pixels of tagged and untagged images alike: the tag rule then has pixels to keep and to drop."""
    runs = tmp_path_factory.mktemp("runs")
    assert run_cli("train", synth, *TINY, "--iters", "2", "--project", runs).returncode == 0
    trained = load_checkpoint(runs / "train" / "train" / "weights" / "last.pt")
    trained["model"]["class_embed.bias"][trained["novel"]] += 1.0
    torch.save(trained, runs / "novel-biased.pt")
    return runs / "novel-biased.pt"


@pytest.fixture(scope="module")
def labelled(ckpt, synth, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("pl") / "pl"
    before = digest(synth)
    r = run_cli("pseudolabel", ckpt, synth, "-o", out, *IMGSZ)
    assert r.returncode == 0, r.stderr
    assert digest(synth) == before  # the input dataset is untouched
    return out


def test_unit_rule():
    scores = torch.zeros(4, 2, 3)  # classes 0, 1 base; 2, 3 novel
    scores[2, 0, :] = 0.9          # top row: novel 2 wins
    scores[3, 1, :2] = 0.4         # bottom row: novel 3 wins weakly on two pixels, base 0 on the last
    scores[0, 1, 2] = 0.8
    base = np.array([[255, 1, 255], [255, 255, 255]], np.uint8)
    np.testing.assert_array_equal(pseudo_label(scores, base, [2, 3]), [[2, 1, 2], [3, 3, 255]])
    np.testing.assert_array_equal(pseudo_label(scores, base, [3]), [[255, 1, 255], [3, 3, 255]])  # 2 untagged
    np.testing.assert_array_equal(pseudo_label(scores, base, [2, 3], min_score=0.5), [[2, 1, 2], [255] * 3])


def test_batches_never_mix_image_sizes(tmp_path):
    """Padding to a neighbour's size would change a pseudo-label (and break exact resume)."""
    sizes = [(64, 48), (32, 32), (64, 48), (32, 32), (64, 48)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    m = Manifest(["a", "b"], [0], [1], {"train": [Item(f"{i}.png", None, []) for i in range(5)]}, root=tmp_path)
    batches = _batches(m, [0, 1, 2, 3, 4], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 and len({sizes[i] for i in b}) == 1 for b in batches)


def test_rules_hold_on_every_written_label(labelled, ckpt, synth):  # noqa: F811
    src, new = load_manifest(synth), load_manifest(labelled)
    assert new.novel_masks and new.classes == src.classes and new.novel == src.novel
    assert [it.tags for it in new.splits["train"]] == [it.tags for it in src.splits["train"]]
    assert len(new.splits["val"]) == len(src.splits["val"])
    for old, it in zip(src.splits["train"], new.splits["train"]):
        base = np.asarray(Image.open(src.resolve(old.label)))
        pseudo = np.asarray(Image.open(new.resolve(it.label)))
        assert pseudo.shape == base.shape
        known = base != 255
        np.testing.assert_array_equal(pseudo[known], base[known])  # base ground truth wins
        extra = set(np.unique(pseudo[~known]).tolist()) - {255}
        assert extra <= set(old.tags) & set(src.novel), (extra, old.tags)  # only tagged novel classes

    # exactly what the rule gives on the model's own scores, one image at a time
    model = model_from_checkpoint(load_checkpoint(ckpt), torch.device("cpu"))
    ds = EvalDataset(src, "train", 64)
    kept = dropped = 0
    for i, it in enumerate(new.splits["train"]):
        b = collate_eval([ds[i]])
        scores = class_scores(model, b["image"], b["sizes"], [b["labels"][0].shape])[0]
        tags = [t for t in it.tags if t in src.novel]
        base = b["labels"][0].numpy().astype(np.uint8)
        expected = pseudo_label(scores, base, tags)
        np.testing.assert_array_equal(np.asarray(Image.open(new.resolve(it.label))), expected)
        novel_wins = np.isin(scores.argmax(0).numpy(), src.novel) & (base == 255)
        kept += (novel_wins & (expected != 255)).sum()
        dropped += (novel_wins & (expected == 255)).sum()
    assert kept > 0 and dropped > 0, (kept, dropped)  # the tag rule both keeps and removes novel pixels


def test_min_score_leaves_only_base(ckpt, synth, tmp_path):  # noqa: F811
    assert run_cli("pseudolabel", ckpt, synth, "-o", tmp_path / "pl", "--min-score", "1e9", *IMGSZ).returncode == 0
    src, new = load_manifest(synth), load_manifest(tmp_path / "pl")
    for old, it in zip(src.splits["train"], new.splits["train"]):
        np.testing.assert_array_equal(np.asarray(Image.open(new.resolve(it.label))),
                                      np.asarray(Image.open(src.resolve(old.label))))


def test_interrupted_run_resumes_to_the_same_output(labelled, ckpt, synth, tmp_path):  # noqa: F811
    partial = tmp_path / "pl"
    shutil.copytree(labelled, partial)
    (partial / "weakshot.json").unlink()
    (partial / "pseudolabel.json").unlink()
    for png in sorted((partial / "labels" / "train").glob("*.png"))[::2]:
        png.unlink()
    r = run_cli("pseudolabel", ckpt, synth, "-o", partial, *IMGSZ)
    assert r.returncode == 0, r.stderr
    assert "from an earlier run" in r.stdout
    assert digest(partial) == digest(labelled)
    # a partial run with other options is not mixed with new ones
    (partial / "weakshot.json").unlink()
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", partial, "--min-score", "0.5", *IMGSZ),
                      "other options")
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", labelled, *IMGSZ), "--exist-ok")


def test_sigkill_then_rerun_equals_an_uninterrupted_run(ckpt, tmp_path):  # noqa: F811
    """A real kill mid-way (120 images, one per batch), then the same command again: the same files as a run
    never interrupted, and no temporary file left over."""
    make_synthetic(tmp_path / "src", n_train=120, n_val=2, size=64, seed=1)
    assert run_cli("split", "--images", tmp_path / "src" / "images", "--masks", tmp_path / "src" / "labels",
                   "--classes", tmp_path / "src" / "classes.txt", "--novel", "star,ring,brick", "-o",
                   tmp_path / "ws").returncode == 0
    args = ["pseudolabel", ckpt, tmp_path / "ws", "--batch", "1", "--workers", "0", *IMGSZ]
    assert run_cli(*args, "-o", tmp_path / "straight").returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "weakshot_cli", *map(str, args), "-o", str(killed)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    labels = killed / "labels" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(labels.glob("*.png"))) < 10:
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    written = len(list(labels.glob("*.png")))
    assert proc.returncode == -signal.SIGKILL and 10 <= written < 120 and not (killed / "weakshot.json").exists()
    r = run_cli(*args, "-o", killed)
    assert r.returncode == 0, r.stderr
    assert "from an earlier run" in r.stdout
    assert digest(killed) == digest(tmp_path / "straight")


def test_benchmark_report_matches_the_files(labelled, synth):  # noqa: F811
    report = json.loads((labelled / "pseudolabel.json").read_text())
    src, new = load_manifest(synth), load_manifest(labelled)
    pairs = [(np.asarray(Image.open(new.resolve(it.label))), np.asarray(Image.open(new.resolve(it.full))))
             for it in new.splits["train"]]
    ious = []
    for c in src.novel:
        tp = sum(((p == c) & (f == c)).sum() for p, f in pairs)
        gt = sum((f == c).sum() for p, f in pairs)
        pred = sum(((p == c) & (f != 255)).sum() for p, f in pairs)  # ignore-GT pixels excluded
        expected = 100 * tp / (gt + pred - tp) if gt + pred else None
        assert report["novel_IoU"][src.classes[c]] == pytest.approx(expected)
        assert report["pixels"]["per_class"][src.classes[c]] == {"ground_truth": gt, "pseudo": pred, "correct": tp}
        ious += [expected] if expected is not None else []
    assert report["novel_mIoU"] == pytest.approx(np.mean(ious))
    novel_gt = [np.isin(f, src.novel) for p, f in pairs]
    covered = sum((g & (p != 255)).sum() for (p, f), g in zip(pairs, novel_gt)) / sum(g.sum() for g in novel_gt)
    assert report["coverage"] == pytest.approx(100 * covered) and report["images"] == len(src.splits["train"])


def test_retrain_reads_the_pseudo_labelled_dataset(labelled, tmp_path):
    r = run_cli("retrain", labelled, *TINY, "--iters", "1", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "retrain" / "retrain"
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["iter"] == 1 and ckpt["stage"] == "retrain"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in logged if x["type"] == "train"]
    assert train and all(x["loss_comp"] == x["loss_sim"] == x["loss_dist"] == 0 for x in train)  # plain MaskFormer
