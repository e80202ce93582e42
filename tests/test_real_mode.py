"""Real-mode data as users bring it (issue 11): output folders that are not ours, tag-only images, masks that
call novel pixels background, unused classes, and tags that must never be lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import (ROOT, TINY, assert_user_error, blocks, coco_box, interruptible, model_state, run_cli, snapshot,
                      write_coco, write_dataset)
from weakshot_cli.data.manifest import load_manifest

CLASSES = ["road", "sky", "lamp", "clock"]


def _source(tmp: Path, tag_only: bool = True) -> tuple[list, Path]:
    """Masks hold road/sky and unknown (255) where lamps and clocks are; t3 is a photo with tags but no mask."""
    train = {"t0": blocks(16, 16, [0, 255]), "t1": blocks(16, 16, [1, 255]), "t2": blocks(16, 16, [0, 1]),
             "t3": blocks(16, 16, [0, 1])}
    val = {"v0": blocks(16, 16, [0, 1, 2, 3])}
    images, masks, classes = write_dataset(tmp / "src", {"train": train, "val": val}, CLASSES)
    if tag_only:
        (masks / "train" / "t3.png").unlink()
    tags = tmp / "tags.json"
    tags.write_text(json.dumps({"t0": ["lamp"], "t1": ["lamp", "clock"], "t3": ["road", "clock"]}))
    return ["split", "--images", images, "--masks", masks, "--classes", classes, "--tags", tags], tags


# ---- 1. never lose user data ----------------------------------------------------------------------------------

def test_split_refuses_a_non_empty_folder_that_is_not_a_dataset(tmp_path):
    args, _ = _source(tmp_path)
    out = tmp_path / "mine"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "notes.txt").write_text("my notes")
    (out / "full").mkdir()
    before = snapshot(tmp_path)
    assert_user_error(run_cli(*args, "-o", out), str(out), "not empty and was not made by weakshot split")
    assert snapshot(tmp_path) == before


def test_exist_ok_replaces_only_the_datasets_own_files(tmp_path):
    args, _ = _source(tmp_path, tag_only=False)
    out = tmp_path / "ws"
    benchmark = [a for a in args if a not in ("--tags",) and not str(a).endswith("tags.json")]
    assert run_cli(*benchmark, "--novel", "lamp", "-o", out).returncode == 0
    assert (out / "full" / "train" / "t0.png").exists()
    (out / "labels" / "notes.txt").write_text("mine")
    (out / "labels" / "train" / "extra.png").write_bytes(b"not the dataset's")
    (out / "README").write_text("mine too")
    r = run_cli(*args, "-o", out, "--exist-ok")  # redone in real mode
    assert r.returncode == 0, r.stderr
    assert (out / "labels" / "notes.txt").read_text() == "mine"
    assert (out / "labels" / "train" / "extra.png").read_bytes() == b"not the dataset's"
    assert (out / "README").read_text() == "mine too"
    assert not (out / "full").exists()  # the benchmark-mode masks were the old dataset's own: gone
    m = load_manifest(out)
    assert m.source["mode"] == "real" and all(m.resolve(it.label).exists() for it in m.splits["train"])


def test_exist_ok_refuses_to_overwrite_a_file_the_dataset_did_not_make(tmp_path):
    args, _ = _source(tmp_path)
    out = tmp_path / "ws"
    assert run_cli(*args, "-o", out).returncode == 0
    manifest = json.loads((out / "weakshot.json").read_text())
    manifest["splits"]["train"] = [it for it in manifest["splits"]["train"] if "t0" not in (it["label"] or "")]
    (out / "weakshot.json").write_text(json.dumps(manifest))  # t0's label is no longer the dataset's
    before = snapshot(tmp_path)
    assert_user_error(run_cli(*args, "-o", out, "--exist-ok"), str(out / "labels" / "train" / "t0.png"),
                      "would overwrite a file this dataset did not make")
    assert snapshot(tmp_path) == before


# ---- 2. tag-only images -----------------------------------------------------------------------------------------

def test_images_with_tags_and_no_mask_become_tag_only_items(tmp_path):
    args, _ = _source(tmp_path)
    out = tmp_path / "ws"
    r = run_cli(*args, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "no label PNG" not in r.stderr
    m = load_manifest(out)
    items = {Path(it.image).stem: it for it in m.splits["train"]}
    assert items["t3"].label is None and items["t3"].tags == [0, 3]  # base and novel tags both kept
    assert all(items[s].label is not None for s in ("t0", "t1", "t2"))
    assert m.source["counts"] == {"train": {"masked": 3, "tag_only": 1, "examples": 0},
                                  "val": {"masked": 1, "tag_only": 0, "examples": 0}}
    table = r.stdout[r.stdout.index("Weak-shot dataset"):]
    assert "masked images" in table and "tag-only images" in table
    assert "base tags" not in table


def test_images_without_mask_or_tags_are_still_skipped_with_a_warning(tmp_path):
    args, tags = _source(tmp_path)
    tags.write_text(json.dumps({"t0": ["lamp"], "t1": ["clock"]}))
    r = run_cli(*args, "-o", tmp_path / "ws")
    assert r.returncode == 0 and "1 image(s) have no label PNG and are skipped" in r.stderr
    assert len(load_manifest(tmp_path / "ws").splits["train"]) == 3


def test_tag_only_fraction_simulates_tag_only_images_in_benchmark_mode(toy):
    out = toy["tmp"] / "ws"
    args = ["split", "--images", toy["images"], "--masks", toy["masks"], "--classes", toy["classes"], "--novel", "c"]
    r = run_cli(*args, "-o", out, "--tag-only-fraction", "0.5", "--seed", "1")
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    tag_only = [it for it in m.splits["train"] if it.label is None]
    table = r.stdout[r.stdout.index("Weak-shot dataset"):]
    header, *rows = [line for line in table.splitlines() if "│" in line or "┃" in line]
    assert "tag-only" in header  # the table counts each class's tag-only training images
    for c, name in enumerate(m.classes):
        row = next(cells for line in rows if (cells := [x.strip() for x in line.split("│")])[2] == name)
        assert row[-2] == str(sum(c in it.tags for it in tag_only))
    assert len(tag_only) == 2 and all(it.full for it in tag_only)  # full kept for the oracle and scoring
    for it in tag_only:
        full = np.asarray(Image.open(m.resolve(it.full)))
        assert it.tags == sorted(set(np.unique(full).tolist()) - {255})
    assert not list((out / "labels" / "train").glob(f"{Path(tag_only[0].image).stem}.png"))
    assert all(it.label is not None for it in m.splits["val"])


# ---- 3. masks that mark novel pixels as a base class ------------------------------------------------------------

def _background_source(tmp: Path) -> list:
    """Annotators left lamps and clocks as background (0): no unknown pixel anywhere."""
    train = {f"t{i}": blocks(16, 16, [0, 1]) for i in range(4)}
    images, masks, classes = write_dataset(tmp / "src", {"train": train}, ["background", "sky", "lamp", "clock"])
    tags = tmp / "tags.json"
    tags.write_text(json.dumps({"t0": ["lamp"], "t1": ["clock"], "t2": ["lamp"]}))
    return ["split", "--images", images, "--masks", masks, "--classes", classes, "--tags", tags]


def test_novel_tags_without_unknown_pixels_are_named_and_strict_refuses(tmp_path):
    args = _background_source(tmp_path)
    r = run_cli(*args, "-o", tmp_path / "ws")
    assert r.returncode == 0
    assert "3 of 3 masked training images tagged with a novel class have no unknown" in r.stderr
    assert "--unknown-class" in r.stderr
    before = snapshot(tmp_path)
    assert_user_error(run_cli(*args, "-o", tmp_path / "ws2", "--strict"), "--unknown-class", "--strict")
    assert snapshot(tmp_path) == before


def test_unknown_class_turns_background_into_unknown(tmp_path):
    args = _background_source(tmp_path)
    out = tmp_path / "ws"
    r = run_cli(*args, "-o", out, "--unknown-class", "background")
    assert r.returncode == 0, r.stderr
    assert "no unknown" not in r.stderr
    m = load_manifest(out)
    label = np.asarray(Image.open(m.resolve(m.splits["train"][0].label)))
    np.testing.assert_array_equal(label, np.where(blocks(16, 16, [0, 1]) == 0, 255, 1))
    assert m.novel == [2, 3] and m.source["unused"] == [0]  # background: in no mask and no tag now
    assert m.source["label_convention"]["unknown_class"] == 0
    assert_user_error(run_cli(*args, "-o", tmp_path / "ws2", "--unknown-class", "floor"), "--unknown-class",
                      "'floor'")


# ---- 4. which classes are novel ---------------------------------------------------------------------------------

def test_classes_in_neither_masks_nor_tags_are_unused_not_novel(tmp_path):
    args, tags = _source(tmp_path)
    tags.write_text(json.dumps({"t0": ["lamp"], "t1": ["lamp"], "t3": ["road"]}))
    out = tmp_path / "ws"
    r = run_cli(*args, "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m.novel == [2] and 3 in m.base and m.source["unused"] == [3]
    assert "occur in no training mask and no tag" in r.stderr and "clock" in r.stderr
    assert "2 base + 1 novel classes (1 unused)" in r.stdout


# ---- 5. no tag lost ---------------------------------------------------------------------------------------------

def test_csv_names_in_extra_columns_and_keys_with_any_image_extension(tmp_path):
    args, tags = _source(tmp_path)
    csv = tmp_path / "tags.csv"
    csv.write_text("image,labels\nt0.WEBP,lamp\nt1.tif,lamp,clock\nt3.TIFF,road;clock\n")
    out = tmp_path / "ws"
    r = run_cli(*[csv if a == tags else a for a in args], "-o", out)
    assert r.returncode == 0, r.stderr
    assert "not in the dataset" not in r.stderr
    by = {Path(it.image).stem: it.tags for it in load_manifest(out).splits["train"]}
    assert by == {"t0": [0, 2], "t1": [1, 2, 3], "t2": [0, 1], "t3": [0, 3]}


def test_no_training_split_is_an_error_naming_the_likely_cause(tmp_path):
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"a": blocks(8, 8, [0, 1])},
                                                              "val": {"b": blocks(8, 8, [0, 1])}}, ["x", "y"])
    (masks / "train" / "a.png").rename(masks / "train" / "A.png")
    before = snapshot(tmp_path)
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "y",
                "-o", tmp_path / "ws")
    assert_user_error(r, str(tmp_path / "src" / "images"), "no training images", "case included")
    assert snapshot(tmp_path) == before


def test_coco_with_objects_only_warns_and_background_makes_a_class(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "segmentation": coco_box(2, 2, 6, 6), "iscrowd": 0}]
    images, path = write_coco(tmp_path, anns)
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--coco", f"train={path}", "--novel", "ball", "-o", out)
    assert r.returncode == 0 and "outside every COCO annotation" in r.stderr and "--background" in r.stderr
    r = run_cli("split", "--images", images, "--coco", f"train={path}", "--novel", "ball", "--background",
                "unlabelled", "-o", out, "--exist-ok")
    assert r.returncode == 0 and "outside every COCO annotation" not in r.stderr
    m = load_manifest(out)
    assert m.classes == ["dog", "grass", "ball", "unlabelled"]
    full = np.asarray(Image.open(out / "full" / "train" / "a.png"))
    assert full[4, 4] == 2 and full[0, 29] == 3


def test_tag_only_images_are_trained_on_and_their_hidden_pixels_never_reach_training(synth, tmp_path):
    """Benchmark-mode tag-only images keep their full masks for the oracle: poisoning every pixel of those (and
    every novel pixel of the others) leaves training bit-identical, while leaving the tag-only images out
    (--set tag_only=false) changes it, so they are used."""
    src = synth.parent / "src"  # the session's synthetic images, only read
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    r = run_cli("split", "--images", src / "images", "--masks", src / "labels", "--classes", src / "classes.txt",
                "--novel", "star,ring,brick", "--tag-only-fraction", "0.5", "-o", clean)
    assert r.returncode == 0, r.stderr
    shutil.copytree(clean, poisoned)
    m = load_manifest(poisoned)
    assert sum(it.label is None for it in m.splits["train"]) == 6
    rng = np.random.default_rng(0)
    for it in m.splits["train"]:
        full = np.asarray(Image.open(m.resolve(it.full)))
        hidden = np.ones_like(full, bool) if it.label is None else np.isin(full, m.novel)
        Image.fromarray(np.where(hidden, rng.integers(0, 10, full.shape), full).astype(np.uint8)).save(
            m.resolve(it.full))
    runs = tmp_path / "runs"
    for name, ds, extra in (("clean", clean, []), ("poisoned", poisoned, []),
                            ("masked_only", clean, ["--set", "tag_only=false"])):
        r = run_cli("train", ds, *TINY, "--iters", "2", "--name", name, "--project", runs, *extra)
        assert r.returncode == 0, r.stderr
    a, b, c = (model_state(runs / "train" / name) for name in ("clean", "poisoned", "masked_only"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_coco_json_with_a_byte_order_mark_reads_as_without(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "segmentation": coco_box(2, 2, 6, 6), "iscrowd": 0}]
    images, path = write_coco(tmp_path, anns)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    r = run_cli("split", "--images", images, "--coco", f"train={path}", "--novel", "ball", "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr


def test_ctrl_c_in_split_says_nothing_was_written(tmp_path):
    """The tags file is a FIFO nobody writes to, so split waits on it with its staging folder made; Ctrl-C then
    leaves one line, exit 130, and no trace."""
    args, tags = _source(tmp_path)
    tags.unlink()
    os.mkfifo(tags)
    before = snapshot(tmp_path / "src"), sorted(os.listdir(tmp_path))  # (reading the FIFO would block)
    out = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "weakshot_cli", *map(str, args), "-o", str(out)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".ws.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".ws.staging-*")), "split never reached the tags file"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"interrupted: nothing was written to {out}"]
    assert (snapshot(tmp_path / "src"), sorted(os.listdir(tmp_path))) == before
