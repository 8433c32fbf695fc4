"""Slices for the viewer, downsampled overviews for thumbnails, and the hex view.

A slice request names up to two *viewed* dimensions with `dimN_start`/`dimN_end` (and an optional
`dimN_step`), and fixes every other dimension with `dimN_idx` (default 0). With no viewed
dimension named, the last two dimensions are viewed (the only one for a vector), each through a
default window of `DEFAULT_WINDOW` elements from 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest, TooLarge
from .reader import TensorReader

DEFAULT_WINDOW = 256
SAMPLE_ROWS_PER_BLOCK = 8  # rows read per block of an overview of a matrix too big to read whole
MAX_SLICE_CELLS = 1 << 20  # one million cells: about 20 MB of JSON
MAX_HEX_BYTES = 64 * 1024
_PARAM = re.compile(r"^dim(\d+)_(start|end|idx|step)$")


@dataclass(frozen=True)
class SliceSpec:
    index: tuple  # one int or slice per dimension
    viewed: tuple[int, ...]  # dimensions kept in the result, in order
    definition: str  # e.g. "[0:32, 5, 0:64]"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(_slice_len(s) for s in self.index if isinstance(s, slice))

    @property
    def cells(self) -> int:
        return math.prod(self.shape)

    def bounds(self) -> list[dict]:
        out = []
        for dim, ix in enumerate(self.index):
            if isinstance(ix, slice):
                out.append({"dim": dim, "start": ix.start, "end": ix.stop, "step": ix.step})
            else:
                out.append({"dim": dim, "idx": ix})
        return out


def _slice_len(s: slice) -> int:
    return max(0, -(-(s.stop - s.start) // s.step))


def _int_param(name: str, value) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", field=name)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", field=name) from None


def parse_slice(
    shape: tuple[int, ...],
    params: Mapping[str, object],
    *,
    tensor: str = "",
    default_window: int = DEFAULT_WINDOW,
    max_cells: int = MAX_SLICE_CELLS,
) -> SliceSpec:
    """Validate slice parameters against a shape; unknown `dim*` keys are errors."""
    rank = len(shape)
    given: dict[int, dict[str, int]] = {}
    for key, value in params.items():
        m = _PARAM.match(key)
        if not m:
            if key.startswith("dim"):  # a typo such as dim0_stop must not silently do nothing
                raise InvalidRequest(
                    f"unknown slice parameter {key!r}: use dimN_start, dimN_end, dimN_step "
                    "or dimN_idx",
                    tensor=tensor, field=key,
                )
            continue
        dim, part = int(m[1]), m[2]
        if dim >= rank:
            raise InvalidRequest(
                f"{key}: tensor {tensor!r} has {rank} dimension(s) (shape {list(shape)})",
                tensor=tensor, field=key,
            )
        given.setdefault(dim, {})[part] = _int_param(key, value)

    viewed = sorted(d for d, p in given.items() if {"start", "end", "step"} & p.keys())
    for d in viewed:
        if "idx" in given[d]:
            raise InvalidRequest(
                f"dim{d}: give either a range (dim{d}_start/dim{d}_end) or a fixed index "
                f"(dim{d}_idx), not both",
                tensor=tensor, field=f"dim{d}_idx",
            )
    if not viewed:
        viewed = [d for d in range(rank) if d not in given][-2:]
    if len(viewed) > 2:
        raise InvalidRequest(
            f"at most two dimensions can be viewed; got ranges on dims {viewed}: fix the others "
            "with dimN_idx",
            tensor=tensor, field="dims",
        )

    index: list = []
    parts = []
    for d, n in enumerate(shape):
        p = given.get(d, {})
        if d in viewed:
            start = p.get("start", 0)
            end = p.get("end", min(n, start + default_window))
            step = p.get("step", 1)
            if step < 1:
                raise InvalidRequest(f"dim{d}_step must be at least 1, got {step}", tensor=tensor, field=f"dim{d}_step")
            if not 0 <= start < end <= n and not (n == 0 and start == end == 0):
                raise InvalidRequest(
                    f"dim{d} range [{start}:{end}] is outside 0..{n} for tensor {tensor!r} "
                    f"(shape {list(shape)}): need 0 <= start < end <= {n}",
                    tensor=tensor, field=f"dim{d}_start",
                )
            index.append(slice(start, end, step))
            parts.append(f"{start}:{end}" + (f":{step}" if step != 1 else ""))
        else:
            idx = p.get("idx", 0)
            if not 0 <= idx < n:
                raise InvalidRequest(
                    f"dim{d}_idx={idx} is outside 0..{n - 1} for tensor {tensor!r} "
                    f"(shape {list(shape)})",
                    tensor=tensor, field=f"dim{d}_idx",
                )
            index.append(idx)
            parts.append(str(idx))
    spec = SliceSpec(tuple(index), tuple(viewed), "[" + ", ".join(parts) + "]")
    if spec.cells > max_cells:
        raise TooLarge(
            f"slice {spec.definition} of {tensor!r} has {spec.cells:,} cells, over the "
            f"{max_cells:,} limit: view a smaller window, use dimN_step, or the overview",
            tensor=tensor, cells=spec.cells, limit=max_cells,
        )
    return spec


def to_json_values(values: np.ndarray):
    """Values as JSON-ready nested lists: floats with NaN/inf as None, complex as [re, im]."""
    if values.dtype.kind in "biu":
        return values.tolist()
    if values.dtype.kind == "c":
        # [re, im] pairs; a NaN or Inf part becomes None like a real NaN (JSON has neither)
        v = np.stack([values.real, values.imag], axis=-1).astype(np.float64)
    else:
        v = values.astype(np.float64)
    if np.isfinite(v).all():
        return v.tolist()
    obj = v.astype(object)
    obj[~np.isfinite(v)] = None
    return obj.tolist()


def _finite_range(values: np.ndarray) -> tuple[float | None, float | None, int]:
    if values.size == 0:
        return None, None, 0
    v = np.abs(values) if values.dtype.kind == "c" else values
    v = v.astype(np.float64)
    finite = np.isfinite(v)
    nonfinite = int(v.size - np.count_nonzero(finite))
    if nonfinite == v.size:
        return None, None, nonfinite
    if nonfinite:
        v = v[finite]
    return float(v.min()), float(v.max()), nonfinite


def read_slice(reader: TensorReader, params: Mapping[str, object], **limits) -> dict:
    """The viewer's slice contract: values of one slice with its definition and range."""
    name = reader.ref.name
    spec = parse_slice(reader.shape, params, tensor=name, **limits)
    values = reader.read_values(spec.index)
    lo, hi, nonfinite = _finite_range(values)
    return {
        "tensor_name": name,
        "original_shape": list(reader.shape),
        "slice_definition": spec.definition,
        "slice_shape": list(values.shape),
        "viewed_dims": list(spec.viewed),
        "bounds": spec.bounds(),
        "dtype": reader.dtype.name,
        "view": "staged" if reader.staged else "base",
        "data": to_json_values(values),
        "min_value_in_slice": lo,
        "max_value_in_slice": hi,
        "nonfinite_count": nonfinite,
    }


