"""Inference: class scores at the original resolution, and evaluation over a loader."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import semantic_probs
from weakshot_cli.engine.metrics import compute_metrics, confusion


@torch.no_grad()
def class_scores(model: nn.Module, images: torch.Tensor, sizes: list[tuple[int, int]],
                 out_sizes: list[tuple[int, int]], flip: bool = False) -> list[torch.Tensor]:
    """Per image [K, H, W] scores at ``out_sizes``: sum over queries of class prob x mask prob,
    computed at the padded input size, cropped to the valid region, then resized bilinearly."""
    out = model(images)
    probs = semantic_probs(out["pred_logits"], out["pred_masks"], tuple(images.shape[-2:]))
    if flip:
        out_f = model(images.flip(-1))
        probs = (probs + semantic_probs(out_f["pred_logits"], out_f["pred_masks"], tuple(images.shape[-2:])).flip(-1)) / 2
    results = []
    for p, (h, w), size in zip(probs.float(), sizes, out_sizes):
        p = p[:, :h, :w]
        if (h, w) != tuple(size):
            p = F.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0]
        results.append(p)
    return results


def evaluate_loader(model: nn.Module, loader, num_classes: int, base: list[int], novel: list[int],
                    device: torch.device, autocast, progress=None) -> tuple[dict, np.ndarray]:
    """One confusion matrix over the loader at original resolution; ``progress(n)`` per batch."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for batch in loader:
        with autocast():
            scores = class_scores(model, batch["image"].to(device), batch["sizes"],
                                  [tuple(label.shape) for label in batch["labels"]])
        for s, label in zip(scores, batch["labels"]):
            cm += confusion(s.argmax(0).cpu(), label, num_classes)
        if progress is not None:
            progress(len(batch["labels"]))
    model.train(was_training)
    return compute_metrics(cm.numpy(), base, novel), cm.numpy()
