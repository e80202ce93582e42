"""Hungarian matching of queries to targets (spec §2): class cost for all, mask costs only for base targets."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.nn import functional as F

from .point_sample import point_sample, uniform_points


def pairwise_focal_dice(logits: Tensor, labels: Tensor, alpha: float = 0.25,
                        gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Focal (mean over points) and dice (+1 smoothing) cost of every prediction [Q, P] vs every target [T, P]."""
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * F.softplus(-logits)
    neg = (1 - alpha) * prob ** gamma * F.softplus(logits)
    focal = (pos @ labels.T + neg @ (1 - labels).T) / logits.shape[1]
    dice = 1 - (2 * prob @ labels.T + 1) / (prob.sum(1)[:, None] + labels.sum(1)[None, :] + 1)
    return focal, dice


class HungarianMatcher:
    """One-to-one query/target assignment per image; returns (query idx, target idx) into that image's targets."""

    def __init__(self, *, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0,
                 num_points: int = 0) -> None:
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, masks: Tensor, target: dict) -> Tensor:
        """[Q, T] cost for one image: logits [Q, K+1], mask logits [Q, h, w]."""
        cost = -self.cost_class * logits.float().softmax(-1)[:, target["labels"]]  # float32: scipy takes no bf16
        has_mask = target["has_mask"]
        if has_mask.any():
            tgt = target["masks"][has_mask].float()
            if self.num_points:
                pred = masks[None].float()
                coords = uniform_points(1, self.num_points, pred)
                pred = point_sample(pred, coords)[0]
                tgt = point_sample(tgt[None], coords)[0]
            else:
                pred = masks.flatten(1).float()
                tgt = F.interpolate(tgt[None], size=masks.shape[-2:], mode="nearest")[0].flatten(1)
            focal, dice = pairwise_focal_dice(pred, tgt)
            cost[:, has_mask] += self.cost_mask * focal + self.cost_dice * dice
        return cost

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        indices = []
        for logits, masks, target in zip(outputs["pred_logits"], outputs["pred_masks"], targets):
            # Diverged outputs still get matched, so that the loss, not scipy, reports them (naming the term).
            cost = torch.nan_to_num(self.cost_matrix(logits, masks, target), nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return indices