# -- overview -------------------------------------------------------------------------------


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """How a tensor of any rank is seen as a matrix: leading dimensions fold into rows."""
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def _edges(n: int, blocks: int) -> np.ndarray:
    return np.linspace(0, n, blocks + 1).round().astype(np.int64)


def overview(
    reader: TensorReader,
    rows: int = 64,
    cols: int = 64,
    *,
    max_elements: int | None = None,
    chunk_elems: int = 1 << 20,
) -> dict:
    """Block mean and block abs-max of the tensor seen as a matrix, at most rows x cols blocks.

    When the matrix holds more than `max_elements`, whole rows are sampled evenly inside each
    block (columns are never skipped: a row is one contiguous read), and `sampled` says so.
    """
    if not 1 <= rows <= 1024 or not 1 <= cols <= 1024:
        raise InvalidRequest("overview rows and cols must be between 1 and 1024", field="rows")
    if not reader.dtype.decodable:
        raise reader.dtype.undecodable()
    n_rows, n_cols = matrix_shape(reader.shape)
    r_blocks, c_blocks = min(rows, n_rows), min(cols, n_cols)
    if reader.numel == 0:
        return _overview_result(reader, np.zeros((0, 0)), np.zeros((0, 0)), n_rows, n_cols, False, 0)
    r_edges, c_edges = _edges(n_rows, r_blocks), _edges(n_cols, c_blocks)

    if max_elements is None:
        # small tensors are read whole; big ones only as many rows as a faithful block mean needs
        # (SAMPLE_ROWS_PER_BLOCK per block): a 24x24 thumbnail of a 129k-row embedding reads
        # 192 rows, not 1,152 (and never the whole 1.8 GB)
        max_elements = min(1 << 23, max(1 << 20, r_blocks * SAMPLE_ROWS_PER_BLOCK * n_cols))
    budget_rows = max(r_blocks, max_elements // max(n_cols, 1))
    sampled = n_rows > budget_rows
    if sampled:
        per_block = max(1, budget_rows // r_blocks)
        picks = []
        for b in range(r_blocks):
            lo, hi = r_edges[b], r_edges[b + 1]
            picks.append(np.unique(np.linspace(lo, hi - 1, min(per_block, hi - lo)).round().astype(np.int64)))
        row_ids = np.concatenate(picks)
    else:
        row_ids = np.arange(n_rows, dtype=np.int64)

    block_of_row = np.searchsorted(r_edges, row_ids, side="right") - 1
    sums = np.zeros((r_blocks, c_blocks))
    counts = np.zeros((r_blocks, c_blocks))
    absmax = np.zeros((r_blocks, c_blocks))
    rows_per_chunk = max(1, chunk_elems // max(n_cols, 1))
    # contiguous runs of picked rows are read together
    i = 0
    while i < len(row_ids):
        j = min(i + rows_per_chunk, len(row_ids))
        ids = row_ids[i:j]
        if ids[-1] - ids[0] == len(ids) - 1:
            pats = reader.chunk_patterns(int(ids[0]) * n_cols, (int(ids[-1]) + 1) * n_cols)
        else:
            pats = np.concatenate(
                [reader.chunk_patterns(int(r) * n_cols, (int(r) + 1) * n_cols) for r in ids]
            )
        v = reader.decode(pats).reshape(len(ids), n_cols)
        v = np.abs(v).astype(np.float64) if v.dtype.kind == "c" else v.astype(np.float64)
        finite = np.isfinite(v)
        vz = np.where(finite, v, 0.0)
        col_sum = np.add.reduceat(vz, c_edges[:-1], axis=1)
        col_cnt = np.add.reduceat(finite.astype(np.float64), c_edges[:-1], axis=1)
        col_abs = np.maximum.reduceat(np.abs(vz), c_edges[:-1], axis=1)
        blk = block_of_row[i:j]
        starts = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
        sums[blk[starts]] += np.add.reduceat(col_sum, starts, axis=0)
        counts[blk[starts]] += np.add.reduceat(col_cnt, starts, axis=0)
        np.maximum.at(absmax, blk[starts], np.maximum.reduceat(col_abs, starts, axis=0))
        i = j
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return _overview_result(reader, mean, absmax, n_rows, n_cols, sampled, len(row_ids))


def _overview_result(reader, mean, absmax, n_rows, n_cols, sampled, rows_read) -> dict:
    finite = mean[np.isfinite(mean)]
    return {
        "tensor_name": reader.ref.name,
        "original_shape": list(reader.shape),
        "matrix_shape": [n_rows, n_cols],
        "blocks": list(mean.shape),
        "dtype": reader.dtype.name,
        "view": "staged" if reader.staged else "base",
        "mean": to_json_values(mean),
        "absmax": to_json_values(absmax),
        "min_mean": float(finite.min()) if finite.size else None,
        "max_mean": float(finite.max()) if finite.size else None,
        "max_absmax": float(absmax.max()) if absmax.size else None,
        "sampled": bool(sampled),
        "rows_read": int(rows_read),
    }


# -- hex view -------------------------------------------------------------------------------


def unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for n in reversed(shape):
        out.append(flat % n if n else 0)
        flat //= n if n else 1
    return out[::-1]


def _json_float(f: float) -> float | str:
    return f if math.isfinite(f) else str(f)  # "nan", "inf", "-inf"


def hex_view(reader: TensorReader, offset: int, length: int) -> dict:
    """The bytes of [offset, offset+length) and every element they touch, decoded (for a GGUF
    block type: every block they touch, with its scales and values)."""
    if getattr(reader.dtype, "quantized", False):
        from .gguf import block_view

        return block_view(reader, offset, length)
    name = reader.ref.name
    if length < 0 or length > MAX_HEX_BYTES:
        raise TooLarge(
            f"hex view length {length} is over the {MAX_HEX_BYTES}-byte limit", tensor=name,
            field="length", limit=MAX_HEX_BYTES,
        )
    nbytes = reader.ref.nbytes
    if offset < 0 or offset > nbytes:
        raise InvalidRequest(
            f"offset {offset} is outside tensor {name!r} ({nbytes} bytes)", tensor=name, field="offset"
        )
    length = min(length, nbytes - offset)
    data = reader.read_bytes(offset, length)
    ubytes, uelems = reader.unit_bytes, reader.unit_elems
    first_unit = offset // ubytes
    last_unit = -(-(offset + length) // ubytes)
    elements = []
    decodable = reader.dtype.decodable
    if decodable and length:
        e0, e1 = first_unit * uelems, min(last_unit * uelems, reader.numel)
        pats = reader.chunk_patterns(e0, e1)
        vals = reader.decode(pats)
        for k in range(e1 - e0):
            flat = e0 + k
            if reader.dtype.packed:
                b0, nb = flat // 2, 1
            else:
                b0, nb = flat * ubytes, ubytes
            v = vals[k]
            if v.dtype.kind == "c":
                value = [_json_float(float(v.real)), _json_float(float(v.imag))]
            elif v.dtype.kind in "biu":
                value = v.item()
            else:
                value = _json_float(float(v))
            elements.append({
                "flat_index": flat,
                "index": unravel(flat, reader.shape),
                "byte_offset": b0,
                "byte_length": nb,
                # the element's bit pattern as a number (bytes on disk are little-endian)
                "bits_hex": format(int(pats[k]), f"0{max(1, reader.dtype.bits // 4)}X"),
                "value": value,
            })
    return {
        "tensor_name": name,
        "dtype": reader.dtype.name,
        "nbytes": nbytes,
        "offset": offset,
        "length": length,
        "hex": data.hex().upper(),
        "elements": elements,
        "decodable": decodable,
        "view": "staged" if reader.staged else "base",
        "note": None if decodable else reader.dtype.undecodable().message,
    }
