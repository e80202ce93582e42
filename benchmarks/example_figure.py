"""docs/img/example.png: one validation image, its base-class mask (novel classes hidden, as training sees them)
and a checkpoint's prediction, side by side with a legend.

    python benchmarks/example_figure.py CHECKPOINT DATASET [--index N] [-o docs/img/example.png]

The README's figure: the whole path's checkpoint (runs/retrain/tags-pp-retrain/weights/last.pt of quality.py's
msrc-s1 seed 0) on that split's dataset; without --index, the validation image with the most novel classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakshot_cli.data.dataset import EvalDataset, collate_eval, load_rgb  # noqa: E402
from weakshot_cli.data.labels import IGNORE, read_raw_label  # noqa: E402
from weakshot_cli.data.manifest import load_manifest  # noqa: E402
from weakshot_cli.engine.inference import Inference, InferenceOptions  # noqa: E402
from weakshot_cli.engine.visualise import default_palette, legend_entries, overlay, untinted, with_legend  # noqa
from weakshot_cli.io import atomic_write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--index", type=int)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "example.png")
    a = ap.parse_args()
    m = load_manifest(a.dataset)
    val = m.splits["val"]
    labels = [read_raw_label(m.resolve(it.label)) for it in val]
    index = a.index if a.index is not None else max(range(len(val)), key=lambda i: len(set(np.unique(labels[i])) &
                                                                                       set(m.novel)))
    run = Inference.load(InferenceOptions(checkpoint=a.checkpoint, device="cpu", amp="off"))
    batch = collate_eval([EvalDataset(m, "val", run.imgsz)[index]])
    pred = run(batch["image"], batch["sizes"], [labels[index].shape])[0].argmax()[0].numpy()
    rgb = load_rgb(m.resolve(val[index].image)).permute(1, 2, 0).numpy()
    base = np.where(np.isin(labels[index], m.novel), IGNORE, labels[index]).astype(np.uint8)
    palette, skip = default_palette(len(m.classes)), untinted(m.classes)
    panels = [rgb, overlay(rgb, base, palette, alpha=0.6, skip=skip), overlay(rgb, pred, palette, alpha=0.6, skip=skip)]
    gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1)
    figure = Image.fromarray(with_legend(row, legend_entries([labels[index], pred], m.classes, palette)))
    atomic_write(a.out, lambda p: figure.save(p, format="PNG"))
    print(f"{a.out}: validation image {index} ({Path(val[index].image).name})")


if __name__ == "__main__":
    with torch.no_grad():
        main()
