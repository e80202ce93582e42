"""A seeded synthetic segmentation dataset for the demo and the tests.

Classes differ by texture (stuff), shape (things) and a characteristic colour that varies per instance and
overlaps between classes: colour alone labels about half of the pixels, so a network still has to learn
structure, yet one trained from scratch on two CPU cores gets going within minutes. The files
are written in the plain PNG-folder layout a user would bring, so the demo exercises the real import path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from models import IGNORE
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write, write_text

STUFF = ["grass", "water", "brick", "sand"]
THINGS = ["disc", "square", "triangle", "star", "ring", "cross"]
CLASSES: list[str] = STUFF + THINGS
# Two things and one stuff with unrelated cues: a pointed outline, a hollow round outline, a regular grid.
DEMO_NOVEL: list[str] = ["star", "ring", "brick"]

_SUPERSAMPLE = 4  # things are drawn at 4x and averaged: soft edges, and an honest "ambiguous" band
_N_THINGS_P = [0.05, 0.2, 0.35, 0.25, 0.15]  # 0-4 large things (fewer if they do not fit): shapes get many pixels
_MIN_REGION = 0.1  # stuff regions smaller than this fraction of the image are merged away: few, large regions


# One home colour per class (RGB); each instance draws its own colour around it.
_HOME = np.array([[70, 150, 60], [50, 100, 190], [170, 80, 60], [200, 180, 120],  # grass water brick sand
                  [220, 200, 50], [190, 70, 190], [60, 190, 200], [230, 120, 40], [140, 90, 200],
                  [200, 200, 200]], np.float32)  # disc square triangle star ring cross
_JITTER = 30.0


def _colour_pair(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """An instance's colour near its class's home colour, and a darker shade of it for the texture."""
    a = np.clip(_HOME[cls] + rng.normal(0, _JITTER, 3), 10, 245)
    return a, a * rng.uniform(0.35, 0.55)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise: a few random values upsampled bicubically to size x size."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC))


def _rotated(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle``, so every texture comes at a random orientation."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def _stuff_texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Mixing weight in [0, 1] between a region's two colours; the pattern alone identifies the class.

    Patterns are bold and a few pixels to tens of pixels in scale, so they survive the 2x downscaling of
    training-time scale jitter and a network trained from scratch can pick them up within minutes.
    """
    if name == "grass":  # dense, irregular vertical blades, thinner and less regular than water
        n = gaussian_filter(rng.random((size, size)), sigma=(rng.uniform(4, 7), rng.uniform(0.8, 1.1)))
        return np.clip(0.5 + 1.2 * (n - n.mean()) / n.std(), 0.0, 1.0)
    if name == "water":  # broad, regular, wavy stripes at any orientation
        u, v = _rotated(size, rng.uniform(0, np.pi))
        period, wave = rng.uniform(10, 18), rng.uniform(30, 50)
        phase = 2 * np.pi * u / period + rng.uniform(1.0, 2.0) * np.sin(2 * np.pi * v / wave + rng.uniform(0, 6.3))
        return 0.5 + 0.5 * np.tanh(2 * np.sin(phase))
    if name == "brick":  # staggered rectangles separated by mortar lines
        u, v = _rotated(size, rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.2, 0.2))
        h = rng.uniform(12, 18)
        w, mortar = h * rng.uniform(1.8, 2.4), rng.uniform(2.5, 3.5)
        offset = (np.floor(v / h) % 2) * w / 2
        return ((v % h < mortar) | ((u + offset) % w < mortar)).astype(np.float32)
    if name == "sand":  # dense round pebbles about 5 px across on a faintly uneven ground: never a flat patch
        pebbles = gaussian_filter((rng.random((size, size)) < rng.uniform(0.02, 0.03)).astype(np.float32), 1.5)
        return np.clip((pebbles > 0.02) + 0.1 * np.abs(_smooth_field(rng, size, 4)), 0.0, 1.0)
    raise KeyError(name)


def _thing_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth fill shared by all things: says nothing of a thing's class, and cannot pass for a stuff texture."""
    if rng.random() < 0.5:
        return np.zeros((size, size), np.float32)
    u, _ = _rotated(size, rng.uniform(0, 2 * np.pi))  # linear shading
    return (u - u.min()) / (u.max() - u.min())


def _outline(name: str, r: float) -> list[np.ndarray]:
    """Polygon(s) of a thing, centred at the origin with radius ``r``; a second polygon is a hole."""
    def circle(radius: float) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return radius * np.stack([np.cos(t), np.sin(t)], 1)

    def regular(n: int, radii: list[float]) -> np.ndarray:
        t = np.arange(n * len(radii)) * 2 * np.pi / (n * len(radii))
        rad = np.resize(np.asarray(radii), len(t))
        return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)

    if name == "disc":
        return [circle(r)]
    if name == "ring":
        return [circle(r), circle(r * 0.55)]
    if name == "square":
        return [regular(4, [r])]
    if name == "triangle":
        return [regular(3, [r * 1.15])]
    if name == "star":
        return [regular(5, [r * 1.25, r * 0.55])]
    if name == "cross":
        a, b = r, r * 0.4
        return [np.array([[b, b], [a, b], [a, -b], [b, -b], [b, -a], [-b, -a], [-b, -b], [-a, -b], [-a, b],
                          [-b, b], [-b, a], [b, a]])]
    raise KeyError(name)


