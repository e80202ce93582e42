"""ResNet trunk giving the four FPN levels, with torchvision's module names so ImageNet state dicts load as is."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

_RESNETS = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34,
            "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
LEVELS = ("res2", "res3", "res4", "res5")


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    # frozen_bn suits pretrained statistics; from scratch it is an identity, so use bn or gn there.
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"unknown backbone norm {norm!r}; expected 'frozen_bn', 'bn' or 'gn'")


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc; forward returns res2..res5 at strides 4, 8, 16, 32."""

    def __init__(self, name: str = "resnet50", norm: str = "frozen_bn") -> None:
        super().__init__()
        if name not in _RESNETS:
            raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_RESNETS)}")
        net = _RESNETS[name](weights=None, norm_layer=_norm_layer(norm))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        res2 = net.fc.in_features // 8
        self.channels = {level: res2 * 2 ** i for i, level in enumerate(LEVELS)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for level, layer in zip(LEVELS, (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            out[level] = x
        return out


def build_backbone(name: str = "resnet50", norm: str = "frozen_bn") -> nn.Module:
    """Randomly initialised ResNet (never downloads); pass weights through load_backbone_state."""
    return ResNetBackbone(name, norm)


def load_backbone_state(backbone: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet state dict: fc.* is dropped, every other key and shape must match."""
    own = backbone.state_dict()
    given = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    # BatchNorm checkpoints carry num_batches_tracked, which frozen BN and GroupNorm lack (and vice versa).
    optional = {k for k in set(own) | set(given) if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(given) - optional)
    unexpected = sorted(set(given) - set(own) - optional)
    wrong = sorted(f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
                   for k in set(own) & set(given) if given[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                 if keys]
        raise ValueError("backbone weights do not fit this backbone (wrong depth or norm?): " + "; ".join(parts))
    backbone.load_state_dict({k: v for k, v in given.items() if k in own}, strict=False)
