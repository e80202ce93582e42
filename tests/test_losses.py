"""SimFormer criterion: every loss term against plain formulas, composition over layers, oracle mode, honesty."""

import torch

torch.set_num_threads(2)

import math
import multiprocessing

import pytest
from torch import nn

from models import SimFormerCriterion

IGN = 255


def sig(x):
    return 1 / (1 + math.exp(-x))


def focal(x, y):
    """Mean sigmoid focal loss (alpha 0.25, gamma 2) over lists of logits and binary labels."""
    total = 0.0
    for xi, yi in zip(x, y):
        p = sig(xi)
        total += -0.25 * (1 - p) ** 2 * math.log(p) if yi else -0.75 * p ** 2 * math.log(1 - p)
    return total / len(x)


def dice(x, y):
    p = [sig(xi) for xi in x]
    return 1 - (2 * sum(pi * yi for pi, yi in zip(p, y)) + 1) / (sum(p) + sum(y) + 1)


def weak_target(sem, novel=(), ref=0, pad=None):
    """Target built from a base-only map: one mask per base class present, novel tags with empty masks."""
    sem = torch.as_tensor(sem)
    pad = torch.zeros_like(sem, dtype=torch.bool) if pad is None else torch.as_tensor(pad)
    base = [c for c in sem.unique().tolist() if c != IGN]
    empty = torch.zeros_like(sem, dtype=torch.bool)
    return {"labels": torch.tensor(base + list(novel), dtype=torch.long),
            "masks": torch.stack([sem == c for c in base] + [empty] * len(novel)),
            "has_mask": torch.tensor([True] * len(base) + [False] * len(novel)),
            "sem": sem, "pad": pad, "ref": ref, "novel_tags": torch.tensor(list(novel), dtype=torch.long)}


def crit(**kw):
    kw = {"use_sim": False, "use_dist": False, "use_comp": False, **kw}
    return SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=kw.pop("mask_dim", 4), **kw)


def test_ce_with_no_object_weight():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.3, 0.2], [0.3, 0.1, 1.0, -0.4, 0.9], [-0.5, 1.5, 0.2, 0.0, 0.1]]])
    target = weak_target([[0, 1]], novel=[3])  # labels [0, 1, 3]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 2]))]  # q2 -> class 0, q0 -> class 3, q1 -> no-object (4)
    classes, weights = [3, 4, 0], [1.0, 0.1, 1.0]
    ce = [math.log(sum(math.exp(v) for v in row)) - row[c] for row, c in zip(logits[0].tolist(), classes)]
    expected = sum(w * c for w, c in zip(weights, ce)) / sum(weights)
    assert crit().loss_labels(logits, [target], indices).item() == pytest.approx(expected, rel=1e-6)


def test_mask_focal_dice_upsampled_and_normalised_by_base_targets():
    # constant logits per query at 2x2 stay constant when upsampled to the 8x8 targets
    values = [1.5, -0.7, 0.2, 3.0]
    masks = torch.tensor(values)[None, :, None, None].expand(2, 4, 2, 2).contiguous()
    sem0 = torch.full((8, 8), IGN)
    sem0[:3] = 0
    sem0[5:, 2:] = 1
    sem1 = torch.ones(8, 8, dtype=torch.long)
    targets = [weak_target(sem0, novel=[2]), weak_target(sem1, novel=[3])]
    # image 0: q1 -> class 0 (24 px), q3 -> novel (no mask loss), q0 -> class 1 (18 px); image 1: q2 -> class 1 (64 px)
    indices = [(torch.tensor([1, 3, 0]), torch.tensor([0, 2, 1])), (torch.tensor([2, 0]), torch.tensor([0, 1]))]
    got_focal, got_dice = crit().loss_masks(masks, targets, indices, num_masks=3.0)
    cases = [(values[1], 24), (values[0], 18), (values[2], 64)]
    exp_focal = sum(focal([x] * 64, [1] * n + [0] * (64 - n)) for x, n in cases) / 3
    exp_dice = sum(dice([x] * 64, [1] * n + [0] * (64 - n)) for x, n in cases) / 3
    assert got_focal.item() == pytest.approx(exp_focal, rel=1e-5)
    assert got_dice.item() == pytest.approx(exp_dice, rel=1e-5)


