"""The live model: status, load/unload, prompt, LoRA adapters, and the WebSocket that pushes
next-token logits to every open page whenever the staged edits, toggles or prompt change."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import InvalidRequest, SurgeryError
from .deps import MAX_ID, IdPath, LiveDep, ModelDep, WorkspaceDep
from .security import json_problem

router = APIRouter(prefix="/api/live", tags=["live"])
ws_router = APIRouter(tags=["live"])
AdapterName = Annotated[str, Path(max_length=64)]


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=100_000)
    k: int | None = Field(None, ge=1, le=100)


class ToggleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


class BuildAdapter(BaseModel):
    """A rank-r LoRA edit: scale chosen input features (neurons) of a linear layer, or remove a
    direction (numbers, or a token's embedding) from its output or input."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., max_length=64)
    kind: Literal["neurons", "direction"]
    module: str = Field(..., max_length=512, description="e.g. model.layers.3.mlp.down_proj")
    rank: int = Field(8, ge=4, le=16)
    neurons: list[int] | None = Field(None, max_length=16)
    factor: float | None = Field(None, description="neurons: 0 ablates, 2 doubles")
    direction: list[float] | None = Field(None, max_length=65_536)
    token: str | None = Field(None, max_length=200, description="direction: use this token's embedding")
    side: Literal["output", "input"] = "output"
    strength: float = Field(1.0, ge=0, le=10, description="direction: 1 removes it fully")


# -- WebSocket messages: the HTTP bodies above, plus the message's type and sequence number ------

Seq = Annotated[int, Field(0, ge=0, le=MAX_ID, description="echoed in the logits it causes")]


class WsPrompt(PromptRequest):
    type: Literal["prompt"]
    seq: Seq = 0


class WsToggleEdit(ToggleRequest):
    type: Literal["toggle_edit"]
    id: int = Field(..., ge=1, le=MAX_ID)
    seq: Seq = 0


class WsToggleAdapter(ToggleRequest):
    type: Literal["toggle_adapter"]
    name: str = Field(..., max_length=64)
    seq: Seq = 0


class WsLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["load"]
    seq: Seq = 0


WS_MESSAGE = TypeAdapter(Annotated[WsPrompt | WsToggleEdit | WsToggleAdapter | WsLoad, Field(discriminator="type")])
WS_TYPES = "prompt, toggle_edit, toggle_adapter, load"


class ImportAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., max_length=4096, description="a PEFT adapter folder inside ALLOWED_ROOTS")
    name: str = Field(..., max_length=64)


class ExportAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str | None = Field(None, max_length=4096, description="new folder inside ALLOWED_ROOTS (default DATA_DIR/adapters/<name>)")


@router.get("/status", summary="Live model state: device, dtype, memory, load progress")
def status(live: LiveDep) -> dict:
    return live.status()


@router.post("/load", summary="Load the current model (a Hugging Face folder) for live logits")
def load(live: LiveDep) -> dict:
    return live.load()


@router.post("/unload", summary="Free the live model (and the GPU cache)")
def unload(live: LiveDep) -> dict:
    return live.unload()


@router.post("/prompt", summary="Set the prompt and/or top-k; new logits are pushed over /ws/live")
def set_prompt(body: PromptRequest, live: LiveDep) -> dict:
    live.set_prompt(body.prompt, body.k)
    return {"prompt": live.wanted.prompt, "k": live.wanted.k}


@router.get("/logits", summary="The last computed top-k (the WebSocket pushes every new one)")
def last_logits(live: LiveDep) -> dict:
    return live.last or {"type": "logits", "top": [], "pending": live.state}


@router.post("/edits/{edit_id}/toggle", summary="Show the live model with or without one staged edit")
def toggle_edit(edit_id: IdPath, body: ToggleRequest, live: LiveDep) -> dict:
    live.toggle_edit(edit_id, body.enabled)
    return {"edit_id": edit_id, "enabled": body.enabled}


@router.get("/modules", summary="Linear layers of the running model (targets for LoRA edits)")
def modules(live: LiveDep) -> dict:
    return {"modules": live.call(lambda: live._adapters().linear_modules())}


@router.get("/adapters", summary="LoRA adapters on the running model")
def list_adapters(live: LiveDep) -> dict:
    return {"adapters": live.call(lambda: live._adapters().list()), "active": live.call(lambda: live._adapters().active())}


@router.post("/adapters", summary="Build a rank-r LoRA edit and hot-swap it onto the running model")
def build_adapter(body: BuildAdapter, live: LiveDep) -> dict:
    info = live.call(lambda: live._adapters().build(
        body.name, body.kind, body.module, body.rank, neurons=body.neurons, factor=body.factor,
        direction=body.direction, token=body.token, side=body.side, strength=body.strength))
    live.set_prompt()
    return info.to_json()


