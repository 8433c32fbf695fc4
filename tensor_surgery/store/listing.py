"""The tensor listing (`GET /api/tensors`, `tensor-surgery ls`): every tensor with its layout
metadata, in canvas order, kept compressed.

A million-tensor model lists as 225 MB of JSON. Kept as text, that stays in the server's memory
for as long as the model is open, and every request that does not take gzip copies it. Kept here
instead as deflate blocks of `BLOCK` entries each (~10x smaller), from which:
- the whole list gzipped (what the page fetches) is the blocks joined between a gzip header and
  trailer: no compression per request. Each block is compressed on its own and ends on a byte
  boundary (a sync flush), so the concatenation is one valid deflate stream;
- the whole list as plain JSON is inflated block by block while it is sent;
- a page (`offset`, `limit`) inflates only the blocks it overlaps.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np
import orjson

from .layout import infer_layout
from .model import Model

BLOCK = 1024  # entries per deflate block: ~300 KB of JSON, a page costs one or two to inflate
LEVEL = 6
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
_FINAL_EMPTY_BLOCK = zlib.compressobj(LEVEL, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def tensor_entries(model: Model) -> list[dict]:
    """Every tensor with its layout metadata, in canvas order (layer-major, type-minor)."""
    return list(_iter_entries(model))


def _iter_entries(model: Model) -> Iterator[dict]:
    refs = list(model.tensors.values())
    layout = infer_layout([r.name for r in refs], [r.shape for r in refs])
    metas = [layout[r.name] for r in refs]
    del layout
    order = sorted(range(len(refs)), key=lambda i: (metas[i].canvas_y, metas[i].canvas_x))
    gguf = model.format == "gguf"  # GGUF tensors also carry their GGML type and file offset
    for i in order:
        r = refs[i]
        entry = {
            "name": r.name,
            "shape": list(r.shape),
            "dtype": r.dtype.name,
            "numel": r.numel,
            "nbytes": r.nbytes,
            "metadata_for_canvas": metas[i].to_dict(),
        }
        if gguf:
            entry["ggml_type"] = r.dtype.name
            entry["offset"] = r.file.data_start + r.begin
            entry["quantized"] = getattr(r.dtype, "quantized", False)
        yield entry


def _dumps(entry: dict) -> bytes:
    try:
        return orjson.dumps(entry)
    except TypeError:  # an integer beyond 64 bits (a hostile F4 shape): the slow encoder takes it
        import json

        return json.dumps(entry, separators=(",", ":")).encode()


class TensorListing:
    """One model's listing, built once (see the module's notes)."""

    def __init__(self, model: Model) -> None:
        self.blocks: list[bytes] = []  # raw deflate, each ending with a sync flush
        self.starts: list[np.ndarray] = []  # per block: where each entry's JSON starts, and the end
        self.count = 0
        crc, size = 0, 0
        batch: list[bytes] = []

        def close_block(last: bool) -> None:
            nonlocal crc, size
            # the list's own brackets and commas live in the blocks, so that they join into the text
            text = (b"[" if not self.blocks else b",") + b",".join(batch) + (b"]" if last else b"")
            lengths = np.fromiter((len(e) + 1 for e in batch), dtype=np.int64, count=len(batch))
            starts = np.empty(len(batch) + 1, dtype=np.int64)
            starts[0] = 1
            np.cumsum(lengths, out=starts[1:])
            starts[1:] += 1  # each entry is followed by one "," (or the closing "]")
            self.starts.append(starts)
            c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
            self.blocks.append(c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))
            crc = zlib.crc32(text, crc)
            size += len(text)
            batch.clear()

        for entry in _iter_entries(model):
            batch.append(_dumps(entry))
            self.count += 1
            if len(batch) == BLOCK:
                close_block(last=False)
        if batch or not self.blocks:
            close_block(last=True)
        else:  # the count is a multiple of BLOCK: the closing bracket gets a block of its own
            self.starts.append(np.array([1], dtype=np.int64))
            c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
            self.blocks.append(c.compress(b"]") + c.flush(zlib.Z_SYNC_FLUSH))
            crc = zlib.crc32(b"]", crc)
            size += 1
        self._trailer = _FINAL_EMPTY_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)
        self.json_size = size

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blocks) + sum(s.nbytes for s in self.starts) + 1024

    def gzipped(self) -> bytes:
        """The whole list as one gzip member."""
        return b"".join([_GZIP_HEADER, *self.blocks, self._trailer])

    def _text(self, b: int) -> bytes:
        return zlib.decompressobj(-15).decompress(self.blocks[b])

    def iter_json(self) -> Iterator[bytes]:
        """The whole list as JSON, one inflated block at a time."""
        for b in range(len(self.blocks)):
            yield self._text(b)

    def json(self) -> bytes:
        return b"".join(self.iter_json())

    def page(self, offset: int, limit: int | None) -> bytes:
        """Entries [offset, offset+limit) as a JSON list."""
        end = self.count if limit is None else min(self.count, offset + limit)
        if offset >= end:
            return b"[]"
        parts = []
        for b in range(offset // BLOCK, (end - 1) // BLOCK + 1):
            text, starts = self._text(b), self.starts[b]
            first = max(offset - b * BLOCK, 0)
            last = min(end - b * BLOCK, len(starts) - 1)
            # entry i is text[starts[i] : starts[i+1] - 1] (its separator dropped)
            parts.append(text[starts[first] : starts[last] - 1])
        return b"[" + b",".join(parts) + b"]"
