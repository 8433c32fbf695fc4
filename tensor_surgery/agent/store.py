"""Saved investigations, in the journal's database: conversations and their entries.

An entry is either a message of the LLM transcript (`kind="message"`: what is sent again to
continue the conversation) or an event of the display transcript (`kind="event"`: the question,
each tool call and result, the answer with its links, errors). Both keep their order in `seq`.
"""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import Engine, Float, ForeignKey, Integer, String, Text, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ..errors import SurgeryError

MAX_TITLE = 120


class AgentBase(DeclarativeBase):
    pass


class ConversationRow(AgentBase):
    __tablename__ = "agent_conversations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_key: Mapped[str] = mapped_column(String(4096), index=True)
    model_name: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    llm_model: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class EntryRow(AgentBase):
    __tablename__ = "agent_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("agent_conversations.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # message | event
    payload: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[float] = mapped_column(Float)


class ConversationNotFound(SurgeryError):
    code = "conversation_not_found"
    http_status = 404


class ConversationStore:
    def __init__(self, engine: Engine) -> None:
        AgentBase.metadata.create_all(engine)
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._lock = threading.Lock()

    def create(self, model_key: str, model_name: str, title: str, llm_model: str = "") -> int:
        now = time.time()
        title = " ".join(title.split())
        with self._session.begin() as s:
            row = ConversationRow(model_key=model_key, model_name=model_name,
                                  title=title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1] + "…",
                                  llm_model=llm_model, created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            return row.id

    def append(self, conversation_id: int, kind: str, payload: dict) -> None:
        now = time.time()
        with self._lock, self._session.begin() as s:
            seq = (s.scalar(select(func.max(EntryRow.seq)).where(EntryRow.conversation_id == conversation_id)) or 0) + 1
            s.add(EntryRow(conversation_id=conversation_id, seq=seq, kind=kind,
                           payload=json.dumps(payload, default=str), created_at=now))
            conv = s.get(ConversationRow, conversation_id)
            if conv is not None:
                conv.updated_at = now

    def _row(self, s, conversation_id: int) -> ConversationRow:
        row = s.get(ConversationRow, conversation_id)
        if row is None:
            raise ConversationNotFound(f"no saved conversation #{conversation_id}", conversation_id=conversation_id)
        return row

    def summary(self, conversation_id: int) -> dict:
        with self._session() as s:
            return _summary(self._row(s, conversation_id))

    def entries(self, conversation_id: int, kind: str) -> list[dict]:
        with self._session() as s:
            self._row(s, conversation_id)
            q = (select(EntryRow.payload).where(EntryRow.conversation_id == conversation_id, EntryRow.kind == kind)
                 .order_by(EntryRow.seq, EntryRow.id))
            return [json.loads(p) for p in s.scalars(q)]

    def messages(self, conversation_id: int) -> list[dict]:
        return self.entries(conversation_id, "message")

    def get(self, conversation_id: int) -> dict:
        return {**self.summary(conversation_id), "events": self.entries(conversation_id, "event")}

    def list(self, model_key: str | None = None, limit: int = 100) -> list[dict]:
        with self._session() as s:
            q = select(ConversationRow).order_by(ConversationRow.updated_at.desc()).limit(limit)
            if model_key is not None:
                q = q.where(ConversationRow.model_key == model_key)
            return [_summary(r) for r in s.scalars(q)]

    def delete(self, conversation_id: int) -> None:
        with self._session.begin() as s:
            self._row(s, conversation_id)
            s.execute(delete(EntryRow).where(EntryRow.conversation_id == conversation_id))
            s.execute(delete(ConversationRow).where(ConversationRow.id == conversation_id))


def _summary(row: ConversationRow) -> dict:
    return {"id": row.id, "title": row.title, "model_name": row.model_name, "model_key": row.model_key,
            "llm_model": row.llm_model, "created_at": row.created_at, "updated_at": row.updated_at}
