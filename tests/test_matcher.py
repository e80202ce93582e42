"""Hungarian matcher: optimal against brute force, explicit index map, mask cost only for targets with masks."""

import torch

torch.set_num_threads(2)

import itertools
import math

import pytest

from models import HungarianMatcher


def reference_cost(logits, masks, target):
    """Cost written out pixel by pixel: -p(class) + 20 * mean focal + dice, on nearest-downsampled targets."""
    q_n, (h, w) = logits.shape[0], masks.shape[-2:]
    step = target["masks"].shape[-1] // w
    cost = torch.zeros(q_n, len(target["labels"]), dtype=torch.float64)
    for q in range(q_n):
        prob = logits[q].double().softmax(-1)
        for t, label in enumerate(target["labels"].tolist()):
            cost[q, t] = -prob[label]
            if not target["has_mask"][t]:
                continue
            y = target["masks"][t, ::step, ::step].double().flatten().tolist()
            x = masks[q].double().flatten().tolist()
            focal, inter, psum = 0.0, 0.0, 0.0
            for xi, yi in zip(x, y):
                p = 1 / (1 + math.exp(-xi))
                focal += -0.25 * (1 - p) ** 2 * math.log(p) if yi else -0.75 * p ** 2 * math.log(1 - p)
                inter += p * yi
                psum += p
            cost[q, t] += 20 * focal / len(x) + 1 - (2 * inter + 1) / (psum + sum(y) + 1)
    return cost


def make_case(seed, num_queries=5, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_classes + 1, generator=g) * 2
    masks = torch.randn(num_queries, 4, 4, generator=g) * 3
    full = torch.rand(2, 16, 16, generator=g) > 0.5
    target = {"labels": torch.tensor([1, 3, 2]), "has_mask": torch.tensor([True, True, False]),
              "masks": torch.cat([full, torch.zeros(1, 16, 16, dtype=torch.bool)])}
    return logits, masks, target


@pytest.mark.parametrize("seed", range(6))
def test_matcher_is_optimal(seed):
    logits, masks, target = make_case(seed)
    cost = reference_cost(logits, masks, target)
    torch.testing.assert_close(HungarianMatcher().cost_matrix(logits, masks, target).double(), cost,
                               rtol=1e-5, atol=1e-5)
    (rows, cols), = HungarianMatcher()({"pred_logits": logits[None], "pred_masks": masks[None]}, [target])
    assert sorted(cols.tolist()) == [0, 1, 2] and len(set(rows.tolist())) == 3
    best = min(sum(cost[q, t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    assert cost[rows, cols].sum().item() == pytest.approx(best.item(), abs=1e-9)


def test_novel_targets_get_class_cost_only():
    logits, masks, target = make_case(0)
    cost = HungarianMatcher().cost_matrix(logits, masks, target)
    torch.testing.assert_close(cost[:, 2], -logits.softmax(-1)[:, 2])
    assert (cost[:, :2] != -logits.softmax(-1)[:, [1, 3]]).all()


@pytest.mark.parametrize("seed", range(3))
def test_explicit_index_map_survives_target_order(seed):
    logits, masks, target = make_case(seed)
    outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
    (rows, cols), = HungarianMatcher()(outputs, [target])
    pairs = {(q, target["labels"][t].item()) for q, t in zip(rows.tolist(), cols.tolist())}
    for perm in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):  # novel target first, in the middle, ...
        shuffled = {k: v[perm] for k, v in target.items()}
        (r, c), = HungarianMatcher()(outputs, [shuffled])
        assert {(q, shuffled["labels"][t].item()) for q, t in zip(r.tolist(), c.tolist())} == pairs


@pytest.mark.parametrize("num_points", [0, 64])
def test_matches_obvious_assignment(num_points):
    # query k predicts target k's mask and class; target order is scrambled relative to queries
    full = torch.zeros(3, 16, 16, dtype=torch.bool)
    full[0, :8] = True
    full[1, 8:, :8] = True
    full[2, 8:, 8:] = True
    logits = torch.zeros(4, 6)
    logits[0, 4], logits[1, 2], logits[2, 0] = 5.0, 5.0, 5.0
    masks = torch.full((4, 4, 4), -8.0)
    for q, m in enumerate(full):
        masks[q][m[::4, ::4]] = 8.0
    target = {"labels": torch.tensor([0, 2, 4, 1]), "has_mask": torch.tensor([True, True, True, False]),
              "masks": torch.cat([full[[2, 1, 0]], torch.zeros(1, 16, 16, dtype=torch.bool)])}
    (rows, cols), = HungarianMatcher(num_points=num_points)({"pred_logits": logits[None], "pred_masks": masks[None]},
                                                           [target])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 1, 2: 0, 3: 3}
