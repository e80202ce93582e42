"""Speed: weakshot's SimFormer-R50 vs Hugging Face transformers' MaskFormer-R50, and CLI throughput on CamVid.

    pip install -e '.[bench]'
    python benchmarks/speed.py                    # CPU, all threads
    python benchmarks/speed.py --device cuda      # GPU (bf16/fp16 autocast as weakshot's --amp auto)

Both networks are built from config with random weights (no download): ResNet-50, 100 queries, 6 decoder
layers, 256-d, 11 classes, deep supervision on. The training step is forward, every loss, backward and an AdamW
step, batch 2 at 512x512 (weakshot: three base masks and a novel tag per image, so its SimNet, distillation and
complementary losses all run; transformers: the same three masks). Inference is batch 1 at 512x512 up to
per-class score maps at full resolution. Timings: one process, the same inputs and threads, one warm-up, then
the two models alternate and the median is kept. Peak memory: each model in its own subprocess (peak RSS on
CPU, peak allocated on CUDA), so one model's peak cannot hide the other's. transformers' MaskFormer is called
with ``output_hidden_states=True``: with deep supervision on it needs them and otherwise fails (5.24). Throughput: ``weakshot predict``
on the CamVid val images and ``weakshot pseudolabel`` on its training split, as subprocesses, end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step import make_batch  # noqa: E402
from weakshot_cli.data.manifest import Item, Manifest  # noqa: E402
from weakshot_cli.engine.build import TrainStep, amp_dtype, build_criterion, build_model  # noqa: E402
from weakshot_cli.engine.checkpoint import save_checkpoint, weights_state  # noqa: E402
from weakshot_cli.engine.config import build_config  # noqa: E402
from weakshot_cli.engine.inference import class_scores  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402

K = 11
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def weakshot_model(device: torch.device) -> tuple[TrainStep, object]:
    cfg = build_config("r50", {"backbone_weights": "none"}, [])
    m = Manifest([f"c{i}" for i in range(K)], base=list(range(8)), novel=[8, 9, 10], splits={"train": [Item("x", "y", [])]})
    torch.manual_seed(0)
    return TrainStep(build_model(cfg, K), build_criterion(cfg, m)).to(device), cfg


def hf_model(device: torch.device) -> torch.nn.Module:
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    decoder = DetrConfig(num_queries=100, decoder_layers=6, d_model=256, decoder_attention_heads=8,
                         decoder_ffn_dim=2048, dropout=0.1)
    cfg = MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, num_labels=K, use_auxiliary_loss=True,
                           fpn_feature_size=256, mask_feature_size=256)
    torch.manual_seed(0)
    return MaskFormerForInstanceSegmentation(cfg).to(device)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def tasks(name: str, device: torch.device, batch: int, imgsz: int) -> dict:
    """{"train": step(), "infer": step()} closures for one model, on the shared synthetic inputs."""
    images, targets = make_batch(batch, imgsz, device)
    one = images[:1]
    if name == "weakshot":
        step, cfg = weakshot_model(device)
        dtype = amp_dtype(cfg.amp, device)
        model = step.model
        forward = lambda: step(images, targets)["loss"]  # noqa: E731
        infer = lambda: class_scores(model, one, [(imgsz, imgsz)], [(imgsz, imgsz)])  # noqa: E731
    else:
        step = model = hf_model(device)
        dtype = amp_dtype("auto", device)
        masks = [t["masks"][t["has_mask"]].float() for t in targets]
        labels = [t["labels"][t["has_mask"]] for t in targets]
        forward = lambda: step(pixel_values=images, mask_labels=masks, class_labels=labels, output_hidden_states=True).loss  # noqa: E731

        def infer() -> torch.Tensor:
            out = model(pixel_values=one, output_hidden_states=True)
            masks_ = F.interpolate(out.masks_queries_logits, size=(imgsz, imgsz), mode="bilinear", align_corners=False)
            return torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1], masks_.sigmoid())

    opt = torch.optim.AdamW(step.parameters(), lr=1e-4)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def train() -> None:
        step.train()
        with autocast():
            loss = forward()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def inference() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            infer()

    return {"train": train, "infer": inference}


def peak_memory(name: str, task: str, device: str, batch: int, imgsz: int) -> float:
    """GiB at the peak of two runs of ``task`` in a fresh process."""
    code = (f"import sys; sys.argv=['speed.py']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import speed; "
            f"print(speed.measure_peak({name!r}, {task!r}, {device!r}, {batch}, {imgsz}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def measure_peak(name: str, task: str, device: str, batch: int, imgsz: int) -> float:
    dev = torch.device(device)
    fn = tasks(name, dev, batch if task == "train" else 1, imgsz)[task]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(2):
        fn()
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return peak_rss_gib()


def peak_rss_gib() -> float:
    """This process's peak resident memory. VmHWM rather than ru_maxrss: the latter survives exec, so a child
    would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def compare(device: torch.device, batch: int, imgsz: int, repeats: int) -> dict:
    models = {n: tasks(n, device, batch, imgsz) for n in ("weakshot", "transformers")}
    result = {}
    for task in ("train", "infer"):
        times = {n: [] for n in models}
        for r in range(repeats + 1):
            for n, fns in models.items():
                t = timed(fns[task], device)
                if r:
                    times[n].append(t)
        med = {n: statistics.median(v) for n, v in times.items()}
        result[task] = {"weakshot_s": round(med["weakshot"], 4), "transformers_s": round(med["transformers"], 4),
                        "ratio": round(med["weakshot"] / med["transformers"], 3),
                        "weakshot_img_s": round((batch if task == "train" else 1) / med["weakshot"], 2),
                        "transformers_img_s": round((batch if task == "train" else 1) / med["transformers"], 2)}
        print(task, result[task], flush=True)
    return result


