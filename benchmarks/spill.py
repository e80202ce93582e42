"""Where novel predictions spill: for each novel class, its false-positive pixels on the validation images split
into those in images whose ground truth lacks the class (a test-time tag would have refused them) and those in
images that have it (spill around the object), and the true classes they belong to.

    python benchmarks/spill.py CHECKPOINT DATASET [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakshot_cli.data.dataset import EvalDataset, collate_eval  # noqa: E402
from weakshot_cli.data.labels import IGNORE  # noqa: E402
from weakshot_cli.data.manifest import load_manifest  # noqa: E402
from weakshot_cli.engine.inference import Inference, InferenceOptions  # noqa: E402


@torch.no_grad()
def spill(checkpoint: Path, dataset: Path) -> dict:
    m = load_manifest(dataset)
    run = Inference.load(InferenceOptions(checkpoint=checkpoint, device="cpu", amp="off"))
    data = EvalDataset(m, "val", run.imgsz, full=True)
    k = len(m.classes)
    out = {m.classes[c]: {"true": 0, "fp_absent": 0, "fp_present": 0, "void": 0, "fp_as": np.zeros(k, np.int64)}
           for c in m.novel}
    for batch in DataLoader(data, batch_size=4, collate_fn=collate_eval):
        maps = run(batch["image"], batch["sizes"], [tuple(x.shape) for x in batch["labels"]])
        for s, gt in zip(maps, batch["labels"]):
            pred, gt = s.argmax()[0].numpy(), gt.numpy()
            present = set(np.unique(gt).tolist())
            for c in m.novel:
                r = out[m.classes[c]]
                called = pred == c
                r["true"] += int((called & (gt == c)).sum())
                r["void"] += int((called & (gt == IGNORE)).sum())
                wrong = called & (gt != c) & (gt != IGNORE)
                r["fp_present" if c in present else "fp_absent"] += int(wrong.sum())
                r["fp_as"] += np.bincount(gt[wrong], minlength=k)[:k]
    result = {}
    for name, r in out.items():
        fp = r["fp_absent"] + r["fp_present"]
        top = np.argsort(r["fp_as"])[::-1][:3]
        result[name] = {"precision": round(100 * r["true"] / max(1, r["true"] + fp), 1),
                        "fp_in_images_without_it_pct": round(100 * r["fp_absent"] / max(1, fp), 1),
                        "fp_pixels": fp, "void_pixels_called_it": r["void"],
                        "fp_true_classes_pct": {m.classes[t]: round(100 * r["fp_as"][t] / max(1, fp), 1) for t in top}}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    result = spill(a.checkpoint, a.dataset)
    for name, r in result.items():
        print(name, r)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
