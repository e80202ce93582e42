"""`weakshot split` end to end through the real CLI, on small datasets the tests write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CAMVID, assert_user_error, blocks, run_cli, write_dataset
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.data.presets import PRESETS


def split_args(toy: dict, out: Path, *extra: str) -> list[str]:
    return ["split", "--images", toy["images"], "--masks", toy["masks"], "--classes", toy["classes"],
            "-o", out, *extra]


def label(m, item) -> np.ndarray:
    return np.asarray(Image.open(m.resolve(item.label)))


def test_benchmark_mode_hides_novel_pixels_and_keeps_val_full(toy):
    out = toy["tmp"] / "ws"
    r = run_cli(*split_args(toy, out, "--novel", "c"))
    assert r.returncode == 0, r.stderr
    assert "Label values" in r.stdout and "Weak-shot dataset: 3 base + 1 novel" in r.stdout
    m = load_manifest(out)
    assert m.classes == ["a", "b", "c", "d"] and m.novel == [2] and m.base == [0, 1, 3]
    assert not m.novel_masks and m.source["mode"] == "benchmark"
    train = {Path(it.image).stem: it for it in m.splits["train"]}
    for stem, full in toy["train"].items():
        got = label(m, train[stem])
        expected = np.where(full == 2, 255, full)
        np.testing.assert_array_equal(got, expected)
        assert train[stem].tags == sorted(set(np.unique(full).tolist()) - {255})  # tags from full masks
    assert 2 in train["t0"].tags and 2 not in train["t1"].tags
    val = {Path(it.image).stem: it for it in m.splits["val"]}
    for stem, full in toy["val"].items():
        np.testing.assert_array_equal(label(m, val[stem]), full)
    # the source folder is untouched
    np.testing.assert_array_equal(np.asarray(Image.open(toy["masks"] / "train" / "t0.png")), toy["train"]["t0"])


def test_novel_ratio_is_reproducible_and_seed_dependent(toy):
    picks = []
    for i, seed in enumerate([3, 3, 4, 5, 6]):
        out = toy["tmp"] / f"ws{i}"
        assert run_cli(*split_args(toy, out, "--novel-ratio", "0.5", "--seed", str(seed))).returncode == 0
        picks.append(load_manifest(out).novel)
    assert picks[0] == picks[1] and all(len(p) == 2 for p in picks)
    assert len({tuple(p) for p in picks[1:]}) > 1
    files = [{str(p.relative_to(ws)): p.read_bytes().replace(str(ws).encode(), b"OUT") for p in sorted(ws.rglob("*"))
              if p.is_file()} for ws in (toy["tmp"] / "ws0", toy["tmp"] / "ws1")]
    assert files[0] == files[1]  # same seed: identical label files and manifest (but for the -o path it records)


def test_preset_uses_published_ids(tmp_path):
    names = [f"class{i}" for i in range(171)]
    for i, n in PRESETS["coco-stuff-10k-s1"].items():
        names[i] = n
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"x": blocks(8, 8, [3, 0, 40])}}, names)
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--preset",
                "coco-stuff-10k-s1", "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m.novel == sorted(PRESETS["coco-stuff-10k-s1"]) and len(m.novel) == 43 and len(m.base) == 128
    assert set(np.unique(label(m, m.splits["train"][0]))) == {0, 255}  # 3 motorcycle and 40 wine glass hidden


def test_preset_refuses_wrong_class_count(toy):
    r = run_cli(*split_args(toy, toy["tmp"] / "ws", "--preset", "ade20k-s1"))
    assert_user_error(r, "needs 150 classes")


def test_palette_pngs_are_read_as_indices_and_nested_folders_pair_by_stem(tmp_path):
    lab = blocks(10, 12, [0, 1, 255])
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"x": lab}}, ["bg", "fg"], palette=True)
    (images / "train" / "seq1").mkdir()
    (masks / "train" / "deeper" / "seq1").mkdir(parents=True)
    (images / "train" / "x.png").rename(images / "train" / "seq1" / "x.png")
    (masks / "train" / "x.png").rename(masks / "train" / "deeper" / "seq1" / "x.png")
    assert Image.open(masks / "train" / "deeper" / "seq1" / "x.png").mode == "P"
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "fg", "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m.splits["train"][0].tags == [0, 1]
    np.testing.assert_array_equal(label(m, m.splits["train"][0]), np.where(lab == 1, 255, lab))


def test_hidden_files_and_folders_are_not_pairs(tmp_path):
    """A notebook's checkpoint folder holds copies under the same stems, and macOS writes ._ files: neither is an
    image of the dataset, so neither is a duplicate to refuse."""
    lab = blocks(10, 12, [0, 1, 255])
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"x": lab}}, ["bg", "fg"])
    for root in (images, masks):
        (root / "train" / ".ipynb_checkpoints").mkdir()
        shutil.copy(root / "train" / "x.png", root / "train" / ".ipynb_checkpoints" / "x.png")
        (root / "train" / "._x.png").write_bytes(b"AppleDouble")
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "fg", "-o", out)
    assert r.returncode == 0, r.stderr
    assert [Path(it.image).name for it in load_manifest(out).splits["train"]] == ["x.png"]


def test_reduce_zero_label_ade_convention(tmp_path):
    raw = blocks(6, 9, [0, 1, 2])  # 0 = other -> ignore, 1 -> class 0, 2 -> class 1
    images, masks, classes = write_dataset(tmp_path / "src", {"val": {"x": raw}, "train": {"y": raw}},
                                           ["wall", "floor"])
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--reduce-zero-label",
                "--novel", "floor", "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    np.testing.assert_array_equal(label(m, m.splits["val"][0]), np.array([255, 0, 1], np.uint8)[raw])


def test_ignore_index_and_label_map_cityscapes_style(tmp_path):
    raw = blocks(6, 8, [7, 8, 26, 0])  # labelIds: road 7 -> 0, sidewalk 8 -> 1, car 26 -> 2, 0 -> ignore
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"a_leftImg8bit": raw}},
                                           ["road", "sidewalk", "car"])
    for p in (masks / "train").iterdir():
        p.rename(p.with_name("a_gtFine_labelIds.png"))
    for fmt, text in (("json", json.dumps({"7": 0, "8": 1, "26": 2, "0": "ignore"})), ("csv", "source,target\n7,0\n8,1\n26,2\n")):
        mapping = tmp_path / f"map.{fmt}"
        mapping.write_text(text)
        out = tmp_path / f"ws_{fmt}"
        r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--label-map", mapping,
                    "--img-suffix", "_leftImg8bit", "--mask-suffix", "_gtFine_labelIds", "--novel", "car", "-o", out)
        assert r.returncode == 0, r.stderr
        m = load_manifest(out)
        assert m.splits["train"][0].tags == [0, 1, 2]
        np.testing.assert_array_equal(label(m, m.splits["train"][0]), blocks(6, 8, [0, 1, 255, 255]))


def test_custom_ignore_index(tmp_path):
    raw = blocks(6, 8, [0, 11, 1])
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"x": raw}}, ["sky", "tree"])
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--ignore-index", "11",
                "--novel", "tree", "-o", out)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(label(load_manifest(out), load_manifest(out).splits["train"][0]),
                                  blocks(6, 8, [0, 255, 255]))


def test_real_mode_with_tags(tmp_path):
    train = {"t0": blocks(8, 8, [0, 255]), "t1": blocks(8, 8, [1, 255]), "t2": blocks(8, 8, [0, 1])}
    images, masks, classes = write_dataset(tmp_path / "src", {"train": train}, ["road", "sky", "lamp", "clock"])
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"t0": ["lamp"], "t1": ["lamp", "clock"]}))
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--masks", masks, "--classes", classes, "--tags", tags, "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m.novel == [2, 3] and m.source["mode"] == "real"
    by = {Path(it.image).stem: it.tags for it in m.splits["train"]}
    assert by == {"t0": [0, 2], "t1": [1, 2, 3], "t2": [0, 1]}


def test_guard_warns_on_binary_0_255_masks_and_strict_refuses(tmp_path):
    images, masks, classes = write_dataset(tmp_path / "src", {"train": {"x": blocks(6, 6, [0, 255])}},
                                           ["bg", "cat", "dog"])
    out = tmp_path / "ws"
    args = ["split", "--images", images, "--masks", masks, "--classes", classes, "--novel", "dog", "-o", out]
    r = run_cli(*args)
    assert r.returncode == 0 and "only the values 0 and 255" in r.stderr and "only the values" not in r.stdout
    r = run_cli(*args, "--strict", "--exist-ok")
    assert_user_error(r, "only the values 0 and 255", "--strict")


def test_guard_warns_when_ignore_value_never_occurs(toy):
    r = run_cli(*split_args(toy, toy["tmp"] / "ws", "--novel", "c", "--ignore-index", "9"))
    assert r.returncode == 0 and "ignore value 9 never occurs" in r.stderr


def test_guard_warns_about_images_without_labels(toy):
    Image.new("RGB", (20, 16)).save(toy["images"] / "train" / "lonely.png")
    r = run_cli(*split_args(toy, toy["tmp"] / "ws", "--novel", "c"))
    assert r.returncode == 0 and "1 image(s) have no label PNG" in r.stderr
    assert len(load_manifest(toy["tmp"] / "ws").splits["train"]) == 4


def test_refuses_to_overwrite_a_dataset_unless_exist_ok(toy):
    out = toy["tmp"] / "ws"
    assert run_cli(*split_args(toy, out, "--novel", "c")).returncode == 0
    before = (out / "weakshot.json").read_text()
    assert_user_error(run_cli(*split_args(toy, out, "--novel", "d")), str(out), "already holds a weak-shot dataset")
    assert (out / "weakshot.json").read_text() == before
    r = run_cli(*split_args(toy, out, "--novel", "d", "--exist-ok"))
    assert r.returncode == 0 and load_manifest(out).novel == [3]


@pytest.mark.slow  # splits all of CamVid (468 images)
@pytest.mark.skipif(not CAMVID.exists(), reason="needs ../shared/data/camvid")
def test_camvid_split_hides_novel_pixels(tmp_path):
    out = tmp_path / "camvid-ws"
    r = run_cli("split", "--images", CAMVID / "images", "--masks", CAMVID / "labels", "--classes",
                CAMVID / "classes.txt", "--ignore-index", "11", "--novel", "tree,car,sign_symbol", "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert len(m.splits["train"]) == 367 and len(m.splits["val"]) == 101
    assert m.novel == [5, 6, 8]
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for idx in rng.choice(len(m.splits[split]), 8, replace=False):
            it = m.splits[split][idx]
            src = np.asarray(Image.open(CAMVID / "labels" / split / (Path(it.image).stem + ".png")))
            full = np.where(src == 11, 255, src)
            expected = np.where(np.isin(full, m.novel), 255, full) if split == "train" else full
            np.testing.assert_array_equal(label(m, it), expected)
            assert it.tags == sorted(set(np.unique(full).tolist()) - {255})


def test_benchmark_mode_keeps_full_training_masks_apart_for_the_oracle(toy):
    out = toy["tmp"] / "ws"
    assert run_cli(*split_args(toy, out, "--novel", "c")).returncode == 0
    m = load_manifest(out)
    for it in m.splits["train"]:
        np.testing.assert_array_equal(np.asarray(Image.open(m.resolve(it.full))), toy["train"][Path(it.image).stem])
    assert all(it.full is None for it in m.splits["val"])