def test_point_sampled_mask_loss_equals_full_for_constant_case():
    masks = torch.full((1, 2, 4, 4), 0.8)
    target = weak_target(torch.zeros(16, 16, dtype=torch.long), novel=[2])
    indices = [(torch.tensor([1, 0]), torch.tensor([0, 1]))]
    full = crit().loss_masks(masks, [target], indices, 1.0)
    points = crit(num_points=50).loss_masks(masks, [target], indices, 1.0)
    assert points[0].item() == pytest.approx(full[0].item(), rel=1e-5)
    assert full[0].item() == pytest.approx(focal([0.8], [1]), rel=1e-5)
    # dice's +1 smoothing depends on how many pixels or points it sums over
    assert full[1].item() == pytest.approx(dice([0.8] * 256, [1] * 256), rel=1e-5)
    assert points[1].item() == pytest.approx(dice([0.8] * 50, [1] * 50), rel=1e-5)


def test_complementary_loss():
    sem = torch.tensor([[0, 0, 0, 0], [IGN, IGN, 1, IGN], [IGN, IGN, IGN, IGN], [IGN, IGN, IGN, IGN]])
    pad = torch.zeros(4, 4, dtype=torch.bool)
    pad[:, 3] = True
    sem[pad] = IGN
    torch.manual_seed(0)
    masks = torch.randn(2, 4, 4, 4) * 3
    masks[0, 3] = 20.0  # an unmatched query: must not enter the union
    targets = [weak_target(sem, novel=[2, 3], pad=pad), weak_target(sem, pad=pad)]  # image 1 has no novel target
    # image 0: q0 -> class 0, q2 -> class 1, q1 -> novel class 2; novel class 3 left unmatched
    indices = [(torch.tensor([0, 2, 1]), torch.tensor([0, 1, 2])), (torch.tensor([0, 1]), torch.tensor([0, 1]))]
    floor = math.log(0.1 / 0.9)
    union = torch.maximum(masks[0, 1], torch.tensor(floor)).flatten().tolist()
    y = ((sem == IGN) & ~pad).flatten().int().tolist()
    expected = 20 * focal(union, y) + dice(union, y)
    c = crit(use_comp=True)
    assert c.loss_comp(masks, targets, indices).item() == pytest.approx(expected, rel=1e-5)
    # two novel proposals: the union is their pixelwise max (and the floor)
    indices2 = [(torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 2, 3])), indices[1]]
    masks[0, 3] = torch.randn(4, 4) * 3
    union2 = torch.maximum(torch.maximum(masks[0, 1], masks[0, 3]), torch.tensor(floor)).flatten().tolist()
    expected2 = 20 * focal(union2, y) + dice(union2, y)
    assert c.loss_comp(masks, targets, indices2).item() == pytest.approx(expected2, rel=1e-5)
    # the release's gamma = 0.05
    union3 = torch.maximum(masks[0, 1], torch.tensor(math.log(0.05 / 0.95))).flatten().tolist()
    got = crit(use_comp=True, ignore_prior=0.05).loss_comp(masks, targets, indices)
    assert got.item() == pytest.approx(20 * focal(union3, y) + dice(union3, y), rel=1e-5)
    # a tag-only image (no mask, so its unknown pixels may be base) has no complementary term: with image 0 tag-only
    # the loss is zero, and it does not dilute another image's term
    tag_only = {**weak_target(torch.full((4, 4), IGN), novel=[2, 3], pad=pad), "tag_only": True}
    assert c.loss_comp(masks, [tag_only, targets[1]], indices2).item() == 0.0
    assert c.loss_comp(masks, [targets[0], tag_only], [indices[0], indices2[0]]).item() == pytest.approx(expected,
                                                                                                        rel=1e-5)


class DotSimNet(nn.Module):
    """Stand-in SimNet with a known output: logit(similar) = <f_a, f_b>."""

    def grid_logits(self, grids):
        dots = torch.cat([(a @ b.T).flatten() for a, b in grids])
        return torch.stack((torch.zeros_like(dots), dots), dim=1)