def _coverage(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Fraction of each pixel a randomly sized, placed and rotated thing covers."""
    r = rng.uniform(0.18, 0.3) * size
    centre = rng.uniform(0.15, 0.85, size=2) * size
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for i, poly in enumerate(_outline(name, r)):
        pts = (poly @ rot.T + centre) * _SUPERSAMPLE
        draw.polygon([tuple(p) for p in pts], fill=0 if i else 255)
    a = np.asarray(canvas, dtype=np.float32).reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE)
    return a.mean(axis=(1, 3)) / 255.0


def _stuff_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """1-3 stuff classes in regions with smooth random boundaries (argmax of smooth noise fields)."""
    k = int(rng.integers(1, 4))
    classes = rng.choice(len(STUFF), size=k, replace=False)
    fields = np.stack([_smooth_field(rng, size, 3) for _ in range(k)])
    alive = np.ones(k, bool)
    while True:  # drop the smallest region until all are large enough; the last one covers everything
        winner = np.where(alive[:, None, None], fields, -np.inf).argmax(0)
        area = np.where(alive, np.bincount(winner.ravel(), minlength=k) / winner.size, np.inf)
        if area.min() >= _MIN_REGION:
            return classes[winner]
        alive[area.argmin()] = False


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its label map (uint8 HxW, class index or 255 on ambiguous edge pixels)."""
    label = _stuff_layout(rng, size).astype(np.uint8)
    image = np.zeros((size, size, 3), np.float32)
    for cls in np.unique(label):
        a, b = _colour_pair(rng, int(cls))
        t = _stuff_texture(STUFF[cls], rng, size)[..., None]
        image = np.where((label == cls)[..., None], a + t * (b - a), image)

    for _ in range(int(rng.choice(len(_N_THINGS_P), p=_N_THINGS_P))):
        cls = int(rng.integers(len(THINGS)))
        for _ in range(10):  # things barely overlap, so each shows its whole outline
            cov = _coverage(THINGS[cls], rng, size)
            inside = cov >= 0.5
            if (label[inside] >= len(STUFF)).mean() < 0.1:
                break
        else:
            continue
        a, b = _colour_pair(rng, len(STUFF) + cls)
        fill = a + 0.5 * _thing_texture(rng, size)[..., None] * (b - a)
        image = image * (1 - cov[..., None]) + fill * cov[..., None]
        label[inside] = len(STUFF) + cls
        label[(cov > 0.05) & (cov < 0.95)] = IGNORE

    u, _ = _rotated(size, rng.uniform(0, 2 * np.pi))
    light = rng.uniform(0.8, 1.2) * (1 + rng.uniform(-0.15, 0.15) * (u - u.mean()) / size)
    image = image * light[..., None] + rng.uniform(-20, 20)
    image += rng.normal(0, rng.uniform(1, 3), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _save_png(path: Path, array: np.ndarray) -> None:
    img = Image.fromarray(array)
    atomic_write(path, lambda p: img.save(p, format="PNG"))


def make_synthetic(out_dir: str | Path, n_train: int = 240, n_val: int = 60, size: int = 96, seed: int = 0) -> Path:
    """Write images/{train,val}, labels/{train,val} and classes.txt under ``out_dir``; return ``out_dir``.

    Image i of a split depends only on (seed, split, i), so changing n_train leaves val unchanged.
    classes.txt is written last: its presence marks a finished dataset. Refuses to write into existing
    image or label folders that hold files, so a user's data is never overwritten.
    """
    out = Path(out_dir)
    if size < 32 or min(n_train, n_val, seed) < 0:
        raise ValueError(f"need size >= 32 and non-negative counts and seed, got size={size}, "
                         f"n_train={n_train}, n_val={n_val}, seed={seed}")
    for sub in ("images", "labels"):
        if (out / sub).is_dir() and any(p.is_file() for p in (out / sub).rglob("*")):
            raise UserError("already contains files; refusing to overwrite, choose an empty folder", out / sub)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for i in range(n):
            image, label = render_sample(np.random.default_rng([seed, split_id, i]), size)
            stem = f"syn_{i:06d}"
            _save_png(out / "images" / split / f"{stem}.png", image)
            _save_png(out / "labels" / split / f"{stem}.png", label)
    write_text(out / "classes.txt", "".join(f"{c}\n" for c in CLASSES))
    return out
