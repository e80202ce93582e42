"""COCO JSON (instances or stuff) rasterised to semantic label maps with pycocotools.

Larger regions are painted first so small objects stay visible on top of them (the Ultralytics
rule); crowd regions are painted as ignore (255) in the same order.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import numpy as np
from pycocotools import mask as mask_utils

from models import IGNORE
from weakshot_cli.data.compact import Strings
from weakshot_cli.data.labels import MAX_PIXELS, image_size
from weakshot_cli.errors import UserError


@dataclass(slots=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int


class CocoImages:
    """A COCO file's images, column by column: no object per image (COCO has 118k)."""

    def __init__(self) -> None:
        self.ids, self.heights, self.widths = array("q"), array("q"), array("q")
        self.file_names = Strings()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> CocoImage:
        return CocoImage(self.ids[i], self.file_names[i], self.heights[i], self.widths[i])

    def index_of(self) -> Callable[[int], int]:
        """image id -> position, -1 for an id not listed; a sorted array searched, not a dict of every id."""
        ids = np.frombuffer(self.ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]

        def index(image_id: int) -> int:
            at = int(np.searchsorted(ids, image_id)) if INT64[0] <= image_id <= INT64[1] else len(ids)
            return int(order[at]) if at < len(ids) and ids[at] == image_id else -1
        return index


INT64 = (-2**63, 2**63 - 1)


def _open(path: Path) -> BinaryIO:
    """The file, read as bytes past a leading UTF-8 BOM (as Notepad writes)."""
    try:
        f = open(path, "rb")
        if f.read(3) != b"\xef\xbb\xbf":
            f.seek(0)
        return f
    except FileNotFoundError:
        raise UserError("COCO file not found", path) from None
    except OSError as e:
        raise UserError(f"cannot read COCO file ({e.__class__.__name__})", path) from None


