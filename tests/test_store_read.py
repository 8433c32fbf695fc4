"""Oracle tests of the store: decoded values against safetensors+torch (and ml_dtypes where torch
cannot decode), slices against numpy slicing, overlays against patched copies of the bytes,
overviews, statistics, histograms and rank against numpy references, sharded models against
safe_open per shard."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from tensor_surgery.errors import InvalidRequest, TensorNotFound, TooLarge, UnsupportedDtype
from tensor_surgery.store import TensorReader, open_model
from tensor_surgery.store.rank import tensor_rank
from tensor_surgery.store import slicing, stats
from tensor_surgery.store.dtypes import DTYPES, value_table

# -- writing models -------------------------------------------------------------------------


def write_model(path: Path, tensors: dict[str, tuple[str, tuple, bytes]], metadata: dict | None = None) -> Path:
    """A safetensors file as the reference writers make it (header padded to 8 bytes)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = bytearray()
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header)
    text += " " * (-(len(text) + 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + bytes(data))
    return path


# The decoded type of each byte-aligned dtype, written out here rather than taken from the store.
NP_TYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64,
    "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz, "C64": np.complex64,
}
F6 = ("F6_E2M3", "F6_E3M2")  # not "F6*": F64 starts with F6
ALL_DTYPES = list(NP_TYPES) + ["F4", *F6]
assert sorted(ALL_DTYPES) == sorted(DTYPES)
# converting signalling NaNs to float64 warns; the values are compared NaN-aware anyway
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
TORCH_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# NaN (quiet, negative, signalling), +-Inf, +-0, the smallest subnormal, +-max
SPECIAL32 = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000, 0xFF800000, 0x80000000, 0, 1, 0x7F7FFFFF, 0xFF7FFFFF]
SPECIAL64 = [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x7FF0000000000000,
             0xFFF0000000000000, 0x8000000000000000, 0, 1]


def oracle_bytes(dtype: str, seed: int = 0) -> tuple[tuple, bytes]:
    """Test data for a dtype: every bit pattern for dtypes of up to 16 bits (shuffled), random
    bytes with NaN/Inf/-0/subnormal patterns planted for the wider ones."""
    rng = np.random.default_rng(seed + sum(map(ord, dtype)))
    if dtype == "BOOL":
        return (7, 9), rng.integers(0, 2, 63, dtype=np.uint8).tobytes()
    if dtype == "F4":  # every byte: every pair of codes
        return (16, 32), rng.permutation(256).astype(np.uint8).tobytes()
    if dtype in F6:
        return (8, 4), rng.integers(0, 256, 24, dtype=np.uint8).tobytes()
    bits = DTYPES[dtype].bits
    if bits == 8:
        return (4, 8, 8), rng.permutation(256).astype(np.uint8).tobytes()
    if bits == 16:
        return (256, 256), rng.permutation(65536).astype(np.uint16).tobytes()
    shape = (3, 16, 32)
    n = math.prod(shape)
    elem_bytes = bits // 8
    raw = np.frombuffer(rng.bytes(n * elem_bytes), np.uint8).copy()
    if dtype in ("F32", "C64"):
        words = raw.view(np.uint32)
        words[rng.choice(words.size, len(SPECIAL32), replace=False)] = SPECIAL32
    elif dtype == "F64":
        words = raw.view(np.uint64)
        words[rng.choice(words.size, len(SPECIAL64), replace=False)] = SPECIAL64
    elif dtype[0] in "IU":
        info = np.iinfo(NP_TYPES[dtype])
        vals = raw.view(NP_TYPES[dtype])
        vals[:3] = [info.min, info.max, 0]
    return shape, raw.tobytes()


def full(shape: tuple) -> tuple:
    return tuple(slice(0, n) for n in shape)


def f4_codes(raw: bytes, shape: tuple) -> np.ndarray:
    """F4 element codes: element 2i is the low nibble of byte i, element 2i+1 the high nibble."""
    b = np.frombuffer(raw, np.uint8)
    return np.stack([b & 0x0F, b >> 4], axis=-1).reshape(shape)


def oracle_patterns(dtype: str, shape: tuple, raw: bytes) -> np.ndarray:
    if dtype == "F4":
        return f4_codes(raw, shape)
    return np.frombuffer(raw, f"<u{DTYPES[dtype].bits // 8}").reshape(shape)


def oracle_values(dtype: str, shape: tuple, raw: bytes) -> np.ndarray:
    if dtype == "F4":
        return f4_codes(raw, shape).view(ml_dtypes.float4_e2m1fn)
    return np.frombuffer(raw, np.dtype(NP_TYPES[dtype]).newbyteorder("<")).reshape(shape)


def as_f64(v: np.ndarray) -> np.ndarray:
    """Values as float64 (complex: magnitude, as the store describes complex tensors)."""
    if v.dtype.kind == "c":
        return np.abs(v).astype(np.float64)
    return v.astype(np.float64)


