"""torchvision classification trunks giving the four FPN levels, with torchvision's module names so ImageNet state
dicts load as is. A family is one table entry: the constructor and which of its nodes give strides 4, 8, 16, 32."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import StochasticDepth, misc

LEVELS = ("res2", "res3", "res4", "res5")


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm computing in its input's dtype, as detectron2's does: under autocast, float32
    statistics would promote every backbone activation to float32 (measured on SimFormer-R50 under bf16: a step
    1.9x slower and 0.6 GiB more memory)."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + bias.reshape(1, -1, 1, 1).to(x.dtype)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]
    nodes: tuple[str, str, str, str]  # graph nodes whose outputs are res2..res5 (strides 4, 8, 16, 32)
    bn_eps: float | None = 1e-5  # the family's BatchNorm eps; None: it has no BatchNorm (ConvNeXt's LayerNorm)


_RESNET_NODES = ("layer1", "layer2", "layer3", "layer4")
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(models.resnet18, _RESNET_NODES),
    "resnet34": BackboneSpec(models.resnet34, _RESNET_NODES),
    "resnet50": BackboneSpec(models.resnet50, _RESNET_NODES),
    "resnet101": BackboneSpec(models.resnet101, _RESNET_NODES),
    # res5 is the final 1x1 conv to 1280 channels: ImageNet-trained, and cheap at stride 32.
    "mobilenet_v2": BackboneSpec(models.mobilenet_v2, ("features.3", "features.6", "features.13", "features.18")),
    "mobilenet_v3_large": BackboneSpec(partial(models.mobilenet_v3_large, dilated=False),
                                       ("features.3", "features.6", "features.12", "features.16"), bn_eps=1e-3),
    "efficientnet_b0": BackboneSpec(models.efficientnet_b0, ("features.2", "features.3", "features.5", "features.8"),
                                    bn_eps=1e-3),
    "convnext_tiny": BackboneSpec(models.convnext_tiny, ("features.1", "features.3", "features.5", "features.7"),
                                  bn_eps=None),
    "regnet_y_400mf": BackboneSpec(models.regnet_y_400mf, tuple(f"trunk_output.block{i}" for i in range(1, 5))),
}


def _norm_layer(norm: str, eps: float) -> Callable[[int], nn.Module]:
    # frozen_bn suits pretrained statistics; from scratch it is an identity, so use bn or gn there.
    if norm == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=eps)
    if norm == "bn":
        return partial(nn.BatchNorm2d, eps=eps)
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32 if channels % 32 == 0 else 8, channels, eps=eps)
    raise ValueError(f"unknown backbone norm {norm!r}; expected 'frozen_bn', 'bn' or 'gn'")


def build_backbone(name: str = "resnet50", norm: str = "frozen_bn") -> nn.Module:
    """Randomly initialised trunk (never downloads; pass weights through load_backbone_state) whose forward
    returns {res2..res5}; ``.channels`` gives each level's width. Its classifier head is not part of it."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    norm_layer = _norm_layer(norm, spec.bn_eps or 1e-5)  # checks norm even where the family ignores it
    net = spec.build(weights=None, **({} if spec.bn_eps is None else {"norm_layer": norm_layer}))
    # Norm layers stay leaves of the traced graph, so they keep their types (weight decay and tests look at them).
    trunk = create_feature_extractor(net, dict(zip(spec.nodes, LEVELS)),
                                     tracer_kwargs={"leaf_modules": [FrozenBatchNorm2d]})
    residual_adds_in_place(trunk)
    with torch.no_grad():
        trunk.eval()
        probe = trunk(torch.zeros(1, 3, 64, 64))
        trunk.train()
    for stride, level in zip((4, 8, 16, 32), LEVELS):
        if probe[level].shape[-1] != 64 // stride:
            raise AssertionError(f"{name}: node {spec.nodes[LEVELS.index(level)]} is not at stride {stride}")
    trunk.channels = {level: probe[level].shape[1] for level in LEVELS}
    return trunk


