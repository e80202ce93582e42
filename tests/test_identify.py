"""What the training tags can name: split counts, per novel class, the images that separate it from the classes it
shares unknown pixels with, warns where names will be confused, and pseudolabel's tag check repeats it."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, assert_user_error, run_cli
from weakshot_cli.data.identify import SEPARATING_SHARE, flagged, tag_pairs
from weakshot_cli.data.manifest import load_manifest

SHARED = ROOT.parent / "shared" / "data"
CLASSES = ["road", "car", "sign", "tree"]  # road base; car, sign, tree novel


def test_counts_worked_out_by_hand():
    """Twelve images: 0-7 car and sign, 8 car and tree, 9 (tag-only) road, car and tree, 10-11 tree.
    car/sign: tagged 10 and 8, together 8, separating 10 + 8 - 2 x 8 = 2, a share of 2 / 8 of the rarer class: at the
    threshold, not flagged. car/tree: 10 and 4, together 2, separating 10. road is base: it counts in the tag-only
    image only, always with car and tree, so 0 separating: flagged. sign and tree never meet: no pair."""
    tags = [{1, 2}] * 8 + [{1, 3}, {0, 1, 3}, {3}, {3}]
    tag_only = [False] * 9 + [True, False, False]
    pairs = {(p["novel"], p["other"]): p for p in tag_pairs(tags, tag_only, CLASSES, [1, 2, 3])}
    assert pairs[("car", "sign")] == {"novel": "car", "other": "sign", "tagged": [10, 8], "together": 8,
                                      "separating": 2, "share": 0.25}
    assert pairs[("car", "tree")] == {"novel": "car", "other": "tree", "tagged": [10, 4], "together": 2,
                                      "separating": 10, "share": 2.5}
    assert pairs[("car", "road")] == {"novel": "car", "other": "road", "tagged": [1, 1], "together": 1,
                                      "separating": 0, "share": 0.0}
    assert set(pairs) == {("car", "sign"), ("car", "tree"), ("car", "road"), ("tree", "road")}
    assert [(p["novel"], p["other"]) for p in flagged(pairs.values())] == [("car", "road"), ("tree", "road")]
    assert SEPARATING_SHARE == 0.25


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
