"""Metric arithmetic against a hand-made confusion matrix."""

import math

import numpy as np
import torch

from weakshot_cli.engine.metrics import compute_metrics, confusion


def test_confusion_skips_ignore():
    gt = torch.tensor([0, 0, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 2, 2])
    np.testing.assert_array_equal(confusion(pred, gt, 3).numpy(), [[1, 1, 0], [0, 1, 0], [0, 0, 1]])


def test_metrics_by_hand():
    # classes: 0 base, 1 base, 2 novel, 3 novel (absent from GT and prediction), 4 base (predicted, not in GT)
    cm = np.zeros((5, 5))
    cm[0, 0], cm[0, 1] = 8, 2        # class 0: tp 8, gt 10
    cm[1, 1], cm[1, 4] = 3, 1        # class 1: tp 3, gt 4
    cm[2, 2], cm[2, 0] = 5, 5        # class 2: tp 5, gt 10
    m = compute_metrics(cm, base=[0, 1, 4], novel=[2, 3])
    iou0 = 8 / (10 + 13 - 8)          # pred col 0 = 8 + 5
    iou1 = 3 / (4 + 5 - 3)            # pred col 1 = 2 + 3
    iou2 = 5 / (10 + 5 - 5)
    iou4 = 0.0                        # predicted, absent from GT: counts as 0
    assert m["IoU"][3] is None        # absent from both: left out
    assert math.isclose(m["mIoU"], 100 * (iou0 + iou1 + iou2 + iou4) / 4)
    assert math.isclose(m["base_mIoU"], 100 * (iou0 + iou1 + iou4) / 3)
    assert math.isclose(m["novel_mIoU"], 100 * iou2)
    b, n = (iou0 + iou1 + iou4) / 3, iou2
    assert math.isclose(m["hIoU"], 100 * 2 * b * n / (b + n))
    assert math.isclose(m["pAcc"], 100 * 16 / 24)
    assert math.isclose(m["mAcc"], 100 * (0.8 + 0.75 + 0.5) / 3)
