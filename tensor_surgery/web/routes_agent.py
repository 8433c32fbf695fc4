"""The investigation agent: ask questions (streamed as NDJSON events), saved conversations, and the
agent's tools run by hand. The LLM, its base URL and key come from settings only: no request
field reaches them (bodies forbid unknown fields)."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..agent.llm import llm_status
from ..agent.session import MAX_QUESTION_CHARS
from ..agent.tools import MAX_ARGUMENT_CHARS, REGISTRY, OversizedArguments, ToolContext, get_tool, run_tool
from ..surgery.staging import model_key
from .deps import MAX_ID, IdPath, ModelDep, SettingsDep, WorkspaceDep

router = APIRouter(prefix="/api", tags=["investigate"])


class InvestigateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS)
    conversation_id: int | None = Field(None, ge=1, le=MAX_ID, description="continue this saved conversation")


def _investigator(request: Request):
    return request.app.state.investigator


@router.post(
    "/investigate",
    summary="Ask the agent a question about the open model; streams NDJSON events",
    description="One JSON object per line: `conversation`, then `question`, `step`, `tool_call`, `progress`, "
    "`tool_result`, `retry`, `note`, and `answer` (with `links`: tensor-name spans) or `error`, and finally "
    "`done`. Give `conversation_id` to continue a saved conversation. Refused (409 agent_not_configured) "
    "when LLM_MODEL is unset.",
    response_class=StreamingResponse,
)
def investigate(body: InvestigateRequest, request: Request, model: ModelDep):
    investigator = _investigator(request)
    turn = investigator.start(model, body.question, body.conversation_id)
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            investigator.run(turn, events.put, cancelled=cancel.is_set)
        finally:
            events.put(None)

    # started now, not when the body is first read: the turn has claimed its conversation and must
    # release it even if the client never reads a byte
    threading.Thread(target=work, name=f"investigate-{turn.conversation_id}", daemon=True).start()

    async def stream():
        try:
            while True:
                try:
                    event = await asyncio.to_thread(events.get, True, 1.0)
                except queue.Empty:
                    if await request.is_disconnected():
                        return
                    continue
                if event is None:
                    return
                yield json.dumps(event, default=str) + "\n"
        finally:
            cancel.set()  # the client left (or the turn ended): stop between steps and tool chunks

    return StreamingResponse(stream(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/investigate/conversations", summary="Saved conversations, most recent first")
def list_conversations(
    request: Request, ws: WorkspaceDep,
    all_models: Annotated[bool, Query(description="every model's, not only the open model's")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    store = _investigator(request).store
    key = None if all_models or ws.current is None else model_key(ws.current)
    return {"conversations": store.list(key, limit)}


@router.get("/investigate/conversations/{conversation_id}", summary="One saved conversation with its events")
def get_conversation(conversation_id: IdPath, request: Request) -> dict:
    return _investigator(request).store.get(conversation_id)


@router.delete("/investigate/conversations/{conversation_id}", summary="Delete a saved conversation")
def delete_conversation(conversation_id: IdPath, request: Request) -> dict:
    _investigator(request).store.delete(conversation_id)
    return {"deleted": conversation_id}


@router.get("/agent/tools", summary="The agent's tools (JSON schemas) and whether an LLM is configured")
def list_tools(settings: SettingsDep) -> dict:
    return {"llm": llm_status(settings), "tools": [t.describe() for t in REGISTRY.values()]}


@router.post(
    "/agent/tools/{name}",
    summary="Run one of the agent's tools by hand",
    description="The body is the tool's arguments (a JSON object, validated against its schema). Read-only: "
    "propose_edit returns a proposal and a preview, never a staged edit.",
)
def run_tool_by_hand(
    name: Annotated[str, Path(max_length=64)], ws: WorkspaceDep, model: ModelDep,
    arguments: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict:
    get_tool(name)
    size = len(json.dumps(arguments or {}))
    if size > MAX_ARGUMENT_CHARS:
        raise OversizedArguments(f"the arguments are {size:,} characters of JSON, over the {MAX_ARGUMENT_CHARS:,} "
                                 "allowed", limit=MAX_ARGUMENT_CHARS)
    return {"tool": name, "result": run_tool(ToolContext(ws, model), name, arguments or {})}
