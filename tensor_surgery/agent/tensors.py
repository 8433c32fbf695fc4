"""The agent's tools over the model and its tensors: what the model is, its tensors, a tensor's
statistics, slices and histogram, and proposed (never staged) edits.

Nothing here writes, stages, or opens a path that an argument names: tensor names are only looked
up in the open model, and `propose_edit` computes a dry-run preview, never a staged edit. Tensor
names and metadata come from a hostile file; they leave here only as JSON values.
"""

from __future__ import annotations

import math

from ..errors import TooLarge
from ..store import slicing
from ..store import stats as st
from ..store.layout import TYPE_GROUPS
from ..surgery import ops
from ..workspace import tensor_cache_key
from .registry import TENSOR_PARAM, VIEW_PARAM, ToolContext, round_nested, clip_text, sig, tool
from .tokens import embedding_candidates, tokenizer_path

MAX_SLICE_CELLS = 4096
DEFAULT_SLICE_WINDOW = 32  # per viewed dimension when the slice leaves it open: 32 x 32 = 1,024 cells


# -- tools: the model and its tensors -----------------------------------------------------------


@tool("What the open model is: tensor count, bytes, dtypes, layer count, tensors per type group, "
      "file metadata, whether a tokenizer is available. Start here.")
def model_summary(ctx: ToolContext) -> dict:
    s = ctx.model.summary()
    layout = ctx.layout()
    groups: dict[str, int] = {}
    layers = set()
    for meta in layout.values():
        groups[meta.type_group] = groups.get(meta.type_group, 0) + 1
        if meta.layer_index >= 0 and "*" in meta.specific_type_key:
            layers.add((meta.block, meta.layer_index))
    meta_items = list(s["metadata"].items())
    return {
        "name": s["name"], "kind": s["kind"], "shards": s["shards"], "tensor_count": s["tensor_count"],
        "total_bytes": s["total_bytes"], "parameters": s["numel"], "dtypes": s["dtypes"],
        "layers": len(layers), "tensors_per_type_group": groups,
        "file_metadata": {clip_text(str(k), 80): clip_text(str(v)) for k, v in meta_items[:20]},
        "file_metadata_keys_not_shown": max(0, len(meta_items) - 20),
        "tokenizer": tokenizer_path(ctx) is not None,
        "embedding_tensors": embedding_candidates(ctx)[:3],
        "warnings": [clip_text(w) for w in s["warnings"][:5]],
    }