def sim_case(labels0, labels1, pad1_col=2):
    """3x3 feature grid; labels are given at feature resolution and blown up 4x to the input resolution."""
    big = lambda m: torch.as_tensor(m).repeat_interleave(4, 0).repeat_interleave(4, 1)
    pad1 = torch.zeros(3, 3, dtype=torch.bool)
    pad1[:, pad1_col] = True
    l1 = torch.as_tensor(labels1).clone()
    l1[pad1] = IGN
    targets = [weak_target(big(labels0), novel=[2], ref=1), weak_target(big(l1), novel=[2], ref=0, pad=big(pad1))]
    return targets, torch.as_tensor(labels0).flatten(), l1.flatten(), pad1.flatten()


def expected_sim(feats, l0, l1, pad1, history):
    """Balanced BCE over all non-pad cross-image pairs with a known label, both directions."""
    terms, pos, neg = [], 0, 0
    for (fa, la, pa), (fb, lb, pb) in [((feats[0], l0, [False] * 9), (feats[1], l1, pad1)),
                                       ((feats[1], l1, pad1), (feats[0], l0, [False] * 9))]:
        for p in range(9):
            for q in range(9):
                if pa[p] or pb[q] or (la[p] == IGN and lb[q] == IGN):
                    continue
                same = bool(la[p] == lb[q])
                terms.append((same, float(fa[:, p] @ fb[:, q])))
                pos, neg = pos + same, neg + (not same)
    pos_t, neg_t = pos + sum(h[0] for h in history), neg + sum(h[1] for h in history)
    w_pos, w_neg = neg_t / (pos_t + neg_t), pos_t / (pos_t + neg_t)
    loss = sum(w_pos * math.log1p(math.exp(-s)) if same else w_neg * math.log1p(math.exp(s)) for same, s in terms)
    return loss / len(terms), (pos, neg)


SIM_CASES = [([[0, 0, 1], [1, IGN, IGN], [0, 1, 1]], [[1, 1, 1], [0, IGN, IGN], [IGN, IGN, 0]]),
             ([[0, 0, 0], [0, 0, IGN], [IGN, IGN, IGN]], [[0, 1, 1], [1, 1, 1], [0, 0, 0]]),
             ([[1, 1, 1], [IGN, 0, 0], [0, 0, 1]], [[IGN, IGN, 0], [0, 1, 1], [1, 1, 1]])]


def test_sim_loss_balanced_bce_over_known_pairs():
    # enough points for every pixel, so the sampled set is all non-pad pixels whatever the random draw
    c = crit(use_sim=True, num_sim_points=30, sim_class_points=10, balance_window=2)
    c.simnet = DotSimNet()
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 3, 3) * 0.7
    outputs = {"pixel_features": feats}
    history = []
    for labels0, labels1 in SIM_CASES:
        targets, l0, l1, pad1 = sim_case(labels0, labels1)
        expected, counts = expected_sim(feats.flatten(2), l0.tolist(), l1.tolist(), pad1.tolist(), history[-1:])
        assert c.loss_sim(outputs, targets).item() == pytest.approx(expected, rel=1e-5)
        history.append(counts)  # window 2: each call sees its own counts and the previous call's


def test_sim_loss_detach_and_simnet_gradients():
    targets, *_ = sim_case([[0, 0, 1], [1, IGN, IGN], [0, 1, 1]], [[1, 1, 1], [0, IGN, IGN], [IGN, IGN, 0]])
    for detach in (True, False):
        torch.manual_seed(0)
        c = crit(use_sim=True, detach_sim_features=detach)
        feats = torch.randn(2, 4, 3, 3, requires_grad=True)
        loss = c.loss_sim({"pixel_features": feats}, targets)
        loss.backward()
        assert (feats.grad is None) == detach
        assert all(p.grad is not None for p in c.simnet.parameters())


