"""Torch datasets over a manifest: augmented training crops and whole evaluation images.

Tag policy under augmentation: novel pixels can only lie where the training label is unknown (255),
so a crop keeps an image's novel tags only if it keeps at least ``tag_keep`` (default half) of the
image's unknown pixels, and at least one; crops are re-drawn up to ``crop_tries`` times to meet that, else the
best one is used and its novel tags are dropped. ``tag_keep`` 0 keeps them on any crop with an unknown pixel, so a
visible class is never called absent (the half rule drops the tags of about a fifth of CamVid's 256-px crops that
still show novel pixels); a kept tag then means "possibly present". Tags are never decided from hidden pixels.

A tag-only item (``label`` None: tags but no mask) reads as a label whose every pixel is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from models import IGNORE, STRIDE
from weakshot_cli.data.labels import open_image, read_raw_label
from weakshot_cli.data.manifest import Item, Manifest
from weakshot_cli.data.rejections import apply_rejections
from weakshot_cli.errors import UserError

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def load_rgb(path, exif: bool = False) -> torch.Tensor:
    """uint8 [3,H,W] RGB, whatever the file's mode (grayscale, palette, RGBA, CMYK, 16-bit); with ``exif`` as
    the image is displayed (EXIF orientation applied), for predictions on photos straight from a camera."""
    img = open_image(path)
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = TF.to_pil_image((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    return TF.pil_to_tensor(img.convert("RGB"))


def short_side_size(h: int, w: int, imgsz: int | None) -> tuple[int, int]:
    """(h, w) with the short side resized to ``imgsz`` (aspect kept); ``None`` or 0 keeps the size."""
    if not imgsz:
        return h, w
    s = imgsz / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_short(image: torch.Tensor, imgsz: int | None) -> torch.Tensor:
    """Resize so the short side is ``imgsz`` (aspect kept); ``None`` or 0 keeps the original size."""
    if not imgsz:
        return image
    return TF.resize(image, list(short_side_size(*image.shape[-2:], imgsz)), antialias=True)


def padded(n: float) -> int:
    """n rounded up to a multiple of the network's largest stride: a side length it takes."""
    return math.ceil(n / STRIDE) * STRIDE


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """A padded (multiple-of-STRIDE) input size at a test-time scale: the size class_scores runs that scale at."""
    if scale == 1:
        return h, w
    return max(STRIDE, padded(h * scale)), max(STRIDE, padded(w * scale))


def check_inference_size(path: str | Path, h: int, w: int, imgsz: int | None,
                         scales: Sequence[float] = (1.0,)) -> None:
    """Refuse an image the network cannot take. Inference pads to a multiple of STRIDE (collate_eval) and sizes
    each test-time scale with scaled_size; where that leaves a single STRIDE-sized cell, the pixel decoder's
    GroupNorm has one value per channel and fails."""
    rh, rw = short_side_size(h, w, imgsz)
    H, W = padded(rh), padded(rw)
    for s in scales:
        sh, sw = scaled_size(H, W, s)
        if sh <= STRIDE and sw <= STRIDE:
            at = f"--imgsz {imgsz}" if imgsz else "its original size (--imgsz 0)"
            at += f" and scale {s}" if s != 1 else ""
            raise UserError(f"image is {w}x{h} px, too small for the network at {at}: it needs more than {STRIDE} "
                            "px on its long side; pass a larger --imgsz", path)


def item_label(m: Manifest, item: Item, size: tuple[int, int]) -> np.ndarray:
    """An item's stored label; a tag-only item (no mask) is unknown everywhere at the image's ``size``."""
    if item.label is None:
        return np.full(tuple(size), IGNORE, np.uint8)
    label = read_raw_label(m.resolve(item.label))
    if item.label in m.rejected:
        tag_only = item.label in (m.source.get("tag_only_labels") or [])
        label = apply_rejections(label, m.rejected[item.label], m.novel, tag_only)
    return label


def normalise(image: torch.Tensor) -> torch.Tensor:
    return (image.float() - MEAN) / STD


@dataclass
class AugConfig:
    imgsz: int = 512
    scale: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    color: float = 0.5
    tag_keep: float = 0.5
    crop_tries: int = 10


