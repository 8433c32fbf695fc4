"""The per-parameter analysis table of the open model: computed as a job (progress events from
/api/jobs/{id}/events), then served as JSON, exported into ALLOWED_ROOTS, or downloaded.

The table describes the model's file bytes (staged edits are not in it), the same as
`tensor-surgery analyze MODEL`: one definition of every column in `analysis.table`.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..analysis import table as tb
from ..analysis.run import META_NAME, WriteFailed, compile_match, run_meta
from ..analysis.writers import render
from ..errors import SurgeryError
from ..surgery.library import atomic_write
from .deps import JobsDep, ModelDep, SettingsDep, WorkspaceDep

router = APIRouter(prefix="/api/analysis", tags=["analysis"])

MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


class AnalysisNotReady(SurgeryError):
    code = "analysis_not_ready"
    http_status = 404


class AnalysisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: Literal["exact", "randomized", "none"] = Field(
        "exact", description="numerical rank (s > 1e-6 * s.max()): exact SVD-certified, randomized (with an error bound) or none")
    sparsity_eps: float = Field(1e-8, ge=0, allow_inf_nan=False, description="|x| <= eps counts as zero")
    match: str | None = Field(None, max_length=1000, description="only tensors whose name matches this regular expression")


class DownloadQuery(AnalysisOptions):
    format: Literal["csv", "jsonl", "parquet"] = Field("csv", description="the file's format")


class ExportRequest(DownloadQuery):
    out: str | None = Field(None, max_length=4096,
                            description="output file inside ALLOWED_ROOTS (default DATA_DIR/exports/<model>-analysis-<time>.<format>); "
                                        "run_meta.json is written beside it")
    overwrite: bool = Field(False, description="replace an existing file at OUT")


class _Tables:
    """Finished tables per (model file, options), kept while the model is the open one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[tuple, dict] = {}

    def get(self, key: tuple) -> dict | None:
        with self.lock:
            return self.by_key.get(key)

    def put(self, key: tuple, value: dict) -> None:
        with self.lock:
            self.by_key = {k: v for k, v in self.by_key.items() if k[0] == key[0]}  # one model at a time
            self.by_key[key] = value


def _tables(request: Request) -> _Tables:
    state = request.app.state
    if not hasattr(state, "analysis_tables"):
        state.analysis_tables = _Tables()
    return state.analysis_tables


def _key(model, opts: AnalysisOptions) -> tuple:
    return (model.path, model.nbytes, opts.rank, opts.sparsity_eps, opts.match)


def _compute(model_path: str, opts: AnalysisOptions, progress) -> dict:
    started = time.time()
    options = tb.Options(rank=opts.rank, sparsity_eps=opts.sparsity_eps).check()
    info = tb.describe_model(model_path, compile_match(opts.match))
    rows, skipped = tb.build_table([info], options, progress=progress)
    return {"info": info, "options": options, "rows": rows, "skipped": skipped, "started": started}


@router.post("", status_code=202, summary="Start the analysis table of the open model; follow /api/jobs/{id}/events")
def start_analysis(body: AnalysisOptions, request: Request, jobs: JobsDep, model: ModelDep) -> dict:
    compile_match(body.match)  # a bad regex fails here, not inside the job
    tb.Options(rank=body.rank, sparsity_eps=body.sparsity_eps).check()
    tables = _tables(request)
    key = _key(model, body)
    path = model.path

    def work(progress):
        found = tables.get(key)
        if found is None:
            found = _compute(path, body, progress)
            tables.put(key, found)
        return {"rows": len(found["rows"]), "skipped": len(found["skipped"]), "options": body.model_dump()}

    job = jobs.start("analysis", f"analysis of {model.name} (rank {body.rank})", work, meta={"model": path})
    return {"job": job.snapshot()}


def _ready(request: Request, model, opts: AnalysisOptions) -> dict:
    found = _tables(request).get(_key(model, opts))
    if found is None:
        raise AnalysisNotReady(
            f"no analysis of {model.name} with these options yet: POST /api/analysis first and wait for its job",
            model=model.name)
    return found


OptionsQuery = Annotated[AnalysisOptions, Query()]


@router.get("/table", summary="The finished table of the open model (columns in the notes' order, then extras)")
def get_table(request: Request, model: ModelDep, opts: OptionsQuery) -> dict:
    found = _ready(request, model, opts)
    return {"model": model.name, "model_path": model.path, "options": opts.model_dump(),
            "columns": list(tb.ALL_COLUMNS), "rows": found["rows"], "skipped": found["skipped"]}


def _meta(found: dict, request: Request, out_name: str, fmt: str, opts: AnalysisOptions) -> dict:
    return run_meta([found["info"]], found["options"], out=Path(out_name), fmt=fmt, rows=len(found["rows"]),
                    skipped=found["skipped"], command=[f"{request.method} {request.url.path}"], ray_address=None,
                    started=found["started"], resumed=0, pattern=opts.match)


@router.post("/export", summary="Write the finished table as CSV, JSON Lines or Parquet inside ALLOWED_ROOTS")
def export_table(body: ExportRequest, request: Request, model: ModelDep, ws: WorkspaceDep, settings: SettingsDep) -> dict:
    found = _ready(request, model, body)
    default = settings.data_dir / "exports" / f"{model.name}-analysis-{time.strftime('%Y%m%d-%H%M%S')}.{body.format}"
    out = ws.roots.check(body.out or str(default), "analysis output")
    if out.suffix.lower() != f".{body.format}":
        raise SurgeryError(f"{out.name!r}: a {body.format} file must end in .{body.format}", field="out")
    if out.is_dir() or (out.exists() and not body.overwrite):
        raise SurgeryError(f"{out} exists: choose another name or set overwrite", field="out", path=str(out))
    data = render(found["rows"], body.format)
    meta = _meta(found, request, out.name, body.format, body)
    try:
        atomic_write(out, data)
        atomic_write(out.parent / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as e:
        raise WriteFailed(f"could not write {out}: {e.strerror or e}", path=str(out)) from None
    return {"path": str(out), "bytes": len(data), "rows": len(found["rows"]), "run_meta": str(out.parent / META_NAME)}


@router.get("/download", summary="The finished table as a file to download",
            response_class=Response, responses={200: {"content": {m: {} for m in MEDIA.values()}}})
def download_table(request: Request, model: ModelDep, query: Annotated[DownloadQuery, Query()]) -> Response:
    format = query.format
    found = _ready(request, model, AnalysisOptions(**query.model_dump(exclude={"format"})))
    data = render(found["rows"], format)
    name = f"{model.name}-analysis.{format}".replace('"', "")
    return Response(io.BytesIO(data).getvalue(), media_type=MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
