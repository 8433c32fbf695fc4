"""Staging edits through the API, checked against an independent oracle.

The oracle reads the base tensors with the safetensors library itself, computes every operation in
float64 with numpy, casts with ml_dtypes (rint half-even + saturation for integers), and the test
compares the *bit patterns* the server shows for the staged state (hex view and slice view) with
it. The base model file is never touched (sha256 before and after).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .conftest import assert_error, write_tiny_llama

# -- the oracle -------------------------------------------------------------------------------------

NP = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16),
    "U8": np.dtype(np.uint8),
}
TORCH_NAME = {
    torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8",
    torch.int16: "I16", torch.uint8: "U8",
}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_base(path, name) -> tuple[np.ndarray, str]:
    """A tensor as read by the safetensors library: (array in its own numpy dtype, dtype name)."""
    with safe_open(str(path), "pt") as f:
        t = f.get_tensor(name)
    dtype = TORCH_NAME[t.dtype]
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return np.frombuffer(raw, NP[dtype]).reshape(tuple(t.shape)).copy(), dtype


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(UINT[a.dtype.itemsize])


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> dtype: ml_dtypes/numpy casts for floats; rint half-even and saturation for ints."""
    dt = NP[dtype]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(x), info.min, info.max).astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dt)


def np_index(shape, sl: dict) -> tuple:
    """The viewer's slice parameters (explicit ranges or fixed indices for every dim) as numpy indexing."""
    out = []
    for d in range(len(shape)):
        if f"dim{d}_start" in sl:
            out.append(slice(sl[f"dim{d}_start"], sl[f"dim{d}_end"], sl.get(f"dim{d}_step", 1)))
        else:
            out.append(sl.get(f"dim{d}_idx", 0))
    return tuple(out)


def select_mask(x: np.ndarray, sel: dict | None) -> np.ndarray:
    if not sel:
        return np.ones(x.shape, bool)
    v, mode, p = x.ravel(), sel["mode"], sel["value"]
    if mode == "above_percentile":
        return x > np.percentile(v, p)
    if mode == "below_percentile":
        return x < np.percentile(v, p)
    mags = np.sort(np.abs(v))
    k = int(p)
    if mode == "top_k_abs":
        return np.abs(x) >= mags[::-1][k - 1]
    return np.abs(x) <= mags[k - 1]


def op_values(x: np.ndarray, body: dict, grid: np.ndarray | None) -> np.ndarray:
    op = body["op"]
    if op == "set":
        return np.array([c["value"] for c in body["cells"]], np.float64)
    if op == "fill":
        return np.full_like(x, body["value"])
    if op == "zero":
        return np.zeros_like(x)
    if op == "scale":
        return x * body["factor"]
    if op == "add":
        return x + body["value"]
    if op == "clamp":
        return np.clip(x, body.get("min", -np.inf), body.get("max", np.inf))
    assert op == "normalize"
    t, axis = body["target_norm"], body.get("axis", "rows")
    if grid is None or axis == "all":
        return x * (t / np.linalg.norm(x.ravel()))
    m = x.reshape(grid)
    if axis == "rows":
        return (m * (t / np.linalg.norm(m, axis=1, keepdims=True))).reshape(x.shape)
    return (m * (t / np.linalg.norm(m, axis=0, keepdims=True))).reshape(x.shape)


def oracle(base: np.ndarray, dtype: str, body: dict) -> tuple[np.ndarray, np.ndarray]:
    """The tensor after `body` is applied to `base`, and the mask of the values it targeted."""
    shape = base.shape
    if "cells" in body:
        idx = tuple(np.array([c["index"][d] for c in body["cells"]]) for d in range(base.ndim))
        grid = None
    elif "slice" in body:
        idx = np_index(shape, body["slice"])
        grid = base[idx].shape if base[idx].ndim >= 2 else None
    else:
        idx = (slice(None),) * base.ndim
        grid = (int(np.prod(shape[:-1])), shape[-1]) if base.ndim >= 2 else None
    old = np.array(base[idx])
    x = old.astype(np.float64)
    mask = select_mask(x, body.get("select"))
    new = cast(op_values(x, body, grid), dtype)
    region = np.where(mask, bits(new), bits(old)).view(NP[dtype])
    out = base.copy()
    out[idx] = region
    targeted = np.zeros(shape, bool)
    targeted[idx] = mask
    return out, targeted


