"""Bad input through the real CLI, every subcommand, one table: each case must end in exit code 2 and one
stderr line naming the offending file (or option) and the problem, with no traceback, and must leave every
file and folder exactly as it was (no output folder, no staging or run folder, sources byte-identical).

Cases are functions of a per-test context ``t`` that break a fresh copy of a small dataset and return the
command line and the fragments the error line must contain.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from conftest import TINY, assert_user_error, blocks, run_cli, run_process, snapshot, write_dataset
from weakshot_cli.data.split import SplitOptions, run_split
from weakshot_cli.engine.build import build_model
from weakshot_cli.engine.checkpoint import save_checkpoint, weights_state
from weakshot_cli.engine.config import build_config

CLASSES = ["a", "b", "c", "d"]
ROOT_USER = os.geteuid() == 0  # root ignores file permissions


@dataclass
class Case:
    args: list
    fragments: tuple[str, ...]
    preexec: Callable[[], None] | None = None


CASES: list = []  # pytest.param(case function, id=name)


def case(name: str, *marks: pytest.MarkDecorator) -> Callable:
    def register(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
        CASES.append(pytest.param(fn, id=name, marks=marks))
        return fn
    return register


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels but holds almost nothing: a decompression bomb, cheaply."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def full_disk() -> None:
    """In the child: files may not grow past 16 bytes, and hitting that is an error (EFBIG), not a signal."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


def make_checkpoint(path: Path, classes: list[str]) -> Path:
    """An untrained tiny model saved as train.py saves one: building it is quicker than a training run."""
    sets = [v for flag, v in zip(TINY, TINY[1:]) if flag == "--set"]
    cfg = build_config("small", {"imgsz": 64}, sets)
    return save_checkpoint(path, weights_state(build_model(cfg, len(classes)), cfg, classes, [0, 1, 3], [2],
                                               iteration=0, best=0.0, best_iter=None, stage="train"))


def make_source(root: Path) -> None:
    """4 classes; train images with varied class sets, val with everything (16x20 px)."""
    train = {"t0": blocks(16, 20, [0, 1, 2]), "t1": blocks(16, 20, [0, 3]), "t2": blocks(16, 20, [1, 2, 255]),
             "t3": blocks(16, 20, [0, 1, 3, 2])}
    val = {"v0": blocks(16, 20, [0, 1, 2, 3]), "v1": blocks(16, 20, [3, 2])}
    write_dataset(root, {"train": train, "val": val}, CLASSES)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    import matplotlib.font_manager  # noqa: F401 (builds the font cache now: a disk-full child could not)

    root = tmp_path_factory.mktemp("shared")
    make_source(root / "src")
    make_checkpoint(root / "ckpt.pt", CLASSES)
    make_checkpoint(root / "other.pt", ["a", "b", "c", "zebra"])
    return root


class Ctx:
    """Fresh copies per test of what a case breaks; the shared checkpoints (and the session's tiny run) are only
    read, and are in the before/after snapshot with the test's own folder."""

    def __init__(self, shared: Path, tmp: Path, request: pytest.FixtureRequest):
        self.shared, self.tmp, self.request = shared, tmp, request
        self.read_only = [shared]
        self.ckpt, self.other_ckpt = shared / "ckpt.pt", shared / "other.pt"
        self.out, self.runs = tmp / "out", tmp / "runs"
        self._src: Path | None = None
        self._ws: Path | None = None

    @property
    def src(self) -> Path:
        if self._src is None:
            self._src = Path(shutil.copytree(self.shared / "src", self.tmp / "src"))
        return self._src

    def split(self, *extra: str, novel: bool = True) -> list:
        return ["split", "--images", self.src / "images", "--masks", self.src / "labels", "--classes",
                self.src / "classes.txt", "-o", self.out, *(["--novel", "c"] if novel else []), *extra]

    @property
    def ws(self) -> Path:
        """A benchmark-mode weak-shot dataset (novel: c) made from this test's copy of the source."""
        if self._ws is None:
            self._ws = self.tmp / "ws"
            run_split(SplitOptions(out=self._ws, images=self.src / "images", masks=self.src / "labels",
                                   classes=self.src / "classes.txt", novel=["c"]), Console(file=io.StringIO()))
        return self._ws

    def edit_manifest(self, edit: Callable[[dict], object]) -> None:
        path = self.ws / "weakshot.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def evaluate(self, *extra, ckpt: Path | None = None) -> list:
        return ["evaluate", ckpt or self.ckpt, self.ws, "--device", "cpu", "--project", self.runs, *extra]

    def pseudolabel(self, *extra, ckpt: Path | None = None) -> list:
        return ["pseudolabel", ckpt or self.ckpt, self.ws, "-o", self.out, "--device", "cpu", *extra]

    def predict(self, source, *extra, ckpt: Path | None = None) -> list:
        return ["predict", ckpt or self.ckpt, source, "--device", "cpu", "--project", self.runs, *extra]

    def train(self, *extra, stage: str = "train") -> list:
        return [stage, self.ws, *TINY, "--iters", "1", "--project", self.runs, *extra]

    def locked(self) -> Path:
        """A folder nobody but root may write into (permissions restored at teardown)."""
        folder = self.tmp / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder


