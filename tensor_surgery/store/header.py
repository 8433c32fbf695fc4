"""Parse and validate a safetensors header, at least as strictly as the reference Rust loader.

Layout of a file: 8 bytes little-endian header length N, N bytes of UTF-8 JSON (writers pad it
with spaces for alignment: trailing ones, and since April 2026 the format also allows leading
ones), then the data section. Every tensor's `data_offsets` are relative to the start of the
data section. Rules checked here (reference loader's, then ours):

- N fits the file and is at most 100 MB; the header is UTF-8 JSON and, after optional JSON
  whitespace, starts with `{`;
- `__metadata__`, if present, maps strings to strings;
- no duplicate keys anywhere (the reference keeps the last silently; we refuse);
- each tensor has `dtype`, `shape`, `data_offsets`; dtype is known; shape entries are
  non-negative integers; the element count times the dtype size does not overflow 64 bits; sub-byte
  dtypes end on a byte boundary; `end - begin` equals the size. Other fields in an entry are
  ignored, as the reference ignores them, but each file that has them gets a warning;
- sorted by offset, tensors are contiguous from 0 with no gaps or overlaps, and the last one ends
  exactly at the end of the file (no trailing bytes).

A file that is not safetensors at all (GGUF, a PyTorch checkpoint, numpy archives) is named by its
first bytes (see `foreign.py`) instead of being reported as a broken header.
"""

from __future__ import annotations

import json
import math
import operator
import os
import struct
from itertools import chain
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..errors import InvalidModelFile
from . import foreign
from .dtypes import DTYPES, DType

MAX_HEADER_SIZE = 100_000_000  # same cap as the reference loader
_U64_MAX = (1 << 64) - 1
_TENSOR_KEYS = frozenset(("dtype", "shape", "data_offsets"))


@dataclass(slots=True, unsafe_hash=True)
class TensorInfo:
    """One tensor of a file: its header entry and, once the file is open, the file holding it.

    It is also what a model's tensor map holds (`TensorRef`): one object per tensor, because a
    DeepSeek-V3-sized model has 92k of them and every extra object is felt when opening it.
    Read-only by convention, not `frozen`: a frozen dataclass cannot take plain attribute stores,
    and building 92k of them through its guard was the largest cost of opening such a model.
    Equality and hash are a frozen one's (every field but `file`).
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


_new = object.__new__
set_file = TensorInfo.file.__set__
assert tuple(TensorInfo.__dataclass_fields__) == ("name", "dtype", "shape", "begin", "end", "numel", "file")


def _make_info(name: str, dtype: DType, shape: tuple, begin: int, end: int, numel: int) -> TensorInfo:
    """TensorInfo(...) for values already validated, without the generated `__init__`'s call."""
    info = _new(TensorInfo)
    info.name, info.dtype, info.shape, info.begin, info.end, info.numel, info.file = (
        name, dtype, shape, begin, end, numel, None)
    return info


@dataclass
class Header:
    path: str
    header_size: int  # N, the JSON length
    file_size: int
    tensors: dict[str, TensorInfo]  # in file (offset) order
    metadata: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the header bytes exactly as stored, for byte-identical rewrites
    warnings: list[str] = field(default_factory=list)  # accepted, but worth telling the user

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


_COLON, _QUOTE = ord(":"), ord('"')


def _colons_outside_strings(data: bytes) -> int:
    """How many ':' of JSON text without backslashes stand outside strings.

    With no backslash, every '"' opens or closes a string, so a colon is outside strings exactly
    when an even number of quotes precede it.
    """
    a = np.frombuffer(data, dtype=np.uint8)
    colons = np.flatnonzero(a == _COLON)
    quotes = np.flatnonzero(a == _QUOTE)
    return int(np.count_nonzero(np.searchsorted(quotes, colons) % 2 == 0))


# orjson (yyjson) reserves about 12 bytes per byte of text while parsing, json.loads about 2: above
# these sizes the strict parser is used, so that a hostile 100 MB header cannot cost a gigabyte.
# 2 MiB is a single file of ~20k tensors; shard headers of real models are far smaller, and an
# index lists every tensor of a model (DeepSeek-V3's 92k: 9 MB).
FAST_HEADER_MAX = 2 << 20
FAST_INDEX_MAX = 16 << 20


