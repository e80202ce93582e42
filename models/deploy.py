"""The network as one deployable function: an RGB batch in, per-class scores at its size out (for ONNX and
TorchScript export, which keep no Python around the model)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .constants import STRIDE
from .simformer import SimFormer, semantic_probs


class Segmenter(nn.Module):
    """images [B, 3, H, W], RGB in 0..255 (uint8 or float) -> scores [B, K, H, W] (the semantic_probs sum over
    queries, times the per-class ``scale``: a checkpoint's novel-score calibration) and labels [B, H, W] (int64).
    Normalisation and padding to the network's stride happen inside; H and W may be any size."""

    def __init__(self, model: SimFormer, mean: Tensor, std: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float())
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).float())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h, w = images.shape[-2:]
        x = (images.float() - self.mean) / self.std
        x = F.pad(x, (0, (STRIDE - w % STRIDE) % STRIDE, 0, (STRIDE - h % STRIDE) % STRIDE))
        out = self.model(x)
        scores = semantic_probs(out["pred_logits"], out["pred_masks"], x.shape[-2:])[..., :h, :w] * self.scale
        return scores, scores.argmax(1)
