"""`weakshot pseudolabel`: the labelling rules pixel by pixel (masked and tag-only images), a new dataset beside
an untouched input, resumability (after a kill or Ctrl-C), the tag check and the benchmark-mode report, errors;
and retrain reading the result."""

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

from conftest import ROOT, TINY, assert_user_error, interruptible, run_cli
from weakshot_cli.data.dataset import AugConfig, EvalDataset, TrainDataset, collate_eval
from weakshot_cli.data.manifest import Item, Manifest, load_manifest
from weakshot_cli.data.synthetic import make_synthetic
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint
from weakshot_cli.engine.pseudolabel import _batches, image_stats, keep_classes, pseudo_label, tag_check

IMGSZ = ["--imgsz", "64", "--device", "cpu", "--amp", "off"]  # off: compared with float32 scores


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    """The session's 2-iteration checkpoint with its novel class logits raised so that novel classes win on the
    unlabelled pixels of tagged and untagged images alike: the tag rule then has pixels to keep and to drop."""
    trained = load_checkpoint(tiny_ckpt)
    trained["model"]["class_embed.bias"][trained["novel"]] += 1.0
    path = tmp_path_factory.mktemp("novel-biased") / "novel-biased.pt"
    torch.save(trained, path)
    return path


@pytest.fixture(scope="module")
def labelled(ckpt, synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pl") / "pl"
    before = digest(synth)
    r = run_cli("pseudolabel", ckpt, synth, "-o", out, "--mode", "keep", *IMGSZ)
    assert r.returncode == 0, r.stderr
    assert digest(synth) == before  # the input dataset is untouched
    return out


@pytest.fixture(scope="module")
def tag_only(synth, tmp_path_factory) -> Path:
    """Real mode (no full masks) with every third training image tag-only: its tags (base and novel), no mask."""
    src = load_manifest(synth)
    train = [Item(it.image, None if i % 3 == 0 else str(src.resolve(it.label)), it.tags)
             for i, it in enumerate(src.splits["train"])]
    val = [Item(it.image, str(src.resolve(it.label)), it.tags) for it in src.splits["val"]]
    root = tmp_path_factory.mktemp("tag-only")
    Manifest(src.classes, src.base, src.novel, {"train": train, "val": val}).save(root)
    return root


def assert_tag_check_matches_files(report: dict, src: Manifest, new: Manifest) -> None:
    """The tag check's counts, found, coverage and labelled shares, recomputed from the written labels and the
    input's unknown pixels (all of a tag-only image's)."""
    check = report["tag_check"]
    per = {c: {"tagged": 0, "found": 0, "untagged": 0, "pixels": 0, "unknown": 0} for c in src.novel}
    unknown_total = labelled = 0
    for old, it in zip(src.splits["train"], new.splits["train"]):
        pseudo = np.asarray(Image.open(new.resolve(it.label)))
        unknown = (np.ones(pseudo.shape, bool) if old.label is None
                   else np.asarray(Image.open(src.resolve(old.label))) == 255)
        unknown_total += int(unknown.sum())
        labelled += int((unknown & (pseudo != 255)).sum())
        for c, r in per.items():
            if c in old.tags:
                r["tagged"] += 1
                r["found"] += int((pseudo == c).any())
                r["pixels"] += int((pseudo == c).sum())
                r["unknown"] += int(unknown.sum())
            else:
                r["untagged"] += 1
    for c, r in per.items():
        got = check["per_class"][src.classes[c]]
        counts = (got["tagged_images"], got["untagged_images"], got["pixels"])
        assert counts == (r["tagged"], r["untagged"], r["pixels"])
        assert got["found_pct"] == pytest.approx(100 * r["found"] / r["tagged"])
        assert got["coverage_pct"] == pytest.approx(100 * r["pixels"] / r["unknown"])
    assert check["unknown_pixels"] == unknown_total
    assert check["labelled_pct"] == pytest.approx(100 * labelled / unknown_total)


def test_unit_rule():
    scores = torch.zeros(4, 2, 3)  # classes 0, 1 base; 2, 3 novel
    scores[2, 0, :] = 0.9          # top row: novel 2 wins
    scores[3, 1, :2] = 0.4         # bottom row: novel 3 wins weakly on two pixels, base 0 on the last
    scores[0, 1, 2] = 0.8
    base = np.array([[255, 1, 255], [255, 255, 255]], np.uint8)
    np.testing.assert_array_equal(pseudo_label(scores, base, [2, 3]), [[2, 1, 2], [3, 3, 255]])
    np.testing.assert_array_equal(pseudo_label(scores, base, [3]), [[255, 1, 255], [3, 3, 255]])  # 2 untagged
    np.testing.assert_array_equal(pseudo_label(scores, base, [2, 3], min_score=0.5), [[2, 1, 2], [255] * 3])


def test_choose_mode_takes_the_best_allowed_class():
    """Choose mode labels a pixel with its best-scoring tagged class even where an untagged class wins (a novel
    class confused with a base one); the threshold applies to that class's score; base ground truth still wins;
    keep mode drops what it did not win. Its statistics count the chosen class with its own score."""
    scores = _scores([[(0, 0.9), (3, 0.8), (1, 0.9), (2, 0.9), (2, 0.7)]])  # winners; classes 0, 1 base, 2, 3 novel
    scores[2, 0, :2] = torch.tensor([0.5, 0.3])  # tagged 2 loses to base 0, then to untagged 3
    scores[2, 0, 2] = 0.1                         # ... and to base 1, below --min-score
    base = np.array([[255, 255, 255, 1, 255]], np.uint8)
    choose = pseudo_label(scores, base, [2], 0.2, mode="choose")
    np.testing.assert_array_equal(choose, [[2, 2, 255, 1, 2]])
    np.testing.assert_array_equal(pseudo_label(scores, base, [2], 0.2), [[255, 255, 255, 1, 2]])
    np.testing.assert_array_equal(pseudo_label(scores, base, [], 0.2, mode="choose"), [[255, 255, 255, 1, 255]])
    stats = image_stats(scores, base, choose, ["a", "b", "c", "d"], [2, 3], 0.2)
    assert stats == {"unknown": 4, "labelled": 3, "pseudo": {"c": {"pixels": 3, "score_sum": pytest.approx(1.5)}},
                     "predicted": ["c", "d"]}


def test_tag_only_images_keep_any_tagged_class():
    """No mask, so no base ground truth wins and a tagged base class is kept too; a masked image keeps only its
    novel tags (its base classes are all in its mask)."""
    assert keep_classes(Item("a.png", None, [0, 3]), [2, 3]) == [0, 3]
    assert keep_classes(Item("a.png", "a.png", [0, 3]), [2, 3]) == [3]
    scores = torch.zeros(4, 1, 3)
    scores[0, 0, 0] = scores[3, 0, 1] = scores[1, 0, 2] = 0.9  # winners: base 0, novel 3, base 1 (untagged)
    unknown = np.full((1, 3), 255, np.uint8)
    np.testing.assert_array_equal(pseudo_label(scores, unknown, [0, 3]), [[0, 3, 255]])


def _scores(winners: list[list[tuple[int, float]]]) -> torch.Tensor:
    """[4, H, W] scores in which pixel (y, x) is won by class ``winners[y][x][0]`` with score ``winners[y][x][1]``."""
    s = torch.zeros(4, len(winners), len(winners[0]))
    for y, row in enumerate(winners):
        for x, (c, v) in enumerate(row):
            s[c, y, x] = v
    return s


def test_tag_check_on_a_hand_made_case():
    """Three 2x2 images, classes a, b (base) and c, d (novel), --min-score 0.15: every statistic worked out by hand.
    1 (mask, tags c): b known (c wins there, not counted); c 0.8 kept; d 0.1 too weak; a 0.5 base.
    2 (tag-only, tags a, d): d 0.4 and 0.2 kept; a 0.7 kept; c 0.3 predicted, dropped.
    3 (mask, tags c, d): a and b known; d 0.1 too weak; b 0.9 on an unknown pixel (not a novel tag)."""
    classes, novel = ["a", "b", "c", "d"], [2, 3]
    items = [Item("1.png", "1.png", [2]), Item("2.png", None, [0, 3]), Item("3.png", "3.png", [2, 3])]
    scores = [_scores([[(2, 0.9), (2, 0.8)], [(3, 0.1), (0, 0.5)]]),
              _scores([[(3, 0.4), (3, 0.2)], [(0, 0.7), (2, 0.3)]]),
              _scores([[(0, 0.6), (1, 0.6)], [(3, 0.1), (1, 0.9)]])]
    bases = [np.array([[1, 255], [255, 255]], np.uint8), np.full((2, 2), 255, np.uint8),
             np.array([[0, 1], [255, 255]], np.uint8)]
    labels = [pseudo_label(s, b, keep_classes(it, novel), 0.15) for s, b, it in zip(scores, bases, items)]
    for label, expected in zip(labels, ([[1, 2], [255, 255]], [[3, 3], [0, 255]], [[0, 1], [255, 255]])):
        np.testing.assert_array_equal(label, expected)
    stats = [image_stats(s, b, label, classes, novel, 0.15) for s, b, label in zip(scores, bases, labels)]
    assert stats[1] == {"unknown": 4, "labelled": 3, "pseudo": {"d": {"pixels": 2, "score_sum": pytest.approx(0.6)}},
                        "predicted": ["c", "d"]}
    report = tag_check(stats, [it.tags for it in items], classes, novel)
    assert report == {
        "per_class": {
            "c": {"tagged_images": 2, "found_pct": 50.0, "untagged_images": 1, "untagged_predicted_pct": 100.0,
                  "pixels": 1, "coverage_pct": pytest.approx(100 * 1 / 5), "mean_score": 0.8},
            "d": {"tagged_images": 2, "found_pct": 50.0, "untagged_images": 1, "untagged_predicted_pct": 0.0,
                  "pixels": 2, "coverage_pct": pytest.approx(100 * 2 / 6), "mean_score": 0.3}},
        "unknown_pixels": 9, "labelled_pct": pytest.approx(100 * 4 / 9)}
    # nothing tagged, nothing unknown: shares of nothing are None, not 0
    empty = tag_check([{"unknown": 0, "labelled": 0, "pseudo": {}, "predicted": []}], [[]], classes, novel)
    assert empty["per_class"]["c"]["found_pct"] is None and empty["per_class"]["c"]["coverage_pct"] is None
    assert empty["per_class"]["c"]["mean_score"] is None and empty["labelled_pct"] is None


def test_batches_never_mix_image_sizes(tmp_path):
    """Padding to a neighbour's size would change a pseudo-label (and break exact resume)."""
    sizes = [(64, 48), (32, 32), (64, 48), (32, 32), (64, 48)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    m = Manifest(["a", "b"], [0], [1], {"train": [Item(f"{i}.png", None, []) for i in range(5)]}, root=tmp_path)
    batches = _batches(m, [0, 1, 2, 3, 4], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 and len({sizes[i] for i in b}) == 1 for b in batches)


def test_rules_hold_on_every_written_label(labelled, ckpt, synth):
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


@pytest.fixture(scope="module")
def base_biased(ckpt, tag_only, tmp_path_factory) -> tuple[Path, int]:
    """The novel-biased checkpoint with a base class raised further so that it wins: a class that some tag-only
    images are tagged with and some are not, so that the rule has base pixels to keep and to drop."""
    m = load_manifest(tag_only)
    tags = [it.tags for it in m.splits["train"] if it.label is None]
    b = next(c for c in m.base if 0 < sum(c in t for t in tags) < len(tags))
    biased = load_checkpoint(ckpt)
    biased["model"]["class_embed.bias"][b] += 3.0
    path = tmp_path_factory.mktemp("base-biased") / "base-biased.pt"
    torch.save(biased, path)
    return path, b


def test_tag_only_images_keep_their_tagged_classes(base_biased, tag_only, tmp_path):
    """A tag-only image keeps a predicted base class it is tagged with (no ground truth to win) and drops one it
    is not; masked images never take a base class from the model. Real mode: the report is the tag check alone."""
    path, b = base_biased
    out = tmp_path / "pl"
    r = run_cli("pseudolabel", path, tag_only, "-o", out, "--mode", "keep", *IMGSZ)
    assert r.returncode == 0, r.stderr
    assert "pseudo-labels vs image tags" in r.stdout and "full masks" not in r.stdout
    report = json.loads((out / "pseudolabel.json").read_text())
    src, new = load_manifest(tag_only), load_manifest(out)
    assert set(report) == {"mode", "min_score", "tag_only_min_score", "images", "tag_only_images", "tag_check",
                           "by_source"}
    assert report["tag_only_images"] == 4 and report["mode"] == "keep"
    assert report["min_score"] == report["tag_only_min_score"] == 0
    assert_tag_check_matches_files(report, src, new)

    model = model_from_checkpoint(load_checkpoint(path), torch.device("cpu"))
    ds = EvalDataset(src, "train", 64)
    kept = dropped = 0
    for i, (old, it) in enumerate(zip(src.splits["train"], new.splits["train"])):
        batch = collate_eval([ds[i]])
        scores = class_scores(model, batch["image"], batch["sizes"], [batch["labels"][0].shape])[0]
        base = batch["labels"][0].numpy().astype(np.uint8)
        pseudo = np.asarray(Image.open(new.resolve(it.label)))
        np.testing.assert_array_equal(pseudo, pseudo_label(scores, base, keep_classes(old, src.novel)))
        b_wins = (scores.argmax(0).numpy() == b) & (base == 255)
        if old.label is None:
            kept += int((b_wins & (pseudo == b)).sum())
            dropped += int((b_wins & (pseudo == 255)).sum())
        else:
            assert not (b_wins & (pseudo == b)).any()
    assert kept > 0 and dropped > 0, (kept, dropped)
    # retrain --set tag_only=false trains on the masked images alone: those labelled from tags are skipped too
    masked = {Path(it.image).name for it in src.splits["train"] if it.label is not None}
    for m in (src, new):
        assert {Path(it.image).name for it in TrainDataset(m, AugConfig(64), tag_only=False).items} == masked
    assert len(TrainDataset(new, AugConfig(64)).items) == len(new.splits["train"]) > len(masked)
    # --set tag_only_base=false: a mask made from tags alone teaches its novel classes; its base pixels are ignore
    novel_only, plain = TrainDataset(new, AugConfig(64), tag_only_base=False), TrainDataset(new, AugConfig(64))
    ignored = 0
    for i, it in enumerate(new.splits["train"]):
        a, p = novel_only[i, 7, 0]["sem"], plain[i, 7, 0]["sem"]
        on_base = torch.isin(p, torch.tensor(new.base))
        if it.label in new.source["tag_only_labels"]:
            assert (a[on_base] == 255).all() and torch.equal(a[~on_base], p[~on_base])
            ignored += int(on_base.sum())
        else:
            assert torch.equal(a, p)
    assert ignored > 0


def test_tag_only_min_score_applies_to_tag_only_images_alone(base_biased, tag_only, tmp_path):
    """--tag-only-min-score out of reach: every pixel of a tag-only image (all labelled by the model) stays
    ignore, while a masked image keeps its base mask and, at --min-score 0, gets its novel pixels."""
    path, _ = base_biased
    out = tmp_path / "pl"
    r = run_cli("pseudolabel", path, tag_only, "-o", out, "--tag-only-min-score", "1e9", *IMGSZ)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "pseudolabel.json").read_text())
    assert report["min_score"] == 0 and report["tag_only_min_score"] == 1e9
    src, new = load_manifest(tag_only), load_manifest(out)
    novel_pixels = 0
    for old, it in zip(src.splits["train"], new.splits["train"]):
        pseudo = np.asarray(Image.open(new.resolve(it.label)))
        if old.label is None:
            assert (pseudo == 255).all()
        else:
            base = np.asarray(Image.open(src.resolve(old.label)))
            np.testing.assert_array_equal(pseudo[base != 255], base[base != 255])
            novel_pixels += int(np.isin(pseudo, src.novel).sum())
    assert novel_pixels > 0
    assert_user_error(run_cli("pseudolabel", path, tag_only, "-o", tmp_path / "bad", "--tag-only-min-score", "nan"),
                      "--tag-only-min-score")


