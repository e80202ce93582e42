"""Property-based tests of every parser that reads a user's file: arbitrary input either parses to a valid
result or raises UserError, never any other exception, and never hangs.

Each example writes its input to a fresh temporary folder (hypothesis refuses function-scoped fixtures).
``@example`` pins every input that once broke a parser.
"""

from __future__ import annotations

import io
import json
import pickle
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from weakshot_cli.data import coco
from weakshot_cli.data.labels import read_class_names, read_label_map, read_raw_label
from weakshot_cli.data.manifest import MANIFEST, load_manifest
from weakshot_cli.data.tags import load_tags
from weakshot_cli.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # its numpy 2 copy= notice

CLASSES = ["background", "lamp", "clock", "sofa"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-ish values: what json.loads can return, with the numbers and strings that break careless parsers.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.sampled_from(["", "ignore", "255", "7", "../x", "a/b", "lamp", "clock", "\x00", "1e999"]),
                    st.text(max_size=8))
jsonish = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=5), max_leaves=20)


def mostly(valid: st.SearchStrategy, weird: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` nine times in ten, else ``weird``: most examples get past the first check to the deep code."""
    return st.integers(0, 9).flatmap(lambda n: weird if n == 9 else valid)


@contextmanager
def time_limit(seconds: int = 20) -> Iterator[None]:
    """A parser that loops on some input fails the test instead of hanging it."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def parse(fn: Callable, *args):
    """``fn(*args)``, or None when it refuses the input with a UserError; any other exception fails the test."""
    with time_limit():
        try:
            return fn(*args)
        except UserError as e:
            assert str(e).strip() and "\n" not in str(e), repr(str(e))  # one line
            return None


def dump(value: object) -> str:
    return json.dumps(value, allow_nan=True)


# ---- tags: JSON, CSV, npy ----------------------------------------------------------------------------------------

def check_tags(tags: dict | None) -> None:
    if tags is not None:
        assert tags and all(isinstance(k, str) and k and "/" not in k for k in tags)
        assert all(isinstance(v, set) and v <= set(range(len(CLASSES))) for v in tags.values())


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


HUGE_NPY = _npy_header((10**12,)) + bytes(64)


def tags_from(suffix: str, data: bytes) -> dict | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"tags{suffix}"
        path.write_bytes(data)
        return parse(load_tags, path, CLASSES)


@FUZZ
@given(st.sampled_from([".json", ".csv", ".npy", ".txt"]), st.binary(max_size=300))
@example(".json", b"[" * 100_000)  # RecursionError in json.loads
@example(".json", b'{"a": ' + b"1" * 5000 + b"}")  # ValueError (not JSONDecodeError): integer too long
@example(".json", b'\xef\xbb\xbf{"a": ["lamp"]}')  # a BOM (Notepad) was refused as invalid JSON
@example(".npy", HUGE_NPY)  # MemoryError: numpy tried to allocate 8 TB for it
def test_tags_from_any_bytes(suffix, data):
    tags = tags_from(suffix, data)
    check_tags(tags)
    if data == b'\xef\xbb\xbf{"a": ["lamp"]}':
        assert tags == {"a": {1}}


stems = st.text("abc_.-0", min_size=1, max_size=6)
tag_names = st.lists(mostly(st.sampled_from(CLASSES), scalars), max_size=4)


@FUZZ
@given(mostly(st.dictionaries(mostly(stems, st.text(max_size=6)), mostly(tag_names, jsonish), max_size=4), jsonish))
@example({"img": ["lamp", 3]})  # not a name: refused
@example({"../x": ["lamp"]})  # a path, not an image name: refused
def test_tags_json(value):
    check_tags(tags_from(".json", dump(value).encode()))


csv_cells = st.text(st.sampled_from("ab,;\"\n\r lampclock.jpg/\x00"), max_size=12)
csv_rows = st.lists(mostly(st.tuples(stems, tag_names.map(lambda names: ";".join(map(str, names)))),
                           st.lists(csv_cells, max_size=4)), max_size=6)


@FUZZ
@given(csv_rows, st.booleans())
@example([["a" * 200_000, "lamp"]], True)  # a field beyond csv's size limit
def test_tags_csv(rows, header):
    text = ("image,labels\n" if header else "") + "\n".join(",".join(r) for r in rows)
    check_tags(tags_from(".csv", text.encode()))


npy_values = st.one_of(
    st.lists(st.integers(0, 1), min_size=3, max_size=4).map(lambda v: np.array(v, np.float32)),
    st.lists(st.floats(allow_nan=True), max_size=5).map(np.array),
    st.lists(st.integers(-3, 3), min_size=3, max_size=4).map(np.array),
    st.lists(st.lists(st.integers(0, 1), max_size=3), max_size=3),  # ragged lists
    scalars, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
npy_keys = mostly(stems, st.one_of(st.text(max_size=8), st.integers(-5, 5), st.sampled_from(["../a", "a/b", ".", ""])))


@FUZZ
@given(st.dictionaries(npy_keys, npy_values, max_size=4))
@example({"img": [[0, 1], [1]]})  # ragged: np.asarray raises ValueError
@example({"img": np.array([0, 1, 1 + 2j])})  # complex: refused
def test_tags_npy_dicts(value):
    buf = io.BytesIO()
    np.save(buf, np.array(value, dtype=object), allow_pickle=True)
    check_tags(tags_from(".npy", buf.getvalue()))


@FUZZ
@given(st.binary(max_size=120))
def test_tags_npy_with_a_corrupt_pickle(payload):
    """The pickle after a valid object-array header: the allow-list unpickler must refuse, never crash."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    check_tags(tags_from(".npy", buf.getvalue() + pickle.PROTO + b"\x04" + payload))


# ---- class names and label maps --------------------------------------------------------------------------------

@FUZZ
@given(st.one_of(st.binary(max_size=200), st.lists(st.text(max_size=6), max_size=8).map(
    lambda names: "\n".join(names).encode())))
@example(b"\xef\xbb\xbfroad\nsky\n")  # a BOM is not part of the first name
@example("\n".join(str(i) for i in range(300)).encode())
def test_class_names(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "classes.txt"
        path.write_bytes(data)
        names = parse(read_class_names, path)
    if names is not None:
        assert 0 < len(names) <= 255 and len(set(names)) == len(names)
        assert all(n and n == n.strip() and "\ufeff" not in n for n in names)
    if data == b"\xef\xbb\xbfroad\nsky\n":
        assert names == ["road", "sky"]


def check_label_map(suffix: str, data: bytes) -> dict | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"map{suffix}"
        path.write_bytes(data)
        mapping = parse(read_label_map, path)
    if mapping is not None:
        assert mapping and all(type(k) is int and type(v) is int and 0 <= k <= 255 and 0 <= v <= 255
                               for k, v in mapping.items())
    return mapping


map_targets = st.one_of(st.integers(0, 255), st.sampled_from(["ignore", "3", 4.0]))


@FUZZ
@given(mostly(st.dictionaries(mostly(st.integers(0, 255).map(str), st.text(max_size=4)),
                              mostly(map_targets, scalars), max_size=6), jsonish))
@example({"7": float("inf")})  # int(inf): OverflowError
@example({"7": 0.5})  # was read as class 0
@example({"7": True})  # was read as class 1
def test_label_map_json(value):
    mapping = check_label_map(".json", dump(value).encode())
    if mapping is not None:  # every target was an integer (7, "7", 7.0) or ignore: none rounded, none a boolean
        assert not any(isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer()
                       for raw in value.values())


map_cells = mostly(st.integers(-1, 256).map(str), st.text(max_size=4))


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.lists(st.tuples(map_cells, map_cells), max_size=6).map(
    lambda rows: "\n".join(f"{a},{b}" for a, b in rows).encode())), st.sampled_from([".csv", ".json", ".txt"]))
@example(b"7,\"" + b"x" * 200_000, ".csv")  # csv.Error: field larger than field limit
@example("\u00b2,1\n".encode(), ".csv")  # "²".isdigit() is true, int("²") fails
def test_label_map_any_bytes(data, suffix):
    check_label_map(suffix, data)


# ---- label PNGs ------------------------------------------------------------------------------------------------

def _png(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10) % 7).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


PNGS = [_png(mode) for mode in ("L", "P", "RGB", "I;16", "1", "LA")]


@FUZZ
@given(st.sampled_from(PNGS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       st.integers(1, 400))
def test_label_png_with_corrupt_bytes(png, flips, keep):
    data = bytearray(png[:keep])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "label.png"
        path.write_bytes(bytes(data))
        label = parse(read_raw_label, path)
    if label is not None:
        assert label.dtype == np.uint8 and label.ndim == 2


# ---- COCO JSON ---------------------------------------------------------------------------------------------------

sizes = st.one_of(st.integers(-2, 24), st.sampled_from([10**5, 10**9, 2**64, True]), st.floats(), st.text(max_size=3))
coords = st.one_of(st.integers(-40, 60), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1e12, -1e300, 10**400, True, "x", None]))
polygons = st.lists(st.lists(coords, max_size=12), max_size=3)
rle_strings = st.text(st.characters(min_codepoint=32, max_codepoint=127), max_size=12)
segmentations = st.one_of(
    polygons,
    st.fixed_dictionaries({"size": st.lists(sizes, max_size=3), "counts": st.one_of(
        rle_strings, st.lists(st.integers(-3, 300), max_size=6))}),
    jsonish)
ids = st.one_of(st.integers(0, 3), st.sampled_from([None, True, "1", 1.0, [1]]))


def runs_of(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a mask (column-major; the first run counts zeros)."""
    flat = mask.ravel(order="F")
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def segmentation_for(h: int, w: int) -> st.SearchStrategy:
    """Valid polygons (degenerate ones too: repeated, collinear or out-of-image points) and RLEs of an h x w image."""
    point = st.tuples(st.floats(-3, w + 3), st.floats(-3, h + 3)) | st.tuples(st.integers(-3, w + 3),
                                                                             st.integers(-3, h + 3))
    polygon = st.lists(point, min_size=3, max_size=7).map(lambda ps: [v for xy in ps for v in xy])
    mask = st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
        lambda bits: np.array(bits, np.uint8).reshape(h, w))
    compressed = mask.map(lambda m: mask_utils.encode(np.asfortranarray(m))["counts"].decode())
    return st.one_of(st.lists(polygon, min_size=1, max_size=2),
                     mask.map(lambda m: {"size": [h, w], "counts": runs_of(m)}),
                     compressed.map(lambda c: {"size": [h, w], "counts": c}))


@st.composite
def coco_files(draw) -> object:
    """Mostly well-formed files, each field now and then replaced by something odd."""
    if draw(st.integers(0, 19)) == 0:
        return draw(jsonish)
    images = [{"id": draw(mostly(st.just(i + 1), ids)),
               "file_name": draw(mostly(st.just(f"{i}.jpg"), st.one_of(st.text(max_size=5), ids))),
               "height": draw(mostly(st.integers(1, 12), sizes)), "width": draw(mostly(st.integers(1, 12), sizes))}
              for i in range(draw(st.integers(1, 3)))]
    cats = [{"id": draw(mostly(st.just(2 * c + 1), ids)), "name": draw(mostly(st.just(f"c{c}"), st.text(max_size=4)))}
            for c in range(draw(st.integers(1, 3)))]
    annotations = []
    for a in range(draw(st.integers(1, 4))):
        im = draw(st.sampled_from(images))
        h, w = (im["height"], im["width"]) if all(type(v) is int and 0 < v <= 12 for v in (im["height"], im["width"])) \
            else (4, 4)
        annotations.append({"id": a, "image_id": draw(mostly(st.just(im["id"]), ids)),
                            "category_id": draw(mostly(st.sampled_from([c["id"] for c in cats]), ids)),
                            "segmentation": draw(mostly(segmentation_for(h, w), segmentations)),
                            "iscrowd": draw(mostly(st.integers(0, 1), scalars))})
    return {"images": draw(mostly(st.just(images), jsonish)),
            "annotations": draw(mostly(st.just(annotations), jsonish)),
            "categories": draw(mostly(st.just(cats), jsonish))}


def rasterise_file(data: bytes) -> dict | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "instances.json"
        path.write_bytes(data)
        loaded = parse(coco.load_coco, path)
        if loaded is None:
            return None
        images, names, cat_to_id = loaded
        assert len(names) == len(cat_to_id) and sorted(cat_to_id.values()) == list(range(len(names)))
        scratch = Path(d) / "scratch"
        scratch.mkdir()
        # every map, one at a time
        labels = parse(lambda *args: dict(coco.rasterise(*args)), path, images, cat_to_id, scratch)
        assert not list(scratch.iterdir()) or labels is None  # the chunks are gone once every map is out
    if labels is not None:
        sizes = {im.id: (im.height, im.width) for im in images}
        assert list(labels) == [im.id for im in images]  # the file's image order
        for image_id, label in labels.items():
            assert label.dtype == np.uint8 and label.shape == sizes[image_id]
            assert set(np.unique(label).tolist()) <= set(range(len(names))) | {255}
    return labels


BOX = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 5}],
       "categories": [{"id": 3, "name": "dog"}]}
SHORT_RLE = {**BOX, "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                                     "segmentation": {"size": [4, 5], "counts": "0"}}]}


@FUZZ
@given(coco_files())
@example({**BOX, "annotations": [{"id": 1, "image_id": [1], "category_id": 3, "segmentation": []}]})  # unhashable
@example({**BOX, "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                                  "segmentation": [[0, 0, 10**400, 0, 5, 4]]}]})  # np.isfinite(huge int)
@example({**BOX, "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                                  "segmentation": [[0, 0, 1e12, 0, 1e12, 1e12]]}]})  # overflows pycocotools
@example(SHORT_RLE)  # pycocotools decoded it, leaving 19 of the 20 pixels uninitialised
@example({**BOX, "images": [{"id": 1, "file_name": "a.jpg", "height": 1e308, "width": 5}], "annotations": []})
@example({**BOX, "images": [{"id": 1, "file_name": "a.jpg", "height": 10**6, "width": 10**6}], "annotations": []})
@example({**BOX, "categories": [{"id": 3, "name": "dog"}, {"id": 3, "name": "cat"}], "annotations": []})
def test_coco(value):
    labels = rasterise_file(dump(value).encode())
    if value == SHORT_RLE:
        assert labels is None


@FUZZ
@given(st.binary(max_size=200))
def test_coco_any_bytes(data):
    rasterise_file(data)


@FUZZ
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_coco_compressed_rle_decodes_to_its_mask(h, w, data):
    """Our check of compressed RLE strings must accept every string pycocotools itself writes, unchanged."""
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w)), np.uint8).reshape(h, w)
    rle = mask_utils.encode(np.asfortranarray(mask))
    value = {"images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                              "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}}],
             "categories": [{"id": 3, "name": "dog"}]}
    labels = rasterise_file(dump(value).encode())
    assert labels is not None and np.array_equal(labels[1], np.where(mask == 1, 0, 255))


# ---- manifests ---------------------------------------------------------------------------------------------------

FILES = ["images/a.png", "labels/a.png"]  # the files each example's dataset folder holds
paths = st.one_of(st.sampled_from(["labels/missing.png", "../../etc/passwd", "/etc/passwd", "", ".", "labels",
                                   "a\x00b", "link.png", "loop.png"]), st.text(max_size=6), ids)


@st.composite
def manifests(draw) -> object:
    """Mostly consistent manifests, each field now and then replaced by something odd."""
    if draw(st.integers(0, 19)) == 0:
        return draw(jsonish)
    k = draw(st.integers(1, 4))
    order, cut = draw(st.permutations(range(k))), draw(st.integers(0, k))
    item = st.fixed_dictionaries(
        {"image": mostly(st.sampled_from(FILES), paths), "label": mostly(st.sampled_from([*FILES, None]), paths),
         "tags": mostly(st.lists(st.integers(0, k - 1), max_size=3), st.lists(st.one_of(ids, st.integers()),
                                                                             max_size=3) | scalars)},
        optional={"full": mostly(st.sampled_from(FILES), paths)})
    return {"version": draw(mostly(st.just(1), scalars)),
            "classes": draw(mostly(st.just([f"c{i}" for i in range(k)]), st.lists(st.one_of(st.text(max_size=2), ids),
                                                                                  max_size=4))),
            "base": draw(mostly(st.just(sorted(order[:cut])), st.lists(ids, max_size=4))),
            "novel": draw(mostly(st.just(sorted(order[cut:])), st.lists(ids, max_size=4))),
            "ignore_index": draw(mostly(st.just(255), scalars)),
            "novel_masks": draw(mostly(st.booleans(), scalars)),
            "splits": draw(mostly(st.dictionaries(st.sampled_from(["train", "val", "test"]), st.lists(item, max_size=3),
                                                  min_size=1, max_size=2), jsonish)),
            "source": draw(mostly(st.just({}), jsonish))}


@FUZZ
@given(manifests())
@example({"version": 1, "classes": ["a", "b"], "base": [0], "novel": [True], "splits": {"train": []}})  # true as id 1
@example({"version": 1, "classes": ["a", "b"], "base": [0], "novel": [1], "novel_masks": "false",  # read as true
          "splits": {"train": [{"image": "images/a.png", "label": "labels/a.png", "tags": [1]}]}})
@example({"version": 1, "classes": ["a", "b"], "base": [0], "novel": [1],
          "splits": {"train": [{"image": "images/a.png", "label": "a\x00b", "tags": []}]}})  # NUL byte
@example({"version": 1, "classes": ["a", "b"], "base": [0], "novel": [1],
          "splits": {"train": [{"image": "images/a.png", "label": "loop.png", "tags": []}]}})  # symlink loop
@example({"version": 1, "classes": ["a", "b"], "base": [0], "novel": [1],
          "splits": {"train": [{"image": "images/a.png", "label": "link.png", "tags": []}]}})  # a link out: refused
def test_manifest(value):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ws"
        for rel in FILES:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"x")
        (Path(d) / "outside.png").write_bytes(b"x")
        (root / "link.png").symlink_to(Path(d) / "outside.png")
        (root / "loop.png").symlink_to(root / "loop.png")
        (root / MANIFEST).write_text(dump(value))
        m = parse(load_manifest, root)
        if m is not None:
            k = len(m.classes)
            assert k and sorted(m.base + m.novel) == list(range(k)) and all(type(c) is int for c in m.base + m.novel)
            assert m.novel_masks is value.get("novel_masks", False)
            for items in m.splits.values():
                for it in items:
                    assert all(type(t) is int and 0 <= t < k for t in it.tags)
                    for rel in (it.image, it.label, it.full):
                        if rel is not None:
                            full = m.resolve(rel)
                            assert full.is_file()
                            assert Path(rel).is_absolute() or full.is_relative_to(root.resolve())


@FUZZ
@given(st.binary(max_size=200))
def test_manifest_any_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / MANIFEST).write_bytes(data)
        assert parse(load_manifest, Path(d)) is None
