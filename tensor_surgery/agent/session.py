"""Investigations: a question (new or continuing a saved conversation) answered by the agent loop,
with its transcript and events saved as they happen. Shared by the web app and the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Conflict, InvalidRequest
from ..settings import Settings
from ..store import Model
from ..surgery.staging import model_key
from ..workspace import Workspace
from .llm import LLMConfig
from .loop import run_agent
from .store import ConversationStore
from .registry import ToolContext

MAX_QUESTION_CHARS = 4000
STORED_EVENTS = frozenset({"question", "note", "tool_call", "tool_result", "answer", "error"})


@dataclass
class Turn:
    conversation_id: int
    model: Model
    question: str
    config: LLMConfig
    new: bool


class Investigator:
    def __init__(self, workspace: Workspace, store: ConversationStore, settings: Settings) -> None:
        self.workspace = workspace
        self.store = store
        self.settings = settings
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def start(self, model: Model, question: str, conversation_id: int | None = None,
              config: LLMConfig | None = None) -> Turn:
        """Check everything that can be refused before anything streams; claim the conversation."""
        config = config or LLMConfig.from_settings(self.settings)
        question = (question or "").strip()
        if not question:
            raise InvalidRequest("ask a question", field="question")
        if len(question) > MAX_QUESTION_CHARS:
            raise InvalidRequest(f"the question is {len(question):,} characters, over the {MAX_QUESTION_CHARS:,} "
                                 "allowed", field="question")
        key = model_key(model)
        if conversation_id is not None:
            conv = self.store.summary(conversation_id)
            if conv["model_key"] != key:
                raise Conflict(f"conversation #{conversation_id} is about {conv['model_name']}, not {model.name}: "
                               "open that model to continue it, or start a new conversation",
                               conversation_id=conversation_id)
            new = False
        else:
            conversation_id = self.store.create(key, model.name, question, config.model)
            new = True
        with self._lock:
            if conversation_id in self._busy:
                raise Conflict(f"conversation #{conversation_id} is still answering a question; wait for it",
                               conversation_id=conversation_id)
            self._busy.add(conversation_id)
        return Turn(conversation_id, model, question, config, new)

    def run(self, turn: Turn, emit: Callable[[dict], None], cancelled: Callable[[], bool] = lambda: False,
            ) -> str | None:
        """Answer the turn's question, emitting (and saving) events; always ends with a `done` event."""
        cid = turn.conversation_id
        answer = None

        def emit_saved(event: dict) -> None:
            if event.get("type") in STORED_EVENTS:
                self.store.append(cid, "event", event)
            emit(event)

        try:
            emit({"type": "conversation", "conversation_id": cid, "new": turn.new,
                  "title": self.store.summary(cid)["title"], "llm_model": turn.config.model})
            history = self.store.messages(cid)
            emit_saved({"type": "question", "content": turn.question})
            ctx = ToolContext(self.workspace, turn.model, cancelled=cancelled)
            answer = run_agent(turn.config, ctx, history, turn.question, emit_saved,
                               record=lambda m: self.store.append(cid, "message", m), cancelled=cancelled)
        except Exception as e:  # a bug: say so in the conversation instead of a silently cut stream
            import logging

            logging.getLogger("tensor_surgery").exception("investigation #%s failed", cid)
            emit_saved({"type": "error", "code": "internal_error",
                        "message": f"internal error ({type(e).__name__}); this is a bug, see the server log"})
        finally:
            with self._lock:
                self._busy.discard(cid)
            emit({"type": "done", "conversation_id": cid, "answered": answer is not None})
        return answer