def changed_counts(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    values = int(np.count_nonzero(bits(before) != bits(after)))
    b = np.frombuffer(before.tobytes(), np.uint8) != np.frombuffer(after.tobytes(), np.uint8)
    return values, int(np.count_nonzero(b))


# -- talking to the server --------------------------------------------------------------------------


def url_name(name: str) -> str:
    """A tensor name as one path segment: every byte percent-encoded (dots and slashes too)."""
    return "".join(f"%{b:02X}" for b in name.encode("utf-8"))


def staged_bytes(client, name: str, nbytes: int, view: str = "staged") -> bytes:
    r = client.get(f"/api/tensor_hex/{url_name(name)}", params={"view": view, "offset": 0, "length": nbytes})
    assert r.status_code == 200, r.text
    assert r.json()["length"] == nbytes
    return bytes.fromhex(r.json()["hex"])


def staged_array(client, name: str, like: np.ndarray, view: str = "staged") -> np.ndarray:
    return np.frombuffer(staged_bytes(client, name, like.nbytes, view), like.dtype).reshape(like.shape)


def slice_array(client, name: str, dtype: str, params: dict | None = None, view: str = "staged") -> np.ndarray:
    """The slice view's JSON numbers turned back into the dtype (exact: every value is a float64)."""
    r = client.get(f"/api/tensor_slice/{url_name(name)}", params={"view": view, **(params or {})})
    assert r.status_code == 200, r.text
    data = np.array(r.json()["data"], dtype=object)
    if NP[dtype].kind in "iu":
        return data.astype(np.int64).astype(NP[dtype])
    f = np.where(data == None, np.nan, data).astype(np.float64)  # noqa: E711 (JSON null = NaN/inf)
    return cast(f, dtype)


def edit(client, body: dict, status: int = 200) -> dict:
    r = client.post("/api/edit_tensor", json=body)
    assert r.status_code == status, r.text
    return r.json()


def edits(client) -> dict:
    r = client.get("/api/edits")
    assert r.status_code == 200, r.text
    return r.json()


def open_model(client, path) -> dict:
    r = client.post("/api/model", json={"path": str(path)})
    assert r.status_code == 200, r.text
    return r.json()


# -- a model with every dtype the matrix needs -------------------------------------------------------


def _distinct(rng, patterns: np.ndarray, n: int, dtype: str, shape) -> np.ndarray:
    """n values with distinct magnitudes (no ties for percentiles and top-k), random signs."""
    pats = rng.choice(patterns, n, replace=False).astype(UINT[NP[dtype].itemsize])
    vals = pats.view(NP[dtype]).astype(np.float64) * rng.choice([-1.0, 1.0], n)
    return vals.reshape(shape)


def write_mixed(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    # BF16 values in [0.5, 1) (exponent 126); rows 32.. in [1, 2) (exponent 127)
    big = rng.integers(0x3F00, 0x3F80, (64, 64)).astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    big = big * rng.choice([-1.0, 1.0], (64, 64))
    big[32:] *= 2
    t = {
        "bf16.w": torch.tensor(_distinct(rng, np.arange(0x3C00, 0x4000), 192, "BF16", (12, 16))).bfloat16(),
        "f16.w": torch.tensor(_distinct(rng, np.arange(0x2000, 0x4000), 80, "F16", (8, 10))).half(),
        "f8.w": torch.tensor(_distinct(rng, np.arange(0x20, 0x50), 48, "F8_E4M3", (6, 8))).to(torch.float8_e4m3fn),
        "f8e5.w": torch.tensor(_distinct(rng, np.arange(0x30, 0x60), 48, "F8_E5M2", (6, 8))).to(torch.float8_e5m2),
        "i8.w": torch.tensor(rng.choice(np.arange(1, 101), 60, replace=False) * rng.choice([-1, 1], 60))
        .reshape(6, 10).to(torch.int8),
        "f32.w3": torch.tensor(rng.standard_normal((3, 4, 5)), dtype=torch.float32),
        "big.w": torch.tensor(big).bfloat16(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path))
    return path


@pytest.fixture
def mixed(client, tmp_path) -> Path:
    """The mixed-dtype model, opened (and current) in the app of `client`."""
    path = write_mixed(tmp_path / "models" / "mixed" / "model.safetensors")
    open_model(client, path)
    return path


# -- every op x target kind, per dtype ---------------------------------------------------------------

SL = {"dim0_start": 1, "dim0_end": 5, "dim1_start": 2, "dim1_end": 8}
SL_STEP = {"dim0_start": 0, "dim0_end": 6, "dim0_step": 2, "dim1_start": 1, "dim1_end": 8, "dim1_step": 3}
CELLS = [{"index": [0, 1]}, {"index": [2, 3]}, {"index": [5, 7]}]
TARGETS = {
    "cells": ({"cells": CELLS}, "3 cells"),
    "one_cell": ({"cells": [{"index": [4, 6]}]}, "[4, 6]"),
    "slice": ({"slice": SL}, "[1:5, 2:8]"),
    "slice_step": ({"slice": SL_STEP}, "[0:6:2, 1:8:3]"),
    "whole": ({}, None),
    "above_p75": ({"select": {"mode": "above_percentile", "value": 75}}, None),
    "below_p30_of_slice": ({"slice": SL, "select": {"mode": "below_percentile", "value": 30}}, "[1:5, 2:8]"),
    "top5_abs": ({"select": {"mode": "top_k_abs", "value": 5}}, None),
    "bottom4_abs_of_slice": ({"slice": SL, "select": {"mode": "bottom_k_abs", "value": 4}}, "[1:5, 2:8]"),
}
SELECT_LABEL = {
    "above_percentile": "values above p{:g}", "below_percentile": "values below p{:g}",
    "top_k_abs": "top {:g} by |x|", "bottom_k_abs": "bottom {:g} by |x|",
}
TENSOR_OF = {"BF16": "bf16.w", "F16": "f16.w", "F8_E4M3": "f8.w", "F8_E5M2": "f8e5.w", "I8": "i8.w"}
FLOAT_OPS = {
    "fill": [{"value": 0.3}],
    "zero": [{}],
    "scale": [{"factor": 1.7}, {"factor": -0.5}],
    "add": [{"value": 0.1}],
    "clamp": [{"min": -0.5, "max": 0.5}, {"min": 0.25}, {"max": -0.25}],
    "set": [{}],
    "normalize": [{"axis": "rows", "target_norm": 1.0}, {"axis": "cols", "target_norm": 2.0},
                  {"axis": "all", "target_norm": 3.0}],
}
INT_OPS = {  # .5 ties everywhere: rint half-even; saturation at the type's range
    "fill": [{"value": 7.5}],
    "zero": [{}],
    "scale": [{"factor": 2.5}, {"factor": -0.5}],
    "add": [{"value": -0.5}],
    "clamp": [{"min": -20, "max": 20}],
    "set": [{}],
    "normalize": [{"axis": "rows", "target_norm": 100.0}, {"axis": "cols", "target_norm": 60.0},
                  {"axis": "all", "target_norm": 400.0}],
}
SET_VALUES = {"float": [0.3, -1.7, 1e-3], "int": [2.5, -3.5, 1000.0]}


def label_of(body: dict) -> str:
    op = body["op"]
    if op == "scale":
        return f"scale x{body['factor']:g}"
    if op == "add":
        return f"add {body['value']:+g}"
    if op == "fill":
        return f"fill = {body['value']:g}"
    if op == "clamp":
        lo, hi = body.get("min"), body.get("max")
        return f"clamp [{'' if lo is None else format(lo, 'g')}, {'' if hi is None else format(hi, 'g')}]"
    if op == "normalize":
        return f"normalize {body['axis']} to L2 {body['target_norm']:g}"
    return op


def matrix_cases(dtype: str, op: str):
    is_int = NP[dtype].kind in "iu"
    for params in (INT_OPS if is_int else FLOAT_OPS)[op]:
        for tname, (target, where) in TARGETS.items():
            if op == "set" and "cells" not in target:
                continue
            if op == "normalize" and "select" in target:
                continue
            body = {"op": op, **params, **target}
            if op == "set":
                vals = SET_VALUES["int" if is_int else "float"]
                body["cells"] = [{**c, "value": v} for c, v in zip(target["cells"], vals)]
            yield tname, where, body


def expected_stats(values: np.ndarray) -> dict:
    v = values.astype(np.float64)
    return {"numel": v.size, "min": v.min(), "max": v.max(), "mean": v.mean(), "std": v.std(),
            "l2_norm": float(np.sqrt(np.sum(v * v)))}


def check_stats(got: dict, values: np.ndarray, what: str) -> None:
    exp = expected_stats(values)
    assert got["numel"] == exp["numel"], what
    assert got["nan_count"] == 0 and got["inf_count"] == 0, what
    assert got["min"] == exp["min"] and got["max"] == exp["max"], (what, got, exp)
    for k in ("mean", "std", "l2_norm"):
        assert got[k] == pytest.approx(exp[k], rel=1e-9, abs=1e-12), (what, k, got, exp)


@pytest.mark.parametrize("op", list(FLOAT_OPS))
@pytest.mark.parametrize("dtype", list(TENSOR_OF))
def test_op_x_target_matches_oracle(client, mixed, dtype, op):
    name = TENSOR_OF[dtype]
    base, got_dtype = read_base(mixed, name)
    assert got_dtype == dtype
    sha = sha256_file(mixed)
    cases = 0
    for tname, where, body in matrix_cases(dtype, op):
        what = f"{dtype} {tname} {body}"
        body = {"tensor_name": name, **body}
        want, targeted = oracle(base, dtype, body)
        n_values, n_bytes = changed_counts(base, want)
        if n_values == 0:  # e.g. a clamp no target value exceeds: previewed, never staged
            assert edit(client, {**body, "dry_run": True})["preview"]["values_changed"] == 0, what
            assert_error(client.post("/api/edit_tensor", json=body), 409, "nothing_to_do")
            continue
        cases += 1

        # dry run: the full preview, nothing staged
        dry = edit(client, {**body, "dry_run": True})
        assert dry["dry_run"] is True and "edit" not in dry
        p = dry["preview"]
        assert (p["values_changed"], p["bytes_changed"]) == (n_values, n_bytes), what
        assert p["targeted_values"] == int(targeted.sum()), what
        check_stats(p["before"], base[targeted], what + " before")
        check_stats(p["after"], want[targeted], what + " after")
        assert p["rounding"]["dtype"] == dtype
        label = label_of(body)
        if "select" in body:
            label += " on " + SELECT_LABEL[body["select"]["mode"]].format(body["select"]["value"])
        desc = (f"{label}{'' if where is None else ' on ' + where} of {name}: "
                f"{n_values:,} value{'s' if n_values != 1 else ''}, {n_bytes:,} byte{'s' if n_bytes != 1 else ''}")
        assert p["description"] == desc, what

        # staged: the same preview, and the staged views show exactly the oracle's bits
        staged = edit(client, body)
        assert staged["preview"] == p, what
        assert staged["edit"]["description"] == desc
        assert (staged["edit"]["values_changed"], staged["edit"]["bytes_changed"]) == (n_values, n_bytes)
        got = staged_array(client, name, base)
        assert np.array_equal(bits(got), bits(want)), f"{what}: staged bytes differ from the oracle"
        assert np.array_equal(bits(slice_array(client, name, dtype)), bits(want)), what
        assert client.delete("/api/edits").json() == {"cleared": 1}  # the dry run staged nothing
    assert cases >= 2
    assert np.array_equal(bits(slice_array(client, name, dtype, view="base")), bits(base))
    assert sha256_file(mixed) == sha


def test_normalize_reaches_target_norm(client, mixed):
    """Beyond bit equality with the oracle: the rows really have (about) the asked norm."""
    base, _ = read_base(mixed, "f32.w3")
    edit(client, {"tensor_name": "f32.w3", "op": "normalize", "axis": "rows", "target_norm": 2.0})
    got = staged_array(client, "f32.w3", base).astype(np.float64).reshape(12, 5)  # 3-D: leading dims fold
    assert np.allclose(np.linalg.norm(got, axis=1), 2.0, rtol=1e-6)
    client.delete("/api/edits")
    sl = {"dim0_idx": 2, "dim1_start": 0, "dim1_end": 4, "dim2_start": 1, "dim2_end": 5}
    body = {"tensor_name": "f32.w3", "op": "normalize", "axis": "cols", "target_norm": 0.5, "slice": sl}
    want, _ = oracle(base, "F32", body)
    r = edit(client, body)
    assert r["preview"]["description"].startswith("normalize cols to L2 0.5 on [2, 0:4, 1:5] of f32.w3: 16 values")
    got = staged_array(client, "f32.w3", base)
    assert np.array_equal(bits(got), bits(want))
    assert np.allclose(np.linalg.norm(got[2, 0:4, 1:5].astype(np.float64), axis=0), 0.5, rtol=1e-6)
    assert np.array_equal(bits(got[:2]), bits(base[:2]))  # other planes untouched
    data = slice_array(client, "f32.w3", "F32", {"dim0_idx": 2, "dim1_start": 0, "dim1_end": 4,
                                                 "dim2_start": 0, "dim2_end": 5})
    assert np.array_equal(bits(data), bits(want[2]))


def test_bf16_rounds_to_nearest_even(client, mixed):
    """Exact ties in float64 round to the even pattern; the preview counts what was rounded."""
    base, _ = read_base(mixed, "bf16.w")
    one = 1.0 + 2.0**-8  # halfway between 1 and the next BF16 (1 + 2^-7): ties to 1.0
    three = 1.0 + 3 * 2.0**-8  # halfway between 1 + 2^-7 and 1 + 2^-6: ties up to 1 + 2^-6
    r = edit(client, {"tensor_name": "bf16.w", "op": "set",
                      "cells": [{"index": [0, 0], "value": one}, {"index": [0, 1], "value": three},
                                {"index": [0, 2], "value": 1e39}, {"index": [0, 3], "value": -0.0}]})
    got = staged_array(client, "bf16.w", base)
    assert bits(got[0, :4]).tolist() == [0x3F80, 0x3F82, 0x7F80, 0x8000]
    assert r["preview"]["rounding"] == {"rounded": 3, "overflowed": 1, "dtype": "BF16"}


def test_f8_e4m3_overflow_is_nan_like_ml_dtypes(client, mixed):
    base, _ = read_base(mixed, "f8.w")
    r = edit(client, {"tensor_name": "f8.w", "op": "scale", "factor": 100.0})
    want, _ = oracle(base, "F8_E4M3", {"op": "scale", "factor": 100.0})
    got = staged_array(client, "f8.w", base)
    assert np.array_equal(bits(got), bits(want))
    n_nan = int(np.isnan(want.astype(np.float64)).sum())
    assert n_nan > 0 and r["preview"]["rounding"]["overflowed"] == n_nan
    assert r["preview"]["after"]["nan_count"] == n_nan
    assert set(bits(got)[np.isnan(got.astype(np.float64))].tolist()) <= {0x7F, 0xFF}


def test_int8_half_even_and_saturation(client, mixed):
    base, _ = read_base(mixed, "i8.w")
    cells = [([0, 0], 2.5), ([0, 1], 3.5), ([0, 2], -2.5), ([0, 3], 1000.0), ([0, 4], -1000.0), ([0, 5], -0.5)]
    edit(client, {"tensor_name": "i8.w", "op": "set", "cells": [{"index": i, "value": v} for i, v in cells]})
    got = staged_array(client, "i8.w", base)
    assert got[0, :6].tolist() == [2, 4, -2, 127, -128, 0]
    assert got[0, 6:].tolist() == base[0, 6:].tolist()


# -- write_hex -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(TENSOR_OF))
def test_write_hex_at_byte_offset(client, mixed, dtype):
    name = TENSOR_OF[dtype]
    base, _ = read_base(mixed, name)
    raw = bytearray(base.tobytes())
    off, data = 3, bytes([0x12, 0x34, raw[5], 0x56])  # byte 5 keeps its value: 3 bytes change
    want = bytearray(raw)
    want[off : off + len(data)] = data
    want_arr = np.frombuffer(bytes(want), base.dtype).reshape(base.shape)
    n_values, n_bytes = changed_counts(base, want_arr)
    body = {"tensor_name": name, "op": "write_hex", "offset": off, "hex": "12 34 " + data[2:].hex()}
    dry = edit(client, {**body, "dry_run": True})["preview"]
    assert (dry["values_changed"], dry["bytes_changed"]) == (n_values, 3)
    assert dry["description"] == f"write 4 bytes at offset 3 of {name}: 3 bytes changed"
    assert edits(client)["edits"] == []
    r = edit(client, body)
    assert r["edit"]["bytes_changed"] == n_bytes == 3
    assert staged_bytes(client, name, len(raw)) == bytes(want)
    assert np.array_equal(bits(slice_array(client, name, dtype)), bits(want_arr))


def test_write_hex_errors_stage_nothing(client, mixed):
    nbytes = 12 * 16 * 2
    for body, status, field in [
        ({"offset": 0, "hex": "ABC"}, 400, "hex"),
        ({"offset": 0, "hex": "XYZW"}, 400, "hex"),
        ({"offset": 0, "hex": ""}, 400, "hex"),
        ({"offset": nbytes - 1, "hex": "0102"}, 400, "offset"),
        ({"hex": "0102"}, 400, "offset"),
        ({"offset": -1, "hex": "0102"}, 422, None),
    ]:
        err = assert_error(client.post("/api/edit_tensor", json={"tensor_name": "bf16.w", "op": "write_hex", **body}),
                           status)
        if field:
            assert err["field"] == field, err
    assert edits(client)["edits"] == []


def test_edit_errors_are_4xx_and_stage_nothing(client, mixed):
    name = "bf16.w"
    bad = [
        ({"op": "set", "slice": SL}, 400, "cells"),
        ({"op": "set", "cells": [{"index": [0, 0]}]}, 400, "value"),
        ({"op": "scale"}, 400, "factor"),
        ({"op": "normalize", "target_norm": 1, "select": {"mode": "top_k_abs", "value": 3}}, 400, "select"),
        ({"op": "clamp"}, 400, "min"),
        ({"op": "clamp", "min": 1, "max": 0}, 400, "min"),
        ({"op": "zero", "cells": [{"index": [12, 0]}]}, 400, "outside"),
        ({"op": "zero", "cells": [{"index": [0]}]}, 400, "integer"),
        ({"op": "zero", "cells": [{"index": [1, 1]}, {"index": [1, 1]}]}, 400, "twice"),
        ({"op": "zero", "cells": CELLS, "slice": SL}, 400, "either"),
        ({"op": "zero", "slice": {"dim0_start": 0, "dim0_end": 99}}, 400, "dim0"),
        ({"op": "zero", "select": {"mode": "top_k_abs", "value": 2.5}}, 400, "k"),
        ({"op": "zero", "select": {"mode": "above_percentile", "value": 101}}, 400, "percentile"),
        ({"op": "explode"}, 422, None),
        ({"op": "zero", "bogus": 1}, 422, None),
    ]
    for body, status, text in bad:
        err = assert_error(client.post("/api/edit_tensor", json={"tensor_name": name, **body}), status)
        if text:
            assert text in err["message"] or text == err.get("field"), (body, err)
    assert_error(client.post("/api/edit_tensor", json={"tensor_name": "no.such", "op": "zero"}),
                 404, "tensor_not_found")
    # an edit that changes no bit is refused, not staged
    assert_error(client.post("/api/edit_tensor", json={"tensor_name": name, "op": "scale", "factor": 1}),
                 409, "nothing_to_do")
    assert_error(client.post("/api/edit_tensor", json={
        "tensor_name": name, "op": "zero", "select": {"mode": "above_percentile", "value": 100}}), 409, "nothing_to_do")
    assert edits(client) == {"model": "mixed", "edits": [], "undone": [], "staged_tensors": {}}


def test_description_format_of_the_issue(client, mixed):
    """"scale x0.5 on [0:32, 0:32] of ...: 1,024 values, 2,048 bytes" (BF16 in [0.5, 1): both bytes change)."""
    body = {"tensor_name": "big.w", "op": "scale", "factor": 0.5,
            "slice": {"dim0_start": 0, "dim0_end": 32, "dim1_start": 0, "dim1_end": 32}}
    r = edit(client, body)
    assert r["edit"]["description"] == "scale x0.5 on [0:32, 0:32] of big.w: 1,024 values, 2,048 bytes"
    # the byte count is of bytes that differ: in [1, 2) halving flips only the low byte
    body["slice"] = {"dim0_start": 32, "dim0_end": 64, "dim1_start": 32, "dim1_end": 64}
    r = edit(client, body)
    assert r["edit"]["description"] == "scale x0.5 on [32:64, 32:64] of big.w: 1,024 values, 1,024 bytes"
    listed = [e["description"] for e in edits(client)["edits"]]
    assert listed == ["scale x0.5 on [0:32, 0:32] of big.w: 1,024 values, 2,048 bytes",
                      "scale x0.5 on [32:64, 32:64] of big.w: 1,024 values, 1,024 bytes"]
    r = edit(client, {"tensor_name": "big.w", "op": "zero", "cells": [{"index": [0, 0]}]})
    assert r["edit"]["description"] == "zero on [0, 0] of big.w: 1 value, 2 bytes"


# -- stacking, staged views ------------------------------------------------------------------------------


def test_edits_stack_and_every_view_shows_the_staged_state(client, mixed):
    name = "bf16.w"
    base, _ = read_base(mixed, name)
    b1 = {"tensor_name": name, "op": "scale", "factor": 3.0, "slice": SL}
    b2 = {"tensor_name": name, "op": "add", "value": 0.25, "select": {"mode": "top_k_abs", "value": 7}}
    b3 = {"tensor_name": name, "op": "clamp", "min": -1.0, "max": 1.0,
          "slice": {"dim0_start": 0, "dim0_end": 12, "dim1_start": 4, "dim1_end": 6}}
    state = base
    for b in (b1, b2, b3):
        want, _ = oracle(state, "BF16", b)  # each edit is computed on the staged state before it
        r = edit(client, b)
        assert r["preview"]["values_changed"] == changed_counts(state, want)[0]
        state = want
        assert np.array_equal(bits(staged_array(client, name, base)), bits(state))
    assert np.array_equal(bits(slice_array(client, name, "BF16")), bits(state))
    assert np.array_equal(bits(staged_array(client, name, base, view="base")), bits(base))

    # stats: whole tensor and a slice, staged vs base
    v = state.astype(np.float64)
    s = client.get(f"/api/tensor_stats/{name}", params={"view": "staged"}).json()
    assert s["view"] == "staged" and s["min"] == v.min() and s["max"] == v.max()
    assert s["mean"] == pytest.approx(v.mean(), rel=1e-9) and s["l2_norm"] == pytest.approx(np.linalg.norm(v), rel=1e-9)
    sb = client.get(f"/api/tensor_stats/{name}", params={"view": "base"}).json()
    assert sb["max"] == base.astype(np.float64).max() and sb["view"] == "base"
    s = client.get(f"/api/tensor_stats/{name}", params={"view": "staged", **SL}).json()
    assert s["numel"] == 24 and s["max"] == v[1:5, 2:8].max() and s["min"] == v[1:5, 2:8].min()

    # hex: elements decoded from the staged bytes
    h = client.get(f"/api/tensor_hex/{name}", params={"view": "staged", "offset": 32 + 4, "length": 6}).json()
    assert h["view"] == "staged" and bytes.fromhex(h["hex"]) == state.tobytes()[36:42]
    assert [e["value"] for e in h["elements"]] == v.ravel()[18:21].tolist()
    assert [int(e["bits_hex"], 16) for e in h["elements"]] == bits(state).ravel()[18:21].tolist()

    # one edit's runs: original bytes are the state it was made on, new bytes what it wrote
    e1 = edits(client)["edits"][0]
    detail = client.get(f"/api/edits/{e1['id']}").json()
    first, _ = oracle(base, "BF16", b1)
    for run in detail["runs"]:
        o, n = run["offset_bytes"], run["length"]
        assert bytes.fromhex(run["original_hex"]) == base.tobytes()[o : o + n]
        assert bytes.fromhex(run["new_hex"]) == first.tobytes()[o : o + n]
    assert detail["run_count"] == len(detail["runs"]) == 4  # one per row of the 4-row slice
    assert edits(client)["staged_tensors"] == {name: 3}


def test_base_file_is_never_written(client, tiny_model):
    sha, mtime = sha256_file(tiny_model), os.stat(tiny_model).st_mtime_ns
    name = "model.layers.0.mlp.down_proj.weight"
    edit(client, {"tensor_name": name, "op": "fill", "value": 1.0})
    edit(client, {"tensor_name": name, "op": "write_hex", "offset": 0, "hex": "FFFF"})
    client.post("/api/edits/undo")
    client.post("/api/edits/redo")
    client.post("/api/patches", json={"name": "p"})
    client.delete("/api/edits")
    client.post("/api/patches/p/load")
    assert (sha256_file(tiny_model), os.stat(tiny_model).st_mtime_ns) == (sha, mtime)


# -- revert, undo, redo -----------------------------------------------------------------------------------

DOWN = "model.layers.0.mlp.down_proj.weight"  # BF16 [16, 32] in the tiny model


def _sl(r0, r1, c0, c1):
    return {"dim0_start": r0, "dim0_end": r1, "dim1_start": c0, "dim1_end": c1}


@pytest.fixture
def three_edits(client, tiny_model):
    """#1 scale [0:4, 0:8]; #2 add on [8:10, 0:4] (apart); #3 fill on [2:6, 4:12] (on top of #1)."""
    base, _ = read_base(tiny_model, DOWN)
    bodies = [
        {"tensor_name": DOWN, "op": "scale", "factor": 2.0, "slice": _sl(0, 4, 0, 8)},
        {"tensor_name": DOWN, "op": "add", "value": 1.0, "slice": _sl(8, 10, 0, 4)},
        {"tensor_name": DOWN, "op": "fill", "value": 0.0, "slice": _sl(2, 6, 4, 12)},
    ]
    ids = [edit(client, b)["edit"]["id"] for b in bodies]
    return base, bodies, ids


def chain(base, *bodies):
    for b in bodies:
        base, _ = oracle(base, "BF16", b)
    return base


def state_of(client) -> tuple:
    e = edits(client)
    return ([(x["id"], x["description"]) for x in e["edits"]], [x["id"] for x in e["undone"]])


def test_revert_refused_names_the_blocking_edit_and_changes_nothing(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    before, staged = state_of(client), staged_array(client, DOWN, base)
    assert np.array_equal(bits(staged), bits(chain(base, b1, b2, b3)))
    err = assert_error(client.post(f"/api/edits/{i1}/revert"), 409, "conflict")
    assert f"#{i3}" in err["message"] and f"#{i2}" not in err["message"]
    assert [b["id"] for b in err["blocking"]] == [i3] and err["edit_id"] == i1
    assert state_of(client) == before
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(staged))

    # an edit nothing stacks on reverts alone, even from the middle
    r = client.post(f"/api/edits/{i2}/revert")
    assert r.status_code == 200 and r.json()["reverted"]["id"] == i2
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b3)))
    # revert the top, then the one under it: back to base
    assert client.post(f"/api/edits/{i3}/revert").status_code == 200
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1)))
    assert client.post(f"/api/edits/{i1}/revert").status_code == 200
    assert staged_array(client, DOWN, base).tobytes() == base.tobytes()
    assert state_of(client) == ([], [])
    assert_error(client.post(f"/api/edits/{i1}/revert"), 404, "edit_not_found")
    assert_error(client.post("/api/edits/999/revert"), 404, "edit_not_found")