def test_tag_check_matches_the_model(labelled, ckpt, synth):
    """What the files cannot show: in how many untagged images each novel class was predicted (then dropped), and
    the mean winning score of its pseudo-labels, recomputed from the model's scores image by image."""
    per_class = json.loads((labelled / "pseudolabel.json").read_text())["tag_check"]["per_class"]
    src, new = load_manifest(synth), load_manifest(labelled)
    model = model_from_checkpoint(load_checkpoint(ckpt), torch.device("cpu"))
    ds = EvalDataset(src, "train", 64)
    predicted_untagged: dict[int, list[bool]] = {c: [] for c in src.novel}
    winning: dict[int, list[np.ndarray]] = {c: [] for c in src.novel}
    for i, (old, it) in enumerate(zip(src.splits["train"], new.splits["train"])):
        batch = collate_eval([ds[i]])
        scores = class_scores(model, batch["image"], batch["sizes"], [batch["labels"][0].shape])[0]
        unknown = batch["labels"][0].numpy() == 255
        pseudo = np.asarray(Image.open(new.resolve(it.label)))
        score, pred = (t.numpy() for t in scores.max(0))
        for c in src.novel:
            if c not in old.tags:
                predicted_untagged[c].append(bool(((pred == c) & unknown).any()))
            winning[c].append(score[pseudo == c])
    for c in src.novel:
        got, px = per_class[src.classes[c]], np.concatenate(winning[c])
        assert got["untagged_predicted_pct"] == pytest.approx(100 * np.mean(predicted_untagged[c]))
        assert got["mean_score"] == (pytest.approx(px.mean(), abs=1e-3) if px.size else None)
    assert any(r["found_pct"] > 0 for r in per_class.values())
    assert any(r["untagged_predicted_pct"] > 0 for r in per_class.values())


