"""The agent's tools: read-only functions over the open model, in one registry that the LLM loop,
the manual mode (web and CLI) and their JSON-schema descriptions all share.

A tool takes a `ToolContext` and keyword arguments validated against its JSON schema, and
returns a JSON-ready dict whose size is capped (lists truncated with counts, slices capped in
cells). Nothing here writes, stages, or opens a path that an argument names: tensor names are
only looked up in the open model, and `propose_edit` computes a dry-run preview, never a staged
edit. Tensor names and metadata come from a hostile file; they leave here only as JSON values.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidRequest, SurgeryError, TooLarge
from ..store import Model, TensorReader
from ..store import slicing
from ..store.layout import TYPE_GROUPS, CanvasMeta, infer_layout
from ..workspace import Workspace

log = logging.getLogger("tensor_surgery")

MAX_ARGUMENT_CHARS = 32_000  # a tool call's arguments, as JSON text
MAX_RESULT_CHARS = 48_000  # about 12k tokens: what one tool result may put in the LLM's context
MAX_SLICE_CELLS = 4096
DEFAULT_SLICE_WINDOW = 32  # per viewed dimension when the slice leaves it open: 32 x 32 = 1,024 cells
VIEW_PARAM = {"type": "string", "enum": ["base", "staged"], "default": "base",
              "description": "base: the model's bytes; staged: with the user's staged edits overlaid"}
TENSOR_PARAM = {"type": "string", "minLength": 1, "maxLength": 4096,
                "description": "exact tensor name, as listed by list_tensors"}


class UnknownTool(SurgeryError):
    code = "unknown_tool"
    http_status = 404


class InvalidArguments(InvalidRequest):
    code = "invalid_arguments"


class OversizedArguments(TooLarge):
    code = "oversized_arguments"


class Cancelled(SurgeryError):
    code = "cancelled"
    http_status = 409
    exit_code = 1


@dataclass
class ToolContext:
    """What a tool may use: the workspace (caches, readers) and the model it works on."""

    workspace: Workspace
    model: Model
    progress: Callable[[str, int, int], None] | None = None  # (what, done, total)
    cancelled: Callable[[], bool] = lambda: False

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled("the question was cancelled")

    def report(self, what: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(what, done, total)

    def reader(self, name: str, view: str = "base") -> TensorReader:
        return self.workspace.reader(name, view, self.model)

    def layout(self) -> dict[str, CanvasMeta]:
        key = ("agent-layout", self.model.path, tuple(f.identity for f in self.model.files))
        refs = list(self.model.tensors.values())
        return self.workspace.cache.get_or_compute(
            key, lambda: infer_layout([r.name for r in refs], [r.shape for r in refs]),
            lambda d: 400 * len(d) + 1024,
        )

    def entry(self, name: str) -> dict:
        """A tensor's compact description: what list_tensors shows for it."""
        ref = self.model.tensor(name)
        meta = self.layout()[name]
        return {"name": name, "shape": list(ref.shape), "dtype": ref.dtype.name, "numel": ref.numel,
                "layer": meta.layer_index, "type_group": meta.type_group, "role": meta.specific_type_key}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments (an object)
    fn: Callable[..., dict] = field(repr=False)

    def schema(self) -> dict:
        """The OpenAI-style function description LiteLLM passes on to any provider."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


REGISTRY: dict[str, Tool] = {}


def tool(description: str, properties: dict | None = None, required: tuple[str, ...] = ()):
    """Register `fn(ctx, **arguments)` as a tool named after the function."""

    def register(fn):
        params = {"type": "object", "properties": properties or {}, "additionalProperties": False}
        if required:
            params["required"] = list(required)
        REGISTRY[fn.__name__] = Tool(fn.__name__, description, params, fn)
        return fn

    return register


def tool_schemas() -> list[dict]:
    return [t.schema() for t in REGISTRY.values()]


def get_tool(name: str) -> Tool:
    t = REGISTRY.get(name) if isinstance(name, str) else None
    if t is None:
        shown = name if isinstance(name, str) and len(name) <= 80 else repr(name)[:80]
        raise UnknownTool(f"no tool named {shown!r}; the tools are: {', '.join(REGISTRY)}", tool=shown)
    return t


# -- argument validation (the JSON-schema subset the tools use) -------------------------------

_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def _type_ok(value, type_name: str) -> bool:
    if type_name == "null":
        return value is None
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    if type_name == "number" and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _TYPES[type_name])


def validate(value, schema: dict, where: str) -> None:
    """Raise InvalidArguments naming the argument and the rule it breaks."""
    types = schema.get("type")
    if types is not None:
        options = types if isinstance(types, list) else [types]
        if not any(_type_ok(value, t) for t in options):
            raise InvalidArguments(f"{where} must be {' or '.join(options)}, got {_short(value)}", field=where)
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        raise InvalidArguments(f"{where} must be one of {', '.join(map(str, schema['enum']))}, got {_short(value)}",
                               field=where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidArguments(f"{where} must be at least {schema['minimum']}, got {value}", field=where)
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidArguments(f"{where} must be at most {schema['maximum']}, got {value}", field=where)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise InvalidArguments(f"{where} must not be empty", field=where)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidArguments(f"{where} is {len(value):,} characters, over the {schema['maxLength']:,} allowed",
                                   field=where)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise InvalidArguments(f"{where} needs at least {schema['minItems']} item(s)", field=where)
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidArguments(f"{where} holds {len(value)} items, over the {schema['maxItems']} allowed",
                                   field=where)
        for i, item in enumerate(value):
            if "items" in schema:
                validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise InvalidArguments(f"{where}.{key} is required" if where else f"argument {key!r} is required",
                                       field=key)
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise InvalidArguments(f"{where} has over {schema['maxProperties']} keys", field=where)
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in props:
                validate(item, props[key], path)
            elif extra is False:
                allowed = ", ".join(props) or "none"
                raise InvalidArguments(f"unknown argument {_short(key)} (allowed: {allowed})", field=path)
            elif isinstance(extra, dict):
                validate(item, extra, path)


def _short(value, n: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def run_tool(ctx: ToolContext, name: str, arguments: dict | None) -> dict:
    """Validate `arguments` against the tool's schema (defaults filled in) and run it."""
    t = get_tool(name)
    arguments = {} if arguments is None else arguments
    validate(arguments, t.parameters, "")
    kwargs = {k: s["default"] for k, s in t.parameters["properties"].items() if "default" in s}
    kwargs.update(arguments)
    result = t.fn(ctx, **kwargs)
    return cap_result(result)


