"""Setting a training run up around the loop (loop.py): the network with its starting weights, the optimiser and
schedule, the resumed state, the data loaders, and the outputs at the end; run_train picks the run folder."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from weakshot_cli.data.dataset import AugConfig, EvalDataset, TrainDataset, collate_eval, collate_train
from weakshot_cli.data.identify import separating_images, tag_matrix
from weakshot_cli.data.manifest import Manifest, load_manifest
from weakshot_cli.data.pairing import PairBatchSampler
from weakshot_cli.data.rejections import read_rejections
from weakshot_cli.engine import distributed
from weakshot_cli.engine.build import TrainStep, amp_dtype, build_criterion, build_model, param_groups, weak_shot
from weakshot_cli.engine.calibrate import choose_novel_scale
from weakshot_cli.engine.checks import check_classes
from weakshot_cli.engine.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from weakshot_cli.engine.config import ARCH_KEYS, TrainConfig, validate as validate_config
from weakshot_cli.engine.inference import model_from_checkpoint
from weakshot_cli.engine.loop import Training, save, train_loop
from weakshot_cli.engine.plots import plot_losses
from weakshot_cli.engine.weights import init_backbone
from weakshot_cli.errors import Interrupted, UserError
from weakshot_cli.folders import provisional_run_dir, remove_interrupted_writes, run_stage
from weakshot_cli.io import finite_or_null, read_json, write_json, write_text


def poly_schedule(iters: int, power: float) -> Callable[[int], float]:
    """The lr factor at an iteration: (1 - it / iters) ** power, 0 past the end. A function, not an object:
    LambdaLR would save an object's attributes into the checkpoint."""
    return lambda it: max(0.0, 1 - it / iters) ** power