def assert_same_floats(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal bit for bit, except that any NaN equals any NaN (payloads differ between converters)."""
    assert ours.shape == theirs.shape
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    nan = np.isnan(ours)
    assert np.array_equal(nan, np.isnan(theirs))
    assert np.array_equal(ours[~nan].view(np.uint64), theirs[~nan].view(np.uint64))


def torch_tensor(path: Path, name: str) -> torch.Tensor:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name)


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory) -> tuple[Path, dict]:
    tensors = {dt.lower(): (dt, *oracle_bytes(dt)) for dt in ALL_DTYPES}
    path = write_model(tmp_path_factory.mktemp("dtypes") / "every_dtype.safetensors", tensors)
    return path, tensors


@pytest.fixture(scope="module")
def every_dtype_model(every_dtype):
    with open_model(every_dtype[0]) as model:
        yield model


# -- decoding, against the reference --------------------------------------------------------


@pytest.mark.parametrize("dtype", [d for d in ALL_DTYPES if d not in F6])
def test_decode_matches_reference_bit_for_bit(dtype, every_dtype, every_dtype_model) -> None:
    path, tensors = every_dtype
    _, shape, raw = tensors[dtype.lower()]
    ref = every_dtype_model.tensor(dtype.lower())
    assert (ref.dtype.name, ref.shape, ref.nbytes) == (dtype, shape, len(raw))
    reader = TensorReader(ref)
    pats = reader.read_patterns(full(shape))
    vals = reader.read_values(full(shape))
    assert pats.shape == vals.shape == shape

    t = torch_tensor(path, dtype.lower())
    theirs_bytes = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert bytes(ref.raw()) == theirs_bytes == raw

    if dtype == "F4":
        # torch holds F4 as float4_e2m1fn_x2 bytes (last dim halved) and cannot decode them
        assert tuple(t.shape) == shape[:-1] + (shape[-1] // 2,)
        assert np.array_equal(pats, f4_codes(raw, shape))
        expected = f4_codes(raw, shape).view(ml_dtypes.float4_e2m1fn)
        assert vals.dtype == ml_dtypes.float4_e2m1fn
        assert_same_floats(vals.astype(np.float64), expected.astype(np.float64))
        # the first byte's low nibble is element 0
        b0 = raw[0]
        assert vals.reshape(-1)[0].view(np.uint8) == b0 & 0xF and vals.reshape(-1)[1].view(np.uint8) == b0 >> 4
        return

    assert tuple(t.shape) == shape
    width = DTYPES[dtype].bits // 8
    theirs_pats = t.reshape(-1).view(TORCH_BITS[width]).numpy().view(f"<u{width}").reshape(shape)
    assert np.array_equal(pats, theirs_pats)
    kind = DTYPES[dtype].kind
    if kind == "float":
        assert_same_floats(vals.astype(np.float64), t.to(torch.float64).numpy())
    elif kind == "complex":
        ours_c, theirs_c = vals.astype(np.complex128), t.to(torch.complex128).numpy()
        assert_same_floats(ours_c.real, theirs_c.real)
        assert_same_floats(ours_c.imag, theirs_c.imag)
    elif kind == "bool":
        assert np.array_equal(vals, t.numpy())
    else:
        assert vals.dtype == np.dtype(NP_TYPES[dtype])
        assert np.array_equal(vals, t.numpy())
    assert np.array_equal(reader.values_view().view(pats.dtype), pats)  # the zero-copy path

    if DTYPES[dtype].bits <= 16 and kind != "bool":
        # the value table behind exact statistics decodes every pattern like torch does
        table = value_table(DTYPES[dtype])
        every = np.arange(1 << DTYPES[dtype].bits, dtype=f"<u{width}")
        patterns = torch.from_numpy(every.view(np.uint8 if width == 1 else np.int16)).view(t.dtype)
        assert table.size == 1 << DTYPES[dtype].bits
        assert_same_floats(table, patterns.to(torch.float64).numpy())


@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2"])
def test_f6_values_are_refused_but_hex_view_works(dtype, every_dtype, every_dtype_model) -> None:
    _, tensors = every_dtype
    _, shape, raw = tensors[dtype.lower()]
    reader = TensorReader(every_dtype_model.tensor(dtype.lower()))
    for call in (
        lambda: reader.read_values(full(shape)),
        lambda: reader.read_patterns((0, slice(0, 4))),
        lambda: reader.values_view(),
        lambda: reader.chunk_patterns(0, 8),
        lambda: slicing.read_slice(reader, {}),
        lambda: slicing.overview(reader),
        lambda: stats.tensor_stats(reader),
        lambda: stats.tensor_histogram(reader),
        lambda: tensor_rank(reader),
    ):
        with pytest.raises(UnsupportedDtype) as info:
            call()
        assert "hex view" in info.value.message and dtype in info.value.message

    hv = slicing.hex_view(reader, 0, 24)
    assert hv["hex"] == raw.hex().upper()
    assert (hv["length"], hv["nbytes"], hv["decodable"], hv["elements"]) == (24, 24, False, [])
    assert "hex view" in hv["note"]
    hv = slicing.hex_view(reader, 5, 7)
    assert hv["hex"] == raw[5:12].hex().upper()
    # staged bytes show in the hex view of an undecodable dtype too (3-byte units)
    staged = TensorReader(every_dtype_model.tensor(dtype.lower()), [(4, b"\xAB\xCD")])
    want = bytearray(raw)
    want[4:6] = b"\xAB\xCD"
    assert staged.read_bytes(0, 24) == bytes(want)
    assert slicing.hex_view(staged, 3, 6)["hex"] == bytes(want[3:9]).hex().upper()


def test_real_writer_output_opens_and_matches(tmp_path: Path) -> None:
    """A file written by safetensors itself (padded header, metadata, scalar, empty tensor)."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "emb": torch.randn(10, 6, generator=g).to(torch.bfloat16),
        "f8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "idx": torch.arange(-5, 5, dtype=torch.int64),
        "scalar": torch.tensor(3.25, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
    }
    path = tmp_path / "written.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    with open_model(path) as model:
        assert model.metadata == {"format": "pt", "note": "x"}
        assert sorted(model.tensors) == sorted(tensors)
        for name, t in tensors.items():
            ref = model.tensor(name)
            assert ref.shape == tuple(t.shape)
            got = TensorReader(ref).read_values(full(ref.shape))
            if t.dtype == torch.bool:
                assert np.array_equal(got, t.numpy())
            elif t.dtype == torch.int64:
                assert np.array_equal(got, t.numpy())
            else:
                assert_same_floats(got.astype(np.float64), t.to(torch.float64).numpy())


# -- slices ---------------------------------------------------------------------------------

SLICE_SHAPES = {0: (), 1: (300,), 2: (40, 30), 3: (5, 6, 7), 4: (3, 4, 5, 6)}
SLICE_DTYPES = ["F32", "BF16", "F4", "I16", "C64", "U8"]

# (rank, params, numpy index, definition)
SLICE_CASES = [
    (0, {}, (), "[]"),
    (1, {}, np.s_[0:256], "[0:256]"),
    (1, {"dim0_start": 10, "dim0_end": 300, "dim0_step": 7}, np.s_[10:300:7], "[10:300:7]"),
    (1, {"dim0_start": "299", "dim0_end": "300"}, np.s_[299:300], "[299:300]"),
    (2, {}, np.s_[0:40, 0:30], "[0:40, 0:30]"),
    (2, {"dim1_start": 5, "dim1_end": 9, "dim0_idx": 3}, np.s_[3, 5:9], "[3, 5:9]"),
    (2, {"dim0_start": 1, "dim0_end": 40, "dim0_step": 3, "dim1_start": 29, "dim1_end": 30},
     np.s_[1:40:3, 29:30], "[1:40:3, 29:30]"),
    (2, {"dim0_step": 4}, np.s_[0:40:4, 0], "[0:40:4, 0]"),
    (3, {}, np.s_[0, 0:6, 0:7], "[0, 0:6, 0:7]"),
    (3, {"dim0_idx": 4}, np.s_[4, 0:6, 0:7], "[4, 0:6, 0:7]"),
    (3, {"dim1_idx": 2}, np.s_[0:5, 2, 0:7], "[0:5, 2, 0:7]"),
    (3, {"dim0_start": 1, "dim0_end": 5, "dim2_start": 2, "dim2_end": 7, "dim2_step": 2, "dim1_idx": 5},
     np.s_[1:5, 5, 2:7:2], "[1:5, 5, 2:7:2]"),
    (3, {"dim1_start": 0, "dim1_end": 3}, np.s_[0, 0:3, 0], "[0, 0:3, 0]"),
    (4, {}, np.s_[0, 0, 0:5, 0:6], "[0, 0, 0:5, 0:6]"),
    (4, {"dim0_idx": 2, "dim1_start": 1, "dim1_end": 4, "dim2_idx": 4, "dim3_start": 0, "dim3_end": 6, "dim3_step": 2},
     np.s_[2, 1:4, 4, 0:6:2], "[2, 1:4, 4, 0:6:2]"),
    (4, {"dim0_start": 0, "dim0_end": 3, "dim3_start": 5, "dim3_end": 6, "dim1_idx": 3, "dim2_idx": 1},
     np.s_[0:3, 3, 1, 5:6], "[0:3, 3, 1, 5:6]"),
    (4, {"dim0_idx": 1, "dim1_idx": 2}, np.s_[1, 2, 0:5, 0:6], "[1, 2, 0:5, 0:6]"),
]


def slice_data(dtype: str, rank: int) -> tuple[tuple, bytes]:
    shape = SLICE_SHAPES[rank]
    n = math.prod(shape)
    rng = np.random.default_rng(rank * 31 + len(dtype))
    if dtype == "F4":
        raw = rng.integers(0, 256, n // 2, dtype=np.uint8).tobytes()
        return shape, raw
    nbytes = n * DTYPES[dtype].bits // 8
    raw = np.frombuffer(rng.bytes(nbytes), np.uint8).copy()
    if dtype in ("F32", "C64") and n >= 4:
        raw.view(np.uint32)[:4] = [0x7FC00000, 0x7F800000, 0xFF800000, 0x80000000]
    return shape, raw.tobytes()


@pytest.fixture(scope="module")
def slice_model(tmp_path_factory):
    tensors = {
        f"{dt}_{r}": (dt, *slice_data(dt, r))
        for dt in SLICE_DTYPES
        for r in SLICE_SHAPES
        if not (dt == "F4" and r == 0)  # one F4 element is half a byte: not a valid tensor
    }
    path = write_model(tmp_path_factory.mktemp("slices") / "slices.safetensors", tensors)
    with open_model(path) as model:
        yield model, tensors


def json_reference(values: np.ndarray):
    """What the slice's `data` must be: floats with None for NaN/Inf, complex as [re, im]."""
    if values.dtype.kind == "c":
        pairs = np.stack([values.real, values.imag], axis=-1).astype(np.float64)
        return np.where(np.isfinite(pairs), pairs, None).tolist() if pairs.ndim else pairs.tolist()
    if values.dtype.kind in "biu":
        return values.tolist()
    v = values.astype(np.float64)
    if v.ndim == 0:
        return float(v) if np.isfinite(v) else None
    return np.where(np.isfinite(v), v, None).tolist()


@pytest.mark.parametrize(
    "dtype,rank,params,index,definition",
    [(dt, *c) for dt in SLICE_DTYPES for c in SLICE_CASES if not (dt == "F4" and c[0] == 0)],
    ids=[f"{dt}{c[3]}" for dt in SLICE_DTYPES for c in SLICE_CASES if not (dt == "F4" and c[0] == 0)],
)
def test_slice_matches_numpy(slice_model, dtype, rank, params, index, definition) -> None:
    model, tensors = slice_model
    name = f"{dtype}_{rank}"
    _, shape, raw = tensors[name]
    reader = TensorReader(model.tensor(name))
    expected_pats = oracle_patterns(dtype, shape, raw)[index]
    expected_vals = oracle_values(dtype, shape, raw)[index]

    spec = slicing.parse_slice(shape, params, tensor=name)
    assert spec.definition == definition
    assert np.array_equal(reader.read_patterns(spec.index), expected_pats)

    out = slicing.read_slice(reader, params)
    assert out["tensor_name"] == name and out["dtype"] == dtype and out["view"] == "base"
    assert out["original_shape"] == list(shape)
    assert out["slice_definition"] == definition
    assert out["slice_shape"] == list(expected_vals.shape)
    assert out["data"] == json_reference(expected_vals)
    json.dumps(out, allow_nan=False)  # the wire format is strict JSON
    mags = as_f64(np.atleast_1d(expected_vals))
    finite = mags[np.isfinite(mags)]
    assert out["nonfinite_count"] == mags.size - finite.size
    assert out["min_value_in_slice"] == (finite.min() if finite.size else None)
    assert out["max_value_in_slice"] == (finite.max() if finite.size else None)


def test_slice_default_window(slice_model) -> None:
    model, tensors = slice_model
    _, shape, raw = tensors["F32_2"]
    reader = TensorReader(model.tensor("F32_2"))
    out = slicing.read_slice(reader, {}, default_window=8)
    assert out["slice_definition"] == "[0:8, 0:8]"
    assert out["data"] == json_reference(oracle_values("F32", shape, raw)[:8, :8])
    out = slicing.read_slice(reader, {"dim0_start": 35}, default_window=8)
    assert out["slice_definition"] == "[35:40, 0]"


@pytest.mark.parametrize(
    "shape,params,error,field",
    [
        ((40, 30), {"dim0_start": 0, "dim0_end": 41}, InvalidRequest, "dim0_start"),
        ((40, 30), {"dim0_start": 5, "dim0_end": 5}, InvalidRequest, "dim0_start"),
        ((40, 30), {"dim0_start": -1, "dim0_end": 5}, InvalidRequest, "dim0_start"),
        ((5, 6, 7), {"dim0_idx": 5}, InvalidRequest, "dim0_idx"),
        ((5, 6, 7), {"dim2_idx": -1}, InvalidRequest, "dim2_idx"),
        ((5, 6, 7), {"dim0_end": 2, "dim1_end": 2, "dim2_end": 2}, InvalidRequest, "dims"),
        ((5, 6, 7), {"dim3_idx": 0}, InvalidRequest, "dim3_idx"),
        ((), {"dim0_idx": 0}, InvalidRequest, "dim0_idx"),
        ((40, 30), {"dim0_start": 0, "dim0_end": 5, "dim0_idx": 1}, InvalidRequest, "dim0_idx"),
        ((40, 30), {"dim0_step": 0}, InvalidRequest, "dim0_step"),
        ((40, 30), {"dim0_idx": "abc"}, InvalidRequest, "dim0_idx"),
        ((40, 30), {"dim0_idx": True}, InvalidRequest, "dim0_idx"),
        ((40, 30), {"dim0_idx": 1.5}, InvalidRequest, "dim0_idx"),
        ((40, 30), {"dim0_stop": 5}, InvalidRequest, "dim0_stop"),
        ((1100, 1000), {"dim0_end": 1100, "dim1_end": 1000}, TooLarge, None),
        ((40, 30), {"dim0_end": 40, "dim1_end": 30}, TooLarge, None),  # with max_cells=100 below
    ],
)
def test_slice_errors(shape, params, error, field) -> None:
    limits = {"max_cells": 100} if shape == (40, 30) and error is TooLarge else {}
    with pytest.raises(error) as info:
        slicing.parse_slice(shape, params, tensor="t", **limits)
    if field:
        assert info.value.context["field"] == field
    if error is TooLarge:
        assert info.value.context["cells"] == math.prod(v for k, v in params.items() if k.endswith("_end"))
    assert "t" in info.value.context.get("tensor", "t")


def test_slice_cell_cap_boundary() -> None:
    spec = slicing.parse_slice((1024, 1024), {"dim0_end": 1024, "dim1_end": 1024})
    assert spec.cells == slicing.MAX_SLICE_CELLS
    with pytest.raises(TooLarge):
        slicing.parse_slice((1025, 1024), {"dim0_end": 1025, "dim1_end": 1024})
    # a step brings a big range under the cap
    assert slicing.parse_slice((4096, 1024), {"dim0_end": 4096, "dim0_step": 4, "dim1_end": 1024}).cells == 1 << 20


# -- overlays (staged bytes) ----------------------------------------------------------------

OVERLAY_DTYPES = ["F32", "BF16", "U8", "F4", "I64", "C64", "F6_E2M3"]
OVERLAY_SHAPE = (6, 16)  # 96 elements: whole units for every dtype, F6 included


@pytest.fixture(scope="module")
def overlay_model(tmp_path_factory):
    rng = np.random.default_rng(5)
    tensors = {}
    for dt in OVERLAY_DTYPES:
        nbytes = math.prod(OVERLAY_SHAPE) * DTYPES[dt].bits // 8
        raw = np.frombuffer(rng.bytes(nbytes), np.uint8).copy()
        if dt in ("F32", "C64"):  # finite values, so the moment checks below stay meaningful
            raw.view(np.float32)[:] = rng.standard_normal(raw.size // 4)
        tensors[dt] = (dt, OVERLAY_SHAPE, raw.tobytes())
    path = write_model(tmp_path_factory.mktemp("overlay") / "overlay.safetensors", tensors)
    with open_model(path) as model:
        yield model, tensors


def apply_runs(raw: bytes, runs) -> bytes:
    out = bytearray(raw)
    for off, data in runs:  # in order: later runs win
        out[off : off + len(data)] = data
    return bytes(out)


def check_overlay(model, tensors, dtype: str, runs) -> None:
    _, shape, raw = tensors[dtype]
    want = apply_runs(raw, runs)
    reader = TensorReader(model.tensor(dtype), runs)
    assert reader.staged
    n = len(raw)
    assert reader.read_bytes(0, n) == want
    for off, length in [(0, 1), (1, 5), (n // 3, n // 3), (n - 3, 3), (n, 0)]:
        assert reader.read_bytes(off, length) == want[off : off + length]
        assert reader.base_bytes(off, length) == raw[off : off + length]
        hv = slicing.hex_view(reader, off, length)
        assert hv["hex"] == want[off : off + length].hex().upper() and hv["view"] == "staged"
    if dtype in F6:
        return
    pats = oracle_patterns(dtype, shape, want)
    for index in [full(shape), np.s_[2, 3:11], np.s_[1:6:2, 0:16:3], np.s_[5, 15], np.s_[0:6, 7]]:
        assert np.array_equal(reader.read_patterns(index), pats[index]), index
    flat = pats.reshape(-1)
    assert np.array_equal(reader.chunk_patterns(3, 47), flat[3:47])
    assert np.array_equal(np.concatenate(list(reader.iter_chunks(7))), flat)
    out = slicing.read_slice(reader, {"dim0_start": 1, "dim0_end": 5, "dim1_start": 2, "dim1_end": 13, "dim1_step": 2})
    assert out["view"] == "staged"
    assert out["data"] == json_reference(oracle_values(dtype, shape, want)[1:5, 2:13:2])
    s, _ = stats.tensor_stats(reader, chunk_elems=10)
    v = as_f64(oracle_values(dtype, shape, want))
    fin = v[np.isfinite(v)]
    assert s["finite_count"] == fin.size and s["nan_count"] == int(np.isnan(v).sum())
    if fin.size:
        assert (s["min"], s["max"]) == (fin.min(), fin.max())


def test_overlay_mid_element_and_overlapping_runs(overlay_model) -> None:
    model, tensors = overlay_model
    runs = [
        (2, b"\xAA" * 4),  # starts mid-element, ends mid-element
        (4, b"\xBB\xBB"),  # overlaps the first: later wins
        (40, b"\x11" * 8),
        (36, b"\x22" * 6),  # an earlier offset listed later: still wins where they overlap
    ]
    for dtype in OVERLAY_DTYPES:
        n = len(tensors[dtype][2])
        check_overlay(model, tensors, dtype, runs + [(n - 1, b"\x7F")])  # and the very last byte
    want = apply_runs(tensors["F32"][2], runs)
    assert want[2:6] == b"\xAA\xAA\xBB\xBB" and want[36:48] == b"\x22" * 6 + b"\x11" * 6
    assert TensorReader(model.tensor("F32"), runs).read_bytes(0, 48) == want[:48]


def test_overlay_rank0_and_errors(tmp_path: Path) -> None:
    path = write_model(tmp_path / "s.safetensors", {"s": ("F32", (), np.float32(1.0).tobytes())})
    with open_model(path) as model:
        ref = model.tensor("s")
        r = TensorReader(ref, [(3, b"\xBF")])  # the sign/exponent byte: 3F800000 -> BF800000
        assert r.read_values(()) == np.float32(-1.0)
        assert slicing.read_slice(r, {})["data"] == -1.0
        for runs in ([(-1, b"\0")], [(3, b"\0\0")], [(4, b"\0")]):
            with pytest.raises(InvalidRequest):
                TensorReader(ref, runs)
        with pytest.raises(InvalidRequest):
            TensorReader(ref).read_bytes(2, 3)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    dtype=st.sampled_from(OVERLAY_DTYPES),
    runs=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=9)), min_size=1, max_size=6),
)
def test_overlay_property(overlay_model, dtype, runs) -> None:
    model, tensors = overlay_model
    n = len(tensors[dtype][2])
    runs = [(off % n, data[: n - off % n]) for off, data in runs]
    check_overlay(model, tensors, dtype, runs)


# -- hex view -------------------------------------------------------------------------------


def test_hex_view_elements(tmp_path: Path) -> None:
    f32 = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 3.5
    f32[0, 0, 2] = np.nan
    f32[0, 0, 3] = -np.inf
    c64 = np.array([1 + 2j, complex(np.nan, 1), 3], np.complex64)
    f4 = bytes([0x21, 0xF7, 0x0C])
    path = write_model(tmp_path / "h.safetensors", {
        "f32": ("F32", (2, 3, 4), f32.tobytes()),
        "bf16": ("BF16", (3,), np.array([1.0, -2.0, 0.5], ml_dtypes.bfloat16).tobytes()),
        "i8": ("I8", (4,), np.array([-128, -1, 0, 127], np.int8).tobytes()),
        "c64": ("C64", (3,), c64.tobytes()),
        "f4": ("F4", (6,), f4),
        "bool": ("BOOL", (2,), b"\0\1"),
    })
    with open_model(path) as model:
        r = TensorReader(model.tensor("f32"))
        raw = f32.tobytes()
        hv = slicing.hex_view(r, 6, 5)  # bytes 6..10 touch elements 1 and 2
        assert hv["hex"] == raw[6:11].hex().upper() and (hv["offset"], hv["length"]) == (6, 5)
        assert [e["flat_index"] for e in hv["elements"]] == [1, 2]
        e1, e2 = hv["elements"]
        assert e1 == {"flat_index": 1, "index": [0, 0, 1], "byte_offset": 4, "byte_length": 4,
                      "bits_hex": f"{np.float32(-2.5).view(np.uint32):08X}", "value": -2.5}
        assert e2["value"] == "nan" and e2["bits_hex"] == "7FC00000"
        hv = slicing.hex_view(r, 12, 4)
        assert hv["elements"][0]["value"] == "-inf" and hv["elements"][0]["index"] == [0, 0, 3]
        hv = slicing.hex_view(r, 92, 4)
        assert hv["elements"][0]["index"] == [1, 2, 3] and hv["elements"][0]["value"] == 19.5
        hv = slicing.hex_view(r, 90, 100)  # clipped at the end
        assert hv["length"] == 6 and hv["hex"] == raw[90:].hex().upper()
        assert [e["flat_index"] for e in hv["elements"]] == [22, 23]
        hv = slicing.hex_view(r, 96, 10)
        assert (hv["length"], hv["hex"], hv["elements"]) == (0, "", [])

        hv = slicing.hex_view(TensorReader(model.tensor("bf16")), 0, 6)
        assert [e["bits_hex"] for e in hv["elements"]] == ["3F80", "C000", "3F00"]
        assert [e["value"] for e in hv["elements"]] == [1.0, -2.0, 0.5]
        hv = slicing.hex_view(TensorReader(model.tensor("i8")), 0, 4)
        assert [e["value"] for e in hv["elements"]] == [-128, -1, 0, 127]
        assert [e["bits_hex"] for e in hv["elements"]] == ["80", "FF", "00", "7F"]
        hv = slicing.hex_view(TensorReader(model.tensor("c64")), 8, 8)
        assert hv["elements"][0]["value"] == ["nan", 1.0]
        json.dumps(hv, allow_nan=False)
        hv = slicing.hex_view(TensorReader(model.tensor("bool")), 0, 2)
        assert [e["value"] for e in hv["elements"]] == [False, True]

        # F4: element 2i is the low nibble of byte i; one byte holds two elements
        hv = slicing.hex_view(TensorReader(model.tensor("f4")), 1, 1)
        assert hv["hex"] == "F7"
        codes = [0x7, 0xF]
        assert [e["flat_index"] for e in hv["elements"]] == [2, 3]
        assert [e["bits_hex"] for e in hv["elements"]] == ["7", "F"]
        assert [e["byte_offset"] for e in hv["elements"]] == [1, 1]
        expected = np.array(codes, np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64).tolist()
        assert [e["value"] for e in hv["elements"]] == expected == [6.0, -6.0]

        with pytest.raises(TooLarge):
            slicing.hex_view(r, 0, slicing.MAX_HEX_BYTES + 1)
        with pytest.raises(InvalidRequest):
            slicing.hex_view(r, 97, 1)
        with pytest.raises(InvalidRequest):
            slicing.hex_view(r, -1, 1)


# -- overview -------------------------------------------------------------------------------


def overview_reference(matrix: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Block mean over finite values (NaN where none) and block max |finite| (0 where none)."""
    n_rows, n_cols = matrix.shape
    rb, cb = min(rows, n_rows), min(cols, n_cols)
    re = np.linspace(0, n_rows, rb + 1).round().astype(int)
    ce = np.linspace(0, n_cols, cb + 1).round().astype(int)
    mean, absmax = np.full((rb, cb), np.nan), np.zeros((rb, cb))
    for i in range(rb):
        for j in range(cb):
            block = matrix[re[i] : re[i + 1], ce[j] : ce[j + 1]]
            fin = block[np.isfinite(block)]
            if fin.size:
                mean[i, j] = fin.mean()
                absmax[i, j] = np.abs(fin).max()
    return mean, absmax


def assert_overview(out: dict, matrix: np.ndarray, rows: int, cols: int) -> None:
    mean, absmax = overview_reference(matrix, rows, cols)
    assert out["blocks"] == list(mean.shape)
    got_mean = np.array([[np.nan if v is None else v for v in row] for row in out["mean"]], dtype=np.float64)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-12, atol=1e-300)
    assert np.array_equal(np.array(out["absmax"], dtype=np.float64), absmax)
    fin = mean[np.isfinite(mean)]
    assert out["min_mean"] == pytest.approx(fin.min(), rel=1e-12)
    assert out["max_mean"] == pytest.approx(fin.max(), rel=1e-12)
    assert out["max_absmax"] == absmax.max()
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("chunk_elems", [1 << 20, 97])
def test_overview_matches_numpy(tmp_path: Path, chunk_elems: int) -> None:
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((100, 70)) * 3).astype(np.float32)
    a[0:12, 0:4] = np.nan  # block (0, 0) holds no finite value
    a[50, 50], a[70, 3] = np.inf, -np.inf
    b = rng.standard_normal((4, 25, 30)).astype(np.float16)
    v = rng.standard_normal(500).astype(ml_dtypes.bfloat16)
    c = (rng.standard_normal((9, 11)) + 1j * rng.standard_normal((9, 11))).astype(np.complex64)
    f4 = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    i8 = rng.integers(-128, 128, (33, 17), dtype=np.int8)
    path = write_model(tmp_path / "o.safetensors", {
        "a": ("F32", a.shape, a.tobytes()),
        "b": ("F16", b.shape, b.tobytes()),
        "v": ("BF16", v.shape, v.tobytes()),
        "c": ("C64", c.shape, c.tobytes()),
        "f4": ("F4", (20, 16), f4.tobytes()),
        "i8": ("I8", i8.shape, i8.tobytes()),
        "s": ("F32", (), np.float32(-7.5).tobytes()),
        "bool": ("BOOL", (4, 4), np.eye(4, dtype=np.uint8).tobytes()),
    })
    with open_model(path) as model:
        def ov(name, rows=64, cols=64):
            out = slicing.overview(TensorReader(model.tensor(name)), rows, cols, chunk_elems=chunk_elems)
            assert out["sampled"] is False
            return out

        out = ov("a", 8, 16)
        assert out["mean"][0][0] is None and out["absmax"][0][0] == 0.0
        assert out["matrix_shape"] == [100, 70] and out["rows_read"] == 100
        assert_overview(out, a.astype(np.float64), 8, 16)
        assert_overview(ov("b", 7, 5), b.reshape(100, 30).astype(np.float64), 7, 5)  # rank 3 folds
        assert_overview(ov("v"), v.reshape(1, 500).astype(np.float64), 64, 64)
        assert_overview(ov("c", 4, 4), np.abs(c).astype(np.float64), 4, 4)  # magnitudes
        f4_vals = f4_codes(f4.tobytes(), (20, 16)).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
        assert_overview(ov("f4", 6, 5), f4_vals, 6, 5)
        assert_overview(ov("i8", 5, 6), i8.astype(np.float64), 5, 6)
        assert_overview(ov("bool"), np.eye(4), 64, 64)
        out = ov("s")
        assert (out["blocks"], out["mean"], out["absmax"]) == ([1, 1], [[-7.5]], [[7.5]])


def test_overview_sampled_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    # every row of a 200-row block is the same row: sampled rows give the exact block means
    block_rows = rng.standard_normal((10, 16)).astype(np.float32)
    a = np.repeat(block_rows, 200, axis=0)
    path = write_model(tmp_path / "big.safetensors", {"a": ("F32", a.shape, a.tobytes())})
    with open_model(path) as model:
        reader = TensorReader(model.tensor("a"))
        out = slicing.overview(reader, 10, 4, max_elements=4000)
        assert out["sampled"] is True
        assert out["rows_read"] == 250  # 4000 elements / 16 columns
        assert_overview(out, a.astype(np.float64), 10, 4)
        full_out = slicing.overview(reader, 10, 4)
        assert full_out["sampled"] is False and full_out["rows_read"] == 2000
        np.testing.assert_allclose(np.array(out["mean"]), np.array(full_out["mean"]), rtol=1e-12)

        with pytest.raises(InvalidRequest):
            slicing.overview(reader, 0, 4)
        with pytest.raises(InvalidRequest):
            slicing.overview(reader, 4, 1025)


def test_overview_empty_tensor(tmp_path: Path) -> None:
    path = write_model(tmp_path / "e.safetensors", {"e": ("F32", (0, 5), b"")})
    with open_model(path) as model:
        out = slicing.overview(TensorReader(model.tensor("e")))
        assert out["matrix_shape"] == [0, 5] and out["mean"] == [] and out["max_absmax"] is None


# -- statistics -----------------------------------------------------------------------------

PCTS = stats.DEFAULT_PERCENTILES + (0.0, 100.0, 50.0, 33.3)


def exact_percentiles(finite_sorted: np.ndarray, pcts) -> dict[str, float]:
    """numpy's 'linear' percentile from exact order statistics (rank h = (n-1)p/100). On an
    element (no interpolation) the element itself: for integers the exact int."""
    s, n = finite_sorted, finite_sorted.size
    out = {}
    for p in pcts:
        h = (n - 1) * p / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        a, b = (int(s[lo]), int(s[hi])) if s.dtype.kind in "iu" else (float(s[lo]), float(s[hi]))
        out[f"p{p:g}"] = a if h == lo else a + (h - lo) * (b - a)
    return out


def check_stats(s: dict, values: np.ndarray, dtype: str) -> None:
    """`values` in the dtype's own numpy type (complex: described by magnitude)."""
    v = as_f64(values).reshape(-1)
    fin_mask = np.isfinite(v)
    fin = v[fin_mask]
    assert s["dtype"] == dtype and s["numel"] == v.size
    assert s["nan_count"] == int(np.isnan(v).sum())
    assert s["posinf_count"] == int((v == np.inf).sum()) and s["neginf_count"] == int((v == -np.inf).sum())
    assert s["inf_count"] == s["posinf_count"] + s["neginf_count"]
    assert s["finite_count"] == fin.size
    assert s["sparse_count"] == int((np.abs(fin) <= stats.SPARSITY_THRESHOLD).sum())
    assert s["sparsity"] == (s["sparse_count"] / v.size if v.size else 0.0)
    if not fin.size:
        assert s["min"] is None and s["percentiles"] == {}
        return
    if values.dtype.kind in "iu":  # integers: exact Python ints, never rounded through float64
        ordered = np.sort(values.reshape(-1))
        assert (s["min"], s["max"]) == (int(ordered[0]), int(ordered[-1]))
        assert type(s["min"]) is int and type(s["max"]) is int
        assert s["sum"] == int(values.reshape(-1).astype(object).sum())
    else:
        ordered = np.sort(fin)
        assert (s["min"], s["max"]) == (fin.min(), fin.max())
    assert s["abs_max"] == max(abs(s["min"]), abs(s["max"]))
    scale = float(np.abs(fin).mean()) or 1.0
    assert abs(s["mean"] - fin.mean()) <= 1e-9 * scale
    np.testing.assert_allclose(s["var"], fin.var(), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(s["std"], fin.std(), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(s["l2_norm"], np.sqrt(np.dot(fin, fin)), rtol=1e-12)
    # percentiles: exact order statistics (bit for bit against the reference formula) ...
    want = exact_percentiles(ordered, PCTS)
    assert s["percentiles"] == want
    # ... and the formula is numpy's (up to rounding in the interpolation itself)
    numpy_p = np.percentile(np.sort(fin), PCTS)
    for p, ref in zip(PCTS, numpy_p):
        assert abs(want[f"p{p:g}"] - ref) <= 1e-12 * max(abs(ref), abs(want[f"p{p:g}"])) + 1e-300


STATS_DTYPES = [d for d in ALL_DTYPES if d not in F6]


@pytest.mark.parametrize("dtype", STATS_DTYPES)
def test_tensor_stats_match_numpy(dtype, every_dtype, every_dtype_model, tmp_path: Path) -> None:
    _, tensors = every_dtype
    _, shape, raw = tensors[dtype.lower()]
    model = every_dtype_model
    if dtype == "F64":
        # random F64 bytes reach 1e308, where sums overflow float64: use weight-like values with
        # the special patterns planted (see the report on F64 overflow)
        rng = np.random.default_rng(9)
        vals = rng.standard_normal(shape) * 1e3
        vals.reshape(-1)[:len(SPECIAL64)] = np.array(SPECIAL64, np.uint64).view(np.float64)
        raw = vals.tobytes()
        model = open_model(write_model(tmp_path / "f64.safetensors", {"f64": ("F64", shape, raw)}))
    reader = TensorReader(model.tensor(dtype.lower()))
    seen = []
    s, counts = stats.tensor_stats(reader, percentiles=PCTS, chunk_elems=777, progress=lambda d, t: seen.append((d, t)))
    values = oracle_values(dtype, shape, raw)
    check_stats(s, values, dtype)
    assert seen[-1] == (reader.numel, reader.numel) and len(seen) == -(-reader.numel // 777)
    assert (counts is not None) == (DTYPES[dtype].bits <= 16 and dtype != "C64")
    if counts is not None:
        v = as_f64(values).reshape(-1)
        assert s["distinct_values"] == np.unique(v[np.isfinite(v)]).size
        assert counts.counts.sum() == reader.numel

    # histogram: exact, from the pattern counts or one streaming pass, same as np.histogram
    v = as_f64(values).reshape(-1)
    fin = v[np.isfinite(v)]
    h = stats.tensor_histogram(reader, bins=37, counts=counts, chunk_elems=500)
    ref_counts, ref_edges = np.histogram(fin, bins=37, range=(fin.min(), fin.max()))
    if dtype not in ("I64", "U64"):  # above 2**53 float64 rounds the ints np.histogram sees
        assert h["counts"] == ref_counts.tolist()
        assert h["total"] == fin.size
    np.testing.assert_allclose(h["edges"], ref_edges, rtol=1e-15)
    if DTYPES[dtype].kind != "bool":
        h = stats.tensor_histogram(reader, bins=10, lo=-1.0, hi=1.0, counts=counts, chunk_elems=500)
        assert h["counts"] == np.histogram(fin, bins=10, range=(-1.0, 1.0))[0].tolist()
    if dtype == "F64":
        model.close()


INT_EXTREMES = {
    "U64": [2**64 - 1, 2**64 - 2, 2**64 - 1000, 2**63, 0, 7],
    "I64": [-(2**63), 2**63 - 1, 2**63 - 2, -1, 0, 3],
    "U32": [2**32 - 1, 2**32 - 2, 0, 1, 2**31],
    "I32": [-(2**31), 2**31 - 1, -1, 0, 5],
}


def int_oracle(values: list[int]) -> dict:
    """Exact integer statistics with numpy object arrays (Python ints): nothing rounds until the
    one division that makes a float, and that one rounds correctly (Fraction)."""
    from fractions import Fraction

    v = np.array(values, dtype=object)
    n, total, squares = len(values), int(v.sum()), int((v * v).sum())
    var = Fraction(n * squares - total * total, n * n)
    return {"min": int(v.min()), "max": int(v.max()), "sum": total, "mean": float(Fraction(total, n)),
            "var": float(var), "std": math.sqrt(float(var)), "l2_norm": math.sqrt(squares),
            "abs_max": max(abs(int(v.min())), abs(int(v.max())))}


@pytest.mark.parametrize("dtype", sorted(INT_EXTREMES))
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_stats_are_exact(dtype: str, seed: int, tmp_path: Path) -> None:
    """64-bit extremes (U64's 2**64 - 1 used to come back as 2**64, which no U64 holds), and random
    values over the whole range, in chunks and as a slice."""
    np_type = np.dtype(NP_TYPES[dtype]).newbyteorder("<")
    info = np.iinfo(np_type)
    rng = np.random.default_rng(seed)
    random = rng.integers(int(info.min), int(info.max), 5000, dtype=np_type, endpoint=True).tolist()
    values = INT_EXTREMES[dtype] + random if seed else INT_EXTREMES[dtype]
    arr = np.array(values, dtype=np_type)
    path = write_model(tmp_path / "i.safetensors", {"x": (dtype, (arr.size,), arr.tobytes())})
    want = int_oracle(values)
    with open_model(path) as model:
        reader = TensorReader(model.tensor("x"))
        got, _ = stats.tensor_stats(reader, chunk_elems=7, percentiles=(0, 50, 100))
        sliced = stats.array_stats(reader.read_values((slice(0, arr.size),)), DTYPES[dtype], percentiles=(0, 50, 100))
        tails = stats.tail_stats(reader, got, chunk_elems=7)
    for s in (got, sliced):
        assert {k: s[k] for k in want} == want
        assert type(s["min"]) is int and type(s["max"]) is int and type(s["sum"]) is int
        ordered = sorted(values)
        assert s["percentiles"] == {"p0": ordered[0], "p50": exact_percentiles(np.sort(arr), [50])["p50"],
                                    "p100": ordered[-1]}
        # and JSON carries the exact integers
        assert json.loads(json.dumps(s))["max"] == int(info.max) if dtype in ("U64", "U32") else True
    text = json.dumps(got)
    assert f'"max": {max(values)}' in text and f'"min": {min(values)}' in text
    # saturation: exactly the values at the dtype's limits, not every value that rounds to them
    limits = {int(info.max)} if dtype.startswith("U") else {int(info.min), int(info.max)}
    assert tails["saturated_count"] == sum(v in limits for v in values)
    assert tails["saturation_value"] == int(info.max)


def test_integer_sums_past_int64_in_one_chunk(tmp_path: Path) -> None:
    """The exact sums' fast path (one int64 pass) and limb path meet: a chunk whose plain int64
    sum would overflow, and small values whose squares fit."""
    big = np.full(4096, 2**62, np.int64)
    small = np.arange(-2048, 2048, dtype=np.int64)
    path = write_model(tmp_path / "s.safetensors", {"big": ("I64", (4096,), big.tobytes()),
                                                      "small": ("I64", (4096,), small.tobytes())})
    with open_model(path) as model:
        for name, arr in (("big", big), ("small", small)):
            s, _ = stats.tensor_stats(TensorReader(model.tensor(name)))
            want = int_oracle(arr.tolist())
            assert {k: s[k] for k in want} == want, name


def test_histogram_value_range_and_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    a = (rng.standard_normal(5000) * 10).astype(np.float32)
    a[:50] = 0
    b = a.astype(ml_dtypes.bfloat16)
    path = write_model(tmp_path / "h.safetensors", {"a": ("F32", a.shape, a.tobytes()), "b": ("BF16", b.shape, b.tobytes())})
    with open_model(path) as model:
        ra, rb = TensorReader(model.tensor("a")), TensorReader(model.tensor("b"))
        h = stats.tensor_histogram(ra, bins=20, value_range=(-5.0, 5.0), chunk_elems=999)
        assert h["counts"] == np.histogram(a.astype(np.float64), 20, range=(-5.0, 5.0))[0].tolist()

        mag = np.abs(a.astype(np.float64))
        pos = mag[mag > 0]
        h = stats.tensor_histogram(ra, bins=16, log=True, chunk_elems=999)
        edges = np.logspace(np.log10(pos.min()), np.log10(pos.max()), 17)
        # the bins span exactly [min, max] of the magnitudes: 10**log10(x) may round to either side of x
        # (it differs between numpy versions), so the oracle pins the ends as the histogram does
        edges[0], edges[-1] = pos.min(), pos.max()
        assert h["log"] and h["zero_count"] == 50 and h["total"] == 5000
        assert h["counts"] == np.histogram(pos, bins=edges)[0].tolist()

        _, counts = stats.tensor_stats(rb)
        hb = stats.tensor_histogram(rb, bins=16, log=True, counts=counts)
        magb = np.abs(b.astype(np.float64))
        posb = np.log10(magb[magb > 0])
        assert hb["zero_count"] == 50 and sum(hb["counts"]) + 50 == 5000
        assert hb["counts"] == np.histogram(posb, 16, range=(posb.min(), posb.max()))[0].tolist()

        vh = stats.values_histogram(a[:100], bins=8)
        assert vh["counts"] == np.histogram(a[:100].astype(np.float64), 8)[0].tolist()
        for bad in (0, 5000):
            with pytest.raises(InvalidRequest):
                stats.tensor_histogram(ra, bins=bad)


def test_array_stats_of_a_slice(slice_model) -> None:
    model, tensors = slice_model
    for dtype in ("F32", "BF16", "F4", "I16", "C64", "U8"):
        _, shape, raw = tensors[f"{dtype}_2"]
        reader = TensorReader(model.tensor(f"{dtype}_2"))
        index = np.s_[3:30, 2:25:2]
        pats = reader.read_patterns(index)
        s = stats.array_stats(reader.decode(pats), DTYPES[dtype], patterns=pats, percentiles=PCTS)
        check_stats(s, oracle_values(dtype, shape, raw)[index], dtype)


def test_stats_edge_cases(tmp_path: Path) -> None:
    nan32 = np.full(10, np.nan, np.float32)
    path = write_model(tmp_path / "e.safetensors", {
        "empty": ("F32", (0, 4), b""),
        "nan": ("F32", (10,), nan32.tobytes()),
        "nan16": ("F16", (10,), nan32.astype(np.float16).tobytes()),
        "zeros": ("BF16", (8,), bytes(16)),
    })
    with open_model(path) as model:
        for name in ("empty", "nan", "nan16"):
            s, _ = stats.tensor_stats(TensorReader(model.tensor(name)))
            assert s["min"] is None and s["mean"] is None and s["percentiles"] == {}
            assert s["nan_count"] == (0 if name == "empty" else 10)
        s, _ = stats.tensor_stats(TensorReader(model.tensor("zeros")))
        assert (s["sparsity"], s["min"], s["max"], s["std"], s["distinct_values"]) == (1.0, 0.0, 0.0, 0.0, 1)
        for bad in ([], [101.0], [-1.0], list(range(65))):
            with pytest.raises(InvalidRequest):
                stats.tensor_stats(TensorReader(model.tensor("zeros")), percentiles=bad)


def test_sparsity_threshold_is_inclusive(tmp_path: Path) -> None:
    vals = np.array([-0.5, 0.5, 0.25, 0.75, 0.0, -1.0, -0.0, 2.0], np.float32)
    path = write_model(tmp_path / "t.safetensors", {
        "f32": ("F32", (8,), vals.tobytes()),
        "bf16": ("BF16", (8,), vals.astype(ml_dtypes.bfloat16).tobytes()),
    })
    with open_model(path) as model:
        for name in ("f32", "bf16"):  # the streaming path and the pattern-count path
            s, _ = stats.tensor_stats(TensorReader(model.tensor(name)), threshold=0.5)
            assert (s["sparse_count"], s["sparsity"]) == (5, 5 / 8), name
            s, _ = stats.tensor_stats(TensorReader(model.tensor(name)))
            assert s["sparse_count"] == 2, name


# -- rank -----------------------------------------------------------------------------------


def test_rank_tolerance_is_numpys(tmp_path: Path) -> None:
    """Singular values 1, 0.1, 0.01, 0.001 and noise: rank 4 at numpy's float32 tolerance."""
    rng = np.random.default_rng(13)
    u, _ = np.linalg.qr(rng.standard_normal((120, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((80, 4)))
    a = ((u * [1.0, 1e-1, 1e-2, 1e-3]) @ v.T).astype(np.float32)
    path = write_model(tmp_path / "g.safetensors", {"a": ("F32", a.shape, a.tobytes())})
    with open_model(path) as model:
        reader = TensorReader(model.tensor("a"))
        out = tensor_rank(reader, method="exact")
        s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
        assert out["tolerance"] == pytest.approx(s[0] * 120 * np.finfo(np.float32).eps, rel=1e-9)
        assert out["rank"] == np.linalg.matrix_rank(a) == 4
        assert tensor_rank(reader, method="randomized", k=16)["rank"] == 4
        assert tensor_rank(reader, rtol=0.05)["rank"] == 2  # 0.1 > 0.05 > 0.01
        stable = float(np.sum(a.astype(np.float64) ** 2)) / s[0] ** 2
        assert out["stable_rank"] == pytest.approx(stable, rel=1e-9)


def low_rank(rng, m: int, n: int, r: int) -> np.ndarray:
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))


def test_rank_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    mats = {f"r{r}": low_rank(rng, 120, 80, r).astype(np.float32) for r in (1, 5, 17)}
    mats["full"] = rng.standard_normal((60, 40)).astype(np.float32)
    ints_u, ints_v = rng.integers(-3, 4, (50, 3)), rng.integers(-3, 4, (3, 40))
    f16 = (ints_u @ ints_v).astype(np.float16)  # small ints: exact in F16, rank exactly 3
    i8 = (ints_u @ ints_v).astype(np.int8)
    bad = mats["r1"].copy()
    bad[3, 3] = np.nan
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in mats.items()}
    tensors.update({
        "f16": ("F16", f16.shape, f16.tobytes()),
        "i8": ("I8", i8.shape, i8.tobytes()),
        "zero": ("F32", (7, 5), bytes(140)),
        "nan": ("F32", bad.shape, bad.tobytes()),
        "vec": ("F32", (4,), bytes(16)),
    })
    path = write_model(tmp_path / "rank.safetensors", tensors)
    with open_model(path) as model:
        def rank(name, **kw):
            return tensor_rank(TensorReader(model.tensor(name)), **kw)

        for name, r in (("r1", 1), ("r5", 5), ("r17", 17), ("full", 40)):
            assert np.linalg.matrix_rank(mats[name]) == r
            exact = rank(name, method="exact")
            assert exact["rank"] == r and exact["method"] == "exact"
            assert exact["max_rank"] == min(mats[name].shape)
            np.testing.assert_allclose(
                exact["singular_values"], np.linalg.svd(mats[name].astype(np.float64), compute_uv=False), rtol=1e-9, atol=1e-9
            )
            rnd = rank(name, method="randomized", k=48)
            assert rnd["rank"] == r and rnd["method"] == "randomized"
            assert rnd["rank_is_lower_bound"] is False
            assert rank(name)["rank"] == r  # auto
        capped = rank("r17", method="randomized", k=8)
        assert capped["rank"] == 8 and capped["rank_is_lower_bound"] is True
        assert rank("f16")["rank"] == np.linalg.matrix_rank(f16.astype(np.float32)) == 3
        assert rank("i8")["rank"] == 3
        assert rank("zero")["rank"] == 0
        with pytest.raises(InvalidRequest):
            rank("nan")
        with pytest.raises(InvalidRequest):
            rank("vec")
        with pytest.raises(InvalidRequest):
            rank("r1", method="bogus")


# -- sharded models -------------------------------------------------------------------------

SHARDS = {
    "model-00001-of-00003.safetensors": {"embed.weight": ("BF16", (32, 8)), "layers.0.q.weight": ("F32", (8, 8))},
    "model-00002-of-00003.safetensors": {"layers.0.k.weight": ("F16", (8, 4)), "layers.0.norm": ("F32", (8,)),
                                         "layers.0.scale": ("F8_E4M3", (4, 4))},
    "model-00003-of-00003.safetensors": {"lm_head.weight": ("BF16", (32, 8)), "step": ("I64", ())},
}


@pytest.fixture()
def sharded_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(21)
    folder = tmp_path / "sharded-model"
    folder.mkdir()
    weight_map, total = {}, 0
    for shard, spec in SHARDS.items():
        tensors = {}
        for name, (dt, shape) in spec.items():
            raw = rng.bytes(math.prod(shape) * DTYPES[dt].bits // 8)
            tensors[name] = (dt, shape, raw)
            weight_map[name] = shard
            total += len(raw)
        write_model(folder / shard, tensors, metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    return folder


def test_sharded_model_matches_reference(sharded_folder: Path) -> None:
    for target in (sharded_folder, sharded_folder / "model.safetensors.index.json"):
        with open_model(target) as model:
            assert model.kind == "sharded"
            assert model.path == str(sharded_folder / "model.safetensors.index.json")
            assert len(model.files) == 3 and model.warnings == []
            assert model.name == "sharded-model"
            assert sorted(model.tensors) == sorted(n for s in SHARDS.values() for n in s)
            summary = model.summary()
            assert summary["shards"] == 3 and summary["tensor_count"] == 7
            assert summary["dtypes"] == {"BF16": 2, "F32": 2, "F16": 1, "F8_E4M3": 1, "I64": 1}
            for shard, spec in SHARDS.items():
                with safe_open(str(sharded_folder / shard), "pt") as f:
                    for name, (dt, shape) in spec.items():
                        ref = model.tensor(name)
                        assert (ref.dtype.name, ref.shape) == (dt, shape)
                        assert Path(ref.file.path).name == shard
                        t = f.get_tensor(name)
                        assert bytes(ref.raw()) == t.reshape(-1).view(torch.uint8).numpy().tobytes()
                        vals = TensorReader(ref).read_values(full(shape))
                        if dt == "I64":
                            assert np.array_equal(vals, t.numpy())
                        else:
                            assert_same_floats(vals.astype(np.float64), t.to(torch.float64).numpy())
            with pytest.raises(TensorNotFound):
                model.tensor("layers.1.q.weight")


def test_sharded_model_warnings(sharded_folder: Path) -> None:
    shutil.copy(sharded_folder / "model-00003-of-00003.safetensors", sharded_folder / "model-00004-of-00004.safetensors")
    shutil.copy(sharded_folder / "model-00003-of-00003.safetensors", sharded_folder / "other.safetensors")
    with open_model(sharded_folder) as model:
        assert len(model.warnings) == 1
        assert "model-00004-of-00004.safetensors" in model.warnings[0]
        assert "other.safetensors" not in model.warnings[0]
        assert len(model.tensors) == 7  # the extra file is not read

    index_path = sharded_folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] += 1
    index_path.write_text(json.dumps(index))
    with open_model(sharded_folder) as model:
        assert any("total_size" in w for w in model.warnings)
