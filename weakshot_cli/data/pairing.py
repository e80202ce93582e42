"""Reference-image pairing on the fly, from image-level tags, for any batch size.

Each global batch is a list of pairs ``[a0, r0, a1, r1, ...]``: the reference of an image with novel
tags shares one of its novel classes (and, where possible, a base class); otherwise it shares a
base class. The cross-image SimNet and distillation losses pair positions 2k and 2k+1 of the global batch,
and only within one process: a pair that a process boundary (an odd per-process batch) or the end of an odd
batch cuts leaves its images unpaired, so no image is paired with a stranger. The global batch does not depend
on the number of processes. Every batch is a pure function of (seed, iteration), which makes resuming exact.

Pairing ``"tags"`` serves the losses that learn to name novel classes: they only learn from pairs whose novel tags
differ, which ``"paper"`` pairing almost never gives. It prefers a reference that shares a novel class with the
anchor and differs from it in another, and oversamples anchors that have some novel tags but lack others.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PairBatchSampler:
    """Yields, for this rank, lists of ``(dataset index, augmentation seed, partner offset)``; the offset (+1, -1,
    or 0 for an unpaired image) locates the image's reference within the rank's list."""

    def __init__(self, tags: list[list[int]], base: list[int], novel: list[int], global_batch: int,
                 seed: int = 0, rank: int = 0, world: int = 1, start_iter: int = 0, pairing: str = "paper",
                 repeats: list[int] | None = None):
        if global_batch % world:
            raise ValueError(f"batch {global_batch} is not divisible by the {world} processes")
        if pairing not in ("paper", "tags"):
            raise ValueError(f"pairing must be paper or tags, got {pairing!r}")
        self.n, self.batch, self.seed = len(tags), global_batch, seed
        self.rank, self.world, self.start_iter = rank, world, start_iter
        novel_set, base_set = set(novel), set(base)
        self.novel_tags = [sorted(set(t) & novel_set) for t in tags]
        self.base_tags = [set(t) & base_set for t in tags]
        self.with_class: dict[int, np.ndarray] = {
            c: np.array([i for i, t in enumerate(tags) if c in t], dtype=np.int64)
            for c in range(max(base + novel, default=-1) + 1)
        }
        self.pairing = pairing
        ids: dict[tuple[int, ...], int] = {}  # equal novel tag sets <=> equal ids
        self.novel_id = np.array([ids.setdefault(tuple(t), len(ids)) for t in self.novel_tags], dtype=np.int64)
        # "tags": an image with some novel tags but not all is listed twice, so it is an anchor twice per epoch: it
        # says both which novel classes are there and which are not (with several novel classes nearly every image
        # lacks one, so lacking alone would double almost all of them)
        lacking = [pairing == "tags" and 0 < len(t) < len(novel_set) for t in self.novel_tags]
        # ``repeats`` multiplies that per image: example images (masks of novel classes) are few, and seen as
        # rarely as any other image they barely count
        self.epoch_items = np.repeat(np.arange(self.n), [(2 if x else 1) * r
                                                         for x, r in zip(lacking, repeats or [1] * self.n)])
        self.pairs_per_batch = (global_batch + 1) // 2
        self._perm: tuple[int, np.ndarray] = (-1, np.empty(0))

    def _partner(self, a: int, rng: np.random.Generator) -> int:
        if self.novel_tags[a]:
            pool = self.with_class[self.novel_tags[a][rng.integers(len(self.novel_tags[a]))]]
            pool = pool[pool != a]
            if len(pool):
                return self._prefer_base(a, pool, rng)
        if self.base_tags[a]:
            classes = sorted(self.base_tags[a])
            pool = self.with_class[classes[rng.integers(len(classes))]]
            pool = pool[pool != a]
            if len(pool):
                return int(pool[rng.integers(len(pool))])
        others = self.n - 1
        return a if others == 0 else int((a + 1 + rng.integers(others)) % self.n)

    def _prefer_base(self, a: int, pool: np.ndarray, rng: np.random.Generator) -> int:
        """Among up to 10 random images of ``pool``, the first that shares a base class with ``a``, else any."""
        picks = pool[rng.permutation(len(pool))[:10]]
        sharing_base = [int(p) for p in picks if self.base_tags[p] & self.base_tags[a]]
        return sharing_base[0] if sharing_base else int(picks[0])

    def _partner_tags(self, a: int, rng: np.random.Generator) -> int:
        """A reference sharing a novel class with ``a`` and differing in another (trying the anchor's novel classes
        in random order), so the pair tells novel classes apart; else the ``"paper"`` reference."""
        classes = self.novel_tags[a]
        for k in rng.permutation(len(classes)):
            pool = self.with_class[classes[k]]
            pool = pool[(pool != a) & (self.novel_id[pool] != self.novel_id[a])]
            if len(pool):
                return self._prefer_base(a, pool, rng)
        return self._partner(a, rng)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.epoch_items))
            self._perm = (epoch, self.epoch_items[order])
        return self._perm[1]

    def global_batch(self, it: int) -> list[tuple[int, int]]:
        """Anchors walk through per-epoch permutations, so every image is an anchor once per epoch (with
        ``"tags"``, an image with some novel tags but not all twice)."""
        first = it * self.pairs_per_batch
        anchors = []
        for k in range(first, first + self.pairs_per_batch):
            epoch, pos = divmod(k, len(self.epoch_items))
            anchors.append(int(self._permutation(epoch)[pos]))
        rng = np.random.default_rng([self.seed, it, 1])
        partner = self._partner_tags if self.pairing == "tags" else self._partner
        order = [x for a in anchors for x in (a, partner(a, rng))][: self.batch]
        aug_seeds = rng.integers(0, 2**62, size=len(order))
        return [(i, int(s)) for i, s in zip(order, aug_seeds)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch // self.world
        first = self.rank * per_rank
        it = self.start_iter
        while True:
            mine = self.global_batch(it)[first:first + per_rank]
            yield [(i, s, pair_offset(first + k, first, len(mine))) for k, (i, s) in enumerate(mine)]
            it += 1


def pair_offset(position: int, first: int, n: int) -> int:
    """Offset from global ``position`` to its pair partner (position ^ 1) when that lies in ``[first, first + n)``,
    the process's slice, else 0 (unpaired)."""
    partner = position ^ 1
    return partner - position if first <= partner < first + n else 0
