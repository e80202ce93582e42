"""FPN pixel decoder (MaskFormer's BasePixelDecoder): per-pixel embeddings at stride 4."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's 'XavierFill' as detectron2 uses it: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _conv_gn(cin: int, cout: int, kernel: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.GroupNorm(32, cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class FPNPixelDecoder(nn.Module):
    """Top-down FPN over res5..res2 (GroupNorm 32); returns mask_features [B, mask_dim, H/4, W/4]."""

    def __init__(self, in_channels: dict[str, int], conv_dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        self.top = _conv_gn(in_channels["res5"], conv_dim, 3, relu=True)
        self.levels = ("res4", "res3", "res2")
        self.lateral = nn.ModuleDict({lv: _conv_gn(in_channels[lv], conv_dim, 1, relu=False) for lv in self.levels})
        self.output = nn.ModuleDict({lv: _conv_gn(conv_dim, conv_dim, 3, relu=True) for lv in self.levels})
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                c2_xavier_fill(m)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        y = self.top(features["res5"])
        for level in self.levels:
            lateral = self.lateral[level](features[level])
            # in place: the lateral map is fresh, and GroupNorm's backward reads its input, not this output
            y = self.output[level](lateral.add_(F.interpolate(y, size=lateral.shape[-2:], mode="nearest")))
        return self.mask_features(y)
