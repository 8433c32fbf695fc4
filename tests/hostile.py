"""A corpus of hostile and malformed safetensors models: the store's threat model, as code.

Each entry of `CORPUS` writes one case under the folder it is given and returns the path to open
(a file, an index or a folder). `EXPECTED[name]` is `(error class name, substring)`: the error
`open_model` must raise and a piece of its message that names the culprit (field, tensor, shard).
`FIELDS[name]`, where present, is the `field` the error's context must carry.

Cases that must not cost time or memory (a header length of 2**63, a million-entry shape...) are
built small: the parser has to refuse them before reading or multiplying anything big.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

Case = Callable[[Path], Path]

CORPUS: dict[str, Case] = {}
EXPECTED: dict[str, tuple[str, str]] = {}
FIELDS: dict[str, str] = {}


def case(name: str, error: str, substring: str, field: str | None = None):
    def register(fn: Case) -> Case:
        assert name not in CORPUS, name
        CORPUS[name] = fn
        EXPECTED[name] = (error, substring)
        if field is not None:
            FIELDS[name] = field
        return fn

    return register


# -- building blocks ------------------------------------------------------------------------


def st_bytes(header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, header, data.

    `header` may be a dict (dumped as JSON), or exact text/bytes for malformed JSON; `length`
    overrides the length field.
    """
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_header(**extra: dict) -> dict:
    """Two U8 tensors, 'a' (4 bytes) then 'b' (2 bytes): 6 data bytes."""
    return {"a": entry("U8", [4], 0, 4), "b": entry("U8", [2], 4, 6), **extra}


def write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def one_file(header, data: bytes = b"", length: int | None = None, name: str = "model.safetensors") -> Case:
    return lambda d: write(d, name, st_bytes(header, data, length))


def tensor_entry_text(body: str, data: bytes = b"\0" * 4) -> Case:
    """A file whose only tensor 'w' has the exact JSON text `body` as its entry."""
    return one_file('{"w": ' + body + "}", data)


def sharded(
    weight_map: dict | str | bytes,
    shards: dict[str, dict[str, tuple[str, list, bytes]]],
    index_name: str = "model.safetensors.index.json",
) -> Callable[[Path], Path]:
    """A folder holding an index (a dict, or exact text) and shard files built from
    `{shard: {tensor: (dtype, shape, bytes)}}`; returns the folder."""

    def build(d: Path) -> Path:
        folder = d / "sharded"
        folder.mkdir()
        for shard, tensors in shards.items():
            write(folder, shard, shard_file(tensors))
        if isinstance(weight_map, dict):
            text = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        else:
            text = weight_map
        (folder / index_name).write_bytes(text if isinstance(text, bytes) else text.encode())
        return folder

    return build


def shard_file(tensors: dict[str, tuple[str, list, bytes]]) -> bytes:
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = entry(dtype, shape, len(data), len(data) + len(raw))
        data += raw
    return st_bytes(header, data)


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
A = {"a": ("U8", [4], b"\1\2\3\4")}
B = {"b": ("U8", [2], b"\5\6")}
AB = {**A, **B}


# -- the header length ----------------------------------------------------------------------

case("empty_file", "InvalidModelFile", "0 bytes", "header_length")(lambda d: write(d, "model.safetensors", b""))
case("seven_bytes", "InvalidModelFile", "7 bytes", "header_length")(lambda d: write(d, "model.safetensors", b"\x02\0\0\0\0\0\0"))
case("header_length_2_pow_63", "InvalidModelFile", "100,000,000-byte limit", "header_length")(
    one_file(b"{}", length=2**63)
)
case("header_length_u64_max", "InvalidModelFile", "100,000,000-byte limit", "header_length")(
    one_file(b"{}", length=2**64 - 1)
)
case("header_length_100_000_001", "InvalidModelFile", "100,000,001", "header_length")(
    one_file(b"{}", length=100_000_001)
)
case("header_length_past_end", "InvalidModelFile", "truncated", "header_length")(
    one_file(b"{}", length=1000)
)
case("header_length_zero", "InvalidModelFile", "starting with '{'", "header")(one_file(b"", b"", length=0))

# -- the header text ------------------------------------------------------------------------

