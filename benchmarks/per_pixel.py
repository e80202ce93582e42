"""The per-pixel reference of the quality benchmark: the same pretrained trunk, a plain per-pixel head and
cross-entropy on full masks, trained on weakshot's own crops at the same budget as the oracle.

    python benchmarks/per_pixel.py DATASET --iters 600 --batch 8 --imgsz 256 --seed 0 -o result.json

It tells whether the oracle is undertrained: a set-prediction model that trails this head at equal budget is
measuring its own convergence, not the weak-shot method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import IGNORE, build_backbone  # noqa: E402
from weakshot_cli.data.dataset import AugConfig, EvalDataset, TrainDataset, collate_eval, collate_train  # noqa: E402
from weakshot_cli.data.manifest import load_manifest  # noqa: E402
from weakshot_cli.engine.build import param_groups  # noqa: E402
from weakshot_cli.engine.config import TrainConfig  # noqa: E402
from weakshot_cli.engine.inference import Inference, evaluate_loader  # noqa: E402
from weakshot_cli.engine.train import poly_schedule  # noqa: E402
from weakshot_cli.engine.weights import init_backbone  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402


class PerPixel(nn.Module):
    """FPN-style sum of strides 8/16/32 (1x1 projections), one 3x3 conv, a linear classifier at stride 8."""

    def __init__(self, backbone: str, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, "frozen_bn")
        self.lateral = nn.ModuleDict({lv: nn.Conv2d(self.backbone.channels[lv], dim, 1)
                                      for lv in ("res3", "res4", "res5")})
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(32, dim), nn.ReLU(),
                                  nn.Conv2d(dim, num_classes, 1))

    def forward(self, images: Tensor) -> Tensor:
        feats = self.backbone(images)
        size = feats["res3"].shape[-2:]
        y = sum(F.interpolate(self.lateral[lv](feats[lv]), size=size, mode="bilinear", align_corners=False)
                for lv in self.lateral)
        return F.interpolate(self.head(y), size=images.shape[-2:], mode="bilinear", align_corners=False)


def batches(n: int, batch: int, seed: int):
    """Endless (index, seed, 0) keys for TrainDataset: a fresh permutation per epoch, every crop reproducible."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g).tolist()
        for i in range(0, n - batch + 1, batch):
            yield [(j, int(torch.randint(2**62, (1,), generator=g)), 0) for j in order[i:i + batch]]


def evaluate(model: nn.Module, m, imgsz: int) -> dict:
    """Scored as evaluate scores a checkpoint: class probabilities, resized to each image, one confusion matrix."""
    model.eval()
    scores = Inference(None, lambda x: model(x).softmax(1), torch.device("cpu"), contextlib.nullcontext, imgsz)
    loader = DataLoader(EvalDataset(m, "val", imgsz), batch_size=4, collate_fn=collate_eval)
    metrics, _ = evaluate_loader(scores, loader, len(m.classes), m.base, m.novel)
    model.train()
    return metrics


def train(dataset: Path, backbone: str, iters: int, batch: int, imgsz: int, lr: float, backbone_lr_mult: float,
          seed: int, val_every: int) -> dict:
    torch.manual_seed(seed)
    m = load_manifest(dataset)
    model = PerPixel(backbone, len(m.classes))
    init_backbone(model.backbone, backbone, "imagenet")
    data = TrainDataset(m, AugConfig(imgsz), oracle=True)
    cfg = TrainConfig(lr=lr, backbone_lr_mult=backbone_lr_mult)  # the package's groups and poly schedule
    opt = torch.optim.AdamW(param_groups(model, model.backbone, cfg), lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_schedule(iters, cfg.poly_power))
    loader = DataLoader(data, batch_sampler=batches(len(data), batch, seed), collate_fn=collate_train, num_workers=1)
    curve, start = [], time.perf_counter()
    for it, b in enumerate(loader, 1):
        loss = F.cross_entropy(model(b["image"]), b["sem"], ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % val_every == 0 or it == iters:
            metrics = evaluate(model, m, imgsz)
            curve.append({"iter": it, "mIoU": round(metrics["mIoU"], 2)})
            print(f"iter {it}: loss {loss.item():.3f} val mIoU {metrics['mIoU']:.1f}", flush=True)
        if it == iters:
            break
    return {"train_seconds": round(time.perf_counter() - start, 1), "curve": curve,
            **{k: metrics[k] for k in ("mIoU", "base_mIoU", "novel_mIoU", "pAcc")},
            "class_IoU": {c: None if v is None else round(v, 2) for c, v in zip(m.classes, metrics["IoU"])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--backbone-lr-mult", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    result = train(a.dataset, a.backbone, a.iters, a.batch, a.imgsz, a.lr, a.backbone_lr_mult, a.seed, a.val_every)
    atomic_write(a.out, lambda p: p.write_text(json.dumps(result, indent=2)))


if __name__ == "__main__":
    main()
