"""Training configuration: one flat dataclass, named presets, and ``--set key=value`` overrides.

Defaults follow the SimFormer paper (alpha 0.1, beta 0.2, gamma 0.1, BCE distillation, cross-image
student); the authors' release choices are options (gamma 0.05, ``dist_func=cce``,
``dist_cross_image=false``, beta 0.15 on COCO, alpha 0.5 on ADE20K).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from models import STRIDE
from models.backbone import BACKBONES
from weakshot_cli.errors import UserError


@dataclass
class TrainConfig:
    # model
    backbone: str = "resnet50"
    backbone_weights: str = "imagenet"  # imagenet | none | path to a torchvision state dict of that backbone
    norm: str = "auto"  # auto: frozen_bn with pretrained weights, bn when training from scratch; or gn
    num_queries: int = 100
    hidden_dim: int = 256
    mask_dim: int = 256
    dec_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    transformer_in: str = "res5"  # backbone level the decoder attends to; res4 for small images
    masked_attention: bool = False  # Mask2Former's masked cross-attention: converges in far fewer iterations
    # losses
    oracle: bool = False  # plain MaskFormer on full masks (benchmark upper bound)
    reject: str = ""  # retrain: a rejections.json from weakshot review; those pseudo-labels are read as ignore
    use_sim: bool = True
    use_dist: bool = True
    use_comp: bool = True
    no_object_weight: float = 0.1
    ce_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    comp_weight: float = 0.2  # beta
    ignore_prior: float = 0.1  # gamma
    sim_weight: float = 1.0
    dist_weight: float = 0.1  # alpha
    dist_func: str = "bce"  # bce (paper) | cce (release)
    dist_cross_image: bool = True
    num_sim_points: int = 100  # J
    sim_class_points: int = 80
    num_dist_points: int = 100
    detach_sim_features: bool = True  # SimNet's loss does not train the pixel decoder (the release's choice)
    dist_start: float = 0.0  # fraction of the run without distillation, while SimNet learns
    dist_warmup: float = 0.0  # fraction of the run over which distillation then ramps up to dist_weight (0: at once)
    tag_weight: float = 0.0  # tag terms on the inference scores in the not-base region (0: off, the paper)
    tag_topk: float = 0.1  # present tag: mean of the top fraction of its pixels' log-probabilities (MIL pooling)
    tag_per_pixel: bool = False  # partial-label tag term averaged over the image's pixels, not its unknown region
    calibrate: bool = False  # after weak-shot training, scale the novel scores by a factor chosen on base masks
    simnet_width: int = 256  # SimNet's hidden width (the paper's 256); its pair grids cost width^2 per pair
    semantic_weight: float = 0.0  # per-pixel cross-entropy of the inference scores on mask-labelled pixels (0: off)
    semantic_weak: bool = False  # ... in weak-shot training too (base pixels), not only on full or pseudo-labels
    num_points: int = 0  # 0: mask losses on full-resolution masks; N: on N sampled points per mask
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 0.1
    clip_grad: float = 0.01
    poly_power: float = 0.9
    iters: int = 60000
    epochs: int = 0  # when > 0, overrides iters
    batch: int = 8  # global batch, split across processes
    # data
    imgsz: int = 512
    scale_min: float = 0.5
    scale_max: float = 2.0
    tag_keep: float = 0.5  # a crop keeps novel tags if it keeps this fraction of unknown pixels (0: any of them)
    pairing: str = "paper"  # paper: a reference shares a novel tag | tags: and differs in another where it can
    example_repeat: int = 1  # an example image (a mask that labels novel classes) is an anchor this often per epoch
    separating_repeat: int = 1  # so is an image whose tags separate a pair split flags (identify.py)
    tag_only: bool = True  # train on tag-only images (tags, no mask; or pseudo-labelled from tags) too
    tag_only_base: bool = True  # a pseudo-label made from tags alone keeps its base classes (false: ignore there)
    workers: int = 2
    # run
    method: str = "paper"  # the loss profile applied (METHODS; these defaults are its values); kept for the record
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; off on CPU) | bf16 | fp16 | off
    val_every: int = 0  # 0: about 10 validations per run, at least 10 iterations apart
    best_metric: str = "mean_base_novel"  # validation figure best.pt maximises; a tie goes to the later weights
    val_imgsz: int = 0  # 0: the training imgsz (short side)
    save_every: int = 500
    log_every: int = 20

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config saved by any version: keys this one lacks (such as the removed ``extra``) are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# Validation figures best.pt can be chosen by: the mean of base and novel mIoU (either alone where the other is
# undefined), or any scalar of engine.metrics.compute_metrics.
BEST_METRICS = ("mean_base_novel", "mIoU", "base_mIoU", "novel_mIoU", "hIoU", "pAcc", "mAcc")

AMP_MODES = ("auto", "bf16", "fp16", "off")

PAIRINGS = ("paper", "tags")

# Fields that fix the network's shape: a checkpoint's values override any others.
ARCH_KEYS = ("backbone", "hidden_dim", "mask_dim", "dec_layers", "num_queries", "dim_feedforward", "nheads",
             "transformer_in", "masked_attention")

PRESETS: dict[str, dict] = {
    # The paper's setting (MaskFormer R50, 512 crops, batch 8); pretrained ImageNet backbone.
    "r50": {},
    # A CPU-friendly model for small datasets and quick experiments.
    "small": dict(backbone="resnet18", backbone_weights="none", hidden_dim=128, mask_dim=128, dec_layers=3,
                  nheads=4, dim_feedforward=512, num_queries=30, imgsz=256, transformer_in="res4", batch=8, iters=2000,
                  lr=5e-4, backbone_lr_mult=1.0, num_points=4096, num_sim_points=64, sim_class_points=48,
                  num_dist_points=64, save_every=250),
    # The CPU preset: ImageNet MobileNetV2 (frozen BatchNorm), Mask2Former's masked attention, 256 crops; its
    # schedule is chosen by measurement on MSRC-21 (benchmarks/quality.py), about 11 minutes on one CPU core.
    "mobile": dict(backbone="mobilenet_v2", backbone_weights="imagenet", hidden_dim=128, mask_dim=64, dec_layers=3,
                   nheads=4, dim_feedforward=512, num_queries=30, imgsz=256, transformer_in="res5", batch=8, iters=400,
                   lr=5e-4, backbone_lr_mult=0.1, masked_attention=True, num_points=4096, num_sim_points=32,
                   sim_class_points=24, num_dist_points=32, save_every=100),
}


# Loss profiles, applied over the preset: every switch a profile sets is here, and nowhere else. "paper" is SimFormer
# as published (spec), and TrainConfig's defaults. "dense" changes no weak-shot loss and adds the dense cross-entropy
# of the inference scores where every pixel is labelled (retraining on pseudo-labels, the oracle); it also shows the
# few images whose tags separate a pair split flags 8 times per epoch (not in oracle training).
# "tags" also changes weak-shot training: that loss on base pixels, per-pixel tag terms, tags kept on every crop with
# unknown pixels, tag pairing, a late distillation and the novel-score calibration. Which one a run gets by default,
# and what each measured: docs/method.md.
PAPER = dict(semantic_weight=0.0, semantic_weak=False, tag_weight=0.0, tag_per_pixel=False, tag_keep=0.5,
             pairing="paper", dist_start=0.0, dist_warmup=0.0, calibrate=False, separating_repeat=1)
DENSE = PAPER | dict(semantic_weight=1.0, separating_repeat=8)
METHODS: dict[str, dict] = {
    "paper": PAPER,
    "dense": DENSE,
    "tags": DENSE | dict(semantic_weak=True, tag_weight=1.0, tag_per_pixel=True, tag_keep=0.0, pairing="tags",
                         dist_start=0.25, dist_warmup=0.25, calibrate=True),
}
ALIASES = {"weakshot": "dense"}  # the former name of "dense": commands and configs that use it keep working


def _coerce(name: str, raw: str, current: object) -> object:
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--set {name}={raw}: expected true or false")
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise UserError(f"--set {name}={raw}: expected a {type(current).__name__}") from None
    return raw


def build_config(preset: str, overrides: dict[str, object], sets: list[str], method: str | None = None) -> TrainConfig:
    """Preset, then the method's loss profile, then explicit CLI options, then ``--set key=value`` pairs (last
    wins). Without a method: "tags" on a pretrained backbone, "dense" from scratch (see the loss profiles)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if method is None:
        pretrained = build_config(preset, overrides, sets, "dense").backbone_weights != "none"
        method = "tags" if pretrained else "dense"
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = TrainConfig(**PRESETS[preset], **METHODS[method], method=method)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    for item in sets:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in names:
            raise UserError(f"--set {item!r}: expected key=value with a key from: {', '.join(sorted(names))}")
        setattr(cfg, key, _coerce(key, raw.strip(), getattr(cfg, key)))
    validate(cfg)
    return cfg


