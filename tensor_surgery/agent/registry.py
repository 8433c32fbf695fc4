"""The agent's tool machinery: the `Tool` record, the `@tool` marker, argument validation against
each tool's JSON schema, running a tool (or an LLM's tool call) with its result capped, and the
helpers tools share. The tools themselves live in `tensors.py`, `scan.py` and `tokens.py`; `tools.py`
gathers them into the one registry that the LLM loop, the manual mode (web and CLI) and their
JSON-schema descriptions all share.

A tool takes a `ToolContext` and keyword arguments validated against its JSON schema, and returns
a JSON-ready dict whose size is capped (lists truncated with counts, slices capped in cells).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..errors import InvalidRequest, SurgeryError, TooLarge
from ..store import Model, TensorReader
from ..store.layout import CanvasMeta, infer_layout
from ..workspace import Workspace, model_cache_key

log = logging.getLogger("tensor_surgery")

MAX_ARGUMENT_CHARS = 32_000  # a tool call's arguments, as JSON text
MAX_RESULT_CHARS = 48_000  # about 12k tokens: what one tool result may put in the LLM's context
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
        refs = list(self.model.tensors.values())
        return self.workspace.cached(
            model_cache_key("agent-layout", self.model),
            lambda: infer_layout([r.name for r in refs], [r.shape for r in refs]),
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


def tool(description: str, properties: dict | None = None, required: tuple[str, ...] = ()):
    """Mark `fn(ctx, **arguments)` as a tool named after the function (`Registry.collect` finds it)."""

    def mark(fn):
        params = {"type": "object", "properties": properties or {}, "additionalProperties": False}
        if required:
            params["required"] = list(required)
        fn.agent_tool = Tool(fn.__name__, description, params, fn)
        return fn

    return mark


class Registry(dict[str, Tool]):
    """Tools by name, in the order the LLM is shown them."""

    @classmethod
    def collect(cls, modules: Iterable[ModuleType]) -> Registry:
        """Every function marked with @tool in `modules`, in module then definition order."""
        reg = cls()
        for module in modules:
            for value in vars(module).values():
                t = getattr(value, "agent_tool", None)
                if isinstance(t, Tool) and value.__module__ == module.__name__:
                    if t.name in reg:
                        raise ValueError(f"two agent tools are named {t.name!r}")
                    reg[t.name] = t
        return reg

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.values()]

    def find(self, name: str) -> Tool:
        t = self.get(name) if isinstance(name, str) else None
        if t is None:
            shown = name if isinstance(name, str) and len(name) <= 80 else repr(name)[:80]
            raise UnknownTool(f"no tool named {shown!r}; the tools are: {', '.join(self)}", tool=shown)
        return t

    def run(self, ctx: ToolContext, name: str, arguments: dict | None) -> dict:
        """Validate `arguments` against the tool's schema (defaults filled in) and run it."""
        t = self.find(name)
        arguments = {} if arguments is None else arguments
        validate(arguments, t.parameters, "")
        kwargs = {k: s["default"] for k, s in t.parameters["properties"].items() if "default" in s}
        kwargs.update(arguments)
        return cap_result(t.fn(ctx, **kwargs))

    def run_call(self, ctx: ToolContext, name, raw_arguments) -> tuple[bool, dict]:
        """A tool call as an LLM sends it (arguments as JSON text): (ok, result) or (False, {"error"}).

        Every failure, the LLM's (unknown tool, malformed or oversized arguments, a bad value) or the
        data's (a NaN slice, an undecodable dtype), becomes an error the LLM reads and can recover from.
        """
        try:
            if isinstance(raw_arguments, str) and len(raw_arguments) > MAX_ARGUMENT_CHARS:
                raise OversizedArguments(
                    f"the arguments are {len(raw_arguments):,} characters, over the {MAX_ARGUMENT_CHARS:,} allowed",
                    limit=MAX_ARGUMENT_CHARS)
            self.find(name)
            return True, self.run(ctx, name, parse_arguments(raw_arguments))
        except Cancelled:
            raise
        except SurgeryError as e:
            return False, {"error": e.to_dict()}
        except Exception as e:  # a bug in a tool: reported in the conversation, logged with its traceback
            log.exception("agent tool %s failed", name)
            return False, {"error": {"code": "internal_error",
                                     "message": f"the tool failed ({type(e).__name__}); this is a bug, see the server log"}}


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


# -- helpers the tools share ------------------------------------------------------------------------------


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


def round_nested(values, digits: int = 4):
    if isinstance(values, list):
        return [round_nested(v, digits) for v in values]
    if isinstance(values, float):
        return sig(values, digits)
    return values


def clip_text(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