case("header_not_utf8", "InvalidModelFile", "UTF-8", "header")(one_file(b'{"a\xff": 1}'))
case("header_not_json", "InvalidModelFile", "not valid JSON", "header")(one_file(b'{"a": {"dtype": '))
case("header_json_array", "InvalidModelFile", "JSON object", "header")(one_file(b"[]"))
# (leading whitespace before the '{' is valid since April 2026: see VALID_CASES)
case("header_only_whitespace", "InvalidModelFile", "starting with '{'", "header")(one_file(b" \t\n "))
case("header_leading_nbsp", "InvalidModelFile", "starting with '{'", "header")(one_file("\u00a0{}"))
case("header_leading_vertical_tab", "InvalidModelFile", "starting with '{'", "header")(one_file(b"\x0b{}"))
case("header_trailing_garbage", "InvalidModelFile", "not valid JSON", "header")(one_file(b"{} x"))
case("header_nan_literal", "InvalidModelFile", "NaN", "header")(
    one_file(b'{"__metadata__": {"a": NaN}}')
)
case("header_infinity_in_offsets", "InvalidModelFile", "Infinity", "header")(
    tensor_entry_text('{"dtype": "U8", "shape": [4], "data_offsets": [0, Infinity]}')
)
case("header_deeply_nested", "InvalidModelFile", "not valid JSON", "header")(
    one_file(b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
)
case("header_huge_integer", "InvalidModelFile", "not valid JSON", "header")(
    tensor_entry_text('{"dtype": "U8", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}')
)
case("tensor_name_lone_surrogate", "InvalidModelFile", "surrogate", "header")(
    one_file('{"\\ud800": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}', b"\0" * 4)
)
case("metadata_value_lone_surrogate", "InvalidModelFile", "surrogate", "header")(
    one_file('{"__metadata__": {"k": "\\udfff"}}')
)

# -- duplicate keys (the reference keeps the last one silently) -----------------------------

case("duplicate_tensor_key", "InvalidModelFile", "duplicate key 'a'", "header")(
    one_file(
        '{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
        '"a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}',
        b"\0" * 6,
    )
)
case("duplicate_key_in_entry", "InvalidModelFile", "duplicate key 'dtype'", "header")(
    tensor_entry_text('{"dtype": "I8", "dtype": "U8", "shape": [4], "data_offsets": [0, 4]}')
)
case("duplicate_key_in_metadata", "InvalidModelFile", "duplicate key 'k'", "header")(
    one_file('{"__metadata__": {"k": "1", "k": "2"}}')
)
case("duplicate_metadata_block", "InvalidModelFile", "duplicate key '__metadata__'", "header")(
    one_file('{"__metadata__": {}, "__metadata__": {"k": "v"}}')
)

# -- __metadata__ ---------------------------------------------------------------------------

case("metadata_non_string_value", "InvalidModelFile", "__metadata__", "__metadata__")(
    one_file({"__metadata__": {"format": 1}})
)
case("metadata_not_object", "InvalidModelFile", "__metadata__", "__metadata__")(
    one_file({"__metadata__": ["format", "pt"]})
)
case("metadata_nested_object", "InvalidModelFile", "__metadata__", "__metadata__")(
    one_file({"__metadata__": {"k": {"nested": "v"}}})
)

# -- tensor entries -------------------------------------------------------------------------

case("entry_not_object", "InvalidModelFile", "tensor 'w': entry must be an object", "tensor")(
    one_file({"w": [0, 4]}, b"\0" * 4)
)
case("missing_dtype", "InvalidModelFile", "tensor 'w'", "tensor")(
    one_file({"w": {"shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
)
case("missing_data_offsets", "InvalidModelFile", "missing data_offsets", "tensor")(
    one_file({"w": {"dtype": "U8", "shape": [4]}}, b"\0" * 4)
)
case("extra_key_entry_missing_dtype", "InvalidModelFile", "missing dtype", "tensor")(
    # an unknown field is ignored (see VALID_CASES), a missing one is still an error
    one_file({"w": {"shape": [4], "data_offsets": [0, 4], "foo": 1}}, b"\0" * 4)
)
case("unknown_dtype", "InvalidModelFile", "tensor 'w': unknown dtype 'F12'", "dtype")(
    one_file({"w": entry("F12", [4], 0, 4)}, b"\0" * 4)
)
case("dtype_lowercase", "InvalidModelFile", "unknown dtype 'f32'", "dtype")(
    one_file({"w": entry("f32", [1], 0, 4)}, b"\0" * 4)
)
case("dtype_not_string", "InvalidModelFile", "tensor 'w': unknown dtype 5", "dtype")(
    one_file({"w": entry(5, [4], 0, 4)}, b"\0" * 4)
)
case("dtype_huge_string", "InvalidModelFile", "unknown dtype", "dtype")(
    one_file({"w": entry("X" * 5_000_000, [4], 0, 4)}, b"\0" * 4)
)
case("shape_negative", "InvalidModelFile", "tensor 'w': shape must be", "shape")(
    one_file({"w": entry("U8", [-4], 0, 4)}, b"\0" * 4)
)
case("shape_float", "InvalidModelFile", "tensor 'w': shape must be", "shape")(
    one_file({"w": entry("U8", [4.0], 0, 4)}, b"\0" * 4)
)
case("shape_bool", "InvalidModelFile", "tensor 'w': shape must be", "shape")(
    one_file({"w": entry("U8", [True, 4], 0, 4)}, b"\0" * 4)
)
case("shape_string", "InvalidModelFile", "tensor 'w': shape must be", "shape")(
    one_file({"w": entry("U8", ["4"], 0, 4)}, b"\0" * 4)
)
case("shape_not_list", "InvalidModelFile", "tensor 'w': shape must be", "shape")(
    one_file({"w": entry("U8", 4, 0, 4)}, b"\0" * 4)
)
case("shape_overflow", "InvalidModelFile", "overflows 64 bits", "shape")(
    one_file({"w": entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4)
)
case("shape_overflow_bits", "InvalidModelFile", "overflows 64 bits", "shape")(
    # 2**62 elements fit 64 bits, 2**62 * 64 bits do not
    one_file({"w": entry("F64", [2**62], 0, 4)}, b"\0" * 4)
)
case("shape_overflow_then_zero", "InvalidModelFile", "overflows 64 bits", "shape")(
    # the reference multiplies with overflow checks left to right: a later 0 does not save it
    one_file({"w": entry("U8", [2**40, 2**40, 0], 0, 0)})
)
case("shape_million_entries", "InvalidModelFile", "overflows 64 bits", "shape")(
    # an unchecked product of this shape is a 6-million-bit integer: the parser must stop early
    tensor_entry_text(
        '{"dtype": "U8", "shape": [' + ",".join(["4294967295"] * 200_000) + '], "data_offsets": [0, 4]}'
    )
)
case("offsets_end_before_begin", "InvalidModelFile", "tensor 'w': data_offsets end 0 is before begin 4", "data_offsets")(
    one_file({"w": entry("U8", [4], 4, 0)}, b"\0" * 4)
)
case("offsets_three_entries", "InvalidModelFile", "data_offsets must be [begin, end]", "data_offsets")(
    one_file({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4, 8]}}, b"\0" * 4)
)
case("offsets_negative", "InvalidModelFile", "data_offsets must be [begin, end]", "data_offsets")(
    one_file({"w": entry("U8", [4], -4, 0)}, b"\0" * 4)
)
case("offsets_strings", "InvalidModelFile", "data_offsets must be [begin, end]", "data_offsets")(
    one_file({"w": entry("U8", [4], "0", "4")}, b"\0" * 4)
)
case("offsets_out_of_bounds", "InvalidModelFile", "tensor 'w': data_offsets [0, 400] run past", "data_offsets")(
    one_file({"w": entry("U8", [400], 0, 400)}, b"\0" * 4)
)
case("offsets_past_u64", "InvalidModelFile", "run past", "data_offsets")(
    one_file({"w": entry("U8", [4], 2**64, 2**64 + 4)}, b"\0" * 4)
)
case("size_mismatch_with_shape", "InvalidModelFile", "tensor 'w': data_offsets span 4 bytes but shape [2] of F32 needs 8", "data_offsets")(
    one_file({"w": entry("F32", [2], 0, 4)}, b"\0" * 4)
)
case("f4_odd_element_count", "InvalidModelFile", "3 elements of 4-bit F4 do not end on a byte boundary", "shape")(
    one_file({"w": entry("F4", [3], 0, 2)}, b"\0" * 2)
)
case("f6_three_elements", "InvalidModelFile", "3 elements of 6-bit F6_E2M3 do not end on a byte boundary", "shape")(
    one_file({"w": entry("F6_E2M3", [3], 0, 3)}, b"\0" * 3)
)

# -- the data section as a whole ------------------------------------------------------------

case("overlapping_tensors", "InvalidModelFile", "tensor 'b' starts at data offset 2", "data_offsets")(
    one_file({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}, b"\0" * 6)
)
case("same_range_twice", "InvalidModelFile", "overlaps the previous tensor by 4 bytes", "data_offsets")(
    one_file({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 0, 4)}, b"\0" * 4)
)
case("gap_between_tensors", "InvalidModelFile", "a gap of 2 bytes", "data_offsets")(
    one_file({"a": entry("U8", [4], 0, 4), "b": entry("U8", [2], 6, 8)}, b"\0" * 8)
)
case("gap_at_start", "InvalidModelFile", "tensor 'a' starts at data offset 3", "data_offsets")(
    one_file({"a": entry("U8", [4], 3, 7)}, b"\0" * 7)
)
case("trailing_bytes", "InvalidModelFile", "3 trailing bytes", "data_offsets")(
    one_file(valid_header(), b"\0" * 9)
)
case("no_tensors_but_data", "InvalidModelFile", "5 trailing bytes", "data_offsets")(one_file({}, b"\0" * 5))

# -- what sits at the path ------------------------------------------------------------------

case("no_such_file", "ModelNotFound", "no such file")(lambda d: d / "missing.safetensors")


def _fifo(d: Path) -> Path:
    path = d / "model.safetensors"
    os.mkfifo(path)  # opening a FIFO for reading blocks until a writer comes: must be refused
    return path


case("fifo_instead_of_file", "InvalidModelFile", "not a regular file")(_fifo)


def _two_files(d: Path) -> Path:
    folder = d / "two"
    folder.mkdir()
    write(folder, "first.safetensors", st_bytes(valid_header(), b"\0" * 6))
    write(folder, "second.safetensors", st_bytes(valid_header(), b"\0" * 6))
    return folder


case("folder_two_files_no_index", "InvalidModelFile", "holds 2 .safetensors files and no index")(_two_files)


def _empty_folder(d: Path) -> Path:
    folder = d / "empty"
    folder.mkdir()
    (folder / "README.md").write_text("no model here")
    return folder


case("folder_without_model", "ModelNotFound", "no .safetensors file")(_empty_folder)


def _two_indexes(d: Path) -> Path:
    folder = sharded({"a": S1}, {S1: A}, index_name="x.safetensors.index.json")(d)
    (folder / "y.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": S1}}))
    return folder