def test_undo_redo(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    r = client.post("/api/edits/undo")
    assert r.status_code == 200 and r.json()["undone"]["id"] == i3
    assert state_of(client)[1] == [i3]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2)))
    assert client.post("/api/edits/undo").json()["undone"]["id"] == i2
    assert state_of(client)[1] == [i2, i3]  # most recently undone first
    assert client.post("/api/edits/redo").json()["redone"]["id"] == i2
    assert client.post("/api/edits/redo").json()["redone"]["id"] == i3
    assert [i for i, _ in state_of(client)[0]] == [i1, i2, i3]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b3)))
    assert_error(client.post("/api/edits/redo"), 409, "nothing_to_do")

    # undo an undone edit? no: revert refuses it; a new edit clears the redo stack
    client.post("/api/edits/undo")
    assert_error(client.post(f"/api/edits/{i3}/revert"), 404, "edit_not_found")
    b4 = {"tensor_name": DOWN, "op": "zero", "cells": [{"index": [15, 31]}]}
    edit(client, b4)
    assert state_of(client)[1] == []
    assert_error(client.post("/api/edits/redo"), 409, "nothing_to_do")
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b1, b2, b4)))
    for _ in range(3):
        assert client.post("/api/edits/undo").status_code == 200
    assert staged_array(client, DOWN, base).tobytes() == base.tobytes()
    assert_error(client.post("/api/edits/undo"), 409, "nothing_to_do")


