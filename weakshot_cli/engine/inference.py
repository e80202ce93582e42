"""Inference: a model from a checkpoint, class scores at the original resolution, evaluation over a loader."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import SimFormer, fold_batchnorm, semantic_probs
from weakshot_cli.data.dataset import scaled_size
from weakshot_cli.engine.build import amp_dtype, build_model
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.config import AMP_MODES, IMGSZ_MAX, TrainConfig
from weakshot_cli.engine import distributed
from weakshot_cli.engine.distributed import Dist
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
    """The checkpoint's network in eval mode, for inference only (its backbone's BatchNorm folded into the
    convolutions); its config and class list alone fix the architecture."""
    model = build_model(TrainConfig.from_dict(ckpt["config"]), len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit its own config ({str(e).splitlines()[0]})", source) from None
    model.eval()
    fold_batchnorm(model.backbone)
    return model.to(device)


def inference_size(ckpt: dict, imgsz: int | None) -> int:
    """The short side images are resized to: the user's choice, else the size the checkpoint was validated
    at; 0 keeps the original size."""
    return imgsz if imgsz is not None else ckpt["config"].get("val_imgsz") or ckpt["config"]["imgsz"]


def novel_scales(classes: list[str], novel: list[int], factor: float, per_class: dict[str, float]) -> torch.Tensor:
    """Per-class factors on the inference scores: 1 on base classes, ``factor`` times the class's own factor (by
    name, 1 where absent) on novel ones (calibrate.py chooses both)."""
    scale = torch.ones(len(classes))
    for c in novel:
        scale[c] = factor * per_class.get(classes[c], 1.0)
    return scale


def score_scale(ckpt: dict) -> torch.Tensor | None:
    """The checkpoint's novel-score calibration as per-class factors (novel_scales), or None where it has none."""
    factor, per_class = ckpt.get("novel_scale", 1.0), ckpt.get("novel_class_scale") or {}
    if factor == 1.0 and not per_class:
        return None
    return novel_scales(ckpt["classes"], ckpt["novel"], factor, per_class)


