"""The open model: what it is, and opening another."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .deps import ModelDep, SettingsDep, WorkspaceDep

router = APIRouter(prefix="/api", tags=["model"])


class OpenModelRequest(BaseModel):
    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="A .safetensors file, a *.safetensors.index.json, or a folder holding either; "
        "must lie inside ALLOWED_ROOTS.",
    )


def model_info(ws, model) -> dict:
    return {**model.summary(), "allowed_roots": [str(r) for r in ws.roots.roots]}


@router.get("/model", summary="The open model: name, path, sharding, tensor count, size, dtype mix")
def get_model_info(ws: WorkspaceDep, model: ModelDep) -> dict:
    return model_info(ws, model)


@router.post(
    "/model",
    summary="Open another model inside ALLOWED_ROOTS and make it current",
    responses={403: {"description": "path outside ALLOWED_ROOTS"}, 422: {"description": "invalid model file"}},
)
def open_model(body: OpenModelRequest, ws: WorkspaceDep) -> dict:
    model = ws.open(body.path)
    return model_info(ws, model)


@router.get("/settings", summary="The server's settings with their help texts (secrets redacted)")
def get_settings(settings: SettingsDep) -> dict:
    return {"settings": settings.describe()}