@tool(
    "List tensors, filtered by name substring, type group, layer range and dtype; in canvas order "
    "(layer by layer). Returns at most `limit` entries and the total count.",
    {
        "name_contains": {"type": "string", "maxLength": 200, "description": "case-insensitive substring of the name"},
        "type_group": {"type": "string", "enum": list(TYPE_GROUPS)},
        "layer_min": {"type": "integer", "minimum": -1, "description": "first layer (-1: tensors before layer 0)"},
        "layer_max": {"type": "integer", "minimum": -1},
        "dtype": {"type": "string", "maxLength": 16, "description": "e.g. BF16, F32"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        "offset": {"type": "integer", "minimum": 0, "default": 0},
    },
)
def list_tensors(ctx: ToolContext, name_contains=None, type_group=None, layer_min=None, layer_max=None,
                 dtype=None, limit=50, offset=0) -> dict:
    layout = ctx.layout()
    needle = name_contains.lower() if name_contains else None
    names = sorted(layout, key=lambda n: (layout[n].canvas_y, layout[n].canvas_x))
    matched = []
    for name in names:
        meta = layout[name]
        if needle and needle not in name.lower():
            continue
        if type_group and meta.type_group != type_group:
            continue
        if layer_min is not None and meta.layer_index < layer_min:
            continue
        if layer_max is not None and meta.layer_index > layer_max:
            continue
        if dtype and ctx.model.tensors[name].dtype.name != dtype.upper():
            continue
        matched.append(name)
    shown = matched[offset: offset + limit]
    return {
        "total_matching": len(matched), "offset": offset, "returned": len(shown),
        "truncated": offset + len(shown) < len(matched),
        "tensors": [ctx.entry(n) for n in shown],
    }


def profile_stats(ctx: ToolContext, name: str, view: str = "base", progress=None) -> dict:
    """Statistics, kurtosis and saturation of one tensor (cached with the workspace's statistics)."""
    reader = ctx.reader(name, view)
    total = max(reader.numel, 1)

    def tick(done, _total):
        ctx.check_cancelled()
        if progress:
            progress(done, total)
        else:
            ctx.report(f"statistics of {name}", done, total)

    stats, counts = ctx.workspace.stats_and_counts(reader, progress=tick)
    tails = ctx.workspace.cached(
        tensor_cache_key("agent-tails", reader), lambda: st.tail_stats(reader, stats, counts, progress=tick),
        lambda _: 512)
    return {**stats, **tails}


@tool(
    "Statistics of one whole tensor: min, max, mean, std, L2 norm, RMS, sparsity, NaN/Inf counts, "
    "percentiles, excess kurtosis (0 for a normal distribution), values saturated at the dtype's "
    "largest finite value, and max_sigma (|largest value| in standard deviations from the mean).",
    {"tensor": TENSOR_PARAM, "view": VIEW_PARAM},
    required=("tensor",),
)
def tensor_stats(ctx: ToolContext, tensor: str, view: str = "base") -> dict:
    s = profile_stats(ctx, tensor, view)
    return {**ctx.entry(tensor), "view": view, "stats": summarize_stats(s)}


def summarize_stats(s: dict) -> dict:
    std = s.get("std")
    mean = s.get("mean") or 0.0
    extreme = max(abs((s.get("max") or 0.0) - mean), abs((s.get("min") or 0.0) - mean)) if s.get("min") is not None else None
    numel = s.get("finite_count") or 0
    out = {k: sig(s.get(k)) for k in ("min", "max", "mean", "std", "abs_max", "l2_norm")}
    out["rms"] = sig(s["l2_norm"] / math.sqrt(numel)) if s.get("l2_norm") is not None and numel else None
    out["sparsity"] = sig(s.get("sparsity"), 4)
    out.update({k: s.get(k) for k in ("numel", "nan_count", "inf_count", "distinct_values") if k in s})
    out["kurtosis"] = sig(s.get("kurtosis"), 4)
    out["saturated_count"] = s.get("saturated_count")
    out["max_sigma"] = sig(extreme / std, 4) if std and extreme is not None else None
    out["percentiles"] = {k: sig(v) for k, v in (s.get("percentiles") or {}).items()}
    if s.get("of") == "magnitude":
        out["of"] = "magnitude (complex values)"
    return out


@tool(
    "Values of a small slice of a tensor (at most 4,096 cells). `slice` takes the viewer's "
    "parameters: dimN_start/dimN_end (optionally dimN_step) for at most two viewed dimensions and "
    "dimN_idx to fix the others, e.g. {\"dim0_start\": 0, \"dim0_end\": 8, \"dim1_start\": 100, "
    "\"dim1_end\": 116}. Open dimensions default to a window of 32 from 0. NaN/Inf show as null.",
    {"tensor": TENSOR_PARAM,
     "slice": {"type": "object", "maxProperties": 32, "additionalProperties": {"type": "integer"}, "default": {}},
     "view": VIEW_PARAM},
    required=("tensor",),
)
def tensor_slice(ctx: ToolContext, tensor: str, slice: dict, view: str = "base") -> dict:
    reader = ctx.reader(tensor, view)
    spec = slicing.parse_slice(reader.shape, slice, tensor=tensor, default_window=DEFAULT_SLICE_WINDOW,
                               max_cells=1 << 40)
    if spec.cells > MAX_SLICE_CELLS:
        raise TooLarge(
            f"slice {spec.definition} of {tensor!r} holds {spec.cells:,} cells, over the {MAX_SLICE_CELLS:,} "
            "a tool may return: narrow dimN_start/dimN_end or use dimN_step", tensor=tensor,
            limit=MAX_SLICE_CELLS)
    out = slicing.read_slice(reader, slice, default_window=DEFAULT_SLICE_WINDOW, max_cells=MAX_SLICE_CELLS)
    return {
        "tensor": tensor, "view": view, "shape": out["original_shape"], "dtype": out["dtype"],
        "slice": out["slice_definition"], "slice_shape": out["slice_shape"],
        "min": sig(out["min_value_in_slice"]), "max": sig(out["max_value_in_slice"]),
        "nonfinite_count": out["nonfinite_count"], "values": round_nested(out["data"]),
    }


@tool(
    "Histogram of a whole tensor's finite values: `bins` equal-width bins over its range, or over "
    "log10|x| with log=true (zeros counted apart).",
    {"tensor": TENSOR_PARAM, "bins": {"type": "integer", "minimum": 2, "maximum": 128, "default": 32},
     "log": {"type": "boolean", "default": False}, "view": VIEW_PARAM},
    required=("tensor",),
)
def tensor_histogram(ctx: ToolContext, tensor: str, bins: int = 32, log: bool = False, view: str = "base") -> dict:
    reader = ctx.reader(tensor, view)
    h = ctx.workspace.tensor_histogram(reader, bins=bins, lo=None, hi=None, log=log)
    out = {"tensor": tensor, "view": view, "bins": bins, "log": log, "total": h.get("total"),
           "edges": [sig(e, 4) for e in h.get("edges", [])], "counts": h.get("counts", [])}
    if log:
        out["zero_count"] = h.get("zero_count", 0)
    return out


# -- tools: edits are proposed, never staged ---------------------------------------------------

def _for_llm(schema):
    """An ops.py schema without its x- annotations (some providers refuse unknown keywords)."""
    if isinstance(schema, dict):
        return {k: _for_llm(v) for k, v in schema.items() if not k.startswith("x-")}
    if isinstance(schema, list):
        return [_for_llm(v) for v in schema]
    return schema


# The edit's parameters as surgery/ops.py defines them, with tighter caps on what an LLM may write
# in one call (its arguments are capped at MAX_ARGUMENT_CHARS anyway).
EDIT_FIELDS = _for_llm(ops.PARAMS)
EDIT_FIELDS["cells"]["maxItems"] = 256
EDIT_FIELDS["hex"]["maxLength"] = 8192
OP_LINES = "; ".join(
    f"{name}: {op.description} (target: {', '.join(op.targets) or 'none, byte offsets'})"
    for name, op in ops.OPS.items()
)


@tool(
    "Propose an edit for the user to review. It is NOT applied or staged: the user sees it with a "
    "preview and decides. Give `rationale` (why). The target is `cells`, a `slice`, or (neither) the whole "
    "tensor, optionally narrowed by `select`; an op refuses parameters it does not take. ops: " + OP_LINES
    + ". Returns the proposal and a dry-run preview of what it would change.",
    {"tensor_name": TENSOR_PARAM, "op": _for_llm(ops.OP_SCHEMA), **EDIT_FIELDS,
     "rationale": {"type": "string", "maxLength": 2000, "description": "why this edit, in a sentence or two"}},
    required=("tensor_name", "op"),
)
def propose_edit(ctx: ToolContext, tensor_name: str, op: str, rationale: str | None = None, **fields) -> dict:
    ctx.model.tensor(tensor_name)
    spec = ops.EditSpec(tensor_name=tensor_name, op=op, note=clip_text(rationale, 2000) if rationale else None, **fields)
    computed = ops.compute_edit(ctx.reader(tensor_name, "staged"), spec)  # read-only: a preview
    preview = computed.preview()
    preview.pop("sample", None)
    return {
        "proposal": spec.to_json(),
        "preview": {k: preview[k] for k in ("description", "targeted_values", "values_changed", "bytes_changed",
                                             "before", "after", "rounding")},
        "status": "proposed only: nothing was staged; the user can preview and stage it",
    }
