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
from weakshot_cli.engine.config import ARCH_KEYS, TrainConfig, validate as validate_config
from weakshot_cli.engine.inference import evaluate_loader
from weakshot_cli.engine.plots import plot_losses
from weakshot_cli.engine.progress import TrainProgress
from weakshot_cli.engine.runs import provisional_run_dir
from weakshot_cli.engine.visualise import default_palette
from weakshot_cli.engine.weights import init_backbone
from weakshot_cli.errors import Interrupted, UserError
from weakshot_cli.io import append_line, finite_or_null, remove_interrupted_writes, write_json, write_text


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
        what = f"non-finite loss at iteration {it}: {bad[0]} = {losses[bad[0]].item()}; stopped"
        last = run_dir / "weights" / "last.pt"
        if last.exists():
            raise UserError(f"{what}, the last good checkpoint is kept", last)
        raise UserError(f"{what} before the first checkpoint, so nothing is kept (lower --lr?)")


def log_interval(log_every: int, iters: int) -> int:
    """log_every, shortened for short runs so that they still log about 20 points (a 20-iteration run every one)."""
    return min(log_every, max(1, iters // 20))


def val_interval(val_every: int, iters: int) -> int:
    """val_every; 0 means about 10 validations, at least 10 iterations apart (a 20-iteration run validates twice)."""
    return val_every or max(10, iters // 10)


def best_score(metrics: dict, name: str) -> float | None:
    """The validation figure ``name`` (config ``best_metric``) or None where it is undefined. mean_base_novel is
    the mean of base and novel mIoU, or the one defined when the other is not (a class set without novel classes)."""
    if name == "mean_base_novel":
        values = [metrics[k] for k in ("base_mIoU", "novel_mIoU") if math.isfinite(metrics[k])]
        return sum(values) / len(values) if values else None
    return metrics[name] if math.isfinite(metrics[name]) else None


def improves(score: float | None, best: float | None) -> bool:
    """Tie-safe: a score equal to the best so far wins, so among equal scores best.pt holds the latest weights
    (more training), never the first validation's."""
    return score is not None and (best is None or score >= best)


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
          device: torch.device, resume: dict | None = None, init: dict | None = None,
          announce: str | None = None) -> dict:
    """Train and return the final summary (best metric, paths). ``resume`` continues a checkpoint's
    run (exactly, unless cfg asks for another length); ``init`` starts a new run from a checkpoint's weights.
    ``announce`` is printed once the first checkpoint is saved: from then on the run folder stays."""
    torch.manual_seed(cfg.seed)
    if device.type == "cpu" and ddp.world == 1:  # leave a core per loader worker: oversubscribed OpenMP spins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.workers))
    dataset = TrainDataset(m, AugConfig(cfg.imgsz, (cfg.scale_min, cfg.scale_max), tag_keep=cfg.tag_keep),
                           oracle=cfg.oracle, tag_only=cfg.tag_only)
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
    poly = lambda it: max(0.0, 1 - it / iters) ** cfg.poly_power  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    start, best, best_iter = 0, None, None
    if resume is not None:
        step.criterion.load_state_dict(resume["criterion"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        # The poly schedule over this run's total: the saved lr when the length is unchanged, and when the run is
        # extended, the new schedule's value at the resumed iteration (the lr rises again, then decays to 0).
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * poly(scheduler.last_epoch)
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        start, best_iter = resume["iter"], resume.get("best_iter")
        best = finite_or_null(resume["best"])  # runs of earlier versions saved -inf for "no score yet"
    if start >= iters:
        raise UserError(f"run already finished ({start} of {iters} iterations); --iters N with N above {start} "
                        "continues it", run_dir)
    if resume is not None and ddp.main:
        _after_crash(run_dir, start)
        if (resume["config"]["iters"], resume["config"]["epochs"]) != (cfg.iters, cfg.epochs):
            save_config(cfg, m.root, run_dir)  # the new length, for a later --resume
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
    val_every, log_every = val_interval(cfg.val_every, iters), log_interval(cfg.log_every, iters)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    def checkpoint(it: int, name: str = "last.pt") -> None:
        nonlocal announce
        state = {"model": step.model.state_dict(), "config": cfg.to_dict(), "classes": m.classes,
                 "base": m.base, "novel": m.novel, "palette": default_palette(len(m.classes)), "iter": it, "best": best,
                 "best_iter": best_iter, "stage": run_dir.parent.name}
        if name == "last.pt":
            state |= {"criterion": step.criterion.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                      "rng": {"torch": torch.get_rng_state(),
                              "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
        save_checkpoint(run_dir / "weights" / name, state)
        if announce is not None:
            console.print(announce)
            announce = None

    def log(record: dict) -> None:  # strict JSON: an undefined figure (NaN) is null
        append_line(run_dir / "metrics.jsonl", json.dumps(finite_or_null(record), allow_nan=False))

    module.train()
    progress = TrainProgress(console, run_dir / "log.txt", start, iters, enabled=ddp.main, every=log_every)
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
            if ddp.main and (it % log_every == 0 or it == iters):
                log({"type": "train", "iter": it, "lr": lr, **values})
            progress.update(it, values, lr, device)
            validate = val_loader is not None and (it % val_every == 0 or it == iters)
            if validate and ddp.main:
                metrics, _ = evaluate_loader(step.model, val_loader, len(m.classes), m.base, m.novel, device, autocast)
                score = best_score(metrics, cfg.best_metric)
                improved = improves(score, best)
                if improved:
                    best, best_iter = score, it
                log({"type": "val", "iter": it, **{k: v for k, v in metrics.items() if k not in ("IoU", "Acc")},
                     "IoU": metrics["IoU"]})
                progress.note(f"val @ {it}: mIoU {metrics['mIoU']:.1f} base {metrics['base_mIoU']:.1f} "
                              f"novel {metrics['novel_mIoU']:.1f}" + (f" (best {cfg.best_metric})" if improved else ""))
                if improved:
                    checkpoint(it, "best.pt")
            if ddp.main and (it % cfg.save_every == 0 or it == iters or validate or stop.signal):
                checkpoint(it)
            if stop.signal is not None:
                ddp.barrier()
                progress.record(f"stopped by signal {stop.signal} at iteration {it}")
                break
    interrupted = stop.signal is not None
    if ddp.main:
        if best is None and not interrupted:  # no validation split, or no validation had a score: the final weights
            best_iter = it
            checkpoint(it, "best.pt")
        plot_losses(run_dir, run_dir / "plots" / "losses.png")
        write_json(run_dir / "results.json", {"iter": it, "iters": iters, "best_metric": cfg.best_metric, "best": best,
                                              "best_iter": best_iter, "interrupted": interrupted}, allow_nan=False)
    ddp.barrier()
    distributed.cleanup()
    return {"iter": it, "iters": iters, "best": best, "interrupted": interrupted, "run_dir": str(run_dir),
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


def finished(summary: dict, stage: str) -> dict:
    """The summary of a run that ran to its end. A stopped one (Ctrl-C, SIGTERM) is no result to go on with (the
    demo, a script): the main process raises Interrupted, one line saying how to resume, exit 130."""
    if summary["interrupted"] and summary["main"]:
        raise Interrupted(f"interrupted at iteration {summary['iter']}; resume with weakshot {stage} --resume "
                          f"{summary['run_dir']}")
    return summary


# What --resume takes from the command line: a new length (--iters or --epochs), and where the run goes on (--device,
# --workers: the data order and augmentation depend on the seed and iteration only). Anything else would change it.
RESUME_OPTIONS = ("iters", "epochs", "device", "workers")


def run_train(dataset: Path | None, cfg_builder: Callable[[], TrainConfig], project: Path, name: str | None, exist_ok: bool,
              resume: Path | None, weights: Path | None, console: Console, stage: str = "train",
              resume_with: dict[str, object] | None = None) -> dict:
    """What ``weakshot train`` does: pick the run folder and checkpoints, then train. ``resume_with`` holds the
    RESUME_OPTIONS given with --resume; --iters or --epochs continues the run to that new length."""
    if resume is not None and weights is not None:
        raise UserError("--resume continues a run, --weights starts a new one from a checkpoint: use one")
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if "optimizer" not in ckpt:
            raise UserError("this checkpoint holds weights only (best.pt); resume from weights/last.pt", resume)
        run_dir = resume if resume.is_dir() else resume.parent.parent
        try:
            config = json.loads((run_dir / "config.json").read_text())
            run_dataset = Path(config.pop("dataset"))
            cfg = TrainConfig(**config)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the run's config.json ({e.__class__.__name__}: {e})", run_dir) from None
        if dataset is not None and dataset.resolve() != run_dataset.resolve():
            raise UserError(f"DATASET differs from the dataset of the run --resume continues ({run_dataset}); "
                            "leave DATASET out", dataset)
        dataset = run_dataset
        given = {k: v for k, v in (resume_with or {}).items() if v is not None}
        if "iters" in given and "epochs" not in given:
            given["epochs"] = 0  # --iters replaces a length given in epochs
        for key, value in given.items():
            setattr(cfg, key, value)
        validate_config(cfg)
        m = load_manifest(dataset)
        ddp, device = distributed.setup(cfg.device)
        check_run(cfg, m, dataset, ddp.world, run_dir.parent.name)
        if ddp.main:
            length = f"{cfg.epochs} epochs" if cfg.epochs > 0 else f"{cfg.iters} iterations"
            console.print(f"Resuming {run_dir} from iteration {ckpt['iter']} (of {length})")
        return finished(train(cfg, m, run_dir, console, ddp, device, resume=ckpt), run_dir.parent.name)
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
        # printed at the first checkpoint: a run that fails before it leaves no folder to point to
        announce = (f"Run folder: [bold]{run_dir}[/]  ({len(m.splits['train'])} training images, "
                    f"{len(m.base)} base + {len(m.novel)} novel classes)")
        summary = train(cfg, m, run_dir, console, ddp, device, init=init, announce=announce)
    return finished(summary, stage)