def test_simnet_width_sets_the_pair_network_and_its_cost():
    """simnet_width shrinks the SimNet's hidden layers (each pair costs width^2 per layer) and it still learns."""
    targets, *_ = sim_case([[0, 0, 1], [1, IGN, IGN], [0, 1, 1]], [[1, 1, 1], [0, IGN, IGN], [IGN, IGN, 0]])
    narrow, wide = crit(use_sim=True, simnet_width=32), crit(use_sim=True)
    assert narrow.simnet.head.in_features == 32 and wide.simnet.head.in_features == 256
    assert sum(p.numel() for p in narrow.simnet.parameters()) < sum(p.numel() for p in wide.simnet.parameters()) / 20
    loss = narrow.loss_sim({"pixel_features": torch.randn(2, 4, 3, 3)}, targets)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in narrow.simnet.parameters())


def dist_case():
    """Both images: 4 unknown pixels at feature resolution (3x3), a shared novel tag, paired with each other."""
    big = lambda m: torch.as_tensor(m).repeat_interleave(4, 0).repeat_interleave(4, 1)
    l0 = torch.tensor([[0, IGN, IGN], [0, IGN, IGN], [1, 1, 1]])
    l1 = torch.tensor([[IGN, 1, IGN], [IGN, 1, IGN], [0, 0, 1]])
    targets = [weak_target(big(l0), novel=[2], ref=1), weak_target(big(l1), novel=[2, 3], ref=0)]
    torch.manual_seed(1)
    outputs = {"pred_logits": torch.randn(2, 3, 5, requires_grad=True),
               "pred_masks": torch.randn(2, 3, 3, 3, requires_grad=True),
               "pixel_features": torch.randn(2, 4, 3, 3, requires_grad=True) * 0.5}
    return outputs, targets, [(l0.flatten() == IGN).nonzero().flatten().tolist(),
                              (l1.flatten() == IGN).nonzero().flatten().tolist()]


def student_scores(outputs):
    """S[b, n, p] = sum_q softmax(cls)[novel n] * sigmoid(mask), novel = classes 2 and 3."""
    cls = outputs["pred_logits"].detach().softmax(-1)[..., 2:4]
    return torch.einsum("bqn,bqp->bnp", cls, outputs["pred_masks"].detach().flatten(2).sigmoid())


def relu_cos(u, v):
    return max(0.0, float(u @ v / (u.norm() * v.norm())))


@pytest.mark.parametrize("func", ["bce", "cce"])
def test_distillation_cross_image(func):
    outputs, targets, unknown = dist_case()
    c = crit(use_dist=True, dist_func=func, dist_weight=1.0)

    class DotTeacher(nn.Module):
        def grid_logits(self, grids):
            return DotSimNet().grid_logits(grids)

    c.simnet = DotTeacher()
    feats, scores = outputs["pixel_features"].detach().flatten(2), student_scores(outputs)
    terms = []
    for i, j in ((0, 1), (1, 0)):
        for p in unknown[i]:
            for q in unknown[j]:
                t = sig(float(feats[i, :, p] @ feats[j, :, q]))
                s = relu_cos(scores[i, :, p], scores[j, :, q])
                if func == "bce":
                    s = min(max(s, 0.01), 0.99)
                    terms.append(-(t * math.log(s) + (1 - t) * math.log(1 - s)))
                else:
                    terms.append(-max(t - 0.5, 0) * math.log(1 + s) - max(0.5 - t, 0) * math.log(2 - s))
    loss = c.loss_dist(outputs, targets)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    loss.backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0 and outputs["pred_masks"].grad.abs().sum() > 0


def test_distillation_intra_image_student_and_skips():
    outputs, targets, unknown = dist_case()
    c = crit(use_dist=True, dist_cross_image=False, dist_weight=1.0)

    class ConstTeacher(nn.Module):
        def grid_logits(self, grids):
            n = sum(len(a) * len(b) for a, b in grids)
            return torch.tensor([0.0, math.log(0.7 / 0.3)]).expand(n, 2)

    c.simnet = ConstTeacher()
    scores = student_scores(outputs)
    terms = []
    for i in (0, 1):
        for p in unknown[i]:
            for q in unknown[i]:
                s = min(max(relu_cos(scores[i, :, p], scores[i, :, q]), 0.01), 0.99)
                terms.append(-(0.7 * math.log(s) + 0.3 * math.log(1 - s)))
    assert c.loss_dist(outputs, targets).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    targets[1]["novel_tags"] = torch.tensor([3])  # no shared novel tag: nothing to distil
    zero = c.loss_dist(outputs, targets)
    assert zero.item() == 0 and zero.requires_grad


