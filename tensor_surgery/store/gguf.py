"""Open GGUF files (llama.cpp's format) as models: a hostile-input-safe header parser, GGML types,
and a reader that dequantizes block by block.

Layout of a GGUF file (v2 and v3; little-endian): magic `GGUF`, u32 version, u64 tensor count,
u64 key-value count; the key-values (a u64-length string key, a u32 value type, the value; arrays
are a u32 element type, a u64 count and the elements); the tensor infos (name, u32 rank, rank u64
dimensions `ne` with ne[0] the fastest-varying, u32 GGML type, u64 offset from the data section);
then the data section, which starts at the next multiple of `general.alignment` (32 by default).

Every count here comes from a hostile file, so none is trusted to size an allocation: a count is
checked against the bytes left in the file (each element takes at least so many bytes) before a
single element is read, and the header is read with pread as far as the parse has got, never
mapped. Shapes are given in numpy's (row-major) order, the reverse of `ne`, so a `[576, 49152]`
token_embd is a `(49152, 576)` matrix, one row per token, like its safetensors twin.

F32, F16, BF16 and the integer types are the same dtypes as in safetensors (every path of the
explorer, edits included, treats them alike). Quantized types are `GGMLType` dtypes: values are
dequantized by `gguf.quants` (llama.cpp's own reference code), only for the blocks a read needs.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InvalidModelFile, UnsupportedDtype
from .dtypes import DTYPES, DType
from .header import Header, TensorInfo, set_file
from .model import LONG_READ_BYTES, Model, SafetensorsFile, is_gguf_file
from .reader import TensorReader

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY_BYTES = 65_535
MAX_STRING_BYTES = 64 << 20  # a chat template is kilobytes; a 64 MiB string is not metadata
MAX_ARRAY_DEPTH = 3
MAX_HEADER_BYTES = 1 << 30  # key-values plus tensor infos: a 256k-token vocabulary is ~10 MB
MAX_STRING_ARRAY = 1 << 22  # elements of a string array walked one by one (largest vocabularies: ~256k)
SUMMARY_ITEMS = 8  # elements of a large array shown in the metadata summary

# value types of the key-values: (struct format, size) for scalars
_SCALARS = {0: ("<B", 1, "uint8"), 1: ("<b", 1, "int8"), 2: ("<H", 2, "uint16"), 3: ("<h", 2, "int16"),
            4: ("<I", 4, "uint32"), 5: ("<i", 4, "int32"), 6: ("<f", 4, "float32"), 7: ("<?", 1, "bool"),
            10: ("<Q", 8, "uint64"), 11: ("<q", 8, "int64"), 12: ("<d", 8, "float64")}
_NUMPY_OF = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
             10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9


# -- GGML types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGMLType(DType):
    """A quantized (or otherwise block-packed) GGML tensor type.

    Its "bit patterns" in the reader are the float32 bits of the dequantized values, so the
    statistics, slices and overviews that work on 32-bit floats work on it unchanged."""

    ggml_id: int = -1
    block_elems: int = 1
    block_bytes: int = 0  # 0: unknown type, size taken from the file's layout
    quantizable: bool = False
    quantized: bool = True

    @cached_property
    def storage(self) -> np.dtype:
        return np.dtype("<u4")

    @cached_property
    def element(self) -> np.dtype:
        if self.numpy is None:
            raise self.undecodable()
        return np.dtype("<f4")

    @cached_property
    def unit(self) -> tuple[int, int]:
        return (self.block_bytes, self.block_elems) if self.block_bytes else (1, 1)

    def nbytes(self, numel: int) -> int:
        return numel // self.block_elems * self.block_bytes

    @cached_property
    def qtype(self):
        from gguf.constants import GGMLQuantizationType

        return GGMLQuantizationType(self.ggml_id)

    def undecodable(self, tensor: str | None = None) -> UnsupportedDtype:
        where = f"{tensor!r}: " if tensor else ""
        if not self.block_bytes:
            why = (f"GGML type {self.name} (id {self.ggml_id}) is unknown to this tool and to the gguf "
                   "package: its values cannot be decoded. The tensor is listed and its bytes are in the "
                   "hex view")
        else:
            why = (f"GGML type {self.name}: the gguf package cannot dequantize it, so its values are not "
                   "available. Its bytes are in the hex view")
        return UnsupportedDtype(where + why, dtype=self.name, tensor=tensor)

    def read_only(self, tensor: str | None = None) -> UnsupportedDtype:
        return UnsupportedDtype(
            (f"{tensor!r}: " if tensor else "")
            + f"GGML type {self.name} cannot be edited by value: the gguf package can dequantize it but not "
            "quantize it again (editable: F32, F16, BF16, "
            f"{', '.join(n for n, t in GGML_TYPES.items() if t.quantizable)}). "
            "Raw bytes can still be written in the hex view", dtype=self.name, tensor=tensor)


# GGML types that are plain element arrays, read as the safetensors dtypes
_PLAIN = {0: "F32", 1: "F16", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 30: "BF16"}


def _ggml_types() -> dict[str, GGMLType]:
    import gguf.quants as q
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    out = {}
    for t in GGMLQuantizationType:
        if t.value in _PLAIN or t not in GGML_QUANT_SIZES:
            continue
        block_elems, block_bytes = GGML_QUANT_SIZES[t]
        traits = q._type_traits.get(t)  # the types gguf implements (dequantize, and maybe quantize)
        decodable = traits is not None
        quantizable = decodable and _can_quantize(t, block_elems)
        out[t.name] = GGMLType(t.name, 32, np.dtype(np.float32) if decodable else None, "float", False,
                               t.value, block_elems, block_bytes, quantizable)
    return out


def _can_quantize(t, block_elems: int) -> bool:
    """Whether gguf implements quantize for this type: asked of the library, which raises
    NotImplementedError for the types it only dequantizes (the K-quants, IQ types)."""
    import gguf.quants as q

    try:
        q.quantize(np.zeros((1, block_elems), np.float32), t)
        return True
    except Exception:  # noqa: BLE001 (NotImplementedError, or any failure: then it is not editable)
        return False


GGML_TYPES: dict[str, GGMLType] = _ggml_types()
_BY_ID: dict[int, GGMLType] = {t.ggml_id: t for t in GGML_TYPES.values()}


def ggml_dtype(type_id: int) -> DType | None:
    """The dtype of a GGML type id: a safetensors dtype for plain types, a GGMLType for block types,
    None for an id nobody knows."""
    if type_id in _PLAIN:
        return DTYPES[_PLAIN[type_id]]
    return _BY_ID.get(type_id)


def is_quantized(dtype: DType) -> bool:
    return getattr(dtype, "quantized", False)


# -- the header ---------------------------------------------------------------------------------


class _Cursor:
    """Reads a hostile header from a descriptor with pread, as far as the parse gets.

    Every read checks the file's length first, so no count or length can make it read or allocate
    more than the file holds (or MAX_HEADER_BYTES)."""

    __slots__ = ("fd", "path", "size", "buf", "base", "pos")

    def __init__(self, fd: int, path: str, size: int) -> None:
        self.fd, self.path, self.size = fd, path, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # file offset of the next read

    def bad(self, msg: str, field: str, **ctx) -> InvalidModelFile:
        return InvalidModelFile(f"{self.path}: {msg}", file=self.path, field=field, **ctx)

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str, field: str) -> None:
        if n > self.size - self.pos:
            raise self.bad(f"{what} needs {n:,} bytes at offset {self.pos:,} but the file has only "
                           f"{self.size - self.pos:,} left: it is truncated or corrupt", field)
        if self.pos + n > MAX_HEADER_BYTES:
            raise self.bad(f"the header runs past {MAX_HEADER_BYTES:,} bytes (at {what}): not a model "
                           "header this tool reads", field)
        end = self.pos + n
        if end > self.base + len(self.buf):
            # read on from the current position: at least 1 MiB, doubling what is held
            want = min(max(n, 1 << 20, len(self.buf)), self.size - self.pos)
            keep = self.buf[self.pos - self.base:]
            more = os.pread(self.fd, want - len(keep), self.pos + len(keep))
            self.buf, self.base = keep + more, self.pos
            if len(self.buf) < n:
                raise self.bad(f"the file ended while reading {what} (it shrank while being read)", field)

    def take(self, n: int, what: str, field: str) -> bytes:
        self.need(n, what, field)
        i = self.pos - self.base
        self.pos += n
        return self.buf[i:i + n]

    def unpack(self, fmt: str, size: int, what: str, field: str):
        self.need(size, what, field)
        v = struct.unpack_from(fmt, self.buf, self.pos - self.base)[0]
        self.pos += size
        return v

    def u32(self, what: str, field: str) -> int:
        return self.unpack("<I", 4, what, field)

    def u64(self, what: str, field: str) -> int:
        return self.unpack("<Q", 8, what, field)

    def string(self, what: str, field: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.u64(f"the length of {what}", field)
        if n > limit:
            raise self.bad(f"{what} says it is {n:,} bytes long, over the {limit:,}-byte limit", field)
        raw = self.take(n, what, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.bad(f"{what} is not valid UTF-8 (byte {e.start})", field) from None


@dataclass
class GGUFValue:
    """One key-value: its GGUF type name, and its value (arrays summarized past SUMMARY_ITEMS)."""

    type: str
    value: object = None
    count: int | None = None  # arrays: the element count
    item_type: str | None = None  # arrays: the element type
    head: list | None = None  # arrays: the first elements (all of them when few)

    def to_json(self) -> dict:
        d = {"type": self.type}
        if self.count is None:
            d["value"] = self.value
        else:
            d.update(count=self.count, item_type=self.item_type, head=self.head,
                     truncated=self.count > len(self.head or []))
        return d

    def short(self) -> str:
        """One line for the model summary's string metadata."""
        if self.count is None:
            s = self.value if isinstance(self.value, str) else json_scalar(self.value)
            s = str(s)
            return s if len(s) <= 200 else s[:200] + f"... ({len(s):,} chars)"
        shown = ", ".join(repr(h) if isinstance(h, str) else str(h) for h in (self.head or [])[:SUMMARY_ITEMS])
        more = ", ..." if self.count > len((self.head or [])[:SUMMARY_ITEMS]) else ""
        return f"[{self.count:,} x {self.item_type}] {shown}{more}"[:400]