def test_min_score_leaves_only_base(ckpt, synth, tmp_path):
    assert run_cli("pseudolabel", ckpt, synth, "-o", tmp_path / "pl", "--min-score", "1e9", *IMGSZ).returncode == 0
    src, new = load_manifest(synth), load_manifest(tmp_path / "pl")
    for old, it in zip(src.splits["train"], new.splits["train"]):
        np.testing.assert_array_equal(np.asarray(Image.open(new.resolve(it.label))),
                                      np.asarray(Image.open(src.resolve(old.label))))


def test_interrupted_run_resumes_to_the_same_output(labelled, ckpt, synth, tmp_path):
    partial = tmp_path / "pl"
    shutil.copytree(labelled, partial)
    (partial / "weakshot.json").unlink()
    (partial / "pseudolabel.json").unlink()
    pngs = sorted((partial / "labels" / "train").glob("*.png"))
    for png in pngs[::2]:
        png.unlink()
    for png in pngs[1::4]:  # a label whose statistics are missing is redone too
        (partial / "stats" / "train" / f"{png.stem}.json").unlink()
    r = run_cli("pseudolabel", ckpt, synth, "-o", partial, "--mode", "keep", *IMGSZ)  # the options of `labelled`
    assert r.returncode == 0, r.stderr
    assert f"({len(pngs) - len(pngs[::2]) - len(pngs[1::4])} from an earlier run)" in r.stdout
    assert digest(partial) == digest(labelled)
    # a partial run with other options is not mixed with new ones
    (partial / "weakshot.json").unlink()
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", partial, "--mode", "keep", "--min-score", "0.5",
                              *IMGSZ), "other options")
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", partial, *IMGSZ),
                      "other options")
    before = digest(partial)
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", partial, "--mode", "keep", *IMGSZ[:-1], "bf16"),
                      "other options (amp)")
    assert digest(partial) == before
    assert_user_error(run_cli("pseudolabel", ckpt, synth, "-o", labelled, *IMGSZ), "--exist-ok")