# Largest accepted --imgsz (training crop, or inference short side): 16384 asked for about 40 GB at once; 4096, 8x
# the paper's 512, bounds that to a sixteenth, and larger values are almost always a typo.
IMGSZ_MAX = 4096

# Fields that train and retrain take as options of their own: errors name the option.
OPTIONS = {"iters": "--iters", "epochs": "--epochs", "batch": "--batch", "imgsz": "--imgsz", "workers": "--workers",
           "lr": "--lr", "seed": "--seed"}


def _finite(v: float) -> bool:
    return isinstance(v, int) or math.isfinite(v)  # an int is finite (and may be too large for a float)


def _count(lo: int) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= lo), f">= {lo}"


_WEIGHT = (lambda v: _finite(v) and v >= 0), "a finite number >= 0"
_POSITIVE = (lambda v: _finite(v) and v > 0), "a positive finite number"

# field -> (test, what it must be); a count's meaning decides whether 0 is allowed (num_points 0: full masks).
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **{k: _count(1) for k in ("num_queries", "hidden_dim", "mask_dim", "dec_layers", "nheads", "dim_feedforward",
                              "num_sim_points", "num_dist_points", "iters", "batch", "save_every", "log_every",
                              "simnet_width", "example_repeat", "separating_repeat")},
    **{k: _count(0) for k in ("num_points", "sim_class_points", "epochs", "workers", "val_every")},
    **{k: _WEIGHT for k in ("no_object_weight", "ce_weight", "mask_weight", "dice_weight", "comp_weight",
                            "sim_weight", "dist_weight", "weight_decay", "backbone_lr_mult", "clip_grad",
                            "poly_power", "semantic_weight", "tag_weight")},
    "tag_topk": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    **{k: ((lambda v: 0 <= v <= 1), "in [0, 1]") for k in ("dist_start", "dist_warmup")},
    "lr": _POSITIVE,
    "dropout": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "ignore_prior": ((lambda v: 0 < v < 1), "in (0, 1)"),
    "tag_keep": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    "scale_min": ((lambda v: 0 < v <= 10), "in (0, 10]"),
    "scale_max": ((lambda v: 0 < v <= 10), "in (0, 10]"),
    "imgsz": ((lambda v: STRIDE <= v <= IMGSZ_MAX and v % STRIDE == 0),
              f"a multiple of {STRIDE} from {STRIDE} to {IMGSZ_MAX}"),
    "val_imgsz": ((lambda v: v == 0 or STRIDE <= v <= IMGSZ_MAX), f"0 (the training imgsz) or {STRIDE}..{IMGSZ_MAX}"),
    "seed": ((lambda v: 0 <= v < 2**63), "in 0..2**63-1"),
}


