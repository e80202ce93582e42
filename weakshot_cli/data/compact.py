"""Per-image records for datasets of COCO's size, held without an object per image: ``split`` keeps them for its
whole run, and a Python object per image (a path, a set of class ids) costs 100-500 bytes where these cost 10-30."""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np

ROWS_AT_ONCE = 8192  # rows unpacked at a time by counts()


class Strings:
    """A list of strings packed into one buffer (UTF-8, surrogates kept, so any file name comes back as it went in)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("q")

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, s: str) -> None:
        self._data += s.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._data))

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += len(self)
        start = self._ends[i - 1] if i > 0 else 0
        return self._data[start:self._ends[i]].decode("utf-8", "surrogatepass")

    def lengths(self) -> np.ndarray:
        """[len] bytes of each string."""
        return np.diff(np.frombuffer(self._ends, dtype=np.int64), prepend=0)


class ClassSets:
    """One set of class ids per image as packed bits: a row of ceil(k / 8) bytes."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.bits = np.zeros((n, (k + 7) // 8), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.bits)

    def set(self, i: int, ids: Iterable[int]) -> None:
        row = np.zeros(self.bits.shape[1] * 8, dtype=bool)
        row[list(ids)] = True
        self.bits[i] = np.packbits(row)

    def get(self, i: int) -> list[int]:
        return np.flatnonzero(np.unpackbits(self.bits[i], count=self.k)).tolist()

    def column(self, c: int) -> np.ndarray:
        """[images] bool: which sets hold ``c``."""
        return (self.bits[:, c >> 3] >> (7 - (c & 7))) & 1 == 1

    def matrix(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[len(rows), k] bool."""
        return np.unpackbits(self.bits[rows], axis=1, count=self.k).astype(bool)

    def counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """[k]: in how many of the sets (of ``rows``, default all) each class is."""
        rows = np.arange(len(self)) if rows is None else rows
        return sum((self.matrix(rows[s:s + ROWS_AT_ONCE]).sum(0) for s in range(0, len(rows), ROWS_AT_ONCE)),
                   np.zeros(self.k, dtype=np.int64))
