"""Colours for class maps: a palette every output shares, and image overlays."""

from __future__ import annotations

import numpy as np

IGNORE_COLOUR = (0, 0, 0)


def default_palette(num_classes: int) -> list[int]:
    """Flat [r, g, b, ...] for 256 values, PASCAL VOC's bit-interleaved colour map shifted by one so class 0
    is not black; value 255 (ignore) stays black."""
    palette = []
    for i in range(256):
        c, r, g, b = i + 1, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b] if i < num_classes else list(IGNORE_COLOUR)
    return palette


def colourise(label: np.ndarray, palette: list[int]) -> np.ndarray:
    """uint8 [H, W, 3] colours of an index map."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[label]


def overlay(image: np.ndarray, label: np.ndarray, palette: list[int], alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an RGB image; ignore pixels show the image alone."""
    colours = colourise(label, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((label == 255)[..., None], image.astype(np.float32), blend)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
