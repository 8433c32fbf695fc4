"""Byte runs: where two byte strings differ, and a sparse map of writes where the last one wins."""

from __future__ import annotations

import bisect

import numpy as np


def changed_runs(orig: bytes | np.ndarray, new: bytes | np.ndarray, gap: int = 16) -> list[tuple[int, int]]:
    """[start, end) ranges where `orig` and `new` differ; runs closer than `gap` bytes are merged
    (an entry costs more than a few unchanged bytes in a patch file)."""
    a = np.frombuffer(orig, np.uint8) if not isinstance(orig, np.ndarray) else orig
    b = np.frombuffer(new, np.uint8) if not isinstance(new, np.ndarray) else new
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(diff) > gap)
    starts = np.r_[diff[0], diff[breaks + 1]]
    ends = np.r_[diff[breaks], diff[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist()))


class ByteMap:
    """Non-overlapping byte segments; a later write replaces what it covers."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._bufs: list[bytearray] = []

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        # segments that overlap or touch [offset, end) merge into one
        i = bisect.bisect_left(self._starts, offset)
        if i > 0 and self._starts[i - 1] + len(self._bufs[i - 1]) >= offset:
            i -= 1
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            j += 1
        if i == j:
            self._starts.insert(i, offset)
            self._bufs.insert(i, bytearray(data))
            return
        lo = min(offset, self._starts[i])
        hi = max(end, self._starts[j - 1] + len(self._bufs[j - 1]))
        merged = bytearray(hi - lo)
        for s, b in zip(self._starts[i:j], self._bufs[i:j]):
            merged[s - lo : s - lo + len(b)] = b
        merged[offset - lo : end - lo] = data
        self._starts[i:j] = [lo]
        self._bufs[i:j] = [merged]

    def overlay(self, offset: int, data: bytes) -> bytes:
        """`data` (the bytes underneath, starting at `offset`) with this map's writes over it."""
        end = offset + len(data)
        out = bytearray(data)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        for s, b in zip(self._starts[i:], self._bufs[i:]):
            if s >= end:
                break
            lo, hi = max(s, offset), min(s + len(b), end)
            if lo < hi:
                out[lo - offset : hi - offset] = b[lo - s : hi - s]
        return bytes(out)

    def runs(self) -> list[tuple[int, bytes]]:
        return [(s, bytes(b)) for s, b in zip(self._starts, self._bufs)]

    def __bool__(self) -> bool:
        return bool(self._starts)