# ---- split: images and labels ---------------------------------------------------------------------------------

@case("split-truncated-jpeg")
def _(t: Ctx) -> Case:
    png = t.src / "images" / "train" / "t1.png"
    jpg = png.with_suffix(".jpg")
    Image.open(png).resize((80, 64)).save(jpg, quality=95)
    png.unlink()
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) * 2 // 3])
    return Case(t.split(), (str(jpg), "unreadable or truncated image"))


@case("split-truncated-png")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "train" / "t1.png"
    path.write_bytes(path.read_bytes()[:-40])
    return Case(t.split(), (str(path), "unreadable or truncated image"))


@case("split-zero-byte-image")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "val" / "v1.png"
    path.write_bytes(b"")
    return Case(t.split(), (str(path), "unreadable or truncated image"))


@case("split-text-file-as-image")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "train" / "t3.png"
    path.write_text("not an image")
    return Case(t.split(), (str(path), "unreadable or truncated image"))


@case("split-zero-byte-label")
def _(t: Ctx) -> Case:
    path = t.src / "labels" / "train" / "t0.png"
    path.write_bytes(b"")
    return Case(t.split(), (str(path), "unreadable or truncated image"))


@case("split-label-wrong-size")
def _(t: Ctx) -> Case:
    path = t.src / "labels" / "train" / "t0.png"
    Image.fromarray(blocks(10, 20, [0, 1])).save(path)
    return Case(t.split(), (str(path), "label is 20x10 but its image t0.png is 20x16"))


@case("split-label-rgb-colour-coded")
def _(t: Ctx) -> Case:
    path = t.src / "labels" / "train" / "t2.png"
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(path)
    return Case(t.split(), (str(path), "colour-coded (RGB)"))


@case("split-label-values-beyond-classes")
def _(t: Ctx) -> Case:
    path = t.src / "labels" / "val" / "v1.png"
    Image.fromarray(blocks(16, 20, [0, 7])).save(path)
    return Case(t.split(), (str(path), "label values [7] exceed the 4 classes"))


