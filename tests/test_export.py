"""weakshot export: ONNX and TorchScript files that give the checkpoint's scores at any image size, carry its class
names, run in predict (ONNX), and refuse files weakshot did not export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, assert_user_error, run_cli, snapshot
from weakshot_cli.data.dataset import MEAN, STD, collate_eval, load_rgb, normalise
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.export import exported_meta, onnx_forward
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint

FAST = ["--device", "cpu", "--imgsz", "64", "--amp", "off"]
TOLERANCE = 5e-4  # largest difference of any class score (in 0..1) from the checkpoint's: measured 2e-6 (small), 1e-4 (mobile)


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory) -> dict:
    """The tiny checkpoint, with its novel-score calibration set to 0.5 (it must travel inside), exported to both
    formats once."""
    folder = tmp_path_factory.mktemp("export")
    ckpt = load_checkpoint(tiny_ckpt) | {"novel_scale": 0.5}
    torch.save(ckpt, folder / "best.pt")
    for fmt in ("onnx", "torchscript"):
        r = run_cli("export", folder / "best.pt", "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert f"Exported {folder / ('best.' + fmt)}" in r.stdout and not r.stderr
    return {"pt": folder / "best.pt", "onnx": folder / "best.onnx", "torchscript": folder / "best.torchscript"}


def _reference(pt, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the checkpoint gives each image: scores at its size, the calibration applied."""
    ckpt = load_checkpoint(pt)
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    scale = torch.ones(len(ckpt["classes"]))
    scale[ckpt["novel"]] = ckpt.get("novel_scale", 1.0)
    out = []
    for rgb in images:
        b = collate_eval([{"image": normalise(rgb), "label": torch.zeros(1), "index": 0}])
        out.append(class_scores(model, b["image"], b["sizes"], b["sizes"], scale=scale)[0])
    return out


def _images(synth) -> list[torch.Tensor]:
    """Two real synthetic images, one cropped to an odd size: the export pads inside."""
    m = load_manifest(synth)
    first, second = (load_rgb(m.resolve(it.image)) for it in m.splits["val"][:2])
    return [first, second[:, :37, :53]]


def test_exported_models_give_the_checkpoints_scores_at_any_size(exported, synth):
    images = _images(synth)
    reference = _reference(exported["pt"], images)
    meta, forward = onnx_forward(exported["onnx"], "cpu")
    scripted = torch.jit.load(str(exported["torchscript"]))
    mean, std = MEAN.reshape(1, 3, 1, 1), STD.reshape(1, 3, 1, 1)
    for rgb, want in zip(images, reference):
        h, w = rgb.shape[-2:]
        b = collate_eval([{"image": normalise(rgb), "label": torch.zeros(1), "index": 0}])
        got = forward(b["image"])[0, :, :h, :w]  # what predict runs: the padded, normalised batch
        assert got.shape == want.shape and (got - want).abs().max() < TOLERANCE
        scores, labels = scripted(rgb[None].float())  # a plain RGB image of any size, uint8 values as float
        assert scores.shape == (1, len(meta["classes"]), h, w) and (scores[0] - want).abs().max() < TOLERANCE
        assert torch.equal(labels[0], scores[0].argmax(0))
        unpadded = forward((rgb[None].float() - mean) / std)[0]  # padding inside the ONNX model too
        assert (unpadded - want).abs().max() < TOLERANCE
    ckpt = load_checkpoint(exported["pt"])
    assert meta["classes"] == ckpt["classes"] and meta["novel"] == ckpt["novel"]
    assert exported_meta(exported["torchscript"])["classes"] == ckpt["classes"]


def test_predict_on_the_onnx_file_writes_what_the_checkpoint_writes(exported, synth, tmp_path):
    source = load_manifest(synth).splits["val"][0].image
    for name, model in (("pt", exported["pt"]), ("onnx", exported["onnx"])):
        r = run_cli("predict", model, source, *FAST, "--json", "--palette", "--project", tmp_path, "--name", name)
        assert r.returncode == 0, r.stderr
    labels = [np.asarray(Image.open(next((tmp_path / "predict" / n / "labels").glob("*.png")))) for n in ("pt", "onnx")]
    assert (labels[0] == labels[1]).mean() > 0.999
    pt, ox = (json.loads((tmp_path / "predict" / n / "predictions.json").read_text()) for n in ("pt", "onnx"))
    assert [r["category_name"] for r in pt] == [r["category_name"] for r in ox]


def test_foreign_tampered_and_missing_runtime_are_one_line_errors(exported, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(exported["onnx"].read_bytes()[:100000])
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Identity", ["images"], ["scores"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("images", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                                   [value("scores", onnx.TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(onnx.helper.make_model(graph), foreign)
    before = snapshot(tmp_path)
    for model, says in ((cut, "not a usable ONNX model"), (foreign, "not a segmenter weakshot exported")):
        assert_user_error(run_cli("predict", model, image, "--project", tmp_path / "runs"), str(model), says)
    assert_user_error(run_cli("export", exported["pt"], "-o", foreign, "--exist-ok"), str(foreign),
                      "not a model weakshot exported")
    assert_user_error(run_cli("export", exported["pt"], "--format", "tflite"), "--format must be one of")
    code = "import sys; sys.modules['onnxruntime'] = None; from weakshot_cli.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "predict", exported["onnx"], image], capture_output=True,
                       text=True, cwd=ROOT)
    assert_user_error(r, "running an ONNX model needs the onnx extra (pip install 'weakshot[onnx]')")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_the_mobile_preset_exports(synth, tmp_path):
    """mobile (MobileNetV2, attention on res5) from scratch weights, one iteration: the export matches it too."""
    r = run_cli("train", synth, "--preset", "mobile", *TINY[2:], "--backbone-weights", "none", "--iters", "1",
                "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    pt = tmp_path / "runs" / "train" / "train" / "weights" / "last.pt"
    assert run_cli("export", pt).returncode == 0
    images = _images(synth)
    _, forward = onnx_forward(pt.with_suffix(".onnx"), "cpu")
    for rgb, want in zip(images, _reference(pt, images)):
        b = collate_eval([{"image": normalise(rgb), "label": torch.zeros(1), "index": 0}])
        assert (forward(b["image"])[0, :, :rgb.shape[1], :rgb.shape[2]] - want).abs().max() < TOLERANCE
