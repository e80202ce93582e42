"""``weakshot review``: look at pseudo-labels before retraining on them. A static page (no server, no network)
lists each training image with its pseudo-label overlaid, most doubtful first by the tag check's signals, and
saves the images or classes a user rejects as rejections.json, which ``retrain --reject`` turns into ignore
(data/rejections.py)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from weakshot_cli import folders
from weakshot_cli.data.dataset import load_rgb
from weakshot_cli.data.labels import IGNORE, read_raw_label
from weakshot_cli.data.manifest import Manifest, load_manifest
from weakshot_cli.data.rejections import REJECTIONS
from weakshot_cli.engine.progress import image_bar
from weakshot_cli.engine.visualise import default_palette, overlay, untinted
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write, read_json, write_text

THUMB, LARGE = 240, 720  # longest side of the grid's thumbnails and of the enlarged views, px
# Doubt signals: a class whose pseudo-labelled pixels score below LOW_SCORE on average, or that covers less than
# LOW_COVERAGE of the image's unknown pixels, is flagged (the tag check's mean score and coverage, per image).
LOW_SCORE, LOW_COVERAGE = 0.5, 0.05


def _jpeg(path: Path, rgb: np.ndarray, longest: int) -> str:
    img = Image.fromarray(rgb)
    img.thumbnail((longest, longest))
    atomic_write(path, lambda p: img.save(p, format="JPEG", quality=85))
    return path.name


def image_record(i: int, m: Manifest, stats: dict, tag_only: set[str]) -> dict:
    """What the page shows and sorts one image by: per class pseudo-labelled on its unknown pixels, the pixels, mean
    score and share of the unknown pixels; the novel classes the model predicted there though untagged; its doubt
    (the lowest mean score of its classes, 1 with none)."""
    item = m.splits["train"][i]
    unknown = max(1, stats["unknown"])
    classes = {name: {"pixels": c["pixels"], "score": round(c["score_sum"] / c["pixels"], 3),
                      "coverage": round(c["pixels"] / unknown, 3)} for name, c in stats["pseudo"].items()}
    tags = [m.classes[t] for t in item.tags]
    untagged = [name for name in stats["predicted"] if name not in tags]
    return {"id": i, "label": item.label, "name": Path(item.image).name, "tags": tags,
            "tag_only": item.label in tag_only,
            "classes": classes, "untagged": untagged,
            "low_score": [n for n, c in classes.items() if c["score"] < LOW_SCORE],
            "low_coverage": [n for n, c in classes.items() if c["coverage"] < LOW_COVERAGE],
            "doubt": min([c["score"] for c in classes.values()], default=1.0)}


def run_review(dataset: Path, out: Path | None, exist_ok: bool, console: Console) -> Path:
    """Write the review site for a pseudo-labelled dataset into ``out`` (default DATASET/review); returns its
    index.html."""
    m = load_manifest(dataset)
    if not m.novel_masks or m.source.get("command") != "pseudolabel":
        raise UserError("review needs a pseudo-labelled dataset (made by 'weakshot pseudolabel')", dataset)
    out = out or dataset / "review"
    if not folders.claim(out, "review") and not exist_ok:
        raise UserError("already holds a review; pass --exist-ok to redo it or choose another -o", out)
    palette, skip = default_palette(len(m.classes)), untinted(m.classes)
    records = []
    items = m.splits["train"]
    tag_only = set(m.source.get("tag_only_labels") or [])
    with image_bar(console) as bar:
        task = bar.add_task("review", total=len(items))
        for i, item in enumerate(items):
            stats_path = m.root / "stats" / "train" / f"{Path(item.label).stem}.json"
            record = image_record(i, m, read_json(stats_path, "pseudo-label statistics"), tag_only)
            rgb = load_rgb(m.resolve(item.image)).permute(1, 2, 0).numpy()
            label = read_raw_label(m.resolve(item.label))
            shown = overlay(rgb, label, palette, skip=skip)
            record["thumb"] = "thumbs/" + _jpeg(out / "thumbs" / f"{i:06d}.jpg", shown, THUMB)
            record["overlay"] = "large/" + _jpeg(out / "large" / f"{i:06d}.jpg", shown, LARGE)
            record["image"] = "large/" + _jpeg(out / "large" / f"{i:06d}-image.jpg", rgb, LARGE)
            if item.full:  # benchmark mode: the hidden full mask, for comparison
                truth = overlay(rgb, read_raw_label(m.resolve(item.full)), palette, skip=skip)
                record["truth"] = "large/" + _jpeg(out / "large" / f"{i:06d}-truth.jpg", truth, LARGE)
            records.append(record)
            bar.advance(task)
    colours = {name: "#%02x%02x%02x" % tuple(palette[3 * c:3 * c + 3]) for c, name in enumerate(m.classes)}
    data = {"dataset": str(m.root.resolve()), "classes": m.classes, "novel": [m.classes[c] for c in m.novel],
            "colours": colours, "ignore": IGNORE, "low_score": LOW_SCORE, "low_coverage": LOW_COVERAGE,
            "kind": REJECTIONS, "images": sorted(records, key=lambda r: (r["doubt"], r["id"]))}
    write_text(out / "data.js", "const REVIEW = " + json.dumps(data) + ";\n")
    write_text(out / "index.html", resources.files("weakshot_cli").joinpath("review.html").read_text())
    return out / "index.html"