def test_redo_refused_when_its_bytes_changed_and_nothing_happens(client, three_edits):
    base, (b1, b2, b3), (i1, i2, i3) = three_edits
    client.post("/api/edits/undo")  # #3 (made on top of #1) is undone...
    assert client.post(f"/api/edits/{i1}/revert").status_code == 200  # ...so #1 may go
    before = state_of(client)
    err = assert_error(client.post("/api/edits/redo"), 409, "conflict")
    assert f"#{i3}" in err["message"]
    assert state_of(client) == before == ([(i2, before[0][0][1])], [i3])
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b2)))


def test_edit_ids_are_never_reused(client, three_edits):
    """A stale id (a UI's button, a script's saved selection) must not name a newer edit."""
    _, _, (i1, i2, i3) = three_edits
    assert client.post(f"/api/edits/{i3}/revert").status_code == 200
    i4 = edit(client, {"tensor_name": DOWN, "op": "zero", "cells": [{"index": [15, 31]}]})["edit"]["id"]
    client.post("/api/edits/undo")
    client.delete("/api/edits")
    i5 = edit(client, {"tensor_name": DOWN, "op": "zero", "cells": [{"index": [15, 30]}]})["edit"]["id"]
    assert i3 < i4 < i5
    assert_error(client.post(f"/api/edits/{i3}/revert"), 404, "edit_not_found")


