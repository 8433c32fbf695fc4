"""The staged-edit journal: every staged edit, durably, scoped to the model it belongs to.

SQLite by default (WAL, synchronous=FULL: once `stage` returns, a SIGKILL or power cut loses
nothing), any SQLAlchemy URL for a shared server. Each edit keeps its byte runs with the bytes
they replaced, so edits stack: an edit's original bytes are the staged state it was made on.
Reverting an edit that a later edit overlaps would leave the later one's original bytes false,
so it is refused with the names of those edits.

Undo and redo walk a per-model history of steps: staging an edit, and reverting one. Undo takes
back the most recent step still done (a revert puts its edit back where it was in the stack;
every step after it is undone, so the bytes under it are what they were). Redo does the most
recently undone step again, if the bytes it was made on are still there. Staging a new edit
clears the redo steps. Edits staged before the history existed (older databases) undo as
stacked edits, top first.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
    delete,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, raiseload, relationship, sessionmaker

from ..errors import Conflict, SurgeryError
from .ops import ByteRun, ComputedEdit


class Base(DeclarativeBase):
    pass


class EditRow(Base):
    __tablename__ = "edits"
    # ids are never reused (SQLite would hand a reverted edit's id to the next one otherwise), so
    # an id a client holds can only ever name the edit it was given for
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_key: Mapped[str] = mapped_column(String(4096), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # staged | undone | reverted
    undo_order: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(Text)  # JSON of the request that made it
    tensor_names: Mapped[str] = mapped_column(Text)  # JSON list
    values_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    runs: Mapped[list["RunRow"]] = relationship(
        back_populates="edit", cascade="all, delete-orphan", order_by="RunRow.id", lazy="selectin"
    )


class RunRow(Base):
    __tablename__ = "edit_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    tensor_name: Mapped[str] = mapped_column(Text)
    offset: Mapped[int] = mapped_column(BigInteger)
    original: Mapped[bytes] = mapped_column(LargeBinary)
    new: Mapped[bytes] = mapped_column(LargeBinary)
    edit: Mapped[EditRow] = relationship(back_populates="runs")


class StepRow(Base):
    """One step of a model's undo history: an edit staged, or an edit reverted."""

    __tablename__ = "edit_steps"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # history order
    model_key: Mapped[str] = mapped_column(String(4096), index=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # stage | revert
    done: Mapped[bool] = mapped_column(Boolean, default=True)
    undo_order: Mapped[int | None] = mapped_column(Integer, nullable=True)  # redo order: latest undone first


@dataclass
class StagedEdit:
    id: int
    seq: int
    status: str
    description: str
    spec: dict
    tensor_names: list[str]
    values_changed: int
    bytes_changed: int
    created_at: float
    runs: list[ByteRun]  # empty when listed without them (see Journal.edits)
    run_count: int

    def summary(self, runs_limit: int = 0) -> dict:
        d = {
            "id": self.id,
            "seq": self.seq,
            "status": self.status,
            "description": self.description,
            "spec": self.spec,
            "tensor_names": self.tensor_names,
            "values_changed": self.values_changed,
            "bytes_changed": self.bytes_changed,
            "created_at": self.created_at,
            "run_count": self.run_count,
        }
        if runs_limit:
            d["runs"] = [
                {
                    "tensor_name": r.tensor_name,
                    "offset_bytes": r.offset,
                    "length": len(r.new),
                    "original_hex": r.original[:256].hex().upper(),
                    "new_hex": r.new[:256].hex().upper(),
                    "truncated": len(r.new) > 256,
                }
                for r in self.runs[:runs_limit]
            ]
        return d

    def overlaps(self, other: "StagedEdit") -> bool:
        for a in self.runs:
            for b in other.runs:
                if a.tensor_name == b.tensor_name and a.offset < b.offset + len(b.new) and b.offset < a.offset + len(a.new):
                    return True
        return False


def _to_staged(row: EditRow, run_count: int | None = None) -> StagedEdit:
    """The edit with its runs, or (given their count) without loading them."""
    runs = [] if run_count is not None else [ByteRun(r.tensor_name, r.offset, r.original, r.new) for r in row.runs]
    return StagedEdit(
        row.id, row.seq, row.status, row.description, json.loads(row.spec), json.loads(row.tensor_names),
        row.values_changed, row.bytes_changed, row.created_at, runs,
        len(runs) if run_count is None else run_count,
    )


class Journal:
    def __init__(self, url: str) -> None:
        kwargs = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.RLock()
        self._version = 0  # bumps on every change: names the staged state for caches

    @property
    def version(self) -> int:
        return self._version

    def _bump(self) -> None:
        self._version += 1

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ----------------------------------------------------------------------------------

    def edits(self, model_key: str, status: str = "staged", *, with_runs: bool = True) -> list[StagedEdit]:
        """Edits in stack order. Without runs, their bytes stay in the database: a listing after
        a whole-tensor edit would otherwise read megabytes per request."""
        with self._session() as s:
            if with_runs:
                q = select(EditRow)
            else:
                count = select(func.count(RunRow.id)).where(RunRow.edit_id == EditRow.id).scalar_subquery()
                q = select(EditRow, count).options(raiseload(EditRow.runs))
            q = q.where(EditRow.model_key == model_key, EditRow.status == status)
            q = q.order_by(EditRow.seq) if status == "staged" else q.order_by(EditRow.undo_order.desc())
            if with_runs:
                return [_to_staged(r) for r in s.scalars(q)]
            return [_to_staged(r, n) for r, n in s.execute(q)]

    def get(self, model_key: str, edit_id: int) -> StagedEdit:
        with self._session() as s:
            row = s.get(EditRow, edit_id)
            if row is None or row.model_key != model_key:
                raise EditNotFound(f"no staged edit #{edit_id} for this model", edit_id=edit_id)
            return _to_staged(row)

    def overlay(self, model_key: str, tensor_name: str) -> list[tuple[int, bytes]]:
        """Byte runs of the staged edits on one tensor, oldest first (later ones win)."""
        with self._session() as s:
            q = (
                select(RunRow.offset, RunRow.new)
                .join(EditRow)
                .where(EditRow.model_key == model_key, EditRow.status == "staged", RunRow.tensor_name == tensor_name)
                .order_by(EditRow.seq, RunRow.id)
            )
            return [(o, n) for o, n in s.execute(q)]

    def staged_tensors(self, model_key: str) -> dict[str, int]:
        """Tensor name -> number of staged edits touching it."""
        out: dict[str, int] = {}
        with self._session() as s:
            q = select(EditRow.tensor_names).where(EditRow.model_key == model_key, EditRow.status == "staged")
            for names in s.scalars(q):
                for name in json.loads(names):
                    out[name] = out.get(name, 0) + 1
        return out

    # -- writes ---------------------------------------------------------------------------------

    def stage(self, model_key: str, computed: ComputedEdit | None = None, *, description: str = "",
              spec: dict | None = None, runs: Iterable[ByteRun] = ()) -> StagedEdit:
        """Record an edit (its runs against the current staged state). Clears the redo stack."""
        if computed is not None:
            description, spec, runs = computed.description, computed.spec.to_json(), computed.runs
            values, nbytes = computed.values_changed, computed.bytes_changed
        else:
            runs = list(runs)
            values, nbytes = 0, sum(sum(a != b for a, b in zip(r.original, r.new)) for r in runs)
        runs = list(runs)
        if not runs:
            raise NothingToStage("the edit changes no bytes: nothing was staged")
        with self._lock, self._session.begin() as s:
            _clear_redo(s, model_key)
            seq = (s.scalar(select(func.max(EditRow.seq)).where(EditRow.model_key == model_key)) or 0) + 1
            names = sorted({r.tensor_name for r in runs})
            row = EditRow(
                model_key=model_key, seq=seq, status="staged", description=description,
                spec=json.dumps(spec or {}), tensor_names=json.dumps(names), values_changed=values,
                bytes_changed=nbytes, created_at=time.time(),
                runs=[RunRow(tensor_name=r.tensor_name, offset=r.offset, original=r.original, new=r.new) for r in runs],
            )
            s.add(row)
            s.flush()
            s.add(StepRow(model_key=model_key, edit_id=row.id, action="stage", done=True))
            result = _to_staged(row)
        self._bump()
        return result

    def _blocking(self, model_key: str, target: StagedEdit) -> list[StagedEdit]:
        return [e for e in self.edits(model_key) if e.seq > target.seq and e.overlaps(target)]

    def revert(self, model_key: str, edit_id: int) -> StagedEdit:
        """Take one edit out of the stack (an undoable step); returns it with status "reverted"."""
        with self._lock:
            target = self.get(model_key, edit_id)
            if target.status != "staged":
                raise EditNotFound(f"edit #{edit_id} is not staged (it was {target.status})", edit_id=edit_id)
            later = self._blocking(model_key, target)
            if later:
                ids = ", ".join(f"#{e.id}" for e in later)
                raise Conflict(
                    f"edit #{edit_id} cannot be reverted alone: later edit(s) {ids} change the same bytes "
                    "on top of it. Revert those first (or undo back to it); nothing was changed.",
                    edit_id=edit_id, blocking=[e.summary() for e in later],
                )
            with self._session.begin() as s:
                row = s.get(EditRow, edit_id)
                row.status = "reverted"
                s.add(StepRow(model_key=model_key, edit_id=edit_id, action="revert", done=True))
                result = _to_staged(row)
            self._bump()
            return result

    def _last_done(self, s, model_key: str) -> StepRow | None:
        return s.scalars(
            select(StepRow).where(StepRow.model_key == model_key, StepRow.done.is_(True))
            .order_by(StepRow.id.desc()).limit(1)
        ).first()

    def _top_staged(self, s, model_key: str) -> EditRow | None:
        return s.scalars(
            select(EditRow).where(EditRow.model_key == model_key, EditRow.status == "staged")
            .order_by(EditRow.seq.desc()).limit(1)
        ).first()

    def _next_undo(self, s, model_key: str) -> tuple[StepRow | None, EditRow | None]:
        """The step undo takes back: the latest done step, or (for edits staged before the
        history existed) the top of the stack when it lies above every recorded step."""
        step = self._last_done(s, model_key)
        top = self._top_staged(s, model_key)
        if step is not None:
            if step.action == "revert" or top is None or s.get(EditRow, step.edit_id).seq >= top.seq:
                return step, s.get(EditRow, step.edit_id)
        if top is None:
            return None, None
        return None, top  # an edit without a step (an older database)

    def _next_redo(self, s, model_key: str) -> StepRow | None:
        return s.scalars(
            select(StepRow).where(StepRow.model_key == model_key, StepRow.done.is_(False))
            .order_by(StepRow.undo_order.desc()).limit(1)
        ).first()

    def undo(self, model_key: str) -> StagedEdit:
        """Take back the latest step. Returns its edit: status "undone" (a staged edit was taken
        back) or "staged" (a revert was taken back: the edit is in the stack again)."""
        with self._lock, self._session.begin() as s:
            step, row = self._next_undo(s, model_key)
            if row is None:
                raise NothingToStage("nothing to undo: no staged edits")
            top = max(s.scalar(select(func.max(EditRow.undo_order)).where(EditRow.model_key == model_key)) or 0,
                      s.scalar(select(func.max(StepRow.undo_order)).where(StepRow.model_key == model_key)) or 0)
            if step is None:  # record it, so that redo finds it
                step = StepRow(model_key=model_key, edit_id=row.id, action="stage")
                s.add(step)
            step.done, step.undo_order = False, top + 1
            if step.action == "revert":
                row.status = "staged"  # back at its place in the stack (its seq never changed)
            else:
                row.status, row.undo_order = "undone", top + 1
            result = _to_staged(row)
        self._bump()
        return result

    def redo(self, model_key: str, current_bytes) -> StagedEdit:
        """Do the most recently undone step again, if the bytes it was made on are still there.
        Returns its edit: status "staged" (restaged) or "reverted" (reverted again)."""
        with self._lock:
            with self._session() as s:
                step = self._next_redo(s, model_key)
                if step is None:  # an older database: undone edits without steps
                    undone = self.edits(model_key, "undone")
                    if not undone:
                        raise NothingToStage("nothing to redo")
                    action, edit = "stage", undone[0]
                else:
                    action, edit = step.action, self.get(model_key, step.edit_id)
                step_id = step.id if step is not None else None
            if action == "revert":
                later = self._blocking(model_key, edit)
                if later:
                    raise Conflict(
                        f"cannot redo the revert of edit #{edit.id}: later edit(s) "
                        f"{', '.join(f'#{e.id}' for e in later)} change the same bytes on top of it",
                        edit_id=edit.id,
                    )
            else:
                for r in edit.runs:
                    if current_bytes(r.tensor_name, r.offset, len(r.original)) != r.original:
                        raise Conflict(
                            f"cannot redo edit #{edit.id}: {r.tensor_name!r} at byte {r.offset} changed since it was undone",
                            edit_id=edit.id,
                        )
            with self._session.begin() as s:
                row = s.get(EditRow, edit.id)
                if action == "revert":
                    row.status = "reverted"
                else:
                    seq = (s.scalar(select(func.max(EditRow.seq)).where(
                        EditRow.model_key == model_key, EditRow.status == "staged")) or 0) + 1
                    row.status, row.undo_order, row.seq = "staged", None, seq
                if step_id is not None:
                    st = s.get(StepRow, step_id)
                    st.done, st.undo_order = True, None
                else:
                    s.add(StepRow(model_key=model_key, edit_id=row.id, action="stage", done=True))
                result = _to_staged(row)
            self._bump()
            return result

    def history(self, model_key: str) -> dict:
        """What undo and redo would do now: {"undo": step | None, "redo": step | None}, each
        {"action": "stage" | "revert", "edit_id", "description"}."""
        with self._session() as s:
            step, row = self._next_undo(s, model_key)
            undo = None if row is None else {
                "action": step.action if step is not None else "stage", "edit_id": row.id, "description": row.description}
            nxt = self._next_redo(s, model_key)
            if nxt is not None:
                r = s.get(EditRow, nxt.edit_id)
                redo = {"action": nxt.action, "edit_id": r.id, "description": r.description}
            else:
                r = s.scalars(select(EditRow).where(EditRow.model_key == model_key, EditRow.status == "undone")
                              .order_by(EditRow.undo_order.desc()).limit(1)).first()
                redo = None if r is None else {"action": "stage", "edit_id": r.id, "description": r.description}
            return {"undo": undo, "redo": redo}

    def clear(self, model_key: str) -> int:
        """Discard every edit of the model (reverted and undone ones too) and its history."""
        with self._lock, self._session.begin() as s:
            s.execute(delete(StepRow).where(StepRow.model_key == model_key))
            n = s.execute(delete(EditRow).where(EditRow.model_key == model_key, EditRow.status != "reverted")).rowcount
            s.execute(delete(EditRow).where(EditRow.model_key == model_key))
        self._bump()
        return n or 0


def _clear_redo(s, model_key: str) -> None:
    """A new edit: the undone steps cannot be redone any more (undone edits go, reverts stay done)."""
    s.execute(delete(StepRow).where(StepRow.model_key == model_key, StepRow.done.is_(False)))
    s.execute(delete(EditRow).where(EditRow.model_key == model_key, EditRow.status == "undone"))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class EditNotFound(SurgeryError):
    code = "edit_not_found"
    http_status = 404


class NothingToStage(SurgeryError):
    code = "nothing_to_do"
    http_status = 409
    exit_code = 1