case("folder_two_indexes", "InvalidModelFile", "several shard indexes")(_two_indexes)

# -- sharded models -------------------------------------------------------------------------

case("index_not_json", "InvalidModelFile", "not valid UTF-8 JSON")(sharded('{"weight_map": {', {S1: A}))
case("index_not_utf8", "InvalidModelFile", "not valid UTF-8 JSON")(sharded(b'{"weight_map": {"a\xff": 1}}', {S1: A}))
case("index_nan", "InvalidModelFile", "NaN")(sharded('{"metadata": {"total_size": NaN}, "weight_map": {"a": "%s"}}' % S1, {S1: A}))
case("index_deeply_nested", "InvalidModelFile", "not valid UTF-8 JSON")(
    sharded('{"metadata": ' + "[" * 100_000 + "]" * 100_000 + ', "weight_map": {"a": "%s"}}' % S1, {S1: A})
)
case("index_without_weight_map", "InvalidModelFile", "'weight_map' object", "weight_map")(
    sharded('{"metadata": {"total_size": 4}}', {S1: A})
)
case("index_weight_map_list", "InvalidModelFile", "'weight_map' object", "weight_map")(
    sharded('{"weight_map": [["a", "%s"]]}' % S1, {S1: A})
)
case("index_json_array", "InvalidModelFile", "'weight_map' object", "weight_map")(sharded("[]", {S1: A}))
case("index_weight_map_empty", "InvalidModelFile", "weight_map is empty", "weight_map")(sharded({}, {S1: A}))
case("index_duplicate_keys", "InvalidModelFile", "duplicate key 'a'", "weight_map")(
    sharded('{"weight_map": {"a": "%s", "a": "%s"}}' % (S1, S2), {S1: A, S2: A})
)
case("index_missing_shard", "InvalidModelFile", f"missing: {S2}", "weight_map")(
    sharded({"a": S1, "b": S2}, {S1: A})
)
case("index_shard_not_string", "InvalidModelFile", "weight_map['a'] = 5 is not a plain", "weight_map")(
    sharded({"a": 5}, {S1: A})
)
case("index_shard_not_safetensors", "InvalidModelFile", "'pytorch_model.bin' is not a plain", "weight_map")(
    sharded({"a": "pytorch_model.bin"}, {S1: A})
)


