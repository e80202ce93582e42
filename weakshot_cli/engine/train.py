"""The training loop: one device or DDP, exact resume, periodic validation, run folder outputs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models import SimFormer, SimFormerCriterion
from models.criterion import LOSS_KEYS
from weakshot_cli.data.dataset import AugConfig, EvalDataset, TrainDataset, build_targets, collate_eval, collate_train
from weakshot_cli.data.manifest import Manifest, load_manifest
from weakshot_cli.data.pairing import PairBatchSampler
from weakshot_cli.engine import distributed
from weakshot_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from weakshot_cli.engine.config import ARCH_KEYS, TrainConfig
from weakshot_cli.engine.inference import evaluate_loader
from weakshot_cli.engine.plots import plot_losses
from weakshot_cli.engine.progress import TrainProgress
from weakshot_cli.engine.runs import provisional_run_dir
from weakshot_cli.engine.visualise import default_palette
from weakshot_cli.engine.weights import init_backbone
from weakshot_cli.errors import UserError
from weakshot_cli.io import append_line, remove_interrupted_writes, write_json, write_text


def build_model(cfg: TrainConfig, num_classes: int) -> SimFormer:
    norm = cfg.norm if cfg.norm != "auto" else ("bn" if cfg.backbone_weights == "none" else "frozen_bn")
    model = SimFormer(num_classes, cfg.backbone, norm, cfg.num_queries, cfg.hidden_dim, cfg.mask_dim,
                      cfg.dec_layers, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.transformer_in)
    # Channels-last weights make every convolution run channels-last (oneDNN on CPU, tensor cores on CUDA):
    # measured 25-30% off SimFormer-R50's CPU training step (benchmarks/speed.py).
    return model.to(memory_format=torch.channels_last)


def build_criterion(cfg: TrainConfig, m: Manifest) -> SimFormerCriterion:
    weak = not (cfg.oracle or m.novel_masks)  # oracle and retraining are plain MaskFormer
    return SimFormerCriterion(
        len(m.classes), m.base, m.novel, cfg.mask_dim, cfg.no_object_weight, cfg.ce_weight, cfg.mask_weight,
        cfg.dice_weight, cfg.comp_weight, cfg.ignore_prior, cfg.sim_weight, cfg.dist_weight, cfg.dist_func,
        cfg.dist_cross_image, cfg.num_sim_points, cfg.sim_class_points, cfg.num_dist_points,
        use_sim=weak and cfg.use_sim, use_dist=weak and cfg.use_dist, use_comp=weak and cfg.use_comp,
        num_points=cfg.num_points,
    )


class TrainStep(nn.Module):
    """Model and criterion in one module, so DDP synchronises the SimNet's gradients too."""

    def __init__(self, model: SimFormer, criterion: SimFormerCriterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.criterion(self.model(images), targets)


def param_groups(step: TrainStep, cfg: TrainConfig) -> list[dict]:
    """Backbone at lr x backbone_lr_mult; no weight decay on norm layers and query embeddings."""
    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Embedding)
    no_decay = {id(p) for mod in step.modules() if isinstance(mod, norm_types) for p in mod.parameters(False)}
    backbone = {id(p) for p in step.model.backbone.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in step.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone, id(p) in no_decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if bb else 1.0),
             "weight_decay": 0.0 if nd else cfg.weight_decay} for (bb, nd), ps in sorted(groups.items())]


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current iteration."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _after_crash(run_dir: Path, last_iter: int) -> None:
    """Before resuming: drop log records past the checkpoint (and a line torn by a kill), and the temporary
    files of atomic writes a kill interrupted."""
    def kept(line: str) -> bool:
        try:
            return json.loads(line).get("iter", 0) <= last_iter
        except ValueError:
            return False

    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and kept(line)]
        write_text(path, "".join(line + "\n" for line in lines))
    remove_interrupted_writes(run_dir / "weights")


def check_finite(losses: dict[str, torch.Tensor], it: int, run_dir: Path) -> None:
    bad = [k for k in (*LOSS_KEYS, "loss") if not torch.isfinite(losses[k].detach()).all()]
    if bad:
        raise UserError(f"non-finite loss at iteration {it}: {bad[0]} = {losses[bad[0]].item()}; "
                        f"stopped, the last good checkpoint is kept", run_dir / "weights" / "last.pt")


