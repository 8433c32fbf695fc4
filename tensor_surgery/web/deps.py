"""Dependencies the routers share, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..jobs import JobRunner
from ..live.service import LiveService
from ..settings import Settings
from ..store import Model
from ..surgery.library import PatchLibrary
from ..surgery.staging import Staging
from ..workspace import Workspace


def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model(request: Request) -> Model:
    return request.app.state.workspace.model()


def get_staging(request: Request) -> Staging:
    return request.app.state.staging


def get_library(request: Request) -> PatchLibrary:
    return request.app.state.library


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


def get_live(request: Request):
    return request.app.state.live


WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]
StagingDep = Annotated[Staging, Depends(get_staging)]
LibraryDep = Annotated[PatchLibrary, Depends(get_library)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
LiveDep = Annotated[LiveService, Depends(get_live)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[Model, Depends(get_model)]
ViewParam = Annotated[
    str,
    Query(pattern="^(base|staged)$", description="`base`: the model's bytes; `staged`: with staged edits overlaid"),
]

# Row ids of the journal and the conversation store: SQLite integers are int64, and a larger id
# would fail inside the driver (a 500) instead of being an id that does not exist.
MAX_ID = (1 << 63) - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="an id as listed by the API")]
# Numbers in the query string: "nan", "inf" and "1e400" parse as floats, and nothing downstream
# (bins, ranges, thresholds) means anything by them.
FiniteFloatQuery = Annotated[float | None, Query(allow_inf_nan=False)]