# -- scoping ----------------------------------------------------------------------------------------------


def test_edits_belong_to_their_model(client, tiny_model, tmp_path):
    other = tmp_path / "models" / "other" / "model.safetensors"
    other.parent.mkdir(parents=True)
    shutil.copyfile(tiny_model, other)  # same names, same bytes: only the file tells them apart
    base, _ = read_base(tiny_model, DOWN)
    b_a = {"tensor_name": DOWN, "op": "fill", "value": 2.0, "slice": _sl(0, 2, 0, 2)}
    edit(client, b_a)
    a_state = chain(base, b_a)

    open_model(client, other)
    e = edits(client)
    assert e["model"] == "other" and e["edits"] == [] and e["staged_tensors"] == {}
    assert staged_array(client, DOWN, base).tobytes() == base.tobytes()
    b_b = {"tensor_name": DOWN, "op": "fill", "value": -3.0, "cells": [{"index": [5, 5]}]}
    edit(client, b_b)
    assert_error(client.post("/api/edits/1/revert"), 404, "edit_not_found")  # model A's edit

    open_model(client, tiny_model)
    e = edits(client)
    assert [x["description"].split(" of ")[0] for x in e["edits"]] == ["fill = 2 on [0:2, 0:2]"]
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(a_state))
    client.post("/api/edits/undo")
    open_model(client, other)
    assert len(edits(client)["edits"]) == 1 and edits(client)["undone"] == []
    assert np.array_equal(bits(staged_array(client, DOWN, base)), bits(chain(base, b_b)))


