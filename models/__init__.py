"""SimFormer network and losses: tensors in, tensors and losses out (no files, no datasets).

The network names load on first use, so the data layer reads IGNORE (splitting a dataset) without importing torch.
"""

from importlib import import_module

from .constants import IGNORE, LOSS_KEYS, STRIDE

_HOMES = {"SimFormer": "simformer", "semantic_probs": "simformer", "SimFormerCriterion": "criterion",
          "HungarianMatcher": "matcher", "SimNet": "simnet", "build_backbone": "backbone",
          "load_backbone_state": "backbone", "fold_batchnorm": "backbone",
          "residual_adds_in_place": "backbone"}

__all__ = ["IGNORE", "LOSS_KEYS", "STRIDE", *_HOMES]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
