"""DETR-style transformer decoder (no encoder, post-norm) and the sine positional encoding it reads."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PositionEmbeddingSine(nn.Module):
    """Normalised sine/cosine encoding of (y, x), num_feats per axis; no padding mask (the spec uses none)."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_feats, self.temperature, self.scale = num_feats, temperature, scale

    def _axis(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        pos = torch.arange(1, n + 1, device=device, dtype=dtype) / (n + 1e-6) * self.scale
        i = torch.arange(self.num_feats, device=device, dtype=dtype)
        angles = pos[:, None] / self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_feats)
        # even features take sin, odd ones cos, interleaved as in DETR
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)  # [n, num_feats]

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, 2*num_feats, H, W]."""
        b, _, h, w = x.shape
        y = self._axis(h, x.device, x.dtype)[:, None, :].expand(h, w, -1)
        xx = self._axis(w, x.device, x.dtype)[None, :, :].expand(h, w, -1)
        return torch.cat((y, xx), dim=2).permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)


class DecoderLayer(nn.Module):
    """Post-norm: self-attn -> add&LN -> cross-attn -> add&LN -> FFN -> add&LN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,
                memory_mask: Tensor | None = None) -> Tensor:
        """memory_mask [B*nheads, Q, HW], True where a query may not look (Mask2Former's masked attention)."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, attn_mask=memory_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.drop3(ffn))


class TransformerDecoder(nn.Module):
    """Queries start at zero, carry query_pos, and read the flattened res5 memory; every layer is returned."""

    def __init__(self, d_model: int = 256, nheads: int = 8, num_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nheads, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """memory, pos: [B, HW, C]; query_pos: [B, Q, C] -> [L, B, Q, C] (shared final LayerNorm on each)."""
        tgt = torch.zeros_like(query_pos)
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            outs.append(self.norm(tgt))
        return torch.stack(outs)