# -- hostile tensor names ------------------------------------------------------------------------------------

HOSTILE = ["../../etc/passwd", "/abs/path/x", "..", "C:\\win\\sys", "nul\x00name", "ünï/cødé ✓ 名前", "%2e%2e%2f",
           "a b?c#d"]


def test_hostile_tensor_names_are_only_data(client, tmp_path):
    path = tmp_path / "models" / "hostile" / "model.safetensors"
    path.parent.mkdir(parents=True)
    names = HOSTILE + ["line\nbreak"]
    save_file({n: torch.arange(6, dtype=torch.float32).reshape(2, 3) + i for i, n in enumerate(names)}, str(path))
    open_model(client, path)
    listed = {e["name"] for e in client.get("/api/tensors").json()}
    assert listed == set(names)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for n in names:
        base, _ = read_base(path, n)
        r = edit(client, {"tensor_name": n, "op": "scale", "factor": 2.0})
        assert r["edit"]["tensor_names"] == [n]
        assert r["edit"]["description"].startswith(f"scale x2 of {n}: ")
        # a newline: see test_tensor_name_with_newline_is_viewable; '%': Starlette's TestClient
        # percent-decodes paths twice (the real server does not), so the URL cannot name it here
        if "\n" not in n and "%" not in n:
            want, _ = oracle(base, "F32", {"op": "scale", "factor": 2.0})
            assert np.array_equal(staged_array(client, n, base), want)
            assert np.array_equal(slice_array(client, n, "F32"), want)
    assert sorted(x["tensor_names"][0] for x in edits(client)["edits"]) == sorted(names)
    r = client.post("/api/patches", json={"name": "hostile", "description": "names are data"})
    assert r.status_code == 200 and sorted(r.json()["tensors"]) == sorted(names)
    client.delete("/api/edits")
    assert client.post("/api/patches/hostile/load").status_code == 200
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = set(after) - set(before)
    new = {p for p in new if not (p.parent == Path("data") and p.name.startswith("tensor_surgery.db"))}
    assert new <= {Path("patches"), Path("patches/hostile.hexpatch")}, new
    assert not any("passwd" in p.name or p.name in ("path", "x", "sys") for p in after)


def test_tensor_name_with_newline_is_viewable(client, tmp_path):
    path = tmp_path / "models" / "nl" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"line\nbreak": torch.ones(2, 2)}, str(path))
    open_model(client, path)
    r = client.get(f"/api/tensor_slice/{url_name('line' + chr(10) + 'break')}")
    assert r.status_code == 200, r.text


