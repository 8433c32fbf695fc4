"""The live service: one worker thread owns the running model; everyone else describes the state
they want (prompt, top-k, which staged edits and adapters are on) and the worker catches up.

Requests never wait for a forward pass: they update the wanted state and wake the worker. The
worker takes a snapshot, applies it (staged bytes, adapters), runs the forward pass and publishes
the top-k to every subscriber (the WebSocket pages). Changes that arrive during a pass are
coalesced: the next pass uses the latest state, so toggles are serialized and the latest wins.

This module imports no torch at import time: the explorer starts without it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest, SurgeryError
from ..settings import Settings

Subscriber = Callable[[dict], None]


@dataclass
class Wanted:
    prompt: str
    k: int
    disabled_edits: set[int] = field(default_factory=set)
    seq: int = 0  # highest client request number folded into this state


class LiveService:
    def __init__(self, workspace, staging, settings: Settings) -> None:
        self.ws = workspace
        self.staging = staging
        self.settings = settings
        self.state = "unloaded"  # unloaded | loading | ready | error
        self.message = ""
        self.progress = 0.0
        self.live = None
        self.adapters = None
        self.model_path: str | None = None
        self.wanted = Wanted(settings.live_prompt, settings.live_top_k)
        self.last: dict | None = None
        self._base_cache: dict[tuple, object] = {}
        self._overlay_cache: tuple | None = None
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty = False
        self._load_request: str | None = None
        self._unload_request = False
        self._jobs: list[Callable[[], None]] = []  # work that must run on the model's thread
        self._thread: threading.Thread | None = None
        self._stop = False
        staging.listeners.append(self._staging_changed)

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subs.add(fn)
        return lambda: self._subs.discard(fn)

    def subscribe_async(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[], None]:
        return self.subscribe(lambda msg: loop.call_soon_threadsafe(queue.put_nowait, msg))

    def _publish(self, msg: dict) -> None:
        for fn in list(self._subs):
            try:
                fn(msg)
            except Exception:
                self._subs.discard(fn)  # a closed page's queue

    def status(self) -> dict:
        live = self.live
        out = {
            "type": "status", "state": self.state, "message": self.message, "progress": self.progress,
            "model": self.model_path, "prompt": self.wanted.prompt, "k": self.wanted.k,
            "max_prompt_tokens": self.settings.live_max_prompt_tokens,
        }
        if live is not None:
            out.update(device=str(live.device), dtype=str(live.dtype).replace("torch.", ""),
                       param_bytes=live.param_bytes, unmapped=len(live.unmapped), rss_bytes=_rss())
            if live.device.type == "cuda":
                import torch

                out["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        return out

    # -- requests (any thread) ------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="live-model", daemon=True)
            self._thread.start()

    def _poke(self) -> None:
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def load(self) -> dict:
        model = self.ws.model()
        from .folder import check_hf_folder

        check_hf_folder(model)  # fails fast, without torch, for folders that cannot run
        with self._wake:
            self._load_request = model.path
            self.state, self.message, self.progress = "loading", "starting", 0.0
            self._dirty = True
            self._wake.notify()
        self._ensure_thread()
        self._publish(self.status())
        return self.status()

    def unload(self) -> dict:
        with self._wake:
            self._unload_request = True
            self._dirty = True
            self._wake.notify()
        self._ensure_thread()
        return {"unloading": True}

    def set_prompt(self, prompt: str | None = None, k: int | None = None, seq: int = 0) -> None:
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidRequest("the prompt is empty", field="prompt")
            if len(prompt) > 100_000:
                raise InvalidRequest("the prompt is over 100,000 characters", field="prompt")
            self.wanted.prompt = prompt
        if k is not None:
            if not 1 <= k <= 100:
                raise InvalidRequest("k must be between 1 and 100", field="k")
            self.wanted.k = k
        self.wanted.seq = max(self.wanted.seq, seq)
        self._autoload()
        self._poke()

    def toggle_edit(self, edit_id: int, enabled: bool, seq: int = 0) -> None:
        if enabled:
            self.wanted.disabled_edits.discard(edit_id)
        else:
            self.wanted.disabled_edits.add(edit_id)
        self.wanted.seq = max(self.wanted.seq, seq)
        self._poke()

    def toggle_adapter(self, name: str, enabled: bool, seq: int = 0) -> dict:
        info = self.call(lambda: self._adapters().set_enabled(name, enabled))
        self.wanted.seq = max(self.wanted.seq, seq)
        self._poke()
        return info.to_json()

    def _autoload(self) -> None:
        if self.state in ("unloaded", "error") and self.ws.current is not None:
            try:
                self.load()
            except SurgeryError:
                pass

    def _staging_changed(self, model, what: str) -> None:
        if self.model_path and model.path == self.model_path:
            self._poke()

    def call(self, fn: Callable, timeout: float = 120.0):
        """Run `fn` on the model's thread (torch state is touched by that thread only)."""
        self._ensure_thread()
        done = threading.Event()
        box: dict = {}

        def job():
            try:
                box["value"] = fn()
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            finally:
                done.set()

        with self._wake:
            self._jobs.append(job)
            self._wake.notify()
        if not done.wait(timeout):
            raise SurgeryError("the live model did not answer in time", field="live")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _adapters(self):
        if self.adapters is None:
            raise SurgeryError("load the live model first (Live tab → Load)", field="live")
        return self.adapters

    def merge_adapter(self, name: str, model):
        """Stage the adapter's weight deltas as byte edits (W + delta, cast back with round-to-nearest-even)
        on top of the current staged state, then turn the adapter off: its effect now lives in the bytes."""
        import numpy as np

        from ..surgery.ops import ByteRun, cast_to_dtype
        from ..surgery.runs import changed_runs

        deltas = self.call(lambda: self._adapters().deltas(name))
        info = self.call(lambda: self._adapters().get(name))
        runs: list[ByteRun] = []
        for tensor, delta in deltas.items():
            reader = self.staging.reader(model, tensor)
            ref = reader.ref
            if not ref.dtype.decodable or ref.dtype.packed:
                raise SurgeryError(f"cannot merge into {tensor!r}: {ref.dtype.name} values cannot be edited", tensor=tensor)
            current = reader.read_values(tuple(slice(0, n) for n in ref.shape))
            new = cast_to_dtype(current.astype(np.float64) + delta.double().numpy().reshape(ref.shape), ref.dtype).tobytes()
            orig = reader.read_bytes(0, ref.nbytes)
            runs += [ByteRun(tensor, a, orig[a:b], new[a:b]) for a, b in changed_runs(orig, new)]
        edit = self.staging.stage_runs(
            model, f"merge LoRA {name!r} ({info.description})", {"op": "merge_lora", "adapter": name, **info.spec}, runs)
        self.call(lambda: self._adapters().set_enabled(name, False))
        self._poke()
        return edit

    def model_switched(self) -> None:
        """The explorer opened another model: one model in memory at a time, so free this one."""
        if self.model_path is not None and (self.ws.current is None or self.ws.current.path != self.model_path):
            self.unload()

    # -- the worker -----------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (after the pass in flight) and free the model; at server shutdown."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.live is not None:
            self.live.unload()
            self.live = self.adapters = None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._dirty and not self._jobs and not self._stop:
                    self._wake.wait(timeout=60)
                if self._stop:
                    for job in self._jobs:
                        job()  # callers get their answers (or errors) rather than a timeout
                    return
                jobs, self._jobs = self._jobs, []
                dirty, self._dirty = self._dirty, False
                load, self._load_request = self._load_request, None
                unload, self._unload_request = self._unload_request, False
            for job in jobs:
                job()
            try:
                if unload:
                    self._do_unload("unloaded")
                if load:
                    self._do_load(load)
                if (dirty or jobs) and self.state == "ready":
                    self._compute()
            except SurgeryError as e:
                self._publish({"type": "error", "message": e.message, **e.context})
            except Exception as e:  # a bug; keep the thread alive and say what happened
                traceback.print_exc()
                self._publish({"type": "error", "message": f"live model failed: {type(e).__name__}: {e}"})

    def _do_unload(self, why: str) -> None:
        if self.live is not None:
            self.live.unload()
        self.live = self.adapters = None
        self._base_cache.clear()
        self._overlay_cache = None
        self.model_path = None
        self.state, self.message, self.progress = "unloaded", why, 0.0
        self.last = None
        self._publish(self.status())

    def _do_load(self, path: str) -> None:
        from .lora import Adapters
        from .runtime import LiveModel

        self._do_unload("loading another model")
        self.state, self.message, self.progress = "loading", "starting", 0.0
        model = self.ws.model()
        if model.path != path:
            model = self.ws.models.get(os.path.realpath(path), model)

        def progress(msg: str, frac: float) -> None:
            self.message, self.progress = msg, frac
            self._publish(self.status())

        t0 = time.perf_counter()
        try:
            self.live = LiveModel.load(model, self.settings.live_device, progress)
        except SurgeryError as e:
            self.state, self.message = "error", e.message
            self._publish(self.status())
            return
        self.adapters = Adapters(self.live)
        self.model_path = model.path
        self.state = "ready"
        self.message = f"loaded in {time.perf_counter() - t0:.1f} s"
        self.progress = 1.0
        self._publish(self.status())
        self._dirty = True

    def _overlays(self) -> dict[str, list[tuple[int, bytes]]]:
        """Staged runs of the enabled edits, oldest first, per tensor (cached per journal state)."""
        model = self.live.store_model
        key = (self.staging.journal.version, frozenset(self.wanted.disabled_edits))
        if self._overlay_cache and self._overlay_cache[0] == key:
            return self._overlay_cache[1]
        out: dict[str, list[tuple[int, bytes]]] = {}
        edits = self.staging.edits(model)
        for e in edits:
            if e.id in self.wanted.disabled_edits:
                continue
            for r in e.runs:
                out.setdefault(r.tensor_name, []).append((r.offset, r.new))
        self._edit_list = [{"id": e.id, "description": e.description, "enabled": e.id not in self.wanted.disabled_edits}
                           for e in edits]
        self._overlay_cache = (key, out)
        return out

    def _compute(self) -> None:
        from .runtime import top_k

        t0 = time.perf_counter()
        live, adapters = self.live, self.adapters
        w = self.wanted
        prompt, k, seq = w.prompt, w.k, w.seq
        ids, truncated = live.encode(prompt, self.settings.live_max_prompt_tokens)
        base_key = (prompt, self.settings.live_max_prompt_tokens)
        base = self._base_cache.get(base_key)
        if base is None:  # the base model: no staged bytes, no adapters
            live.apply_overlays({})
            model, ctx = adapters.forward_model([])
            with ctx:
                base, _ = live.logits(ids, model)
            self._base_cache[base_key] = base
        overlays = self._overlays()
        live.apply_overlays(overlays)
        model, ctx = adapters.forward_model()
        with ctx:
            logits, fwd_ms = live.logits(ids, model)
        notice = None
        if truncated:
            notice = (f"the prompt is longer than {self.settings.live_max_prompt_tokens} tokens "
                      f"(LIVE_MAX_PROMPT_TOKENS): only its last {ids.shape[1]} tokens are used")
        self.last = {
            "type": "logits", "seq": seq, "prompt": prompt, "k": k, "prompt_tokens": int(ids.shape[1]),
            "truncated": truncated, "notice": notice,
            "top": top_k(logits, live.tokenizer, k, base),
            "forward_ms": round(fwd_ms, 2), "total_ms": round((time.perf_counter() - t0) * 1000, 2),
            "edits": getattr(self, "_edit_list", []), "adapters": adapters.list(),
            "unmapped": sorted(live.unmapped)[:20],
        }
        self._publish(self.last)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
