"""Parse and validate a safetensors header, at least as strictly as the reference Rust loader.

Layout of a file: 8 bytes little-endian header length N, N bytes of UTF-8 JSON (may be padded
with trailing spaces), then the data section. Every tensor's `data_offsets` are relative to the
start of the data section. Rules checked here (reference loader's, then ours):

- N fits the file and is at most 100 MB; the header is UTF-8 JSON and starts with `{`;
- `__metadata__`, if present, maps strings to strings;
- no duplicate keys anywhere (the reference keeps the last silently; we refuse);
- each tensor has exactly `dtype`, `shape`, `data_offsets`; dtype is known; shape entries are
  non-negative integers; the element count times the dtype size does not overflow 64 bits; sub-byte
  dtypes end on a byte boundary; `end - begin` equals the size;
- sorted by offset, tensors are contiguous from 0 with no gaps or overlaps, and the last one ends
  exactly at the end of the file (no trailing bytes).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

from ..errors import InvalidModelFile
from .dtypes import DTYPES, DType

MAX_HEADER_SIZE = 100_000_000  # same cap as the reference loader
_U64_MAX = (1 << 64) - 1
_TENSOR_KEYS = frozenset(("dtype", "shape", "data_offsets"))


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    begin: int  # byte offset from the start of the data section
    end: int
    numel: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class Header:
    path: str
    header_size: int  # N, the JSON length
    file_size: int
    tensors: dict[str, TensorInfo]  # in file (offset) order
    metadata: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the header bytes exactly as stored, for byte-identical rewrites

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_header(path: str | os.PathLike, fileobj=None) -> Header:
    """Read and validate the header of the safetensors file at `path`."""
    path = os.fspath(path)
    own = fileobj is None
    f = open(path, "rb") if own else fileobj
    try:
        file_size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidModelFile(
                f"{path}: file is {file_size} bytes, too short to hold the 8-byte header length "
                "of a safetensors file",
                file=path,
                field="header_length",
            )
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_SIZE:
            raise InvalidModelFile(
                f"{path}: header length field says {n:,} bytes, over the {MAX_HEADER_SIZE:,}-byte "
                "limit: this is not a safetensors file, or it is corrupted",
                file=path,
                field="header_length",
            )
        if 8 + n > file_size:
            raise InvalidModelFile(
                f"{path}: header length field says {n:,} bytes but the file has only "
                f"{file_size - 8:,} after it: the file is truncated or not safetensors",
                file=path,
                field="header_length",
            )
        raw = f.read(n)
    finally:
        if own:
            f.close()
    return parse_header(path, raw, file_size)


def parse_header(path: str, raw: bytes, file_size: int) -> Header:
    def bad(msg: str, **ctx) -> InvalidModelFile:
        return InvalidModelFile(f"{path}: {msg}", file=path, **ctx)

    n = len(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not valid UTF-8 (byte {e.start})", field="header") from None
    if not text.startswith("{"):
        raise bad("header must be a JSON object starting with '{'", field="header")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as e:
        raise bad(f"duplicate key {e.key!r} in header", field="header", key=e.key) from None
    except (ValueError, RecursionError) as e:
        raise bad(f"header is not valid JSON: {e}", field="header") from None
    if not isinstance(obj, dict):
        raise bad("header must be a JSON object", field="header")

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise bad("__metadata__ must map strings to strings", field="__metadata__")

    data_size = file_size - 8 - n
    infos: list[TensorInfo] = []
    for name, entry in obj.items():
        infos.append(_tensor_info(path, name, entry, data_size))

    infos.sort(key=lambda t: (t.begin, t.end))
    expected = 0
    for t in infos:
        if t.begin != expected:
            if t.begin > expected:
                what = f"a gap of {t.begin - expected:,} bytes before it"
            else:
                what = f"it overlaps the previous tensor by {expected - t.begin:,} bytes"
            raise bad(
                f"tensor {t.name!r} starts at data offset {t.begin:,} but the previous tensor "
                f"ends at {expected:,}: {what}",
                tensor=t.name,
                field="data_offsets",
            )
        expected = t.end
    if expected != data_size:
        if expected < data_size:
            msg = (
                f"tensors end at data offset {expected:,} but the file has {data_size:,} data "
                f"bytes: {data_size - expected:,} trailing bytes"
            )
        else:
            msg = (
                f"tensors need {expected:,} data bytes but the file has only {data_size:,}: "
                "the file is truncated"
            )
        raise bad(msg, field="data_offsets")
    return Header(
        path=path,
        header_size=n,
        file_size=file_size,
        tensors={t.name: t for t in infos},
        metadata=metadata,
        raw=raw,
    )


def _is_uint(v) -> bool:
    return type(v) is int and v >= 0


def _tensor_info(path: str, name: str, entry, data_size: int) -> TensorInfo:
    def bad(msg: str, fld: str) -> InvalidModelFile:
        return InvalidModelFile(
            f"{path}: tensor {name!r}: {msg}", file=path, tensor=name, field=fld
        )

    if not isinstance(entry, dict):
        raise bad("entry must be an object with dtype, shape and data_offsets", "tensor")
    keys = entry.keys()
    if keys != _TENSOR_KEYS:
        missing = sorted(_TENSOR_KEYS - keys)
        extra = sorted(keys - _TENSOR_KEYS)
        detail = "; ".join(
            p
            for p in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(map(repr, extra))}" if extra else "",
            )
            if p
        )
        raise bad(f"entry must have exactly dtype, shape and data_offsets ({detail})", "tensor")

    dtype_name = entry["dtype"]
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise bad(
            f"unknown dtype {dtype_name!r} (known: {', '.join(DTYPES)})",
            "dtype",
        )

    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise bad("shape must be a list of non-negative integers", "shape")
    numel = math.prod(shape)
    total_bits = numel * dtype.bits
    if numel > _U64_MAX or total_bits > _U64_MAX:
        raise bad(f"shape {shape} with dtype {dtype.name} overflows 64 bits", "shape")
    if total_bits % 8:
        raise bad(
            f"{numel} elements of {dtype.bits}-bit {dtype.name} do not end on a byte boundary",
            "shape",
        )

    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_uint(o) for o in offsets)
    ):
        raise bad("data_offsets must be [begin, end] with non-negative integers", "data_offsets")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets end {end:,} is before begin {begin:,}", "data_offsets")
    if end > data_size:
        raise bad(
            f"data_offsets [{begin:,}, {end:,}] run past the {data_size:,}-byte data section: "
            "the file is truncated or the header is wrong",
            "data_offsets",
        )
    nbytes = total_bits // 8
    if end - begin != nbytes:
        raise bad(
            f"data_offsets span {end - begin:,} bytes but shape {shape} of {dtype.name} "
            f"needs {nbytes:,}",
            "data_offsets",
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end, numel)
