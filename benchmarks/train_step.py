"""Training-step time and peak memory of SimFormer, full-resolution vs point-sampled mask losses.

    python benchmarks/train_step.py --preset r50 --batch 2 --imgsz 512 --repeats 3

Each configuration runs in a fresh subprocess so its peak memory (max RSS on CPU, max allocated on CUDA)
is its own; the step is forward, all losses, backward and an AdamW step, on random images with
random-blob targets (4 base classes with masks, 1 novel tag), after one warm-up step; the median of
the timed steps is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_batch(batch: int, imgsz: int, dev: "torch.device") -> tuple["torch.Tensor", list[dict]]:
    """Random images; per image three base-class quadrants with masks, one unlabelled quadrant, novel tag 8."""
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, imgsz, imgsz, generator=g).to(dev)
    targets = []
    for i in range(batch):
        sem = torch.full((imgsz, imgsz), 255, dtype=torch.long)
        for c, (y, x) in enumerate([(0, 0), (0, 1), (1, 0)]):
            sem[y * imgsz // 2:(y + 1) * imgsz // 2, x * imgsz // 2:(x + 1) * imgsz // 2] = c
        labels = torch.tensor([0, 1, 2, 8])
        has_mask = torch.tensor([True, True, True, False])
        masks = (sem[None] == labels[:, None, None]) & has_mask[:, None, None]
        targets.append({k: v.to(dev) if torch.is_tensor(v) else v for k, v in {
            "labels": labels, "masks": masks, "has_mask": has_mask, "sem": sem,
            "pad": torch.zeros(imgsz, imgsz, dtype=torch.bool), "ref": i ^ 1 if (i ^ 1) < batch else i,
            "novel_tags": torch.tensor([8])}.items()})
    return images, targets


def one(preset: str, batch: int, imgsz: int, num_points: int, repeats: int, device: str) -> dict:
    import torch

    from weakshot_cli.data.manifest import Item, Manifest
    from weakshot_cli.engine.build import TrainStep, build_criterion, build_model
    from weakshot_cli.engine.config import build_config

    torch.manual_seed(0)
    k = 11
    cfg = build_config(preset, {"backbone_weights": "none", "batch": batch, "imgsz": imgsz}, [f"num_points={num_points}"])
    m = Manifest([f"c{i}" for i in range(k)], base=list(range(8)), novel=[8, 9, 10], splits={"train": [Item("x", "y", [])]})
    dev = torch.device(device)
    step = TrainStep(build_model(cfg, k), build_criterion(cfg, m)).to(dev)
    opt = torch.optim.AdamW(step.parameters(), lr=1e-4)
    images, targets = make_batch(batch, imgsz, dev)
    times = []
    for r in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses = step(images, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": preset, "batch": batch, "imgsz": imgsz, "num_points": num_points, "device": device,
            "threads": torch.get_num_threads(), "step_s": statistics.median(times), "peak_mem_gib": peak / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="r50")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--points", type=int, nargs="+", default=[0, 12544])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.preset, a.batch, a.imgsz, a.one, a.repeats, a.device)))
        return
    for p in a.points:
        out = subprocess.run([sys.executable, __file__, "--preset", a.preset, "--batch", str(a.batch), "--imgsz",
                              str(a.imgsz), "--repeats", str(a.repeats), "--device", a.device, "--one", str(p)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
