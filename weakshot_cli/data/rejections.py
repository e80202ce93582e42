"""Rejected pseudo-labels (saved from ``weakshot review``) turned into ignore when ``retrain --reject`` reads
the labels; the dataset on disk is never changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weakshot_cli.data.labels import IGNORE
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.errors import UserError
from weakshot_cli.io import read_json

REJECTIONS = "weakshot-rejections"


def read_rejections(path: Path, m: Manifest) -> dict[str, set[int] | None]:
    """rejections.json as saved from the review page: label path -> the class ids rejected in that image, or None
    for the whole image. Checked against the dataset: every label and class must be its own."""
    obj = read_json(path, "rejections file")
    if not isinstance(obj, dict) or obj.get("kind") != REJECTIONS or not isinstance(obj.get("images"), dict):
        raise UserError("not a rejections file saved from 'weakshot review'", path)
    if obj.get("dataset") and Path(obj["dataset"]).resolve() != m.root.resolve():
        raise UserError(f"rejections were saved for another dataset ({obj['dataset']})", path)
    labels = {it.label for it in m.splits["train"]}
    index = {name: c for c, name in enumerate(m.classes)}
    rejected: dict[str, set[int] | None] = {}
    for label, classes in obj["images"].items():
        if label not in labels:
            raise UserError(f"{label!r} is not a training label of the dataset", path)
        if classes is None:
            rejected[label] = None
            continue
        if not isinstance(classes, list) or any(c not in index for c in classes):
            raise UserError(f"rejected classes of {label!r} must be a list of class names of the dataset", path)
        rejected[label] = {index[c] for c in classes}
    return rejected


def apply_rejections(label: np.ndarray, rejected: set[int] | None, novel: list[int], tag_only: bool) -> np.ndarray:
    """A pseudo-labelled training label with its rejected pseudo-labels turned into ignore: the whole image's
    (``rejected`` None) or those classes'. Base ground truth never changes: in a masked image only novel pixels are
    pseudo-labels; in a tag-only image every labelled pixel is."""
    pseudo = np.ones(label.shape, bool) if tag_only else np.isin(label, novel)
    drop = pseudo if rejected is None else pseudo & np.isin(label, sorted(rejected))
    return np.where(drop, IGNORE, label).astype(label.dtype)
