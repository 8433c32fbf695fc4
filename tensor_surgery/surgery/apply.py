"""Applying patches to a model: verification against a running state, and in-place writes.

Patches given together apply in order: each is verified against the base bytes with the earlier
ones applied. Verification lists every conflict of every patch (a conflicting entry is skipped so
later patches are still checked against a sensible state).

In-place apply rewrites bytes inside the model's own files, so it is journaled: before touching a
byte it writes the forward patch and its inverse (the backup) beside the model, then an intent
file naming both, all fsynced. If the process dies midway, `recover_in_place` writes every entry
of one of the two (forward: finish; back: restore), which is idempotent, so any torn state ends
as exactly the old bytes or exactly the new ones.

Recovery is always an explicit step the user chooses (`patch recover [--rollback]`, or the page's
banner): reading a model never writes it. Readers ask `pending_in_place` and say that an
interrupted apply is pending.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from ..errors import Conflict, SurgeryError
from ..store import Model, TensorReader, open_model
from . import hexpatch as hp
from .leftovers import INTENT_FORMAT, INTENT_NAME, Writing, clean_in_place_leftovers
from .library import atomic_write, fsync_path
from .runs import ByteMap


class StateReader:
    """Bytes of a model with accumulated runs applied (one reader per touched tensor)."""

    def __init__(self, model: Model, base_runs: dict[str, list[tuple[int, bytes]]] | None = None) -> None:
        self.model = model
        self.maps: dict[str, ByteMap] = {}
        self._readers: dict[str, TensorReader] = {}
        self._base: dict = {}  # untouched tensors, read with pread: each file checked once, not per read
        for name, runs in (base_runs or {}).items():
            for off, data in runs:
                self.write(name, off, data)

    def write(self, name: str, off: int, data: bytes) -> None:
        self.maps.setdefault(name, ByteMap()).write(off, data)
        self._readers.pop(name, None)

    def __call__(self, name: str, off: int, length: int) -> bytes:
        bm = self.maps.get(name)
        if bm is None:
            ref = self._base.get(name)
            if ref is None:
                ref = self.model.tensor(name)
                ref.file.check_unchanged()
                self._base[name] = ref
            # pread, not the map: a file that shrinks during a long verification raises
            # ModelChanged instead of killing the process with SIGBUS
            return ref.file.pread(ref, off, off + length)
        r = self._readers.get(name)
        if r is None:
            r = self._readers[name] = TensorReader(self.model.tensor(name), bm.runs())
        return r.read_bytes(off, length)

    def runs(self) -> dict[str, list[tuple[int, bytes]]]:
        return {n: bm.runs() for n, bm in sorted(self.maps.items())}

    @property
    def changed(self) -> bool:
        return bool(self.maps)


def verify_patches(
    model: Model, patches: list[tuple[str, hp.HexPatch]], state: StateReader | None = None, checksum_fn=None
) -> tuple[StateReader, list[dict]]:
    """Apply `patches` in order onto `state` (default: the base), collecting every conflict."""
    state = state or StateReader(model)
    report = []
    for source, patch in patches:
        conflicts = hp.find_conflicts(
            patch, model, state, model_checksum_fn=None if state.changed else checksum_fn
        )
        # a patch whose every range already holds its new bytes conflicts entry by entry, but was
        # simply applied already: say so instead of listing hex dumps
        applied = bool(conflicts) and hp.is_applied(patch, model, state)
        bad = {c.entry for c in conflicts if c.entry is not None}
        for i, e in enumerate(patch.entries):
            if i not in bad and e.tensor_name in model.tensors and e.end <= model.tensors[e.tensor_name].nbytes:
                state.write(e.tensor_name, e.offset_bytes, e.new)
        report.append({"patch": source, "entries": len(patch.entries), "ok": not conflicts,
                       "already_applied": applied, "conflicts": [c.to_json() for c in conflicts]})
    return state, report


def runs_for_patches(model: Model, patches: list[tuple[str, hp.HexPatch]], state: StateReader | None = None,
                     checksum_fn=None) -> dict[str, list[tuple[int, bytes]]]:
    state, report = verify_patches(model, patches, state, checksum_fn)
    conflicts = [c for r in report for c in r["conflicts"]]
    if conflicts:
        raise hp.PatchConflict(
            f"{len(conflicts)} conflict(s); nothing was applied. First: {conflicts[0]['message']}",
            conflicts=conflicts, report=report,
        )
    return state.runs()


# -- in place ---------------------------------------------------------------------------------


class InterruptedApply(SurgeryError):
    code = "interrupted_in_place_apply"
    http_status = 409
    exit_code = 1


def intent_path(model: Model | Path) -> Path:
    folder = Path(model.path).parent if isinstance(model, Model) else Path(model)
    return folder / INTENT_NAME


def _write_entries(model: Model, patch: hp.HexPatch) -> None:
    fds: dict[str, int] = {}
    try:
        for e in patch.entries:
            ref = model.tensor(e.tensor_name)
            f = ref.file
            if f.path not in fds:
                fds[f.path] = os.open(f.path, os.O_WRONLY)
            os.pwrite(fds[f.path], e.new, f.data_start + ref.info.begin + e.offset_bytes)
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)


def _journal_write(path: Path, data: bytes) -> None:
    """Write a journal file atomically, through a temporary name that says whose it is
    (`.<name>.tensor-surgery-<pid>-<tag>.tmp`), so that one left by a kill can be cleaned."""
    tmp = path.with_name(f".{path.name}.tensor-surgery-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    with Writing(tmp):
        atomic_write(path, data, tmp)


def _unused_name(folder: Path, stem: str, suffix: str) -> Path:
    """`stem + suffix`, or `stem-2 + suffix`...: two applies in one second keep both backups."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def apply_in_place(model_path: str | os.PathLike, patches: list[tuple[str, hp.HexPatch]], *, progress=None) -> dict:
    """Write `patches` into the model's own files, journaled so a crash can be rolled back or forward."""
    model = open_model(model_path)
    try:
        intent = intent_path(model)
        if intent.exists():
            raise InterruptedApply(
                f"an earlier in-place apply on {model.name} was interrupted ({intent}); run "
                f"`tensor-surgery patch recover {model_path}` (add --rollback to restore the old bytes) first",
                intent=str(intent),
            )
        runs = runs_for_patches(model, patches, checksum_fn=lambda: hp.model_checksum(model))  # as --out does
        clean_in_place_leftovers(Path(model.path).parent)  # what killed applies left here
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = StateReader(model)
        forward = hp.HexPatch(
            [hp.PatchEntry(t, off, base(t, off, len(d)), d, model.tensor(t).dtype.name, model.tensor(t).shape)
             for t, rs in runs.items() for off, d in rs],
            "in-place apply of: " + ", ".join(s for s, _ in patches),
        )
        folder = Path(model.path).parent
        fwd_path = folder / f".tensor-surgery-forward-{stamp}.hexpatch"
        backup_path = _unused_name(folder, f"{Path(model.path).name}.backup-{stamp}", ".hexpatch")
        _journal_write(backup_path, forward.inverted(f"backup before in-place apply of {', '.join(s for s, _ in patches)}").dumps().encode())
        _journal_write(fwd_path, forward.dumps().encode())
        _journal_write(intent, json.dumps({
            "format": INTENT_FORMAT, "model": os.path.realpath(model.path), "forward": fwd_path.name,
            "backup": backup_path.name, "started": time.time(), "pid": os.getpid(),
            "patches": [s for s, _ in patches], "entries": len(forward.entries),
        }).encode())
        _write_entries(model, forward)
        intent.unlink()
        fwd_path.unlink()
        fsync_path(folder)
        return {"model": model.path, "backup": str(backup_path), "entries": len(forward.entries),
                "changed_bytes": forward.changed_bytes}
    finally:
        model.close()


