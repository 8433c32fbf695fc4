"""Staging edits: preview (dry run), stage, list, revert, undo, redo."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..surgery import ops
from ..surgery.ops import EditSpec
from .deps import IdPath, ModelDep, StagingDep

router = APIRouter(prefix="/api", tags=["edits"])

# JSON-schema keywords of ops.PARAMS -> pydantic Field constraints
_CONSTRAINTS = {"minimum": "ge", "maximum": "le", "minLength": "min_length", "maxLength": "max_length",
                "minItems": "min_length", "maxItems": "max_length", "maxProperties": "max_length"}


def _annotation(schema: dict, name: str) -> Any:
    """The Python type of a JSON-schema fragment of surgery/ops.py (the subset it uses)."""
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    kind = schema["type"]
    if kind == "array":
        return list[_annotation(schema["items"], name)]
    if kind == "object" and "properties" in schema:
        return _model(name, schema)
    if kind == "object":
        return dict[str, _annotation(schema["additionalProperties"], name)]
    return {"number": float, "integer": int, "string": str, "boolean": bool}[kind]


def _field(schema: dict, default: Any) -> Any:
    kw = {_CONSTRAINTS[k]: v for k, v in schema.items() if k in _CONSTRAINTS}
    if schema.get("type") == "number":
        kw["allow_inf_nan"] = False  # JSON numbers are finite; 1e400 parses as inf
    extra = {k: v for k, v in schema.items() if k.startswith("x-")}
    return Field(default, description=schema.get("description"), json_schema_extra=extra or None, **kw)


def _fields(schema: dict) -> dict[str, Any]:
    required = set(schema.get("required", ()))
    fields: dict[str, Any] = {}
    for key, sub in schema["properties"].items():
        kind = _annotation(sub, f"Edit{key.capitalize().removesuffix('s')}")  # cells -> EditCell
        fields[key] = (kind, _field(sub, ...)) if key in required else (kind | None, _field(sub, None))
    return fields


def _model(name: str, schema: dict) -> type[BaseModel]:
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=schema.get("description"),
                        **_fields(schema))


class _EditRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_spec(self) -> EditSpec:
        d = self.model_dump(exclude={"dry_run"}, exclude_none=True)
        if "cells" in d:
            d["cells"] = [{k: v for k, v in c.items() if v is not None} for c in d["cells"]]
        return EditSpec(**d)


# Built from surgery/ops.py, the one definition of an edit. In /openapi.json, the schema
# components.schemas.EditRequest lists the operations in properties.op.enum (their meanings in
# x-enum-descriptions, the parameters each takes in x-op-parameters), and components.schemas.EditSelect
# the select modes (properties.mode.enum, x-enum-descriptions).
EditRequest = create_model(
    "EditRequest",
    __base__=_EditRequestBase,
    __doc__="One edit. Target: `cells`, or `slice` (the viewer's dimN_* parameters), or the whole tensor; "
    "optionally narrowed by `select`. Values are computed in float64 and cast to the tensor's dtype with "
    "round-to-nearest-even. The parameters each `op` takes: `x-op-parameters` on `op`; any other is refused.",
    tensor_name=(str, Field(..., min_length=1, max_length=4096, description="the tensor to edit")),
    **_fields({"properties": {"op": ops.OP_SCHEMA, **ops.PARAMS}, "required": ["op"]}),
    dry_run=(bool, Field(False, description="preview the change without staging it")),
)


@router.post(
    "/edit_tensor",
    summary="Stage an edit (or preview it with dry_run)",
    description="Returns the preview (values and bytes changed, before/after statistics of the touched "
    "values, rounding) and, unless dry_run, the staged edit.",
)
def edit_tensor(body: EditRequest, staging: StagingDep, model: ModelDep) -> dict:
    spec = body.to_spec()
    if body.dry_run:
        return {"dry_run": True, "preview": staging.preview(model, spec).preview()}
    computed, staged = staging.edit(model, spec)
    return {"dry_run": False, "preview": computed.preview(), "edit": staged.summary()}


@router.get("/edits", summary="Staged edits (oldest first), the redo stack, and which tensors are touched")
def list_edits(staging: StagingDep, model: ModelDep) -> dict:
    return {
        "model": model.name,
        "edits": [e.summary() for e in staging.edits(model, with_runs=False)],
        "undone": [e.summary() for e in staging.undone(model, with_runs=False)],
        "staged_tensors": staging.staged_tensors(model),
    }


# (declared before /edits/{edit_id}, which would otherwise take "history" for an id)
@router.get(
    "/edits/history",
    summary="What undo and redo would do now: each {action: stage | revert, edit_id, description} or null",
    description="Undo takes back the latest step (staging an edit, or reverting one); redo does the most "
    "recently undone step again.",
)
def edit_history(staging: StagingDep, model: ModelDep) -> dict:
    from ..surgery.staging import model_key

    return staging.journal.history(model_key(model))


@router.get("/edits/{edit_id}", summary="One staged edit with its byte runs (offset, original and new hex)")
def get_edit(
    edit_id: IdPath, staging: StagingDep, model: ModelDep,
    runs: Annotated[int, Query(ge=0, le=10_000)] = 200,
) -> dict:
    return staging.get_edit(model, edit_id).summary(runs_limit=runs)


@router.post("/edits/{edit_id}/revert", summary="Revert one edit, as an undoable step (refused, naming them, if later edits build on it)")
def revert_edit(edit_id: IdPath, staging: StagingDep, model: ModelDep) -> dict:
    return {"reverted": staging.revert(model, edit_id).summary()}


@router.post("/edits/undo", summary="Undo the latest step: a staged edit (status undone) or a revert (status staged again)")
def undo(staging: StagingDep, model: ModelDep) -> dict:
    return {"undone": staging.undo(model).summary()}


@router.post("/edits/redo", summary="Redo the most recently undone step: restage an edit, or revert it again")
def redo(staging: StagingDep, model: ModelDep) -> dict:
    return {"redone": staging.redo(model).summary()}


@router.delete("/edits", summary="Discard every staged edit of the current model")
def clear_edits(staging: StagingDep, model: ModelDep) -> dict:
    return {"cleared": staging.clear(model)}
