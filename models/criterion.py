"""SimFormer losses (spec §3): MaskFormer set loss on base masks, complementary loss for novel proposals,
SimNet training on base-involved pixel pairs, and distillation of SimNet similarities into novel scores.

Reads only the weak labels of each target: labels, masks/has_mask (all-False for novel), sem (base-only
map), pad, ref, novel_tags and tag_only (an image with tags and no mask, whose unknown pixels may be base). An
example image (its mask labels its novel classes too) comes with every class masked, sem showing them all and no
novel tag: the losses treat it as a labelled image.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from .constants import IGNORE, LOSS_KEYS
from .matcher import HungarianMatcher
from .point_sample import point_sample, uncertain_points
from .simnet import SimNet


def focal_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2) averaged over the points of each row: [M, P] -> [M]."""
    return sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="none").mean(1)


def dice_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """1 - (2|p.t| + 1) / (|p| + |t| + 1) per row: [M, P] -> [M]."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * labels).sum(1) + 1) / (prob.sum(1) + labels.sum(1) + 1)


def float32(outputs: dict) -> dict:
    """Network outputs (of a mixed-precision forward) as float32: the losses, their reductions, the SimNet teacher
    and the matcher's costs (scipy takes float32 or float64 only) need its range and precision."""
    return {k: [float32(a) for a in v] if k == "aux_outputs" else v.float() for k, v in outputs.items()}


def global_mean_count(count: Tensor) -> Tensor:
    """A normaliser that makes DDP (which averages gradients over processes) equal one process on the
    whole batch: the count summed over processes, divided by their number; at least 1."""
    count = count.detach().clone().float()
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world = dist.get_world_size()
    return count.clamp(min=1.0) / world


def sample_region(region: Tensor, k: int) -> Tensor:
    """Up to k distinct flat indices drawn uniformly from the True entries of region [N] (random score + top-k)."""
    k = min(k, int(region.sum()))
    return (torch.rand(region.shape, device=region.device) + region.float()).topk(k).indices


def class_log_probs(logits: Tensor, masks: Tensor) -> Tensor:
    """log of the inference scores S_c = sum_q p_q(c) sigmoid(m_q), normalised over the classes: [B, K, h*w]."""
    scores = torch.einsum("bqk,bqp->bkp", logits.softmax(-1)[..., :-1], masks.flatten(2).sigmoid())
    return (scores + 1e-6).log() - (scores.sum(1, keepdim=True) + 1e-6 * scores.shape[1]).log()


