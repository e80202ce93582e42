"""COCO JSON (instances or stuff) rasterised to semantic label maps with pycocotools.

Larger regions are painted first so small objects stay visible on top of them (the Ultralytics
rule); crowd regions are painted as ignore (255) in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from weakshot_cli.errors import UserError

IGNORE = 255


@dataclass
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int


def load_coco(path: str | Path) -> tuple[dict, list[str], dict[int, int]]:
    """Parse and check the JSON; return it, class names, and category id -> contiguous id."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON (line {e.lineno}: {e.msg})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read COCO JSON ({e.__class__.__name__})", path) from None
    if not isinstance(data, dict):
        raise UserError("COCO JSON must be an object with images, annotations, categories", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"COCO JSON has no '{key}' list", path)
    cats = data["categories"]
    if not cats:
        raise UserError("COCO JSON has no categories", path)
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise UserError(f"category {c!r} needs an integer 'id' and a string 'name'", path)
    cats = sorted(cats, key=lambda c: c["id"])
    if len(cats) > 255:
        raise UserError(f"{len(cats)} categories; at most 255 fit in 8-bit labels", path)
    names = [c["name"] for c in cats]
    if len(set(names)) != len(names):
        raise UserError("COCO categories have duplicate names", path)
    return data, names, {c["id"]: i for i, c in enumerate(cats)}


def coco_images(data: dict, path: Path) -> list[CocoImage]:
    images = []
    for im in data["images"]:
        try:
            images.append(CocoImage(int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"image entry {im!r:.80} needs id, file_name, height, width", path) from None
        if images[-1].height <= 0 or images[-1].width <= 0:
            raise UserError(f"image {images[-1].file_name!r} has a non-positive size", path)
    return images


def _decode(seg: object, h: int, w: int, path: Path, ann_id: object) -> np.ndarray:
    where = f"annotation {ann_id}"
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list)]
        if not polys or len(polys) != len(seg):
            raise UserError(f"{where}: segmentation must be a list of polygons", path)
        for p in polys:
            if len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in p):
                raise UserError(f"{where}: broken polygon (needs >= 3 finite x,y points)", path)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
            raise UserError(f"{where}: RLE size {size!r} does not match the image ({h}x{w})", path)
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                raise UserError(f"{where}: uncompressed RLE counts do not add up to {h}x{w}", path)
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise UserError(f"{where}: RLE counts must be a list or a string", path)
    else:
        raise UserError(f"{where}: segmentation must be polygons or RLE", path)
    try:
        m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions on malformed RLE strings
        raise UserError(f"{where}: cannot decode RLE ({e})", path) from None
    if m.shape[:2] != (h, w):
        raise UserError(f"{where}: mask decodes to {m.shape[:2]}, image is {h}x{w}", path)
    return m.astype(bool)


def rasterise(data: dict, path: Path, cat_to_id: dict[int, int]) -> dict[int, np.ndarray]:
    """Semantic label map (uint8, 255 where unlabelled) for every image id."""
    images = {im.id: im for im in coco_images(data, path)}
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise UserError(f"annotation {ann!r:.60} has no segmentation", path)
        if ann.get("image_id") not in images:
            raise UserError(f"annotation {ann.get('id')} refers to unknown image_id {ann.get('image_id')!r}", path)
        if ann.get("category_id") not in cat_to_id:
            raise UserError(f"annotation {ann.get('id')} has unknown category_id {ann.get('category_id')!r}", path)
        by_image[ann["image_id"]].append(ann)
    labels = {}
    for image_id, anns in by_image.items():
        im = images[image_id]
        label = np.full((im.height, im.width), IGNORE, dtype=np.uint8)
        decoded = [(_decode(a["segmentation"], im.height, im.width, path, a.get("id")), a) for a in anns]
        decoded.sort(key=lambda ma: -int(ma[0].sum()))
        for m, ann in decoded:
            label[m] = IGNORE if ann.get("iscrowd", 0) else cat_to_id[ann["category_id"]]
        labels[image_id] = label
    return labels
