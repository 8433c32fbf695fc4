"""Export a new model with staged edits and/or patches applied, as a job with progress events.

Overwriting replaces only a previous export (never DATA_DIR, PATCH_DIR, an allowed root, the open
model or anything holding one of them); what killed exports left behind is cleaned at start and
before each export, and jobs a kill cut short are listed as `interrupted`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path as PathlibPath
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..jobs import JobRunner
from ..settings import Settings
from ..surgery import signing as sg
from ..surgery.apply import check_no_pending_intent
from ..surgery.leftovers import clean_export_leftovers, clean_in_place_leftovers
from ..surgery.writer import export_model, parse_size, plan_export
from ..workspace import Workspace
from .deps import JobsDep, LibraryDep, ModelDep, SettingsDep, StagingDep, WorkspaceDep

router = APIRouter(prefix="/api", tags=["export"])


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str | None = Field(
        None, max_length=4096,
        description="Output folder (or .safetensors file) inside ALLOWED_ROOTS. Default: DATA_DIR/exports/<model>-<time>",
    )
    include_staged: bool = Field(True, description="apply the staged edits")
    patches: list[str] = Field(default_factory=list, max_length=100, description="library patches applied after them, in order")
    max_shard_size: str | int | None = Field(None, description="re-shard to at most this per file, e.g. '2GB' (default: same sharding)")
    overwrite: bool = Field(
        False, description="replace OUT if it is a previous export (unchanged since, holding nothing else); "
        "anything else that exists is refused with 409 `not_an_export`",
    )


def protected_folders(settings: Settings, ws: Workspace) -> list[tuple[str, object]]:
    """What an export never replaces nor holds: the server's own folders."""
    return [("DATA_DIR", settings.data_dir), ("PATCH_DIR", settings.patch_dir),
            *(("an allowed root", r) for r in ws.roots.roots)]


def clean_leftovers_at_start(settings: Settings, ws: Workspace, jobs: JobRunner) -> list[str]:
    """At start: remove what killed exports left (in DATA_DIR/exports and beside the output of
    each export or transplant found interrupted: both write through the same hidden partial
    folders) and what killed in-place applies left beside the open model."""
    folders = {settings.data_dir / "exports"}
    for job in jobs.interrupted:
        if job.kind in ("export", "transplant") and isinstance(job.meta.get("out"), str):
            out = job.meta["out"]
            if out in ws.roots:
                folders.add(PathlibPath(out).parent)
    removed = [p for f in sorted(folders) for p in clean_export_leftovers(f)]
    if ws.current is not None:
        removed += clean_in_place_leftovers(PathlibPath(ws.current.path).parent)
    return removed


@router.post("/export", status_code=202, summary="Start exporting the patched model; follow /api/jobs/{id}/events")
def start_export(
    body: ExportRequest, ws: WorkspaceDep, settings: SettingsDep, staging: StagingDep,
    library: LibraryDep, jobs: JobsDep, model: ModelDep,
) -> dict:
    out = body.out or str(settings.data_dir / "exports" / f"{model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_path = ws.roots.check(out, "export output")
    max_shard = parse_size(body.max_shard_size) if body.max_shard_size is not None else None
    patches = [(n, library.read(n)) for n in body.patches]
    sg.enforce_policy(patches, settings.patch_signatures, sg.KeyStore(settings.data_dir))  # PATCH_SIGNATURES, before any work
    check_no_pending_intent(model)  # a torn in-place apply: recover it first
    clean_in_place_leftovers(PathlibPath(model.path).parent)  # none pending: its temporary files are litter
    runs = staging.export_runs(model, body.include_staged, patches)  # conflicts fail here, before the job
    # so do a taken output, the source itself as output, a protected folder, or a layout that
    # does not fit the output
    protected = protected_folders(settings, ws)
    clean_export_leftovers(settings.data_dir / "exports")  # (export_model cleans beside out_path)
    plan_export(model, out_path, runs, max_shard_bytes=max_shard, overwrite=body.overwrite, protected=protected)
    job = jobs.start(
        "export", f"export {model.name} to {out_path}",
        lambda progress: export_model(model, out_path, runs, max_shard_bytes=max_shard,
                                      overwrite=body.overwrite, progress=progress, protected=protected),
        meta={"out": str(out_path)},
    )
    return {"job": job.snapshot()}


@router.get("/jobs", summary="Recent jobs and their state (running, done, error, or interrupted by a stop of the server)")
def list_jobs(jobs: JobsDep) -> dict:
    return {"jobs": jobs.list()}


@router.get("/jobs/{job_id}", summary="One job's state, progress and result")
def get_job(job_id: Annotated[str, Path(max_length=64)], jobs: JobsDep) -> dict:
    return jobs.get(job_id).snapshot()


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events: progress, then done or error",
    response_class=StreamingResponse,
)
async def job_events(job_id: Annotated[str, Path(max_length=64)], jobs: JobsDep, request: Request):
    job = jobs.get(job_id)

    async def stream():
        it = job.events(timeout=10.0)
        while True:
            event = await asyncio.to_thread(next, it, None)
            if event is None or await request.is_disconnected():
                return
            if event["type"] == "keepalive":
                yield ": keepalive\n\n"
                continue
            yield f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