def recover_in_place(model_path: str | os.PathLike, rollback: bool = False) -> dict:
    """Finish (default) or undo an interrupted in-place apply; a no-op when none is pending."""
    from ..store.model import resolve_model_path

    resolved = resolve_model_path(model_path)
    intent = intent_path(Path(resolved).parent)
    if not intent.exists():
        return {"recovered": False, "message": "no interrupted in-place apply",
                "removed_leftovers": clean_in_place_leftovers(intent.parent)}
    folder = intent.parent
    try:
        info = json.loads(intent.read_text())
    except (OSError, ValueError) as e:
        raise InterruptedApply(f"cannot recover: the journal {intent} cannot be read ({e})", intent=str(intent)) from None
    names = [info.get(k) if isinstance(info, dict) else None for k in ("model", "forward", "backup")]
    # the journal is a file in the model's folder: it names files beside itself, nothing else
    if not all(isinstance(n, str) for n in names) or any(Path(n).name != n or n in (".", "..") for n in names[1:]):
        raise InterruptedApply(
            f"cannot recover: the journal {intent} is not one an in-place apply wrote (it must name the model "
            "and two patch files beside it); nothing was written. Move it away if no apply was running",
            intent=str(intent))
    if os.path.realpath(resolved) != info["model"]:
        # the journal sits in the folder: it may belong to another model beside this one
        raise Conflict(
            f"the interrupted in-place apply in {folder} was on {info['model']}, not {resolved}; "
            f"run `tensor-surgery patch recover {info['model']}`", intent=str(intent), model=info["model"],
        )
    source = folder / (info["backup"] if rollback else info["forward"])
    try:
        data = source.read_bytes()
    except OSError as e:
        raise InterruptedApply(f"cannot recover: {source} ({'backup' if rollback else 'forward patch'}) "
                               f"cannot be read: {e.strerror}", file=str(source)) from None
    patch = hp.loads(data, str(source))
    # The files changed under their headers' feet; reopening validates them again.
    model = open_model(resolved)
    try:
        for e in patch.entries:  # written without a check of their old bytes: at least stay inside
            if e.offset_bytes + len(e.new) > model.tensor(e.tensor_name).nbytes:
                raise InterruptedApply(f"cannot recover: {source} writes past the end of {e.tensor_name!r}",
                                       file=str(source), tensor=e.tensor_name)
        _write_entries(model, patch)
    finally:
        model.close()
    intent.unlink()
    fwd = folder / info["forward"]
    if fwd.exists():
        fwd.unlink()
    fsync_path(folder)
    return {"recovered": True, "direction": "rollback" if rollback else "rollforward",
            "entries": len(patch.entries), "backup": str(folder / info["backup"]),
            "removed_leftovers": clean_in_place_leftovers(folder)}