def build_training(cfg: TrainConfig, m: Manifest, run_dir: Path, console: Console, ddp: distributed.Dist,
                   device: torch.device, *, iters: int, source: dict | None, announce: str | None) -> Training:
    """The network with the weights of ``source`` (a checkpoint to resume or start from), else with the configured
    backbone initialisation; its losses, optimiser, poly schedule and grad scaler, at iteration 0."""
    model, criterion = build_model(cfg, len(m.classes)), build_criterion(cfg, m)
    if source is None:
        init_backbone(model.backbone, cfg.backbone, cfg.backbone_weights)
    else:
        try:
            model.load_state_dict(source["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint does not fit this model/class set ({str(e).splitlines()[0]})") from None
    if ddp.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = TrainStep(model, criterion).to(device)
    module = DistributedDataParallel(step, find_unused_parameters=True) if ddp.world > 1 else step
    groups = param_groups(step, step.model.backbone, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(iters, cfg.poly_power))
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return Training(cfg=cfg, m=m, run_dir=run_dir, console=console, ddp=ddp, device=device, iters=iters, step=step,
                    module=module, optimizer=optimizer, scheduler=scheduler, scaler=scaler, dtype=dtype,
                    announce=announce)


def restore(t: Training, ckpt: dict) -> None:
    """Continue the run of ``ckpt`` (a last.pt): its training state, iteration and best score so far."""
    load_training_state(ckpt, t.step.criterion, t.optimizer, t.scheduler, t.scaler, t.device)
    # The poly schedule over this run's total: the saved lr when the length is unchanged, and when the run is
    # extended, the new schedule's value at the resumed iteration (the lr rises again, then decays to 0).
    for group, base_lr, factor in zip(t.optimizer.param_groups, t.scheduler.base_lrs, t.scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(t.scheduler.last_epoch)
    t.it, t.best_iter, t.novel_scale = ckpt["iter"], ckpt.get("best_iter"), ckpt.get("novel_scale", 1.0)
    t.best = finite_or_null(ckpt["best"])  # runs of earlier versions saved -inf for "no score yet"


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


def anchor_repeats(dataset: TrainDataset, cfg: TrainConfig) -> list[int]:
    """How often each image is a batch anchor per epoch: the few images that carry a name the rest cannot (an
    example mask; tags that separate a pair split flags) are otherwise seen as rarely as any other."""
    m, items = dataset.m, dataset.items
    # the oracle sees every novel mask, so no tag is needed to name a class
    separating = ([False] * len(items) if cfg.separating_repeat == 1 or dataset.oracle else
                  separating_images(tag_matrix([it.tags for it in items], len(m.classes)),
                                    np.array([it.label is None for it in items], dtype=bool), m.classes, m.novel))
    return [max(cfg.example_repeat if it.example else 1, cfg.separating_repeat if sep else 1)
            for it, sep in zip(items, separating)]


def make_loaders(t: Training, dataset: TrainDataset) -> tuple[DataLoader, DataLoader | None]:
    """The training loader, its data order continuing at iteration t.it, and the validation loader (None without
    a val split)."""
    cfg, m = t.cfg, t.m
    sampler = PairBatchSampler([item.tags for item in dataset.items], m.base, m.novel, cfg.batch, cfg.seed,
                               t.ddp.rank, t.ddp.world, start_iter=t.it, pairing=cfg.pairing,
                               repeats=anchor_repeats(dataset, cfg))
    # its own generator: creating the iterator would otherwise draw from the global RNG and shift it on resume
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_train, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=t.device.type == "cuda",
                        generator=torch.Generator())
    val_loader = None
    if "val" in m.splits and m.splits["val"]:
        val_loader = DataLoader(EvalDataset(m, "val", cfg.val_imgsz or cfg.imgsz), batch_size=max(1, cfg.batch // 2),
                                collate_fn=collate_eval, num_workers=cfg.workers)
    return loader, val_loader


def calibrate(t: Training) -> float:
    """Choose the novel-score factor (calibrate.py) of last.pt and of best.pt, and record it in each; returns
    last.pt's."""
    chosen: dict[int, float] = {}  # by iteration: best.pt is often last.pt's weights
    for name in ("last.pt", "best.pt"):
        path = t.run_dir / "weights" / name
        ckpt = load_checkpoint(path)
        if ckpt["iter"] not in chosen:
            model = t.step.model if ckpt["iter"] == t.it else model_from_checkpoint(ckpt, t.device, str(path))
            factor, miou = choose_novel_scale(model, t.m, t.cfg.val_imgsz or t.cfg.imgsz, t.device, t.autocast)
            chosen[ckpt["iter"]] = factor
            t.console.print(f"{name}: novel scores x{factor:g} (base-vs-unknown mIoU on training images "
                            f"{miou[factor]:.1f}, {miou[1.0]:.1f} at x1)")
        save_checkpoint(path, ckpt | {"novel_scale": chosen[ckpt["iter"]]})
    return chosen[t.it]


def finish(t: Training, interrupted: bool, validated: bool) -> dict:
    """Write the run's outputs (best.pt from the final weights where no validation gave a score, the novel-score
    calibration where the config asks for it, the loss plot, results.json) and return its summary."""
    if t.ddp.main:
        if t.best is None and not interrupted:  # no validation split, or no validation had a score
            t.best_iter = t.it
            save(t, "best.pt")
        # with a validation split, each validation chose the factor its checkpoints carry; without, choose it now
        novel_scale = t.novel_scale
        if t.cfg.calibrate and weak_shot(t.cfg, t.m) and not interrupted and not validated:
            novel_scale = calibrate(t)
        plot_losses(t.run_dir, t.run_dir / "plots" / "losses.png")
        write_json(t.run_dir / "results.json", {"iter": t.it, "iters": t.iters, "best_metric": t.cfg.best_metric,
                                                "best": t.best, "best_iter": t.best_iter, "interrupted": interrupted,
                                                "novel_scale": novel_scale}, allow_nan=False)
    t.ddp.barrier()
    distributed.cleanup()
    return {"iter": t.it, "iters": t.iters, "best": t.best, "interrupted": interrupted, "run_dir": str(t.run_dir),
            "main": t.ddp.main}


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
                           oracle=cfg.oracle, tag_only=cfg.tag_only, tag_only_base=cfg.tag_only_base)
    iters = math.ceil(cfg.epochs * len(dataset) / cfg.batch) if cfg.epochs > 0 else cfg.iters
    t = build_training(cfg, m, run_dir, console, ddp, device, iters=iters,
                       source=resume if resume is not None else init, announce=announce)
    if resume is not None:
        restore(t, resume)
    if t.it >= iters:
        raise UserError(f"run already finished ({t.it} of {iters} iterations); --iters N with N above {t.it} "
                        "continues it", run_dir)
    if resume is not None and ddp.main:
        _after_crash(run_dir, t.it)
        if (resume["config"]["iters"], resume["config"]["epochs"]) != (cfg.iters, cfg.epochs):
            save_config(cfg, m.root, run_dir)  # the new length, for a later --resume
    loader, val_loader = make_loaders(t, dataset)
    return finish(t, train_loop(t, loader, val_loader), val_loader is not None)


def check_run(cfg: TrainConfig, m: Manifest, dataset: Path, world: int, stage: str) -> None:
    """Refuse, before any folder is made, what would fail later inside the loop; read --reject's file."""
    if stage == "retrain" and not m.novel_masks:
        raise UserError("retrain needs a pseudo-labelled dataset (made by 'weakshot pseudolabel'); "
                        "this one hides the novel classes, train it with 'weakshot train'", dataset)
    if stage == "retrain" and m.source.get("novel_pixels") == 0:
        raise UserError("the pseudo-labels hold no novel-class pixel, so retraining cannot learn a novel class; "
                        "pseudo-label again (a lower --min-score, or a better checkpoint)", dataset)
    if cfg.reject:
        if not m.novel_masks:
            raise UserError("--reject drops pseudo-labels: it needs a pseudo-labelled dataset (weakshot retrain)",
                            dataset)
        m.rejected = read_rejections(Path(cfg.reject), m)
    if cfg.oracle and any(it.full is None for it in m.splits["train"]):
        raise UserError("--oracle needs a benchmark-mode dataset (made by 'weakshot split --novel', "
                        "whose training items keep their full masks)", dataset)
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch} is not divisible by the {world} torchrun processes")