@case("split-label-16-bit")
def _(t: Ctx) -> Case:
    """Refused even when every value would fit 8 bits (README: 16-bit label PNGs are refused)."""
    path = t.src / "labels" / "train" / "t1.png"
    Image.fromarray(blocks(16, 20, [0, 3]).astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return Case(t.split(), (str(path), "16/32-bit"))


@case("split-image-decompression-bomb")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "train" / "t0.png"
    png_header(path, 20_000, 20_000)
    return Case(t.split(), (str(path), "larger than 100,000,000 pixels"))


@case("split-label-just-over-the-pixel-limit")
def _(t: Ctx) -> Case:
    """Between the limit and twice it PIL only warns; it must be refused all the same."""
    path = t.src / "labels" / "train" / "t0.png"
    png_header(path, 12_000, 10_000)
    return Case(t.split(), (str(path), "larger than 100,000,000 pixels"))


@case("split-duplicate-stems")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "train" / "t0.jpg"
    Image.new("RGB", (20, 16)).save(path)
    return Case(t.split(), (str(path), "duplicate image stem 't0'"))


@case("split-empty-image-folder")
def _(t: Ctx) -> Case:
    shutil.rmtree(t.src / "images")
    (t.src / "images").mkdir()
    return Case(t.split(), (str(t.src / "images"), "no images"))


@case("split-no-image-has-a-label")
def _(t: Ctx) -> Case:
    shutil.rmtree(t.src / "labels")
    (t.src / "labels").mkdir()
    return Case(t.split(), (str(t.src / "images"), "empty dataset"))


@case("split-missing-image-folder")
def _(t: Ctx) -> Case:
    args = t.split()
    args[args.index("--images") + 1] = t.tmp / "nope"
    return Case(args, (str(t.tmp / "nope"), "image folder not found"))


@case("split-missing-mask-folder")
def _(t: Ctx) -> Case:
    args = t.split()
    args[args.index("--masks") + 1] = t.tmp / "nomasks"
    return Case(args, (str(t.tmp / "nomasks"), "label folder not found"))


# ---- split: class names, label maps, tags ---------------------------------------------------------------------

@case("split-classes-duplicate-names")
def _(t: Ctx) -> Case:
    (t.src / "classes.txt").write_text("a\nb\na\nd\n")
    return Case(t.split(), (str(t.src / "classes.txt"), "duplicate class names: a"))


@case("split-label-map-malformed-json")
def _(t: Ctx) -> Case:
    path = t.file("map.json", '{7: 0, "8": 1}')
    return Case(t.split("--label-map", path), (str(path), "invalid JSON in label map"))


@case("split-label-map-infinite-target")
def _(t: Ctx) -> Case:
    path = t.file("map.json", '{"0": 0, "1": Infinity}')
    return Case(t.split("--label-map", path), (str(path), "value inf for '1' is not an integer"))


@case("split-tags-unknown-class")
def _(t: Ctx) -> Case:
    path = t.file("tags.json", json.dumps({"t0": ["a", "zebra"]}))
    return Case(t.split("--tags", path, novel=False), (str(path), "tagged with unknown class 'zebra'"))


@case("split-tags-malformed-json")
def _(t: Ctx) -> Case:
    path = t.file("tags.json", '{"t0": ["a",')
    return Case(t.split("--tags", path, novel=False), (str(path), "invalid JSON"))


@case("split-tags-csv-without-header")
def _(t: Ctx) -> Case:
    path = t.file("tags.csv", "t0;a\nt1;c\n")
    return Case(t.split("--tags", path, novel=False), (str(path), "needs a header 'image,labels'"))


@case("split-tags-npy-garbage")
def _(t: Ctx) -> Case:
    path = t.file("tags.npy", b"\x93NUMPY garbage")
    return Case(t.split("--tags", path, novel=False), (str(path), "not a plain .npy dict"))


@case("split-tags-npy-header-claims-a-huge-array")
def _(t: Ctx) -> Case:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    path = t.file("tags.npy", buf.getvalue() + b"\0" * 64)
    return Case(t.split("--tags", path, novel=False), (str(path), "more data than the file holds"))


@case("split-tags-key-escapes")
def _(t: Ctx) -> Case:
    path = t.file("tags.json", json.dumps({"../../etc/passwd": ["a"]}))
    return Case(t.split("--tags", path, novel=False), (str(path), "must be an image name, not a path"))


@case("split-novel-class-occurs-in-a-training-mask")
def _(t: Ctx) -> Case:
    path = t.file("tags.csv", "image,labels\nt0,c\n")
    return Case(t.split("--tags", path), (str(t.src / "labels" / "train" / "t0.png"),
                                          "novel class 'c' is labelled in 3 of 4 training masks",
                                          "so it is also a base class: leave it out of --novel"))


@case("split-unknown-novel-name")
def _(t: Ctx) -> Case:
    return Case(t.split("--novel", "zebra", novel=False), ("--novel", "unknown class 'zebra'"))


@case("split-novel-leaves-no-base-class")
def _(t: Ctx) -> Case:
    return Case(t.split("--novel", "a,b,c,d", novel=False), ("--novel", "leave at least one base class"))


# ---- split: COCO JSON ---------------------------------------------------------------------------------------------

def coco(t: Ctx, segmentation: object = None, file_name: str = "a.jpg", **replace: object) -> Path:
    """A one-image COCO file (20x30 px, categories dog and ball); ``segmentation`` for its one annotation."""
    images = t.tmp / "coco"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (30, 20)).save(images / "a.jpg")
    data = {"images": [{"id": 1, "file_name": file_name, "height": 20, "width": 30}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 2,
                             "segmentation": segmentation or [[2, 2, 9, 2, 9, 9, 2, 9]]}],
            "categories": [{"id": 2, "name": "dog"}, {"id": 9, "name": "ball"}], **replace}
    return t.file("inst.json", json.dumps(data))


def coco_split(t: Ctx, path: Path, spec: str | None = None) -> list:
    return ["split", "--images", t.tmp / "coco", "--coco", spec or f"train={path}", "--novel", "ball", "-o", t.out]


@case("split-coco-missing-keys")
def _(t: Ctx) -> Case:
    path = coco(t)
    path.write_text(json.dumps({"images": [], "categories": []}))
    return Case(coco_split(t, path), (str(path), "no 'annotations' list"))


@case("split-coco-image-entry-missing-keys")
def _(t: Ctx) -> Case:
    path = coco(t, images=[{"id": 1, "file_name": "a.jpg"}])
    return Case(coco_split(t, path), (str(path), "needs integer id, height, width and a file_name"))


