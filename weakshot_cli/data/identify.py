"""Which novel classes the training tags can tell apart: a loss can only learn a novel class's name from images
whose tags differ between it and the classes it appears with, so two classes that are nearly always tagged together
get swapped or blurred names, whatever the model (CamVid: 9 of 367 frames say a car is not a sign)."""

from __future__ import annotations

from collections.abc import Sequence

# A pair is flagged when the images that separate it (one of the two tagged, not the other) number fewer than this
# share of the rarer class's tagged images. Measured on the benchmark splits: CamVid's three novel pairs 0.03, 0.14
# and 0.17 (names a lottery: 27% of the oracle's novel mIoU), MSRC face and body 0.15; every other MSRC pair of the
# four splits 0.99 or more (names learned: 96% of the oracle on the open split, whose lowest pair is 2.4).
SEPARATING_SHARE = 0.25


def tag_pairs(tags: Sequence[set[int]], tag_only: Sequence[bool], classes: Sequence[str],
              novel: Sequence[int]) -> list[dict]:
    """Per novel class and each other class that can share its unknown pixels (another novel class in any image; a
    base class in a tag-only image, where every pixel is unknown) and is tagged with it at least once: the images
    tagged with each, together, and separating the two; weakest first (separating share of the rarer class)."""
    pairs = []
    novel = sorted(novel)
    for c in novel:
        for d in range(len(classes)):
            if d == c or (d in novel and d < c):
                continue
            where = [i for i, t in enumerate(tags) if d in novel or tag_only[i]]
            with_c = sum(c in tags[i] for i in where)
            with_d = sum(d in tags[i] for i in where)
            together = sum(c in tags[i] and d in tags[i] for i in where)
            if not together:
                continue
            separating = with_c + with_d - 2 * together
            pairs.append({"novel": classes[c], "other": classes[d], "tagged": [with_c, with_d],
                          "together": together, "separating": separating,
                          "share": round(separating / min(with_c, with_d), 3)})
    return sorted(pairs, key=lambda p: (p["share"], p["separating"]))


def flagged(pairs: Sequence[dict]) -> list[dict]:
    """The pairs the tags cannot tell apart (SEPARATING_SHARE)."""
    return [p for p in pairs if p["share"] < SEPARATING_SHARE]
