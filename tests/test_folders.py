"""Never your files: each command writes only into a folder it made (folders.py), and the inputs that used to get
through (a user's folder taken for a pseudo-labelled dataset, a run resumed by the wrong command, datasets without
a mask, tags that are empty, a link loop, labels without novel pixels, a changed option on resume, names in another
Unicode normalisation, a huge image, an empty --scales) behave. Each case compares the folders before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, assert_user_error, blocks, run_cli, snapshot, write_dataset
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.engine.inference import ScoreMap
from weakshot_cli.engine.pseudolabel import image_stats, label_image, pseudo_label
from weakshot_cli.folders import MARKER, owner

FAST = ["--device", "cpu", "--imgsz", "64", "--amp", "off"]


def test_pseudolabel_exist_ok_never_touches_a_users_dataset(tiny_ckpt, synth, tmp_path):
    """Case 1: --exist-ok into the user's own dataset folder (their labels/train/*.png) used to delete and overwrite
    their masks; into a dataset split made, or a run folder, it is refused too."""
    mine = tmp_path / "my-data"
    write_dataset(mine, {"train": {"a": blocks(8, 8, [0, 1])}}, ["x", "y"])
    split_made = tmp_path / "ws"
    shutil.copytree(synth, split_made)
    for out, says in ((mine, "was not made by weakshot pseudolabel"),
                      (split_made, "holds the output of weakshot split")):
        before = snapshot(tmp_path)
        assert_user_error(run_cli("pseudolabel", tiny_ckpt, synth, "-o", out, "--exist-ok", *FAST), str(out), says)
        assert snapshot(tmp_path) == before


def test_pseudolabel_exist_ok_redoes_its_own_folder(tiny_ckpt, synth, tmp_path):
    out = tmp_path / "pl"
    assert run_cli("pseudolabel", tiny_ckpt, synth, "-o", out, *FAST).returncode == 0
    assert owner(out) == "pseudolabel" and json.loads((out / MARKER).read_text())["command"] == "pseudolabel"
    (out / "notes.txt").write_text("mine")  # a file the user put there stays
    r = run_cli("pseudolabel", tiny_ckpt, synth, "-o", out, "--exist-ok", *FAST)
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "weakshot.json").exists()


def test_retrain_refuses_to_resume_a_train_run(tiny_run, tmp_path):
    """Case 2: retrain --resume on a weak-shot train run used to continue it under retrain's losses."""
    before = snapshot(tiny_run)
    assert_user_error(run_cli("retrain", "--resume", tiny_run, "--iters", "3"),
                      "this is a 'weakshot train' run; continue it with weakshot train --resume")
    assert snapshot(tiny_run) == before


def test_a_run_folder_that_the_tool_did_not_make_is_refused(synth, tmp_path):
    """--name X --exist-ok reuses a run folder of the same stage, never a user's folder or another stage's."""
    mine = tmp_path / "runs" / "train" / "photos"
    mine.mkdir(parents=True)
    (mine / "holiday.jpg").write_bytes(b"not a run")
    before = snapshot(tmp_path)
    assert_user_error(run_cli("train", synth, "--preset", "small", "--iters", "1", "--device", "cpu", "--project",
                              tmp_path / "runs", "--name", "photos", "--exist-ok"),
                      str(mine), "was not made by weakshot train")
    assert snapshot(tmp_path) == before


def _real_mode_source(tmp: Path, masked_train: bool) -> tuple[list, Path]:
    """Two training images with tags (masked or not) and one masked val image, classes road, lamp, clock."""
    train = {"t0": blocks(8, 8, [0, 255]), "t1": blocks(8, 8, [0, 255])}
    images, masks, classes = write_dataset(tmp / "src", {"train": train, "val": {"v0": blocks(8, 8, [0, 1, 2])}},
                                           ["road", "lamp", "clock"])
    if not masked_train:
        shutil.rmtree(masks / "train")
    tags = tmp / "tags.json"
    tags.write_text(json.dumps({"t0": ["road", "lamp"], "t1": ["road", "clock"]}))
    return ["split", "--images", images, "--masks", masks, "--classes", classes, "--tags", tags], tags


