"""A few example masks of the novel classes: split keeps them (benchmark mode --examples K; in real mode a mask
that labels a --novel class), weak-shot training supervises their novel classes like base ones, the hidden pixels
of every other image still never reach training, and pseudolabel keeps them as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import TINY, assert_user_error, blocks, model_state, run_cli, write_dataset
from weakshot_cli.data.dataset import build_targets
from weakshot_cli.data.manifest import load_manifest


def _split(synth, out, *extra):
    src = synth.parent / "src"
    return run_cli("split", "--images", src / "images", "--masks", src / "labels", "--classes", src / "classes.txt",
                   "--novel", "star,ring,brick", "-o", out, *extra)


def test_examples_keep_their_full_masks_and_every_other_mask_hides_the_novel_classes(synth, tmp_path):
    r = _split(synth, tmp_path / "ws", "--examples", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "example masks" in r.stdout
    m = load_manifest(tmp_path / "ws")
    examples = [it for it in m.splits["train"] if it.example]
    for c in m.novel:
        assert sum(c in np.unique(np.asarray(Image.open(m.resolve(it.label)))) for it in examples) >= 2
    assert 2 <= len(examples) <= 6 and m.source["examples"].keys() == {"brick", "star", "ring"}
    for it in m.splits["train"]:
        label, full = (np.asarray(Image.open(m.resolve(p))) for p in (it.label, it.full))
        if it.example:
            np.testing.assert_array_equal(label, full)
        else:
            assert not np.isin(label, m.novel).any()
    assert not any(it.example for it in load_manifest(synth).splits["train"])  # without --examples: none
    again = _split(synth, tmp_path / "again", "--examples", "2", "--seed", "3")
    assert again.returncode == 0
    assert [it.example for it in load_manifest(tmp_path / "again").splits["train"]] == [it.example for it in
                                                                                          m.splits["train"]]


def test_an_example_is_supervised_like_a_labelled_image():
    """build_targets: its novel classes get masks, it keeps no novel tag for the weak-shot losses, and its sem map
    shows them; a plain image of the same batch keeps the weak-shot targets."""
    sem = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 255, 255], [1, 1, 255, 255]])
    batch = {"sem": torch.stack([sem, sem]), "pad": torch.zeros(2, 4, 4, dtype=torch.bool),
             "tags": [torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])], "tag_only": [False, False],
             "example": [True, False], "pair_offset": [0, 0]}
    plain_sem = torch.where(sem == 2, 255, sem)  # the plain image's stored label hides its novel class
    batch["sem"][1] = plain_sem
    ex, plain = build_targets(batch, base=[0, 1], novel=[2, 3], novel_masks=False)
    assert ex["labels"].tolist() == [0, 1, 2] and ex["has_mask"].all() and len(ex["novel_tags"]) == 0
    assert torch.equal(ex["sem"], sem) and torch.equal(ex["masks"][2], sem == 2)
    assert plain["labels"].tolist() == [0, 1, 3] and plain["has_mask"].tolist() == [True, True, False]
    assert plain["novel_tags"].tolist() == [3]


def test_training_with_examples_reads_no_hidden_pixel_and_pseudolabel_keeps_them(synth, tmp_path):
    """Poison every hidden copy of the novel pixels (the full masks): training on a dataset with examples is
    bit-identical, since examples bring their own labels; pseudolabel then keeps the example masks."""
    for name in ("clean", "poisoned"):
        assert _split(synth, tmp_path / name, "--examples", "1").returncode == 0
    m = load_manifest(tmp_path / "poisoned")
    rng = np.random.default_rng(0)
    for it in m.splits["train"]:
        full = np.asarray(Image.open(m.resolve(it.full)))
        Image.fromarray(np.where(np.isin(full, m.novel), rng.integers(0, 10, full.shape), full).astype(np.uint8)
                        ).save(m.resolve(it.full))
    for name in ("clean", "poisoned"):
        r = run_cli("train", tmp_path / name, *TINY, "--iters", "2", "--name", name, "--project", tmp_path / "runs")
        assert r.returncode == 0, r.stderr
    a, b = (model_state(tmp_path / "runs" / "train" / n) for n in ("clean", "poisoned"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = tmp_path / "runs" / "train" / "clean" / "weights" / "last.pt"
    r = run_cli("pseudolabel", ckpt, tmp_path / "clean", "-o", tmp_path / "pl", "--device", "cpu", "--imgsz", "64")
    assert r.returncode == 0, r.stderr
    src, pl = load_manifest(tmp_path / "clean"), load_manifest(tmp_path / "pl")
    for old, new in zip(src.splits["train"], pl.splits["train"]):
        if old.example:
            label = np.asarray(Image.open(src.resolve(old.label)))
            labelled = label != 255
            np.testing.assert_array_equal(np.asarray(Image.open(pl.resolve(new.label)))[labelled], label[labelled])


def test_real_mode_masks_that_label_a_novel_class_are_examples_unless_too_many(tmp_path):
    classes = ["road", "lamp", "clock"]
    train = {f"t{i}": blocks(8, 8, [0, 255]) for i in range(10)}
    train["t0"] = blocks(8, 8, [0, 1])  # one mask of ten labels the lamp: an example
    images, masks, names = write_dataset(tmp_path / "src", {"train": train, "val": {"v": blocks(8, 8, [0, 1, 2])}},
                                         classes)
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({f"t{i}": ["road", "lamp" if i % 2 else "clock"] for i in range(10)}))
    args = ["split", "--images", images, "--masks", masks, "--classes", names, "--tags", tags, "--novel", "lamp,clock"]
    r = run_cli(*args, "-o", tmp_path / "ws")
    assert r.returncode == 0, r.stderr
    m = load_manifest(tmp_path / "ws")
    assert [Path(it.image).stem for it in m.splits["train"] if it.example] == ["t0"]
    assert 1 in m.splits["train"][0].tags
    Image.fromarray(blocks(8, 8, [0, 1])).save(masks / "train" / "t1.png")  # two of ten: more than examples
    assert_user_error(run_cli(*args, "-o", tmp_path / "ws2"), "novel class 'lamp' is labelled in 2 of 10 training masks",
                      "leave it out of --novel")