@case("split-coco-image-id-beyond-64-bits")
def _(t: Ctx) -> Case:
    """ijson's C parser refuses the number ('integer overflow'); its Python one reads it, and split refuses it."""
    path = coco(t, images=[{"id": 2**64, "file_name": "a.jpg", "height": 20, "width": 30}])
    return Case(coco_split(t, path), (str(path),))


@case("split-coco-broken-polygon")
def _(t: Ctx) -> Case:
    path = coco(t, [[1, 2, 3, 4]])
    return Case(coco_split(t, path), (str(path), "annotation 7: broken polygon"))


@case("split-coco-polygon-with-a-string")
def _(t: Ctx) -> Case:
    path = coco(t, [[1, 2, 3, "x", 5, 6]])
    return Case(coco_split(t, path), (str(path), "annotation 7: broken polygon"))


@case("split-coco-segmentation-neither-polygons-nor-rle")
def _(t: Ctx) -> Case:
    path = coco(t, "nonsense")
    return Case(coco_split(t, path), (str(path), "annotation 7: segmentation must be polygons or RLE"))


@case("split-coco-rle-of-another-size")
def _(t: Ctx) -> Case:
    path = coco(t, {"size": [5, 5], "counts": "abc"})
    return Case(coco_split(t, path), (str(path), "annotation 7: RLE size [5, 5] does not match the image"))


@case("split-coco-uncompressed-rle-too-short")
def _(t: Ctx) -> Case:
    path = coco(t, {"size": [20, 30], "counts": [1, 2]})
    return Case(coco_split(t, path), (str(path), "annotation 7: uncompressed RLE counts do not add up"))


@case("split-coco-polygon-far-outside-the-image")
def _(t: Ctx) -> Case:
    """pycocotools would overflow C ints (or walk 10^12 outline pixels) on this."""
    path = coco(t, [[0, 0, 1e12, 0, 1e12, 1e12]])
    return Case(coco_split(t, path), (str(path), "annotation 7: broken polygon"))


@case("split-coco-rle-that-does-not-cover-the-image")
def _(t: Ctx) -> Case:
    """pycocotools decodes this one, leaving the uncovered pixels uninitialised."""
    path = coco(t, {"size": [20, 30], "counts": "0"})
    return Case(coco_split(t, path), (str(path), "compressed RLE counts are malformed"))


@case("split-coco-file-name-escapes")
def _(t: Ctx) -> Case:
    path = coco(t, file_name="../../etc/passwd")
    return Case(coco_split(t, path), (str(path), "escapes the images folder"))


@case("split-coco-unknown-split")
def _(t: Ctx) -> Case:
    path = coco(t)
    return Case(coco_split(t, path, f"../x={path}"), (str(path), "unknown split '../x'"))


# ---- split: where the output goes -----------------------------------------------------------------------------

@case("split-output-inside-the-source")
def _(t: Ctx) -> Case:
    t.out = t.src / "images" / "ws"
    return Case(t.split(), (str(t.out), "overlaps the source folder"))


@case("split-output-is-a-file")
def _(t: Ctx) -> Case:
    t.out.write_text("a file\n")
    return Case(t.split(), (str(t.out), "exists and is not a folder"))


@case("split-unreadable-image-subfolder", pytest.mark.skipif(ROOT_USER, reason="root ignores permissions"))
def _(t: Ctx) -> Case:
    folder = t.src / "images" / "train" / "locked"  # teardown restores folders of that name
    folder.mkdir()
    folder.chmod(0o300)
    return Case(t.split(), (str(folder), "cannot list this folder (Permission denied)"))


@case("split-unwritable-output-folder", pytest.mark.skipif(ROOT_USER, reason="root ignores permissions"))
def _(t: Ctx) -> Case:
    t.out = t.locked() / "ws"
    return Case(t.split(), (str(t.out), "cannot write the output folder"))


@case("split-disk-full")
def _(t: Ctx) -> Case:
    return Case(t.split(), (str(t.out / "full" / "train" / "t0.png"), "cannot write (File too large)"), full_disk)


# ---- weak-shot datasets edited by hand, through train, retrain, evaluate and pseudolabel --------------------------

@case("train-manifest-label-missing")
def _(t: Ctx) -> Case:
    (t.ws / "labels" / "train" / "t0.png").unlink()
    return Case(t.train(), (str(t.ws / "weakshot.json"), "label file 'labels/train/t0.png' not found"))