def test_semantic_loss_is_cross_entropy_of_normalised_scores_on_mask_labelled_pixels():
    logits = torch.tensor([[[1.0, 0.2, -0.5, 0.3, 0.0], [-0.2, 0.8, 0.4, -1.0, 0.5]]])  # 2 queries, 4 classes + void
    masks = torch.tensor([[[[2.0, -1.0], [0.5, 0.1]], [[-0.5, 1.5], [1.0, -2.0]]]], requires_grad=True)
    target = weak_target([[0, 1], [IGN, IGN]], novel=[2])  # bottom row unknown: novel or not, no mask says
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits[0].tolist()]
    m = masks.detach()[0]

    def nll(y, x, label):
        s = [sum(probs[q][c] * sig(m[q, y, x].item()) for q in range(2)) for c in range(4)]
        return -math.log(s[label] / sum(s))

    loss = crit().loss_semantic(logits, masks, [target])
    assert loss.item() == pytest.approx((nll(0, 0, 0) + nll(0, 1, 1)) / 2, rel=1e-4)
    loss.backward()
    assert masks.grad[0, :, 1].abs().sum() == 0 and masks.grad[0, :, 0].abs().sum() > 0
    # in forward: every layer, times semantic_weight; off (the paper) by default
    out = model_like_outputs(aux=2)
    assert crit()(out, batch_targets())["loss_sem"].item() == 0
    layers = [out, *out["aux_outputs"]]
    expected = sum(crit().loss_semantic(x["pred_logits"], x["pred_masks"], batch_targets()).item() for x in layers)
    got = crit(semantic_weight=0.5)(out, batch_targets())["loss_sem"].item()
    assert got == pytest.approx(0.5 * expected, rel=1e-5) and got > 0


def test_tag_terms_name_the_novel_classes_in_the_not_base_region():
    logits = torch.tensor([[[1.0, 0.2, -0.5, 0.3, 0.0], [-0.2, 0.8, 0.4, -1.0, 0.5]]])
    masks = torch.tensor([[[[2.0, -1.0], [0.5, 0.1]], [[-0.5, 1.5], [1.0, -2.0]]]])
    pad = torch.tensor([[False, False], [False, True]])
    sem = [[0, IGN], [IGN, IGN]]  # not-base region: (0, 1) and (1, 0); (1, 1) is padding
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits[0].tolist()]

    def p(y, x):
        s = [sum(probs[q][c] * sig(masks[0, q, y, x].item()) for q in range(2)) for c in range(4)]
        return [v / sum(s) for v in s]

    region = [p(0, 1), p(1, 0)]
    # one tag: every region pixel is class 2 (partial label), and its best pixel (top 10% of 2 -> 1) is
    expected = -sum(math.log(r[2]) for r in region) / 2 - max(math.log(r[2]) for r in region)
    c = crit(tag_topk=0.1)
    got = c.loss_tags(logits, masks, [weak_target(sem, novel=[2], pad=pad)]).item()
    assert got == pytest.approx(expected, rel=1e-4)
    swapped = c.loss_tags(logits, masks, [weak_target(sem, novel=[3], pad=pad)]).item()
    assert swapped != pytest.approx(got, rel=1e-3)  # names matter, unlike the complementary loss
    # two tags, top half: the region is one of them; each wins on the mean of its best pixel
    both = -sum(math.log(r[2] + r[3]) for r in region) / 2 - sum(max(math.log(r[k]) for r in region) for k in (2, 3))
    got = crit(tag_topk=0.5).loss_tags(logits, masks, [weak_target(sem, novel=[2, 3], pad=pad)]).item()
    assert got == pytest.approx(both, rel=1e-4)
    # per pixel: the partial term counts the region's 2 pixels out of the image's 3 (one is padding)
    per_pixel = -sum(math.log(r[2]) for r in region) / 3 - max(math.log(r[2]) for r in region)
    got = crit(tag_per_pixel=True).loss_tags(logits, masks, [weak_target(sem, novel=[2], pad=pad)]).item()
    assert got == pytest.approx(per_pixel, rel=1e-4)
    # no tag (nothing known about the region) or no region: no term; in forward only for weak-shot, every layer
    assert c.loss_tags(logits, masks, [weak_target(sem, pad=pad)]).item() == 0
    out = model_like_outputs(aux=1)
    layers = [out, *out["aux_outputs"]]
    expected = sum(c.loss_tags(x["pred_logits"], x["pred_masks"], batch_targets()).item() for x in layers)
    assert crit(tag_weight=2.0)(out, batch_targets())["loss_tags"].item() == pytest.approx(2 * expected, rel=1e-5)


