"""`weakshot train` end to end on tiny synthetic data: run folder, resume, weights, honesty, backbones."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import ROOT, TINY, assert_user_error, model_state, run_cli, snapshot
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.loop import best_score, improves, log_interval, val_interval
from weakshot_cli.engine.runs import read_metrics
from weakshot_cli.engine.weights import imagenet_file, init_backbone
from weakshot_cli.errors import UserError
from models import build_backbone

torch.set_num_threads(2)

def records(run: Path, kind: str = "train") -> list[dict]:
    return read_metrics(run, kind)


def strict_json(path: Path) -> dict:
    """Parse as strict JSON readers (jq, JavaScript) do: NaN and Infinity are errors."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_run_folder_and_checkpoints(synth, tiny_run, tmp_path):
    run = tiny_run  # the session's 2-iteration run
    for f in ("config.json", "log.txt", "metrics.jsonl", "results.json", "weights/last.pt", "weights/best.pt",
              "plots/losses.png"):
        assert (run / f).exists(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["hidden_dim"] == 32 and cfg["dataset"] == str(synth.resolve()) and cfg["comp_weight"] == 0.2
    assert [r["iter"] for r in records(run)] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records(run)) and records(run, "val")
    # val_every 0 validates a 2-iteration run once, at the end; best.pt is chosen by the mean of base and novel mIoU
    val = records(run, "val")
    results = strict_json(run / "results.json")
    assert [v["iter"] for v in val] == [2] and cfg["best_metric"] == results["best_metric"] == "mean_base_novel"
    assert results["best"] == pytest.approx((val[0]["base_mIoU"] + val[0]["novel_mIoU"]) / 2)
    assert results["best_iter"] == load_checkpoint(run / "weights" / "best.pt")["iter"] == 2
    assert (run.parents[1] / "stdout.txt").read_text().count(f"Run folder: {run}") == 1
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["iter"] == 2 and ckpt["classes"] == load_manifest(synth).classes and ckpt["novel"] == [2, 7, 8]
    last_line = [x for x in (run / "log.txt").read_text().splitlines() if x.startswith("iter 2/2")][0]
    for term in ("it/s", "eta", "loss", "ce", "mask", "dice", "comp", "sim", "dist", "lr", "mem"):
        assert f" {term} " in f" {last_line} ", (term, last_line)
    # a second run auto-increments its folder
    shutil.copytree(run, tmp_path / "runs" / "train" / "train")
    assert run_cli("train", synth, *TINY, "--iters", "1", "--project", tmp_path / "runs").returncode == 0
    assert (tmp_path / "runs" / "train" / "train2" / "weights" / "last.pt").exists()


def _args(synth: Path, tmp_path: Path) -> list:
    """A checkpoint every iteration, so that a SIGKILL always leaves one to resume from."""
    return ["train", synth, *TINY, "--iters", "8", "--set", "save_every=1", "--project", tmp_path / "runs"]


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    """An uninterrupted 8-iteration run: what an interrupted and resumed run must end equal to."""
    tmp = tmp_path_factory.mktemp("straight")
    assert run_cli(*_args(synth, tmp), "--name", "straight").returncode == 0
    return tmp / "runs" / "train" / "straight"