@case("train-manifest-novel-id-out-of-range")
def _(t: Ctx) -> Case:
    t.edit_manifest(lambda m: m.update(novel=[2, 9]))
    return Case(t.train(), (str(t.ws / "weakshot.json"), "'novel' must be a list of class ids in 0..3"))


@case("retrain-manifest-base-novel-overlap")
def _(t: Ctx) -> Case:
    t.edit_manifest(lambda m: m.update(base=[0, 1, 2, 3], novel_masks=True))
    return Case(t.train(stage="retrain"), (str(t.ws / "weakshot.json"), "classes [2] are both base and novel"))


@case("train-manifest-image-escapes")
def _(t: Ctx) -> Case:
    t.edit_manifest(lambda m: m["splits"]["train"][1].update(image="../../etc/passwd"))
    return Case(t.train(), (str(t.ws / "weakshot.json"), "'../../etc/passwd' escapes the dataset folder"))


@case("train-image-truncated-after-split")
def _(t: Ctx) -> Case:
    """Found only when the loader reads it, after the run folder exists: the folder must go again."""
    m = json.loads((t.ws / "weakshot.json").read_text())
    image = (t.ws / m["splits"]["train"][0]["image"]).resolve()
    image.write_bytes(image.read_bytes()[:40])
    return Case(t.train("--iters", "8"), (image.name, "unreadable or truncated image"))


@case("train-disk-full")
def _(t: Ctx) -> Case:
    return Case(t.train(), ("cannot write (File too large)",), full_disk)


@case("evaluate-symlink-out-of-the-dataset")
def _(t: Ctx) -> Case:
    link = t.ws / "labels" / "val" / "v1.png"
    link.unlink()
    link.symlink_to(t.src / "labels" / "val" / "v1.png")
    return Case(t.evaluate(), (str(t.ws / "weakshot.json"), "'labels/val/v1.png' escapes the dataset folder"))


@case("evaluate-split-without-full-masks")
def _(t: Ctx) -> Case:
    t.edit_manifest(lambda m: [it.pop("full") for it in m["splits"]["train"]])
    return Case(t.evaluate("--split", "train"), (str(t.ws), "evaluate a split with full ground truth (--split val)"))


@case("evaluate-no-such-split")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--split", "test"), (str(t.ws), "no split 'test'"))


@case("evaluate-image-truncated-after-split")
def _(t: Ctx) -> Case:
    """Found mid-run (the header is intact): the run folder made for it must go again."""
    args = t.evaluate("--batch", "1")  # the dataset is made from the intact image
    path = t.src / "images" / "val" / "v1.png"
    path.write_bytes(path.read_bytes()[:-40])
    return Case(args, (str(path), "unreadable or truncated image"))


# ---- checkpoints ------------------------------------------------------------------------------------------------

@case("evaluate-checkpoint-of-another-class-set")
def _(t: Ctx) -> Case:
    return Case(t.evaluate(ckpt=t.other_ckpt), (str(t.other_ckpt), "different class set"))


@case("evaluate-text-file-as-checkpoint")
def _(t: Ctx) -> Case:
    path = t.file("bogus.pt", "not a checkpoint")
    return Case(t.evaluate(ckpt=path), (str(path), "not a weakshot checkpoint"))


@case("evaluate-torch-file-that-is-no-checkpoint")
def _(t: Ctx) -> Case:
    import torch

    path = t.tmp / "weights.pt"
    torch.save({"model": {}, "config": "small", "classes": CLASSES}, path)
    return Case(t.evaluate(ckpt=path), (str(path), "not a weakshot checkpoint (model, config or classes"))


@case("predict-text-file-as-checkpoint")
def _(t: Ctx) -> Case:
    path = t.file("fake.pt", "not a checkpoint")
    return Case(t.predict(t.src / "images" / "val", ckpt=path), (str(path), "not a weakshot checkpoint"))


@case("pseudolabel-zero-byte-checkpoint")
def _(t: Ctx) -> Case:
    path = t.file("empty.pt", b"")
    return Case(t.pseudolabel(ckpt=path), (str(path), "not a weakshot checkpoint"))


@case("pseudolabel-checkpoint-of-another-class-set")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel(ckpt=t.other_ckpt), (str(t.other_ckpt), "different class set"))


@case("train-weights-not-a-checkpoint")
def _(t: Ctx) -> Case:
    path = t.file("weights.pt", np.random.default_rng(0).bytes(300))
    return Case(t.train("--weights", path), (str(path), "not a weakshot checkpoint"))


@case("train-weights-of-another-class-set")
def _(t: Ctx) -> Case:
    return Case(t.train("--weights", t.other_ckpt), (str(t.other_ckpt), "different class set"))