def test_distillation_ramps_up_after_its_start():
    c = crit(dist_start=0.25, dist_warmup=0.5)
    ramp = []
    for progress in (0.0, 0.2, 0.25, 0.5, 0.75, 0.9):
        c.progress = progress
        ramp.append(c.dist_ramp())
    assert ramp == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert crit().dist_ramp() == 1.0  # the paper: full weight from the start
    out = model_like_outputs()
    kw = dict(use_dist=True, mask_dim=8, num_dist_points=10)
    full, ramped = crit(**kw), crit(dist_warmup=0.5, **kw)
    ramped.simnet.load_state_dict(full.simnet.state_dict())
    ramped.progress = 0.25  # half way up the ramp
    torch.manual_seed(0)
    a = full(out, batch_targets())["loss_dist"].item()
    torch.manual_seed(0)
    b = ramped(out, batch_targets())["loss_dist"].item()
    assert a != 0 and b == pytest.approx(a / 2, rel=1e-5)


def model_like_outputs(seed=0, aux=0, b=2, q=6, h=4, dim=8):
    g = torch.Generator().manual_seed(seed)
    layer = lambda: {"pred_logits": torch.randn(b, q, 5, generator=g).requires_grad_(),
                     "pred_masks": (torch.randn(b, q, h, h, generator=g) * 2).requires_grad_()}
    out = layer()
    out["pixel_features"] = torch.randn(b, dim, h, h, generator=g).requires_grad_()
    out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


def batch_targets():
    sem0 = torch.full((16, 16), IGN)
    sem0[:8] = 0
    sem0[8:, :6] = 1
    sem1 = torch.full((16, 16), 1)
    sem1[10:] = IGN
    pad1 = torch.zeros(16, 16, dtype=torch.bool)
    pad1[:, 12:] = True
    sem1[pad1] = IGN
    return [weak_target(sem0, novel=[2], ref=1), weak_target(sem1, novel=[2, 3], ref=0, pad=pad1)]


def test_forward_sums_layers_and_terms():
    out = model_like_outputs()
    with_aux = dict(out, aux_outputs=[{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}] * 2)
    c = SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=8, num_sim_points=20, sim_class_points=15,
                           num_dist_points=10)
    torch.manual_seed(0)
    single = c(out, batch_targets())
    torch.manual_seed(0)
    triple = c(with_aux, batch_targets())
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_comp"):  # final + aux layers, same weights
        assert triple[key].item() == pytest.approx(3 * single[key].item(), rel=1e-5)
        assert single[key].item() > 0
    for key in ("loss_sim", "loss_dist"):  # final layer only
        assert single[key].item() != 0
    assert triple["loss_dist"].item() == pytest.approx(single["loss_dist"].item(), rel=1e-5)
    keys = ("loss_ce", "loss_mask", "loss_dice", "loss_comp", "loss_sim", "loss_dist")
    assert single["loss"].item() == pytest.approx(sum(single[k].item() for k in keys), rel=1e-6)
    # the weights apply: comp_weight scales loss_comp only
    torch.manual_seed(0)
    half = SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=8, comp_weight=0.1, use_sim=False, use_dist=False)(
        out, batch_targets())
    assert half["loss_comp"].item() == pytest.approx(single["loss_comp"].item() / 2, rel=1e-5)
    assert half["loss_ce"].item() == pytest.approx(single["loss_ce"].item(), rel=1e-6)