def cap_result(result: dict) -> dict:
    """The result as is when its JSON fits MAX_RESULT_CHARS; else its beginning, marked truncated."""
    try:
        text = json.dumps(result, default=str, allow_nan=False)
    except ValueError:  # a NaN or inf somewhere: JSON has neither (and the browser's parser refuses them)
        result = _finite(result)
        text = json.dumps(result, default=str, allow_nan=False)
    if len(text) <= MAX_RESULT_CHARS:
        return result
    return {"truncated": True, "total_chars": len(text),
            "note": "the result was too large and is cut; narrow the request (fewer tensors, a smaller slice)",
            "partial_json": text[:MAX_RESULT_CHARS - 400]}


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_tool_call(ctx: ToolContext, name, raw_arguments) -> tuple[bool, dict]:
    """A tool call as an LLM sends it (arguments as JSON text): (ok, result) or (False, {"error"}).

    Every failure, the LLM's (unknown tool, malformed or oversized arguments, a bad value) or the
    data's (a NaN slice, an undecodable dtype), becomes an error the LLM reads and can recover from.
    """
    try:
        if isinstance(raw_arguments, str) and len(raw_arguments) > MAX_ARGUMENT_CHARS:
            raise OversizedArguments(
                f"the arguments are {len(raw_arguments):,} characters, over the {MAX_ARGUMENT_CHARS:,} allowed",
                limit=MAX_ARGUMENT_CHARS)
        get_tool(name)
        args = parse_arguments(raw_arguments)
        return True, run_tool(ctx, name, args)
    except Cancelled:
        raise
    except SurgeryError as e:
        return False, {"error": e.to_dict()}
    except Exception as e:  # a bug in a tool: reported in the conversation, logged with its traceback
        log.exception("agent tool %s failed", name)
        return False, {"error": {"code": "internal_error",
                                 "message": f"the tool failed ({type(e).__name__}); this is a bug, see the server log"}}


def parse_arguments(raw) -> dict:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise InvalidArguments(f"arguments must be a JSON object, got {type(raw).__name__}")
    try:
        args = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InvalidArguments(f"the arguments are not valid JSON ({e}); send one JSON object") from None
    if not isinstance(args, dict):
        raise InvalidArguments(f"the arguments must be a JSON object, got {type(args).__name__}")
    return args


# -- small helpers ------------------------------------------------------------------------------


