"""SimFormer network: MaskFormer whose classifier covers base and novel classes (spec §1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .backbone import build_backbone
from .pixel_decoder import FPNPixelDecoder, c2_xavier_fill
from .transformer import PositionEmbeddingSine, TransformerDecoder


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class SimFormer(nn.Module):
    """Backbone -> FPN mask features; res5 -> transformer decoder -> per-query class logits and mask embeddings.

    The FPN width equals mask_dim. Input H and W must be multiples of STRIDE, 32 (the caller pads).
    With ``masked_attention`` (Mask2Former's lever for fast convergence) queries start from learnt features, each
    layer's cross-attention only sees where the previous prediction's mask is above 0.5, and the prediction made
    before the first layer is supervised too; the split into proposal classes and proposal masks is unchanged.
    """

    def __init__(self, num_classes: int, *, backbone: str = "resnet50", backbone_norm: str = "frozen_bn",
                 num_queries: int = 100, hidden_dim: int = 256, mask_dim: int = 256, dec_layers: int = 6,
                 nheads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
                 transformer_in: str = "res5", masked_attention: bool = False) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError("hidden_dim must be even (half of it encodes y, half x)")
        self.num_classes = num_classes
        self.backbone = build_backbone(backbone, backbone_norm)
        self.pixel_decoder = FPNPixelDecoder(self.backbone.channels, conv_dim=mask_dim, mask_dim=mask_dim)
        self.transformer_in = transformer_in  # res5 (the paper); res4 gives small images a usable token grid
        self.input_proj = nn.Conv2d(self.backbone.channels[transformer_in], hidden_dim, 1)
        c2_xavier_fill(self.input_proj)
        self.pos_embed = PositionEmbeddingSine(hidden_dim // 2)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.nheads, self.masked_attention = nheads, masked_attention
        self.query_feat = nn.Embedding(num_queries, hidden_dim) if masked_attention else None
        self.decoder = TransformerDecoder(hidden_dim, nheads, dec_layers, dim_feedforward, dropout)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, images: Tensor) -> dict:
        """images [B, 3, H, W] normalised -> pred_logits [B,Q,K+1], pred_masks [B,Q,H/4,W/4] (logits),
        aux_outputs (first L-1 decoder layers; in eval mode none without masked attention), pixel_features
        [B, mask_dim, H/4, W/4]."""
        features = self.backbone(images)
        mask_features = self.pixel_decoder(features)
        src = self.input_proj(features[self.transformer_in])
        pos = self.pos_embed(src)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(images.shape[0], -1, -1)
        memory, pos = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)
        if self.masked_attention:
            logits, masks = self._masked_decoder(memory, pos, query_pos, mask_features, tuple(src.shape[-2:]))
        else:
            hs = self.decoder(memory, pos, query_pos)
            if not self.training:  # inference reads the last layer alone: no masks for the others (a sixth of r50's)
                hs = hs[-1:]
            logits = self.class_embed(hs)
            masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
            # unbind, not indexing: each index's backward would write a zero tensor the size of the whole stack
            logits, masks = logits.unbind(0), masks.unbind(0)
        return {
            "pred_logits": logits[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": a, "pred_masks": b} for a, b in zip(logits[:-1], masks[:-1])],
            "pixel_features": mask_features,
        }

    def _masked_decoder(self, memory: Tensor, pos: Tensor, query_pos: Tensor, mask_features: Tensor,
                        grid: tuple[int, int]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-layer (logits, masks), the prediction before the first layer included; each layer attends within the
        mask the one before it predicted (a query whose mask is empty there attends everywhere)."""
        tgt = self.query_feat.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        logits, masks = [], []
        for layer in [*self.decoder.layers, None]:
            h = self.decoder.norm(tgt)
            logits.append(self.class_embed(h))
            masks.append(torch.einsum("bqc,bchw->bqhw", self.mask_embed(h), mask_features))
            if layer is None:
                break
            with torch.no_grad():
                low = F.interpolate(masks[-1], size=grid, mode="bilinear", align_corners=False).flatten(2) < 0
                low[low.all(-1)] = False
            tgt = layer(tgt, memory, pos, query_pos, low.repeat_interleave(self.nheads, 0))
        return logits, masks


def semantic_probs(pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-class scores [B, K, h, w] = sum_q softmax(cls_q)[:K] * sigmoid(mask_q), at mask resolution, then
    upsampled to `size`.

    The order of transformers' post-processing, not MaskFormer's repository (which upsamples the mask logits before
    the sigmoid): it resizes K class maps instead of Q mask logits and takes the sigmoid at a sixteenth of the
    pixels, which cut 30% of an MSRC evaluation at mIoU within 0.2 on three checkpoints (benchmarks/README.md).
    """
    probs = torch.einsum("bqk,bqhw->bkhw", pred_logits.softmax(-1)[..., :-1], pred_masks.sigmoid())
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs
