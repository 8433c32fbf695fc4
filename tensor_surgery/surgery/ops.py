"""Edit operations: pick target elements, compute new values in float64, cast back to the
tensor's dtype with round-to-nearest-even, and turn the changed elements into byte runs.

Targets: explicit cells, a slice (the viewer's parameters), the whole tensor; optionally narrowed
by value (above/below a percentile, the top/bottom k by magnitude). Operations: set (per cell),
fill, zero, scale, add, clamp, normalize (rows, columns or the whole target to a norm), and
write_hex (raw bytes at a byte offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidRequest, TooLarge
from ..store import TensorReader
from ..store.dtypes import decode_f4_at
from ..store.slicing import parse_slice, unravel
from ..store.stats import array_stats
from .runs import changed_runs

MAX_EDIT_ELEMENTS = 1 << 26  # 64M elements: 512 MB of float64 while computing
MAX_CELLS = 100_000
MAX_HEX_EDIT_BYTES = 1 << 20
MAX_DIMS = 16

# -- the contract ---------------------------------------------------------------------------------
# What an edit is, defined once: the operations, the parameters each takes, how it targets values,
# and the JSON schema of every parameter. The API's request model (web/routes_edits.py, and through
# /openapi.json the page) and the agent's propose_edit tool are built from these tables.

TARGETS = ("cells", "slice", "select")  # no cells and no slice: the whole tensor


@dataclass(frozen=True)
class Op:
    description: str
    required: tuple[str, ...] = ()  # parameters it needs
    optional: tuple[str, ...] = ()  # parameters it may take
    targets: tuple[str, ...] = TARGETS  # the target parameters it accepts

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.required + self.optional

    def to_json(self) -> dict:
        return {"description": self.description, "required": list(self.required),
                "optional": list(self.optional), "targets": list(self.targets)}


OPS: dict[str, Op] = {
    "set": Op("write each cell's own value (cells[i].value)", targets=("cells", "select")),
    "fill": Op("set every targeted value to `value`", required=("value",)),
    "zero": Op("set every targeted value to 0"),
    "scale": Op("multiply every targeted value by `factor`", required=("factor",)),
    "add": Op("add `value` to every targeted value", required=("value",)),
    "clamp": Op("clip every targeted value into [min, max] (give min, max or both)", optional=("min", "max")),
    "normalize": Op("scale each row, each column or all of the target (`axis`, default rows) to the L2 norm "
                    "`target_norm`", required=("target_norm",), optional=("axis",), targets=("cells", "slice")),
    "write_hex": Op("write the raw bytes `hex` at byte `offset` of the tensor (the file's bytes: little-endian, "
                    "row-major)", required=("offset", "hex"), targets=()),
}
SELECT_MODES: dict[str, str] = {
    "above_percentile": "the target's values above its value-th percentile (0-100)",
    "below_percentile": "the target's values below its value-th percentile (0-100)",
    "top_k_abs": "the k (value) target values largest in magnitude",
    "bottom_k_abs": "the k (value) target values smallest in magnitude",
}
NORMALIZE_AXES: dict[str, str] = {
    "rows": "each row of the target to the norm",
    "cols": "each column of the target to the norm",
    "all": "the whole target to the norm",
}


def _enum(values: dict[str, str], description: str, **extra) -> dict:
    """A string enum whose values' meanings travel with it (`x-enum-descriptions`, in enum order)."""
    return {"type": "string", "enum": list(values), "description": description,
            "x-enum-descriptions": [f"{k}: {v}" for k, v in values.items()], **extra}


OP_SCHEMA = _enum(
    {k: v.description for k, v in OPS.items()},
    "the operation; `x-op-parameters` lists, per operation, the parameters it needs (required), may take "
    "(optional) and the target parameters it accepts (targets: none means it works on byte offsets)",
    **{"x-op-parameters": {k: v.to_json() for k, v in OPS.items()}},
)
# JSON schema of each parameter (the subset the agent's validator understands, plus x- annotations).
PARAMS: dict[str, dict] = {
    "cells": {
        "type": "array", "maxItems": MAX_CELLS,
        "description": "target: these cells (op=set: each with its new value)",
        "items": {"type": "object", "additionalProperties": False, "required": ["index"], "properties": {
            "index": {"type": "array", "maxItems": MAX_DIMS, "items": {"type": "integer"},
                      "description": "one index per dimension"},
            "value": {"type": "number", "description": "the cell's new value (op=set)"},
        }},
    },
    "slice": {"type": "object", "maxProperties": 3 * MAX_DIMS, "additionalProperties": {"type": "integer"},
              "description": "target: a slice in the viewer's parameters, e.g. {dim0_start: 0, dim0_end: 32, "
                             "dim1_start: 0, dim1_end: 32} (dimN_step too; dimN_idx fixes other dimensions)"},
    "select": {
        "type": "object", "additionalProperties": False, "required": ["mode", "value"],
        "description": "narrow the target (cells, slice or whole tensor) to some of its values",
        "properties": {
            "mode": _enum(SELECT_MODES, "which values of the target"),
            "value": {"type": "number", "description": "the percentile (0-100) or k"},
        },
    },
    "value": {"type": "number", "description": "fill: the value; add: the amount to add"},
    "factor": {"type": "number", "description": "scale: the factor"},
    "min": {"type": "number", "description": "clamp: the lower bound"},
    "max": {"type": "number", "description": "clamp: the upper bound"},
    "axis": _enum(NORMALIZE_AXES, "normalize: what reaches the norm (default rows)"),
    "target_norm": {"type": "number", "minimum": 0, "description": "normalize: the L2 norm to reach"},
    "offset": {"type": "integer", "minimum": 0, "description": "write_hex: byte offset from the tensor's first byte"},
    "hex": {"type": "string", "maxLength": 2 * MAX_HEX_EDIT_BYTES + 1024,
            "description": "write_hex: the new bytes as hex digits (spaces allowed)"},
}


@dataclass
class EditSpec:
    tensor_name: str
    op: str  # one of OPS
    cells: list[dict] | None = None  # [{"index": [i, j, ...], "value": x?}]
    slice: dict[str, int] | None = None  # viewer slice parameters; None with no cells = whole tensor
    select: dict | None = None  # {"mode": one of SELECT_MODES, "value": p or k}
    value: float | None = None  # fill / add
    factor: float | None = None  # scale
    min: float | None = None  # clamp
    max: float | None = None
    axis: str | None = None  # normalize: one of NORMALIZE_AXES
    target_norm: float | None = None
    offset: int | None = None  # write_hex
    hex: str | None = None
    note: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def given(self) -> list[str]:
        """The parameters (of PARAMS) this spec sets."""
        return [k for k in PARAMS if getattr(self, k) is not None]


def check_parameters(spec: EditSpec) -> Op:
    """The spec's op, once every parameter it gives is one that op takes (a stray one is refused:
    `factor` on a fill, or a slice on write_hex, would otherwise be silently ignored)."""
    op = OPS.get(spec.op) if isinstance(spec.op, str) else None
    if op is None:
        raise InvalidRequest(f"unknown op {spec.op!r}; one of {', '.join(OPS)}", tensor=spec.tensor_name, field="op")
    takes = op.parameters + op.targets
    for name in spec.given():
        if name not in takes:
            raise InvalidRequest(f"{spec.op} does not take {name!r}; it takes {', '.join(takes) or 'no parameter'}",
                                 tensor=spec.tensor_name, field=name)
    return op


@dataclass
class ByteRun:
    tensor_name: str
    offset: int
    original: bytes
    new: bytes


@dataclass
class ComputedEdit:
    spec: EditSpec
    description: str
    runs: list[ByteRun]
    values_changed: int
    bytes_changed: int
    targeted: int
    before: dict | None = None
    after: dict | None = None
    rounding: dict = field(default_factory=dict)
    sample: list[dict] = field(default_factory=list)

    def preview(self) -> dict:
        return {
            "tensor_name": self.spec.tensor_name,
            "description": self.description,
            "targeted_values": self.targeted,
            "values_changed": self.values_changed,
            "bytes_changed": self.bytes_changed,
            "runs": len(self.runs),
            "before": self.before,
            "after": self.after,
            "rounding": self.rounding,
            "sample": self.sample,
        }


# -- casting ------------------------------------------------------------------------------------


def cast_to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """float64 (or complex128) values -> the dtype's bit patterns, rounding to nearest even.

    Floats use numpy/ml_dtypes' own casts (round-to-nearest-even; overflow to inf, or NaN for
    the finite-only F8 formats). Integers round half to even, then saturate to the type's range.
    """
    if dtype.kind == "bool":
        return (values != 0).astype(np.uint8)
    if dtype.kind in ("int", "uint"):
        info = np.iinfo(dtype.numpy)
        r = np.rint(values)
        r = np.where(np.isnan(r), 0, r)
        # compare in float, assign the limits as integers: float(2**63 - 1) is 2**63, which
        # np.clip would let through and the int64 cast would wrap to the minimum
        hi, lo = r >= float(info.max), r <= float(info.min)
        out = np.where(hi | lo, 0, r).astype(dtype.numpy)
        out[hi], out[lo] = info.max, info.min
        return out.view(dtype.storage)
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype.name == "F4":
            return values.astype(dtype.numpy).view(np.uint8)
        return values.astype(dtype.element).view(dtype.storage)


def _as_float(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "c":
        return values.astype(np.complex128)
    return values.astype(np.float64)


# -- targets ------------------------------------------------------------------------------------


def _target_flat(reader: TensorReader, spec: EditSpec) -> tuple[np.ndarray, str]:
    """Flat element indices of the target region (row-major order) and its definition."""
    shape = reader.shape
    name = spec.tensor_name
    if spec.cells is not None:
        if spec.slice:
            raise InvalidRequest("give either cells or a slice, not both", tensor=name, field="cells")
        if not spec.cells or len(spec.cells) > MAX_CELLS:
            raise InvalidRequest(f"cells must list 1 to {MAX_CELLS:,} cells", tensor=name, field="cells")
        flat = []
        for i, cell in enumerate(spec.cells):
            idx = cell.get("index") if isinstance(cell, dict) else None
            if not isinstance(idx, list) or len(idx) != len(shape) or not all(type(v) is int for v in idx):
                raise InvalidRequest(
                    f"cells[{i}].index must list {len(shape)} integer(s) for shape {list(shape)}",
                    tensor=name, field=f"cells[{i}].index",
                )
            if not all(0 <= v < n for v, n in zip(idx, shape)):
                raise InvalidRequest(
                    f"cells[{i}].index {idx} is outside shape {list(shape)}", tensor=name, field=f"cells[{i}].index"
                )
            flat.append(int(np.ravel_multi_index(idx, shape)) if shape else 0)
        flat = np.array(flat, dtype=np.int64)
        if len(np.unique(flat)) != len(flat):
            raise InvalidRequest("cells lists the same index twice", tensor=name, field="cells")
        definition = f"{len(flat):,} cell{'s' if len(flat) != 1 else ''}" if len(flat) > 1 else str(spec.cells[0]["index"])
        return flat, definition
    if spec.slice:
        sl = parse_slice(shape, spec.slice, tensor=name, max_cells=MAX_EDIT_ELEMENTS)
        return reader._flat_indices(sl.index).ravel(), sl.definition
    if reader.numel > MAX_EDIT_ELEMENTS:
        raise TooLarge(
            f"{name!r} has {reader.numel:,} elements, over the {MAX_EDIT_ELEMENTS:,} one edit may touch: "
            "edit it slice by slice", tensor=name,
        )
    return np.arange(reader.numel, dtype=np.int64), "all"


def _select(values: np.ndarray, select: dict, name: str) -> np.ndarray:
    """Boolean mask of the target values chosen by `select`."""
    mode, v = select.get("mode"), select.get("value")
    if mode not in SELECT_MODES or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise InvalidRequest(
            f"select needs mode (one of {', '.join(SELECT_MODES)}) and a finite numeric value", tensor=name,
            field="select"
        )
    mag = np.abs(values)
    finite = np.isfinite(mag)
    if mode in ("above_percentile", "below_percentile"):
        if not 0 <= v <= 100:
            raise InvalidRequest("select percentile must be between 0 and 100", tensor=name, field="select.value")
        if not finite.any():
            return np.zeros(values.shape, bool)
        real = values.real if values.dtype.kind == "c" else values
        cut = np.percentile(real[finite], v)
        return (real > cut) & finite if mode == "above_percentile" else (real < cut) & finite
    k = int(v)
    if k != v or k < 1:
        raise InvalidRequest("select k must be a positive integer", tensor=name, field="select.value")
    n_finite = int(finite.sum())
    k = min(k, n_finite)
    order = np.argsort(np.where(finite, mag, np.nan), kind="stable")[:n_finite]  # NaN sorts last: dropped
    chosen = order[n_finite - k :] if mode == "top_k_abs" else order[:k]
    mask = np.zeros(values.shape, bool)
    mask[chosen] = True
    return mask


# -- operations ---------------------------------------------------------------------------------


def _num(spec: EditSpec, attr: str) -> float:
    v = getattr(spec, attr)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise InvalidRequest(f"{spec.op} needs a number in '{attr}'", tensor=spec.tensor_name, field=attr)
    return float(v)


def _apply_op(spec: EditSpec, x: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, str]:
    op = spec.op
    if op == "set":
        vals = []
        for i, cell in enumerate(spec.cells or []):
            v = cell.get("value")
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InvalidRequest(f"cells[{i}].value must be a number", tensor=spec.tensor_name, field=f"cells[{i}].value")
            vals.append(float(v))
        if not spec.cells:
            raise InvalidRequest("set needs cells with values", tensor=spec.tensor_name, field="cells")
        return np.array(vals, dtype=x.dtype), "set"
    if op == "fill":
        v = _num(spec, "value")
        return np.full_like(x, v), f"fill = {v:g}"
    if op == "zero":
        return np.zeros_like(x), "zero"
    if op == "scale":
        f = _num(spec, "factor")
        return x * f, f"scale x{f:g}"
    if op == "add":
        v = _num(spec, "value")
        return x + v, f"add {v:+g}"
    if op == "clamp":
        lo = spec.min if spec.min is not None else -math.inf
        hi = spec.max if spec.max is not None else math.inf
        if spec.min is None and spec.max is None or lo > hi:
            raise InvalidRequest("clamp needs min and/or max with min <= max", tensor=spec.tensor_name, field="min")
        return np.clip(x, lo, hi), f"clamp [{_g(spec.min)}, {_g(spec.max)}]"
    if op == "normalize":
        target = _num(spec, "target_norm")
        if target < 0:
            raise InvalidRequest("target_norm must be >= 0", tensor=spec.tensor_name, field="target_norm")
        axis = spec.axis or "rows"
        if axis not in NORMALIZE_AXES:
            raise InvalidRequest(f"normalize axis must be one of {', '.join(NORMALIZE_AXES)}", tensor=spec.tensor_name,
                                 field="axis")
        return _normalize(x, rows, axis, target), f"normalize {axis} to L2 {target:g}"
    raise InvalidRequest(f"unknown op {op!r}; one of {', '.join(OPS)}", tensor=spec.tensor_name, field="op")


def _g(v) -> str:
    return "" if v is None else f"{v:g}"


def _normalize(x: np.ndarray, grid_shape: tuple[int, ...] | None, axis: str, target: float) -> np.ndarray:
    if axis == "all" or grid_shape is None or len(grid_shape) < 2:
        n = np.sqrt(np.sum(np.abs(x) ** 2))
        return x * (target / n) if n > 0 else x
    m = x.reshape(grid_shape[0], -1) if axis == "rows" else x.reshape(grid_shape[0], -1).T
    n = np.sqrt(np.sum(np.abs(m) ** 2, axis=1, keepdims=True))
    out = np.where(n > 0, m * (target / np.where(n > 0, n, 1)), m)
    return (out if axis == "rows" else out.T).reshape(x.shape)


# -- compute ------------------------------------------------------------------------------------


def compute_edit(reader: TensorReader, spec: EditSpec) -> ComputedEdit:
    """What `spec` would change, against the reader's current (staged) state."""
    check_parameters(spec)
    if spec.op == "write_hex":
        return _compute_hex(reader, spec)
    dt = reader.dtype
    if not dt.decodable:
        raise dt.undecodable()
    if spec.op == "set" and spec.cells is None:
        raise InvalidRequest("set needs cells with values", tensor=spec.tensor_name, field="cells")

    flat, definition = _target_flat(reader, spec)
    order = np.argsort(flat, kind="stable")
    grid = None
    if spec.slice:
        grid = parse_slice(reader.shape, spec.slice, tensor=spec.tensor_name, max_cells=MAX_EDIT_ELEMENTS).shape
    elif spec.cells is None:
        grid = (int(np.prod(reader.shape[:-1])), reader.shape[-1]) if len(reader.shape) >= 2 else None
    old_pats = _patterns_at(reader, flat)
    x = _as_float(reader.decode(old_pats))
    new_x, label = _apply_op(spec, x, grid)
    mask = np.ones(x.shape, bool)
    if spec.select:
        mask = _select(x, spec.select, spec.tensor_name)
        label += f" on {_select_label(spec.select)}"
    new_x = np.where(mask, new_x, x)
    new_pats = np.where(mask, cast_to_dtype(new_x, dt), old_pats)
    changed = new_pats != old_pats  # bits, not values: -0.0 -> 0.0 is a change
    runs = _runs_for(reader, flat[order][changed[order]], new_pats[order][changed[order]])
    targeted = int(mask.sum())
    nchanged = int(changed.sum())
    bytes_changed = sum(int(np.count_nonzero(np.frombuffer(r.original, np.uint8) != np.frombuffer(r.new, np.uint8)))
                        for r in runs)
    after_vals = reader.decode(new_pats)
    exact = new_x[mask]
    got = _as_float(after_vals)[mask]
    with np.errstate(invalid="ignore"):
        rounded = int(np.count_nonzero((got != exact) & ~(np.isnan(got) & np.isnan(exact))))
        overflow = int(np.count_nonzero(~np.isfinite(got) & np.isfinite(exact)))
    where = "" if definition == "all" else f" on {definition}"
    description = (
        f"{label}{where} of {spec.tensor_name}: {nchanged:,} value{'s' if nchanged != 1 else ''}, "
        f"{bytes_changed:,} byte{'s' if bytes_changed != 1 else ''}"
    )
    before = _stats(reader.decode(old_pats)[mask], old_pats[mask], dt)
    after = _stats(after_vals[mask], new_pats[mask], dt)
    sample = [
        {"index": unravel(int(f), reader.shape), "before": _jv(o), "after": _jv(n)}
        for f, o, n in zip(flat[changed][:20], reader.decode(old_pats)[changed][:20], after_vals[changed][:20])
    ]
    return ComputedEdit(spec, description, runs, nchanged, bytes_changed, targeted, before, after,
                        {"rounded": rounded, "overflowed": overflow, "dtype": dt.name}, sample)


def _select_label(select: dict) -> str:
    mode, v = select.get("mode"), select.get("value")
    return {
        "above_percentile": f"values above p{v:g}",
        "below_percentile": f"values below p{v:g}",
        "top_k_abs": f"top {v:g} by |x|",
        "bottom_k_abs": f"bottom {v:g} by |x|",
    }[mode]


def _jv(v):
    if np.iscomplexobj(v):
        return [float(v.real), float(v.imag)]
    f = float(v)
    return f if math.isfinite(f) else str(f)


def _stats(values: np.ndarray, patterns: np.ndarray, dt) -> dict | None:
    if values.size == 0:
        return None
    s = array_stats(values, dt, patterns=patterns, percentiles=(50.0,))
    return {k: s[k] for k in ("numel", "min", "max", "mean", "std", "l2_norm", "nan_count", "inf_count")}


def _patterns_at(reader: TensorReader, flat: np.ndarray) -> np.ndarray:
    """Bit patterns at flat indices (current state), reading only the span they cover."""
    if flat.size == 0:
        return np.zeros(0, reader.dtype.storage)
    lo, hi = int(flat.min()), int(flat.max()) + 1
    chunk = reader.chunk_patterns(lo, hi)
    return np.array(chunk[flat - lo])


def _runs_for(reader: TensorReader, flat_sorted: np.ndarray, new_pats: np.ndarray) -> list[ByteRun]:
    """Merged byte runs writing `new_pats` at the (sorted) flat indices over the current bytes."""
    if flat_sorted.size == 0:
        return []
    name = reader.ref.name
    if reader.dtype.name == "F4":
        byte_idx = flat_sorted >> 1
    else:
        byte_idx = flat_sorted * reader.unit_bytes
    width = 1 if reader.dtype.name == "F4" else reader.unit_bytes
    lo, hi = int(byte_idx[0]), int(byte_idx[-1]) + width
    orig = np.frombuffer(reader.read_bytes(lo, hi - lo), np.uint8)
    new = orig.copy()
    if reader.dtype.name == "F4":
        pos = byte_idx - lo
        odd = (flat_sorted & 1).astype(bool)
        for sel, shift, keep in ((~odd, 0, 0xF0), (odd, 4, 0x0F)):
            p = pos[sel]
            new[p] = (new[p] & keep) | (new_pats[sel].astype(np.uint8) << shift)
    else:
        view = new.view(np.uint8)
        elems = new_pats.astype(reader.dtype.storage).view(np.uint8).reshape(-1, width)
        offs = (byte_idx - lo)[:, None] + np.arange(width)
        view[offs] = elems
    return [ByteRun(name, lo + a, orig[a:b].tobytes(), new[a:b].tobytes()) for a, b in changed_runs(orig, new)]


def _compute_hex(reader: TensorReader, spec: EditSpec) -> ComputedEdit:
    name = spec.tensor_name
    off = spec.offset
    if type(off) is not int or off < 0:
        raise InvalidRequest("write_hex needs a non-negative integer offset", tensor=name, field="offset")
    h = (spec.hex or "").replace(" ", "")
    try:
        data = bytes.fromhex(h)
    except ValueError:
        raise InvalidRequest("hex must be pairs of hex digits", tensor=name, field="hex") from None
    if not data or len(data) > MAX_HEX_EDIT_BYTES:
        raise InvalidRequest(f"hex must hold 1 to {MAX_HEX_EDIT_BYTES:,} bytes", tensor=name, field="hex")
    if off + len(data) > reader.ref.nbytes:
        raise InvalidRequest(
            f"bytes {off}..{off + len(data)} run past the end of {name!r} ({reader.ref.nbytes} bytes)",
            tensor=name, field="offset",
        )
    orig = reader.read_bytes(off, len(data))
    runs = [ByteRun(name, off + a, orig[a:b], data[a:b]) for a, b in changed_runs(orig, data)]
    nbytes = sum(sum(x != y for x, y in zip(r.original, r.new)) for r in runs)
    ub, ue = reader.unit_bytes, reader.unit_elems
    e0, e1 = (off // ub) * ue, min(-(-(off + len(data)) // ub) * ue, reader.numel)
    values_changed = 0
    sample: list[dict[str, Any]] = []
    if reader.dtype.decodable and runs:
        lo, hi = (e0 // ue) * ub, min(-(-e1 // ue) * ub, reader.ref.nbytes)
        buf = bytearray(reader.read_bytes(lo, hi - lo))
        buf[off - lo : off - lo + len(data)] = data
        before_pats = reader.chunk_patterns(e0, e1)
        after_pats = patterns_from_bytes(reader.dtype, bytes(buf), e1 - e0)
        before, after = reader.decode(before_pats), reader.decode(after_pats)
        diff = before_pats != after_pats
        values_changed = int(diff.sum())
        for k in np.flatnonzero(diff)[:20]:
            sample.append({"index": unravel(e0 + int(k), reader.shape), "before": _jv(before[k]), "after": _jv(after[k])})
    description = f"write {len(data):,} byte{'s' if len(data) != 1 else ''} at offset {off:,} of {name}: {nbytes:,} bytes changed"
    return ComputedEdit(spec, description, runs, values_changed, nbytes, e1 - e0, sample=sample)


def patterns_from_bytes(dtype, buf: bytes, count: int) -> np.ndarray:
    """Bit patterns of the first `count` elements held in `buf` (which starts on a unit boundary)."""
    raw = np.frombuffer(buf, np.uint8)
    if dtype.name == "F4":
        return decode_f4_at(raw, np.arange(count, dtype=np.int64)).view(np.uint8)
    return raw.view(dtype.storage)[:count].copy()
