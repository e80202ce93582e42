"""Training data path: tag-preserving augmentation, reference pairing, targets for the criterion."""

from __future__ import annotations

import numpy as np
import torch

from conftest import blocks, run_cli, write_dataset
from weakshot_cli.data.dataset import AugConfig, TrainDataset, build_targets, collate_train
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.data.pairing import PairBatchSampler

torch.set_num_threads(2)


def make_ws(tmp_path, train: dict, classes: list[str], novel: str):
    images, masks, names = write_dataset(tmp_path / "src", {"train": train}, classes)
    out = tmp_path / "ws"
    assert run_cli("split", "--images", images, "--masks", masks, "--classes", names, "--novel", novel,
                   "-o", out).returncode == 0
    return load_manifest(out)


def test_crop_keeps_novel_tags_only_with_enough_unknown_pixels(tmp_path):
    # three quarters base class 0, the right quarter novel class 1 -> hidden as 255 in the training label
    m = make_ws(tmp_path, {"x": blocks(64, 256, [0, 0, 0, 1])}, ["road", "car"], "car")
    ds = TrainDataset(m, AugConfig(imgsz=64, scale=(1.0, 1.0), flip=0.0, color=0.0, tag_keep=0.5))
    kept = dropped = 0
    for seed in range(60):
        s = ds[(0, seed, 0)]
        frac = ((s["sem"] == 255) & ~s["pad"]).sum().item() / (64 * 64)  # share of the image's unknown pixels
        has_novel = 1 in s["tags"].tolist()
        assert has_novel == (frac >= 0.5), (seed, frac)
        assert 0 in s["tags"].tolist()  # base tags are kept
        kept += has_novel
        dropped += not has_novel
    assert kept > 0 and dropped > 0  # retries often, but not always, find a crop that keeps the tag true


def test_sample_shapes_padding_and_determinism(tmp_path):
    m = make_ws(tmp_path, {"x": blocks(20, 30, [0, 1, 2])}, ["a", "b", "c"], "c")
    ds = TrainDataset(m, AugConfig(imgsz=64, scale=(0.5, 0.5)))
    s = ds[(0, 7, 0)]
    assert s["image"].shape == (3, 64, 64) and s["sem"].shape == (64, 64) and s["pad"].shape == (64, 64)
    assert s["pad"].any() and (s["sem"][s["pad"]] == 255).all()  # short side 10 px -> padded, pad is ignore
    again = ds[(0, 7, 0)]
    assert torch.equal(s["image"], again["image"]) and torch.equal(s["sem"], again["sem"])
    assert not torch.equal(ds[(0, 8, 0)]["image"], s["image"]) or not torch.equal(ds[(0, 9, 0)]["image"], s["image"])


def test_pairing_shares_novel_classes_and_is_a_function_of_seed_and_iteration():
    tags = [[0, 5], [1, 5], [0, 6], [1, 6], [0], [1], [0, 5, 6], [2]]
    base, novel = [0, 1, 2], [5, 6]
    sampler = PairBatchSampler(tags, base, novel, global_batch=4, seed=3)
    for it in range(50):
        batch = [i for i, _ in sampler.global_batch(it)]
        for a, r in zip(batch[::2], batch[1::2]):
            if set(tags[a]) & set(novel):
                assert set(tags[a]) & set(tags[r]) & set(novel), (a, r)
            elif a != 7:
                assert set(tags[a]) & set(tags[r]) & set(base), (a, r)
    assert sampler.global_batch(11) == PairBatchSampler(tags, base, novel, 4, seed=3).global_batch(11)
    assert sampler.global_batch(11) != PairBatchSampler(tags, base, novel, 4, seed=4).global_batch(11)
    anchors = [sampler.global_batch(it)[k][0] for it in range(4) for k in (0, 2)]
    assert sorted(anchors) == list(range(8))  # every image is an anchor once per epoch
    # repeated images (examples) are anchors that many times per epoch, the others still once
    repeated = PairBatchSampler(tags, base, novel, global_batch=4, seed=3, repeats=[1, 3, 1, 1, 1, 1, 1, 2])
    anchors = [repeated.global_batch(it)[k][0] for it in range(6) for k in (0, 2)]
    assert sorted(anchors[:11]) == [0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 7]  # one epoch: 11 anchors