def pending_in_place(model_path: str | os.PathLike) -> dict | None:
    """The interrupted in-place apply of this model waiting for `patch recover`, or None.

    Only looks: nothing is written. The model's bytes may be half old, half new until the user
    chooses to finish the apply or roll it back.
    """
    from ..store.model import resolve_model_path

    try:
        resolved = resolve_model_path(model_path)
    except SurgeryError:
        return None
    intent = intent_path(Path(resolved).parent)
    try:
        info = json.loads(intent.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    if info.get("model") not in (None, os.path.realpath(resolved)):
        return None  # the journal of another model in the same folder
    started = info.get("started")
    return {
        "model": resolved,
        "intent": str(intent),
        "started": started if isinstance(started, (int, float)) else None,
        "patches": info.get("patches") if isinstance(info.get("patches"), list) else [],
        "entries": info.get("entries") if isinstance(info.get("entries"), int) else None,
        "backup": str(intent.parent / info["backup"]) if isinstance(info.get("backup"), str) else None,
        "message": interrupted_message(resolved),
    }


def interrupted_message(model_path: str | os.PathLike) -> str:
    return (f"an in-place apply of {Path(model_path).name} was interrupted: its bytes may be half old, half new. "
            f"Nothing was changed now. Finish it with `tensor-surgery patch recover {model_path}`, or restore "
            "the old bytes with `--rollback`")


def check_no_pending_intent(model: Model) -> None:
    intent = intent_path(model)
    if intent.exists():
        raise Conflict(
            f"{model.name} has an interrupted in-place apply ({intent}), so its bytes may be half old, half new; "
            f"first finish it with `tensor-surgery patch recover {model.path}` (or restore the old bytes with "
            "--rollback)", intent=str(intent),
        )