def _start_and_interrupt(args: list, run: Path, sig: signal.Signals, after: int) -> subprocess.CompletedProcess:
    """Start a run and send ``sig`` once ``after`` training records are logged."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "weakshot_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and len(records(run)) < after and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_same_run(a: Path, b: Path) -> None:
    assert [x["iter"] for x in records(b)] == list(range(1, 9))
    assert [x["loss"] for x in records(b)] == pytest.approx([x["loss"] for x in records(a)], rel=1e-5)
    wa, wb = model_state(a), model_state(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(synth, straight, tmp_path):
    cut = tmp_path / "runs" / "train" / "cut"
    r = _start_and_interrupt([*_args(synth, tmp_path), "--name", "cut"], cut, signal.SIGTERM, after=1)
    stopped_at = load_checkpoint(cut / "weights" / "last.pt")["iter"]
    assert stopped_at < 8
    assert r.returncode == 130 and "Done" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip() == f"interrupted at iteration {stopped_at}; resume with weakshot train --resume {cut}"
    results = strict_json(cut / "results.json")
    assert results["interrupted"] is True and results["iter"] == stopped_at
    r = run_cli("train", "--resume", cut)
    assert r.returncode == 0, r.stderr
    _assert_same_run(straight, cut)


@pytest.mark.slow  # the default suite resumes after SIGTERM (test above)
def test_sigkill_then_resume_matches_an_uninterrupted_run(synth, straight, tmp_path):
    """SIGKILL gives no chance to save: resume starts from the last checkpoint written (save_every=1 writes one
    every iteration here), drops the log records after it and any torn last line, and still ends equal."""
    killed = tmp_path / "runs" / "train" / "killed"
    r = _start_and_interrupt([*_args(synth, tmp_path), "--name", "killed"], killed, signal.SIGKILL, after=3)
    assert r.returncode == -signal.SIGKILL
    assert load_checkpoint(killed / "weights" / "last.pt")["iter"] < 8
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"type": "train", "iter": 5, "lo')  # a write torn by the kill
    (killed / "weights" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    r = run_cli("train", "--resume", killed)
    assert r.returncode == 0, r.stderr
    _assert_same_run(straight, killed)
    assert not list((killed / "weights").glob(".*.tmp"))


def test_same_seed_same_losses_and_predictions(synth, straight, tmp_path):
    """Determinism on CPU: a second run with the same seed logs the same losses and predicts the same labels."""
    assert run_cli(*_args(synth, tmp_path), "--name", "again").returncode == 0
    again = tmp_path / "runs" / "train" / "again"
    assert [x["loss"] for x in records(again)] == [x["loss"] for x in records(straight)]
    labels = []
    for run in (straight, again):
        out = tmp_path / "pred" / run.name
        r = run_cli("predict", run / "weights" / "last.pt", synth.parent / "src" / "images" / "val", "--device",
                    "cpu", "--project", out)
        assert r.returncode == 0, r.stderr
        labels.append({p.name: np.asarray(Image.open(p)) for p in sorted(out.rglob("labels/*.png"))})
    assert labels[0].keys() == labels[1].keys() and len(labels[0]) == 4
    for name in labels[0]:
        np.testing.assert_array_equal(labels[0][name], labels[1][name])


def test_weights_starts_a_new_run_and_resume_or_weights_not_both(synth, tiny_run, tmp_path):
    last = tiny_run / "weights" / "last.pt"  # a finished 2-iteration run
    before = snapshot(tiny_run)
    r = run_cli("train", synth, *TINY, "--iters", "1", "--weights", last, "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(tmp_path / "runs" / "train" / "train" / "weights" / "last.pt")["iter"] == 1
    assert_user_error(run_cli("train", synth, "--resume", last, "--weights", last), "use one")
    assert_user_error(run_cli("train", "--resume", last), "run already finished")
    assert snapshot(tiny_run) == before


def test_oracle_needs_full_masks(synth, tmp_path):
    real = tmp_path / "real"
    shutil.copytree(synth, real)
    manifest = json.loads((real / "weakshot.json").read_text())
    for item in manifest["splits"]["train"]:
        item.pop("full")
    (real / "weakshot.json").write_text(json.dumps(manifest))
    assert_user_error(run_cli("train", real, *TINY, "--iters", "1", "--oracle", "--project", tmp_path / "runs"),
                      "--oracle needs a benchmark-mode dataset")
    assert not (tmp_path / "runs").exists()


def test_retrain_refuses_a_weak_shot_dataset(synth, tmp_path):
    assert_user_error(run_cli("retrain", synth, *TINY, "--iters", "1", "--project", tmp_path / "runs"),
                      "retrain needs a pseudo-labelled dataset")
    assert not (tmp_path / "runs").exists()


def test_methods_set_the_losses_and_paper_is_the_published_simformer(synth, tmp_path):
    from dataclasses import replace

    from weakshot_cli.engine.build import build_criterion
    from weakshot_cli.engine.config import METHODS, TrainConfig, build_config

    m = load_manifest(synth)
    paper, default = build_config("small", {}, [], "paper"), build_config("small", {}, [])
    assert default.method == "dense" and paper.method == "paper"
    for cfg in (paper, default):  # weak-shot training: the paper's losses in both
        c = build_criterion(cfg, m)
        assert (c.semantic_weight, c.tag_weight, c.dist_ramp(), cfg.tag_keep, cfg.pairing) == (0, 0, 1.0, 0.5, "paper")
    settings = lambda c: {k: v if not hasattr(v, "__dict__") else vars(v)  # noqa: E731
                          for k, v in vars(c).items() if not isinstance(v, torch.nn.Module) and not k.startswith("_")}
    assert settings(build_criterion(paper, m)) == settings(build_criterion(default, m))  # "dense" is "paper" there
    assert build_config("small", {}, [], "weakshot").method == "dense"  # the former name still works
    assert all(getattr(TrainConfig(), k) == v for k, v in METHODS["paper"].items())  # the defaults are "paper"
    # dense cross-entropy where every pixel is labelled (oracle, retraining) under dense only, in weak-shot
    # training only when asked; tag terms never without weak labels
    assert build_criterion(replace(default, oracle=True), m).semantic_weight == 1
    assert build_criterion(replace(paper, oracle=True), m).semantic_weight == 0
    assert build_criterion(replace(default, semantic_weak=True), m).semantic_weight == 1
    assert build_criterion(replace(default, oracle=True, tag_weight=1.0), m).tag_weight == 0
    assert build_criterion(replace(default, tag_weight=1.0), m).tag_weight == 1
    tags = build_config("small", {}, [], "tags")  # the weak-shot stage's switches too, as the benchmark's "tags" run
    c = build_criterion(tags, m)
    assert (c.semantic_weight, c.tag_weight, c.dist_start, tags.tag_keep, tags.pairing) == (1, 1, 0.25, 0, "tags")
    r = run_cli("train", synth, *TINY, "--method", "best", "--project", tmp_path / "runs")
    assert_user_error(r, "--method must be one of paper, dense, tags, got 'best'")
    assert not (tmp_path / "runs").exists()


def test_the_default_method_follows_the_backbone_a_user_trains():
    """Tags on a pretrained backbone (best measured with ImageNet weights), weakshot from scratch (where the tag
    profile's loss on base pixels cost the base classes); an explicit --method always wins."""
    from weakshot_cli.engine.config import build_config

    assert build_config("mobile", {}, []).method == "tags" and build_config("r50", {}, []).method == "tags"
    assert build_config("small", {}, []).method == "dense"
    assert build_config("mobile", {"backbone_weights": "none"}, []).method == "dense"
    assert build_config("r50", {}, ["backbone_weights=none"]).method == "dense"
    assert build_config("small", {"backbone_weights": "imagenet"}, []).method == "tags"
    explicit = build_config("mobile", {}, [], "paper")
    assert explicit.method == "paper" and explicit.tag_weight == 0 and not explicit.calibrate


# Options beyond the paper's that read labels or tags: the poisoning test trains with all of them on.
HONESTY_SWITCHES = ("--set", "semantic_weight=1", "--set", "semantic_weak=true", "--set", "tag_weight=1",
                    "--set", "tag_keep=0", "--set", "pairing=tags", "--set", "dist_warmup=0.5",
                    "--set", "tag_per_pixel=true", "--set", "calibrate=true")


def test_novel_pixels_never_reach_training(synth, tmp_path):
    """Poison every copy of the hidden novel pixels (the full masks kept for the oracle): the weak-shot
    run must be bit-identical, because nothing in weak-shot training reads them."""
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    shutil.copytree(synth, clean)
    shutil.copytree(synth, poisoned)
    m = load_manifest(poisoned)
    rng = np.random.default_rng(0)
    for it in m.splits["train"]:
        full = np.asarray(Image.open(m.resolve(it.full)))
        noisy = np.where(np.isin(full, m.novel), rng.integers(0, 10, full.shape), full).astype(np.uint8)
        Image.fromarray(noisy).save(m.resolve(it.full))
    calibration = {}
    for name, ds in (("clean", clean), ("poisoned", poisoned)):  # every switch that reads labels is on
        r = run_cli("train", ds, *TINY, "--iters", "2", "--name", name, "--project", tmp_path / "runs",
                    *HONESTY_SWITCHES)
        assert r.returncode == 0, r.stderr
        calibration[name] = [line for line in r.stdout.splitlines() if "novel scores x" in line]
    a = model_state(tmp_path / "runs" / "train" / "clean")
    b = model_state(tmp_path / "runs" / "train" / "poisoned")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert calibration["clean"] and calibration["clean"] == calibration["poisoned"]  # its criterion to the digit
    # ... whereas the oracle, which does read them, notices
    for name, ds in (("oclean", clean), ("opoisoned", poisoned)):
        assert run_cli("train", ds, *TINY, "--iters", "2", "--oracle", "--name", name,
                       "--project", tmp_path / "runs").returncode == 0
    a = model_state(tmp_path / "runs" / "train" / "oclean")
    b = model_state(tmp_path / "runs" / "train" / "opoisoned")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_weights_imagenet_none_and_path_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = torchvision.models.resnet18(weights=None).state_dict()
    target = imagenet_file("resnet18")
    assert target == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(reference, target)
    key = "layer1.0.conv1.weight"

    def loaded(weights: str) -> torch.Tensor:
        bb = build_backbone("resnet18", "frozen_bn")
        init_backbone(bb, "resnet18", weights)
        return dict(bb.named_parameters(), **dict(bb.named_buffers()))[key]

    assert torch.equal(loaded("imagenet"), reference[key])  # found in torchvision's cache: no download
    assert not torch.equal(loaded("none"), reference[key])
    local = tmp_path / "mine.pth"
    torch.save(reference, local)
    assert torch.equal(loaded(str(local)), reference[key])
    target.unlink()

    def offline(*args, **kwargs):  # the network boundary: no internet here
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="place resnet18-f37072fd.pth from https://") as e:
        loaded("imagenet")
    assert str(target) in str(e.value)
    torch.save({"fc.weight": torch.zeros(3)}, local)
    with pytest.raises(UserError, match="do not fit resnet18"):
        loaded(str(local))