# ---- images the network cannot take ------------------------------------------------------------------------

@case("evaluate-images-too-small-at-original-size")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--imgsz", "0"), (str(t.src / "images" / "val" / "v0.png"), "image is 20x16 px, too small"))


@case("evaluate-images-too-small-at-a-test-time-scale")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--scales", "1,0.25"), (str(t.src / "images" / "val" / "v0.png"), "and scale 0.25"))


@case("predict-image-too-small")
def _(t: Ctx) -> Case:
    path = t.src / "images" / "train" / "t0.png"
    return Case(t.predict(path, "--imgsz", "0"), (str(path), "no image could be read", "too small for the network"))


@case("pseudolabel-images-too-small")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel("--imgsz", "16"), (str(t.src / "images" / "train" / "t0.png"), "too small"))


# ---- inference outputs ---------------------------------------------------------------------------------------

@case("predict-no-such-source")
def _(t: Ctx) -> Case:
    return Case(t.predict(t.tmp / "nowhere"), (str(t.tmp / "nowhere"), "no such image, folder, glob pattern"))


@case("predict-glob-matching-nothing")
def _(t: Ctx) -> Case:
    pattern = f"{t.src}/images/*/*.gif"
    return Case(t.predict(pattern), (pattern, "no images"))


@case("pseudolabel-output-inside-the-input")
def _(t: Ctx) -> Case:
    t.out = t.ws / "pl"
    return Case(t.pseudolabel(), (str(t.out), "may not be the input dataset or lie inside it"))


@case("pseudolabel-output-is-a-file")
def _(t: Ctx) -> Case:
    t.out.write_text("a file\n")
    return Case(t.pseudolabel(), (str(t.out), "exists and is not a folder"))


@case("pseudolabel-unwritable-output-folder", pytest.mark.skipif(ROOT_USER, reason="root ignores permissions"))
def _(t: Ctx) -> Case:
    t.out = t.locked() / "pl"
    return Case(t.pseudolabel(), (str(t.out / ".pseudolabel-state.json"), "cannot write"))


@case("evaluate-unwritable-project-folder", pytest.mark.skipif(ROOT_USER, reason="root ignores permissions"))
def _(t: Ctx) -> Case:
    t.runs = t.locked() / "runs"
    return Case(t.evaluate(), (str(t.runs / "evaluate" / "evaluate"), "cannot create the run folder"))


@case("evaluate-disk-full", pytest.mark.slow)  # train-disk-full covers the rule in the default suite
def _(t: Ctx) -> Case:
    """metrics.json cannot be written: the run folder made for it must go again."""
    return Case(t.evaluate(), (str(t.runs / "evaluate" / "evaluate" / "metrics.json"), "cannot write (File too large)"),
                full_disk)


# ---- options ------------------------------------------------------------------------------------------------------

@case("evaluate-scales-not-numbers")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--scales", "1,x"), ("--scales 1,x", "expected comma-separated numbers"))


@case("evaluate-batch-zero")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--batch", "0"), ("--batch must be >= 1",))


@case("evaluate-fp16-on-the-cpu")
def _(t: Ctx) -> Case:
    return Case(t.evaluate("--amp", "fp16"), ("--amp fp16 needs CUDA",))


@case("predict-unknown-amp")
def _(t: Ctx) -> Case:
    return Case(t.predict(t.ws / "images", "--amp", "fp8"), ("--amp must be auto, bf16, fp16 or off", "fp8"))


@case("pseudolabel-fp16-on-the-cpu")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel("--amp", "fp16"), ("--amp fp16 needs CUDA",))


@case("pseudolabel-negative-min-score")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel("--min-score", "-1"), ("--min-score must be >= 0",))


@case("pseudolabel-unknown-mode")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel("--mode", "best"), ("--mode must be keep or choose", "'best'"))


@case("pseudolabel-batch-zero")
def _(t: Ctx) -> Case:
    return Case(t.pseudolabel("--batch", "0"), ("--batch must be >= 1",))


# ---- bad options (issue 11.6) ----

