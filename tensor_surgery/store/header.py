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
import operator
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
    """One tensor of a file: its header entry and, once the file is open, the file holding it.

    It is also what a model's tensor map holds (`TensorRef`): one object per tensor, because a
    DeepSeek-V3-sized model has 92k of them and every extra object is felt when opening it.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    begin: int  # byte offset from the start of the data section
    end: int
    numel: int
    file: object = field(default=None, compare=False, repr=False)  # the SafetensorsFile

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def info(self) -> "TensorInfo":
        return self

    def raw(self):
        """Zero-copy uint8 view of the tensor's bytes (memory-mapped)."""
        return self.file.tensor_bytes(self)


# TensorInfo(...) for values already validated, in half the time: the generated `__init__` sets
# each field through `object.__setattr__` to get past the frozen guard, a tenth of the time of
# opening a 90k-tensor model. The slots' own setters build the same object.
_new = object.__new__
_set_name, _set_dtype, _set_shape, _set_begin, _set_end, _set_numel, set_file = (
    TensorInfo.name.__set__, TensorInfo.dtype.__set__, TensorInfo.shape.__set__,
    TensorInfo.begin.__set__, TensorInfo.end.__set__, TensorInfo.numel.__set__, TensorInfo.file.__set__,
)
assert tuple(TensorInfo.__dataclass_fields__) == ("name", "dtype", "shape", "begin", "end", "numel", "file")


def _make_info(name: str, dtype: DType, shape: tuple, begin: int, end: int, numel: int) -> TensorInfo:
    info = _new(TensorInfo)
    _set_name(info, name)
    _set_dtype(info, dtype)
    _set_shape(info, shape)
    _set_begin(info, begin)
    _set_end(info, end)
    _set_numel(info, numel)
    set_file(info, None)
    return info


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


class _BadString(ValueError):
    """A JSON string with an unpaired surrogate escape (e.g. "\\ud800"): not Unicode text.

    Python's json accepts them (the reference loader does not); such a name would break every
    later UTF-8 encode (checksums, JSON responses, file names), so it is refused here.
    """


def _check_text(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadString(f"string {_short(s)} is not valid Unicode (unpaired surrogate)") from None


def _short(v: object, limit: int = 80) -> str:
    """repr of a value from a hostile header, cut so that it cannot flood a message."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + f"... ({len(r):,} chars)"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    for k, v in pairs:
        _check_text(k)
        if type(v) is str:
            _check_text(v)
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


def loads_unique(text: str):
    """`json.loads` that refuses what `_no_duplicates` refuses (duplicate keys, unpaired surrogates).

    That hook runs for every object and checks every string: more than half the time of opening
    a 90k-tensor model. So text of the usual shape is parsed plainly and checked in bulk instead.
    Outside strings a ':' only separates a key from its value, so when the text holds exactly as
    many colons as the parsed objects of the top two levels hold keys, no key was collapsed (and
    nothing is nested deeper); with no backslash in the text, no string holds an escape, so none
    holds a surrogate. Anything else (or invalid JSON) is parsed again with the hook, which
    raises what it always raised.
    """
    if "\\" not in text:  # one character: a memchr, where "\\u" would take a slow substring search
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            obj = None
        if type(obj) is dict:
            keys = len(obj)
            for v in obj.values():
                if type(v) is dict:
                    keys += len(v)
            if keys == text.count(":"):
                return obj
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def read_header(path: str | os.PathLike, fd: int | None = None, file_size: int | None = None) -> Header:
    """Read and validate the header of the safetensors file at `path` (or open descriptor `fd`)."""
    path = os.fspath(path)
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        if file_size is None:
            file_size = os.fstat(fd).st_size
        # one read for the length and (usually all of) the header: a model has one file per shard
        head = os.pread(fd, 64 * 1024, 0)
        if len(head) < 8:
            raise InvalidModelFile(
                f"{path}: file is {file_size} bytes, too short to hold the 8-byte header length "
                "of a safetensors file",
                file=path,
                field="header_length",
            )
        (n,) = struct.unpack_from("<Q", head)
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
        raw = head[8 : 8 + n]
        if len(raw) < n:
            raw += _pread_all(fd, n - len(raw), 8 + len(raw))
        if len(raw) != n:
            raise InvalidModelFile(
                f"{path}: file ended after {len(raw):,} of the header's {n:,} bytes "
                "(it shrank while being read)",
                file=path,
                field="header_length",
            )
    finally:
        if own:
            os.close(fd)
    return parse_header(path, raw, file_size)


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.pread(fd, min(n, 1 << 30), offset)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


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
        obj = loads_unique(text)
    except _DuplicateKey as e:
        raise bad(f"duplicate key {_short(e.key)} in header", field="header", key=e.key) from None
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
    infos: list[TensorInfo] = [
        _plain_tensor_info(name, entry, data_size) or _tensor_info(path, name, entry, data_size)
        for name, entry in obj.items()
    ]

    # Writers store tensors in offset order, so the sort is needed only when that order has gaps.
    if _tiled_end(infos) != data_size:
        infos.sort(key=_BY_OFFSET)
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


_BY_OFFSET = operator.attrgetter("begin", "end")


def _tiled_end(infos: list[TensorInfo]) -> int | None:
    """Where the tensors end if, in this order, each starts where the previous one ends."""
    expected = 0
    for t in infos:
        if t.begin != expected:
            return None
        expected = t.end
    return expected


def _plain_tensor_info(name: str, entry, data_size: int) -> TensorInfo | None:
    """`_tensor_info` for a valid entry, with as few Python operations as possible (it runs for
    each of a model's 90k tensors); None for anything unusual, which `_tensor_info` then
    examines and reports. It accepts only what `_tensor_info` accepts, and builds the same info.
    """
    if type(entry) is not dict or len(entry) != 3:
        return None
    try:
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except KeyError:
        return None
    if type(dtype_name) is not str or type(shape) is not list or type(offsets) is not list:
        return None
    dtype = DTYPES.get(dtype_name)
    if dtype is None or len(offsets) != 2:
        return None
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        numel *= d
        if numel > _U64_MAX:
            return None
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end <= data_size:
        return None
    bits = numel * dtype.bits
    if bits > _U64_MAX or bits % 8 or end - begin != bits // 8:
        return None
    return _make_info(name, dtype, tuple(shape), begin, end, numel)


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
            f"unknown dtype {_short(dtype_name)} (known: {', '.join(DTYPES)})",
            "dtype",
        )

    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise bad("shape must be a list of non-negative integers", "shape")
    # Checked product, as the reference does (overflow is an error even if a 0 follows): a plain
    # math.prod of a hostile million-entry shape builds a huge integer and hangs the parser.
    numel = 1
    for d in shape:
        numel *= d
        if numel > _U64_MAX:
            break
    total_bits = numel * dtype.bits
    if numel > _U64_MAX or total_bits > _U64_MAX:
        raise bad(f"shape {_short(shape)} with dtype {dtype.name} overflows 64 bits", "shape")
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
            f"data_offsets span {end - begin:,} bytes but shape {_short(shape)} of {dtype.name} "
            f"needs {nbytes:,}",
            "data_offsets",
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end, numel)