def test_choose_mode_labels_what_keep_mode_drops(labelled, ckpt, synth, tmp_path):
    """On the same checkpoint, choose mode gives every pixel keep mode labelled the same class (a tagged winner is
    also the best tagged class) and labels more of the unknown pixels: those an untagged class won in images with
    a novel tag. Its tag check still matches the files."""
    out = tmp_path / "pl"
    r = run_cli("pseudolabel", ckpt, synth, "-o", out, *IMGSZ)  # choose is the default
    assert r.returncode == 0, r.stderr
    src, keep, choose = load_manifest(synth), load_manifest(labelled), load_manifest(out)
    report = json.loads((out / "pseudolabel.json").read_text())
    assert report["mode"] == "choose" and json.loads((out / ".pseudolabel-state.json").read_text())["mode"] == "choose"
    assert_tag_check_matches_files(report, src, choose)
    gained = 0
    for old, k, c in zip(src.splits["train"], keep.splits["train"], choose.splits["train"]):
        kept, chosen = (np.asarray(Image.open(m.resolve(it.label))) for m, it in ((keep, k), (choose, c)))
        np.testing.assert_array_equal(chosen[kept != 255], kept[kept != 255])
        extra = set(np.unique(chosen[kept == 255]).tolist()) - {255}
        assert extra <= set(old.tags) & set(src.novel), (extra, old.tags)
        gained += int((chosen != kept).sum())
    assert gained > 0
    assert report["tag_check"]["labelled_pct"] > json.loads((labelled / "pseudolabel.json").read_text())[
        "tag_check"]["labelled_pct"]