def color_jitter(image: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """SSD-style photometric jitter (brightness +-32, contrast and saturation 0.5-1.5, hue +-18 deg),
    each applied with probability ``p``, drawn from ``g`` so it never touches the global RNG."""
    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand(1, generator=g).item()

    draws = [(torch.rand(1, generator=g).item() < p) for _ in range(4)]
    if draws[0]:
        image = (image.float() + u(-32, 32)).clamp(0, 255).to(torch.uint8)
    if draws[1]:
        image = TF.adjust_contrast(image, u(0.5, 1.5))
    if draws[2]:
        image = TF.adjust_saturation(image, u(0.5, 1.5))
    if draws[3]:
        image = TF.adjust_hue(image, u(-0.05, 0.05))
    return image


class TrainDataset(Dataset):
    """Training crops. Items are fetched as ``(index, seed, pair offset)`` so every augmentation is reproducible
    from the sampler alone (exact resume, any number of workers); the offset to the image's reference in its
    batch (see PairBatchSampler) is passed through to build_targets."""

    def __init__(self, manifest: Manifest, aug: AugConfig, split: str = "train", oracle: bool = False,
                 tag_only: bool = True, tag_only_base: bool = True):
        self.m, self.aug, self.oracle = manifest, aug, oracle
        # without tag-only images, also without those whose mask pseudolabel made from tags alone
        from_tags = set(manifest.source.get("tag_only_labels") or [])
        # tag_only_base false: such a mask teaches its novel classes alone; its base pixels, which no mask vouches
        # for, are ignore
        self.novel_only = set() if tag_only_base else from_tags
        self.base = torch.tensor(manifest.base, dtype=torch.long)
        self.items: list[Item] = [it for it in manifest.splits[split]
                                  if tag_only or (it.label is not None and it.label not in from_tags)]
        self.novel = torch.tensor(manifest.novel, dtype=torch.long)
        if oracle and any(it.full is None for it in self.items):
            raise ValueError("oracle training needs a benchmark-mode dataset (training items with 'full' masks)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, seed, pair_offset = key
        item = self.items[index]
        g = torch.Generator().manual_seed(seed)
        image = tv_tensors.Image(load_rgb(self.m.resolve(item.image)))
        raw = read_raw_label(self.m.resolve(item.full)) if self.oracle else item_label(self.m, item, image.shape[-2:])
        label = tv_tensors.Mask(torch.from_numpy(raw.astype(np.int64))[None])
        if item.label in self.novel_only and not self.oracle:
            label[torch.isin(label, self.base)] = IGNORE
        a = self.aug
        short = min(image.shape[-2:])
        s = a.scale[0] + (a.scale[1] - a.scale[0]) * torch.rand(1, generator=g).item()
        size = max(1, round(a.imgsz * s))
        h, w = image.shape[-2:]
        nh, nw = (size, max(1, round(w * size / short))) if h <= w else (max(1, round(h * size / short)), size)
        image = TF.resize(image, [nh, nw], antialias=True)
        label = TF.resize(label, [nh, nw], interpolation=v2.InterpolationMode.NEAREST)
        ch, cw = min(a.imgsz, nh), min(a.imgsz, nw)
        top, left, keep_novel = self._crop(label[0], ch, cw, g)
        image, label = TF.crop(image, top, left, ch, cw), TF.crop(label, top, left, ch, cw)
        image = color_jitter(image, g, a.color)
        if torch.rand(1, generator=g).item() < a.flip:
            image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
        pad = [0, a.imgsz - cw, 0, a.imgsz - ch]  # left, right, top, bottom
        image = F.pad(normalise(image), pad, value=0.0)
        sem = F.pad(label[0], pad, value=IGNORE)
        pad_mask = torch.ones(a.imgsz, a.imgsz, dtype=torch.bool)
        pad_mask[:ch, :cw] = False
        tags = torch.tensor(item.tags, dtype=torch.long)
        if not keep_novel:
            tags = tags[~torch.isin(tags, self.novel)]
        return {"image": image, "sem": sem, "pad": pad_mask, "tags": tags, "index": index,
                "tag_only": item.label is None and not self.oracle, "example": item.example and not self.oracle,
                "pair_offset": pair_offset}

    def _crop(self, label: torch.Tensor, ch: int, cw: int, g: torch.Generator) -> tuple[int, int, bool]:
        """Pick a ch x cw crop that keeps novel tags true (see module docstring)."""
        h, w = label.shape
        unknown = (label == IGNORE).to(torch.int64)
        total = int(unknown.sum())
        integral = F.pad(unknown.cumsum(0).cumsum(1), (1, 0, 1, 0))
        best = (0, 0, -1.0)
        for _ in range(self.aug.crop_tries):
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            b, r = top + ch, left + cw
            kept = int(integral[b, r] - integral[top, r] - integral[b, left] + integral[top, left])
            frac = kept / total if total else 0.0
            if frac > best[2]:
                best = (top, left, frac)
            if frac >= self.aug.tag_keep and frac > 0:
                break
        return best[0], best[1], best[2] >= self.aug.tag_keep and best[2] > 0


def collate_train(batch: list[dict]) -> dict:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "sem": torch.stack([b["sem"] for b in batch]),
        "pad": torch.stack([b["pad"] for b in batch]),
        "tags": [b["tags"] for b in batch],
        "index": [b["index"] for b in batch],
        "tag_only": [b["tag_only"] for b in batch],
        "example": [b["example"] for b in batch],
        "pair_offset": [b["pair_offset"] for b in batch],
    }


class EvalDataset(Dataset):
    """Whole images, optionally resized so the short side is ``imgsz``; labels stay at full size.

    ``full`` reads a training item's unhidden mask (benchmark mode) for scoring; the default reads the
    label as stored, which for training items hides every novel pixel.
    """

    def __init__(self, manifest: Manifest, split: str, imgsz: int | None = None, full: bool = False):
        self.m, self.items, self.imgsz, self.full = manifest, manifest.splits[split], imgsz, full

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = load_rgb(self.m.resolve(item.image))
        if self.full and item.full:
            label = read_raw_label(self.m.resolve(item.full))
        else:
            label = item_label(self.m, item, image.shape[-2:])
        label = torch.from_numpy(label.astype(np.int64))
        return {"image": normalise(resize_short(image, self.imgsz)), "label": label, "index": index}


def collate_eval(batch: list[dict]) -> dict:
    """Pad images to a shared size the network takes (see padded)."""
    h = max(b["image"].shape[-2] for b in batch)
    w = max(b["image"].shape[-1] for b in batch)
    H, W = padded(h), padded(w)
    images = torch.stack([F.pad(b["image"], [0, W - b["image"].shape[-1], 0, H - b["image"].shape[-2]])
                          for b in batch])
    return {"image": images, "sizes": [tuple(b["image"].shape[-2:]) for b in batch],
            "labels": [b["label"] for b in batch], "index": [b["index"] for b in batch]}


def build_targets(batch: dict, base: list[int], novel: list[int], novel_masks: bool) -> list[dict]:
    """Per-image targets for the criterion, from the (base-only, unless ``novel_masks``) label map.

    Base classes present in the crop get masks; tagged novel classes get a target without a mask, and so
    do a tag-only image's base tags: its unknown pixels may belong to them too. With ``novel_masks``
    (oracle or pseudo-labelled data) every class in the map gets a mask and the criterion's ``sem`` still
    shows only base pixels. An example image (its label marks its novel classes too) is supervised like a fully
    labelled one: every class in its map gets a mask, ``sem`` shows them all, and it has no novel tag left for the
    weak-shot losses. An image's reference is the one its sampler paired it with (``pair_offset``), itself
    (no cross-image loss) when unpaired.
    """
    n = len(batch["tags"])
    novel_t = torch.tensor(novel, dtype=torch.long)
    base_lut = torch.full((256,), IGNORE, dtype=torch.long)
    base_lut[torch.tensor(base, dtype=torch.long)] = torch.tensor(base, dtype=torch.long)
    targets = []
    for i in range(n):
        sem = batch["sem"][i]
        present = torch.unique(sem)
        present = present[present != IGNORE]
        example = bool(batch["example"][i]) and not novel_masks
        if novel_masks or example:
            labels, has_mask = present, torch.ones(len(present), dtype=torch.bool)
            tags_novel = present[:0] if example else present[torch.isin(present, novel_t)]
        else:
            tags_novel = batch["tags"][i][torch.isin(batch["tags"][i], novel_t)]
            maskless = batch["tags"][i] if batch["tag_only"][i] else tags_novel
            labels = torch.cat([present, maskless])
            has_mask = torch.cat([torch.ones(len(present), dtype=torch.bool),
                                  torch.zeros(len(maskless), dtype=torch.bool)])
        masks = (sem[None] == labels[:, None, None]) & has_mask[:, None, None]
        ref = i + batch["pair_offset"][i]
        if not 0 <= ref < n:
            raise ValueError(f"image {i}'s reference {ref} is outside its batch of {n}")
        shown = sem if example else base_lut[sem]
        targets.append({"labels": labels, "masks": masks, "has_mask": has_mask, "sem": shown,
                        "pad": batch["pad"][i], "ref": ref, "novel_tags": tags_novel,
                        "tag_only": bool(batch["tag_only"][i]) and not novel_masks})
    return targets
