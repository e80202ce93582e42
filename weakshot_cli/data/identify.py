"""Which novel classes the training tags can tell apart: a loss can only learn a novel class's name from images
whose tags differ between it and the classes it appears with, so two classes that are nearly always tagged together
get swapped or blurred names, whatever the model (CamVid: 9 of 367 frames say a car is not a sign)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# A pair is flagged when the images that separate it (one of the two tagged, not the other) number fewer than this
# share of the rarer class's tagged images: set between the pairs whose names every recipe confuses (CamVid's) and
# those it learns (MSRC's open split); the measured shares are in docs/usage.md.
SEPARATING_SHARE = 0.25


def tag_matrix(tags: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """[images, classes] bool from each image's tag ids."""
    tagged = np.zeros((len(tags), k), dtype=bool)
    for i, t in enumerate(tags):
        tagged[i, list(t)] = True
    return tagged


def _unknown(tagged: np.ndarray, tag_only: np.ndarray, novel: Sequence[int]) -> np.ndarray:
    """[images, classes]: whether the class may lie in the image's unknown pixels (a novel tag anywhere; a base
    tag only in a tag-only image, where every pixel is unknown). Arrays, not loops: COCO has 118k images."""
    is_novel = np.zeros(tagged.shape[1], dtype=bool)
    is_novel[list(novel)] = True
    return tagged & (is_novel[None] | np.asarray(tag_only, dtype=bool).reshape(-1, 1))


ROWS_AT_ONCE = 1024  # tag_pairs' rows at a time (float32 sums of 0/1 rows are exact up to 2**24 rows)


def tag_pairs(tagged: np.ndarray | Callable[[slice], np.ndarray], tag_only: np.ndarray, classes: Sequence[str],
              novel: Sequence[int]) -> list[dict]:
    """Per novel class and each other class that shares its unknown pixels in some image (another novel class,
    or a base class in a tag-only image, where every pixel is unknown; in a masked image base pixels are labelled):
    the images where each may lie in the unknown pixels, where both do, and where exactly one does (separating);
    weakest first (separating, as a share of the rarer class's images). ``tagged`` is [images, classes] bool
    (tag_matrix), or a function giving a slice of its rows (split's are packed bits); ``tag_only`` [images] bool."""
    rows_of = tagged.__getitem__ if isinstance(tagged, np.ndarray) else tagged
    novel = sorted(novel)
    counts = np.zeros(len(classes), dtype=np.int64)  # images where each class may lie
    together = np.zeros((len(novel), len(classes)), dtype=np.int64)  # images where both may
    for s in range(0, len(tag_only), ROWS_AT_ONCE):  # a few rows at a time: no copy of the matrix at COCO's size
        at = slice(s, s + ROWS_AT_ONCE)
        rows = _unknown(rows_of(at), tag_only[at], novel).astype(np.float32)
        counts += rows.sum(0).astype(np.int64)
        together += (rows[:, novel].T @ rows).astype(np.int64)
    pairs = []
    for row, c in enumerate(novel):
        for d in np.flatnonzero(together[row]):
            if d == c or (d in novel and d < c):
                continue
            separating = int(counts[c] + counts[d] - 2 * together[row, d])
            pairs.append({"novel": classes[c], "other": classes[d], "tagged": [int(counts[c]), int(counts[d])],
                          "together": int(together[row, d]), "separating": separating,
                          "share": round(separating / min(counts[c], counts[d]), 3)})
    return sorted(pairs, key=lambda p: (p["share"], p["separating"]))


def flagged(pairs: Sequence[dict]) -> list[dict]:
    """The pairs the tags cannot tell apart (SEPARATING_SHARE)."""
    return [p for p in pairs if p["share"] < SEPARATING_SHARE]


def separating_images(tagged: np.ndarray, tag_only: np.ndarray, classes: Sequence[str],
                      novel: Sequence[int]) -> list[bool]:
    """Per image, whether its tags separate a flagged pair: the few images a loss can learn those names from."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = _unknown(tagged, tag_only, novel)
    found = np.zeros(len(tagged), dtype=bool)
    for p in flagged(tag_pairs(tagged, tag_only, classes, novel)):
        found |= unknown[:, index[p["novel"]]] != unknown[:, index[p["other"]]]
    return found.tolist()
