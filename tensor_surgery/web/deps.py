"""Dependencies the routers share, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from ..settings import Settings
from ..store import Model
from ..workspace import Workspace


def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model(request: Request) -> Model:
    return request.app.state.workspace.model()


WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[Model, Depends(get_model)]
ViewParam = Annotated[
    str,
    Query(pattern="^(base|staged)$", description="`base`: the model's bytes; `staged`: with staged edits overlaid"),
]