def rejection_note(m: Manifest) -> str:
    """What --reject drops, for the run's first line."""
    if not m.rejected:
        return ""
    whole = sum(v is None for v in m.rejected.values())
    classes = sum(len(v) for v in m.rejected.values() if v is not None)
    return (f"; --reject: the pseudo-labels of {whole} images dropped, and {classes} classes' in "
            f"{len(m.rejected) - whole} more")


def save_config(cfg: TrainConfig, dataset: Path, run_dir: Path, weights: Path | None = None) -> None:
    """config.json: the config, its dataset and the checkpoint the run started from (kept when a resume rewrites
    it)."""
    path = run_dir / "config.json"
    if weights is None and path.exists():
        weights = read_json(path, "the run's config.json").get("weights")
    write_json(path, {**cfg.to_dict(), "dataset": str(dataset.resolve()),
                      "weights": str(Path(weights).resolve()) if weights else None})


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
        return resume_run(resume, dataset, resume_with or {}, console, stage)
    if dataset is None:
        raise UserError("give a DATASET folder (made by 'weakshot split'), or --resume RUN")
    m = load_manifest(dataset)
    cfg = cfg_builder()
    init = None
    if weights is not None:
        init = load_checkpoint(weights)
        check_classes(init, m, weights)
        for key in ARCH_KEYS:  # the network must have the checkpoint's shape
            setattr(cfg, key, init["config"][key])
    ddp, device = distributed.setup(cfg.device)
    check_run(cfg, m, dataset, ddp.world, stage)
    # A run that fails before its first checkpoint leaves no folder behind; one with a checkpoint keeps it.
    folder = provisional_run_dir(project, stage, name, exist_ok, keep=lambda d: any((d / "weights").glob("*.pt")),
                                 ddp=ddp)
    with folder as run_dir:  # rank 0 makes the folder; the others learn its name
        if ddp.main:
            save_config(cfg, dataset, run_dir, weights)
        # printed at the first checkpoint: a run that fails before it leaves no folder to point to
        announce = (f"Run folder: [bold]{run_dir}[/]  ({len(m.splits['train'])} training images, "
                    f"{len(m.base)} base + {len(m.novel)} novel classes)" + rejection_note(m))
        summary = train(cfg, m, run_dir, console, ddp, device, init=init, announce=announce)
    return finished(summary, stage)