def load_backbone_state(backbone: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision classification state dict: keys of the dropped head (fc.*, classifier.*) are ignored,
    every other key and shape must match."""
    own = backbone.state_dict()
    given = {k: v for k, v in state_dict.items() if not k.startswith(("fc.", "classifier.", "head."))}
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


_BATCHNORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    """conv's weight and bias take bn's affine map (its running statistics: inference only)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


@torch.no_grad()
def fold_batchnorm(trunk: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, leaving an identity: the same function
    (to float rounding) without the passes over each activation map (frozen BatchNorm makes two). For a trunk in
    eval mode that will not train again; returns how many were folded.

    A pair is found in the traced graph (a conv node whose one user is a BatchNorm node) or inside a module the
    trace keeps whole (torchvision's Conv2dNormActivation: a Sequential of conv, norm, activation)."""
    if trunk.training:
        raise ValueError("fold_batchnorm needs a trunk in eval mode")
    # (conv, norm) by the norm's name: a Sequential the trace went through is found both ways, and folded once
    pairs: dict[str, tuple[nn.Conv2d, nn.Module]] = {}
    modules = dict(trunk.named_modules())
    graph = getattr(trunk, "graph", None)
    for node in graph.nodes if graph is not None else ():
        src = node.args[0] if node.op == "call_module" and node.args else None
        if (isinstance(modules.get(node.target), _BATCHNORMS) and getattr(src, "op", None) == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs[node.target] = modules[src.target], modules[node.target]
    for name, seq in modules.items():
        if isinstance(seq, nn.Sequential):
            children = list(seq.named_children())
            pairs |= {f"{name}.{b_name}": (a, b) for (_, a), (b_name, b) in zip(children, children[1:])
                      if isinstance(a, nn.Conv2d) and isinstance(b, _BATCHNORMS)}
    for name, (conv, bn) in pairs.items():
        _fold(conv, bn)
        trunk.set_submodule(name, nn.Identity())
    return len(pairs)


# Modules that write a new map, whose backward reads their input but never their output; and modules whose output
# may be their input itself (writing into one writes into the other).
_NEW_MAP = (nn.Conv2d, nn.GroupNorm, *_BATCHNORMS)
_PASS_THROUGH = (nn.Identity, nn.Dropout, StochasticDepth)


def _writes_new_map(module: nn.Module) -> bool:
    """A convolution or norm, or a Sequential that starts with one (torchvision's Conv2dNormActivation, whose later
    steps no one outside it reads)."""
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and _writes_new_map(module[0])
    return isinstance(module, _NEW_MAP)


def _owned_branch(node: object, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a new map (maybe through pass-through modules) that nothing else reads."""
    while isinstance(node, torch.fx.Node) and node.op == "call_module" and len(node.users) == 1:
        module = modules[node.target]
        if _writes_new_map(module):
            return True
        if not isinstance(module, _PASS_THROUGH) or len(node.args) != 1:
            return False
        node = node.args[0]
    return False


def _adds_in_place(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> int:
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not operator.add or node.kwargs or len(node.args) != 2:
            continue
        a, b = node.args
        target, other = (a, b) if _owned_branch(a, modules) else (b, a)
        if _owned_branch(target, modules):
            with graph.inserting_after(node):
                in_place = graph.call_method("add_", (target, other))
            node.replace_all_uses_with(in_place)
            graph.erase_node(node)
            count += 1
    graph.lint()
    return count


def residual_adds_in_place(trunk: nn.Module) -> int:
    """Make each traced residual ``a + b`` add into its branch when nothing else reads it, as torchvision's eager
    ``out += identity`` does (the trace made it out of place): a fresh activation map per block costs more than the
    addition itself. Autograd is unaffected, as in torchvision: no backward reads the branch's output. Both of a
    feature extractor's graphs (train and eval) change; returns how many additions run in place in each."""
    graphs = {id(g): g for g in (getattr(trunk, name, None) for name in ("graph", "train_graph", "eval_graph"))
              if isinstance(g, torch.fx.Graph)}
    modules = dict(trunk.named_modules())
    count = max((_adds_in_place(graph, modules) for graph in graphs.values()), default=0)
    if count:
        trunk.recompile()
    return count
