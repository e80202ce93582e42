"""The training loop, iteration by iteration: the optimiser step, logging, validation with the best.pt rule,
checkpoints and stopping on a signal. train.py sets a run up around it (as DETR keeps engine.py apart from main.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from models import LOSS_KEYS
from weakshot_cli.data.dataset import build_targets
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.engine import distributed
from weakshot_cli.engine.build import TrainStep, weak_shot
from weakshot_cli.engine.calibrate import choose_class_scales, choose_novel_scale
from weakshot_cli.engine.checkpoint import save_checkpoint, training_state, weights_state
from weakshot_cli.engine.config import TrainConfig
from weakshot_cli.engine.inference import Inference, evaluate_loader, model_forward, novel_scales
from weakshot_cli.engine.progress import TrainProgress, figure
from weakshot_cli.errors import UserError
from weakshot_cli.folders import run_stage
from weakshot_cli.io import append_line, finite_or_null


@dataclass
class Training:
    """One run: what it trains on and writes to, the objects the loop updates, and how far it has got."""

    cfg: TrainConfig
    m: Manifest
    run_dir: Path
    console: Console
    ddp: distributed.Dist
    device: torch.device
    iters: int
    step: TrainStep
    module: nn.Module  # step, wrapped in DistributedDataParallel across processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast's, None for full precision
    it: int = 0
    best: float | None = None
    best_iter: int | None = None
    announce: str | None = None  # printed once the first checkpoint is saved: from then on the run folder stays
    novel_scale: float = 1.0  # the calibration chosen at the last validation (calibrate.py), saved with the weights
    class_scales: dict[str, float] = field(default_factory=dict)  # and its per-class factors (example masks)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)


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


def check_finite(losses: dict[str, torch.Tensor], it: int, run_dir: Path) -> None:
    bad = [k for k in (*LOSS_KEYS, "loss") if not torch.isfinite(losses[k].detach()).all()]
    if bad:
        what = f"non-finite loss at iteration {it}: {bad[0]} = {losses[bad[0]].item()}; stopped"
        last = run_dir / "weights" / "last.pt"
        if last.exists():
            raise UserError(f"{what}, the last good checkpoint is kept", last)
        raise UserError(f"{what} before the first checkpoint, so nothing is kept (lower --lr?)")


def log_record(run_dir: Path, record: dict) -> None:
    """One line of metrics.jsonl, strict JSON: an undefined figure (NaN) is null."""
    append_line(run_dir / "metrics.jsonl", json.dumps(finite_or_null(record), allow_nan=False))


def save(t: Training, name: str) -> None:
    """weights/last.pt with the training state --resume needs, or weights/best.pt with the weights only."""
    state = weights_state(t.step.model, t.cfg, t.m.classes, t.m.base, t.m.novel, iteration=t.it, best=t.best,
                          best_iter=t.best_iter, stage=run_stage(t.run_dir)) | {"novel_scale": t.novel_scale,
                                                                                 "novel_class_scale": t.class_scales}
    if name == "last.pt":
        state |= training_state(t.step.criterion, t.optimizer, t.scheduler, t.scaler, t.device)
    save_checkpoint(t.run_dir / "weights" / name, state)
    if t.announce is not None:
        t.console.print(t.announce)
        t.announce = None


def optimise(t: Training, loss: torch.Tensor) -> None:
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.unscale_(t.optimizer)
    if t.cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(t.step.parameters(), t.cfg.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()


def train_iteration(t: Training, batch: dict) -> dict[str, float]:
    """One optimiser step on a batch; returns the loss and its terms."""
    targets = build_targets(batch, t.m.base, t.m.novel, not weak_shot(t.cfg, t.m))
    targets = [{k: v.to(t.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}
               for target in targets]
    t.step.criterion.progress = t.it / t.iters
    with t.autocast():
        losses = t.module(batch["image"].to(t.device, non_blocking=True), targets)
    check_finite(losses, t.it + 1, t.run_dir)
    optimise(t, losses["loss"])
    t.it += 1
    return {k: float(losses[k].detach()) for k in ("loss", *LOSS_KEYS)}


def validate(t: Training, val_loader: DataLoader, progress: TrainProgress) -> bool:
    """Score the validation split, log it, and keep the best score (best.pt rule: see improves); True when
    this validation is the new best."""
    model = t.step.model
    was_training = model.training
    model.eval()
    imgsz = t.cfg.val_imgsz or t.cfg.imgsz
    scale, calibrated = None, ""
    if t.cfg.calibrate and weak_shot(t.cfg, t.m):  # scored as evaluate scores these weights, calibration included
        t.novel_scale, miou = choose_novel_scale(model, t.m, imgsz, t.device, t.autocast)
        t.class_scales = choose_class_scales(model, t.m, imgsz, t.device, t.autocast, t.novel_scale)
        scale = novel_scales(t.m.classes, t.m.novel, t.novel_scale, t.class_scales)
        calibrated = (f"; novel scores x{t.novel_scale:g} (base-vs-unknown mIoU on training images "
                      f"{miou[t.novel_scale]:.1f})" + "".join(f", {n} x{f:g}" for n, f in t.class_scales.items()))
    scores = Inference(None, model_forward(model), t.device, t.autocast, imgsz, scale=scale)
    metrics, _ = evaluate_loader(scores, val_loader, len(t.m.classes), t.m.base, t.m.novel)
    model.train(was_training)
    score = best_score(metrics, t.cfg.best_metric)
    improved = improves(score, t.best)
    if improved:
        t.best, t.best_iter = score, t.it
    figures = {k: v for k, v in metrics.items() if k not in ("IoU", "Acc", "Precision")}
    log_record(t.run_dir, {"type": "val", "iter": t.it, **figures, "IoU": metrics["IoU"],
                           "novel_scale": t.novel_scale, "novel_class_scale": t.class_scales})
    progress.note(f"val @ {t.it}: mIoU {figure(metrics['mIoU'])} base {figure(metrics['base_mIoU'])} "
                  f"novel {figure(metrics['novel_mIoU'])}" + (f" (best {t.cfg.best_metric})" if improved else "")
                  + calibrated)
    return improved


def train_loop(t: Training, loader: DataLoader, val_loader: DataLoader | None) -> bool:
    """Train from iteration t.it to t.iters, validating and saving on the way; True when a signal stopped it
    (last.pt saved first)."""
    val_every, log_every = val_interval(t.cfg.val_every, t.iters), log_interval(t.cfg.log_every, t.iters)
    t.module.train()
    progress = TrainProgress(t.console, t.run_dir / "log.txt", t.it, t.iters, enabled=t.ddp.main, every=log_every)
    data = iter(loader)
    with progress, StopRequest() as stop:
        while t.it < t.iters:
            values = train_iteration(t, next(data))
            lr = t.optimizer.param_groups[-1]["lr"]
            if t.ddp.main and (t.it % log_every == 0 or t.it == t.iters):
                log_record(t.run_dir, {"type": "train", "iter": t.it, "lr": lr, **values})
            progress.update(t.it, values, lr, t.device)
            validating = val_loader is not None and (t.it % val_every == 0 or t.it == t.iters)
            if validating and t.ddp.main and validate(t, val_loader, progress):
                save(t, "best.pt")
            if t.ddp.main and (t.it % t.cfg.save_every == 0 or t.it == t.iters or validating or stop.signal):
                save(t, "last.pt")
            if stop.signal is not None:
                t.ddp.barrier()
                progress.record(f"stopped by signal {stop.signal} at iteration {t.it}")
                break
    return stop.signal is not None
