"""Long jobs (export, model-wide scans) in background threads, with progress a page can follow.

A job reports `progress(done, total)`; watchers get events `{"type": "progress"|"done"|"error"}`
through `events()`, which the web layer streams as server-sent events.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import SurgeryError

MIN_EVENT_INTERVAL = 0.1  # seconds between progress events: enough for a bar, cheap for a page


class JobNotFound(SurgeryError):
    code = "job_not_found"
    http_status = 404


@dataclass
class Job:
    id: str
    kind: str
    description: str
    state: str = "running"  # running | done | error
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: dict | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _seq: int = 0
    _last_emit: float = 0.0

    def snapshot(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "description": self.description, "state": self.state,
            "done": self.done, "total": self.total,
            "fraction": (self.done / self.total) if self.total else (1.0 if self.state == "done" else 0.0),
            "started": self.started, "finished": self.finished, "result": self.result, "error": self.error,
        }

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._cond:
            self.done, self.total = done, total
            if now - self._last_emit >= MIN_EVENT_INTERVAL or done >= total:
                self._last_emit = now
                self._seq += 1
                self._cond.notify_all()

    def _finish(self, state: str, result=None, error=None) -> None:
        with self._cond:
            self.state, self.result, self.error, self.finished = state, result, error, time.time()
            self._seq += 1
            self._cond.notify_all()

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
            else:
                yield {"type": snap["state"], **snap}
                return


class JobRunner:
    def __init__(self, keep: int = 100) -> None:
        self._jobs: dict[str, Job] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def start(self, kind: str, description: str, fn: Callable[[Callable[[int, int], None]], Any]) -> Job:
        job = Job(uuid.uuid4().hex[:16], kind, description)
        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.state != "running"]
            for old in finished[: max(0, len(self._jobs) - self._keep)]:
                self._jobs.pop(old.id, None)

        def run() -> None:
            try:
                job._finish("done", result=fn(job.progress))
            except SurgeryError as e:
                job._finish("error", error=e.to_dict())
            except OSError as e:  # the disk, not a bug: full, read-only, gone
                where = f" ({e.filename})" if e.filename else ""
                job._finish("error", error={"code": "io_error", "message": f"{e.strerror or e}{where}"})
            except Exception as e:  # a bug: report it on the job rather than lose it in a thread
                import logging

                logging.getLogger("tensor_surgery").exception("job %s failed", job.id)
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
