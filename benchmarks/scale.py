"""Scale: wall time and peak memory of ``split`` (PNG folders and COCO JSON) and of ``pseudolabel`` on one and two
processes, on synthetic datasets of growing size made on the fly (no downloads).

    python benchmarks/scale.py --sizes 1000,5000,20000          # COCO-like: 640x480, 80 mask classes
    python benchmarks/scale.py --sizes 200 --height 96 --width 128   # a smoke run

Each dataset: N training images (random shapes of up to 8 of 80 classes on a textured background, each class with
its own colour, so a model has something to find) and N/10 validation images, written as PNG label folders and as
one COCO JSON (RLE per image and class). ``split`` runs on each (benchmark mode, a quarter of the classes novel);
``pseudolabel`` runs a one-iteration ``small`` checkpoint (its quality does not matter here) at --imgsz 128 on the
PNG dataset, on one process and under torchrun on two (one thread each). Every command is a fresh subprocess;
its peak RSS comes from the kernel (getrusage in a small parent: PROBE). Results: ``benchmarks/results/scale.json``
and ``scale.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from weakshot_cli.data.coco import stuff_coco  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402

CLASSES = [f"class{i:02d}" for i in range(80)]


def make_dataset(root: Path, n: int, h: int, w: int, seed: int = 0) -> None:
    """images/{train,val}, labels/{train,val} (PNG) and coco.json (train, RLE): made once per size."""
    if (root / "coco.json").exists():
        return
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 255, (len(CLASSES), 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    train = []
    for i in range(n + n // 10):
        split = "train" if i < n else "val"
        label = np.full((h, w), rng.integers(len(CLASSES)), np.uint8)
        for c in rng.choice(len(CLASSES), rng.integers(1, 9), replace=False):
            cy, cx, r = rng.integers(h), rng.integers(w), rng.integers(h // 10, h // 3)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
        noise = rng.integers(-20, 20, (h, w, 3))
        image = np.clip(palette[label].astype(int) + noise, 0, 255).astype(np.uint8)
        for kind, array in (("images", image), ("labels", label)):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / kind / split / f"{i:06d}.png")
        if split == "train":
            train.append((f"{i:06d}.png", label))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    atomic_write(root / "coco.json", lambda p: p.write_text(json.dumps(stuff_coco(train, CLASSES, {}))))


# The command runs as the child of a fresh, small Python that reports its peak RSS: a child forked from this
# process would start with this process's pages resident (the datasets made here), and Linux keeps that high-water
# mark across exec, so the figure would grow with the dataset this process built, not with the command's own needs.
PROBE = ("import resource, subprocess, sys\n"
         "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
         "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)")


def measured(args: list[str], threads: int = 1) -> dict:
    """Wall seconds and peak RSS (GiB, the largest process of the command's tree) of one command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed:\n{r.stderr[-2000:]}")
    kib = int(r.stderr.rsplit("peak_rss_kib", 1)[1].split()[0])
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(kib / 2**20, 4)}


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "weakshot_cli", *map(str, args)]


def torchrun(nproc: int, *args: object) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(nproc), "--master-port",
            str(29500 + nproc), "-m", "weakshot_cli", *map(str, args)]


def one_size(n: int, work: Path, h: int, w: int, parts: set[str]) -> dict:
    data = work / f"data-{n}"
    make_dataset(data, n, h, w)
    novel = ["--novel-ratio", "0.25"]
    result: dict = {"images": n}
    for kind, source in (("png", ["--masks", data / "labels", "--classes", data / "classes.txt"]),
                         ("coco", ["--coco", f"train={data / 'coco.json'}"])):
        out = work / f"ws-{kind}-{n}"
        if "split" in parts or not out.exists():
            shutil.rmtree(out, ignore_errors=True)
            measure = measured(cli("split", "--images", data / "images", *source, *novel, "-o", out))
            if "split" in parts:
                result[f"split_{kind}"] = measure
    if "pseudolabel" not in parts:
        print(n, result, flush=True)
        return result
    ws = work / f"ws-png-{n}"
    ckpt = work / f"run-{n}" / "train" / "train" / "weights" / "last.pt"
    if not ckpt.exists():
        measured(cli("train", ws, "--preset", "small", "--iters", "1", "--batch", "2", "--imgsz", "64", "--device",
                     "cpu", "--amp", "off", "--set", "val_every=100", "--project", work / f"run-{n}", "--exist-ok"))
    for procs in (1, 2):
        out = work / f"pl-{procs}-{n}"
        shutil.rmtree(out, ignore_errors=True)
        args = [ckpt, ws, "-o", out, "--device", "cpu", "--imgsz", "128", "--amp", "off", "--batch", "4"]
        r = measured(cli("pseudolabel", *args) if procs == 1 else torchrun(procs, "pseudolabel", *args))
        result[f"pseudolabel_{procs}"] = r | {"images_per_s": round(n / r["seconds"], 2)}
    print(n, result, flush=True)
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t, m) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("split_png", "split_coco", "pseudolabel_1", "pseudolabel_2"):
        rows = [r for r in results if key in r]  # a part measured at some sizes only
        if rows:
            t.plot([r["images"] for r in rows], [r[key]["seconds"] for r in rows], "o-", label=key)
            m.plot([r["images"] for r in rows], [r[key]["peak_rss_gib"] for r in rows], "o-", label=key)
    for ax, label in ((t, "wall time (s)"), (m, "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--parts", default="split,pseudolabel",
                    help="what to measure: split, pseudolabel or both (pseudolabel's 2-process throughput needs "
                         "both cores free); a part measured alone is merged into an earlier scale.json")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmarks" / "scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    results = [one_size(int(n), a.work, a.height, a.width, parts) for n in a.sizes.split(",")]
    path = a.out / "scale.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if (earlier.get("height"), earlier.get("width")) == (a.height, a.width):  # the other figures stay
        by_size = {r["images"]: r for r in earlier.get("results", [])}
        for r in results:
            by_size[r["images"]] = by_size.get(r["images"], {}) | r
        results = [by_size[n] for n in sorted(by_size)]
    doc = {"height": a.height, "width": a.width, "classes": len(CLASSES), "cpu_count": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d"), "results": results}
    atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    plot(results, a.out / "scale.png")


if __name__ == "__main__":
    main()
