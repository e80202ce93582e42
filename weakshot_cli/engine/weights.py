"""Backbone initialisation: ImageNet weights through torchvision's weights API, none, or a local file."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from models import load_backbone_state
from weakshot_cli.errors import UserError



def imagenet_weights(backbone: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet-1k weights entry for this backbone (the first release, as the paper used)."""
    return torchvision.models.get_model_weights(backbone).IMAGENET1K_V1


def imagenet_file(backbone: str) -> Path:
    """Where torchvision looks for (and downloads) the ImageNet checkpoint of this backbone."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights(backbone).url).name


def backbone_state(backbone: str, weights: str) -> dict | None:
    """State dict for ``weights`` (imagenet | none | path), or None to train from scratch."""
    if weights == "none":
        return None
    if weights == "imagenet":
        entry, target = imagenet_weights(backbone), imagenet_file(backbone)
        try:
            return entry.get_state_dict(progress=False, weights_only=True)
        except Exception as e:  # urllib/socket errors differ by platform; all mean the same to the user
            raise UserError(
                f"cannot download ImageNet weights for {backbone} ({e.__class__.__name__}); offline, place "
                f"{target.name} from {entry.url} at {target}, or pass "
                "--backbone-weights none (train from scratch) or --backbone-weights PATH",
                target,
            ) from None
    path = Path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("backbone weights file not found", path) from None
    except Exception as e:
        raise UserError(f"cannot load backbone weights ({e.__class__.__name__})", path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError("backbone weights must be a state dict of a torchvision classification model", path)
    return state


def init_backbone(backbone_module: nn.Module, backbone: str, weights: str) -> None:
    state = backbone_state(backbone, weights)
    if state is not None:
        try:
            load_backbone_state(backbone_module, state)
        except ValueError as e:
            raise UserError(f"backbone weights do not fit {backbone}: {e}", weights) from None