def _traversal(d: Path) -> Path:
    # a valid model one folder up: following the name would "work", which is the danger
    write(d, "outside.safetensors", shard_file(A))
    return sharded({"a": "../outside.safetensors"}, {S1: A})(d)


case("index_shard_path_traversal", "InvalidModelFile", "'../outside.safetensors' is not a plain", "weight_map")(_traversal)


def _absolute(d: Path) -> Path:
    target = write(d, "outside.safetensors", shard_file(A))
    return sharded({"a": str(target)}, {S1: A})(d)


case("index_shard_absolute_path", "InvalidModelFile", "outside.safetensors' is not a plain", "weight_map")(_absolute)
case("index_shard_backslash", "InvalidModelFile", "is not a plain", "weight_map")(
    sharded({"a": "..\\outside.safetensors"}, {S1: A})
)
case("index_shard_dotdot_name", "InvalidModelFile", "is not a plain", "weight_map")(sharded({"a": ".."}, {S1: A}))
case("index_tensor_absent_from_shard", "InvalidModelFile", f"in {S1} that it does not hold, e.g. 'b'", "weight_map")(
    sharded({"a": S1, "b": S1}, {S1: A})
)
case("index_misses_tensor_in_shard", "InvalidModelFile", f"tensor 'b' is stored in {S1} but the index does not list it", "weight_map")(
    sharded({"a": S1}, {S1: AB})
)
case("index_puts_tensor_elsewhere", "InvalidModelFile", f"tensor 'b' is stored in {S1} but the index puts it in {S2}", "weight_map")(
    sharded({"a": S1, "b": S2}, {S1: AB, S2: B})
)
case("tensor_in_two_shards", "InvalidModelFile", f"tensor 'a' is stored in both {S1} and {S2}", "weight_map")(
    sharded({"a": S1, "b": S2}, {S1: A, S2: {**A, **B}})
)