STOP_IMAGES = 60  # enough that a stop after 10 labels lands mid-way: the 50 left take over a second


@pytest.fixture(scope="module")
def straight(ckpt, tmp_path_factory) -> tuple[list, Path]:
    """A 60-image dataset pseudo-labelled one image per batch without interruption: the command, and its output."""
    root = tmp_path_factory.mktemp("straight")
    make_synthetic(root / "src", n_train=STOP_IMAGES, n_val=2, size=64, seed=1)
    assert run_cli("split", "--images", root / "src" / "images", "--masks", root / "src" / "labels",
                   "--classes", root / "src" / "classes.txt", "--novel", "star,ring,brick", "-o",
                   root / "ws").returncode == 0
    args = ["pseudolabel", ckpt, root / "ws", "--batch", "1", "--workers", "0", *IMGSZ]
    assert run_cli(*args, "-o", root / "straight").returncode == 0
    return args, root / "straight"


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT],
                         ids=["kill", "ctrl-c"])
def test_stop_then_rerun_equals_an_uninterrupted_run(straight, tmp_path, sig):
    """A real kill or Ctrl-C mid-way, then the same command again: the same files (labels, statistics, report) as
    a run never interrupted, and no temporary file left over. Ctrl-C exits 130 with one line saying how many
    labels were kept."""
    args, uninterrupted = straight
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "weakshot_cli", *map(str, args), "-o", str(killed)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)
    labels = killed / "labels" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(labels.glob("*.png"))) < 10:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate()
    written = len(list(labels.glob("*.png")))
    assert 10 <= written < STOP_IMAGES and not (killed / "weakshot.json").exists()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and err.decode().splitlines() == [
            f"interrupted: {written} of {STOP_IMAGES} pseudo-labels kept in {killed}; rerun the same command to resume"]
    r = run_cli(*args, "-o", killed)
    assert r.returncode == 0, r.stderr
    assert "from an earlier run" in r.stdout
    assert digest(killed) == digest(uninterrupted)