def model_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network as score_maps reads it: normalised, padded images -> class scores [B, K, H, W] at their size."""
    def forward(images: torch.Tensor) -> torch.Tensor:
        out = model(images)
        return semantic_probs(out["pred_logits"], out["pred_masks"], tuple(images.shape[-2:]))

    return forward


# Elements of one full-resolution strip of scores (classes x rows x width): 64 MB in float32 whatever the image.
STRIP_ELEMENTS = 1 << 24


@dataclass
class ScoreMap:
    """One image's class scores at network resolution (``low``, [K, h, w]), read at its original ``size`` strip by
    strip: all classes of a 9000x9000 image at once would take K x 324 MB."""

    low: torch.Tensor
    size: tuple[int, int]

    def strips(self, elements: int = STRIP_ELEMENTS) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, [K, rows, W] scores) down the image: bilinear (align_corners false), as F.interpolate of the
        whole map gives it, computed one band of output rows at a time."""
        k, h, w = self.low.shape
        H, W = self.size
        wide = self.low if w == W else F.interpolate(self.low[None], size=(h, W), mode="bilinear",
                                                     align_corners=False)[0]
        rows = max(1, elements // (k * W))
        for y0 in range(0, H, rows):
            y = torch.arange(y0, min(H, y0 + rows), device=wide.device, dtype=torch.float64)
            if h == H:
                yield y0, wide[:, y0:y0 + len(y)]
                continue
            src = ((y + 0.5) * (h / H) - 0.5).clamp(min=0)
            top = src.floor().long().clamp(max=h - 1)
            t = (src - top).to(wide.dtype)[:, None]
            yield y0, wide[:, top] * (1 - t) + wide[:, (top + 1).clamp(max=h - 1)] * t

    def full(self) -> torch.Tensor:
        """All scores at the original size, [K, H, W] (for small images)."""
        return torch.cat([strip for _, strip in self.strips()], 1)

    def argmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The winning class per pixel ([H, W] uint8 on the CPU) and each class's mean score over the pixels it wins
        (nan for a class that wins none)."""
        k = self.low.shape[0]
        label = torch.empty(self.size, dtype=torch.uint8)
        total, count = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        for y0, strip in self.strips():
            best, at = strip.max(0)
            at, best = at.cpu(), best.cpu().double()
            label[y0:y0 + len(at)] = at.to(torch.uint8)
            total += torch.bincount(at.flatten(), weights=best.flatten(), minlength=k)
            count += torch.bincount(at.flatten(), minlength=k)
        return label, total / count


@torch.no_grad()
def score_maps(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, sizes: list[tuple[int, int]],
               out_sizes: Sequence[tuple[int, int]], flip: bool = False,
               scales: Sequence[float] = (1.0,), scale: torch.Tensor | None = None) -> list[ScoreMap]:
    """Per image the scores ``forward`` gives (model_forward: the sum over queries of class prob x mask prob) at
    the padded input size (and at each extra scale, and mirrored, averaged), times the per-class ``scale`` where
    given, cropped to the valid region; read at the original resolution ``out_sizes`` through ScoreMap."""
    H, W = images.shape[-2:]
    probs = 0
    for s in scales:
        x = images
        if s != 1.0:
            x = F.interpolate(images, size=scaled_size(H, W, s), mode="bilinear", align_corners=False)
        p = forward(x).float()
        if flip:
            p = (p + forward(x.flip(-1)).float().flip(-1)) / 2
        if s != 1.0:
            p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)
        probs = probs + p / len(scales)
    if scale is not None:
        probs = probs * scale.to(probs.device)[:, None, None]
    return [ScoreMap(p[:, :h, :w], tuple(size)) for p, (h, w), size in zip(probs, sizes, out_sizes)]


def class_scores(model: nn.Module, images: torch.Tensor, sizes: list[tuple[int, int]],
                 out_sizes: Sequence[tuple[int, int]], flip: bool = False,
                 scales: Sequence[float] = (1.0,), scale: torch.Tensor | None = None) -> list[torch.Tensor]:
    """score_maps of ``model`` at the original resolution, [K, H, W] per image: for images small enough to hold
    whole."""
    return [m.full() for m in score_maps(model_forward(model), images, sizes, out_sizes, flip, scales, scale)]


@dataclass
class Inference:
    """A model ready to run, as evaluate, predict and pseudolabel run it: a checkpoint's network (or an exported
    ONNX model) on its device, with the precision, input size, test-time augmentation and score calibration the
    options and checkpoint ask for. ``ckpt`` holds the checkpoint, or an ONNX model's metadata in its shape."""

    ckpt: dict
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    imgsz: int
    flip: bool = False
    scales: Sequence[float] = (1.0,)
    scale: torch.Tensor | None = None
    ddp: Dist = field(default_factory=Dist)

    @classmethod
    def load(cls, o: InferenceOptions) -> Inference:
        """Under torchrun, on this process's device (the commands then share the images among the processes)."""
        if Path(o.checkpoint).suffix.lower() == ".onnx":
            from weakshot_cli.engine.export import onnx_forward

            meta, forward = onnx_forward(Path(o.checkpoint), o.device)
            ddp, _ = distributed.setup("cpu")
            return cls(meta, forward, torch.device("cpu"), contextlib.nullcontext, inference_size(meta, o.imgsz),
                       o.flip, o.scales, None, ddp)
        ckpt = load_checkpoint(o.checkpoint)
        ddp, device = distributed.setup(o.device)
        model = model_from_checkpoint(ckpt, device, str(o.checkpoint))
        return cls(ckpt, model_forward(model), device, o.autocast(device), inference_size(ckpt, o.imgsz), o.flip,
                   o.scales, score_scale(ckpt), ddp)

    def __call__(self, images: torch.Tensor, sizes: list[tuple[int, int]],
                 out_sizes: Sequence[tuple[int, int]]) -> list[ScoreMap]:
        with self.autocast():
            return score_maps(self.forward, images.to(self.device), sizes, out_sizes, self.flip, self.scales,
                              self.scale)


def evaluate_loader(scores: Callable[..., list[ScoreMap]], loader, num_classes: int, base: list[int],
                    novel: list[int], progress=None, keep=None) -> tuple[dict, np.ndarray]:
    """The metrics of confusion_over and the matrix."""
    cm = confusion_over(scores, loader, num_classes, progress, keep)
    return compute_metrics(cm, base, novel), cm


def confusion_over(scores: Callable[..., list[ScoreMap]], loader, num_classes: int, progress=None,
                   keep=None) -> np.ndarray:
    """One confusion matrix over the loader at original resolution, from ``scores(images, sizes, out_sizes)`` (an
    Inference); ``progress(n)`` per batch and ``keep(index, prediction)`` per image when given."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for batch in loader:
        maps = scores(batch["image"], batch["sizes"], [tuple(label.shape) for label in batch["labels"]])
        for s, label, index in zip(maps, batch["labels"], batch["index"]):
            pred = s.argmax()[0]
            cm += confusion(pred, label, num_classes)
            if keep is not None:
                keep(index, pred)
        if progress is not None:
            progress(len(batch["labels"]))
    return cm.numpy()
