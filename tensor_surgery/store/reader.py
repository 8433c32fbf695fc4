"""Read a tensor's elements, from the base bytes or through an overlay of staged byte runs.

Elements are read as raw bit patterns (the unsigned integer of the element's width; for F4 the
4-bit code in a byte) and decoded to values on demand, so the same code serves the value, hex and
statistics views. An overlay is a list of `(offset, bytes)` runs relative to the tensor's first
byte (what staged edits and patches produce). Runs may start and end anywhere, even inside an
element; the reader widens them to whole storage units, so a read sees exactly the bytes an
export would write.

Long reads go through `pread` rather than the memory map (see `store.model`): a file truncated
underneath them raises `ModelChanged` instead of killing the process with SIGBUS.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InvalidRequest
from .dtypes import decode_f4_at
from .model import LONG_READ_BYTES, TensorRef

Run = tuple[int, bytes]
CHUNK_BYTES = 4 << 20  # whole-tensor passes (hashes, diffs) read this much at a time: cache-sized, reused


class TensorReader:
    __slots__ = ("ref", "cache_token", "dtype", "shape", "numel", "unit_bytes", "unit_elems", "_segments", "_seg_starts")

    def __new__(cls, ref: TensorRef, runs: Sequence[Run] = (), cache_token=None):
        if cls is TensorReader and getattr(ref.dtype, "quantized", False):
            from .gguf import QuantReader  # a GGUF block type: values are dequantized per block

            cls = QuantReader
        return object.__new__(cls)

    def __init__(self, ref: TensorRef, runs: Sequence[Run] = (), cache_token=None) -> None:
        self.ref = ref
        # names the overlay for caches: whoever supplies runs supplies a token that changes with them
        self.cache_token = cache_token if runs else None
        self.dtype = ref.dtype
        self.shape = ref.shape
        self.numel = ref.numel
        self.unit_bytes, self.unit_elems = self.dtype.unit
        if runs:
            self._segments = self._merge(runs)
            self._seg_starts = [s for s, _ in self._segments]
        else:  # the common case, kept cheap: a small slice read is a few microseconds in all
            self._segments = self._seg_starts = ()

    @property
    def staged(self) -> bool:
        return bool(self._segments)

    # -- bytes ---------------------------------------------------------------------------------

    def _merge(self, runs: Sequence[Run]) -> list[tuple[int, np.ndarray]]:
        """Widen runs to whole storage units, merge overlapping ones, apply their bytes in order.

        Later runs win where runs overlap (the journal passes them oldest first).
        """
        nbytes = self.ref.nbytes
        u = self.unit_bytes
        spans: list[list] = []  # [start, end, indices of the runs inside]
        for i in sorted(range(len(runs)), key=lambda k: runs[k][0]):
            off, data = runs[i]
            if off < 0 or off + len(data) > nbytes:
                raise InvalidRequest(
                    f"staged bytes [{off}, {off + len(data)}) fall outside tensor "
                    f"{self.ref.name!r} ({nbytes} bytes)",
                    tensor=self.ref.name,
                )
            a = off - off % u
            b = -(-(off + len(data)) // u) * u
            if spans and a <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], b)
                spans[-1][2].append(i)
            else:
                spans.append([a, b, [i]])
        segments = []
        for a, b, inside in spans:  # each run lies inside exactly one span
            buf = self._base_range(a, b)
            for i in sorted(inside):  # original order: later runs overwrite earlier ones
                off, data = runs[i]
                buf[off - a : off - a + len(data)] = np.frombuffer(data, np.uint8)
            segments.append((a, buf))
        return segments

    def read_bytes(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the tensor, overlay applied."""
        if offset < 0 or length < 0 or offset + length > self.ref.nbytes:
            raise InvalidRequest(
                f"byte range [{offset}, {offset + length}) is outside tensor {self.ref.name!r} "
                f"({self.ref.nbytes} bytes)",
                tensor=self.ref.name, field="offset",
            )
        out = self._base_range(offset, offset + length)
        for a, buf in self._segments_between(offset, offset + length):
            lo, hi = max(a, offset), min(a + len(buf), offset + length)
            out[lo - offset : hi - offset] = buf[lo - a : hi - a]
        return out.tobytes()

    def base_bytes(self, offset: int, length: int) -> bytes:
        return self._base_range(offset, offset + length).tobytes()

    def iter_bytes(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The whole tensor's bytes (overlay applied), in order, as uint8 chunks of at most
        `chunk_bytes`, each read with pread (a file that shrinks meanwhile raises `ModelChanged`).

        One buffer is reused: a chunk is valid until the next is asked for (copy what you keep).
        Hashing or comparing a tensor so holds one chunk in memory, never the whole tensor.
        """
        nbytes = self.ref.nbytes
        buf = np.empty(min(chunk_bytes, nbytes), dtype=np.uint8)
        for lo in range(0, nbytes, chunk_bytes):
            hi = min(lo + chunk_bytes, nbytes)
            out = self.ref.file.copy_range(self.ref, lo, hi, buf[: hi - lo])
            for a, seg in self._segments_between(lo, hi):
                s, e = max(a, lo), min(a + len(seg), hi)
                out[s - lo : e - lo] = seg[s - a : e - a]
            yield out

    def sha256(self) -> str:
        """Hex sha256 of the whole tensor's bytes (overlay applied), read chunk by chunk."""
        h = hashlib.sha256()
        for chunk in self.iter_bytes():
            h.update(chunk)
        return h.hexdigest()

    def _base_range(self, lo: int, hi: int) -> np.ndarray:
        """A copy of the base bytes [lo, hi): long ones with pread, short ones from the map."""
        if hi - lo >= LONG_READ_BYTES:
            return self.ref.file.copy_range(self.ref, lo, hi)
        return np.array(self.ref.raw()[lo:hi], dtype=np.uint8)

    def _segments_between(self, lo: int, hi: int) -> Iterator[tuple[int, np.ndarray]]:
        i = max(bisect.bisect_right(self._seg_starts, lo) - 1, 0)
        for a, buf in self._segments[i:]:
            if a >= hi:
                break
            if a + len(buf) > lo:
                yield a, buf

    # -- elements ------------------------------------------------------------------------------

    def _check_byte_aligned(self) -> None:
        if self.dtype.packed and self.dtype.name != "F4":
            raise self.dtype.undecodable()

    def patterns_view(self) -> np.ndarray:
        """Zero-copy view of the base bit patterns in the tensor's shape (byte-aligned dtypes)."""
        if self.ref.nbytes == 0:
            return np.zeros(self.shape, dtype=self.dtype.storage)
        return self.ref.file.pattern_view(self.ref.info)

    def chunk_patterns(self, start: int, stop: int) -> np.ndarray:
        """Bit patterns of flat elements [start, stop), overlay applied (always a copy: the
        caller computes on it at leisure, and a view of the map would fault if the file shrank)."""
        self._check_byte_aligned()
        if self.dtype.name == "F4":
            return self._f4_patterns(np.arange(start, stop, dtype=np.int64))
        isz = self.unit_bytes
        lo, hi = start * isz, stop * isz
        raw = self._base_range(lo, hi)
        if self._segments:
            for a, buf in self._segments_between(lo, hi):
                s, e = max(a, lo), min(a + len(buf), hi)
                raw[s - lo : e - lo] = buf[s - a : e - a]
        return raw.view(self.dtype.storage)

    def _copy_of(self, view: np.ndarray, index: tuple) -> np.ndarray:
        """`np.array(view[index])` of the base view, through pread when the selection is one long
        contiguous range (a whole tensor for its rank, a band of rows)."""
        sub = view[index]
        if sub.nbytes < LONG_READ_BYTES or not sub.flags.c_contiguous:
            return np.array(sub)  # slices for the viewer: bounded by MAX_SLICE_CELLS
        lo = sub.__array_interface__["data"][0] - view.__array_interface__["data"][0]
        return self._base_range(lo, lo + sub.nbytes).view(self.dtype.storage).reshape(sub.shape)

    def iter_chunks(self, chunk_elems: int) -> Iterator[np.ndarray]:
        for start in range(0, self.numel, chunk_elems):
            yield self.chunk_patterns(start, min(start + chunk_elems, self.numel))

    def read_patterns(self, index: tuple) -> np.ndarray:
        """Bit patterns of `base[index]` (basic indexing: ints and slices), overlay applied."""
        self._check_byte_aligned()
        if self.dtype.name == "F4" or self._segments:
            flat = self._flat_indices(index)
            if self.dtype.name == "F4":
                return self._f4_patterns(flat)
            out = self._copy_of(self.patterns_view(), index)
            self._overlay_elements(out, flat)
            return out
        return self._copy_of(self.patterns_view(), index)

    def _flat_indices(self, index: tuple) -> np.ndarray:
        if not self.shape:
            return np.zeros((), dtype=np.int64)
        grids = [np.arange(n, dtype=np.int64)[ix] for n, ix in zip(self.shape, index)]
        strides = np.cumprod((self.shape[1:] + (1,))[::-1])[::-1].astype(np.int64)
        flat = np.zeros((), dtype=np.int64)
        kept = []
        for g, st in zip(grids, strides):
            if g.ndim == 0:
                flat = flat + g * st
            else:
                kept.append(g * st)
        for i, g in enumerate(kept):
            shape = [1] * len(kept)
            shape[i] = len(g)
            flat = flat + g.reshape(shape)
        return np.broadcast_to(flat, tuple(len(g) for g in kept)).copy()

    def _overlay_elements(self, out: np.ndarray, flat: np.ndarray) -> None:
        isz = self.unit_bytes
        for a, buf in self._segments:
            e0, e1 = a // isz, (a + len(buf)) // isz
            sel = (flat >= e0) & (flat < e1)
            if sel.any():
                out[sel] = buf.view(self.dtype.storage)[flat[sel] - e0]

    def _f4_patterns(self, flat: np.ndarray) -> np.ndarray:
        if flat.size and 2 * flat.size >= LONG_READ_BYTES and flat.size == flat.max() - flat.min() + 1:
            # a dense run of elements (a statistics chunk): the bytes it spans, through pread
            first = int(flat.min()) >> 1
            raw = self._base_range(first, (int(flat.max()) >> 1) + 1)
            codes = decode_f4_at(raw, flat - 2 * first).view(np.uint8)
        else:
            codes = decode_f4_at(self.ref.raw(), flat).view(np.uint8)
        if self._segments:
            byte_idx = flat >> 1
            for a, buf in self._segments:
                sel = (byte_idx >= a) & (byte_idx < a + len(buf))
                if sel.any():
                    codes[sel] = decode_f4_at(buf, flat[sel] - 2 * a).view(np.uint8)
        return codes

    # -- values --------------------------------------------------------------------------------

    def decode(self, patterns: np.ndarray) -> np.ndarray:
        """Values of bit patterns, in the dtype's own numpy type."""
        if self.dtype.name == "F4":
            return patterns.view(self.dtype.numpy)
        return patterns.view(self.dtype.element)

    def read_values(self, index: tuple) -> np.ndarray:
        dt = self.dtype
        if not self._segments and not dt.packed and self.ref.info.end > self.ref.info.begin:
            # the viewer's hot path: one copy out of the cached view, then a dtype view
            return self._copy_of(self.ref.file.pattern_view(self.ref.info), index).view(dt.element)
        return self.decode(self.read_patterns(index))

    def values_view(self) -> np.ndarray:
        """Zero-copy values of the base tensor (byte-aligned, decodable dtypes, no overlay)."""
        if not self.dtype.decodable or self.dtype.packed:
            raise self.dtype.undecodable()
        return self.patterns_view().view(self.dtype.element)