def throughput(device: str, threads: int, data: Path) -> dict:
    """End-to-end images/s of ``weakshot predict`` (val) and ``weakshot pseudolabel`` (train split) on CamVid with
    a randomly initialised SimFormer-R50 checkpoint, at CamVid's own size (360x480)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "weakshot_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([*cli, "split", "--images", data / "images", "--masks", data / "labels", "--classes",
                        data / "classes.txt", "--ignore-index", "11", "--novel", "tree,car,sign_symbol", "-o",
                        tmp / "ws"], env=env, check=True, capture_output=True)
        cfg = build_config("r50", {"backbone_weights": "none", "val_imgsz": 0}, [])
        torch.manual_seed(0)
        classes = (data / "classes.txt").read_text().split()
        save_checkpoint(tmp / "r50.pt", weights_state(build_model(cfg, len(classes)), cfg, classes,
                                                      [0, 1, 2, 3, 4, 7, 9, 10], [5, 6, 8], iteration=0, best=0.0,
                                                      best_iter=None, stage="train"))
        runs = []
        for args, n in ((["predict", tmp / "r50.pt", data / "images" / "val", "--project", tmp / "runs"], 101),
                        (["pseudolabel", tmp / "r50.pt", tmp / "ws", "-o", tmp / "pl"], 367)):
            start = time.perf_counter()
            subprocess.run([*cli, *map(str, args), "--device", device, "--imgsz", "0"], env=env, check=True,
                           capture_output=True)
            runs.append(round(n / (time.perf_counter() - start), 2))
    return {"predict_img_s": runs[0], "pseudolabel_img_s": runs[1], "size": "360x480 (native)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=CAMVID)
    ap.add_argument("--no-throughput", action="store_true", help="skip the CamVid predict/pseudolabel runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    import transformers

    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              f"{platform.machine()} CPU, {a.threads} threads of {os.cpu_count()} cores",
              "amp": str(amp_dtype("auto", device)).replace("torch.", "") if device.type == "cuda"
              else "off", "torch": torch.__version__, "transformers": transformers.__version__,
              "date": time.strftime("%Y-%m-%d"), "batch": a.batch, "imgsz": a.imgsz, "repeats": a.repeats,
              **compare(device, a.batch, a.imgsz, a.repeats)}
    result["peak_memory_gib"] = {
        task: {n: round(peak_memory(n, task, a.device, a.batch, a.imgsz), 2) for n in ("weakshot", "transformers")}
        for task in ("train", "infer")}
    print("peak memory", result["peak_memory_gib"], flush=True)
    if not a.no_throughput and a.data.exists():
        result["throughput"] = throughput(a.device, a.threads, a.data)
        print("throughput", result["throughput"], flush=True)
    name = "speed.json" if device.type == "cpu" else f"speed-{device.type}.json"
    atomic_write(a.out / name, lambda p: p.write_text(json.dumps(result, indent=2)))


if __name__ == "__main__":
    main()
