"""Input formats: tags (JSON, CSV, npy), COCO JSON rasterisation, label maps, class names."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import coco_box, run_cli, write_coco
from weakshot_cli.data import coco
from weakshot_cli.data.labels import read_class_names, read_label_map
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.data.tags import load_tags
from weakshot_cli.errors import UserError

CLASSES = ["background", "lamp", "clock", "sofa"]


def test_tags_json_csv_npy_agree(tmp_path):
    expected = {"img1": {1, 2}, "img2": set(), "img3": {3}}
    (tmp_path / "t.json").write_text(json.dumps({"img1": ["lamp", "clock"], "img2": [], "img3.jpg": ["sofa"]}))
    (tmp_path / "t.csv").write_text("image,labels\nimg1,lamp;clock\nimg2,\nimg3.jpg, sofa \n")
    # WSSS cls_labels.npy: pickled dict of float multi-hot vectors, background excluded
    np.save(tmp_path / "t.npy", {"img1": np.array([1, 1, 0], np.float32), "img2": np.zeros(3, np.float32),
                                 "img3": np.array([0, 0, 1], np.float32)}, allow_pickle=True)
    np.save(tmp_path / "full.npy", {"img1": np.array([0, 1, 1, 0]), "img2": np.zeros(4),
                                    "img3": np.array([0, 0, 0, 1])}, allow_pickle=True)
    for name in ("t.json", "t.csv", "t.npy", "full.npy"):
        assert load_tags(tmp_path / name, CLASSES) == expected, name


def test_npy_tags_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = pickle.dumps(np.array(Evil(), dtype=object))
    path = tmp_path / "evil.npy"
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_tags(path, CLASSES)


@pytest.mark.parametrize("name,text,message", [
    ("bad.json", "{not json", "invalid JSON"),
    ("list.json", "[1, 2]", "must be an object"),
    ("names.json", '{"a": "lamp"}', "must be a list of class names"),
    ("unknown.json", '{"a": ["lampp"]}', "unknown class 'lampp'"),
    ("escape.json", '{"../../etc/passwd": ["lamp"]}', "must be an image name, not a path"),
    ("noheader.csv", "a,lamp\n", "header 'image,labels'"),
    ("tags.txt", "a lamp", "unknown tags format"),
    ("empty.json", "{}", "no image tags"),
])
def test_bad_tag_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_tags(tmp_path / name, CLASSES)
    assert name in str(e.value)


def test_npy_tags_wrong_length(tmp_path):
    np.save(tmp_path / "t.npy", {"a": np.ones(7)}, allow_pickle=True)
    with pytest.raises(UserError, match="has length 7; expected 4"):
        load_tags(tmp_path / "t.npy", CLASSES)


def test_label_map_and_class_name_errors(tmp_path):
    (tmp_path / "m.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="key 'x' is not an integer"):
        read_label_map(tmp_path / "m.json")
    (tmp_path / "m.csv").write_text("1,2,3\n")
    with pytest.raises(UserError, match="source,target"):
        read_label_map(tmp_path / "m.csv")
    (tmp_path / "m2.json").write_text('{"300": 1}')
    with pytest.raises(UserError, match="outside 0..255"):
        read_label_map(tmp_path / "m2.json")
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    with pytest.raises(UserError, match="duplicate class names: a"):
        read_class_names(tmp_path / "c.txt")
    (tmp_path / "c2.txt").write_text("a\n\nb\n")
    with pytest.raises(UserError, match="blank class name on line 2"):
        read_class_names(tmp_path / "c2.txt")


# ---- COCO JSON ------------------------------------------------------------------------------------------------------

def test_coco_polygons_rle_crowd_and_paint_order(tmp_path):
    h, w = 20, 30
    grass = np.zeros((h, w), np.uint8, order="F")
    grass[:, :20] = 1
    compressed = mask_utils.encode(grass)
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((h, w), np.uint8, order="F")
    crowd[15:, 22:] = 1
    uncompressed = {"size": [h, w], "counts": [int(c) for c in _runs(crowd)]}
    anns = [
        {"id": 1, "image_id": 1, "category_id": 9, "segmentation": coco_box(2, 2, 6, 6), "iscrowd": 0},  # small ball
        {"id": 2, "image_id": 1, "category_id": 5, "segmentation": compressed, "iscrowd": 0},  # big grass
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": coco_box(21, 1, 28, 10), "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 2, "segmentation": uncompressed, "iscrowd": 1},
    ]
    images, path = write_coco(tmp_path, anns)
    out = tmp_path / "ws"
    r = run_cli("split", "--images", images, "--coco", f"train={path}", "--novel", "ball", "-o", out)
    assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    assert m.classes == ["dog", "grass", "ball"]  # sorted by category id -> contiguous ids
    full = np.asarray(Image.open(out / "full" / "train" / "a.png"))
    assert full[4, 4] == 2  # the small ball stays on top of the larger grass painted first
    assert full[10, 10] == 1 and full[5, 25] == 0
    assert full[18, 25] == 255  # crowd -> ignore
    assert full[0, 29] == 255  # unlabelled
    train = np.asarray(Image.open(m.resolve(m.splits["train"][0].label)))
    assert train[4, 4] == 255 and train[10, 10] == 1  # novel ball hidden in training labels
    assert m.splits["train"][0].tags == [0, 1, 2]


def _peak_rasterising(tmp: Path, n: int) -> int:
    """Peak Python memory (bytes) of loading and rasterising a COCO file of ``n`` images, two detailed polygons
    each (the annotations are most of the file, as in COCO's own)."""
    ring = [v for t in np.linspace(0, 2 * np.pi, 100, endpoint=False) for v in (8 + 6 * np.cos(t), 8 + 6 * np.sin(t))]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": 16, "width": 16} for i in range(n)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 2 * i + k, "image_id": i, "category_id": k + 1, "segmentation": [ring], "iscrowd": 0}
                            for i in range(n) for k in range(2)]}
    path = tmp / f"coco-{n}.json"
    path.write_text(json.dumps(data))
    del data
    scratch = tmp / f"scratch-{n}"
    scratch.mkdir()
    tracemalloc.start()
    images, _, cat_to_id = coco.load_coco(path)
    maps = sum(1 for _ in coco.rasterise(path, images, cat_to_id, scratch))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert maps == n
    return peak


