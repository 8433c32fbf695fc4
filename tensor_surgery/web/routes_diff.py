"""Model diff in the page: another model as the "base" of the open one, the diff as a job, its
per-tensor table, and slices of any tensor's delta (open model minus base)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path as PathParam, Request
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.diff import compile_match, diff_models
from ..analysis.diff_table import FORMATS, table_bytes
from ..errors import Conflict, InvalidRequest, SurgeryError
from ..store import slicing
from ..surgery.library import atomic_write
from .deps import JobsDep, ModelDep, SettingsDep, WorkspaceDep
from .routes_tensors import SLICE_DOC, slice_params

router = APIRouter(prefix="/api/diff", tags=["diff"])


class NoDiff(SurgeryError):
    code = "no_diff"
    http_status = 404


class DiffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(..., min_length=1, max_length=4096,
                      description="The base model (file, index or folder) inside ALLOWED_ROOTS; the open model is "
                      "compared against it")
    match: str | None = Field(None, max_length=1000, description="only tensors whose name matches this regular expression")
    rank: bool = Field(True, description="compute the numerical rank of each changed matrix's delta (an SVD each)")
    out: str | None = Field(None, max_length=4096,
                            description="also write the table to this new file inside ALLOWED_ROOTS "
                            f"({', '.join(FORMATS)}, from the extension)")


class DiffState:
    """The diff of the open model against its base: one per server (the page shows one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base = None  # the base Model
        self.model_path: str | None = None  # the model it was computed for
        self.job_id: str | None = None
        self.result: dict | None = None


def _state(request: Request) -> DiffState:
    st = getattr(request.app.state, "diff", None)
    if st is None:
        st = request.app.state.diff = DiffState()
    return st


DiffStateDep = Annotated[DiffState, Depends(_state)]


def _current(st: DiffState, model) -> DiffState:
    if st.base is None or st.model_path != model.path:
        raise NoDiff("no diff for the open model: POST /api/diff with a base model first")
    return st


@router.post("", status_code=202, summary="Compare the open model against a base model, as a job (follow /api/jobs/{id}/events)",
             responses={403: {"description": "base or out outside ALLOWED_ROOTS"}, 409: {"description": "out exists"}})
def start_diff(body: DiffRequest, ws: WorkspaceDep, jobs: JobsDep, model: ModelDep, st: DiffStateDep) -> dict:
    base = ws.open(body.base, make_current=False)  # checks ALLOWED_ROOTS, every shard included
    if base is model:
        raise InvalidRequest("the base is the open model itself; choose another model to compare with", field="base")
    out = None
    if body.out is not None:
        out = ws.roots.check(body.out, "diff output")
        if out.suffix.lower() not in FORMATS:
            raise InvalidRequest(f"out {body.out!r}: the extension names the format, one of {', '.join(FORMATS)}",
                                 field="out")
        if out.exists():
            raise Conflict(f"out {body.out!r} already exists; choose a new file", field="out", path=body.out)
    compile_match(body.match)  # a bad pattern is a 400 now, not a failed job later

    def run(progress) -> dict:
        result = diff_models(base, model, match=body.match, rank=body.rank, progress=progress)
        if out is not None:
            atomic_write(Path(out), table_bytes(result, out.suffix.lower()))
        with st.lock:
            if st.job_id == job_id[0]:  # a later diff replaced this one: keep the later
                st.result = result
        return {"summary": result["summary"], "base": base.path, "model": model.path,
                "out": str(out) if out else None}

    job_id = [None]
    with st.lock:
        job = jobs.start("diff", f"diff {model.name} against {base.name}", run,
                         meta={"base": base.path, "model": model.path})
        job_id[0] = st.job_id = job.id
        st.base, st.model_path, st.result = base, model.path, None
    return {"job": job.snapshot()}


@router.get("", summary="The diff of the open model against its base: summary and one row per tensor")
def get_diff(model: ModelDep, st: DiffStateDep, jobs: JobsDep) -> dict:
    _current(st, model)
    job = jobs.get(st.job_id).snapshot()
    if st.result is None:
        return {"base": st.base.path, "model": model.path, "job": job, "summary": None, "rows": []}
    return {**st.result, "job": job}


@router.delete("", summary="Forget the diff (the canvas goes back to its type colours)")
def delete_diff(st: DiffStateDep) -> dict:
    with st.lock:
        st.base = st.model_path = st.job_id = st.result = None
    return {"ok": True}


@router.get("/delta/{tensor_name:tensor}", summary="A slice of a tensor's delta: open model minus base, in float64",
            description="The same slice parameters and answer as /api/tensor_slice (`data` holds B - A). " + SLICE_DOC)
def delta_slice(tensor_name: Annotated[str, PathParam()], request: Request, ws: WorkspaceDep, model: ModelDep,
                settings: SettingsDep, st: DiffStateDep) -> dict:
    _current(st, model)
    rb = ws.reader(tensor_name, "base", model=model)
    if tensor_name not in st.base.tensors:
        raise InvalidRequest(f"{tensor_name!r} is not in the base model {st.base.name}: it has no delta",
                             tensor=tensor_name)
    ra = ws.reader(tensor_name, "base", model=st.base)
    if ra.shape != rb.shape:
        raise InvalidRequest(f"{tensor_name!r} is {list(ra.shape)} in the base but {list(rb.shape)} here: "
                             "no element-wise delta", tensor=tensor_name)
    for r in (ra, rb):
        if not r.dtype.decodable or r.dtype.kind == "complex":
            raise InvalidRequest(f"{tensor_name!r}: {r.dtype.name} values have no delta here", tensor=tensor_name)
    spec = slicing.parse_slice(rb.shape, slice_params(request), tensor=tensor_name, max_cells=settings.max_slice_cells)
    with np.errstate(invalid="ignore", over="ignore"):
        delta = rb.read_values(spec.index).astype(np.float64) - ra.read_values(spec.index).astype(np.float64)
    lo, hi, nonfinite = slicing._finite_range(delta)
    return {
        "tensor_name": tensor_name, "original_shape": list(rb.shape), "slice_definition": spec.definition,
        "slice_shape": list(delta.shape), "viewed_dims": list(spec.viewed), "bounds": spec.bounds(),
        "dtype": "F64", "base_dtype": ra.dtype.name, "model_dtype": rb.dtype.name, "view": "delta",
        "data": slicing.to_json_values(delta), "min_value_in_slice": lo, "max_value_in_slice": hi,
        "nonfinite_count": nonfinite,
    }