def test_split_refuses_a_dataset_without_a_training_mask(tmp_path, toy):
    """Cases 3 and 4: masks only in val (real mode), or --tag-only-fraction taking every mask, used to give a
    dataset that trains with no base class."""
    args, _ = _real_mode_source(tmp_path / "real", masked_train=False)
    before = snapshot(tmp_path)
    assert_user_error(run_cli(*args, "-o", tmp_path / "ws"), "no training image has a mask",
                      "learns the base classes from training masks")
    assert snapshot(tmp_path) == before
    src = ["split", "--images", toy["images"], "--masks", toy["masks"], "--classes", toy["classes"], "--novel", "d"]
    assert_user_error(run_cli(*src, "--tag-only-fraction", "0.95", "-o", tmp_path / "ws"),
                      "--tag-only-fraction 0.95 takes the mask of every one of the 4 training images")
    assert snapshot(tmp_path) == before
    r = run_cli(*src, "--tag-only-fraction", "0.5", "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    assert sum(it.label is None for it in load_manifest(tmp_path / "ws").splits["train"]) == 2


def test_a_mask_less_image_with_an_empty_tag_list_is_skipped(tmp_path):
    """Case 5: it used to be kept as a tag-only image that 'contains no class'."""
    args, tags = _real_mode_source(tmp_path, masked_train=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "images" / "train" / "t2.png")
    tags.write_text(json.dumps({"t0": ["road", "lamp"], "t1": ["road", "clock"], "t2": []}))
    r = run_cli(*args, "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    assert "1 image(s) have no label PNG and are skipped without tags (or with an empty tag list)" in r.stderr
    assert [Path(it.image).stem for it in load_manifest(tmp_path / "ws").splits["train"]] == ["t0", "t1"]


def test_a_glob_through_a_link_loop_predicts_each_image_once(tiny_ckpt, tmp_path):
    """Case 6: '**' follows a link to a folder above it; one image used to be predicted 41 times."""
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(imgs / name)
    (imgs / "sub" / "loop").symlink_to(imgs)
    r = run_cli("predict", tiny_ckpt, f"{imgs}/**/*.png", "--recursive", *FAST, "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    labels = tmp_path / "runs" / "predict" / "predict" / "labels"
    assert sorted(p.relative_to(labels).as_posix() for p in labels.rglob("*.png")) == ["a.png", "sub/b.png"]


def test_labels_without_a_novel_pixel_warn_and_retrain_refuses_them(tiny_ckpt, synth, tmp_path):
    """Case 7: --min-score above every score used to label nothing, silently; retrain then trained without a
    novel class."""
    out = tmp_path / "pl"
    r = run_cli("pseudolabel", tiny_ckpt, synth, "-o", out, "--min-score", "5", *FAST)
    assert r.returncode == 0, r.stderr
    assert "warning: 3 of 3 novel classes got no pixel (brick, star, ring) at --min-score 5.0" in r.stderr
    assert load_manifest(out).source["novel_pixels"] == 0
    before = snapshot(tmp_path)
    assert_user_error(run_cli("retrain", out, "--preset", "small", "--iters", "1", "--device", "cpu",
                              "--project", tmp_path / "runs"), str(out), "hold no novel-class pixel")
    assert snapshot(tmp_path) == before


def test_names_in_another_unicode_normalisation_are_paired(tmp_path):
    """Case 9: café_1.jpg beside a café_1.png whose name is decomposed (as a macOS copy stores it)."""
    composed = unicodedata.normalize("NFC", "café_1")
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {composed: blocks(8, 8, [0, 1]),
                                                                        "b": blocks(8, 8, [0, 1])}}, ["x", "y"])
    (masks / "train" / f"{composed}.png").rename(masks / "train" / f"{unicodedata.normalize('NFD', composed)}.png")
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "y",
                "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    assert "no label" not in r.stderr and "no image" not in r.stderr
    assert len(load_manifest(tmp_path / "ws").splits["train"]) == 2


def test_an_empty_scales_list_is_an_error(tiny_ckpt, synth, tmp_path):
    """Case 11: --scales , used to mean scale 1."""
    assert_user_error(run_cli("evaluate", tiny_ckpt, synth, "--scales", ",", *FAST, "--project", tmp_path),
                      "--scales ,", "expected comma-separated numbers")
    assert not any(tmp_path.iterdir())


def test_scores_read_in_strips_equal_the_whole_resize():
    """ScoreMap gives what one bilinear resize of all classes gives, however many rows a strip holds."""
    low = torch.rand(5, 13, 17)
    whole = F.interpolate(low[None], size=(41, 30), mode="bilinear", align_corners=False)[0]
    for elements in (1, 5 * 30 * 7, 1 << 24):
        rows = torch.cat([strip for _, strip in ScoreMap(low, (41, 30)).strips(elements)], 1)
        torch.testing.assert_close(rows, whole, atol=1e-6, rtol=0)
    label, mean = ScoreMap(low, (41, 30)).argmax()
    assert torch.equal(label.long(), whole.argmax(0))
    best = whole.max(0).values
    for c in range(5):
        won = whole.argmax(0) == c
        assert (torch.isnan(mean[c]) and not won.any()) or mean[c] == pytest.approx(float(best[won].mean()))


def test_pseudo_labels_in_strips_equal_those_of_the_whole_image(synth, monkeypatch):
    """label_image (strip by strip) gives pseudo_label and image_stats of the whole image."""
    import weakshot_cli.engine.inference as inference

    m = load_manifest(synth)
    item = m.splits["train"][0]
    base = np.asarray(Image.open(m.resolve(item.label)))
    low = torch.rand(len(m.classes), 16, 16)
    whole = ScoreMap(low, base.shape).full()
    monkeypatch.setattr(inference, "STRIP_ELEMENTS", len(m.classes) * base.shape[1] * 5)  # 5 rows a strip
    pseudo, stats = label_image(ScoreMap(low, base.shape), base, item, m, 0.1, "keep")
    expected = pseudo_label(whole, base, [t for t in item.tags if t in m.novel], 0.1, "keep")
    np.testing.assert_array_equal(pseudo, expected)
    want = image_stats(whole, base, expected, m.classes, m.novel, 0.1)
    assert stats["unknown"] == want["unknown"] and stats["labelled"] == want["labelled"]
    assert stats["predicted"] == want["predicted"] and stats["pseudo"].keys() == want["pseudo"].keys()
    for name, got in stats["pseudo"].items():
        assert got["pixels"] == want["pseudo"][name]["pixels"]
        assert got["score_sum"] == pytest.approx(want["pseudo"][name]["score_sum"], rel=1e-5)


# The limit a 6000x6000 prediction of the 10-class tiny checkpoint runs under: the whole process, torch included,
# needs about 1.3 GiB for a small image and 1.7 GiB for this one; with the scores of every class resized at once it
# needed 3 GiB (it failed at 2.5).
BIG_IMAGE_LIMIT_GIB = 2.25


@pytest.mark.slow  # 19 s: the default suite stays under its 5 minutes on a fresh clone
def test_a_huge_image_is_predicted_in_bounded_memory(tiny_ckpt, tmp_path):
    """Case 10: a 9000x9000 PNG used to fail with 'can't allocate 3.56 GB' (full-size scores of every class)."""
    y, x = np.mgrid[0:6000, 0:6000]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(tmp_path / "big.png")
    limit = int(BIG_IMAGE_LIMIT_GIB * 2 ** 30)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_DATA, (%d, %d)); "
            "sys.argv = ['weakshot', *sys.argv[1:]]; from weakshot_cli.cli import main; main()") % (limit, limit)
    r = subprocess.run([sys.executable, "-c", code, "predict", tiny_ckpt, tmp_path / "big.png", *FAST,
                        "--project", tmp_path / "runs"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "runs" / "predict" / "predict" / "labels" / "big.png") as label:
        assert label.size == (6000, 6000)
