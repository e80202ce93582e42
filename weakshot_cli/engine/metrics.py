"""One confusion matrix over all classes, and the metrics read off it.

A class absent from both ground truth and prediction (union 0) has no IoU and is left out of every
mean; a class that is predicted but absent from the ground truth counts with IoU 0.
"""

from __future__ import annotations

import numpy as np
import torch

from models import IGNORE


def confusion(pred: torch.Tensor, gt: torch.Tensor, k: int) -> torch.Tensor:
    """[k, k] counts, rows = ground truth, columns = prediction; ignore pixels are skipped."""
    valid = gt != IGNORE
    idx = gt[valid].long() * k + pred[valid].long()
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def compute_metrics(cm: np.ndarray | torch.Tensor, base: list[int], novel: list[int]) -> dict:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt, pred = cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
        precision = np.where(pred > 0, tp / pred, np.nan)
    base_miou, novel_miou = _mean(iou[base]), _mean(iou[novel]) if novel else float("nan")
    hiou = 2 * base_miou * novel_miou / (base_miou + novel_miou) if base_miou + novel_miou > 0 else 0.0
    return {
        "mIoU": 100 * _mean(iou),
        "base_mIoU": 100 * base_miou,
        "novel_mIoU": 100 * novel_miou,
        "hIoU": 100 * hiou,
        "pAcc": 100 * float(tp.sum() / max(cm.sum(), 1)),
        "mAcc": 100 * _mean(acc),
        "IoU": [None if np.isnan(v) else 100 * float(v) for v in iou],
        "Acc": [None if np.isnan(v) else 100 * float(v) for v in acc],
        "Precision": [None if np.isnan(v) else 100 * float(v) for v in precision],
        "novel_precision": 100 * _mean(precision[novel]) if novel else float("nan"),
    }