def assert_scores_match_files(report: dict, pairs: list[tuple[np.ndarray, np.ndarray]], src: Manifest) -> None:
    """The report's novel IoU, pixel counts and mIoU, recomputed from (pseudo-label, full mask) pairs."""
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


def test_tag_only_and_masked_images_are_reported_apart(ckpt, synth, tmp_path):
    """Benchmark mode with every third training image tag-only: the tag check and the scores of each kind of image
    alone, recomputed from that kind's files, and a table that shows both."""
    src = load_manifest(synth)

    def absolute(it: Item, tag_only: bool = False) -> Item:
        return Item(str(src.resolve(it.image)), None if tag_only else str(src.resolve(it.label)), it.tags,
                    it.full and str(src.resolve(it.full)))

    train = [absolute(it, i % 3 == 0) for i, it in enumerate(src.splits["train"])]
    Manifest(src.classes, src.base, src.novel, {"train": train, "val": [absolute(it) for it in src.splits["val"]]}
             ).save(tmp_path / "mixed")
    r = run_cli("pseudolabel", ckpt, tmp_path / "mixed", "-o", tmp_path / "pl", "--mode", "keep", *IMGSZ)
    assert r.returncode == 0, r.stderr
    assert "masked and tag-only training images apart" in r.stdout
    report, new = json.loads((tmp_path / "pl" / "pseudolabel.json").read_text()), load_manifest(tmp_path / "pl")
    for kind, tag_only in (("masked", False), ("tag_only", True)):
        part = report["by_source"][kind]
        idx = [i for i, it in enumerate(train) if (it.label is None) == tag_only]
        assert part["images"] == len(idx) > 0
        for c in src.novel:
            assert part["tag_check"]["per_class"][src.classes[c]]["tagged_images"] == sum(c in train[i].tags
                                                                                            for i in idx)
        assert_scores_match_files(part, [(np.asarray(Image.open(new.resolve(new.splits["train"][i].label))),
                                          np.asarray(Image.open(new.resolve(new.splits["train"][i].full))))
                                         for i in idx], src)


