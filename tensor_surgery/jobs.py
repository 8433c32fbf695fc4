"""Long jobs (export, model-wide scans) in background threads, with progress a page can follow.

A job reports `progress(done, total)`; watchers get events `{"type": "progress"|"done"|"error"}`
through `events()`, which the web layer streams as server-sent events.

With a `store` folder, every job is also kept on disk (one small JSON file each, rewritten on
start, now and then while it runs, and at its end). A job still "running" on disk when the next
runner starts was cut short by a crash or a kill: it is listed as `interrupted`, with how far it
got, instead of being forgotten.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SurgeryError
from .surgery.leftovers import process_token, writer_alive
from .surgery.library import atomic_write

MIN_EVENT_INTERVAL = 0.1  # seconds between progress events: enough for a bar, cheap for a page
PERSIST_INTERVAL = 2.0  # seconds between progress writes to disk: what an interruption reports
MAX_RECORD_BYTES = 1 << 20
_ID = re.compile(r"[0-9a-f]{16}")
log = logging.getLogger("tensor_surgery")


class JobNotFound(SurgeryError):
    code = "job_not_found"
    http_status = 404


@dataclass
class Job:
    id: str
    kind: str
    description: str
    state: str = "running"  # running | done | error | interrupted (the process died under it)
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: dict | None = None
    meta: dict = field(default_factory=dict)  # what the job works on (an export: its output path)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _seq: int = 0
    _last_emit: float = 0.0
    _persist: Callable[["Job", bool], None] | None = field(default=None, repr=False)
    _last_persist: float = 0.0

    def snapshot(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "description": self.description, "state": self.state,
            "done": self.done, "total": self.total,
            "fraction": (self.done / self.total) if self.total else (1.0 if self.state == "done" else 0.0),
            "started": self.started, "finished": self.finished, "result": self.result, "error": self.error,
            **self.meta,
        }

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._cond:
            self.done, self.total = done, total
            if now - self._last_emit >= MIN_EVENT_INTERVAL or done >= total:
                self._last_emit = now
                self._seq += 1
                self._cond.notify_all()
        if self._persist is not None and now - self._last_persist >= PERSIST_INTERVAL:
            self._last_persist = now
            self._persist(self, False)

    def _finish(self, state: str, result=None, error=None) -> None:
        with self._cond:
            self.state, self.result, self.error, self.finished = state, result, error, time.time()
            self._seq += 1
            self._cond.notify_all()
        if self._persist is not None:
            self._persist(self, True)

    def events(self, timeout: float = 15.0) -> Iterator[dict]:
        """Progress snapshots as they change, ending with the final state (keep-alives on timeout)."""
        seen = -1
        while True:
            with self._cond:
                if self._seq == seen and self.state == "running":
                    self._cond.wait(timeout)
                seq, snap = self._seq, self.snapshot()
            if seq == seen and snap["state"] == "running":
                yield {"type": "keepalive"}
                continue
            seen = seq
            if snap["state"] == "running":
                yield {"type": "progress", **snap}
            else:  # an interrupted job ends its stream like a failed one
                yield {"type": "error" if snap["state"] == "interrupted" else snap["state"], **snap}
                return


class JobRunner:
    def __init__(self, keep: int = 100, store: str | os.PathLike | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._keep = keep
        self._lock = threading.Lock()
        self._store = Path(store) if store is not None else None
        self.interrupted: list[Job] = []  # jobs a previous process left running (found at start)
        if self._store is not None:
            self._store.mkdir(parents=True, exist_ok=True)
            self._load()

    # -- on disk -----------------------------------------------------------------------------------

    def _record_path(self, job: Job) -> Path:
        return self._store / f"{job.id}.json"

    def _save(self, job: Job, durable: bool) -> None:
        """Write the job's record (fsynced at start and end; progress updates need not be)."""
        with job._cond:
            record = {**job.snapshot(), "meta": job.meta, "writer": process_token()}
        data = json.dumps(record, default=str).encode()
        try:
            atomic_write(self._record_path(job), data, durable=durable)
        except OSError as e:  # a full or read-only disk must not fail the job itself
            log.warning("could not record job %s: %s", job.id, e)

    def _load(self) -> None:
        jobs = []
        for path in self._store.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a record write cut short; the record itself is whole
                continue
            if path.suffix != ".json" or not _ID.fullmatch(path.stem):
                continue
            try:
                if path.stat().st_size > MAX_RECORD_BYTES:
                    raise ValueError("too large")
                r = json.loads(path.read_bytes())
                job = Job(r["id"], str(r["kind"]), str(r["description"]), state=str(r["state"]),
                          done=int(r["done"]), total=int(r["total"]), started=float(r["started"]),
                          finished=r.get("finished"), result=r.get("result"), error=r.get("error"),
                          meta=dict(r.get("meta") or {}))
                if job.id != path.stem:
                    raise ValueError("id does not match the file name")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable job record %s: %s", path, e)
                continue
            job._persist = self._save
            if job.state == "running" and not writer_alive(r.get("writer")):
                pct = f" at {job.done / job.total:.0%}" if job.total else ""
                job.state, job.finished = "interrupted", path.stat().st_mtime
                job.error = {"code": "interrupted", "message": (
                    f"the server stopped during this {job.kind}{pct} (killed or crashed); it did not finish. "
                    "Start it again")}
                self._save(job, True)
                self.interrupted.append(job)
            jobs.append(job)
        jobs.sort(key=lambda j: j.started)
        for job in jobs:
            self._jobs[job.id] = job
        self._prune()

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for old in finished[: max(0, len(self._jobs) - self._keep)]:
            self._jobs.pop(old.id, None)
            if self._store is not None:
                self._record_path(old).unlink(missing_ok=True)

    # -- running -----------------------------------------------------------------------------------

    def start(self, kind: str, description: str, fn: Callable[[Callable[[int, int], None]], Any],
              meta: dict | None = None) -> Job:
        job = Job(uuid.uuid4().hex[:16], kind, description, meta=dict(meta or {}))
        if self._store is not None:
            job._persist = self._save
            self._save(job, True)  # before any work: a kill from here on is found at the next start
        with self._lock:
            self._jobs[job.id] = job
            self._prune()

        def run() -> None:
            try:
                job._finish("done", result=fn(job.progress))
            except SurgeryError as e:
                job._finish("error", error=e.to_dict())
            except OSError as e:  # the disk, not a bug: full, read-only, gone
                where = f" ({e.filename})" if e.filename else ""
                job._finish("error", error={"code": "io_error", "message": f"{e.strerror or e}{where}"})
            except Exception as e:  # a bug: report it on the job rather than lose it in a thread
                log.exception("job %s failed", job.id)
                job._finish("error", error={"code": "internal_error", "message": f"{type(e).__name__}: {e}"})

        threading.Thread(target=run, name=f"job-{kind}-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job {job_id!r}", job_id=job_id) from None

    def list(self) -> list[dict]:
        return [j.snapshot() for j in self._jobs.values()]