@pytest.mark.parametrize("mode", ["benchmark", "real"])
def test_coco_labels_are_where_the_manifest_says_and_split_can_run_again(tmp_path, mode):
    """full/ keeps benchmark mode's training masks alone (for --oracle): a val label lies in labels/val/ only, and in
    real mode there is no full/. Stray copies of the rasterised labels there once made a second split --exist-ok
    refuse them as files the dataset did not make."""
    dog = {"id": 1, "image_id": 1, "category_id": 2, "segmentation": coco_box(2, 2, 6, 6)}
    images, path = write_coco(tmp_path, [dog])
    roles = ["--novel", "ball"]
    if mode == "real":
        (tmp_path / "tags.json").write_text(json.dumps({"a": ["dog", "ball"]}))
        roles = ["--tags", tmp_path / "tags.json"]
    out = tmp_path / "ws"
    for _ in range(2):
        r = run_cli("split", "--images", images, "--coco", f"train={path}", "--coco", f"val={path}", *roles,
                    "-o", out, "--exist-ok")
        assert r.returncode == 0, r.stderr
    m = load_manifest(out)
    listed = {it.label for items in m.splits.values() for it in items} | {it.full for it in m.splits["train"]}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == listed - {None}
    assert listed - {None} == ({"full/train/a.png"} if mode == "benchmark" else set()) | {"labels/train/a.png",
                                                                                           "labels/val/a.png"}


def test_coco_image_ids_beyond_64_bits_are_refused(tmp_path):
    """Python's JSON readers (ijson's fallback among them) read any integer; split keeps ids in 64 bits."""
    with pytest.raises(UserError, match="has an id beyond 64 bits"):
        coco.coco_images([{"id": 2**64, "file_name": "a.jpg", "height": 2, "width": 2}], tmp_path / "x.json")


def test_coco_annotations_are_streamed_not_held(tmp_path):
    """Memory stays flat as a COCO file grows: four times the images (and annotations) take under 1.5 times the
    peak (measured: 1.06x), where parsing the file whole took four times as much."""
    small, large = (_peak_rasterising(tmp_path, n) for n in (coco.CHUNK_IMAGES, 4 * coco.CHUNK_IMAGES))
    assert large < 1.5 * small, (small, large)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    runs, current, n = [], 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    runs.append(n)
    return runs
