"""Colours for class maps: a palette every output shares, and image overlays with a legend.

Overlays tint every class except ignore (255) and a class named "background" (any case, with or without the
surrounding underscores of labelme's "_background_"): tinting it would colour most of most images and hide the
objects. Both show the image alone, and the legend lists the tinted classes only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models import IGNORE

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


def is_background(name: str) -> bool:
    return name.strip("_ ").lower() == "background"


def untinted(classes: Sequence[str]) -> list[int]:
    """Ids of the classes overlays leave untinted (see the module docstring)."""
    return [i for i, name in enumerate(classes) if is_background(name)]


def overlay(image: np.ndarray, label: np.ndarray, palette: list[int], alpha: float = 0.5,
            skip: Sequence[int] = ()) -> np.ndarray:
    """Blend class colours over an RGB image; ignore pixels and the classes in ``skip`` show the image alone."""
    colours = colourise(label, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    plain = (label == IGNORE) | np.isin(label, list(skip))
    out = np.where(plain[..., None], image.astype(np.float32), blend)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend_entries(labels: Sequence[np.ndarray], classes: Sequence[str],
                   palette: list[int]) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each class an overlay of these label maps tints, in class order."""
    present = sorted(set().union(*(np.unique(label).tolist() for label in labels)))
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return [(classes[c], tuple(int(v) for v in colours[c])) for c in present
            if c < len(classes) and not is_background(classes[c])]


def with_legend(image: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """The image above a white band listing each entry as a colour swatch and its name, in rows as wide as the image
    (a name wider than the image is cut); the image itself unchanged. No entries: the image alone."""
    if not entries:
        return image
    width = image.shape[1]
    size = max(10, width // 50)  # legible on a phone photo and on a 64-pixel test image
    font = ImageFont.load_default(size)
    gap, line = size // 2, size + size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y = [], gap, gap
    for name, colour in entries:
        w = size + gap // 2 + int(measure.textlength(name, font=font))
        if x > gap and x + w > width:
            x, y = gap, y + line
        placed.append((x, y, name, colour))
        x += w + gap * 2
    band = Image.new("RGB", (width, y + line + gap // 2), "white")
    draw = ImageDraw.Draw(band)
    for x, y, name, colour in placed:
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=colour, outline=(0, 0, 0))
        draw.text((x + size + gap // 2, y), name, fill=(0, 0, 0), font=font)
    return np.concatenate([image, np.asarray(band)], axis=0)