def test_benchmark_report_matches_the_files(labelled, synth):
    report = json.loads((labelled / "pseudolabel.json").read_text())
    src, new = load_manifest(synth), load_manifest(labelled)
    assert report["tag_only_images"] == 0
    assert_tag_check_matches_files(report, src, new)  # the tag check beside the ground-truth comparison
    pairs = [(np.asarray(Image.open(new.resolve(it.label))), np.asarray(Image.open(new.resolve(it.full))))
             for it in new.splits["train"]]
    assert_scores_match_files(report, pairs, src)
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


def test_retrain_starts_from_the_checkpoint_that_made_the_pseudo_labels(labelled, ckpt, tmp_path):
    """By default, for half the preset's iterations; --backbone-weights starts as train does, for the preset's."""
    from weakshot_cli.engine.config import PRESETS
    from weakshot_cli.engine.train import retrain_start

    r = run_cli("retrain", labelled, *TINY, "--iters", "1", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "runs" / "retrain" / "retrain" / "config.json").read_text())
    assert config["weights"] == str(Path(ckpt).resolve())
    half = PRESETS["small"]["iters"] // 2
    assert retrain_start(labelled, {"iters": None}, [], None, PRESETS["small"]["iters"]) == ({"iters": half},
                                                                                             Path(ckpt).resolve())
    assert retrain_start(labelled, {"iters": 7}, [], None, 10)[0] == {"iters": 7}
    assert retrain_start(labelled, {"iters": None}, ["backbone_weights=none"], None, 10) == ({"iters": None}, None)
    r = run_cli("retrain", labelled, *TINY, "--iters", "1", "--backbone-weights", "none", "--project",
                tmp_path / "runs", "--name", "scratch")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "retrain" / "scratch" / "config.json").read_text())["weights"] is None
    # the default preset (r50, TrainConfig's own defaults) too; the checkpoint's architecture wins, as ever
    r = run_cli("retrain", labelled, *TINY[2:], "--iters", "1", "--project", tmp_path / "runs", "--name", "r50")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "retrain" / "r50" / "config.json").read_text())["weights"] == \
        str(Path(ckpt).resolve())


def test_coco_output_reads_back_to_the_same_labels(ckpt, synth, tmp_path):
    """--coco: one stuff-style COCO JSON that pycocotools decodes, and split --coco reads, to the label PNGs."""
    from pycocotools import mask as mask_utils

    out = tmp_path / "pl"
    r = run_cli("pseudolabel", ckpt, synth, "-o", out, "--coco", *IMGSZ)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "coco.json").read_text())
    new = load_manifest(out)
    assert [c["name"] for c in data["categories"]] == new.classes
    labels = {Path(it.image).name: np.asarray(Image.open(new.resolve(it.label))) for it in new.splits["train"]}
    assert len(data["images"]) == len(labels)
    for im in data["images"]:
        decoded = np.full((im["height"], im["width"]), 255, np.uint8)
        for ann in (a for a in data["annotations"] if a["image_id"] == im["id"]):
            decoded[mask_utils.decode(ann["segmentation"]).astype(bool)] = ann["category_id"] - 1
        np.testing.assert_array_equal(decoded, labels[Path(im["file_name"]).name])
    back = tmp_path / "back"
    r = run_cli("split", "--images", data["info"]["images"], "--coco", f"train={out / 'coco.json'}", "--novel",
                "star", "-o", back)
    assert r.returncode == 0, r.stderr
    for it in load_manifest(back).splits["train"]:
        np.testing.assert_array_equal(np.asarray(Image.open(back / it.full)), labels[Path(it.image).name])