class SimFormerCriterion(nn.Module):
    """Holds the matcher and the SimNet (so SimNet parameters reach the optimiser via criterion.parameters())."""

    def __init__(self, num_classes: int, base_ids: list[int], novel_ids: list[int], *, mask_dim: int = 256,
                 no_object_weight: float = 0.1, ce_weight: float = 1.0, mask_weight: float = 20.0,
                 dice_weight: float = 1.0, comp_weight: float = 0.2, ignore_prior: float = 0.1,
                 sim_weight: float = 1.0, dist_weight: float = 0.1, dist_func: str = "bce",
                 dist_cross_image: bool = True, num_sim_points: int = 100, sim_class_points: int = 80,
                 num_dist_points: int = 100, use_sim: bool = True, use_dist: bool = True, use_comp: bool = True,
                 detach_sim_features: bool = True, num_points: int = 0, balance_window: int = 25,
                 simnet_width: int = 256, semantic_weight: float = 0.0, tag_weight: float = 0.0,
                 tag_topk: float = 0.1, tag_per_pixel: bool = False, dist_start: float = 0.0,
                 dist_warmup: float = 0.0) -> None:
        super().__init__()
        if dist_func not in ("bce", "cce"):
            raise ValueError(f"dist_func must be 'bce' or 'cce', got {dist_func!r}")
        if not 0 < ignore_prior < 1:
            raise ValueError("ignore_prior must lie in (0, 1)")
        self.num_classes, self.base_ids, self.novel_ids = num_classes, list(base_ids), list(novel_ids)
        self.ce_weight, self.mask_weight, self.dice_weight = ce_weight, mask_weight, dice_weight
        self.comp_weight, self.sim_weight, self.dist_weight = comp_weight, sim_weight, dist_weight
        self.semantic_weight, self.tag_weight, self.tag_topk = semantic_weight, tag_weight, tag_topk
        self.tag_per_pixel = tag_per_pixel
        self.dist_start, self.dist_warmup = dist_start, dist_warmup
        self.progress = 1.0  # fraction of the run done, set by the training loop: the distillation schedule reads it
        self.ignore_logit = math.log(ignore_prior / (1 - ignore_prior))
        self.dist_func, self.dist_cross_image = dist_func, dist_cross_image
        self.num_sim_points, self.sim_class_points = num_sim_points, sim_class_points
        self.num_dist_points = num_dist_points
        self.use_sim, self.use_dist, self.use_comp = use_sim, use_dist, use_comp
        self.detach_sim_features, self.num_points = detach_sim_features, num_points
        self.matcher = HungarianMatcher(cost_class=ce_weight, cost_mask=mask_weight, cost_dice=dice_weight,
                                        num_points=num_points)
        self.simnet = SimNet(mask_dim, simnet_width) if (use_sim or use_dist) else None
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)
        # positive/negative pair counts of the last balance_window iterations, saved with the checkpoint
        self.register_buffer("balance_counts", torch.zeros(balance_window, 2))
        self.register_buffer("balance_step", torch.zeros((), dtype=torch.long))

    # ---------------------------------------------------------------- set losses (every decoder layer)

    def loss_labels(self, logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]]) -> Tensor:
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        for b, (q, t) in enumerate(indices):
            classes[b, q.to(logits.device)] = targets[b]["labels"][t.to(logits.device)]
        loss = F.cross_entropy(logits.transpose(1, 2), classes, weight=self.class_weight, reduction="sum")
        return loss / global_mean_count(self.class_weight[classes].sum())

    def _pred_vs_target(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Mask logits [M, h, w] and targets [M, H, W] -> matching rows [M, P]: full resolution or sampled points."""
        target = target.to(pred.dtype)
        if not self.num_points:
            up = F.interpolate(pred[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)
            return up.flatten(1), target.flatten(1)
        coords = uncertain_points(pred[:, None].detach(), self.num_points)
        return point_sample(pred[:, None], coords)[:, 0], point_sample(target[:, None], coords)[:, 0]

    def loss_masks(self, masks: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                   num_masks: float) -> tuple[Tensor, Tensor]:
        preds, gts = [], []
        for b, (q, t) in enumerate(indices):
            keep = targets[b]["has_mask"][t.to(masks.device)].cpu()
            preds.append(masks[b, q[keep].to(masks.device)])
            gts.append(targets[b]["masks"][t[keep].to(masks.device)])
        pred, gt = torch.cat(preds), torch.cat(gts)
        if not len(pred):
            zero = masks.sum() * 0.0
            return zero, zero
        logits, labels = self._pred_vs_target(pred, gt)
        return focal_loss(logits, labels).sum() / num_masks, dice_loss(logits, labels).sum() / num_masks

    def loss_comp(self, masks: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Union of novel-matched proposals (floored at the 'ignore' logit) must cover the not-base, not-pad area."""
        losses = []
        for b, (q, t) in enumerate(indices):
            target = targets[b]
            # a tag-only image's unknown pixels may be base: "covered by the maskless targets" would make every
            # tagged class's proposal cover the whole image (measured: base mIoU collapses), so it has no term here
            if target["has_mask"].all() or target.get("tag_only"):
                continue
            novel = masks[b, q[~target["has_mask"].cpu()[t]].to(masks.device)]  # [n, h, w]
            not_base = ((target["sem"] == IGNORE) & ~target["pad"]).to(masks.dtype)
            if self.num_points:
                coords = uncertain_points(self._union(novel.detach())[None], self.num_points)
                pred = point_sample(novel[None], coords)[0] if len(novel) else novel.new_zeros(0, self.num_points)
                labels = point_sample(not_base[None, None], coords)[0]
            else:
                size = not_base.shape
                pred = F.interpolate(novel[None], size=size, mode="bilinear", align_corners=False)[0].flatten(1) \
                    if len(novel) else novel.new_zeros(0, size[0] * size[1])
                labels = not_base.flatten()[None]
            union = self._union(pred)
            losses.append(self.mask_weight * focal_loss(union, labels) + self.dice_weight * dice_loss(union, labels))
        count = global_mean_count(torch.tensor(float(len(losses)), device=masks.device))
        return torch.cat(losses).sum() / count if losses else masks.sum() * 0.0

    def _union(self, logits: Tensor) -> Tensor:
        """Max over proposals and the constant 'ignore' row ([n, ...] -> [1, ...]); max commutes with sigmoid."""
        return torch.cat((logits, logits.new_full((1, *logits.shape[1:]), self.ignore_logit))).amax(0, keepdim=True)

    def loss_semantic(self, logits: Tensor, masks: Tensor, targets: list[dict]) -> Tensor:
        """Cross-entropy of the inference scores S_c = sum_q p_q(c) sigmoid(m_q), normalised over classes, on every
        pixel a mask labels (base pixels in weak-shot training, all in the oracle), on the mask grid.

        The set loss teaches a class only through the query matched to it; this gives the class head the dense
        per-pixel signal a per-pixel segmenter has, which rare classes lack (measured on MSRC: see the README).
        """
        size = masks.shape[-2:]
        labels = []
        for target in targets:
            label = torch.full(target["pad"].shape, IGNORE, dtype=torch.long, device=masks.device)
            for c, m in zip(target["labels"][target["has_mask"]], target["masks"][target["has_mask"]]):
                label[m.to(masks.device)] = int(c)
            labels.append(F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long())
        labels = torch.stack(labels).flatten(1)  # [B, hw]
        known = labels != IGNORE
        count = global_mean_count(known.sum())  # a collective under DDP: every process calls it, pixels or not
        if not known.any():
            return (logits.sum() + masks.sum()) * 0.0
        log_p = class_log_probs(logits, masks)
        nll = -log_p.gather(1, labels.clamp(max=log_p.shape[1] - 1)[:, None])[:, 0]
        return nll[known].sum() / count

    def loss_tags(self, logits: Tensor, masks: Tensor, targets: list[dict]) -> Tensor:
        """Image tags on the inference scores, in each image's not-base region (unknown, not padding).

        Partial-label term: every such pixel belongs to one of the image's maskless targets (its novel tags; all
        tags on a tag-only image), so untagged classes, base ones included, are pushed down there. Present term
        (multiple-instance pooling): each of those classes must win somewhere, as the mean log-probability of its
        top ``tag_topk`` fraction of the region. Unlike the complementary and distillation losses, both change if
        two novel names are swapped.

        ``tag_per_pixel`` averages the partial-label term over the image's pixels rather than its region, so a small
        region weighs what its pixels do in the dense cross-entropy beside it, not as much as a whole image.
        """
        sem, pad = self._low_res(targets, masks.shape[-2:])
        log_p = class_log_probs(logits, masks)  # [B, K, hw]
        partial, present = [], []
        for b, target in enumerate(targets):
            region = (sem[b] == IGNORE) & ~pad[b]
            tagged = target["labels"][~target["has_mask"]].to(log_p.device)
            if not region.any() or not len(tagged):
                continue
            lp = log_p[b][:, region]  # [K, n]
            share = region.sum() / (~pad[b]).sum() if self.tag_per_pixel else 1.0
            partial.append(-lp[tagged].logsumexp(0).mean() * share)
            k = max(1, math.ceil(self.tag_topk * lp.shape[1]))
            present.append(-lp[tagged].topk(k, dim=1).values.mean(1))
        count = global_mean_count(torch.tensor(float(len(partial)), device=masks.device))  # every process calls it
        if not partial:
            return (logits.sum() + masks.sum()) * 0.0
        return (torch.stack(partial).sum() + torch.cat(present).sum()) / count

    # ---------------------------------------------------------------- pixel-pair losses (final layer only)

    @staticmethod
    def _low_res(targets: list[dict], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Base-only map and padding, nearest-downsampled to the feature grid and flattened: [B, hw] each."""
        sem = torch.stack([t["sem"] for t in targets])[:, None].float()
        pad = torch.stack([t["pad"] for t in targets])[:, None].float()
        sem = F.interpolate(sem, size=size, mode="nearest").flatten(1).long()
        pad = F.interpolate(pad, size=size, mode="nearest").flatten(1).bool()
        return torch.where(pad, IGNORE, sem), pad

    def _sim_points(self, sem_i: Tensor, pad_i: Tensor, sem_j: Tensor, pad_j: Tensor) -> tuple[Tensor, Tensor]:
        """Flat point indices for an image pair: sim_class_points from one random shared base class (any base
        pixel if none is shared), the rest from non-pad pixels outside it; fewer where a region is smaller."""
        base_i, base_j = sem_i != IGNORE, sem_j != IGNORE
        classes_i = sem_i[base_i].unique()
        common = classes_i[torch.isin(classes_i, sem_j[base_j].unique())]
        if len(common):
            c = common[torch.randint(len(common), ())]
            region_i, region_j = sem_i == c, sem_j == c
        else:
            region_i, region_j = base_i, base_j
        rest = self.num_sim_points - self.sim_class_points
        points_i = torch.cat((sample_region(region_i, self.sim_class_points), sample_region(~pad_i & ~region_i, rest)))
        points_j = torch.cat((sample_region(region_j, self.sim_class_points), sample_region(~pad_j & ~region_j, rest)))
        return points_i, points_j

    def _balance_weights(self, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """w_pos = negative share, w_neg = positive share of pairs over the last balance_window iterations.

        The counts are summed over processes (a collective: every process calls this each iteration), so every
        process's buffers equal one process's on the whole batch, and DDP's buffer broadcast changes nothing; an
        iteration without a known pair anywhere is not recorded.
        """
        with torch.no_grad():
            counts = torch.stack((pos, neg)).float()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            if counts.sum() > 0:
                slot = int(self.balance_step) % len(self.balance_counts)
                self.balance_counts[slot] = counts
                self.balance_step += 1
            pos_total, neg_total = self.balance_counts.sum(0)
            total = pos_total + neg_total
        return neg_total / total, pos_total / total

    def loss_sim(self, outputs: dict, targets: list[dict]) -> Tensor:
        """Balanced BCE of SimNet on cross-image pixel pairs whose same/different label is known."""
        feats = outputs["pixel_features"]
        if self.detach_sim_features:
            feats = feats.detach()
        feats = feats.flatten(2)
        sem, pad = self._low_res(targets, outputs["pixel_features"].shape[-2:])
        grids, same, valid = [], [], []
        for i, target in enumerate(targets):
            j = int(target["ref"])
            if j == i or target.get("tag_only") or targets[j].get("tag_only"):  # no pixel pair of theirs is known
                continue
            pi, pj = self._sim_points(sem[i], pad[i], sem[j], pad[j])
            li, lj = sem[i, pi], sem[j, pj]
            grids.append((feats[i][:, pi].T, feats[j][:, pj].T))
            same.append((li[:, None] == lj[None, :]).flatten())
            valid.append(((li != IGNORE)[:, None] | (lj != IGNORE)[None, :]).flatten())  # base vs anything is known
        valid = torch.cat(valid) if grids else torch.zeros(0, dtype=torch.bool, device=feats.device)
        same = torch.cat(same)[valid] if grids else valid
        pos = same.sum()
        w_pos, w_neg = self._balance_weights(pos, same.numel() - pos)
        if not valid.any():
            return sum((p.sum() * 0.0 for p in self.simnet.parameters()), outputs["pixel_features"].sum() * 0.0)
        # every grid pair goes through SimNet (its BatchNorm sees the whole grid, as in the release); the loss
        # keeps the valid ones
        log_p = self.simnet.grid_logits(grids).log_softmax(-1)[valid]
        return -torch.where(same, w_pos * log_p[:, 1], w_neg * log_p[:, 0]).mean()

    def loss_dist(self, outputs: dict, targets: list[dict]) -> Tensor:
        """Student: ReLU(cos) of novel-class score vectors; teacher: SimNet on the same (cross-image) pixel pairs."""
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        zero = (logits.sum() + masks.sum()) * 0.0
        feats = outputs["pixel_features"].detach().flatten(2)
        sem, pad = self._low_res(targets, masks.shape[-2:])
        unknown = (sem == IGNORE) & ~pad
        pairs = [(i, int(t["ref"])) for i, t in enumerate(targets)
                 if int(t["ref"]) != i and torch.isin(t["novel_tags"], targets[int(t["ref"])]["novel_tags"]).any()]
        if not pairs or not self.novel_ids:
            return zero
        novel = torch.as_tensor(self.novel_ids, device=logits.device)
        scores = torch.einsum("bqn,bqp->bnp", logits.softmax(-1)[..., novel], masks.flatten(2).sigmoid())
        grids, student = [], []
        for i, j in pairs:
            k = min(self.num_dist_points, int(unknown[i].sum()), int(unknown[j].sum()))
            if k == 0:
                continue
            pi, pj = sample_region(unknown[i], k), sample_region(unknown[j], k)
            grids.append((feats[i][:, pi].T, feats[j][:, pj].T))
            si = F.normalize(scores[i][:, pi].T, dim=1)
            sj = F.normalize(scores[j][:, pj].T, dim=1) if self.dist_cross_image else si
            student.append((si @ sj.T).relu().flatten())
        if not student:
            return zero
        with torch.no_grad():
            teacher = self.simnet.grid_logits(grids).softmax(-1)[:, 1]
        s = torch.cat(student)
        if self.dist_func == "bce":
            s = s.clamp(0.01, 0.99)
            return -(teacher * s.log() + (1 - teacher) * (1 - s).log()).mean()
        return (-(teacher - 0.5).relu() * torch.log1p(s) - (0.5 - teacher).relu() * torch.log(2 - s)).mean()

    def dist_ramp(self) -> float:
        """0 for the first dist_start of the run, then linear up to 1 over the next dist_warmup (fractions of the
        run): a teacher that has not learnt yet would fix an arbitrary name-to-region assignment before the tags
        can."""
        if self.progress < self.dist_start:
            return 0.0
        return min(1.0, (self.progress - self.dist_start) / self.dist_warmup) if self.dist_warmup else 1.0

    # ---------------------------------------------------------------- total

    def _num_masks(self, targets: list[dict], device: torch.device, num_masks: float | None) -> float:
        if num_masks is None:
            count = torch.tensor(float(sum(int(t["has_mask"].sum()) for t in targets)), device=device)
            return float(global_mean_count(count))
        return max(num_masks, 1.0)

    def forward(self, outputs: dict, targets: list[dict], num_masks: float | None = None) -> dict[str, Tensor]:
        """Weighted losses (ce/mask/dice/sem/tags/comp summed over final + aux layers; sim/dist final only), and sum.

        num_masks overrides the batch count of has-mask targets (the normaliser of mask and dice losses);
        left None it is all-reduced when torch.distributed is initialised.
        """
        with torch.autocast(outputs["pred_logits"].device.type, enabled=False):
            return self._losses(float32(outputs), targets, num_masks)

    def _losses(self, outputs: dict, targets: list[dict], num_masks: float | None) -> dict[str, Tensor]:
        num_masks = self._num_masks(targets, outputs["pred_logits"].device, num_masks)
        zero = outputs["pred_logits"].sum() * 0.0
        losses = dict.fromkeys(LOSS_KEYS, zero)
        for layer in [outputs, *outputs.get("aux_outputs", [])]:
            indices = self.matcher(layer, targets)  # matched per decoder layer
            focal, dice = self.loss_masks(layer["pred_masks"], targets, indices, num_masks)
            terms = {"loss_ce": self.ce_weight * self.loss_labels(layer["pred_logits"], targets, indices),
                     "loss_mask": self.mask_weight * focal, "loss_dice": self.dice_weight * dice}
            if self.semantic_weight:
                terms["loss_sem"] = self.semantic_weight * self.loss_semantic(layer["pred_logits"],
                                                                             layer["pred_masks"], targets)
            if self.tag_weight:
                terms["loss_tags"] = self.tag_weight * self.loss_tags(layer["pred_logits"], layer["pred_masks"],
                                                                      targets)
            if self.use_comp:
                terms["loss_comp"] = self.comp_weight * self.loss_comp(layer["pred_masks"], targets, indices)
            for key, value in terms.items():
                losses[key] = losses[key] + value
        if self.use_sim:
            losses["loss_sim"] = self.sim_weight * self.loss_sim(outputs, targets)
        if self.use_dist:
            losses["loss_dist"] = self.dist_weight * self.dist_ramp() * self.loss_dist(outputs, targets)
        losses["loss"] = sum(losses[k] for k in LOSS_KEYS)
        return losses