def _invalid_shard(d: Path) -> Path:
    folder = sharded({"a": S1, "b": S2}, {S1: A, S2: B})(d)
    (folder / S2).write_bytes(st_bytes({"b": entry("U8", [2], 0, 2)}, b"\0" * 5))  # trailing bytes
    return folder


case("invalid_shard", "InvalidModelFile", f"{S2}: tensors end at data offset 2", "data_offsets")(_invalid_shard)


def _fifo_shard(d: Path) -> Path:
    folder = sharded({"a": S1}, {})(d)
    os.mkfifo(folder / S1)
    return folder


case("fifo_shard", "InvalidModelFile", f"missing: {S1}", "weight_map")(_fifo_shard)


# -- other formats, named by their first bytes (never unpickled) ------------------------------


def _torch_save(d: Path, name: str, zipfile_format: bool = True) -> Path:
    import torch  # the real writer: these are the files users have

    path = d / name
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=zipfile_format)
    return path


def _npz(d: Path) -> Path:
    import numpy as np

    path = d / "weights.npz"
    np.savez(path, w=np.zeros(4, np.float32))
    return path


def _npy(d: Path) -> Path:
    import numpy as np

    path = d / "weights.npy"
    np.save(path, np.zeros(4, np.float32))
    return path


case("pytorch_zip_bin", "InvalidModelFile", "is a PyTorch checkpoint", "format")(
    lambda d: _torch_save(d, "pytorch_model.bin")
)
case("pytorch_legacy_pickle_pt", "InvalidModelFile", "is a Python pickle", "format")(
    lambda d: _torch_save(d, "model.pt", zipfile_format=False)
)
case("numpy_npz", "InvalidModelFile", "is a numpy .npz archive", "format")(_npz)
case("numpy_npy", "InvalidModelFile", "is a numpy .npy array", "format")(_npy)