def _items(path: Path, prefix: str) -> Iterator[Any]:
    """The JSON values at ``prefix`` (ijson's notation: ``annotations.item`` is each annotation), read as a stream."""
    with _open(path) as f:
        try:
            yield from ijson.items(f, prefix, use_float=True)
        except (ijson.JSONError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise UserError(f"invalid JSON in COCO file ({str(e).splitlines()[0][:80]})", path) from None


TOP_LEVEL = ("images", "annotations", "categories")


def _top_level(path: Path) -> dict[str, str]:
    """The kind of value (ijson's first event: start_array, start_map, number, ...) of each of images, annotations
    and categories at the top of the file; a file that is not an object is refused."""
    kinds: dict[str, str] = {}
    with _open(path) as f:
        try:
            events = ijson.parse(f, use_float=True)
            if next(events, (None, None, None))[1] != "start_map":
                raise UserError("COCO JSON must be an object with images, annotations, categories", path)
            for prefix, event, _ in events:
                if prefix in TOP_LEVEL and prefix not in kinds:
                    kinds[prefix] = event
                    if len(kinds) == len(TOP_LEVEL):
                        break
        except (ijson.JSONError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise UserError(f"invalid JSON in COCO file ({str(e).splitlines()[0][:80]})", path) from None
    return kinds



def load_coco(path: str | Path) -> tuple[CocoImages, list[str], dict[int, int]]:
    """Check the JSON's shape and its categories and images; return the images, class names and category id ->
    contiguous id. The annotations are not read here (rasterise streams them)."""
    path = Path(path)
    kinds = _top_level(path)
    for key in TOP_LEVEL:
        if kinds.get(key) != "start_array":
            raise UserError(f"COCO JSON has no '{key}' list", path)
    cats = next(_items(path, "categories"))
    if not cats:
        raise UserError("COCO JSON has no categories", path)
    for c in cats:
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str) \
                or not c["name"].strip():
            raise UserError(f"category {c!r:.80} needs an integer 'id' and a non-blank 'name'", path)
    if len({c["id"] for c in cats}) != len(cats):
        raise UserError("COCO categories have duplicate ids", path)
    cats = sorted(cats, key=lambda c: c["id"])
    if len(cats) > 255:
        raise UserError(f"{len(cats)} categories; at most 255 fit in 8-bit labels", path)
    names = [c["name"] for c in cats]
    if len(set(names)) != len(names):
        raise UserError("COCO categories have duplicate names", path)
    return coco_images(_items(path, "images.item"), path), names, {c["id"]: i for i, c in enumerate(cats)}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def coco_images(entries: Iterable, path: Path) -> CocoImages:
    """The image entries, read one at a time, checked."""
    images = CocoImages()
    for im in entries:
        if not isinstance(im, dict) or not all(_is_int(im.get(k)) for k in ("id", "height", "width")) \
                or not isinstance(im.get("file_name"), str):
            raise UserError(f"image entry {im!r:.80} needs integer id, height, width and a file_name", path)
        name, h, w = im["file_name"], im["height"], im["width"]
        if h <= 0 or w <= 0:
            raise UserError(f"image {name!r:.80} has a non-positive size", path)
        if h * w > MAX_PIXELS:
            raise UserError(f"image {name!r:.80} is larger than {MAX_PIXELS:,} pixels", path)
        if not INT64[0] <= im["id"] <= INT64[1]:
            raise UserError(f"image {name!r:.80} has an id beyond 64 bits", path)
        images.ids.append(im["id"])
        images.heights.append(h)
        images.widths.append(w)
        images.file_names.append(name)
    if len(np.unique(np.frombuffer(images.ids, dtype=np.int64))) != len(images):
        raise UserError("COCO images have duplicate ids", path)
    return images


def check_image_size(im: CocoImage, image: Path, path: Path) -> None:
    """Masks are rasterised at the size the JSON states: an image file of another size is the JSON's error,
    named here, not later as a mismatch with a label file the user never made."""
    h, w = image_size(image)
    if (h, w) != (im.height, im.width):
        raise UserError(f"image {im.file_name!r:.80} is {w}x{h} px ({image}) but its entry states "
                        f"width {im.width}, height {im.height}", path)


def _rle_counts(s: str) -> list[int] | None:
    """The run lengths in a compressed COCO RLE string (pycocotools' rleFrString), or None if malformed:
    pycocotools itself accepts strings whose runs do not cover the mask and leaves the rest uninitialised."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        while True:
            c = ord(s[p]) - 48 if p < len(s) else -1
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            p, k = p + 1, k + 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def _decode(seg: object, h: int, w: int, path: Path, ann_id: object) -> np.ndarray:
    where = f"annotation {ann_id}"
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list)]
        if not polys or len(polys) != len(seg):
            raise UserError(f"{where}: segmentation must be a list of polygons", path)
        for p in polys:
            # pycocotools walks every pixel of the outline in C ints: far-away points would overflow or hang it
            # (the comparisons also refuse NaN and infinities)
            near = all(isinstance(v, (int, float)) and -(w, h)[i % 2] <= v <= 2 * (w, h)[i % 2]
                       for i, v in enumerate(p))
            if len(p) < 6 or len(p) % 2 or not near:
                raise UserError(f"{where}: broken polygon (needs >= 3 x,y points, finite and near the {w}x{h} "
                                "image)", path)
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
            runs = _rle_counts(counts if isinstance(counts, str) else counts.decode("latin-1"))
            if runs is None or min(runs, default=0) < 0 or sum(runs) != h * w:
                raise UserError(f"{where}: compressed RLE counts are malformed or do not add up to {h}x{w}", path)
            rle = mask_utils.frPyObjects({"size": size, "counts": runs}, h, w)
        else:
            raise UserError(f"{where}: RLE counts must be a list or a string", path)
    else:
        raise UserError(f"{where}: segmentation must be polygons or RLE", path)
    return mask_utils.decode(rle).astype(bool)


# Annotations are spilled to scratch files of this many consecutive images each, so that rasterising holds one
# chunk's annotations in memory, however many images the file has.
CHUNK_IMAGES = 256


def rasterise(path: Path, images: CocoImages, cat_to_id: dict[int, int], scratch: Path,
              background: int = IGNORE) -> Iterator[tuple[int, np.ndarray]]:
    """(image id, semantic label map (uint8)) for every image in ``images``' order, one at a time; pixels outside
    every annotation get ``background`` (255, ignore, by default). The annotations are read as a stream, checked
    and written to chunk files in ``scratch`` (a folder the caller owns and removes) before the first map, so
    memory holds one chunk's annotations and one map whatever the size of the file."""
    index_of = images.index_of()
    chunks = [scratch / f"{c:06d}.jsonl" for c in range(-(-len(images) // CHUNK_IMAGES))]
    with ExitStack() as stack:
        files = [stack.enter_context(open(c, "w", encoding="utf-8")) for c in chunks]
        for ann in _items(path, "annotations.item"):
            if not isinstance(ann, dict) or "segmentation" not in ann:
                raise UserError(f"annotation {ann!r:.60} has no segmentation", path)
            image_id, category_id = ann.get("image_id"), ann.get("category_id")
            at = index_of(image_id) if _is_int(image_id) else -1
            if at < 0:
                raise UserError(f"annotation {ann.get('id')!r:.40} refers to unknown image_id {image_id!r:.40}", path)
            if not _is_int(category_id) or category_id not in cat_to_id:
                raise UserError(f"annotation {ann.get('id')!r:.40} has unknown category_id {category_id!r:.40}",
                                path)
            files[at // CHUNK_IMAGES].write(json.dumps(ann) + "\n")
    for c, chunk in enumerate(chunks):
        these = range(c * CHUNK_IMAGES, min((c + 1) * CHUNK_IMAGES, len(images)))
        by_image: dict[int, list[dict]] = {images.ids[i]: [] for i in these}
        with open(chunk, encoding="utf-8") as f:
            for line in f:
                ann = json.loads(line)
                by_image[ann["image_id"]].append(ann)
        chunk.unlink()
        for im in map(images.__getitem__, these):
            label = np.full((im.height, im.width), background, dtype=np.uint8)
            decoded = [(_decode(a["segmentation"], im.height, im.width, path, a.get("id")), a)
                       for a in by_image.pop(im.id)]
            decoded.sort(key=lambda ma: -int(ma[0].sum()))
            for m, ann in decoded:
                label[m] = IGNORE if ann.get("iscrowd", 0) else cat_to_id[ann["category_id"]]
            yield im.id, label


def stuff_annotations(label: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """A semantic label map as COCO stuff annotations: one compressed RLE per class present (ignore left out),
    category id = class id + 1 (COCO ids start at 1)."""
    annotations = []
    for c in np.unique(label).tolist():
        if c == IGNORE:
            continue
        rle = mask_utils.encode(np.asfortranarray(label == c, dtype=np.uint8))
        annotations.append({"id": first_id + len(annotations), "image_id": image_id, "category_id": c + 1,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                            "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                            "iscrowd": 0})
    return annotations


def stuff_coco(images: Iterable[tuple[str, np.ndarray]], classes: list[str], info: dict) -> dict:
    """COCO JSON for (file_name, label map) pairs: what ``split --coco`` reads back to the same label maps."""
    data: dict = {"info": info, "images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)]}
    for image_id, (file_name, label) in enumerate(images, 1):
        data["images"].append({"id": image_id, "file_name": file_name, "height": int(label.shape[0]),
                               "width": int(label.shape[1])})
        data["annotations"] += stuff_annotations(label, image_id, len(data["annotations"]) + 1)
    return data