def retrain_start(dataset: Path, overrides: dict[str, object], sets: list[str], weights: Path | None,
                  preset_iters: int) -> tuple[dict[str, object], Path | None]:
    """retrain's default start, the one the benchmarks measured best (docs/usage.md): the
    weights of the checkpoint that made the pseudo-labels (the manifest records it), for half the preset's
    iterations. --weights, --backbone-weights (or --set backbone_weights) choose another start and keep the
    preset's length; --iters or --epochs set the length."""
    chosen = {item.partition("=")[0].strip().replace("-", "_") for item in sets}
    if weights is not None or overrides.get("backbone_weights") is not None or "backbone_weights" in chosen:
        return overrides, weights
    labeller = load_manifest(dataset).source.get("checkpoint")
    if not isinstance(labeller, str):  # made by an older version, or not by pseudolabel: train's start
        return overrides, None
    if not Path(labeller).exists():
        raise UserError(f"retrain starts from the checkpoint that made these pseudo-labels, {labeller}, which is "
                        "gone; pass --weights CKPT or --backbone-weights", dataset)
    if all(overrides.get(key) is None and key not in chosen for key in ("iters", "epochs")):
        overrides = {**overrides, "iters": max(1, preset_iters // 2)}
    return overrides, Path(labeller)


def read_run_config(run_dir: Path) -> tuple[TrainConfig, Path]:
    """The config and dataset a run was started with (its config.json, the current length after a resume)."""
    path = run_dir / "config.json"
    config = read_json(path, "the run's config.json")
    try:
        dataset = Path(config.pop("dataset"))
        config.pop("weights", None)
        return TrainConfig.from_dict(config), dataset
    except (AttributeError, KeyError, TypeError) as e:
        raise UserError(f"not a run's config.json ({e.__class__.__name__}: {e})", path) from None


def resume_run(resume: Path, dataset: Path | None, resume_with: dict[str, object], console: Console,
               stage: str = "train") -> dict:
    """--resume: continue a run of ``stage`` from its last.pt (or its folder) with its own config, changed only by
    the RESUME_OPTIONS given in ``resume_with``."""
    ckpt = load_checkpoint(resume)
    if "optimizer" not in ckpt:
        raise UserError("this checkpoint holds weights only (best.pt); resume from weights/last.pt", resume)
    run_dir = resume if resume.is_dir() else resume.parent.parent
    made_by = run_stage(run_dir)
    if made_by != stage and made_by in ("train", "retrain"):
        raise UserError(f"this is a 'weakshot {made_by}' run; continue it with weakshot {made_by} --resume {resume}",
                        resume)
    cfg, run_dataset = read_run_config(run_dir)
    if dataset is not None and dataset.resolve() != run_dataset.resolve():
        raise UserError(f"DATASET differs from the dataset of the run --resume continues ({run_dataset}); "
                        "leave DATASET out", dataset)
    given = {k: v for k, v in resume_with.items() if v is not None}
    if "iters" in given and "epochs" not in given:
        given["epochs"] = 0  # --iters replaces a length given in epochs
    for key, value in given.items():
        setattr(cfg, key, value)
    validate_config(cfg)
    m = load_manifest(run_dataset)
    ddp, device = distributed.setup(cfg.device)
    check_run(cfg, m, run_dataset, ddp.world, stage)
    if ddp.main:
        length = f"{cfg.epochs} epochs" if cfg.epochs > 0 else f"{cfg.iters} iterations"
        console.print(f"Resuming {run_dir} from iteration {ckpt['iter']} (of {length})")
    return finished(train(cfg, m, run_dir, console, ddp, device, resume=ckpt), stage)
