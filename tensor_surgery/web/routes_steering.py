"""Steering vectors on the live model: extract from contrast pairs, apply with a coefficient,
toggle, save as packs, export as llama.cpp control vectors, and a greedy continuation default vs
steered pushed over /ws/live."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest, SurgeryError
from .deps import LiveDep, StagingDep, WorkspaceDep

router = APIRouter(prefix="/api/steering", tags=["steering"])
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VectorName = Annotated[str, Path(pattern=NAME_PATTERN, description="the vector's name")]


class LiveNotReady(SurgeryError):
    code = "live_not_loaded"
    http_status = 409


class PairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positive: str = Field(..., max_length=4000)
    negative: str = Field(..., max_length=4000)


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=NAME_PATTERN)
    pairs: list[PairIn] | None = Field(None, max_length=1024, description="contrast pairs (or `example`)")
    example: str | None = Field(None, max_length=64, description="a shipped example set (GET /examples)")
    layers: str = Field("8-14", max_length=200, description="decoder blocks: A-B, 3,5,7 or all")
    method: Literal["mean", "pca"] = "mean"
    read: Literal["last", "mean"] = "last"
    coefficient: float = Field(4.0, ge=-1e4, le=1e4, allow_inf_nan=False)


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coefficient: float | None = Field(None, ge=-1e4, le=1e4, allow_inf_nan=False,
                                      description="negative inverts the concept")
    layers: str | None = Field(None, max_length=200, description="apply at these blocks only (of the vector's)")
    enabled: bool | None = None


class ToggleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., max_length=4096, description="a steering pack folder or a .gguf control vector inside ALLOWED_ROOTS")
    name: str | None = Field(None, pattern=NAME_PATTERN)
    coefficient: float = Field(4.0, ge=-1e4, le=1e4, allow_inf_nan=False)


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str | None = Field(None, max_length=4096, description="new pack folder (default DATA_DIR/steering/<name>)")
    version: str = Field("1.0.0", pattern=r"^\d{1,6}(\.\d{1,6}){0,3}$")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["gguf", "safetensors"]
    out: str | None = Field(None, max_length=4096, description="new file (default DATA_DIR/steering/<name>.<format>)")


class ContinuationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(..., ge=0, le=64, description="greedy tokens to generate default vs steered (0 turns it off)")


def _running(live):
    model = live.live
    if live.state != "ready" or model is None:
        raise LiveNotReady("load the live model first (Live tab → Load); steering runs on it", field="live")
    return model


def _facts(model) -> tuple[str | None, int, int]:
    cfg = model.hf_model.config
    return getattr(cfg, "model_type", None), int(cfg.hidden_size), int(cfg.num_hidden_layers)


def _steering(live, name: str):
    iv = live.hooks.get(name)
    if iv.kind != "steering":
        raise InvalidRequest(f"{name!r} is not a steering vector", field="name")
    return iv


def _summary(iv) -> dict:
    vec = iv.payload
    return {**iv.to_json(), "width": vec.width, "metrics": vec.metrics,
            "norms": {str(L): float((vec.vectors[L].astype("float64") ** 2).sum() ** 0.5) for L in vec.layers}}


def _put(live, vec, coefficient: float, layers: list[int] | None = None, enabled: bool = False) -> dict:
    """(Re)build the vector's intervention on the model's thread: its addends live on the model's device."""
    from ..interp.steering import intervention

    model = _running(live)
    iv = live.call(lambda: intervention(vec, coefficient, layers, device=model.device, dtype=model.dtype,
                                        enabled=enabled))
    with live._wake:  # a snapshot of the wanted state never sees half of a replacement
        live.hooks.put_intervention(iv)
    live.set_prompt()
    return _summary(iv)


@router.get("/examples", summary="The shipped example contrast-pair sets")
def examples() -> dict:
    from ..interp.steering import example_sets, read_pairs

    out = []
    for name, path in example_sets().items():
        pairs = read_pairs(path)
        out.append({"name": name, "count": len(pairs),
                    "pairs": [{"positive": p.positive, "negative": p.negative} for p in pairs]})
    return {"examples": out}


@router.post("/extract", summary="Extract a steering vector per layer from contrast pairs on the live model")
def extract(body: ExtractRequest, live: LiveDep) -> dict:
    """Runs each text through the running model (as it is: staged edits and adapters that are on),
    reads the chosen blocks' outputs and adds the vector to the live model, switched off."""
    from ..interp import steering as st

    model = _running(live)
    if (body.pairs is None) == (body.example is None):
        raise InvalidRequest("give either pairs or example", field="pairs")
    if body.example is not None:
        sets = st.example_sets()
        if body.example not in sets:
            raise InvalidRequest(f"no example set {body.example!r} (there are: {', '.join(sets)})", field="example")
        pairs, source = st.read_pairs(sets[body.example]), body.example
    else:
        pairs, source = st.pairs_from_obj([p.model_dump() for p in body.pairs], "pairs"), "typed pairs"
    _, _, n_layers = _facts(model)
    layers = st.parse_layers(body.layers, n_layers)
    vec = live.call(lambda: st.extract(model.hf_model, model.tokenizer, pairs, layers, body.method, body.read,
                                       body.name), timeout=900)
    vec.made_with["data"] = source
    return _put(live, vec, body.coefficient)


