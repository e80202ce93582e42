"""The synthetic dataset must be well-formed, seeded, varied, and not solvable from colour alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakshot_cli.errors import UserError
from weakshot_cli.data.synthetic import CLASSES, DEMO_NOVEL, STUFF, THINGS, make_synthetic, render_sample

N_TRAIN, N_VAL, SIZE = 120, 40, 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=0)


def _load(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(Image.open(p)), np.asarray(Image.open(root / "labels" / split / p.name)))
            for p in sorted((root / "images" / split).glob("*.png"))]


def _tags(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[frozenset[int]]:
    return [frozenset(np.unique(lab[lab != 255]).tolist()) for _, lab in pairs]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_lists() -> None:
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert set(CLASSES) == set(STUFF) | set(THINGS)
    assert set(DEMO_NOVEL) < set(CLASSES)
    assert set(DEMO_NOVEL) & set(STUFF) and set(DEMO_NOVEL) & set(THINGS)  # no single family of cue


def test_layout_and_formats(dataset: Path) -> None:
    assert (dataset / "classes.txt").read_text(encoding="utf-8").splitlines() == CLASSES
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted((dataset / "images" / split).iterdir())
        labels = sorted((dataset / "labels" / split).iterdir())
        assert [p.name for p in images] == [p.name for p in labels] == [f"syn_{i:06d}.png" for i in range(n)]
        for img_path, lab_path in zip(images[:10], labels[:10]):
            img, lab = Image.open(img_path), Image.open(lab_path)
            assert img.mode == "RGB" and lab.mode == "L"
            assert img.size == lab.size == (SIZE, SIZE)
    assert not list(dataset.rglob(".*"))  # no temporary files left behind


def test_render_sample_types() -> None:
    img, lab = render_sample(np.random.default_rng(3), 64)
    assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
    assert img.dtype == lab.dtype == np.uint8


def test_deterministic(tmp_path: Path) -> None:
    a = _digest(make_synthetic(tmp_path / "a", n_train=6, n_val=3, size=64, seed=7))
    b = _digest(make_synthetic(tmp_path / "b", n_train=6, n_val=3, size=64, seed=7))
    c = _digest(make_synthetic(tmp_path / "c", n_train=6, n_val=3, size=64, seed=8))
    assert a == b
    assert all(a[k] != c[k] for k in a if k != "classes.txt")
    # an image depends on (seed, split, index) only: more training images leave val unchanged
    d = _digest(make_synthetic(tmp_path / "d", n_train=9, n_val=3, size=64, seed=7))
    assert len(d) == len(a) + 6 and {k: d[k] for k in a} == a


def test_classes_present_and_tags_vary(dataset: Path) -> None:
    for split in ("train", "val"):
        tags = _tags(_load(dataset, split))
        freq = np.array([sum(c in t for t in tags) for c in range(len(CLASSES))]) / len(tags)
        assert (freq > 0).all(), f"{split}: classes missing: {np.array(CLASSES)[freq == 0]}"
        if split == "train":
            assert ((freq >= 0.15) & (freq <= 0.65)).all(), dict(zip(CLASSES, freq.round(2)))
            assert len(set(tags)) >= 0.5 * len(tags)
            assert len({len(t) for t in tags}) >= 4  # from one stuff alone to several stuffs and things
            base = {CLASSES.index(c) for c in CLASSES if c not in DEMO_NOVEL}
            for name in DEMO_NOVEL:
                with_novel = [t for t in tags if CLASSES.index(name) in t]
                assert np.mean([bool(t & base) for t in with_novel]) >= 0.9, name


def test_label_values_and_ignore(dataset: Path) -> None:
    labels = np.stack([lab for _, lab in _load(dataset, "train")])
    values = np.unique(labels)
    assert ((values < len(CLASSES)) | (values == 255)).all()
    ignore = labels == 255
    assert ignore.any(axis=(1, 2)).mean() > 0.3  # many images exercise ignore handling
    assert ignore.mean() < 0.1  # but it stays a thin band


def test_colour_is_only_a_partial_class_cue(dataset: Path) -> None:
    train, val = _load(dataset, "train"), _load(dataset, "val")
    for name in THINGS:
        c = CLASSES.index(name)
        means = np.array([img[lab == c].mean(0) for img, lab in train if (lab == c).sum() >= 20])
        assert len(means) >= 10 and (means.std(0) > 20).all(), f"{name}: colour varies too little"

    def pixels(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([img.reshape(-1, 3) for img, _ in pairs]).astype(np.float64)
        y = np.concatenate([lab.ravel() for _, lab in pairs])
        return x[y != 255], y[y != 255]

    x, y = pixels(train)
    centroids = np.stack([x[y == c].mean(0) for c in range(len(CLASSES))])
    xv, yv = pixels(val)
    pred = ((xv[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == yv).mean()
    assert 0.3 < accuracy < 0.75, f"a nearest-colour classifier should help but not solve it ({accuracy:.2f})"


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    user = tmp_path / "mine" / "labels" / "train" / "a.png"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"precious")
    with pytest.raises(UserError, match="refusing to overwrite"):
        make_synthetic(tmp_path / "mine", n_train=2, n_val=1, size=64)
    assert user.read_bytes() == b"precious"
    assert not (tmp_path / "mine" / "images").exists()
    (tmp_path / "empty" / "images").mkdir(parents=True)  # empty folders are fine
    make_synthetic(tmp_path / "empty", n_train=2, n_val=1, size=64)
    assert len(list((tmp_path / "empty" / "images").rglob("*.png"))) == 3