def json_scalar(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


_TYPE_NAMES = {**{k: v[2] for k, v in _SCALARS.items()}, STRING: "string", ARRAY: "array"}


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> GGUFValue:
    field_ = key
    if vtype in _SCALARS:
        fmt, size, name = _SCALARS[vtype]
        v = cur.unpack(fmt, size, f"the value of {key!r}", field_)
        if vtype == 7 and cur.buf[cur.pos - cur.base - 1] > 1:
            raise cur.bad(f"{key!r}: a bool must be 0 or 1", field_)
        return GGUFValue(name, json_scalar(v))
    if vtype == STRING:
        return GGUFValue("string", cur.string(f"the value of {key!r}", field_))
    if vtype != ARRAY:
        raise cur.bad(f"key {key!r} has unknown value type {vtype} (known: 0-12)", field_, value_type=vtype)
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.bad(f"key {key!r}: arrays nested more than {MAX_ARRAY_DEPTH} deep", field_)
    itype = cur.u32(f"the element type of {key!r}", field_)
    count = cur.u64(f"the element count of {key!r}", field_)
    if itype not in _TYPE_NAMES:
        raise cur.bad(f"key {key!r}: array of unknown value type {itype} (known: 0-12)", field_, value_type=itype)
    min_size = _SCALARS[itype][1] if itype in _SCALARS else (8 if itype == STRING else 12)
    if count * min_size > cur.left():
        raise cur.bad(f"key {key!r}: array says it holds {count:,} {_TYPE_NAMES[itype]} elements "
                      f"(at least {count * min_size:,} bytes) but the file has only {cur.left():,} bytes left",
                      field_, count=count)
    if itype in _SCALARS:
        size = _SCALARS[itype][1]
        raw = cur.take(count * size, f"the elements of {key!r}", field_)
        head = np.frombuffer(raw[: SUMMARY_ITEMS * size], dtype=_NUMPY_OF[itype])
        if itype == 7:
            head = head.astype(bool)
        return GGUFValue("array", count=count, item_type=_TYPE_NAMES[itype],
                         head=[json_scalar(v) for v in head.tolist()])
    if itype == STRING:
        if count > MAX_STRING_ARRAY:
            raise cur.bad(f"key {key!r}: array of {count:,} strings, over the {MAX_STRING_ARRAY:,} limit",
                          field_, count=count)
        head = []
        for i in range(count):
            if i < SUMMARY_ITEMS:
                head.append(cur.string(f"element {i} of {key!r}", field_))
            else:  # skipped, not decoded: 100k tokens cost ~50 ms this way
                n = cur.u64(f"the length of element {i} of {key!r}", field_)
                if n > MAX_STRING_BYTES:
                    raise cur.bad(f"element {i} of {key!r} says it is {n:,} bytes long", field_)
                cur.need(n, f"element {i} of {key!r}", field_)
                cur.pos += n
        return GGUFValue("array", count=count, item_type="string", head=head)
    if count > MAX_STRING_ARRAY:
        raise cur.bad(f"key {key!r}: array of {count:,} arrays, over the {MAX_STRING_ARRAY:,} limit", field_)
    head = []
    for i in range(count):
        v = _read_value(cur, itype, key, depth + 1)
        if i < SUMMARY_ITEMS:
            head.append(v.to_json())
    return GGUFValue("array", count=count, item_type="array", head=head)


@dataclass
class GGUFHeader(Header):
    """A GGUF file's header, in the shape the rest of the store expects of a safetensors one."""

    version: int = 3
    alignment: int = DEFAULT_ALIGNMENT
    kv: dict[str, GGUFValue] = field(default_factory=dict)
    ggml_ids: dict[str, int] = field(default_factory=dict)  # tensor -> GGML type id
    tensor_data_start: int = 0

    @property
    def data_start(self) -> int:  # type: ignore[override]
        return self.tensor_data_start


def read_gguf_header(path: str, fd: int, file_size: int) -> GGUFHeader:
    cur = _Cursor(fd, path, file_size)
    magic = cur.take(4, "the magic number", "magic") if file_size >= 4 else b""
    if magic != MAGIC:
        raise cur.bad(f"does not start with the GGUF magic number (found {magic!r})", "magic")
    version = cur.u32("the version", "version")
    if version not in VERSIONS:
        raise cur.bad(f"GGUF version {version} is not supported (this tool reads versions 2 and 3)",
                      "version", version=version)
    n_tensors = cur.u64("the tensor count", "tensor_count")
    n_kv = cur.u64("the key-value count", "kv_count")
    # each key-value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info 8 + 4 + 8 + 4 + 8
    if n_kv * 13 > cur.left():
        raise cur.bad(f"kv_count says {n_kv:,} key-values (at least 13 bytes each) but the file has only "
                      f"{cur.left():,} bytes left: it is truncated or corrupt", "kv_count", count=n_kv)
    if n_tensors * 32 > cur.left():
        raise cur.bad(f"tensor_count says {n_tensors:,} tensors (at least 32 bytes each) but the file has only "
                      f"{cur.left():,} bytes left: it is truncated or corrupt", "tensor_count", count=n_tensors)
    kv: dict[str, GGUFValue] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}", "kv", MAX_KEY_BYTES)
        if key in kv:
            raise cur.bad(f"duplicate key {key!r}", key, key=key)
        vtype = cur.u32(f"the value type of {key!r}", key)
        kv[key] = _read_value(cur, vtype, key)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        a = kv["general.alignment"]
        if a.type != "uint32" or not isinstance(a.value, int) or a.value <= 0 or a.value & (a.value - 1):
            raise cur.bad(f"general.alignment must be a uint32 power of two, got {a.type} {a.value!r}",
                          "general.alignment")
        alignment = a.value

    raw_infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}", "tensor_name", MAX_KEY_BYTES)
        if name in names:
            raise cur.bad(f"two tensors are named {name!r}", "tensor_name", tensor=name)
        names.add(name)
        n_dims = cur.u32(f"the rank of {name!r}", "n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.bad(f"tensor {name!r} has rank {n_dims}; GGUF tensors have 1 to {MAX_DIMS} dimensions",
                          "n_dims", tensor=name)
        ne = struct.unpack("<" + "Q" * n_dims, cur.take(8 * n_dims, f"the shape of {name!r}", "ne"))
        type_id = cur.u32(f"the type of {name!r}", "type")
        offset = cur.u64(f"the offset of {name!r}", "offset")
        raw_infos.append((name, ne, type_id, offset))
    header_end = cur.pos
    data_start = -(-header_end // alignment) * alignment
    if data_start > file_size and n_tensors:
        raise cur.bad(f"the data section would start at {data_start:,}, past the end of the "
                      f"{file_size:,}-byte file: it is truncated", "data_offset")
    data_size = max(file_size - data_start, 0)

    infos: list[TensorInfo] = []
    ids: dict[str, int] = {}
    unknown_sizes: set[str] = set()
    for name, ne, type_id, offset in raw_infos:
        def bad(msg: str, fld: str) -> InvalidModelFile:
            return InvalidModelFile(f"{path}: tensor {name!r}: {msg}", file=path, tensor=name, field=fld)

        numel = 1
        for d in ne:
            numel *= d
        if numel >= 1 << 63:
            raise bad(f"shape {list(ne)} has {numel:,} elements, past 2**63", "ne")
        if offset % alignment:
            raise bad(f"data offset {offset:,} is not a multiple of the alignment {alignment}", "offset")
        dtype = ggml_dtype(type_id)
        if dtype is None:  # listed, its size taken from where the next tensor starts
            dtype = GGMLType(f"GGML_TYPE_{type_id}", 32, None, "float", False, type_id, 1, 0)
            nbytes = -1
        elif isinstance(dtype, GGMLType):
            if ne[0] % dtype.block_elems:
                raise bad(f"ne[0] = {ne[0]:,} is not a multiple of {dtype.name}'s block of "
                          f"{dtype.block_elems} elements", "ne")
            nbytes = numel // dtype.block_elems * dtype.block_bytes
        else:
            nbytes = numel * dtype.itemsize
        if offset > data_size or (nbytes >= 0 and nbytes > data_size - offset):
            raise bad(f"data [{offset:,}, {offset + max(nbytes, 0):,}) runs past the {data_size:,}-byte data "
                      "section: the file is truncated or the offset is wrong", "offset")
        info = TensorInfo(name, dtype, tuple(reversed(ne)), offset, offset + max(nbytes, 0), numel)
        ids[name] = type_id
        infos.append(info)
        if nbytes < 0:
            unknown_sizes.add(name)

    ordered = sorted(infos, key=lambda t: (t.begin, t.end))
    for i, t in enumerate(ordered):
        if t.name in unknown_sizes:  # up to the next tensor's start (or the end of the data)
            nxt = next((u.begin for u in ordered[i + 1:] if u.begin > t.begin), data_size)
            t.end = nxt
    prev = None
    for t in sorted(infos, key=lambda t: (t.begin, t.end)):
        if prev is not None and t.begin < prev.end and t.nbytes and prev.nbytes:
            raise InvalidModelFile(
                f"{path}: tensor {t.name!r} (data [{t.begin:,}, {t.end:,})) overlaps tensor {prev.name!r} "
                f"(data [{prev.begin:,}, {prev.end:,}))", file=path, tensor=t.name, field="offset")
        if prev is None or t.end > prev.end:
            prev = t
    warnings = []
    if unknown_sizes:
        first = next(t for t in infos if t.name in unknown_sizes)
        warnings.append(f"{os.path.basename(path)}: {len(unknown_sizes)} tensor(s) of a GGML type unknown to "
                        f"this tool (e.g. {first.name!r}, {first.dtype.name}): listed, "
                        "values unavailable, bytes in the hex view")
    return GGUFHeader(path=path, header_size=header_end, file_size=file_size,
                      tensors={t.name: t for t in infos}, metadata={k: v.short() for k, v in kv.items()},
                      raw=b"", warnings=warnings, version=version, alignment=alignment, kv=kv,
                      ggml_ids=ids, tensor_data_start=data_start)


class GGUFFile(SafetensorsFile):
    """A validated GGUF file: the same reads as a safetensors file (pread copies, the lazy map,
    the unchanged-on-disk checks), over its own header."""

    def _read_header(self, fd: int, size: int) -> GGUFHeader:  # called by SafetensorsFile.__init__
        return read_gguf_header(self.path, fd, size)

    def pattern_view(self, info: TensorInfo) -> np.ndarray:
        if is_quantized(info.dtype):
            raise info.dtype.undecodable()
        return super().pattern_view(info)


@dataclass
class GGUFModel(Model):
    format = "gguf"

    @property
    def name(self) -> str:
        return Path(self.path).name.removesuffix(".gguf")

    @property
    def header(self) -> GGUFHeader:
        return self.files[0].header

    def summary(self) -> dict:
        out = super().summary()
        h = self.header
        kv = h.kv
        arch = kv.get("general.architecture")
        arch = arch.value if arch is not None and arch.count is None else None

        def pick(suffix: str):
            v = kv.get(f"{arch}.{suffix}") if arch else None
            return v.value if v is not None and v.count is None else None

        toks = kv.get("tokenizer.ggml.tokens")
        out["format"] = "gguf"
        out["gguf"] = {
            "version": h.version,
            "alignment": h.alignment,
            "data_offset": h.data_start,
            "architecture": arch,
            "context_length": pick("context_length"),
            "block_count": pick("block_count"),
            "embedding_length": pick("embedding_length"),
            "tokenizer": (kv["tokenizer.ggml.model"].value if "tokenizer.ggml.model" in kv else None),
            "vocab_size": toks.count if toks is not None else None,
            "ggml_types": out["dtypes"],
            "quantizable_types": [n for n, t in GGML_TYPES.items() if t.quantizable] + ["F32", "F16", "BF16"],
            "kv": {k: v.to_json() for k, v in kv.items()},
        }
        return out


def open_gguf(path: str) -> GGUFModel:
    f = GGUFFile(path)
    return GGUFModel(path, "file", [f], dict(f.tensors), dict(f.header.metadata), list(f.header.warnings))


# -- values -------------------------------------------------------------------------------------


def dequantize_blocks(dtype: GGMLType, raw: np.ndarray) -> np.ndarray:
    """float32 values of whole blocks (`raw`: their bytes), in element order."""
    import gguf.quants as q

    if not dtype.decodable:
        raise dtype.undecodable()
    with np.errstate(all="ignore"):  # a hostile scale of inf or NaN gives inf/NaN values, not warnings
        kind = getattr(q, dtype.name, None)
        if kind is not None and hasattr(kind, "dequantize_blocks"):
            # the library's block-level function, straight: `dequantize` would first split the
            # blocks into groups of 16 rows and join them again, which costs more than the math
            kind.init_grid()  # (the IQ types' lookup tables; a no-op for the others)
            out = kind.dequantize_blocks(raw.reshape(-1, dtype.block_bytes))
        else:
            out = q.dequantize(raw.reshape(1, -1), dtype.qtype)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(-1)


def quantize_values(dtype: GGMLType, values: np.ndarray) -> bytes:
    """The bytes of whole blocks holding `values` (float32, a multiple of the block), as gguf quantizes."""
    import gguf.quants as q

    if not dtype.quantizable:
        raise dtype.read_only()
    v = np.asarray(values, dtype=np.float32).reshape(1, -1)  # one row: see dequantize_blocks
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(q.quantize(v, dtype.qtype)).tobytes()


SPAN_READ_BYTES = 8 << 20  # a slice whose rows lie within this many bytes is read in one go


class QuantReader(TensorReader):
    """A reader of a quantized tensor: bytes as for any tensor (runs widen to whole blocks), values
    dequantized from only the blocks a read needs. Its patterns are the values' float32 bits."""

    __slots__ = ()

    def _check_byte_aligned(self) -> None:
        if not self.dtype.decodable:
            raise self.dtype.undecodable(self.ref.name)

    def block_bytes_range(self, b0: int, b1: int) -> np.ndarray:
        """Bytes of blocks [b0, b1), overlay applied (a copy)."""
        ub = self.unit_bytes
        lo, hi = b0 * ub, b1 * ub
        raw = self._base_range(lo, hi)
        for a, buf in self._segments_between(lo, hi):
            s, e = max(a, lo), min(a + len(buf), hi)
            raw[s - lo: e - lo] = buf[s - a: e - a]
        return raw

    def chunk_values(self, start: int, stop: int) -> np.ndarray:
        self._check_byte_aligned()
        be = self.unit_elems
        b0, b1 = start // be, -(-stop // be)
        vals = dequantize_blocks(self.dtype, self.block_bytes_range(b0, b1))
        return vals[start - b0 * be: stop - b0 * be]

    def chunk_patterns(self, start: int, stop: int) -> np.ndarray:
        return self.chunk_values(start, stop).view(np.uint32)

    def decode(self, patterns: np.ndarray) -> np.ndarray:
        return patterns.view(np.float32)

    def patterns_view(self) -> np.ndarray:
        raise self.dtype.undecodable(self.ref.name)

    def values_view(self) -> np.ndarray:
        raise self.dtype.undecodable(self.ref.name)

    def read_patterns(self, index: tuple) -> np.ndarray:
        return self.read_values(index).view(np.uint32)

    def read_values(self, index: tuple) -> np.ndarray:
        """Values of `base[index]` (ints and slices), dequantizing only the blocks it touches: the
        tensor is a matrix of rows of ne[0] elements, and blocks never cross a row."""
        self._check_byte_aligned()
        shape = self.shape
        if self.numel == 0:  # (a dimension of 0: nothing to read)
            return np.zeros(np.empty(shape, np.float32)[index].shape, np.float32)
        cols = shape[-1]
        n_rows = self.numel // cols if cols else 0
        be, ub = self.unit_elems, self.unit_bytes
        row_bytes = cols // be * ub
        rows = np.arange(n_rows, dtype=np.int64).reshape(shape[:-1])[index[:-1]]
        last = index[-1]
        if isinstance(last, slice):
            c0, c1, step = last.start, last.stop, last.step
            cb0, cb1 = c0 // be, -(-c1 // be) if c1 > c0 else c0 // be
        else:
            c0 = last
            cb0, cb1 = last // be, last // be + 1
        flat_rows = rows.reshape(-1)
        nb = cb1 - cb0
        if flat_rows.size == 0 or nb <= 0:
            out_cols = len(range(c0, c1, step)) if isinstance(last, slice) else None
            return np.zeros(rows.shape + ((out_cols,) if out_cols is not None else ()), np.float32)
        first, last_row = int(flat_rows.min()), int(flat_rows.max())
        per_row = cols // be  # blocks
        if (last_row - first + 1) * row_bytes <= SPAN_READ_BYTES:
            # the rows' whole span in one read (overlay applied), then the wanted rows and blocks
            span = self.block_bytes_range(first * per_row, (last_row + 1) * per_row).reshape(-1, row_bytes)
            raw = span[flat_rows - first, cb0 * ub: cb1 * ub]
        elif not self._segments:  # rows far apart in a big tensor: from the map, only their blocks
            raw = self.ref.raw().reshape(n_rows, row_bytes)[flat_rows, cb0 * ub: cb1 * ub]
        else:
            raw = np.empty((flat_rows.size, nb * ub), dtype=np.uint8)
            for k, r in enumerate(flat_rows.tolist()):
                lo = r * row_bytes + cb0 * ub
                raw[k] = np.frombuffer(self.read_bytes(lo, nb * ub), np.uint8)
        raw = np.ascontiguousarray(raw)
        vals = dequantize_blocks(self.dtype, raw.reshape(-1)).reshape(flat_rows.size, nb * be)
        if isinstance(last, slice):
            vals = vals[:, c0 - cb0 * be: c1 - cb0 * be: step]
            return np.ascontiguousarray(vals).reshape(rows.shape + (vals.shape[1],))
        return np.ascontiguousarray(vals[:, c0 - cb0 * be]).reshape(rows.shape)


# -- the hex view's blocks ----------------------------------------------------------------------

# Each block type's fields as llama.cpp's ggml-common.h lays them out: (name, kind, byte offset,
# byte length). kinds: f16 (one scale), e8m0 (a power-of-two scale), i8 / u8 (bytes as numbers),
# u32, q4 (two 4-bit codes per byte), bytes (packed, shown as hex only).
BLOCK_FIELDS: dict[str, list[tuple[str, str, int, int]]] = {
    "Q4_0": [("d", "f16", 0, 2), ("qs", "q4", 2, 16)],
    "Q4_1": [("d", "f16", 0, 2), ("m", "f16", 2, 2), ("qs", "q4", 4, 16)],
    "Q5_0": [("d", "f16", 0, 2), ("qh", "u32", 2, 4), ("qs", "q4", 6, 16)],
    "Q5_1": [("d", "f16", 0, 2), ("m", "f16", 2, 2), ("qh", "u32", 4, 4), ("qs", "q4", 8, 16)],
    "Q8_0": [("d", "f16", 0, 2), ("qs", "i8", 2, 32)],
    "Q2_K": [("scales", "u8", 0, 16), ("qs", "bytes", 16, 64), ("d", "f16", 80, 2), ("dmin", "f16", 82, 2)],
    "Q3_K": [("hmask", "bytes", 0, 32), ("qs", "bytes", 32, 64), ("scales", "bytes", 96, 12), ("d", "f16", 108, 2)],
    "Q4_K": [("d", "f16", 0, 2), ("dmin", "f16", 2, 2), ("scales", "bytes", 4, 12), ("qs", "q4", 16, 128)],
    "Q5_K": [("d", "f16", 0, 2), ("dmin", "f16", 2, 2), ("scales", "bytes", 4, 12), ("qh", "bytes", 16, 32),
             ("qs", "q4", 48, 128)],
    "Q6_K": [("ql", "bytes", 0, 128), ("qh", "bytes", 128, 64), ("scales", "i8", 192, 16), ("d", "f16", 208, 2)],
    "IQ4_NL": [("d", "f16", 0, 2), ("qs", "q4", 2, 16)],
    "IQ4_XS": [("d", "f16", 0, 2), ("scales_h", "u16", 2, 2), ("scales_l", "bytes", 4, 4), ("qs", "q4", 8, 128)],
    "MXFP4": [("e", "e8m0", 0, 1), ("qs", "q4", 1, 16)],
    "TQ2_0": [("qs", "bytes", 0, 64), ("d", "f16", 64, 2)],
    "TQ1_0": [("qs", "bytes", 0, 48), ("qh", "bytes", 48, 4), ("d", "f16", 52, 2)],
}
MAX_BLOCKS_SHOWN = 64


def _field_value(kind: str, raw: bytes):
    if kind == "f16":
        return json_scalar(float(np.frombuffer(raw, "<f2")[0]))
    if kind == "e8m0":
        return json_scalar(float(2.0 ** (raw[0] - 127))) if raw[0] != 255 else "nan"
    if kind == "u32":
        return int.from_bytes(raw, "little")
    if kind == "u16":
        return int.from_bytes(raw, "little")
    if kind == "i8":
        return np.frombuffer(raw, np.int8).tolist()
    if kind == "u8":
        return list(raw)
    if kind == "q4":  # llama.cpp order: the low nibbles are the first half of the codes
        b = np.frombuffer(raw, np.uint8)
        return np.concatenate([b & 0x0F, b >> 4]).tolist()
    return None


def block_view(reader: TensorReader, offset: int, length: int) -> dict:
    """The hex view of a quantized tensor: every block that [offset, offset+length) touches, with
    its fields (scales decoded) and its dequantized values."""
    from .slicing import MAX_HEX_BYTES, unravel
    from ..errors import InvalidRequest, TooLarge

    name, dt = reader.ref.name, reader.dtype
    nbytes = reader.ref.nbytes
    if length < 0 or length > MAX_HEX_BYTES:
        raise TooLarge(f"hex view length {length} is over the {MAX_HEX_BYTES}-byte limit", tensor=name,
                       field="length", limit=MAX_HEX_BYTES)
    if offset < 0 or offset > nbytes:
        raise InvalidRequest(f"offset {offset} is outside tensor {name!r} ({nbytes} bytes)", tensor=name,
                             field="offset")
    length = min(length, nbytes - offset)
    data = reader.read_bytes(offset, length)
    ub, be = reader.unit_bytes, reader.unit_elems
    blocks = []
    known = dt.block_bytes > 0
    if known and length:
        b0 = offset // ub
        b1 = min(-(-(offset + length) // ub), b0 + MAX_BLOCKS_SHOWN)
        raw = reader.read_bytes(b0 * ub, (b1 - b0) * ub)
        values = None
        if dt.decodable:
            values = dequantize_blocks(dt, np.frombuffer(raw, np.uint8).copy()).reshape(b1 - b0, be)
        layout = BLOCK_FIELDS.get(dt.name, [("data", "bytes", 0, ub)])
        for k in range(b1 - b0):
            blk = raw[k * ub:(k + 1) * ub]
            first = (b0 + k) * be
            fields = []
            for fname, kind, at, n in layout:
                fields.append({"name": fname, "kind": kind, "byte_offset": (b0 + k) * ub + at, "byte_length": n,
                               "hex": blk[at:at + n].hex().upper(), "value": _field_value(kind, blk[at:at + n])})
            blocks.append({
                "block_index": b0 + k,
                "byte_offset": (b0 + k) * ub,
                "byte_length": ub,
                "first_element": first,
                "first_index": unravel(first, reader.shape),
                "fields": fields,
                "values": None if values is None else [json_scalar(float(v)) for v in values[k]],
            })
    return {
        "tensor_name": name,
        "dtype": dt.name,
        "nbytes": nbytes,
        "offset": offset,
        "length": length,
        "hex": data.hex().upper(),
        "elements": [],
        "blocks": blocks,
        "block_bytes": ub if known else None,
        "block_elements": be if known else None,
        "decodable": dt.decodable,
        "quantizable": bool(getattr(dt, "quantizable", False)),
        "view": "staged" if reader.staged else "base",
        "note": None if dt.decodable else dt.undecodable().message,
    }


__all__ = ["GGMLType", "GGML_TYPES", "GGUFFile", "GGUFModel", "QuantReader", "block_view", "dequantize_blocks",
           "ggml_dtype", "is_gguf_file", "is_quantized", "open_gguf", "quantize_values", "read_gguf_header",
           "LONG_READ_BYTES"]