def _folder_of(*builders: Case) -> Case:
    def build(d: Path) -> Path:
        folder = d / "foreign"
        folder.mkdir()
        for b in builders:
            b(folder)
        (folder / "config.json").write_text("{}")
        return folder

    return build


case("folder_only_pytorch_bin", "InvalidModelFile", "only a PyTorch checkpoint", "format")(
    _folder_of(lambda d: _torch_save(d, "pytorch_model-00001-of-00002.bin"),
               lambda d: _torch_save(d, "pytorch_model-00002-of-00002.bin"))
)

# -- GGUF files (opened as models: tests/test_gguf.py); every count is hostile ------------------


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(tensors=(), kv: bytes = b"", n_kv: int = 0, version: int = 3, data: bytes = b"",
               alignment: int = 32, n_tensors: int | None = None, magic: bytes = b"GGUF") -> bytes:
    """A GGUF file written by hand: `tensors` are (name, ne, GGML type id, offset); `kv` the
    key-values' raw bytes (`n_kv` of them); the data section padded to `alignment` after the infos."""
    infos = b"".join(gguf_string(n) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                     + struct.pack("<IQ", t, off) for n, ne, t, off in tensors)
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, n_kv) + kv + infos
    return head + b"\0" * (-len(head) % alignment) + data


def gguf_kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + payload


# imported here, once: the first GGUF opened in a process imports the gguf package (~0.2 s), which
# is not what a hostile case's time limit measures
import tensor_surgery.store.gguf  # noqa: E402,F401

Q8_0 = 8  # GGML type ids
F32 = 0
_ONE_F32 = [("w", [8], F32, 0)]

case("gguf_bad_version", "InvalidModelFile", "GGUF version 1 is not supported", "version")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, version=1, data=b"\0" * 32))
)
case("gguf_bad_magic", "InvalidModelFile", "does not start with the GGUF magic number", "magic")(
    lambda d: write(d, "model.gguf", b"GGML" + b"\0" * 60)
)
case("gguf_truncated_counts", "InvalidModelFile", "at least 32 bytes each) but the file has only 16 bytes left: it is "
     "truncated", "tensor_count")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, data=b"\0" * 32)[:40])
)
case("gguf_truncated_header", "InvalidModelFile", "the type of 'w' needs 4 bytes at offset 78", "type")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, gguf_kv("general.name", 8, gguf_string("x")), 1,
                                                data=b"\0" * 32)[:78])
)
case("gguf_truncated_data", "InvalidModelFile", "runs past the 16-byte data section", "offset")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, data=b"\0" * 16))
)
case("gguf_offset_past_end", "InvalidModelFile", "tensor 'w': data [4,096, 4,128) runs past", "offset")(
    lambda d: write(d, "model.gguf", gguf_bytes([("w", [8], F32, 4096)], data=b"\0" * 64))
)
case("gguf_overlapping_tensors", "InvalidModelFile", "overlaps tensor", "offset")(
    lambda d: write(d, "model.gguf", gguf_bytes([("a", [16], F32, 0), ("b", [8], F32, 32)], data=b"\0" * 96))
)
case("gguf_unaligned_offset", "InvalidModelFile", "not a multiple of the alignment 32", "offset")(
    lambda d: write(d, "model.gguf", gguf_bytes([("w", [4], F32, 16)], data=b"\0" * 64))
)
case("gguf_alignment_not_power_of_two", "InvalidModelFile", "general.alignment must be a uint32 power of two",
     "general.alignment")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, gguf_kv("general.alignment", 4, struct.pack("<I", 24)),
                                                1, data=b"\0" * 32))
)
case("gguf_kv_count_2_60", "InvalidModelFile", "kv_count says 1,152,921,504,606,846,976 key-values", "kv_count")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, n_kv=1 << 60, data=b"\0" * 32))
)
case("gguf_tensor_count_2_60", "InvalidModelFile", "tensor_count says", "tensor_count")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, n_tensors=1 << 60, data=b"\0" * 32))
)
case("gguf_array_length_2_60", "InvalidModelFile", "array says it holds 1,152,921,504,606,846,976", "tokenizer.ggml.tokens")(
    lambda d: write(d, "model.gguf", gguf_bytes(
        _ONE_F32, gguf_kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 1 << 60)), 1, data=b"\0" * 32))
)
case("gguf_string_length_2_62", "InvalidModelFile", "over the 67,108,864-byte limit", "general.name")(
    lambda d: write(d, "model.gguf", gguf_bytes(
        _ONE_F32, gguf_kv("general.name", 8, struct.pack("<Q", 1 << 62)), 1, data=b"\0" * 32))
)
case("gguf_unknown_value_type", "InvalidModelFile", "unknown value type 77", "general.name")(
    lambda d: write(d, "model.gguf", gguf_bytes(_ONE_F32, gguf_kv("general.name", 77, b""), 1, data=b"\0" * 32))
)
case("gguf_rank_9", "InvalidModelFile", "has rank 9", "n_dims")(
    lambda d: write(d, "model.gguf", gguf_bytes([("w", [1] * 9, F32, 0)], data=b"\0" * 32))
)
case("gguf_block_not_whole", "InvalidModelFile", "ne[0] = 30 is not a multiple of Q8_0's block of 32", "ne")(
    lambda d: write(d, "model.gguf", gguf_bytes([("w", [30], Q8_0, 0)], data=b"\0" * 64))
)
case("gguf_duplicate_tensor", "InvalidModelFile", "two tensors are named 'w'", "tensor_name")(
    lambda d: write(d, "model.gguf", gguf_bytes([("w", [8], F32, 0), ("w", [8], F32, 32)], data=b"\0" * 64))
)
case("gguf_name_not_utf8", "InvalidModelFile", "is not valid UTF-8", "tensor_name")(
    lambda d: write(d, "model.gguf", gguf_bytes([(b"\xff\xfe", [8], F32, 0)], data=b"\0" * 32))
)
case("folder_two_ggufs", "InvalidModelFile", "holds 2 GGUF files and no .safetensors", "format")(
    _folder_of(lambda d: write(d, "a.gguf", gguf_bytes(_ONE_F32, data=b"\0" * 32)),
               lambda d: write(d, "b.gguf", gguf_bytes(_ONE_F32, data=b"\0" * 32)))
)

