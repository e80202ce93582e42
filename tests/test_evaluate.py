"""`weakshot evaluate` end to end on a tiny checkpoint: metrics from the real predictions, files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint
from weakshot_cli.engine.metrics import compute_metrics, confusion
from weakshot_cli.engine.visualise import legend_entries


@pytest.fixture
def ckpt(tiny_ckpt) -> Path:
    """The session's 2-iteration checkpoint (conftest.tiny_ckpt)."""
    return tiny_ckpt


def test_metrics_are_those_of_the_real_predictions(ckpt, synth, tmp_path):
    r = run_cli("evaluate", ckpt, synth, "--device", "cpu", "--imgsz", "64", "--batch", "3", "--samples", "2",
                "--amp", "off", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "evaluate" / "evaluate"
    result = json.loads((run / "metrics.json").read_text())
    for plot in ("confusion_matrix.png", "per_class_iou.png", "samples.png"):
        assert (run / "plots" / plot).stat().st_size > 1000
    assert "novel mIoU" in r.stdout and "star" in r.stdout

    # the same numbers, recomputed one image at a time at original resolution
    c = load_checkpoint(ckpt)
    model, m = model_from_checkpoint(c, torch.device("cpu")), load_manifest(synth)
    ds = EvalDataset(m, "val", 64)
    cm = torch.zeros(10, 10, dtype=torch.long)
    shown = []  # the label maps of the two sample rows: ground truth and prediction
    for i in range(len(ds)):
        b = collate_eval([ds[i]])
        pred = class_scores(model, b["image"], b["sizes"], [b["labels"][0].shape])[0].argmax(0)
        cm += confusion(pred, b["labels"][0], 10)
        if i < 2:
            shown += [b["labels"][0].numpy(), pred.numpy()]
    expected = compute_metrics(cm, m.base, m.novel)
    assert np.array_equal(np.array(result["confusion"]), cm.numpy())
    for key in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU", "pAcc"):
        assert result[key] == pytest.approx(expected[key], nan_ok=True), key
    assert [result["classes"][n]["IoU"] for n in m.classes] == pytest.approx(expected["IoU"], nan_ok=True)
    assert {n for n, v in result["classes"].items() if v["type"] == "novel"} == {"star", "ring", "brick"}
    assert result["images"] == len(ds) and int(np.sum(result["confusion"])) > 0

    # samples.png has a legend: a swatch in each tinted class's exact colour (the overlays blend colours, so only a
    # swatch shows them unmixed), and none for the classes the two samples do not contain
    samples = np.asarray(Image.open(run / "plots" / "samples.png").convert("RGB")).reshape(-1, 3)
    entries = legend_entries(shown, m.classes, c["palette"])
    assert entries and len(entries) < len(m.classes), entries
    swatch = {name: int((samples == colour).all(axis=-1).sum()) for name, colour in entries}
    assert min(swatch.values()) >= 50, swatch
    absent = [c["palette"][3 * k:3 * k + 3] for k in range(10) if m.classes[k] not in dict(entries)]
    assert all((samples == colour).all(axis=-1).sum() < 10 for colour in absent)


def test_test_time_augmentation(ckpt, synth, tmp_path):
    model = model_from_checkpoint(load_checkpoint(ckpt), torch.device("cpu"))
    b = collate_eval([EvalDataset(load_manifest(synth), "val", 64)[0]])
    x, size = b["image"], [b["labels"][0].shape]
    plain = class_scores(model, x, b["sizes"], size)[0]
    mirrored = class_scores(model, x.flip(-1), b["sizes"], size)[0].flip(-1)
    torch.testing.assert_close(class_scores(model, x, b["sizes"], size, flip=True)[0], (plain + mirrored) / 2)
    multi = class_scores(model, x, b["sizes"], size, scales=(1.0, 1.5))[0]
    assert multi.shape == plain.shape and not torch.allclose(multi, plain)
    r = run_cli("evaluate", ckpt, synth, "--device", "cpu", "--imgsz", "64", "--samples", "0", "--flip",
                "--scales", "1,1.5", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "runs" / "evaluate" / "evaluate" / "metrics.json").read_text())
    assert result["flip"] is True and result["scales"] == [1.0, 1.5]


def test_training_split_is_scored_on_its_full_masks(ckpt, synth, tmp_path):
    r = run_cli("evaluate", ckpt, synth, "--split", "train", "--device", "cpu", "--imgsz", "64", "--samples", "0",
                "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    cm = np.array(json.loads((tmp_path / "runs" / "evaluate" / "evaluate" / "metrics.json").read_text())["confusion"])
    m = load_manifest(synth)
    assert cm[m.novel].sum() > 0  # novel ground truth is there: the hidden training labels were not used


def test_bf16_on_the_cpu_for_evaluate_predict_and_pseudolabel(ckpt, synth, tmp_path):
    """--amp bf16 runs every inference command on the CPU; its predictions are those of float32 up to the pixels
    whose best two classes are within bfloat16's rounding."""
    runs, common = tmp_path / "runs", ["--device", "cpu", "--imgsz", "64"]
    for amp in ("off", "bf16"):
        r = run_cli("evaluate", ckpt, synth, *common, "--samples", "0", "--amp", amp, "--project", runs, "--name", amp)
        assert r.returncode == 0, r.stderr
        r = run_cli("predict", ckpt, synth.parent / "src" / "images" / "val", *common, "--amp", amp, "--project", runs, "--name", amp)
        assert r.returncode == 0, r.stderr
        assert run_cli("pseudolabel", ckpt, synth, "-o", tmp_path / f"pl-{amp}", *common, "--amp", amp).returncode == 0
    off, bf16 = (json.loads((runs / "evaluate" / amp / "metrics.json").read_text()) for amp in ("off", "bf16"))
    assert abs(off["mIoU"] - bf16["mIoU"]) < 5
    agree = [np.mean(np.asarray(Image.open(p)) == np.asarray(Image.open(runs / "predict" / "bf16" / "labels" / p.name)))
             for p in sorted((runs / "predict" / "off" / "labels").glob("*.png"))]
    assert agree and np.mean(agree) > 0.9, agree
    assert len(list((tmp_path / "pl-bf16").rglob("*.png"))) == len(list((tmp_path / "pl-off").rglob("*.png"))) > 0