SHARED_MOBILENET = ROOT.parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.mark.skipif(not SHARED_MOBILENET.exists(), reason=f"{SHARED_MOBILENET} is absent (no shared weights here)")
def test_shared_mobilenet_v2_checkpoint_loads_through_the_weights_api_offline(tmp_path, monkeypatch):
    """torchvision's own ImageNet file, placed where its weights API looks: loaded without a download, and the
    trunk gives exactly torchvision's ImageNet MobileNetV2 features."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    target = imagenet_file("mobilenet_v2")
    assert target == tmp_path / "torch" / "hub" / "checkpoints" / SHARED_MOBILENET.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(SHARED_MOBILENET, target)
    backbone = build_backbone("mobilenet_v2", "frozen_bn")
    init_backbone(backbone, "mobilenet_v2", "imagenet")
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(SHARED_MOBILENET, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x)["res5"], reference.eval().features(x), rtol=1e-4, atol=1e-4)
    target.unlink()

    def offline(*args, **kwargs):  # the network boundary: no internet here
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=f"place {SHARED_MOBILENET.name} from https://") as e:
        init_backbone(backbone, "mobilenet_v2", "imagenet")
    assert str(target) in str(e.value)


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume", "weights"])
def test_a_checkpoint_crafted_to_run_code_is_refused_unopened(synth, tmp_path, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "last.pt"
    torch.save({"model": {}, "config": {}, "classes": [], "payload": _RunsCode(marker)}, evil)
    args = {"evaluate": ["evaluate", evil, synth], "predict": ["predict", evil, synth.parent / "src" / "images"],
            "resume": ["train", "--resume", evil], "weights": ["train", synth, "--weights", evil, *TINY]}[command]
    assert_user_error(run_cli(*args, "--project", tmp_path / "runs") if command != "resume" else run_cli(*args),
                      str(evil), "refused as unsafe")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_a_non_finite_loss_stops_naming_iteration_and_term_and_keeps_the_last_good_checkpoint(synth, tmp_path):
    """lr 1e12 blows the weights up after the first step; the loss turns non-finite a step or two later."""
    r = run_cli("train", synth, *TINY, "--iters", "8", "--lr", "1e12", "--set", "save_every=1",
                "--project", tmp_path / "runs")
    line = assert_user_error(r, "non-finite loss at iteration", "last good checkpoint is kept")
    bad_iter = int(line.split("non-finite loss at iteration ")[1].split(":")[0])
    assert 2 <= bad_iter <= 8 and any(f"loss_{t}" in line for t in ("ce", "mask", "dice", "comp", "sim", "dist"))
    ckpt = load_checkpoint(tmp_path / "runs" / "train" / "train" / "weights" / "last.pt")
    assert ckpt["iter"] == bad_iter - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [x["iter"] for x in records(tmp_path / "runs" / "train" / "train")] == list(range(1, bad_iter))


@pytest.mark.slow
def test_best_pt_holds_the_latest_of_equal_best_scores(synth, tmp_path):
    """A barely trained model scores novel mIoU 0 at every validation: best.pt must then be the last of them (the
    most trained weights), not the first, and results.json must say which."""
    r = run_cli("train", synth, *TINY, "--iters", "4", "--set", "val_every=1", "--best-metric", "novel_mIoU",
                "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "train" / "train"
    scores = [(v["novel_mIoU"], v["iter"]) for v in records(run, "val")]
    best, best_iter = max(scores)  # the highest score, the latest iteration among equals
    assert [s for s, _ in scores].count(best) > 1, scores  # the tie this test is about
    results = strict_json(run / "results.json")
    assert (results["best_metric"], results["best"], results["best_iter"]) == ("novel_mIoU", best, best_iter)
    assert load_checkpoint(run / "weights" / "best.pt")["iter"] == best_iter


def test_the_best_rule():
    assert improves(0.0, 0.0) and improves(2.2, 0.1) and improves(0.0, None)
    assert not improves(0.1, 2.2) and not improves(None, 0.0) and not improves(None, None)
    metrics = {"mIoU": 30.0, "base_mIoU": 40.0, "novel_mIoU": 10.0, "hIoU": 16.0, "pAcc": 80.0, "mAcc": 35.0}
    assert best_score(metrics, "mean_base_novel") == 25.0 and best_score(metrics, "hIoU") == 16.0
    assert best_score({**metrics, "novel_mIoU": math.nan}, "mean_base_novel") == 40.0  # no novel class to score
    assert best_score({**metrics, "novel_mIoU": math.nan}, "novel_mIoU") is None


def test_without_validation_results_json_is_strict_and_best_pt_the_final_weights(synth, tmp_path):
    ds = tmp_path / "noval"
    shutil.copytree(synth, ds)
    manifest = json.loads((ds / "weakshot.json").read_text())
    manifest["splits"].pop("val")
    (ds / "weakshot.json").write_text(json.dumps(manifest))
    r = run_cli("train", ds, *TINY, "--iters", "2", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "train" / "train"
    assert strict_json(run / "results.json") == {"iter": 2, "iters": 2, "best_metric": "mean_base_novel",
                                                 "best": None, "best_iter": 2, "interrupted": False,
                                                 "novel_scale": 1.0}
    assert load_checkpoint(run / "weights" / "best.pt")["iter"] == 2


@pytest.mark.slow
def test_resume_with_iters_extends_a_finished_run_on_a_new_poly_schedule(straight, tmp_path):
    run = Path(shutil.copytree(straight, tmp_path / "extended"))
    r = run_cli("train", "--resume", run, "--iters", "11", "--device", "cpu", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert f"Resuming {run} from iteration 8 (of 11 iterations)" in r.stdout and "Done: 11/11" in r.stdout
    assert [x["iter"] for x in records(run)] == list(range(1, 12))
    assert json.loads((run / "config.json").read_text())["iters"] == 11  # a later --resume knows the new length
    assert load_checkpoint(run / "weights" / "last.pt")["iter"] == 11
    lr = json.loads((run / "config.json").read_text())["lr"]
    assert [x["lr"] for x in records(run)[8:]] == pytest.approx([lr * (1 - it / 11) ** 0.9 for it in (9, 10, 11)])


def test_short_runs_log_every_iteration_and_validate_twice(synth, tmp_path):
    """log_every 20 (the default) would leave a 12-iteration run one point to plot, and val_every 0 used to
    validate it 12 times."""
    i = TINY.index("log_every=1")
    default_logging = TINY[:i - 1] + TINY[i + 1:]  # without "--set log_every=1"
    r = run_cli("train", synth, *default_logging, "--iters", "12", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "train" / "train"
    assert [x["iter"] for x in records(run)] == list(range(1, 13))
    assert [x["iter"] for x in records(run, "val")] == [10, 12]
    assert [log_interval(20, n) for n in (12, 20, 100, 300, 60000)] == [1, 1, 5, 15, 20]
    assert [val_interval(0, n) for n in (12, 20, 300, 60000)] == [10, 10, 30, 6000] and val_interval(7, 20) == 7


def test_a_run_that_fails_before_its_first_checkpoint_names_no_run_folder(synth, tmp_path):
    r = run_cli("train", synth, *TINY, "--iters", "8", "--lr", "1e12", "--project", tmp_path / "runs")
    assert_user_error(r, "non-finite loss at iteration", "before the first checkpoint, so nothing is kept")
    assert "Run folder" not in r.stdout and not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the r50 preset is refused on CPU-only machines only")
def test_r50_on_a_cpu_only_machine_runs_when_asked_for_with_device_cpu(synth, tmp_path):
    r50 = ["--preset", "r50", *TINY[2:], "--backbone", "resnet18", "--backbone-weights", "none"]
    assert TINY[:2] == ["--preset", "small"] and "--device" in r50
    r = run_cli("train", synth, *r50, "--iters", "1", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    config = load_checkpoint(tmp_path / "runs" / "train" / "train" / "weights" / "last.pt")["config"]
    assert (config["lr"], config["backbone_lr_mult"]) == (1e-4, 0.1)  # r50's, not small's (5e-4, 1.0)


def test_bf16_on_the_cpu_trains_and_fp16_is_refused(synth, tmp_path):
    r = run_cli("train", synth, *TINY, "--amp", "bf16", "--iters", "2", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    losses = [rec["loss"] for rec in records(tmp_path / "runs" / "train" / "train")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert load_checkpoint(tmp_path / "runs" / "train" / "train" / "weights" / "last.pt")["config"]["amp"] == "bf16"
    r = run_cli("train", synth, *TINY, "--amp", "fp16", "--iters", "1", "--project", tmp_path / "runs2")
    assert_user_error(r, "--amp fp16 needs CUDA")
    assert not (tmp_path / "runs2").exists()
