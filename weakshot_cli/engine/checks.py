"""Checks a checkpoint and a dataset must pass together before a stage loads a model or writes anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from weakshot_cli.data.dataset import check_inference_size
from weakshot_cli.data.labels import image_size
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.errors import UserError


def check_classes(ckpt: dict, m: Manifest, checkpoint: Path) -> None:
    """The checkpoint's classes must be the dataset's, in the same order: class ids index both."""
    if ckpt["classes"] != m.classes:
        raise UserError(f"checkpoint was trained on a different class set ({len(ckpt['classes'])} classes: "
                        f"{', '.join(ckpt['classes'][:4])}, ...) than the dataset's", checkpoint)


def check_image_sizes(m: Manifest, split: str, imgsz: int, scales: Sequence[float]) -> None:
    """Read every image header of the split up front: a missing, oversized or too small image fails before
    any output exists, not after part of a long run."""
    for it in m.splits[split]:
        path = m.resolve(it.image)
        check_inference_size(path, *image_size(path), imgsz, scales)
