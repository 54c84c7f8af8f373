"""Which documents are held out: a seeded pseudorandom permutation of the document indices, evaluated one
document at a time (format version 3).

Document g is a validation document when perm(g) < n_val, where perm is a bijection of [0, n): a 6-round
Feistel network over the smallest even power of two >= n, with cycle walking (applied again while the
value is >= n; at most 4x the domain, so a few rounds on average). So exactly n_val = round(fraction * n)
documents are held out (at least one in each split when n >= 2 and fraction > 0), chosen by the seed, and
the merge needs no per-document state: it computes the flags of one unit's documents at a time.

Format version 2 (prepared dirs still load, their splits are stored in their index files) shuffled all n
document ids in memory: 5 bytes per document.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def validation_count(n: int, fraction: float) -> int:
    if n >= 2 and fraction > 0:
        return min(n - 1, max(1, int(round(n * fraction))))
    return 0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class DocumentSplit:
    def __init__(self, n: int, fraction: float, seed: int):
        self.n, self.n_val = n, validation_count(n, fraction)
        bits = max(2, (max(n, 2) - 1).bit_length())
        self._half = (bits + 1) // 2
        self._mask = np.uint64((1 << self._half) - 1)
        self._keys = np.random.default_rng([seed % (1 << 64), 0x5EED, 3]).integers(
            0, 1 << 63, size=_ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << half) | right

    def permute(self, g: np.ndarray) -> np.ndarray:
        """perm(g) for document indices g in [0, n)."""
        with np.errstate(over="ignore"):
            out = self._feistel(np.asarray(g, np.uint64))
            outside = np.flatnonzero(out >= self.n)
            while outside.size:  # cycle walking: stays a bijection of [0, n)
                out[outside] = self._feistel(out[outside])
                outside = outside[out[outside] >= self.n]
        return out

    def is_validation(self, start: int, count: int) -> np.ndarray:
        """bool[count]: the flags of documents start .. start + count - 1."""
        if not self.n_val:
            return np.zeros(count, bool)
        return self.permute(np.arange(start, start + count, dtype=np.uint64)) < np.uint64(self.n_val)