# -- valid files the reference library reads: not refused --------------------------------------

# name -> (header text or bytes, data): each must open, with the same tensors and bytes as the
# safetensors library gives (tests/test_store_hostile.py), and `VALID_WARNINGS[name]` in the
# model's warnings where given
VALID_CASES: dict[str, tuple[str | bytes, bytes]] = {
    # writers pad the header for alignment; since April 2026 the format allows it before the '{'
    "header_leading_space": (b" " * 7 + json.dumps(valid_header()).encode(), bytes(range(6))),
    "header_leading_json_whitespace": (b" \t\r\n" + json.dumps(valid_header()).encode() + b"  ", bytes(range(6))),
    "extra_key_in_entry": (json.dumps({"w": {**entry("U8", [4], 0, 4), "foo": 1}}), b"\1\2\3\4"),
    "extra_keys_nested": (
        json.dumps({"a": {**entry("U8", [4], 0, 4), "quant": {"scale": [0.5], "zero": 0}},
                    "b": {**entry("U8", [2], 4, 6), "note": "x"}}),
        bytes(range(6)),
    ),
}
VALID_WARNINGS = {
    "extra_key_in_entry": "1 tensor entry has fields the safetensors format does not define ('foo'",
    "extra_keys_nested": "2 tensor entries have fields the safetensors format does not define ('note', 'quant'",
}


assert len(CORPUS) == len(EXPECTED) >= 30


# -- signed patches: hostile signature blocks and trust lists -----------------------------------
# (tests/test_signing.py runs these through the checker, the API and the CLI)

import base64 as _b64  # noqa: E402
import hashlib as _hashlib  # noqa: E402


def _set(field: str, value) -> Callable[[dict], None]:
    """Set `signature.<field>` (or the whole block for field "") of a signed patch's JSON object."""
    def mutate(doc: dict) -> None:
        if field:
            doc["signature"][field] = value
        else:
            doc["signature"] = value
    return mutate


def _drop(field: str) -> Callable[[dict], None]:
    return lambda doc: doc["signature"].pop(field)


def _b64_of(n: int) -> str:
    return _b64.b64encode(bytes(range(n))).decode()