def optimise(loss: torch.Tensor, step: TrainStep, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, clip_grad: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(step.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def train(cfg: TrainConfig, m: Manifest, run_dir: Path, console: Console, ddp: distributed.Dist,
          device: torch.device, resume: dict | None = None, init: dict | None = None) -> dict:
    """Train and return the final summary (best metric, paths). ``resume`` continues a checkpoint's
    run exactly; ``init`` starts a new run from a checkpoint's weights."""
    torch.manual_seed(cfg.seed)
    if device.type == "cpu" and ddp.world == 1:  # leave a core per loader worker: oversubscribed OpenMP spins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.workers))
    dataset = TrainDataset(m, AugConfig(cfg.imgsz, (cfg.scale_min, cfg.scale_max), tag_keep=cfg.tag_keep),
                           oracle=cfg.oracle)
    iters = math.ceil(cfg.epochs * len(dataset) / cfg.batch) if cfg.epochs > 0 else cfg.iters
    model, criterion = build_model(cfg, len(m.classes)), build_criterion(cfg, m)
    if resume is None and init is None:
        init_backbone(model.backbone, cfg.backbone, cfg.backbone_weights)
    source = resume or init
    if source is not None:
        try:
            model.load_state_dict(source["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint does not fit this model/class set ({str(e).splitlines()[0]})") from None
    if ddp.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = TrainStep(model, criterion).to(device)
    module = DistributedDataParallel(step, find_unused_parameters=True) if ddp.world > 1 else step
    optimizer = torch.optim.AdamW(param_groups(step, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / iters) ** cfg.poly_power)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    start, best = 0, float("-inf")
    if resume is not None:
        step.criterion.load_state_dict(resume["criterion"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        start, best = resume["iter"], resume["best"]
        if ddp.main:
            _after_crash(run_dir, start)
    if start >= iters:
        raise UserError(f"run already finished ({start} of {iters} iterations)", run_dir)
    sampler = PairBatchSampler([it.tags for it in dataset.items], m.base, m.novel, cfg.batch, cfg.seed,
                               ddp.rank, ddp.world, start_iter=start)
    # its own generator: creating the iterator would otherwise draw from the global RNG and shift it on resume
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_train, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
    val_loader = None
    if "val" in m.splits and m.splits["val"]:
        val_loader = DataLoader(EvalDataset(m, "val", cfg.val_imgsz or cfg.imgsz), batch_size=max(1, cfg.batch // 2),
                                collate_fn=collate_eval, num_workers=cfg.workers)
    val_every = cfg.val_every or max(1, iters // 10)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    def checkpoint(it: int, name: str = "last.pt") -> None:
        state = {"model": step.model.state_dict(), "config": cfg.to_dict(), "classes": m.classes,
                 "base": m.base, "novel": m.novel, "palette": default_palette(len(m.classes)), "iter": it, "best": best, "stage": run_dir.parent.name}
        if name == "last.pt":
            state |= {"criterion": step.criterion.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                      "rng": {"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
        save_checkpoint(run_dir / "weights" / name, state)

    def log(record: dict) -> None:
        append_line(run_dir / "metrics.jsonl", json.dumps(record))

    module.train()
    progress = TrainProgress(console, run_dir / "log.txt", start, iters, enabled=ddp.main, every=cfg.log_every)
    data = iter(loader)
    it = start
    with progress, StopRequest() as stop:
        while it < iters:
            batch = next(data)
            targets = build_targets(batch, m.base, m.novel, cfg.oracle or m.novel_masks)
            targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
            with autocast():
                losses = module(batch["image"].to(device, non_blocking=True), targets)
            check_finite(losses, it + 1, run_dir)
            optimise(losses["loss"], step, optimizer, scheduler, scaler, cfg.clip_grad)
            it += 1
            values = {k: float(losses[k].detach()) for k in ("loss", *LOSS_KEYS)}
            lr = optimizer.param_groups[-1]["lr"]
            if ddp.main and (it % cfg.log_every == 0 or it == iters):
                log({"type": "train", "iter": it, "lr": lr, **values})
            progress.update(it, values, lr, device)
            validate = val_loader is not None and (it % val_every == 0 or it == iters)
            if validate and ddp.main:
                metrics, _ = evaluate_loader(step.model, val_loader, len(m.classes), m.base, m.novel, device, autocast)
                key = metrics["novel_mIoU"] if m.novel else metrics["mIoU"]
                improved = not math.isnan(key) and key > best
                best = max(best, key) if not math.isnan(key) else best
                log({"type": "val", "iter": it, **{k: v for k, v in metrics.items() if k not in ("IoU", "Acc")},
                     "IoU": metrics["IoU"]})
                progress.note(f"val @ {it}: mIoU {metrics['mIoU']:.1f} base {metrics['base_mIoU']:.1f} "
                              f"novel {metrics['novel_mIoU']:.1f}" + (" (best)" if improved else ""))
                if improved:
                    checkpoint(it, "best.pt")
            if ddp.main and (it % cfg.save_every == 0 or it == iters or validate or stop.signal):
                checkpoint(it)
            if stop.signal is not None:
                ddp.barrier()
                progress.note(f"stopped by signal {stop.signal} at iteration {it}; resume with --resume {run_dir}")
                break
    if ddp.main:
        if val_loader is None:
            checkpoint(it, "best.pt")
        plot_losses(run_dir, run_dir / "plots" / "losses.png")
        write_json(run_dir / "results.json", {"iter": it, "iters": iters, "best": best,
                                              "interrupted": stop.signal is not None})
    ddp.barrier()
    distributed.cleanup()
    return {"iter": it, "iters": iters, "best": best, "interrupted": stop.signal is not None, "run_dir": str(run_dir),
            "main": ddp.main}


def check_run(cfg: TrainConfig, m: Manifest, dataset: Path, world: int, stage: str) -> None:
    """Refuse, before any folder is made, what would fail later inside the loop."""
    if stage == "retrain" and not m.novel_masks:
        raise UserError("retrain needs a pseudo-labelled dataset (made by 'weakshot pseudolabel'); "
                        "this one hides the novel classes, train it with 'weakshot train'", dataset)
    if cfg.oracle and any(it.full is None for it in m.splits["train"]):
        raise UserError("--oracle needs a benchmark-mode dataset (made by 'weakshot split --novel', "
                        "whose training items keep their full masks)", dataset)
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch} is not divisible by the {world} torchrun processes")


def save_config(cfg: TrainConfig, dataset: Path, run_dir: Path) -> None:
    write_json(run_dir / "config.json", {**cfg.to_dict(), "dataset": str(dataset.resolve())})


def run_train(dataset: Path | None, cfg_builder: Callable[[], TrainConfig], project: Path, name: str | None, exist_ok: bool,
              resume: Path | None, weights: Path | None, console: Console, stage: str = "train") -> dict:
    """What ``weakshot train`` does: pick the run folder and checkpoints, then train."""
    if resume is not None and weights is not None:
        raise UserError("--resume continues a run, --weights starts a new one from a checkpoint: use one")
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if "optimizer" not in ckpt:
            raise UserError("this checkpoint holds weights only (best.pt); resume from weights/last.pt", resume)
        run_dir = resume if resume.is_dir() else resume.parent.parent
        try:
            config = json.loads((run_dir / "config.json").read_text())
            dataset = Path(config.pop("dataset"))
            cfg = TrainConfig(**config)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the run's config.json ({e.__class__.__name__}: {e})", run_dir) from None
        m = load_manifest(dataset)
        ddp, device = distributed.setup(cfg.device)
        check_run(cfg, m, dataset, ddp.world, run_dir.parent.name)
        if ddp.main:
            console.print(f"Resuming {run_dir} from iteration {ckpt['iter']}")
        return train(cfg, m, run_dir, console, ddp, device, resume=ckpt)
    if dataset is None:
        raise UserError("give a DATASET folder (made by 'weakshot split'), or --resume RUN")
    m = load_manifest(dataset)
    cfg = cfg_builder()
    init = None
    if weights is not None:
        init = load_checkpoint(weights)
        if init["classes"] != m.classes:
            raise UserError("checkpoint was trained on a different class set than this dataset", weights)
        for key in ARCH_KEYS:  # the network must have the checkpoint's shape
            setattr(cfg, key, init["config"][key])
    ddp, device = distributed.setup(cfg.device)
    check_run(cfg, m, dataset, ddp.world, stage)
    # A run that fails before its first checkpoint leaves no folder behind; one with a checkpoint keeps it.
    folder = provisional_run_dir(project, stage, name, exist_ok, keep=lambda d: any((d / "weights").glob("*.pt")))
    with folder if ddp.main else contextlib.nullcontext() as run_dir:
        run_dir = Path(ddp.broadcast(str(run_dir)))  # rank 0 makes the folder; the others learn its name
        if ddp.main:
            save_config(cfg, dataset, run_dir)
            console.print(f"Run folder: [bold]{run_dir}[/]  ({len(m.splits['train'])} training images, "
                          f"{len(m.base)} base + {len(m.novel)} novel classes)")
        return train(cfg, m, run_dir, console, ddp, device, init=init)
