"""Transplant: plan (with verdicts), stage a same-shape plan as edits, write a new model as a job.

Both models are opened beside the current one (never replacing it); every path, the output's
included, must lie inside ALLOWED_ROOTS; the output is never a model being read nor inside its
folder, and never a server folder (DATA_DIR, PATCH_DIR, an allowed root) itself.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..store import Model
from ..store.layout import infer_layout
from ..surgery.recipe import build_recipe
from ..surgery.transplant import TransplantSpec, plan_transplant, stage_runs, write_transplant
from ..surgery.writer import parse_size
from ..workspace import Workspace
from .deps import JobsDep, SettingsDep, StagingDep, WorkspaceDep
from .routes_export import protected_folders

router = APIRouter(prefix="/api/transplant", tags=["transplant"])

Name = Annotated[str, Field(min_length=1, max_length=1024)]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Name = Field(alias="from", description="a tensor name, a name prefix (module) or 'layer N'")
    to: Name = Field(description="the tensor name, prefix or 'layer N' it replaces or adds")


class TransplantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str | None = Field(None, max_length=4096, description="the model transplanted into (default: the open model)")
    source: str | None = Field(None, max_length=4096, description="where tensors come from (default: the target)")
    map: list[Pair] = Field(default_factory=list, max_length=1000, description="source -> target pairs, applied in order")
    rename: list[Pair] = Field(default_factory=list, max_length=1000, description="renames in the result")
    delete: list[Name] = Field(default_factory=list, max_length=1000, description="tensors or prefixes left out")
    duplicate_layers: list[Annotated[int, Field(ge=0, le=1 << 20)]] = Field(
        default_factory=list, max_length=1000, description="layers written again right after themselves (target numbering)")
    remove_layers: list[Annotated[int, Field(ge=0, le=1 << 20)]] = Field(
        default_factory=list, max_length=1000, description="layers left out (target numbering)")
    dtype_policy: Literal["convert", "refuse", "keep"] = Field(
        "convert", description="a source tensor of another dtype: convert to the target's (round to nearest even), "
        "refuse, or keep the source's")
    resize_vocab: int | None = Field(None, ge=1, le=1 << 31, description="resize embedding and lm_head rows to this")
    max_shard_size: str | int | None = Field(None, description="shard the output at this size (default: like the target)")

    def spec(self) -> TransplantSpec:
        shard = parse_size(self.max_shard_size) if self.max_shard_size is not None else None
        return TransplantSpec([(p.from_, p.to) for p in self.map], [(p.from_, p.to) for p in self.rename],
                              list(self.delete), list(self.duplicate_layers), list(self.remove_layers),
                              self.dtype_policy, self.resize_vocab, shard)


class WriteRequest(TransplantRequest):
    out: str | None = Field(None, max_length=4096, description="the new model's folder (or .safetensors file) inside "
                            "ALLOWED_ROOTS. Default: DATA_DIR/exports/<target>-transplant-<time>")
    overwrite: bool = Field(False, description="replace OUT if it is a previous export or transplant")
    recipe: bool = Field(True, description="save the recipe beside the output (hashes both models' weights)")


def _models(ws: Workspace, body: TransplantRequest) -> tuple[Model, Model | None]:
    target = ws.open(body.target, make_current=False) if body.target else ws.model()
    source = ws.open(body.source, make_current=False) if body.source else None
    return target, source


@router.get("/tensors", summary="Any allowed model's tensors (name, shape, dtype, bytes, layer, type group), for picking")
def model_tensors(ws: WorkspaceDep, path: Annotated[str | None, Query(max_length=4096)] = None) -> dict:
    model = ws.open(path, make_current=False) if path else ws.model()
    refs = list(model.tensors.values())
    layout = infer_layout([r.name for r in refs], [r.shape for r in refs])
    return {"model": {"name": model.name, "path": model.path, "tensor_count": len(refs), "total_bytes": model.nbytes},
            "tensors": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype.name, "nbytes": r.nbytes,
                         "layer_index": layout[r.name].layer_index, "type_group": layout[r.name].type_group}
                        for r in refs]}


@router.post("/plan", summary="The plan: each source -> target pair with shapes, dtypes, bytes and a compatibility "
             "verdict (ok / warning / will_fail) and reason; nothing is written")
def plan(body: TransplantRequest, ws: WorkspaceDep, staging: StagingDep) -> dict:
    target, source = _models(ws, body)
    result = plan_transplant(target, source, body.spec()).to_json()
    staged = staging.staged_tensors(target)
    if staged:
        result["notes"].append(f"{target.name} has staged edits in {len(staged)} tensor(s): a written transplant reads "
                               "its files as they are on disk, without them (export them first to include them); "
                               "staging the transplant builds on them")
    return result


@router.post("/stage", summary="Stage a same-shape, same-dtype plan as byte edits on the open model (409 otherwise)")
def stage(body: TransplantRequest, ws: WorkspaceDep, staging: StagingDep) -> dict:
    from ..surgery.transplant import NotStageable

    target, source = _models(ws, body)
    if target is not ws.current:
        raise NotStageable(f"staged edits belong to the open model, and {target.name} is not it: open it first, "
                           "or write a new model", model=target.path)
    p = plan_transplant(target, source, body.spec())
    runs = stage_runs(p, staging.current_bytes(target))
    pairs = ", ".join(f"{a} -> {b}" for a, b in p.spec.maps) or "transplant"
    origin = "" if p.source is p.target else f" from {p.source.name}"
    edit = staging.stage_runs(target, f"transplant{origin}: {pairs}"[:500],
                              {"op": "transplant", "source": p.source.path, **p.spec.to_json()}, runs)
    return {"edit": edit.summary(), "runs": len(runs), "bytes": sum(len(r.new) for r in runs),
            "tensors": [i.name for i in p.changed]}


@router.post("/write", status_code=202, summary="Write the plan as a new model (a job: follow /api/jobs/{id}/events); "
             "its result names the output, its files and the recipe")
def write(body: WriteRequest, ws: WorkspaceDep, settings: SettingsDep, jobs: JobsDep) -> dict:
    from ..surgery.transplant import check_output

    target, source = _models(ws, body)
    out = body.out or str(settings.data_dir / "exports" / f"{target.name}-transplant-{time.strftime('%Y%m%d-%H%M%S')}")
    out_path = ws.roots.check(out, "transplant output")
    p = plan_transplant(target, source, body.spec())
    protected = protected_folders(settings, ws)
    check_output(p, out_path, body.overwrite, protected)  # before the job: a bad output is a 4xx now
    hashed = (target.nbytes + (source.nbytes if source is not None and source is not target else 0)) if body.recipe else 0

    def work(progress):
        total = hashed + sum(i.nbytes for i in p.items)
        recipe = None
        if body.recipe:  # hashing both models' weights first: the recipe names them
            recipe = build_recipe(target, source, p.spec, lambda d, _t: progress(d, total))
        return write_transplant(p, out_path, recipe=recipe, overwrite=body.overwrite, protected=protected,
                                progress=lambda d, _t: progress(hashed + d, total))

    job = jobs.start("transplant", f"transplant into {target.name} -> {out_path}", work,
                     meta={"out": str(out_path), "will_load": bool(p.compat.will_load)})
    return {"job": job.snapshot(), "plan": {"verdict": p.to_json()["verdict"], "will_load": bool(p.compat.will_load)},
            "out": os.fspath(out_path)}