# name -> (mutation of a validly signed patch's JSON object, the `field` the verdict names, words
# of its reason). Every one must come out INVALID (never a crash), and be refused unless overridden.
SIGNATURE_CASES: dict[str, tuple[Callable[[dict], None], str, str]] = {
    "block_string": (_set("", "c2lnbmVk"), "signature", "must be a JSON object, not a string"),
    "block_list": (_set("", [{"algorithm": "ed25519"}]), "signature", "must be a JSON object, not a list"),
    "block_null": (_set("", None), "signature", "must be a JSON object, not null"),
    "block_number": (_set("", 1), "signature", "must be a JSON object, not a number"),
    "value_not_base64": (_set("value", "this is not base64!"), "signature.value", "not valid base64"),
    "value_bad_padding": (_set("value", "QUJD"[:3]), "signature.value", "not valid base64"),
    "value_non_ascii": (_set("value", "ЖЖЖЖ"), "signature.value", "not valid base64"),
    "value_too_short": (_set("value", _b64_of(10)), "signature.value", "10 bytes"),
    "value_too_long": (_set("value", _b64_of(65)), "signature.value", "65 bytes"),
    "value_number": (_set("value", 12345), "signature.value", "must be a base64 string"),
    "value_missing": (_drop("value"), "signature.value", "missing"),
    "public_key_not_base64": (_set("public_key", "#" * 44), "signature.public_key", "not valid base64"),
    "public_key_too_long": (_set("public_key", _b64_of(33)), "signature.public_key", "33 bytes"),
    "public_key_empty": (_set("public_key", ""), "signature.public_key", "0 bytes"),
    "public_key_list": (_set("public_key", [1, 2]), "signature.public_key", "must be a base64 string"),
    "fingerprint_mismatch": (_set("fingerprint", "sha256:" + "0" * 64), "signature.fingerprint",
                             "not the sha256 of signature.public_key"),
    "fingerprint_not_sha256": (_set("fingerprint", "md5:abc"), "signature.fingerprint", "not the sha256"),
    "algorithm_unknown": (_set("algorithm", "rsa-pss-sha256"), "signature.algorithm", "not supported"),
    "algorithm_number": (_set("algorithm", 25519), "signature.algorithm", "not supported"),
    "algorithm_missing": (_drop("algorithm"), "signature.algorithm", "missing"),
    "signer_not_string": (_set("signer", ["alice"]), "signature.signer", "signature.signer must be a name"),
    "signer_path": (_set("signer", "../../etc/passwd"), "signature.signer", "signature.signer must be a name"),
}

_RAW = bytes(range(1, 33))  # a well-formed 32-byte key for the trust-list cases
_GOOD_KEY = {"name": "ok", "public_key": _b64.b64encode(_RAW).decode(),
             "fingerprint": "sha256:" + _hashlib.sha256(_RAW).hexdigest()}


def _trust(*keys, **top) -> bytes:
    return json.dumps({"format": "tensor-surgery-trust-list", "version": 1, "keys": list(keys), **top}).encode()


# name -> (content of DATA_DIR/keys/trusted.json, the `field` the error names, words of its message)
TRUST_LIST_CASES: dict[str, tuple[bytes, str, str]] = {
    "not_json": (b"{not json", "keys", "not UTF-8 JSON"),
    "not_utf8": (b'{"keys": []}\xff', "keys", "not UTF-8 JSON"),
    "empty": (b"", "keys", "not UTF-8 JSON"),
    "json_list": (b"[]", "format", "JSON object with format"),
    "format_wrong": (_trust(format="gpg-keyring"), "format", "JSON object with format"),
    "keys_not_list": (_trust(keys={"ok": _GOOD_KEY}), "keys", "keys must be a list"),
    "entry_not_object": (_trust(_GOOD_KEY, "ok"), "keys[1]", "keys[1] must be an object"),
    "name_path": (_trust({**_GOOD_KEY, "name": "../x"}), "keys[0].name", "keys[0].name must be a name"),
    "key_not_base64": (_trust({**_GOOD_KEY, "public_key": "!!!"}), "keys[0].public_key", "not valid base64"),
    "key_wrong_length": (_trust({**_GOOD_KEY, "public_key": _b64_of(31)}), "keys[0].public_key", "31 bytes"),
    "fingerprint_mismatch": (_trust({**_GOOD_KEY, "fingerprint": "sha256:" + "f" * 64}),
                             "keys[0].fingerprint", "not the sha256 of its public_key"),
    "huge": (b" " * (64 * 1024 + 1), "", "over 65,536 bytes"),
}