def test_num_masks_override():
    out, targets = model_like_outputs(), batch_targets()  # 3 targets with masks in the batch
    c = crit()
    default, forced = c(out, targets), c(out, targets, num_masks=6.0)
    assert forced["loss_mask"].item() == pytest.approx(default["loss_mask"].item() / 2, rel=1e-6)
    assert forced["loss_dice"].item() == pytest.approx(default["loss_dice"].item() / 2, rel=1e-6)


def test_oracle_mode_is_plain_maskformer():
    out = model_like_outputs(aux=1)
    targets = batch_targets()
    for t in targets:  # full masks for every class: the oracle gets novel masks too
        t["masks"][-1] = t["sem"] == IGN
        t["has_mask"][:] = True
    c = crit()
    assert c.simnet is None and not list(c.parameters())
    losses = c(out, targets)
    for key in ("loss_comp", "loss_sim", "loss_dist"):
        assert losses[key].item() == 0 and losses[key].requires_grad
    assert losses["loss"].item() == pytest.approx(
        sum(losses[k].item() for k in ("loss_ce", "loss_mask", "loss_dice")), rel=1e-6)
    losses["loss"].backward()


def test_losses_ignore_anything_but_weak_labels():
    out = model_like_outputs()
    plain, extra = batch_targets(), batch_targets()
    for t, full in zip(extra, (torch.randint(0, 4, (16, 16)), torch.randint(0, 4, (16, 16)))):
        t["full_sem"] = full
        t["full_masks"] = torch.stack([full == c for c in range(4)])
    c = SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=8, num_sim_points=20, sim_class_points=15,
                           num_dist_points=10, semantic_weight=1.0, tag_weight=1.0)
    state = {k: v.clone() for k, v in c.state_dict().items()}
    torch.manual_seed(0)
    a = c(out, plain)
    c.load_state_dict(state)
    torch.manual_seed(0)
    b = c(out, extra)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_point_sampling_mode_runs_end_to_end():
    out = model_like_outputs(aux=1)
    torch.manual_seed(0)
    losses = SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=8, num_points=32, num_sim_points=20,
                                sim_class_points=15, num_dist_points=10)(out, batch_targets())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert out["pred_masks"].grad.abs().sum() > 0