# Every bad option: one line naming it, exit 2, nothing written (the config is checked before any run folder).
CONFIG_CASES = [  # (name, train/retrain options, stage, fragment)
    ("train-workers-negative", ["--workers", "-1"], "train", "--workers must be >= 0, got -1"),
    ("retrain-workers-negative", ["--workers", "-1"], "retrain", "--workers must be >= 0, got -1"),
    ("train-lr-nan", ["--lr", "nan"], "train", "--lr must be a positive finite number, got nan"),
    ("train-lr-negative", ["--lr", "-1"], "train", "--lr must be a positive finite number, got -1.0"),
    ("retrain-lr-inf", ["--lr", "inf"], "retrain", "--lr must be a positive finite number, got inf"),
    ("train-epochs-negative", ["--epochs", "-1"], "train", "--epochs must be >= 0, got -1"),
    ("train-imgsz-too-large", ["--imgsz", "16384"], "train", "--imgsz must be a multiple of 32 from 32 to 4096"),
    ("train-set-num-queries-zero", ["--set", "num_queries=0"], "train",
     "invalid configuration: num_queries must be >= 1, got 0"),
    ("train-set-num-points-negative", ["--set", "num_points=-5"], "train",
     "invalid configuration: num_points must be >= 0, got -5"),
    ("train-set-sim-class-points-above-num-sim-points", ["--set", "sim_class_points=500"], "train",
     "invalid configuration: sim_class_points must be <= num_sim_points (16), got 500"),
    ("train-set-dropout-above-one", ["--set", "dropout=5"], "train",
     "invalid configuration: dropout must be in [0, 1), got 5.0"),
    ("train-set-log-every-zero", ["--set", "log_every=0"], "train",
     "invalid configuration: log_every must be >= 1, got 0"),
    ("train-set-save-every-zero", ["--set", "save_every=0"], "train",
     "invalid configuration: save_every must be >= 1, got 0"),
    ("train-set-tag-keep-above-one", ["--set", "tag_keep=5"], "train",
     "invalid configuration: tag_keep must be in [0, 1], got 5.0"),
    ("train-set-loss-weight-nan", ["--set", "dice_weight=nan"], "train",
     "invalid configuration: dice_weight must be a finite number >= 0, got nan"),
    ("train-set-nheads-zero", ["--set", "nheads=0"], "train", "invalid configuration: nheads must be >= 1, got 0"),
]
for _name, _extra, _stage, _fragment in CONFIG_CASES:
    case(_name)(lambda t, extra=_extra, stage=_stage, fragment=_fragment: Case(t.train(*extra, stage=stage),
                                                                              (fragment,)))

INFER_CASES = [  # (name, command, options, fragments); the predict source is the val images
    *[(f"{cmd}-workers-negative", cmd, ["--workers", "-1"], ("--workers must be >= 0, got -1",))
      for cmd in ("evaluate", "predict", "pseudolabel")],
    *[(f"{cmd}-imgsz-too-large", cmd, ["--imgsz", "16384"],
       ("--imgsz must be 0 (original size) or at most 4096, got 16384",))
      for cmd in ("evaluate", "predict", "pseudolabel")],
    ("evaluate-scales-nan", "evaluate", ["--scales", "nan"], ("--scales nan", "positive finite numbers up to 4")),
    ("evaluate-scales-inf", "evaluate", ["--scales", "1,inf"], ("--scales 1,inf", "positive finite numbers")),
    ("predict-scales-nan", "predict", ["--scales", "1,nan"], ("--scales 1,nan", "positive finite numbers")),
    ("pseudolabel-scales-too-large", "pseudolabel", ["--scales", "100"], ("--scales 100", "up to 4")),
    ("pseudolabel-min-score-nan", "pseudolabel", ["--min-score", "nan"], ("--min-score must be >= 0 and finite",)),
    ("pseudolabel-min-score-inf", "pseudolabel", ["--min-score", "inf"], ("--min-score must be >= 0 and finite",)),
]


def infer_args(t: Ctx, cmd: str, extra: list[str]) -> list:
    return t.predict(t.src / "images" / "val", *extra) if cmd == "predict" else getattr(t, cmd)(*extra)


for _name, _cmd, _extra, _fragments in INFER_CASES:
    case(_name)(lambda t, cmd=_cmd, extra=_extra, fragments=_fragments: Case(infer_args(t, cmd, extra), fragments))

for _cmd in ("train", "evaluate", "predict"):  # a run name is one folder under --project/<stage>
    case(f"{_cmd}-name-escapes-project")(lambda t, cmd=_cmd: Case(
        t.train("--name", "../../x") if cmd == "train" else infer_args(t, cmd, ["--name", "../../x"]),
        ("--name '../../x'", "must be a single folder name")))


@case("predict-run-folder-is-a-file")
def _(t: Ctx) -> Case:
    path = t.runs / "predict" / "X"
    path.parent.mkdir(parents=True)
    path.write_text("a file\n")
    return Case(t.predict(t.src / "images" / "val", "--name", "X"), (str(path), "exists and is not a folder"))


