"""Speed at equal precision: weakshot's SimFormer-R50 vs Hugging Face transformers' MaskFormer-R50, weakshot's
mobile preset, and CLI throughput on CamVid.

    pip install -e '.[bench]'
    python benchmarks/speed.py                    # CPU, all threads: fp32, then bf16 autocast
    python benchmarks/speed.py --device cuda      # GPU: fp32, bf16 autocast, fp16 autocast with a GradScaler

Every measurement runs once per precision (--precisions): fp32 is plain float32; bf16 and fp16 run forward and
losses under ``torch.autocast(device, dtype)``, fp16 (CUDA only) with a GradScaler. Both models always run at the
same precision, so neither is timed at one the other is not.

- R50 comparison. Both networks are built from config with random weights (no download): ResNet-50, 100 queries,
  6 decoder layers, 256-d, 11 classes, deep supervision on. weakshot's is the r50 preset as train runs it by
  default, with frozen BatchNorm and the tags method (since 2026-12-08; before, trained BatchNorm and dense, which
  no default run uses); transformers' trains its BatchNorm, as its model does in train mode. Training step:
  forward, every loss, backward and an AdamW step, batch 2 at 512x512 (weakshot: three base masks and a novel tag per image, so its SimNet,
  distillation and complementary losses all run; transformers: the same three masks). Inference: batch 1 at
  512x512 up to per-class score maps at full resolution. One process, the same inputs and threads; per task each
  model runs once as a warm-up, then the two alternate --repeats times and the median is kept: seconds, the ratio
  weakshot/transformers, images/s.
- Method overhead: SimFormer-R50's training step timed (alternating, as above) beside itself with its mask losses
  on 12,544 sampled points (Mask2Former's), without the complementary loss, without SimNet and distillation, and
  without all three, i.e. plain MaskFormer inside weakshot.
- mobile preset (MobileNetV2, masked attention) as train runs it (frozen BatchNorm, tags), with random weights:
  training step at the preset's batch 8 and 256x256, inference batch 1 at 256x256 and at --imgsz, timed the
  same way.
- Work. Each warm-up runs under torch.utils.flop_counter.FlopCounterMode, which counts the FLOPs of matrix
  products, convolutions and attention, forward and backward (not elementwise work, norms, losses' reductions or
  the optimiser). Three fixes, all in count_flops: CPU flash attention, which it does not know, is counted with
  its attention formula; a convolution's weight gradient, which it counts as if every convolution were dense
  (MobileNetV2's depthwise ones hundreds of times too high), with the forward's count; and its per-module
  breakdown, which is not needed and crashes on transformers' matcher, is left out. GFLOP over the median time is
  the achieved rate, set against the peak assumed from the CPU's flags and clock (the JSON says how, per
  precision); on CUDA no peak is assumed.
- Peak memory: each model, task and precision in a fresh subprocess (peak RSS on the CPU, which includes the
  interpreter and libraries; peak allocated on CUDA), so no run's peak hides another's.
- SimNet width: the mobile preset's training step at SimNet widths 256 (the paper's) and 128, timed alternating
  (``--only-simnet-width`` runs this alone and adds it to speed.json).
- ONNX: the mobile preset exported as ``weakshot export`` writes it, run by onnxruntime beside the same module in
  PyTorch, float32, batch 1 at 256 and 512 (``--only-onnx`` runs this alone and adds it to speed.json).
- Throughput: ``weakshot predict`` on the CamVid val images and ``weakshot pseudolabel`` on its training split,
  as subprocesses, end to end, at the CLI's default precision (--no-throughput skips it).

transformers' MaskFormer is called with ``output_hidden_states=True``: with deep supervision on it needs them and
otherwise fails (5.24). It runs under bf16 autocast unchanged: its Hungarian matcher hands the cost matrix to scipy,
which cannot read bf16, but the matrix comes out float32, as the float32 target masks promote its dice term.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import flop_counter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED  # noqa: E402

sys.path.insert(0, str(ROOT))

from weakshot_cli.data.manifest import Item, Manifest  # noqa: E402
from weakshot_cli.engine.build import TrainStep, backbone_norm, build_criterion, build_model  # noqa: E402
from weakshot_cli.engine.checkpoint import save_checkpoint, weights_state  # noqa: E402
from weakshot_cli.engine.config import TrainConfig, build_config  # noqa: E402
from weakshot_cli.engine.inference import class_scores, model_from_checkpoint  # noqa: E402
from weakshot_cli.io import atomic_write  # noqa: E402

K = 11
CAMVID = SHARED / "data" / "camvid"
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Net:
    """A network as its library trains and runs it: ``module`` holds every trained parameter, ``loss(images,
    targets)`` prepares the targets once and returns the closure computing the total loss, ``scores(images)``
    returns per-class score maps at the input size."""

    module: nn.Module
    model: nn.Module
    loss: Callable[[torch.Tensor, list[dict]], Callable[[], torch.Tensor]]
    scores: Callable[[torch.Tensor], object]


# SimFormer-R50 with parts of the method off, timed beside it: where the method's own overhead goes
WITHOUT = {"weakshot-points": ["num_points=12544"],  # the mask losses on Mask2Former's 12,544 sampled points
           "weakshot-no-comp": ["use_comp=false"], "weakshot-no-simnet": ["use_sim=false", "use_dist=false"],
           "weakshot-maskformer": ["use_comp=false", "use_sim=false", "use_dist=false"]}


def make_batch(batch: int, imgsz: int, dev: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """Random images; per image three base-class quadrants with masks, one unlabelled quadrant, novel tag 8."""
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


def weakshot_config(preset: str, sets: list[str] | None = None) -> TrainConfig:
    """The preset as ``train`` runs it by default (ImageNet backbone: frozen BatchNorm and the tags method), with
    random weights instead of the download; frozen BatchNorm takes the same time whatever its statistics."""
    cfg = build_config(preset, {}, sets or [])
    return replace(cfg, backbone_weights="none", norm=backbone_norm(cfg))


def inference_model(cfg: TrainConfig, model: nn.Module, device: torch.device) -> nn.Module:
    """What evaluate, predict, pseudolabel and export run: ``model``'s weights loaded as a checkpoint's are."""
    return model_from_checkpoint({"config": cfg.to_dict(), "classes": [f"c{i}" for i in range(K)],
                                  "model": model.state_dict()}, device)


def weakshot_net(preset: str, device: torch.device, sets: list[str] | None = None) -> Net:
    cfg = weakshot_config(preset, sets)
    m = Manifest([f"c{i}" for i in range(K)], base=list(range(8)), novel=[8, 9, 10],
                 splits={"train": [Item("x", "y", [])]})
    torch.manual_seed(0)
    step = TrainStep(build_model(cfg, K), build_criterion(cfg, m)).to(device)

    inference: dict[str, nn.Module] = {}

    def scores(images: torch.Tensor) -> list[torch.Tensor]:
        if not inference:  # made on first use, so that a training measurement holds no second copy
            inference["model"] = inference_model(cfg, step.model, device)
        sizes = [tuple(images.shape[-2:])] * len(images)
        return class_scores(inference["model"], images, sizes, sizes)

    return Net(step, step.model, lambda images, targets: lambda: step(images, targets)["loss"], scores)


def hf_net(device: torch.device) -> Net:
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    decoder = DetrConfig(num_queries=100, decoder_layers=6, d_model=256, decoder_attention_heads=8,
                         decoder_ffn_dim=2048, dropout=0.1)
    cfg = MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, num_labels=K, use_auxiliary_loss=True,
                           fpn_feature_size=256, mask_feature_size=256)
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(cfg).to(device)

    def loss(images: torch.Tensor, targets: list[dict]) -> Callable[[], torch.Tensor]:
        masks = [t["masks"][t["has_mask"]].float() for t in targets]
        labels = [t["labels"][t["has_mask"]] for t in targets]
        return lambda: model(pixel_values=images, mask_labels=masks, class_labels=labels,
                             output_hidden_states=True).loss

    def scores(images: torch.Tensor) -> torch.Tensor:  # the steps of transformers' post_process_semantic_segmentation
        out = model(pixel_values=images, output_hidden_states=True)
        probs = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1],
                             out.masks_queries_logits.sigmoid())
        return F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)

    return Net(model, model, loss, scores)


def build_net(name: str, device: torch.device) -> Net:
    """"weakshot" (SimFormer-R50), "transformers" (MaskFormer-R50), "mobile" (weakshot's mobile preset) or one of
    WITHOUT (SimFormer-R50 without some of the method's losses)."""
    if name == "transformers":
        return hf_net(device)
    if name == "mobile":
        return weakshot_net("mobile", device)
    return weakshot_net("r50", device, [] if name == "weakshot" else WITHOUT[name])


def task_fn(net: Net, task: str, device: torch.device, precision: str, batch: int, imgsz: int) -> Callable[[], None]:
    """One training step (forward, losses, backward, AdamW) or one inference pass, at ``precision``, on fixed
    synthetic inputs made here so that only the network's work is timed."""
    dtype = PRECISIONS[precision]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    images, targets = make_batch(batch, imgsz, device)
    if task == "infer":
        def infer() -> None:
            net.model.eval()
            with torch.no_grad(), autocast():
                net.scores(images)
        return infer
    loss = net.loss(images, targets)
    opt = torch.optim.AdamW(net.module.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def train() -> None:
        net.module.train()
        with autocast():
            value = loss()
        opt.zero_grad()
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
    return train


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward(grad_out, x, weight, _bias, _stride, _padding, _dilation, transposed, _output_padding, _groups,
                   output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient asked for (input, weight) takes the forward's multiply-adds. FlopCounterMode's own formula
    counts the weight gradient as if the convolution were dense, which puts MobileNetV2's depthwise (960-group)
    convolutions hundreds of times too high; for dense convolutions the two agree."""
    return flop_counter.conv_flop_count(x, weight, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


# Formulas FlopCounterMode lacks or gets wrong: CPU flash attention (nn.MultiheadAttention in eval on the CPU) and
# grouped convolutions' backward.
FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
            torch.ops.aten.convolution_backward: _conv_backward}


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker (torch >= 2.4), so every FLOP counts towards the total and no
    module hook runs. Its hooks fail on a module called under no_grad with a view of a tensor that requires grad
    (such a view has requires_grad but no grad_fn), which transformers' Hungarian matcher does."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *args) -> None:
        pass


def count_flops(fn: Callable[[], None]) -> int:
    """Run ``fn`` once, counting its matmul/conv/attention FLOPs; the kernels are the ones a timed run uses."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=FORMULAS)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def measure(fns: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, tuple[float, int]]:
    """Median seconds and FLOPs per closure: each runs once as a warm-up that counts its FLOPs, then the closures
    alternate ``repeats`` times, so a slow spell of the machine hits all of them alike."""
    flops = {n: count_flops(fn) for n, fn in fns.items()}
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for n, fn in fns.items():
            times[n].append(timed(fn, device))
    return {n: (statistics.median(times[n]), flops[n]) for n in fns}


def work(flops: int, seconds: float, peak_gflops: float | None) -> dict:
    """GFLOP counted, GFLOP/s achieved, and that rate as a fraction of the assumed peak (None without one)."""
    achieved = flops / seconds / 1e9
    return {"gflop": round(flops / 1e9, 2), "gflops_achieved": round(achieved, 2),
            "fraction_of_peak": round(achieved / peak_gflops, 4) if peak_gflops else None}


def compare(device: torch.device, precision: str, batch: int, imgsz: int, repeats: int,
            peak_gflops: float | None) -> dict:
    """Training step and inference of weakshot vs transformers at ``precision``: times, ratio, images/s, work."""
    nets = {n: build_net(n, device) for n in ("weakshot", "transformers")}
    result: dict = {}
    flops: dict = {}
    for task, b in (("train", batch), ("infer", 1)):
        res = measure({n: task_fn(net, task, device, precision, b, imgsz) for n, net in nets.items()}, device, repeats)
        (ws, ws_flops), (hf, hf_flops) = res["weakshot"], res["transformers"]
        result[task] = {"weakshot_s": round(ws, 4), "transformers_s": round(hf, 4), "ratio": round(ws / hf, 3),
                        "weakshot_img_s": round(b / ws, 2), "transformers_img_s": round(b / hf, 2)}
        flops[task] = {"weakshot": work(ws_flops, ws, peak_gflops), "transformers": work(hf_flops, hf, peak_gflops)}
        print(precision, task, result[task], flops[task], flush=True)
    return {**result, "flops": flops, "method_overhead": method_overhead(device, precision, batch, imgsz, repeats)}


def method_overhead(device: torch.device, precision: str, batch: int, imgsz: int, repeats: int) -> dict:
    """SimFormer-R50's training step beside itself without the complementary loss, without SimNet and distillation,
    and without all three (plain MaskFormer inside weakshot): seconds, and the share of the full step each saves."""
    names = ["weakshot", *WITHOUT]
    res = measure({n: task_fn(build_net(n, device), "train", device, precision, batch, imgsz) for n in names},
                  device, repeats)
    full = res["weakshot"][0]
    out = {n: {"s": round(s, 4), "share_saved": round(1 - s / full, 3), "gflop": round(f / 1e9, 2)}
           for n, (s, f) in res.items()}
    print(precision, "method overhead", out, flush=True)
    return out


def mobile_jobs(imgsz: int) -> dict[str, tuple[str, int, int]]:
    """The mobile preset's measurements: name -> (task, batch, imgsz)."""
    cfg = weakshot_config("mobile")
    return {"train": ("train", cfg.batch, cfg.imgsz), f"infer_{cfg.imgsz}": ("infer", 1, cfg.imgsz),
            f"infer_{imgsz}": ("infer", 1, imgsz)}


# The mobile preset's SimNet settings, timed against the preset (its pair matmuls were most of the step's work)
SIMNET_VARIANTS = {"preset": [], "former 64 points": ["num_sim_points=64", "sim_class_points=48", "num_dist_points=64"],
                   "width 128": ["simnet_width=128"]}


def simnet_variants(device: torch.device, precision: str, repeats: int) -> dict:
    """The mobile preset's training step beside SIMNET_VARIANTS, timed alternating: seconds, speed-up of the preset
    over each, GFLOP."""
    cfg = weakshot_config("mobile")
    res = measure({n: task_fn(weakshot_net("mobile", device, sets), "train", device, precision, cfg.batch, cfg.imgsz)
                   for n, sets in SIMNET_VARIANTS.items()}, device, repeats)
    preset = res["preset"][0]
    out = {n: {"s": round(s, 4), "preset_speedup": round(s / preset, 3), "gflop": round(f / 1e9, 2)}
           for n, (s, f) in res.items()}
    print(precision, "mobile simnet variants", out, flush=True)
    return out


def inference_only(device: torch.device, precision: str, imgsz: int, repeats: int) -> dict:
    """Inference (batch 1) of weakshot as its commands run it, beside the same weights unfolded (BatchNorm kept, as
    the training network runs) and transformers' MaskFormer: seconds and ratios to transformers."""
    ws = build_net("weakshot", device)
    unfolded = Net(ws.module, ws.model, ws.loss, lambda images: class_scores(
        ws.model, images, [tuple(images.shape[-2:])] * len(images), [tuple(images.shape[-2:])] * len(images)))
    nets = {"weakshot": ws, "weakshot_unfolded": unfolded, "transformers": build_net("transformers", device)}
    res = measure({n: task_fn(net, "infer", device, precision, 1, imgsz) for n, net in nets.items()}, device, repeats)
    hf = res["transformers"][0]
    out = {n: {"s": round(s, 4), "ratio_to_transformers": round(s / hf, 3)} for n, (s, _) in res.items()}
    print(precision, "inference", out, flush=True)
    return out


def mobile(device: torch.device, precision: str, imgsz: int, repeats: int, peak_gflops: float | None) -> dict:
    """Training step and inference of the mobile preset at ``precision``: seconds, images/s, work."""
    net, jobs = build_net("mobile", device), mobile_jobs(imgsz)
    res = measure({k: task_fn(net, task, device, precision, b, s) for k, (task, b, s) in jobs.items()}, device,
                  repeats)
    result = {k: {"s": round(s, 4), "img_s": round(jobs[k][1] / s, 2), **work(f, s, peak_gflops)}
              for k, (s, f) in res.items()}
    print(precision, "mobile", result, flush=True)
    return result


def onnx_vs_torch(threads: int, repeats: int, sizes: tuple[int, ...] = (256, 512)) -> dict:
    """The mobile preset (random weights) exported as `weakshot export` writes it, run by onnxruntime, beside the
    same module in PyTorch (float32, no autograd), batch 1 of RGB 0..255 at each size: median seconds and the
    ratio onnxruntime / PyTorch."""
    import onnxruntime as ort

    from models.deploy import Segmenter
    from weakshot_cli.data.dataset import MEAN, STD
    from weakshot_cli.engine.export import _write_onnx

    net = build_net("mobile", torch.device("cpu"))
    seg = Segmenter(inference_model(weakshot_config("mobile"), net.model, torch.device("cpu")), MEAN, STD,
                    torch.ones(K)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobile.onnx"
        _write_onnx(seg, {}, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        result = {}
        for size in sizes:
            x = torch.rand(1, 3, size, size) * 255

            def pytorch() -> None:
                with torch.no_grad():
                    seg(x)

            def onnxruntime() -> None:
                session.run(["scores"], {"images": x.numpy()})

            fns = {"pytorch": pytorch, "onnxruntime": onnxruntime}
            times: dict[str, list[float]] = {n: [] for n in fns}
            for fn in fns.values():
                fn()  # warm-up
            for _ in range(repeats):
                for n, fn in fns.items():
                    times[n].append(timed(fn, torch.device("cpu")))
            pt, ox = (statistics.median(times[n]) for n in fns)
            result[f"infer_{size}"] = {"pytorch_s": round(pt, 4), "onnxruntime_s": round(ox, 4),
                                       "ratio": round(ox / pt, 3)}
            print("onnx", size, result[f"infer_{size}"], flush=True)
    return {"preset": "mobile", "precision": "fp32", "threads": threads, "onnxruntime": ort.__version__, **result}


def peak_memory(name: str, task: str, device: str, precision: str, batch: int, imgsz: int, threads: int) -> float:
    """GiB at the peak of two runs of ``task`` in a fresh process."""
    code = (f"import sys; sys.argv=['speed.py']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import speed; "
            f"print(speed.measure_peak({name!r}, {task!r}, {device!r}, {precision!r}, {batch}, {imgsz}, {threads}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def measure_peak(name: str, task: str, device: str, precision: str, batch: int, imgsz: int, threads: int) -> float:
    """Run in the subprocess of peak_memory."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    fn = task_fn(build_net(name, dev), task, dev, precision, batch, imgsz)
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


def memories(device: str, precision: str, batch: int, imgsz: int, threads: int) -> tuple[dict, dict]:
    """Peak memory of the R50 comparison ({task: {model: GiB}}) and of the mobile preset ({job: GiB})."""
    r50 = {task: {n: peak_memory(n, task, device, precision, b, imgsz, threads) for n in ("weakshot", "transformers")}
           for task, b in (("train", batch), ("infer", 1))}
    mob = {k: peak_memory("mobile", task, device, precision, b, s, threads)
           for k, (task, b, s) in mobile_jobs(imgsz).items()}
    print(precision, "peak memory", r50, mob, flush=True)
    return r50, mob


def cpu_facts() -> dict:
    """Model name, flags, physical cores and clock (MHz, and where it came from: lscpu's max MHz where it reports
    one, which virtual machines often do not, else the highest "cpu MHz" in /proc/cpuinfo)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    proc = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    flags = set(lscpu.get("Flags", "").split()) or {f for line in proc if line.startswith("flags")
                                                     for f in line.partition(":")[2].split()}
    cores = (int(lscpu["Core(s) per socket"]) * int(lscpu.get("Socket(s)", "1"))
             if lscpu.get("Core(s) per socket", "").isdigit() else os.cpu_count() or 1)
    facts = {"model": lscpu.get("Model name", platform.processor() or platform.machine()), "flags": flags,
             "cores": cores}
    if lscpu.get("CPU max MHz"):
        return {**facts, "mhz": float(lscpu["CPU max MHz"]), "clock_from": "lscpu 'CPU max MHz'"}
    mhz = [float(line.partition(":")[2]) for line in proc if line.startswith("cpu MHz")]
    return {**facts, "mhz": max(mhz, default=None), "clock_from": "/proc/cpuinfo 'cpu MHz' (lscpu gives no max MHz)"}


def cpu_peaks(threads: int) -> dict[str, dict]:
    """Assumed peak GFLOP/s per precision, from what the machine reports, with the reasoning written out."""
    cpu = cpu_facts()
    flags, mhz, cores = cpu["flags"], cpu["mhz"], cpu["cores"]
    lanes, isa = (16, "AVX-512 (avx512f)") if "avx512f" in flags else (8, "AVX2 FMA3 (fma)") if "fma" in flags \
        else (0, "")
    if not lanes or not mhz:
        why = "no FMA in the CPU's flags" if not lanes else "no clock in lscpu or /proc/cpuinfo"
        return {p: {"peak_gflops_assumed": None, "peak_assumption": f"not assumed: {why}"} for p in ("fp32", "bf16")}
    used = min(threads, cores)
    fp32 = used * mhz / 1e3 * 2 * lanes * 2
    how = (f"{used} cores (the threads used, at most the {cores} physical cores) x {mhz:.0f} MHz from "
           f"{cpu['clock_from']} x 2 FMA units per core (assumed: true of Intel server cores since Skylake-SP Gold "
           f"and of AMD Zen 2-5, though Zen 4 splits a 512-bit FMA in two, halving the AVX-512 figure) x {lanes} "
           f"fp32 lanes of {isa} x 2 FLOPs per FMA; a turbo clock above the one reported would lower the true "
           f"fraction")
    if "amx_bf16" in flags:
        bf16 = round(used * mhz / 1e3 * 1024, 1)
        bf16_how = (f"{used} cores x {mhz:.0f} MHz x 1024 bf16 FLOPs per cycle per core: the AMX tile unit's rate "
                    "(amx_bf16) that Intel gives for 4th-generation Xeon; oneDNN runs bf16 matmuls and convolutions "
                    "on it, everything else runs at AVX-512 rates, so the fraction is far below 1 by design")
    elif "avx512_bf16" in flags:
        bf16, bf16_how = round(2 * fp32, 1), ("2x the fp32 peak: vdpbf16ps (avx512_bf16) does two bf16 products per "
                                              f"fp32 lane per FMA; fp32: {how}")
    else:
        bf16, bf16_how = round(fp32, 1), ("the fp32 peak: no bf16 arithmetic in the flags (neither avx512_bf16 nor "
                                          f"amx_bf16), so bf16 products are computed in fp32 after conversion; "
                                          f"fp32: {how}")
    return {"fp32": {"peak_gflops_assumed": round(fp32, 1), "peak_assumption": how},
            "bf16": {"peak_gflops_assumed": bf16, "peak_assumption": bf16_how}}


def peaks(device: torch.device, threads: int) -> dict[str, dict]:
    """Assumed peak GFLOP/s and how it was reached, per precision; none on CUDA."""
    if device.type == "cpu":
        return cpu_peaks(threads)
    why = f"not assumed: {torch.cuda.get_device_name(device)}'s tensor-core rates are not readable from torch"
    return {p: {"peak_gflops_assumed": None, "peak_assumption": why} for p in PRECISIONS}


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
        cfg = replace(weakshot_config("r50"), val_imgsz=0)
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precisions", help="comma-separated, from fp32,bf16,fp16 (fp16: CUDA only); "
                                         "default fp32,bf16 on the CPU, fp32,bf16,fp16 on CUDA")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=CAMVID)
    ap.add_argument("--no-throughput", action="store_true", help="skip the CamVid predict/pseudolabel runs")
    ap.add_argument("--only-onnx", action="store_true",
                    help="only the ONNX Runtime vs PyTorch inference of the mobile preset, added to speed.json")
    ap.add_argument("--only-simnet", action="store_true",
                    help="only the mobile preset's training step beside other SimNet settings, added to speed.json")
    ap.add_argument("--only-inference", action="store_true",
                    help="only inference against transformers (and unfolded BatchNorm), added to speed.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder for speed.json (CPU) or speed-cuda.json")
    a = ap.parse_args()
    cuda = torch.device(a.device).type == "cuda"
    a.precisions = (a.precisions or ("fp32,bf16,fp16" if cuda else "fp32,bf16")).split(",")
    if unknown := set(a.precisions) - set(PRECISIONS):
        ap.error(f"unknown precision(s) {', '.join(sorted(unknown))}; choose from {', '.join(PRECISIONS)}")
    if "fp16" in a.precisions and not cuda:
        ap.error("fp16 autocast is CUDA only; on the CPU use fp32,bf16")
    return a


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.only_onnx or a.only_simnet or a.only_inference:  # one part alone, added to an earlier speed.json
        path = a.out / "speed.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        stamp = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_facts()["model"], "threads": a.threads}
        if a.only_onnx:
            result["onnx"] = onnx_vs_torch(a.threads, a.repeats) | stamp
        elif a.only_simnet:
            result["mobile_simnet"] = {p: simnet_variants(device, p, a.repeats) for p in a.precisions} | stamp
        else:
            result["inference"] = {p: inference_only(device, p, a.imgsz, a.repeats) for p in a.precisions} | stamp
        atomic_write(path, lambda p: p.write_text(json.dumps(result, indent=2)))
        return
    import transformers

    mob = weakshot_config("mobile")
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"{cpu_facts()['model']}, {a.threads} threads of {os.cpu_count()} cores",
        "threads": a.threads, "torch": torch.__version__, "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"), "batch": a.batch, "imgsz": a.imgsz, "repeats": a.repeats,
        "precisions": {}, "mobile": {"batch": mob.batch, "imgsz": mob.imgsz, "precisions": {}}}
    path = a.out / ("speed.json" if device.type == "cpu" else f"speed-{device.type}.json")
    save = lambda: atomic_write(path, lambda p: p.write_text(json.dumps(result, indent=2)))  # noqa: E731
    rates = peaks(device, a.threads)
    for p in a.precisions:
        peak = rates[p]["peak_gflops_assumed"]
        entry = {"autocast": p != "fp32", "grad_scaler": p == "fp16", **rates[p],
                 **compare(device, p, a.batch, a.imgsz, a.repeats, peak)}
        mob_entry = mobile(device, p, a.imgsz, a.repeats, peak) | {"simnet": simnet_variants(device, p, a.repeats)}
        entry["peak_memory_gib"], mob_entry["peak_memory_gib"] = memories(a.device, p, a.batch, a.imgsz, a.threads)
        result["precisions"][p], result["mobile"]["precisions"][p] = entry, mob_entry
        save()  # after each precision, so a long run that is stopped keeps what it measured
    if device.type == "cpu":
        result["onnx"] = onnx_vs_torch(a.threads, a.repeats)
        save()
    if not a.no_throughput and a.data.exists():
        result["throughput"] = throughput(a.device, a.threads, a.data)
        print("throughput", result["throughput"], flush=True)
        save()


if __name__ == "__main__":
    main()
