"""SimFormer network and losses: tensors in, tensors and losses out (no files, no datasets)."""

from .backbone import build_backbone, load_backbone_state
from .criterion import SimFormerCriterion
from .matcher import HungarianMatcher
from .simformer import SimFormer, semantic_probs
from .simnet import SimNet

__all__ = ["SimFormer", "semantic_probs", "SimFormerCriterion", "HungarianMatcher", "SimNet", "build_backbone",
           "load_backbone_state"]