@case("demo-output-is-a-file")
def _(t: Ctx) -> Case:
    t.out.write_text("a file\n")
    return Case(["demo", "-o", t.out], (str(t.out), "exists and is not a folder"))


@case("demo-iters-zero")
def _(t: Ctx) -> Case:
    return Case(["demo", "-o", t.out, "--iters", "0"], ("--iters must be >= 1, got 0",))


@case("demo-retrain-iters-zero")
def _(t: Ctx) -> Case:
    return Case(["demo", "-o", t.out, "--retrain-iters", "0"], ("--retrain-iters must be >= 1, got 0",))


@case("demo-seed-negative")
def _(t: Ctx) -> Case:
    return Case(["demo", "-o", t.out, "--seed", "-1"], ("--seed must be in 0..2**63-1, got -1",))


@case("split-img-suffix-is-a-whole-stem")
def _(t: Ctx) -> Case:
    return Case(t.split("--img-suffix", "t0"), (str(t.src / "images" / "train" / "t0.png"),
                                                "--img-suffix 't0' is the whole file stem"))


@case("split-mask-suffix-is-a-whole-stem")
def _(t: Ctx) -> Case:
    return Case(t.split("--mask-suffix", "v1"), (str(t.src / "labels" / "val" / "v1.png"),
                                                 "--mask-suffix 'v1' is the whole file stem"))


@case("split-coco-image-size-differs-from-its-entry")
def _(t: Ctx) -> Case:
    path = coco(t, images=[{"id": 1, "file_name": "a.jpg", "height": 20, "width": 40}])
    return Case(coco_split(t, path), (str(path), str(t.tmp / "coco" / "a.jpg"), "'a.jpg' is 30x20 px",
                                      "width 40, height 20"))


# ---- run outcomes (issue 11.7) ----

def finished_run(t: Ctx) -> Path:
    """A finished 2-iteration training run (the session's tiny run, on another dataset than ``t.ws``), only read: a
    refused --resume must leave it byte-identical."""
    run = t.request.getfixturevalue("tiny_run")
    t.read_only.append(run)
    return run


@case("train-resume-with-a-changed-option")
def _(t: Ctx) -> Case:
    return Case(["train", "--resume", finished_run(t), "--lr", "0.1"],
                ("--lr would change the run that --resume continues", "give only --iters or --epochs"))


@case("train-resume-with-set")
def _(t: Ctx) -> Case:
    return Case(["train", "--resume", finished_run(t), "--set", "comp_weight=0"], ("--set would change the run",))


@case("retrain-resume-with-a-value-equal-to-the-default")
def _(t: Ctx) -> Case:
    """Typed is typed: --preset r50 would be ignored as silently as any other preset."""
    return Case(["retrain", "--resume", finished_run(t), "--preset", "r50"], ("--preset would change the run",))


@case("train-resume-with-another-dataset")
def _(t: Ctx) -> Case:
    return Case(["train", t.ws, "--resume", finished_run(t)],
                (str(t.ws), "DATASET differs from the dataset of the run --resume continues"))


@case("train-resume-to-fewer-iterations-than-done")
def _(t: Ctx) -> Case:
    run = finished_run(t)
    return Case(["train", "--resume", run, "--iters", "1"],
                (str(run), "run already finished (2 of 1 iterations); --iters N with N above 2 continues it"))


@case("train-best-metric-unknown")
def _(t: Ctx) -> Case:
    return Case(t.train("--best-metric", "accuracy"),
                ("best_metric (--best-metric) must be one of mean_base_novel, mIoU,", "got 'accuracy'"))


@case("train-r50-preset-on-a-cpu-only-machine",
      pytest.mark.skipif(torch.cuda.is_available(), reason="refused on CPU-only machines only"))
def _(t: Ctx) -> Case:
    return Case(["train", t.ws, "--project", t.runs],
                ("the r50 preset is for GPUs (60,000 iterations", "on this CPU-only machine pass --preset small",
                 "(or --device cpu to train r50 on the CPU anyway)"))


@pytest.mark.parametrize("make", CASES)
def test_bad_input(make, shared, tmp_path, request):
    """In this process through the CLI's entry point (conftest.run_cli), but in a child process where the case
    needs one (resource limits: the disk-full cases)."""
    request.addfinalizer(lambda: [p.chmod(0o700) for p in tmp_path.rglob("locked")])
    t = Ctx(shared, tmp_path, request)
    c = make(t)
    before = snapshot(tmp_path, *t.read_only)
    r = run_cli(*c.args) if c.preexec is None else run_process(*c.args, preexec_fn=c.preexec)
    assert_user_error(r, *c.fragments)
    assert snapshot(tmp_path, *t.read_only) == before
