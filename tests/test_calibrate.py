"""Novel-score calibration: the factor chosen from base masks, recorded by training, applied by evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli, write_dataset
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.build import build_model
from weakshot_cli.engine.calibrate import FACTORS, choose_class_scales, choose_novel_scale
from weakshot_cli.engine.checkpoint import load_checkpoint, save_checkpoint, weights_state
from weakshot_cli.engine.config import build_config
from weakshot_cli.engine.inference import novel_scales


@pytest.fixture
def base_only(tmp_path: Path) -> Path:
    """Classes a, b, c (base) and d (novel): every training pixel is base class a; val is half a, half d."""
    train = {f"t{i}": np.zeros((32, 32), np.uint8) for i in range(3)}
    val = {"v0": np.repeat(np.array([[0] * 16 + [3] * 16], np.uint8), 32, 0)}
    images, masks, classes = write_dataset(tmp_path / "src", {"train": train, "val": val}, ["a", "b", "c", "d"])
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "d",
                "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    return tmp_path / "ws"


def biased_model(probs: list[float]):
    """A real tiny network whose every query gives class probabilities ``probs`` (K + 1, no-object last), so
    every pixel's scores S_c are proportional to them."""
    cfg = build_config("small", {}, [a for a in TINY if a != "--set" and "=" in a])
    model = build_model(cfg, len(probs) - 1)
    with torch.no_grad():
        model.class_embed.weight.zero_()
        model.class_embed.bias.copy_(torch.tensor([math.log(p) for p in probs]))
    return cfg, model.eval()


def test_the_factor_gives_base_pixels_back_to_a_base_class(base_only):
    # novel d wins every pixel at x1 (0.5 against a's 0.2), and keeps it down to x0.5; from x0.3 a wins
    _, model = biased_model([0.2, 0.05, 0.05, 0.5, 0.2])
    m = load_manifest(base_only)
    factor, miou = choose_novel_scale(model, m, 32, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert factor == 0.3  # the largest factor that frees every base pixel
    assert miou[1.0] == 0 and miou[0.5] == 0 and miou[0.3] == 100 and set(miou) == set(FACTORS)


def test_training_records_the_factor_and_evaluate_applies_it(base_only, synth, tmp_path):
    r = run_cli("train", synth, *TINY, "--iters", "2", "--method", "tags", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "train" / "train"
    factor = json.loads((run / "results.json").read_text())["novel_scale"]
    assert factor in FACTORS and f"novel scores x{factor:g}" in r.stdout
    assert load_checkpoint(run / "weights" / "last.pt")["novel_scale"] == factor
    assert "novel_scale" in load_checkpoint(run / "weights" / "best.pt")
    # the run's validation figures are what evaluate gives the same weights: calibration included
    last_val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert last_val["novel_scale"] == factor
    r = run_cli("evaluate", run / "weights" / "last.pt", synth, "--device", "cpu", "--amp", "off", "--samples", "0",
                "--batch", "2", "--project", tmp_path / "runs", "--name", "last")
    assert r.returncode == 0, r.stderr
    scored = json.loads((tmp_path / "runs" / "evaluate" / "last" / "metrics.json").read_text())
    for key in ("mIoU", "base_mIoU", "novel_mIoU"):
        assert scored[key] == pytest.approx(last_val[key], abs=0.05), key
    r = run_cli("train", synth, *TINY, "--iters", "2", "--method", "paper", "--project", tmp_path / "runs")
    assert json.loads((tmp_path / "runs" / "train" / "train2" / "results.json").read_text())["novel_scale"] == 1.0

    # the biased network calls every val pixel d; scaled by 0.3 it calls them a: the left half right either way
    cfg, model = biased_model([0.2, 0.05, 0.05, 0.5, 0.2])
    m = load_manifest(base_only)
    predicted = {}
    for scale in (1.0, 0.3):
        ckpt = tmp_path / f"x{scale}.pt"
        state = weights_state(model, cfg, m.classes, m.base, m.novel, iteration=0, best=None, best_iter=None,
                              stage="train")
        save_checkpoint(ckpt, state | {"novel_scale": scale})
        r = run_cli("evaluate", ckpt, base_only, "--device", "cpu", "--amp", "off", "--samples", "0",
                    "--project", tmp_path / "runs", "--name", f"x{scale}")
        assert r.returncode == 0, r.stderr
        metrics = json.loads((tmp_path / "runs" / "evaluate" / f"x{scale}" / "metrics.json").read_text())
        assert metrics["novel_scale"] == scale
        predicted[scale] = np.array(metrics["confusion"]).sum(0)  # pixels predicted per class
    assert predicted[1.0][3] == 32 * 32 and predicted[0.3][0] == 32 * 32


def test_example_masks_lower_the_novel_class_the_model_over_calls(tmp_path):
    """Novel d and e, one example mask each (benchmark mode, --examples 1): a network that calls every pixel d
    (0.5 against a's 0.3) gets d's scores halved, the largest factor at which the examples' a pixels are a; e
    keeps 1. A checkpoint carrying that factor is evaluated with it: every val pixel a."""
    half = lambda c: np.repeat(np.array([[c] * 16 + [0] * 16], np.uint8), 32, 0)  # noqa: E731
    train = {"t0": half(2), "t1": half(3), "t2": np.zeros((32, 32), np.uint8), "t3": np.zeros((32, 32), np.uint8)}
    images, masks, classes = write_dataset(tmp_path / "src", {"train": train, "val": {"v0": half(2)}},
                                           ["a", "b", "d", "e"])
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "d,e",
                "--examples", "1", "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    m = load_manifest(tmp_path / "ws")
    assert sorted(Path(it.image).stem for it in m.splits["train"] if it.example) == ["t0", "t1"]
    cfg, model = biased_model([0.3, 0.1, 0.5, 0.05, 0.05])
    off = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    assert choose_class_scales(model, m, 32, torch.device("cpu"), off, 1.0) == {"d": 0.5}
    assert novel_scales(m.classes, m.novel, 0.7, {"d": 0.5}).tolist() == pytest.approx([1, 1, 0.35, 0.7])
    ckpt = tmp_path / "named.pt"
    state = weights_state(model, cfg, m.classes, m.base, m.novel, iteration=0, best=None, best_iter=None,
                          stage="train")
    save_checkpoint(ckpt, state | {"novel_scale": 1.0, "novel_class_scale": {"d": 0.5}})
    r = run_cli("evaluate", ckpt, tmp_path / "ws", "--device", "cpu", "--amp", "off", "--samples", "0",
                "--project", tmp_path / "runs", "--name", "named")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "runs" / "evaluate" / "named" / "metrics.json").read_text())
    assert metrics["novel_class_scale"] == {"d": 0.5}
    assert np.array(metrics["confusion"]).sum(0)[0] == 32 * 32  # every pixel predicted a
