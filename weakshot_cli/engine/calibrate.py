"""Novel-score calibration: one factor on the novel classes' inference scores, chosen from base masks alone; and,
where the dataset has example masks of novel classes, a factor per novel class chosen on them.

Weak-shot training over-predicts the novel classes where no tag says otherwise, at test time: pixels of rare base
classes that look like a novel one are called novel (docs/method.md has the measurements). The factor is chosen
on the training split's own weak labels:
the mean IoU over the base classes and one "unknown" class (every pixel the masks leave unlabelled; a novel
prediction counts as it). Novel classes are one class there, so no novel name is read, and one factor on all of
them cannot change which novel class wins a pixel: only whether a base class beats them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from models import IGNORE
from weakshot_cli.data.dataset import EvalDataset, collate_eval
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.engine.inference import class_scores
from weakshot_cli.engine.metrics import compute_metrics, confusion

FACTORS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05)
# per novel class, on top of FACTORS' choice, where example masks say which class the model over- or under-calls
CLASS_FACTORS = (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1)


def _scored(model: nn.Module, m: Manifest, indices: list[int], imgsz: int, device: torch.device,
            autocast: Callable[[], torch.autocast], max_images: int,
            batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(class scores [K, H, W] float32 on the CPU, label [H, W]) of up to ``max_images`` of the training images
    ``indices`` (evenly spread), the model in eval mode meanwhile."""
    picked = indices[::max(1, math.ceil(len(indices) / max_images))]
    loader = DataLoader(Subset(EvalDataset(m, "train", imgsz or None), picked), batch_size=batch,
                        collate_fn=collate_eval)
    was_training = model.training
    model.eval()
    try:
        for b in loader:
            with autocast():
                scores = class_scores(model, b["image"].to(device), b["sizes"],
                                      [tuple(x.shape) for x in b["labels"]])
            yield from ((s.float().cpu(), label.long()) for s, label in zip(scores, b["labels"]))
    finally:
        model.train(was_training)


@torch.no_grad()
def choose_novel_scale(model: nn.Module, m: Manifest, imgsz: int, device: torch.device,
                       autocast: Callable[[], torch.autocast], max_images: int = 200,
                       batch: int = 4) -> tuple[float, dict[float, float]]:
    """The factor in FACTORS with the best base-vs-unknown mIoU on up to ``max_images`` masked training images
    (evenly spread), the larger one on a tie; and that mIoU for every factor. Tag-only images are left out: their
    unknown pixels may be base."""
    masked = [i for i, item in enumerate(m.splits["train"]) if item.label is not None]
    k = len(m.classes)
    base, novel = torch.tensor(m.base, dtype=torch.long), torch.tensor(m.novel, dtype=torch.long)
    merged = torch.full((256,), k, dtype=torch.long)  # every label but a base class is "unknown" (k)
    merged[base] = base
    counts = {f: torch.zeros(k + 1, k + 1, dtype=torch.long) for f in FACTORS}
    for s, label in _scored(model, m, masked, imgsz, device, autocast, max_images, batch):
        gt = merged[label]
        # a factor only decides, per pixel, between the best base class and the best novel one ("unknown");
        # an exact tie goes to the lower class id, as an argmax over the scaled scores would give it
        base_best, base_at = s[base].max(0)
        novel_best, novel_at = s[novel].max(0)
        base_id, novel_first = base[base_at], novel[novel_at] < base[base_at]
        for f in FACTORS:
            scaled = novel_best * f
            novel_wins = (scaled > base_best) | ((scaled == base_best) & novel_first)
            counts[f] += confusion(torch.where(novel_wins, k, base_id), gt, k + 1)
    miou = {f: compute_metrics(cm.numpy(), [*m.base, k], [])["base_mIoU"] for f, cm in counts.items()}
    best = max(FACTORS, key=lambda f: (miou[f], f))
    return best, miou


@torch.no_grad()
def choose_class_scales(model: nn.Module, m: Manifest, imgsz: int, device: torch.device,
                        autocast: Callable[[], torch.autocast], factor: float, max_images: int = 40,
                        pixels: int = 20_000, batch: int = 4) -> dict[str, float]:
    """Per novel class, a factor from CLASS_FACTORS on its scores (times ``factor``, the one for all novel classes),
    chosen on up to ``max_images`` example images (masks that label novel classes: all their pixels are truth) by
    coordinate ascent on their mIoU, two passes, 1 kept on a tie; the classes whose factor is not 1, by name; {}
    without examples. Tags that never differ cannot say which of two classes the model over-calls (CamVid's car
    and sign_symbol); a few example masks can. Up to ``pixels`` labelled pixels per image are kept (a fixed draw),
    each as its best base class and the novel classes' scores, so memory stays small whatever the image size."""
    examples = [i for i, item in enumerate(m.splits["train"]) if item.example]
    if not examples:
        return {}
    base, novel = torch.tensor(m.base, dtype=torch.long), torch.tensor(m.novel, dtype=torch.long)
    draw = torch.Generator().manual_seed(0)
    kept: list[tuple[torch.Tensor, ...]] = []  # per image: best base score, its class, novel scores [n, P], truth
    for s, label in _scored(model, m, examples, imgsz, device, autocast, max_images, batch):
        s, gt = s.flatten(1), label.flatten()
        at = torch.nonzero(gt != IGNORE).squeeze(1)
        at = at[torch.randperm(len(at), generator=draw)[:pixels]]
        base_best, base_at = s[base][:, at].max(0)
        kept.append((base_best, base[base_at], s[novel][:, at], gt[at]))
    k = len(m.classes)

    def miou(chosen: dict[int, float]) -> float:
        scale = torch.tensor([factor * chosen[c] for c in m.novel])[:, None]
        cm = torch.zeros(k, k, dtype=torch.long)
        for base_best, base_id, novel_scores, gt in kept:
            novel_best, novel_at = (novel_scores * scale).max(0)
            novel_id = novel[novel_at]
            # an exact tie goes to the lower class id, as an argmax over all scaled scores would give it
            novel_wins = (novel_best > base_best) | ((novel_best == base_best) & (novel_id < base_id))
            cm += confusion(torch.where(novel_wins, novel_id, base_id), gt, k)
        return compute_metrics(cm.numpy(), m.base, m.novel)["mIoU"]

    chosen = {c: 1.0 for c in m.novel}
    for _ in range(2):
        for c in m.novel:
            chosen[c] = max(CLASS_FACTORS, key=lambda f: (miou(chosen | {c: f}), f == 1.0))
    return {m.classes[c]: f for c, f in chosen.items() if f != 1.0}
