"""Which novel classes the training tags can tell apart: a loss can only learn a novel class's name from images
whose tags differ between it and the classes it appears with, so two classes that are nearly always tagged together
get swapped or blurred names, whatever the model (CamVid: 9 of 367 frames say a car is not a sign)."""

from __future__ import annotations

from collections.abc import Sequence

# A pair is flagged when the images that separate it (one of the two tagged, not the other) number fewer than this
# share of the rarer class's tagged images: set between the pairs whose names every recipe confuses (CamVid's) and
# those it learns (MSRC's open split); the measured shares are in docs/usage.md.
SEPARATING_SHARE = 0.25


def tag_pairs(tags: Sequence[set[int]], tag_only: Sequence[bool], classes: Sequence[str],
              novel: Sequence[int]) -> list[dict]:
    """Per novel class and each other class that shares its unknown pixels in some image (another novel class,
    or a base class in a tag-only image, where every pixel is unknown; in a masked image base pixels are labelled):
    the images where each may lie in the unknown pixels, where both do, and where exactly one does (separating);
    weakest first (separating, as a share of the rarer class's images)."""
    novel = sorted(novel)
    pairs = []
    for c in novel:
        for d in range(len(classes)):
            if d == c or (d in novel and d < c):
                continue
            with_c = [c in t for t in tags]
            with_d = [d in t and (d in novel or only) for t, only in zip(tags, tag_only)]
            together = sum(a and b for a, b in zip(with_c, with_d))
            if not together:
                continue
            separating = sum(with_c) + sum(with_d) - 2 * together
            pairs.append({"novel": classes[c], "other": classes[d], "tagged": [sum(with_c), sum(with_d)],
                          "together": together, "separating": separating,
                          "share": round(separating / min(sum(with_c), sum(with_d)), 3)})
    return sorted(pairs, key=lambda p: (p["share"], p["separating"]))


def flagged(pairs: Sequence[dict]) -> list[dict]:
    """The pairs the tags cannot tell apart (SEPARATING_SHARE)."""
    return [p for p in pairs if p["share"] < SEPARATING_SHARE]


def separating_images(tags: Sequence[set[int]], tag_only: Sequence[bool], classes: Sequence[str],
                      novel: Sequence[int]) -> list[bool]:
    """Per image, whether its tags separate a flagged pair: the few images a loss can learn those names from."""
    index = {name: i for i, name in enumerate(classes)}
    weak = [(index[p["novel"]], index[p["other"]]) for p in flagged(tag_pairs(tags, tag_only, classes, novel))]
    novel_set = set(novel)
    return [any((c in t) != (d in t and (d in novel_set or only)) for c, d in weak) for t, only in zip(tags, tag_only)]
