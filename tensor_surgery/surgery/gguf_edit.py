"""Edits of quantized GGUF tensors: applied to the dequantized blocks, then the blocks quantized again.

A value of a Q8_0 (Q4_0, Q4_1, Q5_0, Q5_1 ...) tensor is not stored on its own: it is a code
scaled by its block's scale(s). Changing one value therefore means: dequantize its block (as
llama.cpp does, through `gguf.quants`), apply the operation in float64, cast to float32 (what the
quantizer takes), quantize the whole block again. The other values of the block may move a little
(their scale changed): the preview reports them (`rounding.collateral`), and its "after" values are
what the new block really holds, dequantized again. Blocks whose targeted values do not change are
left byte for byte as they are (re-quantizing an untouched block can alter it).

The result is byte runs like any other edit, so staging, .hexpatch files and exports need nothing else.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest
from ..store.dtypes import DTYPES
from ..store.gguf import QuantReader, dequantize_blocks, quantize_values
from ..store.slicing import parse_slice, unravel
from .ops import (
    MAX_EDIT_ELEMENTS, ByteRun, ComputedEdit, EditSpec, _apply_op, _jv, _select, _select_label, _stats,
    _target_flat, check_parameters,
)
from .runs import changed_runs


def _block_runs(block_ids: np.ndarray) -> list[tuple[int, int]]:
    """[first, last+1) of each run of consecutive block ids (sorted, unique)."""
    if block_ids.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(block_ids) != 1)
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks + 1, block_ids.size]
    return [(int(block_ids[a]), int(block_ids[b - 1]) + 1) for a, b in zip(starts, ends)]


def compute_quant_edit(reader: QuantReader, spec: EditSpec) -> ComputedEdit:
    """What `spec` would change in a quantized tensor, against the reader's current (staged) state."""
    check_parameters(spec)
    dt = reader.dtype
    if spec.op == "write_hex":
        return _compute_hex(reader, spec)
    if not dt.decodable:
        raise dt.undecodable(spec.tensor_name)
    if not dt.quantizable:
        raise dt.read_only(spec.tensor_name)
    if spec.op == "set" and spec.cells is None:
        raise InvalidRequest("set needs cells with values", tensor=spec.tensor_name, field="cells")
    be, ub = reader.unit_elems, reader.unit_bytes

    flat, definition = _target_flat(reader, spec)
    grid = None
    if spec.slice:
        grid = parse_slice(reader.shape, spec.slice, tensor=spec.tensor_name, max_cells=MAX_EDIT_ELEMENTS).shape
    elif spec.cells is None:
        grid = (int(np.prod(reader.shape[:-1])), reader.shape[-1]) if len(reader.shape) >= 2 else None

    blocks = np.unique(flat // be)
    spans = _block_runs(blocks)
    raw = np.concatenate([reader.block_bytes_range(a, b) for a, b in spans]) if spans else np.zeros(0, np.uint8)
    old_vals = dequantize_blocks(dt, raw).reshape(blocks.size, be) if blocks.size else np.zeros((0, be), np.float32)
    pos = np.searchsorted(blocks, flat // be) * be + flat % be  # each target's place in old_vals.flat

    x = old_vals.reshape(-1)[pos].astype(np.float64)
    new_x, label = _apply_op(spec, x, grid)
    mask = np.ones(x.shape, bool)
    if spec.select:
        mask = _select(x, spec.select, spec.tensor_name)
        label += f" on {_select_label(spec.select)}"
    new_x = np.where(mask, new_x, x)
    with np.errstate(over="ignore", invalid="ignore"):
        requested = new_x.astype(np.float32)  # what the quantizer is given
    edited = old_vals.copy()
    edited.reshape(-1)[pos] = requested
    # only blocks where a targeted value really changes are quantized again
    changed_blocks = np.flatnonzero(
        (edited.view(np.uint32) != old_vals.view(np.uint32)).any(axis=1)) if blocks.size else np.zeros(0, np.int64)
    new_raw = raw.copy()
    if changed_blocks.size:
        q = np.frombuffer(quantize_values(dt, edited[changed_blocks]), np.uint8).reshape(-1, ub)
        new_raw.reshape(-1, ub)[changed_blocks] = q
    new_vals = dequantize_blocks(dt, new_raw).reshape(blocks.size, be) if blocks.size else old_vals

    runs: list[ByteRun] = []
    at = 0
    for a, b in spans:
        n = (b - a) * ub
        o, nw = raw[at:at + n], new_raw[at:at + n]
        for s, e in changed_runs(o, nw):
            runs.append(ByteRun(spec.tensor_name, a * ub + s, o[s:e].tobytes(), nw[s:e].tobytes()))
        at += n

    after_t = new_vals.reshape(-1)[pos]
    before_t = old_vals.reshape(-1)[pos]
    value_changed = new_vals.view(np.uint32) != old_vals.view(np.uint32)
    nchanged = int(value_changed.sum())
    target_mask = np.zeros(old_vals.shape, bool)
    target_mask.reshape(-1)[pos[mask]] = True
    collateral = int((value_changed & ~target_mask).sum())
    bytes_changed = int(np.count_nonzero(raw != new_raw))
    with np.errstate(invalid="ignore"):
        got = after_t[mask].astype(np.float64)
        exact = new_x[mask]
        rounded = int(np.count_nonzero((got != exact) & ~(np.isnan(got) & np.isnan(exact))))
        overflow = int(np.count_nonzero(~np.isfinite(got) & np.isfinite(exact)))
    where = "" if definition == "all" else f" on {definition}"
    description = (
        f"{label}{where} of {spec.tensor_name}: {nchanged:,} value{'s' if nchanged != 1 else ''} in "
        f"{changed_blocks.size:,} re-quantized {dt.name} block{'s' if changed_blocks.size != 1 else ''}, "
        f"{bytes_changed:,} byte{'s' if bytes_changed != 1 else ''}"
    )
    targeted = int(mask.sum())
    before = _stats(before_t[mask], before_t[mask].view(np.uint32), _F32) if targeted else None
    after = _stats(after_t[mask], after_t[mask].view(np.uint32), _F32) if targeted else None
    changed_flat = (blocks[:, None] * be + np.arange(be)).reshape(-1)[value_changed.reshape(-1)]
    sample = []
    ov, nv = old_vals.reshape(-1)[value_changed.reshape(-1)], new_vals.reshape(-1)[value_changed.reshape(-1)]
    req = edited.reshape(-1)[value_changed.reshape(-1)]
    tm = target_mask.reshape(-1)[value_changed.reshape(-1)]
    for f, o, n, r, t in list(zip(changed_flat, ov, nv, req, tm))[:20]:
        sample.append({"index": unravel(int(f), reader.shape), "before": _jv(o), "after": _jv(n),
                       "requested": _jv(r) if t else None, "targeted": bool(t)})
    return ComputedEdit(
        spec, description, runs, nchanged, bytes_changed, targeted, before, after,
        {"rounded": rounded, "overflowed": overflow, "dtype": dt.name, "requantized_blocks": int(changed_blocks.size),
         "block_elements": be, "collateral": collateral,
         "note": f"values are re-quantized to {dt.name}: 'after' is what the new blocks hold"},
        sample,
    )


_F32 = DTYPES["F32"]  # the statistics of dequantized values are those of float32 values


def _compute_hex(reader: QuantReader, spec: EditSpec) -> ComputedEdit:
    """Raw bytes into a block tensor: allowed for any GGML type; values before/after where decodable."""
    name = spec.tensor_name
    off = spec.offset
    if type(off) is not int or off < 0:
        raise InvalidRequest("write_hex needs a non-negative integer offset", tensor=name, field="offset")
    h = (spec.hex or "").replace(" ", "")
    try:
        data = bytes.fromhex(h)
    except ValueError:
        raise InvalidRequest("hex must be pairs of hex digits", tensor=name, field="hex") from None
    from .ops import MAX_HEX_EDIT_BYTES

    if not data or len(data) > MAX_HEX_EDIT_BYTES:
        raise InvalidRequest(f"hex must hold 1 to {MAX_HEX_EDIT_BYTES:,} bytes", tensor=name, field="hex")
    if off + len(data) > reader.ref.nbytes:
        raise InvalidRequest(
            f"bytes {off}..{off + len(data)} run past the end of {name!r} ({reader.ref.nbytes} bytes)",
            tensor=name, field="offset")
    orig = reader.read_bytes(off, len(data))
    runs = [ByteRun(name, off + a, orig[a:b], data[a:b]) for a, b in changed_runs(orig, data)]
    nbytes = sum(sum(x != y for x, y in zip(r.original, r.new)) for r in runs)
    ub, be = reader.unit_bytes, reader.unit_elems
    values_changed, sample, targeted = 0, [], 0
    if reader.dtype.decodable and runs and reader.dtype.block_bytes:
        b0, b1 = off // ub, -(-(off + len(data)) // ub)
        before_raw = reader.block_bytes_range(b0, b1)
        after_raw = before_raw.copy()
        after_raw[off - b0 * ub: off - b0 * ub + len(data)] = np.frombuffer(data, np.uint8)
        bv, av = dequantize_blocks(reader.dtype, before_raw), dequantize_blocks(reader.dtype, after_raw)
        diff = bv.view(np.uint32) != av.view(np.uint32)
        values_changed = int(diff.sum())
        targeted = (b1 - b0) * be
        for k in np.flatnonzero(diff)[:20]:
            sample.append({"index": unravel(b0 * be + int(k), reader.shape), "before": _jv(bv[k]), "after": _jv(av[k])})
    description = (f"write {len(data):,} byte{'s' if len(data) != 1 else ''} at offset {off:,} of {name}: "
                   f"{nbytes:,} bytes changed")
    return ComputedEdit(spec, description, runs, values_changed, nbytes, targeted, sample=sample)
