"""Point sampling shared by the matcher and the mask losses (num_points > 0, Mask2Former-style)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read of inputs [N, C, H, W] at coords [N, P, 2] ((x, y) in [0, 1]) -> [N, C, P].

    align_corners=False makes a coordinate address the same spot at any resolution, so predictions at
    H/4 and targets at H agree; border padding keeps the outer half-pixel from fading towards zero.
    """
    grid = coords.unsqueeze(2) * 2 - 1
    return F.grid_sample(inputs, grid, align_corners=False, padding_mode="border").squeeze(3)


def uniform_points(n: int, num_points: int, like: Tensor) -> Tensor:
    """Uniform coords [n, P, 2] with the dtype and device of `like` (grid_sample wants them to agree)."""
    return torch.rand(n, num_points, 2, device=like.device, dtype=like.dtype)


@torch.no_grad()
def uncertain_points(logits: Tensor, num_points: int, oversample: float = 3.0, importance: float = 0.75) -> Tensor:
    """Coords [N, P, 2] concentrated where logits [N, 1, H, W] are near 0 (uncertainty -|logit|), plus uniform ones."""
    n = logits.shape[0]
    candidates = uniform_points(n, int(num_points * oversample), logits)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    num_important = int(importance * num_points)
    top = uncertainty.topk(num_important, dim=1).indices
    chosen = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    return torch.cat((chosen, uniform_points(n, num_points - num_important, logits)), dim=1)
