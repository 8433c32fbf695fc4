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
from dataclasses import dataclass, field, replace

from ..errors import InvalidRequest, SurgeryError
from ..settings import Settings
from ..surgery.staging import overlays
from .hooks import Hooks

Subscriber = Callable[[dict], None]


@dataclass
class Wanted:
    prompt: str
    k: int
    disabled_edits: set[int] = field(default_factory=set)
    continuation: int = 0  # greedy tokens to generate, default vs steered (0: none; the Steer tab asks)
    interventions: tuple = ()  # the enabled interventions, snapshot taken with the rest of this state
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
        self.hooks = Hooks()  # interventions (steering vectors) and observers on the running model
        self.probe_bank = None  # the probe monitor's bank (interp/bank.py), hung on hooks as an observer
        self._continuation_cache: dict[tuple, list[int]] = {}  # default (unsteered) continuations
        self.model_path: str | None = None
        self.wanted = Wanted(settings.live_prompt, settings.live_top_k)
        self.last: dict | None = None
        self._base_cache: dict[str, tuple] = {}  # prompt -> (input ids, truncated, base logits)
        self._edits_cache: tuple | None = None  # (journal version, staged edits of the live model)
        self._overlay_cache: dict[frozenset, tuple] = {}  # disabled edits -> (overlays, edit list)
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty = False
        self._load_request: str | None = None
        self._target: str | None = None  # the model asked for by the last load (until an unload)
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
        def put(msg: dict) -> None:  # on the loop's thread; a page that does not keep up loses the oldest
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(msg)

        return self.subscribe(lambda msg: loop.call_soon_threadsafe(put, msg))

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
            if self.state in ("loading", "ready") and self._target == model.path:
                return self.status()  # loaded or on its way: a second page's Load is not a reload
            self._target = self._load_request = model.path
            self.state, self.message, self.progress = "loading", "starting", 0.0
            self._dirty = True
            self._wake.notify()
        self._ensure_thread()
        self._publish(self.status())
        return self.status()

    def unload(self) -> dict:
        with self._wake:
            self._target = None
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
        if k is not None and not 1 <= k <= 100:
            raise InvalidRequest("k must be between 1 and 100", field="k")
        with self._wake:
            if prompt is not None:
                self.wanted.prompt = prompt
            if k is not None:
                self.wanted.k = k
            self.wanted.seq = max(self.wanted.seq, seq)
        self._autoload()
        self._poke()

    def toggle_edit(self, edit_id: int, enabled: bool, seq: int = 0) -> None:
        with self._wake:  # the worker copies `wanted` under this lock: it never sees half a change
            if enabled:
                self.wanted.disabled_edits.discard(edit_id)
            else:
                self.wanted.disabled_edits.add(edit_id)
            self.wanted.seq = max(self.wanted.seq, seq)
        self._poke()

    def toggle_intervention(self, name: str, enabled: bool, seq: int = 0) -> dict:
        """Switch a steering vector (or other intervention) on or off; the next pass shows it."""
        with self._wake:
            iv = self.hooks.set_enabled(name, enabled)
            self.wanted.seq = max(self.wanted.seq, seq)
        self._poke()
        return iv.to_json()

    def set_continuation(self, tokens: int, seq: int = 0) -> None:
        if not 0 <= tokens <= 64:
            raise InvalidRequest("continuation tokens must be between 0 and 64", field="tokens")
        with self._wake:
            self.wanted.continuation = tokens
            self.wanted.seq = max(self.wanted.seq, seq)
        self._poke()

    def toggle_adapter(self, name: str, enabled: bool, seq: int = 0) -> dict:
        info = self.call(lambda: self._adapters().set_enabled(name, enabled))
        with self._wake:
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
        on top of the current staged state, then turn the adapter off: its effect now lives in the bytes.

        Runs as one job on the model's thread, so no pass ever shows the adapter and its merged bytes
        together (nor neither)."""
        import numpy as np

        from ..surgery.ops import ByteRun, cast_to_dtype
        from ..surgery.runs import changed_runs

        def merge():
            adapters = self._adapters()
            info = adapters.get(name)
            runs: list[ByteRun] = []
            for tensor, delta in adapters.deltas(name).items():
                if tensor not in model.tensors:
                    raise SurgeryError(f"cannot merge into {tensor!r}: the checkpoint has no such tensor "
                                       "(a tied or renamed weight)", tensor=tensor)
                reader = self.staging.reader(model, tensor)
                ref = reader.ref
                if not ref.dtype.decodable or ref.dtype.packed:
                    raise SurgeryError(f"cannot merge into {tensor!r}: {ref.dtype.name} values cannot be edited",
                                       tensor=tensor)
                current = reader.read_values(tuple(slice(0, n) for n in ref.shape)).astype(np.float64)
                new = cast_to_dtype(current + delta.double().numpy().reshape(ref.shape), ref.dtype).tobytes()
                orig = reader.read_bytes(0, ref.nbytes)
                runs += [ByteRun(tensor, a, orig[a:b], new[a:b]) for a, b in changed_runs(orig, new)]
            edit = self.staging.stage_runs(model, f"merge LoRA {name!r} ({info.description})",
                                           {"op": "merge_lora", "adapter": name, **info.spec}, runs)
            adapters.set_enabled(name, False)
            return edit

        edit = self.call(merge)
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
                load, self._load_request = self._load_request, None
                unload, self._unload_request = self._unload_request, False
            for job in jobs:
                job()
            with self._wake:  # after the jobs: changes they asked for are part of this pass
                dirty, self._dirty = self._dirty, False
                wanted = replace(self.wanted, disabled_edits=set(self.wanted.disabled_edits),
                                 interventions=tuple(self.hooks.active()))
            try:
                if unload:
                    self._do_unload("unloaded")
                if load:
                    self._do_load(load)
                if dirty and self.state == "ready":
                    self._compute(wanted)
            except SurgeryError as e:
                self._publish({"type": "error", "message": e.message, **e.context})
            except Exception as e:  # a bug; keep the thread alive and say what happened
                traceback.print_exc()
                self._publish({"type": "error", "message": f"live model failed: {type(e).__name__}: {e}"})

    def _do_unload(self, why: str) -> None:
        live, self.live, self.adapters = self.live, None, None  # the PEFT wrapper holds the modules too
        if live is not None:
            live.unload()  # then the memory (and the GPU cache) is actually freed
        self._base_cache.clear()
        self._edits_cache = None
        self._overlay_cache.clear()
        self._continuation_cache.clear()
        self.hooks.clear()  # vectors and observers were made for that model's widths and layers
        self.probe_bank = None
        self.model_path = None
        self.state, self.message, self.progress = "unloaded", why, 0.0
        self.last = None
        self._publish(self.status())

    def _do_load(self, path: str) -> None:
        from .lora import Adapters
        from .runtime import LiveModel

        if self.live is not None:
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
        except Exception as e:  # out of memory, a broken weight file...: say so, never stay "loading"
            traceback.print_exc()
            self.state, self.message = "error", f"loading failed: {type(e).__name__}: {e}"
            self._publish(self.status())
            return
        self.adapters = Adapters(self.live)
        self.model_path = model.path
        self.state = "ready"
        self.message = f"loaded in {time.perf_counter() - t0:.1f} s"
        self.progress = 1.0
        self._publish(self.status())

    def _overlays(self, disabled: set[int]) -> tuple[dict[str, list[tuple[int, bytes]]], list[dict]]:
        """Staged runs of the enabled edits, oldest first, per tensor, and the edit list for the pages.

        The journal is read once per staged state; toggling back and forth finds both states cached."""
        version = self.staging.journal.version
        if self._edits_cache is None or self._edits_cache[0] != version:
            self._edits_cache = (version, self.staging.edits(self.live.store_model))
            self._overlay_cache.clear()
        key = frozenset(disabled)
        if key not in self._overlay_cache:
            edits = self._edits_cache[1]
            out = overlays(edits, key)
            listing = [{"id": e.id, "description": e.description, "enabled": e.id not in disabled} for e in edits]
            if len(self._overlay_cache) >= 8:
                self._overlay_cache.pop(next(iter(self._overlay_cache)))
            self._overlay_cache[key] = (out, listing)
        return self._overlay_cache[key]

    def _compute(self, w: Wanted) -> None:
        from .hooks import attach, observe
        from .runtime import top_k

        t0 = time.perf_counter()
        live, adapters = self.live, self.adapters
        prompt, k, seq = w.prompt, w.k, w.seq
        if prompt not in self._base_cache:  # its tokens, and the base model's logits (no staged bytes, no adapters)
            ids, truncated = live.encode(prompt, self.settings.live_max_prompt_tokens)
            live.apply_overlays({})
            model, ctx = adapters.forward_model([])
            with ctx:
                base, _ = live.logits(ids, model)
            if len(self._base_cache) >= 32:
                self._base_cache.pop(next(iter(self._base_cache)))
            self._base_cache[prompt] = (ids, truncated, base)
        ids, truncated, base = self._base_cache[prompt]
        overlays, edit_list = self._overlays(w.disabled_edits)
        live.apply_overlays(overlays)
        model, ctx = adapters.forward_model()
        interventions, observers = list(w.interventions), self.hooks.observers()
        with ctx, attach(live.hf_model, interventions, observers) as captured:
            logits, fwd_ms = live.logits(ids, model)
            observed = observe(observers, captured, ids) if observers else {}
        notice = None
        if truncated:
            notice = (f"the prompt is longer than {self.settings.live_max_prompt_tokens} tokens "
                      f"(LIVE_MAX_PROMPT_TOKENS): only its last {ids.shape[1]} tokens are used")
        self.last = {
            "type": "logits", "seq": seq, "prompt": prompt, "k": k, "prompt_tokens": int(ids.shape[1]),
            "truncated": truncated, "notice": notice,
            "top": top_k(logits, live.decode, k, base),
            "forward_ms": round(fwd_ms, 2), "total_ms": round((time.perf_counter() - t0) * 1000, 2),
            "edits": edit_list, "adapters": adapters.list(),
            "interventions": [iv.to_json() for iv in self.hooks.interventions()], "observers": observed,
            "unmapped": sorted(live.unmapped)[:20],
        }
        self._publish(self.last)
        if w.continuation and not self._dirty:  # a newer change waits: its pass will continue instead
            self._continue(w, ids, interventions)

    def _continue(self, w: Wanted, ids, interventions) -> None:
        """A short greedy continuation without and with the interventions, side by side."""
        from .hooks import attach

        t0 = time.perf_counter()
        live = self.live
        key = (w.prompt, w.continuation, self.staging.journal.version, frozenset(w.disabled_edits),
               repr(self.adapters.list()))
        if key not in self._continuation_cache:
            model, ctx = self.adapters.forward_model()  # a fresh context: PEFT's disable_adapter is one-shot
            with ctx:
                self._continuation_cache[key] = live.greedy(ids, w.continuation, model)
            if len(self._continuation_cache) > 16:
                self._continuation_cache.pop(next(iter(self._continuation_cache)))
        default = self._continuation_cache[key]
        steered = default
        if interventions:
            model, ctx = self.adapters.forward_model()
            with ctx, attach(live.hf_model, interventions):
                steered = live.greedy(ids, w.continuation, model)
        text = lambda toks: live.tokenizer.decode(toks)  # noqa: E731
        self._publish({
            "type": "continuation", "seq": w.seq, "prompt": w.prompt, "tokens": w.continuation,
            "default": text(default), "steered": text(steered), "steered_by": [iv.name for iv in interventions],
            "changed": steered != default, "total_ms": round((time.perf_counter() - t0) * 1000, 2),
        })


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
