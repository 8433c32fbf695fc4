"""The session's state shared by the web app and the CLI: open models, allowed roots, caches.

Several models can be open at once (diff and transplant need two); one of them is current, the
one the UI shows. Staged edits are not known here: the workspace is given an `OverlayProvider`
(`surgery.staging.StagedOverlays` over the journal) that returns a tensor's staged byte runs, and
readers made with `view="staged"` see them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from .errors import InvalidRequest, ModelNotFound, PathNotAllowed, SurgeryError
from .settings import Settings
from .store import Model, TensorReader, open_model
from .store import stats as st
from .store.listing import TensorListing, tensor_entries  # noqa: F401 (tensor_entries: the CLI's)
from .store.reader import Run

OverlayProvider = Callable[[Model, str], "tuple[list[Run], Hashable]"]
VIEWS = ("base", "staged")


NAME_MAX = 255  # bytes in one path component (Linux, macOS, Windows alike)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def check_path_text(path: str, what: str = "path") -> None:
    """Refuse a path no file system can hold, naming what is wrong with it (InvalidRequest)."""
    def bad(why: str) -> InvalidRequest:
        shown = path[:200].encode("utf-8", "backslashreplace").decode()  # the answer is UTF-8 JSON
        return InvalidRequest(f"{what} {path[:200]!r} {why}", path=shown)

    if "\0" in path:
        raise bad("holds a NUL byte, which no file name can hold")
    try:
        encoded = os.fsencode(path)
    except UnicodeError:
        raise bad("is not valid Unicode text (an unpaired surrogate)") from None
    if len(encoded) > PATH_MAX:
        raise bad(f"is {len(encoded):,} bytes long; paths are at most {PATH_MAX:,}")
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise bad(f"has a {len(part)}-byte name {os.fsdecode(part)[:40]!r}...; names are at most {NAME_MAX} bytes")


class AllowedRoots:
    """The only folders the server may open or write on a request's behalf."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]

    def check(self, path: str | os.PathLike, what: str = "path") -> Path:
        """The real path of `path` if it lies inside an allowed root; else PathNotAllowed.

        Every path a request names passes here first, so here is where a path the file system
        cannot even look up (a NUL byte, a name over NAME_MAX, text that is not Unicode) is refused
        as bad input, before os.stat raises ValueError or ENAMETOOLONG deep inside a route.
        """
        check_path_text(os.fspath(path), what)
        real = Path(os.path.realpath(os.fspath(path)))
        for root in self.roots:
            if real == root or real.is_relative_to(root):
                return real
        raise PathNotAllowed(
            f"{what} {os.fspath(path)!r} is outside the allowed folders "
            f"({', '.join(map(str, self.roots))}); add its folder to ALLOWED_ROOTS to use it",
            path=os.fspath(path),
        )

    def __contains__(self, path: str | os.PathLike) -> bool:
        try:
            self.check(path)
        except PathNotAllowed:
            return False
        return True


class LRUCache:
    """A thread-safe LRU bounded by the estimated size of its values, in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Lock] = {}

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:  # one computation per key; concurrent askers wait for it
            with self._lock:
                if key in self._items:
                    return self._items[key][0]
            try:
                value = compute()
            finally:  # a failed computation must not leave its gate behind (keys come from requests)
                with self._lock:
                    self._inflight.pop(key, None)
            n = size(value)
            with self._lock:
                if n <= self.max_bytes:
                    self._items[key] = (value, n)
                    self._bytes += n
                    while self._bytes > self.max_bytes:
                        _, (_, old) = self._items.popitem(last=False)
                        self._bytes -= old
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class CacheKey(tuple):
    """A key built by `tensor_cache_key` or `model_cache_key`: `Workspace.cached` takes no other, so
    no caller can assemble one by hand and forget a part of it."""


def tensor_cache_key(kind: str, reader: TensorReader, *params: Hashable) -> CacheKey:
    """The key of a result computed from one tensor's values (statistics, overviews, ranks, agent
    profiles): every cache key of tensor data is built here. It holds the file's identity, so a file
    rewritten on disk gets no old numbers, and the reader's overlay token (None for base), so a staged
    view never gets the base's numbers nor those of an earlier staged state."""
    ref = reader.ref
    return CacheKey((kind, ref.file.path, ref.file.identity, ref.name, reader.cache_token, *params))


