"""`weakshot predict` end to end on a tiny checkpoint: odd images, sources, outputs, skips and errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.transforms.v2 import functional as TF

from conftest import ROOT, assert_user_error, interruptible, run_cli
from weakshot_cli.data.dataset import collate_eval, normalise
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import ScoreMap, class_scores, model_from_checkpoint
from weakshot_cli.engine.predict import find_images, rle_results
from weakshot_cli.engine.visualise import default_palette, legend_entries, overlay, untinted, with_legend

FAST = ["--device", "cpu", "--imgsz", "64", "--amp", "off"]  # off: compared with float32 scores, whatever the CPU


@pytest.fixture
def ckpt(tiny_ckpt) -> Path:
    """The session's 2-iteration checkpoint (conftest.tiny_ckpt)."""
    return tiny_ckpt


def rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def labels_of(run: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(run / "labels").as_posix(): np.asarray(Image.open(p))
            for p in sorted((run / "labels").rglob("*.png"))}


def test_odd_modes_and_sizes_keep_the_displayed_size(ckpt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 wide x 40 high, displayed rotated: 40 wide x 60 high
    rgb(40, 60).save(src / "exif.jpg", exif=exif)
    rgb(37, 53, 1).convert("L").save(src / "gray.png")
    rgb(33, 70, 2).convert("RGBA").save(src / "rgba.png")
    Image.fromarray(np.arange(45 * 31, dtype=np.uint16).reshape(45, 31) * 40).save(src / "deep.png")
    rgb(50, 41, 3).convert("CMYK").save(src / "cmyk.jpg")
    rgb(29, 64, 4).convert("P").save(src / "pal.png")
    rgb(1, 9, 5).convert("1").save(src / "line.bmp")
    rgb(35, 36, 6).save(src / "upper.TIF")
    rgb(32, 40, 7).save(src / "photo.webp")
    assert Image.open(src / "deep.png").mode == "I;16"
    expected = {"exif.png": (60, 40), "gray.png": (37, 53), "rgba.png": (33, 70), "deep.png": (45, 31),
                "cmyk.png": (50, 41), "pal.png": (29, 64), "line.png": (1, 9), "upper.png": (35, 36),
                "photo.png": (32, 40)}
    r = run_cli("predict", ckpt, src, *FAST, "--batch", "3", "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "predict" / "predict"
    assert f"9 images written to {run}, 0 skipped" in r.stdout
    assert sorted(p.name for p in run.iterdir()) == [".weakshot", "labels"]
    labels = labels_of(run)
    assert {k: v.shape for k, v in labels.items()} == expected
    assert all(Image.open(run / "labels" / k).mode == "L" for k in labels)
    assert max(int(v.max()) for v in labels.values()) < len(load_checkpoint(ckpt)["classes"])


def test_sources_select_the_expected_images_and_names_never_collide(ckpt, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "b.png", "sub/c.png", "sub/deep/d.jpg"):
        rgb(20, 24).save(src / name)
    (src / "notes.txt").write_text("not an image\n")
    runs = tmp_path / "runs"
    r = run_cli("predict", ckpt, src, *FAST, "--recursive", "--save-overlay", "--project", runs, "--name", "deep")
    assert r.returncode == 0, r.stderr
    assert sorted(labels_of(runs / "predict" / "deep")) == ["a.jpg.png", "a.png.png", "b.png", "sub/c.png",
                                                            "sub/deep/d.png"]
    assert (runs / "predict" / "deep" / "overlays" / "sub" / "deep" / "d.jpg").exists()

    def outputs(source: str, recursive: bool = False) -> list[str]:
        return [rel.as_posix() for _, rel in find_images(source, recursive)]

    assert outputs(str(src)) == ["a.jpg", "a.png", "b.png"]
    assert outputs(f"{src}/*.png") == ["a.png", "b.png"]
    assert outputs(f"{src}/**/*.png", recursive=True) == ["a.png", "b.png", "sub/c.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen images\n\nsrc/b.png\n{src / 'sub' / 'c.png'}\nsrc/b.png\n"
                       f"../{tmp_path.name}/src/a.jpg\n")
    assert outputs(str(listing)) == ["src/b.png", "src/sub/c.png", "src/a.jpg"]
    listing.write_bytes(b"\xef\xbb\xbf" + listing.read_bytes().replace(b"# chosen images\n", b""))
    assert outputs(str(listing)) == ["src/b.png", "src/sub/c.png", "src/a.jpg"]  # a byte-order mark is no name


def test_prediction_is_the_models_and_outputs_agree(ckpt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rgb(37, 53, 8).save(src / "one.png")
    tta = ["--flip", "--scales", "1,1.5"]
    runs = tmp_path / "runs"
    assert run_cli("predict", ckpt, src, *FAST, *tta, "--project", runs).returncode == 0
    r = run_cli("predict", ckpt, src / "one.png", *FAST, *tta, "--palette", "--save-overlay", "--json",
                "--project", runs)
    assert r.returncode == 0, r.stderr
    plain, rich = runs / "predict" / "predict", runs / "predict" / "predict2"

    c = load_checkpoint(ckpt)
    image = TF.pil_to_tensor(Image.open(src / "one.png"))
    b = collate_eval([{"image": normalise(TF.resize(image, [64, 92], antialias=True)), "label": None, "index": 0}])
    scores = class_scores(model_from_checkpoint(c, torch.device("cpu")), b["image"], b["sizes"], [(37, 53)],
                          flip=True, scales=(1.0, 1.5))[0]
    expected = scores.argmax(0).numpy()
    assert np.array_equal(labels_of(plain)["one.png"], expected)

    pal = Image.open(rich / "labels" / "one.png")
    assert pal.mode == "P" and np.array_equal(np.asarray(pal), expected)
    assert pal.getpalette()[:3 * len(c["classes"])] == c["palette"][:3 * len(c["classes"])]
    # the overlay: the image with the predicted classes tinted, above a legend of those classes. JPEG keeps the flat
    # legend band nearly exact, the noise image only in its mean colour.
    shown = np.asarray(Image.open(rich / "overlays" / "one.jpg").convert("RGB")).astype(float)
    wanted = with_legend(overlay(image.permute(1, 2, 0).numpy(), expected.astype(np.uint8), c["palette"]),
                         legend_entries([expected], c["classes"], c["palette"]))
    assert shown.shape == wanted.shape and shown.shape[0] > 37
    assert np.abs(shown[37:] - wanted[37:]).mean() < 4
    assert np.abs(shown[:37].mean((0, 1)) - wanted[:37].mean((0, 1))).max() < 2
    results = json.loads((rich / "predictions.json").read_text())
    assert sorted(x["category_id"] for x in results) == np.unique(expected).tolist()
    for x in results:
        mask = mask_utils.decode(x["segmentation"]).astype(bool)
        assert np.array_equal(mask, expected == x["category_id"]) and x["area"] == mask.sum()
        assert x["image_id"] == "one" and x["file_name"] == str(src / "one.png")
        assert x["category_name"] == c["classes"][x["category_id"]]
        assert x["score"] == pytest.approx(float(scores[x["category_id"]][torch.from_numpy(mask)].mean()), rel=1e-4)


def test_rle_results_decode_to_each_class_mask():
    """A barely trained model predicts one class; this checks the encoding on a map with several, read from
    network-size scores at twice the size as predict reads them."""
    scores = torch.rand(6, 7, 11)
    label, mean_score = ScoreMap(scores, (14, 22)).argmax()
    label = label.numpy()
    results = rle_results(mean_score, label, "x/y", "x/y.jpg", list("abcdef"))
    assert [x["category_id"] for x in results] == np.unique(label).tolist() and len(results) > 2
    full = F.interpolate(scores[None], size=(14, 22), mode="bilinear", align_corners=False)[0]
    for x in results:
        mask = mask_utils.decode(x["segmentation"]).astype(bool)
        assert np.array_equal(mask, label == x["category_id"]) and x["area"] == mask.sum()
        assert x["score"] == pytest.approx(float(full[x["category_id"]][torch.from_numpy(mask)].mean()))
    json.dumps(results)


def test_unreadable_files_are_skipped_and_all_unreadable_is_an_error(ckpt, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    rgb(40, 40).save(tmp_path / "full.jpg")
    (bad / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    (bad / "text.jpg").write_text("hello")
    runs = tmp_path / "runs"
    r = run_cli("predict", ckpt, bad, *FAST, "--project", runs)
    assert_user_error(r, "no image could be read", "3 skipped")
    assert not (runs / "predict" / "predict").exists()
    rgb(30, 40).save(bad / "good.png")
    r = run_cli("predict", ckpt, bad, *FAST, "--batch", "2", "--project", runs)
    assert r.returncode == 0, r.stderr
    for name in ("empty.png", "cut.jpg", "text.jpg"):
        assert f"warning: skipped {bad / name}" in r.stderr and f"skipped {bad / name}" not in r.stdout
    assert "1 images written" in r.stdout and "3 skipped" in r.stdout
    assert list(labels_of(runs / "predict" / "predict")) == ["good.png"]


def test_images_in_subfolders_are_reported_when_not_searched(ckpt, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "sub/deep/c.jpg"):
        rgb(20, 24).save(src / name)
    (src / "sub" / "notes.txt").write_text("not an image\n")
    runs = tmp_path / "runs"
    r = run_cli("predict", ckpt, src, *FAST, "--project", runs)
    assert r.returncode == 0, r.stderr
    assert f"warning: skipped 2 images in subfolders of {src}; pass --recursive to include them" in r.stderr
    assert list(labels_of(runs / "predict" / "predict")) == ["a.png"]
    r = run_cli("predict", ckpt, src, *FAST, "--recursive", "--project", runs)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stdout + r.stderr and len(labels_of(runs / "predict" / "predict2")) == 3


@pytest.mark.slow  # pseudolabel's ctrl-c test covers the interrupt path in the default suite
def test_ctrl_c_says_how_many_predictions_were_kept_and_where(ckpt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        rgb(32, 40, i).save(src / f"{i:03d}.png")
    run = tmp_path / "runs" / "predict" / "predict"
    proc = subprocess.Popen([sys.executable, "-m", "weakshot_cli", "predict", str(ckpt), str(src), *FAST,
                             "--json", "--project", str(tmp_path / "runs")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=interruptible)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "labels").glob("*.png")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    written = len(labels_of(run))
    assert proc.returncode == 130 and 0 < written < 300, (proc.returncode, written, out, err)
    assert err.strip() == (f"interrupted: {written} of 300 predictions written to {run / 'labels'}; "
                           "predictions.json is written only by a finished run")
    assert not (run / "predictions.json").exists()


def test_overlays_leave_background_and_ignore_untinted_and_list_the_tinted_classes():
    classes = ["_background_", "cat", "dog", "bird"]
    palette = default_palette(len(classes))
    image = np.full((20, 40, 3), 100, np.uint8)
    label = np.zeros((20, 40), np.uint8)
    label[:, 10:20], label[:, 20:30] = 1, 255  # background, cat, ignore, background; dog and bird absent
    shown = overlay(image, label, palette, skip=untinted(classes))
    assert untinted(classes) == [0] and untinted(["Background", "bg"]) == [0]
    plain = (label == 0) | (label == 255)
    assert (shown[plain] == 100).all() and (shown[label == 1] != 100).any(axis=-1).all()
    entries = legend_entries([label], classes, palette)
    assert entries == [("cat", tuple(palette[3:6]))]
    framed = with_legend(shown, entries)
    assert framed.shape[1] == 40 and framed.shape[0] > 20 and (framed[:20] == shown).all()
    band = framed[20:].reshape(-1, 3)
    assert (band == palette[3:6]).all(axis=-1).sum() >= 4  # the cat swatch
    assert not (band == palette[6:9]).all(axis=-1).any()  # no dog: it is not in the image
    assert with_legend(shown, []) is shown