def validate(cfg: TrainConfig) -> None:
    """Refuse every out-of-range value before a run folder exists: left alone, they crash mid-run (nheads 0),
    fail far from their cause (lr inf as a non-finite loss), or are silently ignored (epochs -1)."""
    for key, (ok, requirement) in RANGES.items():
        value = getattr(cfg, key)
        if not ok(value):  # NaN fails every comparison, so every test refuses it
            what = OPTIONS[key] if key in OPTIONS else f"invalid configuration: {key}"
            raise UserError(f"{what} must be {requirement}, got {value}")
    checks = [
        (cfg.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}, got {cfg.backbone!r}"),
        (cfg.norm in ("auto", "frozen_bn", "bn", "gn"), "norm must be auto, frozen_bn, bn or gn"),
        (cfg.transformer_in in ("res3", "res4", "res5"), "transformer_in must be res3, res4 or res5"),
        (cfg.dist_func in ("bce", "cce"), "dist_func must be bce or cce"),
        (cfg.pairing in PAIRINGS, f"pairing must be one of {', '.join(PAIRINGS)}, got {cfg.pairing!r}"),
        (cfg.amp in AMP_MODES, "amp must be auto, bf16, fp16 or off"),
        (cfg.best_metric in BEST_METRICS,
         f"best_metric (--best-metric) must be one of {', '.join(BEST_METRICS)}, got {cfg.best_metric!r}"),
        (cfg.scale_min <= cfg.scale_max, f"need scale_min <= scale_max, got {cfg.scale_min} > {cfg.scale_max}"),
        (cfg.sim_class_points <= cfg.num_sim_points,
         f"sim_class_points must be <= num_sim_points ({cfg.num_sim_points}), got {cfg.sim_class_points}"),
        (cfg.hidden_dim % cfg.nheads == 0, "hidden_dim must be divisible by nheads"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"invalid configuration: {message}")