# -- durability: SIGKILL the real server --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`uvicorn --factory tensor_surgery.web.app:create_app` with its settings from the environment."""

    def __init__(self, tmp_path: Path, model: Path) -> None:
        self.env = {**os.environ, "MODEL_PATH": str(model), "DATA_DIR": str(tmp_path / "data"),
                    "PATCH_DIR": str(tmp_path / "patches"), "ALLOWED_ROOTS": str(tmp_path)}
        self.cwd = tmp_path  # no .env of the repository
        self.proc: subprocess.Popen | None = None

    def start(self):
        import httpx

        port = _free_port()
        self.log = open(self.cwd / f"server-{port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "tensor_surgery.web.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, (self.cwd / f"server-{port}.log").read_text()
            try:
                if client.get("/api/model").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


def test_sigkill_loses_no_staged_edit(tmp_path):
    model = write_tiny_llama(tmp_path / "models" / "tiny" / "model.safetensors")
    sha = sha256_file(model)
    base, _ = read_base(model, DOWN)
    server = Server(tmp_path, model)
    bodies = [
        {"tensor_name": DOWN, "op": "scale", "factor": 0.5, "slice": _sl(0, 8, 0, 16)},
        {"tensor_name": DOWN, "op": "add", "value": 0.125, "select": {"mode": "above_percentile", "value": 90}},
        {"tensor_name": DOWN, "op": "set", "cells": [{"index": [3, 3], "value": 7.0}]},
        {"tensor_name": DOWN, "op": "write_hex", "offset": 100, "hex": "0080FF7F"},
        {"tensor_name": "model.norm.weight", "op": "clamp", "max": 0.5},
    ]
    http = server.start()
    descriptions = []
    try:
        for b in bodies:
            r = http.post("/api/edit_tensor", json=b)
            assert r.status_code == 200, r.text
            descriptions.append(r.json()["edit"]["description"])
        r = http.post("/api/edits/undo")  # the redo stack is durable too
        assert r.status_code == 200
    finally:
        server.kill()  # straight after the last response
        http.close()
    assert server.proc.returncode == -signal.SIGKILL

    http = server.start()
    try:
        e = http.get("/api/edits").json()
        assert [x["description"] for x in e["edits"]] == descriptions[:-1]
        assert [x["description"] for x in e["undone"]] == descriptions[-1:]
        state = base
        for b in bodies[:3]:
            state, _ = oracle(state, "BF16", b)
        raw = bytearray(state.tobytes())
        raw[100:104] = bytes.fromhex("0080FF7F")
        r = http.get(f"/api/tensor_hex/{DOWN}", params={"view": "staged", "offset": 0, "length": len(raw)})
        assert bytes.fromhex(r.json()["hex"]) == bytes(raw)
        assert http.post("/api/edits/redo").status_code == 200
        norm = http.get("/api/tensor_slice/model.norm.weight", params={"view": "staged"}).json()["data"]
        assert norm == [0.5] * 16
    finally:
        server.kill()
        http.close()
    http = server.start()
    try:
        assert [x["description"] for x in http.get("/api/edits").json()["edits"]] == descriptions
    finally:
        server.kill()
        http.close()
    assert sha256_file(model) == sha


def test_sigkill_mid_stream_keeps_every_acknowledged_edit(tmp_path):
    """Edits stream in; the server is killed while one is in flight: every answered edit survives,
    in order, and at most the one in flight is there besides (it committed; its answer was lost)."""
    import httpx

    model = write_tiny_llama(tmp_path / "models" / "tiny" / "model.safetensors")
    server = Server(tmp_path, model)
    http = server.start()
    acked: list[str] = []

    def stream():
        for i in range(10_000):
            body = {"tensor_name": DOWN, "op": "set", "cells": [{"index": [i // 32 % 16, i % 32], "value": i + 1.0}]}
            try:
                r = http.post("/api/edit_tensor", json=body)
            except httpx.TransportError:
                return
            assert r.status_code == 200, r.text
            acked.append(r.json()["edit"]["description"])

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 15 and time.monotonic() < deadline:
        time.sleep(0.002)
    server.kill()
    t.join(30)
    http.close()
    assert len(acked) >= 15
    http = server.start()
    try:
        persisted = [x["description"] for x in http.get("/api/edits").json()["edits"]]
    finally:
        server.kill()
        http.close()
    assert persisted[: len(acked)] == acked
    assert len(persisted) - len(acked) in (0, 1)


def test_listing_without_runs_agrees_with_the_full_edit(client):
    """GET /api/edits reads no byte runs; its counts must match the edit read in full."""
    a = "model.layers.0.mlp.up_proj.weight"
    b = "model.layers.1.mlp.up_proj.weight"
    for name in (a, b, a):
        r = client.post("/api/edit_tensor", json={"tensor_name": name, "op": "scale", "factor": 3.0})
        assert r.status_code == 200, r.text
    assert client.post("/api/edits/undo").status_code == 200
    listing = client.get("/api/edits").json()
    assert listing["staged_tensors"] == {a: 1, b: 1}
    for e in listing["edits"] + listing["undone"]:
        full = client.get(f"/api/edits/{e['id']}", params={"runs": 10_000}).json()
        assert e["run_count"] == full["run_count"] == len(full["runs"]) > 0
    assert [e["status"] for e in listing["undone"]] == ["undone"]


# -- the edit contract: one definition (surgery/ops.py), published in /openapi.json -------------------

SAMPLE = {"value": 0.25, "factor": 2.0, "min": -0.5, "max": 0.5, "axis": "cols", "target_norm": 3.0,
          "offset": 2, "hex": "0102", "cells": [{"index": [1, 1], "value": 0.5}],
          "slice": {"dim0_start": 0, "dim0_end": 2}, "select": {"mode": "top_k_abs", "value": 2}}


def edit_contract(client) -> tuple[dict, dict]:
    """What the page reads: the EditRequest schema and its select modes, from /openapi.json."""
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/edit_tensor"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EditRequest"}
    return spec["components"]["schemas"]["EditRequest"], spec["components"]["schemas"]["EditSelect"]


def test_openapi_publishes_the_one_edit_contract(client):
    from tensor_surgery.agent.tools import REGISTRY
    from tensor_surgery.surgery import ops

    req, select = edit_contract(client)
    props = req["properties"]
    op = props["op"]
    assert op["enum"] == list(ops.OPS) == ["set", "fill", "zero", "scale", "add", "clamp", "normalize", "write_hex"]
    assert op["x-enum-descriptions"] == [f"{k}: {v.description}" for k, v in ops.OPS.items()]
    assert op["x-op-parameters"]["scale"] == {"description": ops.OPS["scale"].description, "required": ["factor"],
                                             "optional": [], "targets": ["cells", "slice", "select"]}
    assert op["x-op-parameters"]["write_hex"]["targets"] == []
    assert select["properties"]["mode"]["enum"] == list(ops.SELECT_MODES)
    assert len(select["properties"]["mode"]["x-enum-descriptions"]) == len(ops.SELECT_MODES)
    assert props["axis"]["anyOf"][0]["enum"] == list(ops.NORMALIZE_AXES)
    # every field of the API is a field of EditSpec (and the reverse), each described
    import dataclasses

    spec_fields = {f.name for f in dataclasses.fields(ops.EditSpec)} - {"note"}
    assert set(props) == spec_fields | {"dry_run"}
    assert all(props[k].get("description") for k in props), [k for k in props if not props[k].get("description")]
    # every parameter an op names exists
    for name, info in op["x-op-parameters"].items():
        assert set(info["required"] + info["optional"] + info["targets"]) <= set(ops.PARAMS), name
    # the agent's propose_edit takes the same operations and parameters
    agent = REGISTRY["propose_edit"].parameters["properties"]
    assert agent["op"]["enum"] == list(ops.OPS)
    assert set(agent) == {"tensor_name", "op", "rationale", *ops.PARAMS}
    assert agent["select"]["properties"]["mode"]["enum"] == list(ops.SELECT_MODES)
    assert not any(k.startswith("x-") for k in agent["op"])  # providers may refuse unknown keywords


def test_each_op_takes_exactly_the_parameters_the_contract_lists(client, mixed):
    """Built from /openapi.json as the page would: each op with its required parameters previews;
    a parameter the op does not take is refused, naming it, instead of being ignored."""
    req, _ = edit_contract(client)
    contract = req["properties"]["op"]["x-op-parameters"]
    for op, info in contract.items():
        body = {"tensor_name": "f16.w", "op": op, **{k: SAMPLE[k] for k in info["required"] + info["optional"]}}
        if op == "set":
            body["cells"] = SAMPLE["cells"]
        r = client.post("/api/edit_tensor", json={**body, "dry_run": True})
        assert r.status_code == 200, (op, r.text)
        accepted = set(info["required"]) | set(info["optional"]) | set(info["targets"])
        for stray in sorted(set(SAMPLE) - accepted):
            err = assert_error(client.post("/api/edit_tensor", json={**body, stray: SAMPLE[stray], "dry_run": True}),
                               400, "invalid_request")
            assert err["field"] == stray and f"{op} does not take {stray!r}" in err["message"], (op, stray, err)
    assert edits(client)["edits"] == []


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_numbers_are_refused_not_500(client, mixed, number):
    for template in (b'{"tensor_name": "f16.w", "op": "zero", "select": {"mode": "top_k_abs", "value": %s}}',
                     b'{"tensor_name": "f16.w", "op": "scale", "factor": %s}',
                     b'{"tensor_name": "f16.w", "op": "fill", "value": %s}'):
        r = client.post("/api/edit_tensor", content=template % number, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["code"]
    assert edits(client)["edits"] == []


def test_staging_needs_the_journal_overlays_given_to_the_workspace(tmp_path, tiny_model):
    """The workspace's staged view is passed in explicitly; a Staging over a workspace that would
    show base bytes as "staged" (edits computed against the wrong state) is refused."""
    from tensor_surgery.surgery.journal import Journal
    from tensor_surgery.surgery.ops import EditSpec
    from tensor_surgery.surgery.staging import StagedOverlays, Staging
    from tensor_surgery.workspace import Workspace

    from .conftest import make_settings

    settings = make_settings(tmp_path, tiny_model)
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    try:
        with pytest.raises(ValueError, match="overlay_provider=StagedOverlays"):
            Staging(Workspace(settings), journal)
        with pytest.raises(ValueError):
            Staging(Workspace(settings, overlay_provider=StagedOverlays(Journal(f"sqlite:///{tmp_path / 'k.db'}"))),
                    journal)
        ws = Workspace(settings, overlay_provider=StagedOverlays(journal))
        model = ws.open(tiny_model)
        name = "model.norm.weight"
        Staging(ws, journal).edit(model, EditSpec(name, "fill", value=0.5))
        # another workspace over the same journal (the CLI agent's) sees the edit; a plain one does not
        other = Workspace(settings, overlay_provider=StagedOverlays(journal))
        staged = other.reader(name, "staged", other.open(tiny_model))
        assert staged.staged and np.all(staged.read_values((slice(None),)) == 0.5)
        plain = Workspace(settings)
        assert not plain.reader(name, "staged", plain.open(tiny_model)).staged
        for w in (ws, other, plain):
            w.close()
    finally:
        journal.close()


# -- caches: a staged view never gets base numbers ----------------------------------------------------


def test_a_staged_view_never_gets_base_numbers(client, tiny_model):
    """Every cached computation (statistics, histograms, overviews, ranks, the agent's profiles and
    row norms) first filled with base numbers, then asked for the staged view after each edit."""
    from tensor_surgery.agent import tokens
    from tensor_surgery.agent.tools import ToolContext

    w, n = "model.layers.0.mlp.up_proj.weight", "model.norm.weight"  # BF16 32x16 (counted), F32 16 (not)

    def tool(name, **args):
        r = client.post(f"/api/agent/tools/{name}", json=args)
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def fetch(view):
        get = lambda route, name, **p: client.get(f"/api/{route}/{name}", params={"view": view, **p}).json()  # noqa: E731
        up = next(t for t in tool("layer_summary", layer=0, view=view)["tensors"] if t["tensor"] == w)
        return {
            "stats_w": get("tensor_stats", w), "hist_w": get("tensor_histogram", w, bins=8),
            "overview_w": get("tensor_overview", w, rows=4, cols=4), "rank_w": get("tensor_rank", w)["rank"],
            "stats_n": get("tensor_stats", n), "hist_n": get("tensor_histogram", n, bins=8),
            "agent_w": tool("tensor_stats", tensor=w, view=view)["stats"], "agent_rms_w": up["rms"],
        }

    def check_constant(got, w_value, n_value):
        for key, value, numel in (("w", w_value, 32 * 16), ("n", n_value, 16)):
            s = got[f"stats_{key}"]
            assert (s["view"], s["min"], s["max"], s["mean"], s["std"]) == ("staged", value, value, value, 0.0), s
            assert sum(got[f"hist_{key}"]["counts"]) == numel and max(got[f"hist_{key}"]["counts"]) == numel
        assert got["overview_w"]["view"] == "staged" and got["overview_w"]["mean"] == [[w_value] * 4] * 4
        assert got["rank_w"] == 1
        assert (got["agent_w"]["min"], got["agent_w"]["max"], got["agent_rms_w"]) == (w_value, w_value, w_value)

    base = fetch("base")
    ref = read_base(tiny_model, w)[0].astype(np.float64)
    assert base["stats_w"]["max"] == ref.max() and base["rank_w"] == 16
    assert fetch("staged") == base  # nothing staged yet: the staged view is the base

    ws = client.app.state.workspace
    model = ws.model()
    ctx = ToolContext(ws, model)
    np.testing.assert_allclose(tokens.row_norms(ctx, ws.reader(w, "base", model)),
                               np.linalg.norm(ref, axis=1), rtol=1e-6)  # float32 sums

    edit(client, {"tensor_name": w, "op": "fill", "value": 0.5})
    edit(client, {"tensor_name": n, "op": "fill", "value": 2.0})
    check_constant(fetch("staged"), 0.5, 2.0)
    assert np.all(tokens.row_norms(ctx, ws.reader(w, "staged", model)) == 2.0)  # sqrt(16 * 0.25)
    # a later staged state is not served the earlier one's numbers either
    edit(client, {"tensor_name": w, "op": "scale", "factor": 2})
    check_constant(fetch("staged"), 1.0, 2.0)
    assert np.all(tokens.row_norms(ctx, ws.reader(w, "staged", model)) == 4.0)
    assert fetch("base") == base


def test_cache_keys_are_built_in_one_place():
    """`Workspace.cached` takes only keys built by the helpers, and nothing else reaches the cache."""
    import re

    from tensor_surgery import workspace as wsm

    from .conftest import REPO, make_settings

    ws = wsm.Workspace(make_settings(Path("/nonexistent"), Path("/nonexistent/m.safetensors")))
    with pytest.raises(TypeError, match="tensor_cache_key"):
        ws.cached(("stats", "path", None, "t", None), lambda: 1, lambda _: 1)
    callers = [p.relative_to(REPO).as_posix() for p in (REPO / "tensor_surgery").rglob("*.py")
               if re.search(r"\.get_or_compute\(", p.read_text()) and p.name != "workspace.py"]
    assert callers == []
