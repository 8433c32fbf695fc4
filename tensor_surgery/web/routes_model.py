"""The open model: what it is, and opening another."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import SurgeryError
from ..store.model import resolve_model_path

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
    from ..surgery.apply import pending_in_place

    return {**model.summary(), "allowed_roots": [str(r) for r in ws.roots.roots],
            "interrupted_apply": pending_in_place(model.path),  # null, or what POST /api/model/recover resolves
            "hf": hf_config_hint(model)}


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


# -- what the page's Open box offers, and what kind of model is open --------------------------------

CONFIG_MAX_BYTES = 1 << 20  # a Hugging Face config.json is a few KB; a bigger one is not read
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, GPT2LMHeadModel, ...


def hf_config_hint(model) -> dict:
    """The `architectures` of the model folder's config.json and whether they name a causal LM
    (null when there is no readable config). The live view's next-token logits mean something only
    for a causal LM: an encoder such as BERT has no next-token head."""
    config = Path(model.path).parent / "config.json"
    data = None
    try:
        if config.is_file():
            with open(config, "rb") as f:
                raw = f.read(CONFIG_MAX_BYTES + 1)
            data = json.loads(raw) if len(raw) <= CONFIG_MAX_BYTES else None
    except (OSError, ValueError):
        pass
    if not isinstance(data, dict):
        return {"architectures": [], "causal_lm": None}
    archs = data.get("architectures")
    archs = [a for a in archs if isinstance(a, str)][:8] if isinstance(archs, list) else []
    return {"architectures": archs, "causal_lm": any(a.endswith(CAUSAL_SUFFIXES) for a in archs) if archs else None}


def demo_folders(settings, ws) -> list[Path]:
    """DATA_DIR/models, and the folder of demo models the open model was started from (one that holds
    the demo builder's manifest), e.g. MODEL_PATH pointing into another checkout's data/models."""
    from ..live.demo_models import MANIFEST

    folders = [settings.models_dir]
    for path in (settings.resolved_model_path, ws.current.path if ws.current else None):
        if path is not None:
            p = Path(path)
            for parent in (p.parent, p.parent.parent):
                if (parent / MANIFEST).is_file():
                    folders.append(parent)
    return folders


@router.get(
    "/models",
    summary="Models the page's Open box offers: the open one, others opened recently, the demo models",
    description="Each {name, path, source: current | recent | demo, current}; only models inside ALLOWED_ROOTS.",
)
def list_models(ws: WorkspaceDep, settings: SettingsDep) -> dict:
    from ..live.demo_models import MANIFEST

    out: dict[str, dict] = {}  # real path of the model file -> entry

    def add(path: str, name: str, source: str) -> None:
        try:
            real = os.path.realpath(resolve_model_path(path))
        except SurgeryError:
            return
        if real in out or path not in ws.roots:
            return
        current = ws.current is not None and os.path.realpath(ws.current.path) == real
        out[real] = {"name": name, "path": str(path), "source": "current" if current else source, "current": current}

    if ws.current is not None:
        add(ws.current.path, ws.current.name, "current")
    for model in reversed(list({id(m): m for m in ws.models.values()}.values())):  # most recent first
        add(model.path, model.name, "recent")
    for folder in demo_folders(settings, ws):
        try:
            manifest = json.loads((folder / MANIFEST).read_bytes()[:CONFIG_MAX_BYTES])
        except (OSError, ValueError):
            continue
        for name in sorted(manifest) if isinstance(manifest, dict) else []:
            if isinstance(name, str) and "/" not in name and name not in (".", ".."):
                add(str(folder / name), name, "demo")
    return {"models": list(out.values())}
