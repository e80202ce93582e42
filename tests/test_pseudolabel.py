"""`weakshot pseudolabel`: the labelling rules pixel by pixel, a new dataset beside an untouched input,
resumability, the benchmark-mode report, errors; and retrain reading the result."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_user_error, run_cli
from test_train import TINY, synth  # noqa: F401  (fixture)
from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint
from weakshot_cli.engine.pseudolabel import pseudo_label

IMGSZ = ["--imgsz", "64", "--device", "cpu"]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(synth, tmp_path_factory) -> Path:  # noqa: F811
    runs = tmp_path_factory.mktemp("runs")
    assert run_cli("train", synth, *TINY, "--iters", "2", "--project", runs).returncode == 0
    return runs / "train" / "train" / "weights" / "last.pt"


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

    # exactly what the rule gives on the model's own scores
    model = model_from_checkpoint(load_checkpoint(ckpt), torch.device("cpu"))
    ds = EvalDataset(src, "train", 64)
    for i in (0, 5):
        b = collate_eval([ds[i]])
        scores = class_scores(model, b["image"], b["sizes"], [b["labels"][0].shape])[0]
        tags = [t for t in src.splits["train"][i].tags if t in src.novel]
        expected = pseudo_label(scores, b["labels"][0].numpy().astype(np.uint8), tags)
        np.testing.assert_array_equal(np.asarray(Image.open(new.resolve(new.splits["train"][i].label))), expected)


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


def test_benchmark_report_matches_the_files(labelled, synth):  # noqa: F811
    report = json.loads((labelled / "pseudolabel.json").read_text())
    src, new = load_manifest(synth), load_manifest(labelled)
    for c in src.novel:
        tp = gt = pred = 0
        for it in new.splits["train"]:
            pseudo = np.asarray(Image.open(new.resolve(it.label)))
            full = np.asarray(Image.open(new.resolve(it.full)))
            valid = full != 255
            tp += ((pseudo == c) & (full == c)).sum()
            gt += (full == c).sum()
            pred += ((pseudo == c) & valid).sum()
        expected = 100 * tp / (gt + pred - tp) if gt + pred else None
        assert report["novel_IoU"][src.classes[c]] == pytest.approx(expected)
    assert 0 <= report["coverage"] <= 100 and report["images"] == len(src.splits["train"])


def test_bad_inputs_write_nothing(ckpt, synth, tmp_path):  # noqa: F811
    other = tmp_path / "other"
    shutil.copytree(synth, other)
    manifest = json.loads((other / "weakshot.json").read_text())
    manifest["classes"][1] = "lake"
    (other / "weakshot.json").write_text(json.dumps(manifest))
    assert_user_error(run_cli("pseudolabel", ckpt, other, "-o", tmp_path / "out", *IMGSZ), "different class set")
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", synth / "pl", *IMGSZ), "inside")
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", tmp_path / "out", "--min-score", "-1"), "--min-score")
    assert not (tmp_path / "out").exists() and not (synth / "pl").exists()


def test_retrain_reads_the_pseudo_labelled_dataset(labelled, tmp_path):
    r = run_cli("retrain", labelled, *TINY, "--iters", "2", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "retrain" / "retrain"
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["iter"] == 2 and ckpt["stage"] == "retrain"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in logged if x["type"] == "train"]
    assert train and all(x["loss_comp"] == x["loss_sim"] == x["loss_dist"] == 0 for x in train)  # plain MaskFormer
