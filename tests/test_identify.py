"""What the training tags can name: split counts, per novel class, the images that separate it from the classes it
shares unknown pixels with, warns where names will be confused, and pseudolabel's tag check repeats it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT, assert_user_error, run_cli
from weakshot_cli.data.dataset import AugConfig, TrainDataset
from weakshot_cli.data.identify import SEPARATING_SHARE, flagged, separating_images, tag_matrix, tag_pairs
from weakshot_cli.data.manifest import Item, Manifest, load_manifest
from weakshot_cli.engine.config import TrainConfig
from weakshot_cli.engine.train import anchor_repeats

SHARED = ROOT.parent / "shared" / "data"
CLASSES = ["road", "car", "sign", "tree"]  # road base; car, sign, tree novel


def test_counts_worked_out_by_hand():
    """Eleven images: 0-5 car and sign, 6-7 car, 8 masked with no novel tag, 9-10 tag-only road and tree.
    car/sign: 8 and 6 images, together 6, separating 8 + 6 - 2 x 6 = 2, a share of 2 / 6 of the rarer class: not
    flagged. road is base: it shares unknown pixels only in tag-only images, always with tree: 0 separating,
    flagged. car never meets tree, nor road where road is unknown: no pair."""
    tags = [{1, 2}] * 6 + [{1}, {1}, {0}, {0, 3}, {0, 3}]
    tag_only = [False] * 9 + [True, True]
    pairs = {(p["novel"], p["other"]): p for p in tag_pairs(tag_matrix(tags, 4), np.array(tag_only), CLASSES,
                                                                [1, 2, 3])}
    assert set(pairs) == {("car", "sign"), ("tree", "road")}
    assert pairs[("car", "sign")] == {"novel": "car", "other": "sign", "tagged": [8, 6], "together": 6,
                                      "separating": 2, "share": 0.333}
    assert pairs[("tree", "road")] == {"novel": "tree", "other": "road", "tagged": [2, 2], "together": 2,
                                       "separating": 0, "share": 0.0}
    assert [(p["novel"], p["other"]) for p in flagged(pairs.values())] == [("tree", "road")]
    assert SEPARATING_SHARE == 0.25


def test_separating_images_are_those_of_flagged_pairs():
    """car/sign tagged together in ten images and apart in one (share 0.1, flagged): that one image separates them.
    tree is tagged alone, with nothing it shares unknown pixels with: no pair, so it separates nothing."""
    tags = [{1, 2}] * 10 + [{1}, {0, 3}]
    assert separating_images(tag_matrix(tags, 4), np.zeros(12, bool), CLASSES, [1, 2, 3]) == [False] * 10 + [True, False]


def test_training_repeats_the_separating_images_but_not_for_the_oracle():
    """With separating_repeat, the one image that tells car from sign is a batch anchor that often; an example
    keeps its own repeat; the oracle, which sees every novel mask, repeats nothing for tags."""
    tags = [[1, 2]] * 10 + [[1], [0, 3]]
    items = [Item(f"{i}.jpg", f"{i}.png", t, full=f"full/{i}.png", example=i == 0) for i, t in enumerate(tags)]
    m = Manifest(CLASSES, base=[0], novel=[1, 2, 3], splits={"train": items})
    cfg = TrainConfig(separating_repeat=8, example_repeat=3)
    assert anchor_repeats(TrainDataset(m, AugConfig()), cfg) == [3] + [1] * 9 + [8, 1]
    assert anchor_repeats(TrainDataset(m, AugConfig(), oracle=True), cfg) == [3] + [1] * 11


def _split(name: str, novel: str, ignore: int, out, *extra):
    data = SHARED / name
    if not data.is_dir():
        pytest.skip(f"{data} not found")
    return run_cli("split", "--images", data / "images", "--masks", data / "labels", "--classes",
                   data / "classes.txt", "--ignore-index", ignore, "--novel", novel, "-o", out, *extra)


def test_camvid_names_are_flagged_and_strict_refuses(tmp_path):
    assert_user_error(_split("camvid", "tree,car,sign_symbol", 11, tmp_path / "ws", "--strict"),
                      "tags cannot tell sign_symbol from car: 9 of 367 training images separate them")
    assert not (tmp_path / "ws").exists()


def test_msrc_open_split_is_not_flagged_and_pseudolabel_shows_a_flag(tiny_ckpt, synth, tmp_path):
    r = _split("msrc", "tree,water,cow,car,book", 255, tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    assert "tags cannot tell" not in r.stderr and "Can the tags name the novel classes?" in r.stdout
    pairs = load_manifest(tmp_path / "ws").source["identifiability"]
    assert pairs and not flagged(pairs) and min(p["share"] for p in pairs) > 2
    # the tag check names a flagged pair: the synthetic dataset with one recorded as split would record it
    flagged_ws = tmp_path / "synth"
    manifest = json.loads((synth / "weakshot.json").read_text())
    manifest["source"]["identifiability"] = [{"novel": "star", "other": "ring", "tagged": [5, 5], "together": 5,
                                              "separating": 0, "share": 0.0}]
    flagged_ws.mkdir()
    for key in manifest["splits"]:
        for it in manifest["splits"][key]:
            for field in ("image", "label", "full"):
                if it.get(field):
                    it[field] = str(load_manifest(synth).resolve(it[field]))
    (flagged_ws / "weakshot.json").write_text(json.dumps(manifest))
    r = run_cli("pseudolabel", tiny_ckpt, flagged_ws, "-o", tmp_path / "pl", "--device", "cpu", "--imgsz", "64")
    assert r.returncode == 0, r.stderr
    check = json.loads((tmp_path / "pl" / "pseudolabel.json").read_text())["tag_check"]["per_class"]
    assert check["star"]["tags_cannot_separate"] == ["ring"] and check["ring"]["tags_cannot_separate"] == ["star"]
    assert "tags cannot separate it from" in r.stdout