def _loads_fast(data: bytes | str, max_bytes: int = FAST_INDEX_MAX):
    """The JSON object in `data` by orjson, when it provably holds no duplicate key and no
    unpaired surrogate; None when that cannot be shown cheaply (the strict parser decides then).

    orjson keeps the last of duplicate keys silently, so keys are counted another way: outside
    strings a ':' only separates a key from its value, so when the text holds as many such colons
    as the parsed objects of the top two levels hold keys, no key was collapsed (and no object is
    nested deeper). An escaped quote would hide a string's end from that count, so text with one
    (or with an escaped backslash, which may precede a closing quote) goes to the strict parser.
    orjson itself refuses invalid UTF-8 (encoded surrogates included), unpaired surrogate escapes,
    NaN/Infinity and nesting past 1024 levels. It reads integers past 64 bits as floats, where
    json.loads gives ints: no valid header holds one, and `parse_header` re-parses strictly
    before reporting any refusal, so the error is the same either way.
    """
    if type(data) is str:
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        return None
    # a memchr; with backslashes, the quote count holds as long as none escapes a quote or
    # another backslash (an escaped backslash may precede a closing quote)
    if b"\\" in data and (b'\\"' in data or b"\\\\" in data):
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    keys = len(obj)
    values = obj.values()
    if set(map(type, values)) == {dict}:  # a header: every value an object (two C-level passes)
        keys += sum(map(len, values))
    else:
        for v in values:
            if type(v) is dict:
                keys += len(v)
    # a header's strings rarely hold colons: count them all first (one memchr-speed pass), and
    # only tell inside from outside when the totals differ
    if data.count(b":") != keys and _colons_outside_strings(data) != keys:
        return None
    return obj


def loads_unique(text: str | bytes):
    """Parse a JSON document refusing what `_no_duplicates` refuses (duplicate keys, unpaired
    surrogates), with `json.loads`' errors (ValueError, RecursionError) for anything invalid.

    Text of the usual shape goes through orjson (`_loads_fast`); anything else, valid or not, is
    parsed again by `json.loads` with the checking hook, which raises what it always raised.
    """
    obj = _loads_fast(text)
    if obj is not None:
        return obj
    if type(text) is not str:
        text = text.decode("utf-8")
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _foreign_error(path: str, head: bytes, length_ok: bool) -> InvalidModelFile | None:
    fmt = foreign.sniff(head, pickle=not length_ok)
    if fmt is None:
        return None
    return InvalidModelFile(foreign.message(path, fmt), file=path, field="format", format=fmt.code)


def read_header(path: str | os.PathLike, fd: int | None = None, file_size: int | None = None) -> Header:
    """Read and validate the header of the safetensors file at `path` (or open descriptor `fd`)."""
    path = os.fspath(path)
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    head = b""
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
        return parse_header(path, raw, file_size)
    except InvalidModelFile as e:
        # a header that makes no sense may be another format's magic number: say which
        if e.context.get("field") in ("header_length", "header"):
            better = _foreign_error(path, head, e.context["field"] == "header")
            if better is not None:
                raise better from None
        raise
    finally:
        if own:
            os.close(fd)


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
    obj = _loads_fast(raw, FAST_HEADER_MAX)
    if obj is not None:
        try:
            return _validated(path, raw, file_size, obj)
        except InvalidModelFile:
            obj = None  # report what the strict parser sees (it may read numbers differently)
    return _validated(path, raw, file_size, _loads_strict(path, raw))


def _loads_strict(path: str, raw: bytes) -> dict:
    def bad(msg: str, **ctx) -> InvalidModelFile:
        return InvalidModelFile(f"{path}: {msg}", file=path, **ctx)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"header is not valid UTF-8 (byte {e.start})", field="header") from None
    if not text.lstrip(" \t\n\r").startswith("{"):  # JSON's whitespace, then the object
        raise bad("header must be a JSON object starting with '{' (after optional whitespace)",
                  field="header")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as e:
        raise bad(f"duplicate key {_short(e.key)} in header", field="header", key=e.key) from None
    except (ValueError, RecursionError) as e:
        raise bad(f"header is not valid JSON: {e}", field="header") from None
    if not isinstance(obj, dict):
        raise bad("header must be a JSON object", field="header")
    return obj