def test_ranks_split_the_global_batch_into_whole_pairs():
    tags = [[0, 5], [1, 5], [0, 6], [1, 6], [0], [1]]
    one = iter(PairBatchSampler(tags, [0, 1], [5, 6], global_batch=8, seed=0, start_iter=5))
    r0 = iter(PairBatchSampler(tags, [0, 1], [5, 6], global_batch=8, seed=0, rank=0, world=2, start_iter=5))
    r1 = iter(PairBatchSampler(tags, [0, 1], [5, 6], global_batch=8, seed=0, rank=1, world=2, start_iter=5))
    for _ in range(3):
        assert next(one) == next(r0) + next(r1)


def test_odd_per_process_batches_pair_only_within_a_process():
    """6 images over 2 processes: the pair cut by the process boundary leaves both its images unpaired (reference
    = itself) instead of pairing them with strangers; the processes still share the one-process global batch."""
    tags = [[0, 5], [1, 5], [0, 6], [1, 6], [0], [1]]
    one = PairBatchSampler(tags, [0, 1], [5, 6], global_batch=6, seed=0, start_iter=2)
    ranks = [next(iter(PairBatchSampler(tags, [0, 1], [5, 6], global_batch=6, seed=0, rank=r, world=2, start_iter=2)))
             for r in range(2)]
    assert [k[:2] for k in ranks[0] + ranks[1]] == one.global_batch(2)
    assert [[k[2] for k in keys] for keys in ranks] == [[1, -1, 0], [0, 1, -1]]
    image = {"image": torch.zeros(3, 2, 4), "sem": torch.zeros(2, 4, dtype=torch.long),
             "pad": torch.zeros(2, 4, dtype=torch.bool), "tags": torch.tensor([0]), "tag_only": False, "example": False}
    refs = [[t["ref"] for t in build_targets(collate_train([{**image, "index": i, "pair_offset": o} for i, _, o in keys]),
                                             base=[0, 1], novel=[5, 6], novel_masks=False)] for keys in ranks]
    assert refs == [[1, 0, 2], [0, 2, 1]]
    # one process with an odd batch: the last anchor's partner is cut off, so it is unpaired too
    assert [k[2] for k in next(iter(PairBatchSampler(tags, [0, 1], [5, 6], global_batch=5, seed=0)))] == [1, -1, 1, -1, 0]


# novel 5, 6, 7: most {5} images share base 0, so "paper" pairing rarely picks the {5, 6} images that differ
TAGGED = [[0, 5]] * 12 + [[1, 5, 6]] * 2 + [[0, 6]] * 4 + [[2, 5, 6, 7]] * 2 + [[2]] * 2
NOVEL = {5, 6, 7}


def telling_pairs(pairing: str, iters: int = 200) -> tuple[int, int]:
    """(pairs whose reference shares a novel class with the anchor and differs in another, anchors that have such a
    candidate)."""
    sampler = PairBatchSampler(TAGGED, [0, 1, 2], sorted(NOVEL), global_batch=4, seed=0, pairing=pairing)
    novel = [set(t) & NOVEL for t in TAGGED]

    def tells(a: int, r: int) -> bool:
        return bool(novel[a] & novel[r]) and novel[a] != novel[r]

    told = available = 0
    for it in range(iters):
        batch = [i for i, _ in sampler.global_batch(it)]
        for a, r in zip(batch[::2], batch[1::2]):
            if any(tells(a, c) for c in range(len(TAGGED)) if c != a):
                available += 1
                told += tells(a, r)
    return told, available


def test_tags_pairing_picks_references_that_differ_in_a_novel_class():
    told, available = telling_pairs("tags")
    paper_told, paper_available = telling_pairs("paper")
    assert available > 100 and told == available  # always, where a candidate exists
    assert paper_told / paper_available < 0.5


def test_tags_pairing_oversamples_anchors_lacking_a_novel_tag():
    """Over one epoch every image with some novel tags but not all is an anchor twice, the others once; "paper":
    all once."""
    lacking = [0 < len(set(t) & NOVEL) < len(NOVEL) for t in TAGGED]
    for pairing, counts in (("tags", [2 if x else 1 for x in lacking]), ("paper", [1] * len(TAGGED))):
        sampler = PairBatchSampler(TAGGED, [0, 1, 2], sorted(NOVEL), global_batch=2, seed=1, pairing=pairing)
        anchors = [sampler.global_batch(it)[0][0] for it in range(sum(counts))]
        assert np.bincount(anchors, minlength=len(TAGGED)).tolist() == counts, pairing


