"""Inference: a model from a checkpoint, class scores at the original resolution, evaluation over a loader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import SimFormer, semantic_probs
from weakshot_cli.data.dataset import scaled_size
from weakshot_cli.engine.build import amp_dtype, build_model
from weakshot_cli.engine.config import AMP_MODES, IMGSZ_MAX, TrainConfig
from weakshot_cli.engine.metrics import compute_metrics, confusion
from weakshot_cli.errors import UserError


@dataclass(kw_only=True)
class InferenceOptions:
    """What evaluate, predict and pseudolabel share: the checkpoint and how it runs."""

    checkpoint: Path
    device: str = "auto"
    imgsz: int | None = None
    batch: int = 4
    workers: int = 0
    flip: bool = False
    scales: Sequence[float] = (1.0,)
    amp: str = "auto"

    def check(self) -> None:
        """Refuse out-of-range options before a model loads or a folder exists (a huge --imgsz would otherwise
        try to allocate tens of GB mid-run)."""
        if self.batch < 1:
            raise UserError(f"--batch must be >= 1, got {self.batch}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        if self.imgsz is not None and not 0 <= self.imgsz <= IMGSZ_MAX:
            raise UserError(f"--imgsz must be 0 (original size) or at most {IMGSZ_MAX}, got {self.imgsz}")
        if self.amp not in AMP_MODES:
            raise UserError(f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")

    def autocast(self, device: torch.device) -> Callable[[], torch.autocast]:
        """The autocast context --amp asks for on ``device`` (as in training; an error for fp16 on the CPU)."""
        dtype = amp_dtype(self.amp, device)
        return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def model_from_checkpoint(ckpt: dict, device: torch.device, source: str = "") -> SimFormer:
    """The checkpoint's network in eval mode; its config and class list alone fix the architecture."""
    model = build_model(TrainConfig.from_dict(ckpt["config"]), len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit its own config ({str(e).splitlines()[0]})", source) from None
    return model.to(device).eval()


def inference_size(ckpt: dict, imgsz: int | None) -> int:
    """The short side images are resized to: the user's choice, else the size the checkpoint was validated
    at; 0 keeps the original size."""
    return imgsz if imgsz is not None else ckpt["config"].get("val_imgsz") or ckpt["config"]["imgsz"]


def score_scale(ckpt: dict) -> torch.Tensor | None:
    """Per-class factors on the inference scores: the checkpoint's novel-score calibration (calibrate.py), or
    None where it has none."""
    factor = ckpt.get("novel_scale", 1.0)
    if factor == 1.0:
        return None
    scale = torch.ones(len(ckpt["classes"]))
    scale[ckpt["novel"]] = factor
    return scale


def _scores_at(model: nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
    size = tuple(images.shape[-2:])
    out = model(images)
    probs = semantic_probs(out["pred_logits"], out["pred_masks"], size)
    if flip:
        out_f = model(images.flip(-1))
        probs = (probs + semantic_probs(out_f["pred_logits"], out_f["pred_masks"], size).flip(-1)) / 2
    return probs


@torch.no_grad()
def class_scores(model: nn.Module, images: torch.Tensor, sizes: list[tuple[int, int]],
                 out_sizes: Sequence[tuple[int, int]], flip: bool = False,
                 scales: Sequence[float] = (1.0,), scale: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per image [K, H, W] scores at ``out_sizes``: sum over queries of class prob x mask prob, computed
    at the padded input size (and at each extra scale, averaged), times the per-class ``scale`` where given,
    cropped to the valid region, then resized bilinearly to the original resolution."""
    H, W = images.shape[-2:]
    probs = 0
    for s in scales:
        x = images
        if s != 1.0:
            x = F.interpolate(images, size=scaled_size(H, W, s), mode="bilinear", align_corners=False)
        p = _scores_at(model, x, flip).float()
        if s != 1.0:
            p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)
        probs = probs + p / len(scales)
    if scale is not None:
        probs = probs * scale.to(probs.device)[:, None, None]
    results = []
    for p, (h, w), size in zip(probs, sizes, out_sizes):
        p = p[:, :h, :w]
        if (h, w) != tuple(size):
            p = F.interpolate(p[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        results.append(p)
    return results


def evaluate_loader(model: nn.Module, loader, num_classes: int, base: list[int], novel: list[int],
                    device: torch.device, autocast, progress=None, flip: bool = False,
                    scales: Sequence[float] = (1.0,), keep=None,
                    scale: torch.Tensor | None = None) -> tuple[dict, np.ndarray]:
    """One confusion matrix over the loader at original resolution; ``progress(n)`` per batch and
    ``keep(index, prediction)`` per image when given."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for batch in loader:
        with autocast():
            scores = class_scores(model, batch["image"].to(device), batch["sizes"],
                                  [tuple(label.shape) for label in batch["labels"]], flip, scales, scale)
        for s, label, index in zip(scores, batch["labels"], batch["index"]):
            pred = s.argmax(0).cpu()
            cm += confusion(pred, label, num_classes)
            if keep is not None:
                keep(index, pred)
        if progress is not None:
            progress(len(batch["labels"]))
    model.train(was_training)
    return compute_metrics(cm.numpy(), base, novel), cm.numpy()