@router.get("/vectors", summary="Steering vectors on the live model")
def vectors(live: LiveDep) -> dict:
    return {"vectors": [_summary(iv) for iv in live.hooks.interventions() if iv.kind == "steering"]}


@router.patch("/vectors/{name}", summary="Change a vector's coefficient, layers or on/off state")
def update(name: VectorName, body: UpdateRequest, live: LiveDep) -> dict:
    from ..interp.steering import parse_layers

    iv = _steering(live, name)
    model = _running(live)
    layers = list(iv.layers)
    if body.layers is not None:
        layers = parse_layers(body.layers, _facts(model)[2])
    coefficient = iv.info["coefficient"] if body.coefficient is None else body.coefficient
    enabled = iv.enabled if body.enabled is None else body.enabled
    return _put(live, iv.payload, coefficient, layers, enabled)


@router.post("/vectors/{name}/toggle", summary="Turn a steering vector on or off (logits follow over /ws/live)")
def toggle(name: VectorName, body: ToggleRequest, live: LiveDep) -> dict:
    _steering(live, name)
    return live.toggle_intervention(name, body.enabled)


@router.delete("/vectors/{name}", summary="Remove a steering vector from the live model")
def delete(name: VectorName, live: LiveDep) -> dict:
    _steering(live, name)
    with live._wake:
        live.hooks.remove_intervention(name)
    live.set_prompt()
    return {"deleted": name}


@router.post("/load", summary="Load a steering pack or a llama.cpp control vector (.gguf) onto the live model")
def load(body: LoadRequest, live: LiveDep, ws: WorkspaceDep, staging: StagingDep) -> dict:
    from ..interp import steering as st

    model = _running(live)
    path = ws.roots.check(body.path, "steering vector")
    model_type, hidden, n_layers = _facts(model)
    warnings = []
    if path.is_file() and path.suffix == ".gguf":
        from ..interp.gguf_control import check_for_model, read_control_vector

        vec, hint = read_control_vector(path, body.name or path.stem)
        check_for_model(vec, hint, model_type, hidden, n_layers, str(path))
    elif path.is_dir():
        from ..interp.packs import load_pack

        pack = load_pack(path, model_checksum=staging.model_checksum(ws.model()))
        warnings = pack.warnings
        vec = st.vector_from_pack(pack)
        if body.name:
            vec.name = body.name
        st.check_vector(vec, hidden, n_layers, str(path))
    else:
        raise InvalidRequest(f"{path} is neither a pack folder nor a .gguf control vector", field="path")
    if any(iv.name == vec.name for iv in live.hooks.interventions()):
        raise InvalidRequest(f"a vector named {vec.name!r} is already on the live model; give another name",
                             field="name")
    return {**_put(live, vec, body.coefficient), "warnings": warnings}


@router.post("/vectors/{name}/save", summary="Save a vector as a steering pack (pack.json + safetensors)")
def save(name: VectorName, body: SaveRequest, live: LiveDep, ws: WorkspaceDep, staging: StagingDep) -> dict:
    from ..interp.steering import save_pack

    vec = _steering(live, name).payload
    out = ws.roots.check(body.out or str(ws.settings.data_dir / "steering" / name), "pack folder")
    if out.exists():
        raise InvalidRequest(f"{out} already exists; choose a new folder", field="out", path=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    current = ws.model()
    save_pack(vec, out, model_checksum=staging.model_checksum(current), model_name=FsPath(current.path).parent.name,
              version=body.version)
    return {"pack": str(out), "name": name, "layers": vec.layers}


@router.post("/vectors/{name}/export", summary="Export a vector as a llama.cpp control vector (GGUF) or safetensors")
def export(name: VectorName, body: ExportRequest, live: LiveDep, ws: WorkspaceDep) -> dict:
    vec = _steering(live, name).payload
    out = ws.roots.check(body.out or str(ws.settings.data_dir / "steering" / f"{name}.{body.format}"), "export file")
    if out.exists():
        raise InvalidRequest(f"{out} already exists; choose a new file", field="out", path=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    if body.format == "gguf":
        from ..interp.gguf_control import write_control_vector

        return write_control_vector(out, vec, _facts(_running(live))[0] or "llama")
    from safetensors.numpy import save as st_save

    from ..surgery.library import atomic_write

    atomic_write(out, st_save(vec.tensors(), metadata={"kind": "steering", "name": vec.name}))
    return {"path": str(out), "format": "safetensors", "layers": vec.layers}


@router.post("/continuation", summary="Ask for a greedy continuation, default vs steered, with every logits update")
def continuation(body: ContinuationRequest, live: LiveDep) -> dict:
    live.set_continuation(body.tokens)
    return {"tokens": body.tokens}