def sig(v, digits: int = 5):
    """A float rounded to `digits` significant digits (what an LLM needs); None for NaN/inf/None."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    f = float(v)
    if not math.isfinite(f):
        return None
    return float(f"{f:.{digits}g}")


def _round_nested(values, digits: int = 4):
    if isinstance(values, list):
        return [_round_nested(v, digits) for v in values]
    if isinstance(values, float):
        return sig(values, digits)
    return values


def clip_text(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- tools: the model and its tensors -----------------------------------------------------------


@tool("What the open model is: tensor count, bytes, dtypes, layer count, tensors per type group, "
      "file metadata, whether a tokenizer is available. Start here.")
def model_summary(ctx: ToolContext) -> dict:
    from .tokens import embedding_candidates, tokenizer_path

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
    from ..store import stats as st

    reader = ctx.reader(name, view)
    ref = reader.ref
    key = ("agent-tails", ref.file.path, ref.file.identity, ref.name, reader.cache_token)
    total = max(reader.numel, 1)

    def tick(done, _total):
        ctx.check_cancelled()
        if progress:
            progress(done, total)
        else:
            ctx.report(f"statistics of {name}", done, total)

    stats, counts = ctx.workspace.stats_and_counts(reader, progress=tick)
    tails = ctx.workspace.cache.get_or_compute(
        key, lambda: st.tail_stats(reader, stats, counts, progress=tick), lambda _: 512)
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
        "nonfinite_count": out["nonfinite_count"], "values": _round_nested(out["data"]),
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

EDIT_FIELDS = {
    "cells": {"type": "array", "maxItems": 256, "description": "op=set: [{index: [i, j], value: x}]",
              "items": {"type": "object", "additionalProperties": False, "required": ["index"],
                        "properties": {"index": {"type": "array", "maxItems": 16, "items": {"type": "integer"}},
                                       "value": {"type": "number"}}}},
    "slice": {"type": "object", "maxProperties": 32, "additionalProperties": {"type": "integer"},
              "description": "target region in the viewer's dimN_* parameters (omit: the whole tensor)"},
    "select": {"type": "object", "additionalProperties": False, "required": ["mode", "value"],
               "properties": {"mode": {"type": "string", "enum": ["above_percentile", "below_percentile",
                                                                  "top_k_abs", "bottom_k_abs"]},
                              "value": {"type": "number"}}},
    "value": {"type": "number", "description": "fill value, or the amount to add"},
    "factor": {"type": "number", "description": "scale factor"},
    "min": {"type": "number", "description": "clamp lower bound"},
    "max": {"type": "number", "description": "clamp upper bound"},
    "axis": {"type": "string", "enum": ["rows", "cols", "all"]},
    "target_norm": {"type": "number", "minimum": 0},
    "offset": {"type": "integer", "minimum": 0, "description": "write_hex: byte offset in the tensor"},
    "hex": {"type": "string", "maxLength": 8192, "description": "write_hex: the new bytes"},
}


@tool(
    "Propose an edit for the user to review. It is NOT applied or staged: the user sees it with a "
    "preview and decides. Give `rationale` (why). ops: set (cells with values), fill, zero, scale, "
    "add, clamp, normalize, write_hex; the target is `cells`, a `slice`, or the whole tensor, "
    "optionally narrowed by `select`. Returns the proposal and a dry-run preview of what it would change.",
    {"tensor_name": TENSOR_PARAM,
     "op": {"type": "string", "enum": ["set", "fill", "zero", "scale", "add", "clamp", "normalize", "write_hex"]},
     **EDIT_FIELDS,
     "rationale": {"type": "string", "maxLength": 2000, "description": "why this edit, in a sentence or two"}},
    required=("tensor_name", "op"),
)
def propose_edit(ctx: ToolContext, tensor_name: str, op: str, rationale: str | None = None, **fields) -> dict:
    from ..surgery.ops import EditSpec, compute_edit

    ctx.model.tensor(tensor_name)
    spec = EditSpec(tensor_name=tensor_name, op=op, note=clip_text(rationale, 2000) if rationale else None, **fields)
    computed = compute_edit(ctx.reader(tensor_name, "staged"), spec)  # read-only: a preview
    preview = computed.preview()
    preview.pop("sample", None)
    return {
        "proposal": spec.to_json(),
        "preview": {k: preview[k] for k in ("description", "targeted_values", "values_changed", "bytes_changed",
                                             "before", "after", "rounding")},
        "status": "proposed only: nothing was staged; the user can preview and stage it",
    }


# the token and model-wide tools register themselves on import
from . import scan as _scan  # noqa: E402,F401
from . import tokens as _tokens  # noqa: E402,F401