def test_tags_pairing_is_a_function_of_seed_and_iteration_and_resumes_exactly():
    def sampler(seed: int = 2, **kw) -> PairBatchSampler:
        return PairBatchSampler(TAGGED, [0, 1, 2], sorted(NOVEL), global_batch=6, seed=seed, pairing="tags", **kw)

    assert sampler().global_batch(17) == sampler().global_batch(17)
    assert sampler().global_batch(17) != sampler(seed=3).global_batch(17)
    assert sampler().global_batch(17) != PairBatchSampler(TAGGED, [0, 1, 2], sorted(NOVEL), 6, seed=2).global_batch(17)
    fresh, resumed = iter(sampler()), iter(sampler(start_iter=9))
    for _ in range(9):
        next(fresh)
    assert [next(fresh) for _ in range(12)] == [next(resumed) for _ in range(12)]  # crosses epoch ends
    ranks = [iter(sampler(rank=r, world=3, start_iter=4)) for r in range(3)]
    one = iter(sampler(start_iter=4))
    for _ in range(3):
        assert next(one) == [k for r in ranks for k in next(r)]


def test_targets_hide_novel_masks_and_pass_a_base_only_map():
    sem = torch.tensor([[0, 0, 255, 255], [3, 3, 255, 255]])
    image = {"image": torch.zeros(3, 2, 4), "sem": sem, "pad": torch.zeros(2, 4, dtype=torch.bool),
             "tags": torch.tensor([0, 3, 5]), "index": 0, "tag_only": False, "example": False}
    batch = collate_train([{**image, "pair_offset": 1}, {**image, "pair_offset": -1}])
    t = build_targets(batch, base=[0, 3], novel=[5], novel_masks=False)
    assert t[0]["labels"].tolist() == [0, 3, 5] and t[0]["has_mask"].tolist() == [True, True, False]
    assert torch.equal(t[0]["masks"][0], sem == 0) and not t[0]["masks"][2].any()
    assert t[0]["ref"] == 1 and t[1]["ref"] == 0 and t[0]["novel_tags"].tolist() == [5]
    # with novel masks (oracle / pseudo-labels) novel classes get masks, but `sem` stays base-only
    full = torch.tensor([[0, 0, 5, 5], [3, 3, 255, 5]])
    batch["sem"] = torch.stack([full, full])
    t = build_targets(batch, base=[0, 3], novel=[5], novel_masks=True)
    assert t[0]["labels"].tolist() == [0, 3, 5] and t[0]["has_mask"].all()
    assert torch.equal(t[0]["masks"][2], full == 5)
    assert (t[0]["sem"][full == 5] == 255).all()
    np.testing.assert_array_equal(t[0]["sem"][full != 5].numpy(), full[full != 5].numpy())


def test_tag_only_images_give_every_tag_as_a_maskless_target():
    """A tag-only image has no base pixels: its base tags, like its novel ones, are targets without masks, and it is
    marked so that the SimNet and the complementary loss, whose premise needs a mask, skip it."""
    unknown = torch.full((2, 4), 255)
    masked = {"image": torch.zeros(3, 2, 4), "sem": torch.tensor([[0, 0, 255, 255]] * 2),
              "pad": torch.zeros(2, 4, dtype=torch.bool), "tags": torch.tensor([0, 5]), "index": 0, "tag_only": False,
              "example": False, "pair_offset": 1}
    tag_only = {**masked, "sem": unknown, "tags": torch.tensor([3, 5]), "index": 1, "tag_only": True, "pair_offset": -1}
    t = build_targets(collate_train([masked, tag_only]), base=[0, 3], novel=[5], novel_masks=False)
    assert t[0]["labels"].tolist() == [0, 5] and t[0]["has_mask"].tolist() == [True, False] and not t[0]["tag_only"]
    assert t[1]["labels"].tolist() == [3, 5] and not t[1]["has_mask"].any() and t[1]["tag_only"]
    assert t[1]["novel_tags"].tolist() == [5] and (t[1]["sem"] == 255).all()