def model_cache_key(kind: str, model: Model, *params: Hashable) -> CacheKey:
    """The key of a result computed from a model's tensor list (not its values, so not its staged edits)."""
    return CacheKey((kind, model.path, tuple(f.identity for f in model.files), *params))


def _stats_size(value) -> int:
    _, counts = value
    return 4096 + (counts.counts.nbytes if counts is not None else 0)


class Workspace:
    def __init__(self, settings: Settings, overlay_provider: OverlayProvider | None = None) -> None:
        self.settings = settings
        self.roots = AllowedRoots(settings.resolved_allowed_roots)
        # path (as asked, and as resolved) -> open model, least recently used first; at most
        # MODEL_CACHE_SIZE models (each under one or two keys)
        self.models: OrderedDict[str, Model] = OrderedDict()
        self.current: Model | None = None
        self.open_error: SurgeryError | None = None
        self.overlay_provider = overlay_provider  # None: staged views show the base
        self.switch_listeners: list[Callable[[], None]] = []  # told when the current model changes
        self.cache = LRUCache(settings.stats_cache_mb << 20)
        self._listings: dict[str, tuple] = {}  # model path -> (key, TensorListing), cached models only
        self._listing_lock = threading.Lock()
        self._lock = threading.RLock()

    # -- models --------------------------------------------------------------------------------

    def open(self, path: str | os.PathLike, *, make_current: bool = True, guarded: bool = True) -> Model:
        """Open (or reuse) a model. `guarded` checks every file against ALLOWED_ROOTS."""
        guard = (lambda p: self.roots.check(p, "model file")) if guarded else None
        if guarded:
            self.roots.check(path, "model path")
        with self._lock:
            key = os.path.realpath(os.fspath(path))
            model = self._cached_model(key)
            if model is None:
                # an interrupted in-place apply is only reported (`interrupted_apply`), never
                # finished here: opening is reading, and recovering is the user's choice
                model = open_model(path, guard=guard)
                self.models[key] = model
                self.models[os.path.realpath(model.path)] = model
                self._evict_models(keep=model)
            if make_current:
                switched = self.current is not model
                self.current = model
                self.open_error = None
                if switched:
                    for fn in self.switch_listeners:
                        fn()
            return model

    def recover_interrupted_apply(self, model: Model, rollback: bool = False) -> dict:
        """Finish (or roll back) the interrupted in-place apply of `model`, then open it again:
        its bytes changed under the open object, which would refuse every read from now on."""
        from .surgery.apply import recover_in_place

        with self._lock:
            result = recover_in_place(model.path, rollback)
            if result["recovered"]:
                for key in [k for k, m in self.models.items() if m is model]:
                    del self.models[key]
                self.open(model.path, make_current=self.current is model, guarded=False)
            return result

    def _cached_model(self, key: str) -> Model | None:
        """The open model under `key`, unless a file of it changed on disk since it was opened
        (an in-place apply by the CLI, a copy over it): then it is forgotten and opened again."""
        model = self.models.get(key)
        if model is None:
            return None
        if model.changed_on_disk():
            self._forget(model)
            return None
        for k in [k for k, m in self.models.items() if m is model]:
            self.models.move_to_end(k)
        return model

    def _evict_models(self, keep: Model) -> None:
        """Forget the least recently used models beyond MODEL_CACHE_SIZE (never the current one).

        A forgotten model is not closed: a request may still be reading it. Its map and descriptor
        go when the last reference does."""
        distinct = list({id(m): m for m in self.models.values()}.values())  # oldest first
        excess = len(distinct) - self.settings.model_cache_size
        for model in distinct:
            if excess <= 0:
                break
            if model is not keep and model is not self.current:
                self._forget(model)
                excess -= 1

    def _forget(self, model: Model) -> None:
        for k in [k for k, m in self.models.items() if m is model]:
            del self.models[k]
        with self._listing_lock:
            self._listings.pop(model.path, None)

    def open_default(self) -> None:
        """Open MODEL_PATH at start; a failure is kept and shown, the server still starts."""
        try:
            model = self.open(self.settings.resolved_model_path, guarded=False)
        except SurgeryError as e:
            self.open_error = e
            return
        # The page's first request is the tensor listing: a second or two to build on a 90k-tensor
        # model. Built here, before the server answers, the first page load does not wait for it.
        # (In a background thread it would hold the GIL while the page's scripts are being served.)
        try:
            self.tensor_listing(model)
        except SurgeryError:  # the request builds it again and reports the error
            pass

    def model(self) -> Model:
        if self.current is None:
            detail = f" ({self.open_error.message})" if self.open_error else ""
            raise ModelNotFound(
                f"no model is open{detail}: open one with POST /api/model or set MODEL_PATH"
            )
        return self.current

    def close(self) -> None:
        with self._lock:
            for model in {id(m): m for m in self.models.values()}.values():
                model.close()
            self.models.clear()
            self.current = None
            self.cache.clear()

    # -- reading -------------------------------------------------------------------------------

    def reader(self, name: str, view: str = "base", model: Model | None = None) -> TensorReader:
        if view not in VIEWS:
            raise InvalidRequest(f"view must be one of {', '.join(VIEWS)}, got {view!r}", field="view")
        model = model or self.model()
        ref = model.tensor(name)
        if view == "staged" and self.overlay_provider is not None:
            runs, token = self.overlay_provider(model, name)
            if runs:
                return TensorReader(ref, runs, cache_token=token)
        return TensorReader(ref)

    def cached(self, key: CacheKey, compute: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        """`compute()` once per key, kept in the LRU cache (`size` estimates its bytes)."""
        if not isinstance(key, CacheKey):
            raise TypeError("build cache keys with tensor_cache_key or model_cache_key")
        return self.cache.get_or_compute(key, compute, size)

    def stats_and_counts(
        self,
        reader: TensorReader,
        threshold: float | None = None,
        percentiles: tuple[float, ...] = st.DEFAULT_PERCENTILES,
        progress: st.Progress | None = None,
    ):
        threshold = self.settings.sparsity_threshold if threshold is None else threshold
        return self.cached(
            tensor_cache_key("stats", reader, threshold, tuple(percentiles)),
            lambda: st.tensor_stats(reader, threshold=threshold, percentiles=percentiles, progress=progress),
            _stats_size,
        )

    def tensor_stats(self, reader: TensorReader, **kw) -> dict:
        stats, _ = self.stats_and_counts(reader, **kw)
        return {"tensor_name": reader.ref.name, "view": "staged" if reader.staged else "base", **stats}

    def tensor_histogram(self, reader: TensorReader, *, bins: int, lo, hi, log: bool) -> dict:
        stats, counts = self.stats_and_counts(reader)
        if counts is None:
            value_range = (stats["min"], stats["max"]) if stats["min"] is not None else None
            hist = self.cached(
                tensor_cache_key("hist", reader, bins, lo, hi, log),
                lambda: st.tensor_histogram(reader, bins=bins, lo=lo, hi=hi, log=log, value_range=value_range),
                lambda h: 64 * (len(h["counts"]) + 16),
            )
        else:
            hist = counts.histogram(bins, lo, hi, log)
        return {"tensor_name": reader.ref.name, "view": "staged" if reader.staged else "base", "bins": bins, **hist}

    # -- listing -------------------------------------------------------------------------------

    def tensor_listing(self, model: Model | None = None) -> TensorListing:
        """`GET /api/tensors` of a model, built once while the model stays in the cache.

        Kept compressed (see `store.listing`): 30 MB of JSON for 90k tensors is 0.8 MB, and the
        gzipped answer the page asks for costs no compression per request. A request that comes
        while the listing is being built (see `open_default`) waits for that build instead of
        repeating it.
        """
        model = model or self.model()
        key = model_cache_key("listing", model)
        with self._listing_lock:
            listing = self._listings.get(model.path)
            if listing is None or listing[0] != key:
                listing = self._listings[model.path] = (key, TensorListing(model))
            return listing[1]