def _validated(path: str, raw: bytes, file_size: int, obj: dict) -> Header:
    def bad(msg: str, **ctx) -> InvalidModelFile:
        return InvalidModelFile(f"{path}: {msg}", file=path, **ctx)

    n = len(raw)
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise bad("__metadata__ must map strings to strings", field="__metadata__")

    data_size = file_size - 8 - n
    extras: list[tuple[str, list[str]]] = []  # (tensor, fields the format does not define)
    infos = _plain_infos(obj, data_size)
    if infos is None:  # something unusual: entry by entry, to accept it or name the culprit
        infos = [
            _plain_tensor_info(name, entry, data_size) or _tensor_info(path, name, entry, data_size, extras)
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
        warnings=[_extras_warning(path, extras)] if extras else [],
    )


def _extras_warning(path: str, extras: list[tuple[str, list[str]]]) -> str:
    fields = sorted({f for _, fs in extras for f in fs})
    shown = ", ".join(_short(f, 40) for f in fields[:5]) + (", ..." if len(fields) > 5 else "")
    first = extras[0][0]
    n = len(extras)
    return (
        f"{os.path.basename(path)}: {n:,} tensor entr{'y has' if n == 1 else 'ies have'} fields "
        f"the safetensors format does not define ({shown}; e.g. tensor {_short(first)}): they are "
        "ignored, as the safetensors library ignores them (a re-sharded export drops them)"
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


_MAX_PLAIN_RANK = 16  # a higher rank takes the per-entry path, whose product stops at overflow


def _plain_infos(obj: dict, data_size: int) -> list[TensorInfo] | None:
    """Every entry of a header where all are plain (what `_plain_tensor_info` accepts), in one
    inlined loop (a function call per tensor costs as much as its checks); None if any entry is
    unusual: the per-entry path then accepts it or names the culprit.

    The loop checks what decides the arithmetic (types of the offsets, the dtype, the rank, the
    ranges and the size); whether every dimension is a non-negative int (not a float, bool or
    string that `math.prod` would also multiply) is checked once over all shapes afterwards.
    """
    infos: list[TensorInfo] = []
    append = infos.append
    shapes = []
    add_shape = shapes.append
    dtype_of = DTYPES.get
    # one tuple per distinct shape (a MoE shard repeats a few shapes hundreds of times): fewer
    # objects to keep, and fewer for the garbage collector to scan after a model opens
    shape_of: dict[tuple, tuple] = {}
    same_shape = shape_of.setdefault
    new, cls, prod, u64 = _new, TensorInfo, math.prod, _U64_MAX
    try:
        for name, entry in obj.items():
            if entry.__class__ is not dict or len(entry) != 3:
                return None
            dtype = dtype_of(entry["dtype"])  # TypeError: unhashable, so not a string
            shape = entry["shape"]
            begin, end = entry["data_offsets"]  # ValueError: not two of them
            if (dtype is None or shape.__class__ is not list or len(shape) > _MAX_PLAIN_RANK
                    or begin.__class__ is not int or end.__class__ is not int):
                return None
            numel = prod(shape)
            # a 0 in a shape hides whether the product overflowed before it (the reference's
            # rule): those go entry by entry; with no 0, every partial product is at most numel
            if not 0 < numel <= u64 or not 0 <= begin <= end <= data_size:
                return None
            bits = numel * dtype.bits
            if bits > u64 or (end - begin) * 8 != bits:  # (and so the size ends on a byte)
                return None
            add_shape(shape)
            info = new(cls)
            info.name = name
            info.dtype = dtype
            info.shape = same_shape(t := tuple(shape), t)
            info.begin = begin
            info.end = end
            info.numel = numel
            info.file = None
            append(info)
    except (KeyError, TypeError, ValueError):
        return None
    dims = list(chain.from_iterable(shapes))
    # (a bool is not an int here: type(True) is bool)
    if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
        return None
    return infos


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


def _tensor_info(path: str, name: str, entry, data_size: int, extras: list) -> TensorInfo:
    def bad(msg: str, fld: str) -> InvalidModelFile:
        return InvalidModelFile(
            f"{path}: tensor {name!r}: {msg}", file=path, tensor=name, field=fld
        )

    if not isinstance(entry, dict):
        raise bad("entry must be an object with dtype, shape and data_offsets", "tensor")
    keys = entry.keys()
    missing = sorted(_TENSOR_KEYS - keys)
    if missing:
        raise bad(f"entry must have dtype, shape and data_offsets (missing {', '.join(missing)})",
                  "tensor")
    extra = sorted(keys - _TENSOR_KEYS)

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
    if extra:
        extras.append((name, extra))  # the reference ignores them; so do we, with a warning
    return TensorInfo(name, dtype, tuple(shape), begin, end, numel)