@router.post("/adapters/import", summary="Load a PEFT adapter folder onto the running model")
def import_adapter(body: ImportAdapter, live: LiveDep, ws: WorkspaceDep) -> dict:
    folder = ws.roots.check(body.path, "adapter folder")
    info = live.call(lambda: live._adapters().import_folder(FsPath(folder), body.name))
    live.set_prompt()
    return info.to_json()


@router.post("/adapters/{name}/toggle", summary="Turn an adapter on or off")
def toggle_adapter(name: AdapterName, body: ToggleRequest, live: LiveDep) -> dict:
    return live.toggle_adapter(name, body.enabled)


@router.post("/adapters/{name}/export", summary="Save an adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors)")
def export_adapter(name: AdapterName, body: ExportAdapter, live: LiveDep, ws: WorkspaceDep) -> dict:
    out = body.out or str(ws.settings.data_dir / "adapters" / name)
    target = ws.roots.check(out, "adapter output")
    return live.call(lambda: live._adapters().export(name, target))


@router.delete("/adapters/{name}", summary="Remove an adapter from the running model")
def delete_adapter(name: AdapterName, live: LiveDep) -> dict:
    live.call(lambda: live._adapters().delete(name))
    live.set_prompt()
    return {"deleted": name}


@router.post("/adapters/{name}/merge", summary="Merge an adapter into the weights as a staged edit (then save it as a .hexpatch)")
def merge_adapter(name: AdapterName, live: LiveDep, model: ModelDep) -> dict:
    edit = live.merge_adapter(name, model)
    return {"edit": edit.summary(), "adapter_disabled": True}


# -- WebSocket --------------------------------------------------------------------------------


@ws_router.websocket("/ws/live")
async def live_socket(websocket: WebSocket) -> None:
    """Messages in: {type: prompt, text, k?, seq?} | {type: toggle_edit, id, enabled, seq?} |
    {type: toggle_adapter, name, enabled, seq?} | {type: load}. Out: status, logits, error."""
    live = websocket.app.state.live
    await websocket.accept()
    queue: asyncio.Queue = asyncio.Queue(maxsize=256)
    unsubscribe = live.subscribe_async(asyncio.get_running_loop(), queue)

    async def pump() -> None:
        while True:
            msg = await queue.get()
            await websocket.send_text(json.dumps(msg))

    sender = asyncio.create_task(pump())
    try:
        await websocket.send_text(json.dumps(live.status()))
        if live.last:
            await websocket.send_text(json.dumps(live.last))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                if message.get("text") is None:  # a binary frame
                    raise SurgeryError("messages are JSON text")
                await asyncio.to_thread(_handle, live, message["text"])
            except SurgeryError as e:
                await websocket.send_text(json.dumps({"type": "error", "message": e.message, **e.context}))
    except WebSocketDisconnect:
        pass
    finally:
        unsubscribe()
        sender.cancel()


def parse_message(raw: str) -> BaseModel:
    """One WebSocket message, checked like an HTTP body: strict JSON, then the same pydantic
    fields (a prompt's text is the HTTP body's `prompt`)."""
    problem = json_problem(raw)
    if problem:
        raise InvalidRequest(problem[0], field=problem[1])
    try:
        msg = json.loads(raw)
    except ValueError:
        raise InvalidRequest("the message is not JSON") from None
    if not isinstance(msg, dict):
        raise InvalidRequest("the message must be a JSON object")
    if msg.get("type") not in ("prompt", "toggle_edit", "toggle_adapter", "load"):
        raise InvalidRequest(f"unknown message type {msg.get('type')!r} ({WS_TYPES})", field="type")
    if msg["type"] == "prompt" and "text" in msg:
        msg["prompt"] = msg.pop("text")
    try:
        return WS_MESSAGE.validate_python(msg)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]).replace("prompt", "text", 1) or None
        raise InvalidRequest(f"{where or 'message'}: {first['msg']}", field=where) from None


def _handle(live, raw: str) -> None:
    msg = parse_message(raw)
    if isinstance(msg, WsPrompt):
        live.set_prompt(msg.prompt, msg.k, msg.seq)
    elif isinstance(msg, WsToggleEdit):
        live.toggle_edit(msg.id, msg.enabled, msg.seq)
    elif isinstance(msg, WsToggleAdapter):
        live.toggle_adapter(msg.name, msg.enabled, msg.seq)
    else:
        live.load()
