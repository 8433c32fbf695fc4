"""Staging edits: preview (dry run), stage, list, revert, undo, redo."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from ..surgery.ops import EditSpec
from .deps import ModelDep, StagingDep

router = APIRouter(prefix="/api", tags=["edits"])


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: list[int] = Field(..., max_length=16, description="one index per dimension")
    value: float | None = Field(None, description="new value (op=set)")


class Select(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["above_percentile", "below_percentile", "top_k_abs", "bottom_k_abs"]
    value: float = Field(..., description="the percentile (0-100) or k")


class EditRequest(BaseModel):
    """One edit. Target: `cells`, or `slice` (the viewer's dimN_* parameters), or the whole tensor;
    optionally narrowed by `select`. Values are computed in float64 and cast to the tensor's dtype
    with round-to-nearest-even."""

    model_config = ConfigDict(extra="forbid")
    tensor_name: str = Field(..., min_length=1, max_length=4096)
    op: Literal["set", "fill", "zero", "scale", "add", "clamp", "normalize", "write_hex"]
    cells: list[Cell] | None = Field(None, max_length=100_000)
    slice: dict[str, int] | None = Field(None, description="e.g. {dim0_start: 0, dim0_end: 32, dim1_start: 0, dim1_end: 32}")
    select: Select | None = None
    value: float | None = Field(None, description="fill value, or the amount to add")
    factor: float | None = Field(None, description="scale factor")
    min: float | None = Field(None, description="clamp lower bound")
    max: float | None = Field(None, description="clamp upper bound")
    axis: Literal["rows", "cols", "all"] | None = Field(None, description="normalize: each row, each column, or all")
    target_norm: float | None = Field(None, ge=0, description="normalize: the L2 norm to reach")
    offset: int | None = Field(None, ge=0, description="write_hex: byte offset from the tensor's first byte")
    hex: str | None = Field(None, max_length=2 * (1 << 20) + 1024, description="write_hex: the new bytes")
    dry_run: bool = Field(False, description="preview the change without staging it")

    def to_spec(self) -> EditSpec:
        d = self.model_dump(exclude={"dry_run"}, exclude_none=True)
        if "cells" in d:
            d["cells"] = [{k: v for k, v in c.items() if v is not None} for c in d["cells"]]
        return EditSpec(**d)


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
    edit_id: Annotated[int, Path(ge=1)], staging: StagingDep, model: ModelDep,
    runs: Annotated[int, Query(ge=0, le=10_000)] = 200,
) -> dict:
    return staging.get_edit(model, edit_id).summary(runs_limit=runs)


@router.post("/edits/{edit_id}/revert", summary="Revert one edit, as an undoable step (refused, naming them, if later edits build on it)")
def revert_edit(edit_id: Annotated[int, Path(ge=1)], staging: StagingDep, model: ModelDep) -> dict:
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
