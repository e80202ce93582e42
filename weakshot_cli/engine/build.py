"""The network, its losses and their optimiser settings, built from a TrainConfig: shared by training, inference
and the benchmarks, so a checkpoint's config rebuilds exactly the network that was trained."""

from __future__ import annotations

import torch
from torch import nn

from models import SimFormer, SimFormerCriterion
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.engine.config import TrainConfig
from weakshot_cli.errors import UserError


def backbone_norm(cfg: TrainConfig) -> str:
    """The config's backbone norm; "auto" keeps pretrained BN statistics frozen and trains BN from scratch."""
    return cfg.norm if cfg.norm != "auto" else ("bn" if cfg.backbone_weights == "none" else "frozen_bn")


def build_model(cfg: TrainConfig, num_classes: int) -> SimFormer:
    """The config's network."""
    model = SimFormer(num_classes, backbone=cfg.backbone, backbone_norm=backbone_norm(cfg), num_queries=cfg.num_queries,
                      hidden_dim=cfg.hidden_dim, mask_dim=cfg.mask_dim, dec_layers=cfg.dec_layers, nheads=cfg.nheads,
                      dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout, transformer_in=cfg.transformer_in,
                      masked_attention=cfg.masked_attention)
    # Channels-last weights make every convolution run channels-last (oneDNN on CPU, tensor cores on CUDA), which
    # speeds up the training step (benchmarks/speed.py).
    return model.to(memory_format=torch.channels_last)


def weak_shot(cfg: TrainConfig, m: Manifest) -> bool:
    """Whether the run learns novel classes from tags; the oracle and retraining (full or pseudo masks) do not."""
    return not (cfg.oracle or m.novel_masks)


def build_criterion(cfg: TrainConfig, m: Manifest) -> SimFormerCriterion:
    """The config's losses over the dataset's base and novel classes."""
    weak = weak_shot(cfg, m)
    return SimFormerCriterion(
        len(m.classes), m.base, m.novel, mask_dim=cfg.mask_dim, no_object_weight=cfg.no_object_weight,
        ce_weight=cfg.ce_weight, mask_weight=cfg.mask_weight, dice_weight=cfg.dice_weight,
        comp_weight=cfg.comp_weight, ignore_prior=cfg.ignore_prior, sim_weight=cfg.sim_weight,
        dist_weight=cfg.dist_weight, dist_func=cfg.dist_func, dist_cross_image=cfg.dist_cross_image,
        num_sim_points=cfg.num_sim_points, sim_class_points=cfg.sim_class_points,
        num_dist_points=cfg.num_dist_points, use_sim=weak and cfg.use_sim, use_dist=weak and cfg.use_dist,
        use_comp=weak and cfg.use_comp, num_points=cfg.num_points, simnet_width=cfg.simnet_width,
        semantic_weight=cfg.semantic_weight if cfg.semantic_weak or not weak else 0.0,
        tag_weight=cfg.tag_weight if weak else 0.0, tag_topk=cfg.tag_topk, tag_per_pixel=cfg.tag_per_pixel,
        dist_start=cfg.dist_start, dist_warmup=cfg.dist_warmup, detach_sim_features=cfg.detach_sim_features,
    )


class TrainStep(nn.Module):
    """Model and criterion in one module, so DDP synchronises the SimNet's gradients too."""

    def __init__(self, model: SimFormer, criterion: SimFormerCriterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.criterion(self.model(images), targets)


def param_groups(module: nn.Module, backbone_module: nn.Module, cfg: TrainConfig) -> list[dict]:
    """``module``'s parameters, those of ``backbone_module`` at lr x backbone_lr_mult; no weight decay on norm
    layers and query embeddings."""
    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Embedding)
    no_decay = {id(p) for mod in module.modules() if isinstance(mod, norm_types) for p in mod.parameters(False)}
    backbone = {id(p) for p in backbone_module.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in backbone, id(p) in no_decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if bb else 1.0),
             "weight_decay": 0.0 if nd else cfg.weight_decay} for (bb, nd), ps in sorted(groups.items())]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. On CUDA, auto is bf16 where supported, else fp16. On the
    CPU, bf16 when asked for, and with auto only where the CPU has AMX tiles (fast bf16 matrix units: AVX512-BF16
    alone measured no faster on the small model); fp16 autocast is CUDA only."""
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if amp == "fp16":
        raise UserError("--amp fp16 needs CUDA; on the CPU use --amp bf16 or off")
    fast_bf16 = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amp == "bf16" or fast_bf16 else None