def test_bfloat16_outputs_give_the_float32_losses_and_gradients_reach_them():
    """Under bf16 autocast the network's outputs are bf16: the matcher (scipy takes no bf16) and every loss must
    take them, computing in float32, so the losses equal those of the same values in float32."""
    out = model_like_outputs(aux=1)
    bf16 = {k: [{n: t.detach().bfloat16().requires_grad_() for n, t in a.items()} for a in v] if k == "aux_outputs"
            else v.detach().bfloat16().requires_grad_() for k, v in out.items()}
    same_values = {k: [{n: t.detach().float() for n, t in a.items()} for a in v] if k == "aux_outputs"
                   else v.detach().float() for k, v in bf16.items()}
    c = SimFormerCriterion(4, [0, 1], [2, 3], mask_dim=8, num_sim_points=20, sim_class_points=15, num_dist_points=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        got = c(bf16, batch_targets())
    torch.manual_seed(0)
    expected = c(same_values, batch_targets())
    for key, value in expected.items():
        assert got[key].dtype == torch.float32 and got[key].item() == pytest.approx(value.item(), rel=1e-5), key
    got["loss"].backward()
    assert bf16["pred_masks"].grad.dtype == torch.bfloat16 and bf16["pred_masks"].grad.abs().sum() > 0


def run_two_gloo_processes(target, tmp_path) -> None:
    """``target(rank, world, rendezvous file, out folder)`` in two forked processes (no re-import of torch, as
    spawn would need); both must exit cleanly."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(rank, 2, str(tmp_path / "rendezvous"), str(tmp_path)))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]


def _ddp_batch():
    """Two images whose normalisers differ: image 0 has 2 base masks, a novel tag (a complementary term) and 3
    targets; image 1 has 1 base mask, no novel tag and 1 target. With aux layers, as in training."""
    out = model_like_outputs(aux=1)
    sem0, sem1 = batch_targets()[0]["sem"], batch_targets()[1]["sem"]
    return out, [weak_target(sem0, novel=[2]), weak_target(sem1, pad=batch_targets()[1]["pad"])]


def _image(out: dict, i: int) -> dict:
    """Image ``i`` of a batch of outputs, as new leaf tensors (the share of one process)."""
    layer = lambda o: {k: o[k][i:i + 1].detach().clone().requires_grad_() for k in ("pred_logits", "pred_masks")}
    return {**layer(out), "aux_outputs": [layer(a) for a in out["aux_outputs"]]}


def _leaves(out: dict) -> list[torch.Tensor]:
    return [out["pred_logits"], out["pred_masks"]] + [a[k] for a in out["aux_outputs"]
                                                      for k in ("pred_logits", "pred_masks")]


def _one_ddp_process(rank: int, world: int, rendezvous: str, results: str) -> None:
    """One of two gloo processes: the criterion on its image, its normalisers all-reduced by the criterion."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        out, targets = _ddp_batch()
        mine = _image(out, rank)
        losses = crit(use_comp=True)(mine, [targets[rank]])
        losses["loss"].backward()
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": [t.grad for t in _leaves(mine)]},
                   f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(tmp_path):
    """DDP averages gradients over processes: with the class-weight, mask and complementary-image counts all-reduced
    (each process normalising by the global count over the number of processes), the mean of the processes'
    losses and their averaged gradients equal one process's on the whole batch. The images' counts differ, so a
    process normalising by its own counts fails this (test_ddp checks whole training runs; this names the term)."""
    out, targets = _ddp_batch()
    whole = {**{k: out[k] for k in ("pred_logits", "pred_masks")}, "aux_outputs": out["aux_outputs"]}
    single = crit(use_comp=True)(whole, targets)
    single["loss"].backward()
    run_two_gloo_processes(_one_ddp_process, tmp_path)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_comp", "loss"):
        mean = sum(r["losses"][key] for r in ranks) / 2
        assert mean.item() == pytest.approx(single[key].item(), rel=1e-5), key
        assert single[key].item() > 0, key
    for i, grad in enumerate(_leaves(whole)):  # each process's gradient of its image, averaged over the 2 processes
        torch.testing.assert_close(torch.cat([r["grads"][i] for r in ranks]) / 2, grad.grad, rtol=1e-5, atol=1e-7)


def _balance_history(rank: int | None) -> list[torch.Tensor]:
    """balance_counts after each of two loss_sim calls on the SIM_CASES pairs as one batch of 6, for images
    3 * rank .. 3 * rank + 2 (a process's odd share of it) or, with rank None, all of them. Images 2 and 3 are
    unpaired (their pair was cut by the process boundary); in the second call process 1 has no pair at all."""
    c = crit(use_sim=True, num_sim_points=30, sim_class_points=10, balance_window=2)  # every pixel: exact counts
    c.simnet = DotSimNet()
    feats = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    targets = [t for labels in SIM_CASES for t in sim_case(*labels)[0]]
    lo, hi = (0, 6) if rank is None else (3 * rank, 3 * rank + 3)
    history = []
    for refs in ([1, 0, 2, 3, 5, 4], [1, 0, 2, 3, 4, 5]):
        mine = [{**t, "ref": ref - lo} for t, ref in zip(targets[lo:hi], refs[lo:hi])]
        c.loss_sim({"pixel_features": feats[lo:hi]}, mine)
        history.append(c.balance_counts.clone())
    return history


def _one_balance_process(rank: int, world: int, rendezvous: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.save(_balance_history(rank), f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_with_odd_shares_hold_the_balance_counts_of_one_process(tmp_path):
    """The SimNet balance buffers count pairs over the whole batch: each process records the all-reduced counts
    (DDP would otherwise overwrite them with process 0's at the next forward), also in an iteration where a
    process has no pair of its own, which must still join the all-reduce."""
    single = _balance_history(None)
    assert single[0][0].sum() > 0 and single[1][1].sum() > 0
    run_two_gloo_processes(_one_balance_process, tmp_path)
    for rank in range(2):
        for got, want in zip(torch.load(tmp_path / f"{rank}.pt"), single):
            torch.testing.assert_close(got, want)
