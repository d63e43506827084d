"""A domain's training tokens as one 1-D array, whatever the number of shard files.

`open_stream(parts)` returns the plain `np.memmap` when a domain has one shard (so the sampler's
hot path is exactly what it was) and a `ConcatTokens` view over the shards' memmaps otherwise.
Either way `len(x)` and `x[a:b]` (a 1-D int array) behave as on the concatenation of the shard
files; nothing is copied until a slice is taken.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np


class ConcatTokens:
    """Read-only 1-D view of several token arrays laid end to end.

    parts: 1-D arrays (memmaps) of one dtype, each non-empty. x[a:b] with step 1 returns the
    part's own memmap slice when [a, b) lies inside one part (no copy), else a new array of
    the concatenated pieces; x[i] returns one token.
    """

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("ConcatTokens needs at least one part")
        dtypes = {p.dtype for p in parts}
        if len(dtypes) != 1 or any(p.ndim != 1 or len(p) == 0 for p in parts):
            raise ValueError("parts must be non-empty 1-D arrays of one dtype")
        # plain ndarray views: a memmap slice costs a memmap object per call (hot path)
        self.parts = [p.view(np.ndarray) if isinstance(p, np.memmap) else p for p in parts]
        self.dtype = parts[0].dtype
        # starts[k] = offset of part k; starts[-1] = total length
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + len(p))
        self._n = self.starts[-1]

    ndim = 1

    @property
    def shape(self) -> tuple[int]:
        return (self._n,)

    @property
    def size(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key):
        if type(key) is slice and key.step is None and key.start is not None:
            a, b = key.start, key.stop  # the sampler's x[s:s+L]: skip slice.indices()
            if b is not None and 0 <= a < b <= self._n:
                k = bisect.bisect_right(self.starts, a) - 1
                s0 = self.starts[k]
                if b <= self.starts[k + 1]:
                    return self.parts[k][a - s0:b - s0]
        if isinstance(key, slice):
            a, b, step = key.indices(self._n)
            if step != 1:
                return np.asarray(self)[key]
            if b <= a:
                return np.empty(0, self.dtype)
            k = bisect.bisect_right(self.starts, a) - 1
            off = a - self.starts[k]
            if b <= self.starts[k + 1]:  # the common case: inside one shard
                return self.parts[k][off:off + (b - a)]
            pieces = []
            while a < b:
                end = min(b, self.starts[k + 1])
                pieces.append(self.parts[k][a - self.starts[k]:end - self.starts[k]])
                a, k = end, k + 1
            return np.concatenate(pieces)
        i = int(key)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"index {key} out of range for {self._n} tokens")
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.parts)
        return out if dtype is None else out.astype(dtype)

    def tobytes(self) -> bytes:
        return b"".join(p.tobytes() for p in self.parts)

    def __eq__(self, other):  # elementwise, as for an ndarray
        return np.asarray(self) == other

    __hash__ = None

    def __repr__(self) -> str:
        return f"ConcatTokens({len(self.parts)} parts, {self._n} tokens, {self.dtype})"


def open_stream(parts: list[tuple[Path, int]], dtype) -> np.ndarray | ConcatTokens:
    """parts: (token file, number of tokens to use from its start) in stream order. Empty parts
    are skipped (a shard may hold no training document); an all-empty domain gives an empty
    array."""
    maps = [np.memmap(p, dtype=dtype, mode="r", shape=(n,)) for p, n in parts if n > 0]
    if not maps:
        return np.empty(0, dtype)
    return maps[0] if len(maps) == 1 else ConcatTokens(maps)
