"""Staging: edits against a model's current staged state, and patches in and out of it.

Glue between the workspace (open models, readers), the journal (durable staged edits) and the
pure operations. Staging for one model is serialized, so an edit is always computed against the
state it is recorded on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..errors import Conflict, InvalidRequest
from ..store import Model, TensorReader
from ..workspace import Workspace
from . import hexpatch as hp
from .journal import Journal, StagedEdit
from .ops import ByteRun, ComputedEdit, EditSpec, compute_edit
from .runs import ByteMap

CHECKSUM_MAX_BYTES = 16 << 30  # hashing more than this for base_model_checksum takes minutes


def model_key(model: Model) -> str:
    return os.path.realpath(model.path)


def overlays(edits, skip: set[int] | frozenset = frozenset()) -> dict[str, list[tuple[int, bytes]]]:
    """Each tensor's byte runs from `edits` (oldest first, later ones win), leaving out `skip` ids."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    for e in edits:
        if e.id not in skip:
            for r in e.runs:
                out.setdefault(r.tensor_name, []).append((r.offset, r.new))
    return out


class StagedOverlays:
    """The workspace's overlay provider: a tensor's staged byte runs from the journal, and a token
    that changes with every change to the journal (readers' cache keys carry it).

    Give it to the workspace when making it, `Workspace(settings, overlay_provider=StagedOverlays(journal))`,
    so its staged views (the web app's, or the CLI agent's) see the journal's edits."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._overlays: dict[tuple[str, str], tuple[int, list]] = {}

    def __call__(self, model: Model, tensor: str):
        key = (model_key(model), tensor)
        version = self.journal.version
        hit = self._overlays.get(key)
        if hit is None or hit[0] != version:
            hit = (version, self.journal.overlay(key[0], tensor))
            self._overlays[key] = hit
        return hit[1], (key, version)


class Staging:
    def __init__(self, workspace: Workspace, journal: Journal) -> None:
        provider = workspace.overlay_provider
        if not (isinstance(provider, StagedOverlays) and provider.journal is journal):
            # edits would be computed against the base bytes instead of the staged state
            raise ValueError("the workspace's staged view must come from this journal: make it with "
                             "Workspace(settings, overlay_provider=StagedOverlays(journal))")
        self.ws = workspace
        self.journal = journal
        self._locks: dict[str, threading.Lock] = {}
        self._checksums: dict[tuple, str] = {}
        self.listeners: list[Callable[[Model, str], None]] = []  # told after every change

    def _lock(self, model: Model) -> threading.Lock:
        return self._locks.setdefault(model_key(model), threading.Lock())

    def _changed(self, model: Model, what: str) -> None:
        for fn in list(self.listeners):
            fn(model, what)

    # -- reading the staged state ---------------------------------------------------------------

    def reader(self, model: Model, tensor: str) -> TensorReader:
        return self.ws.reader(tensor, "staged", model)

    def current_bytes(self, model: Model) -> Callable[[str, int, int], bytes]:
        """Bytes of the staged state, as of this call: one overlay reader per tensor, because a
        reader merges every staged run of its tensor and a patch may have thousands of entries."""
        readers: dict[str, TensorReader] = {}

        def read(tensor: str, offset: int, length: int) -> bytes:
            reader = readers.get(tensor)
            if reader is None:
                reader = readers[tensor] = self.reader(model, tensor)
            return reader.read_bytes(offset, length)

        return read

    def base_bytes(self, model: Model) -> Callable[[str, int, int], bytes]:
        def read(tensor: str, offset: int, length: int) -> bytes:
            return TensorReader(model.tensor(tensor)).read_bytes(offset, length)

        return read

    # -- edits ----------------------------------------------------------------------------------

    def preview(self, model: Model, spec: EditSpec) -> ComputedEdit:
        ref = model.tensor(spec.tensor_name)
        if getattr(ref.dtype, "quantized", False):  # a GGUF block type: edit, then re-quantize blocks
            from .gguf_edit import compute_quant_edit

            return compute_quant_edit(self.reader(model, spec.tensor_name), spec)
        return compute_edit(self.reader(model, spec.tensor_name), spec)

    def edit(self, model: Model, spec: EditSpec) -> tuple[ComputedEdit, StagedEdit]:
        with self._lock(model):
            computed = self.preview(model, spec)
            staged = self.journal.stage(model_key(model), computed)
        self._changed(model, "edit")
        return computed, staged

    def stage_runs(self, model: Model, description: str, spec: dict, runs: list[ByteRun]) -> StagedEdit:
        """Stage byte runs computed elsewhere (e.g. a merged LoRA) against the current staged state."""
        with self._lock(model):
            current = self.current_bytes(model)
            for r in runs:
                if current(r.tensor_name, r.offset, len(r.original)) != r.original:
                    raise Conflict(f"{r.tensor_name!r} changed at byte {r.offset} while the edit was computed; try again",
                                   tensor=r.tensor_name)
            staged = self.journal.stage(model_key(model), description=description, spec=spec, runs=runs)
        self._changed(model, "stage_runs")
        return staged

    def edits(self, model: Model, *, with_runs: bool = True) -> list[StagedEdit]:
        return self.journal.edits(model_key(model), with_runs=with_runs)

    def undone(self, model: Model, *, with_runs: bool = True) -> list[StagedEdit]:
        return self.journal.edits(model_key(model), "undone", with_runs=with_runs)

    def get_edit(self, model: Model, edit_id: int) -> StagedEdit:
        return self.journal.get(model_key(model), edit_id)

    def staged_tensors(self, model: Model) -> dict[str, int]:
        return self.journal.staged_tensors(model_key(model))

    def revert(self, model: Model, edit_id: int) -> StagedEdit:
        with self._lock(model):
            e = self.journal.revert(model_key(model), edit_id)
        self._changed(model, "revert")
        return e

    def undo(self, model: Model) -> StagedEdit:
        with self._lock(model):
            e = self.journal.undo(model_key(model))
        self._changed(model, "undo")
        return e

    def redo(self, model: Model) -> StagedEdit:
        with self._lock(model):
            e = self.journal.redo(model_key(model), self.current_bytes(model))
        self._changed(model, "redo")
        return e

    def clear(self, model: Model) -> int:
        with self._lock(model):
            n = self.journal.clear(model_key(model))
        self._changed(model, "clear")
        return n

    def staged_runs(self, model: Model) -> dict[str, list[tuple[int, bytes]]]:
        """Every tensor's staged overlay (what an export writes)."""
        return overlays(self.edits(model))

    # -- patches out ----------------------------------------------------------------------------

    def model_checksum(self, model: Model, progress=None) -> str | None:
        if model.nbytes > CHECKSUM_MAX_BYTES:
            return None
        ident = tuple(f.identity for f in model.files)
        key = (model_key(model), ident)
        if key not in self._checksums:
            self._checksums[key] = hp.model_checksum(model, progress)
        return self._checksums[key]

    def build_patch(self, model: Model, description: str, edit_ids: list[int] | None = None,
                    checksums: bool = True) -> hp.HexPatch:
        """A patch from base to the staged state of the chosen edits (all by default).

        An edit stacked on an edit that is not chosen cannot be separated from it: refused,
        naming both.
        """
        edits = self.edits(model)
        if edit_ids is not None:
            unknown = set(edit_ids) - {e.id for e in edits}
            if unknown:
                raise InvalidRequest(f"no staged edit(s) {sorted(unknown)}", field="edit_ids")
            chosen = [e for e in edits if e.id in set(edit_ids)]
            skipped = [e for e in edits if e.id not in set(edit_ids)]
            for c in chosen:
                for s in skipped:
                    if s.seq < c.seq and s.overlaps(c):
                        raise Conflict(
                            f"edit #{c.id} is stacked on edit #{s.id} (they change the same bytes): "
                            f"select #{s.id} too, or neither",
                            edit_id=c.id, depends_on=s.id,
                        )
        else:
            chosen = edits
        if not chosen:
            raise InvalidRequest("there are no staged edits to save", field="edit_ids")
        maps: dict[str, ByteMap] = {}
        for e in chosen:
            for r in e.runs:
                maps.setdefault(r.tensor_name, ByteMap()).write(r.offset, r.new)
        base = self.base_bytes(model)
        entries = []
        for name in sorted(maps):
            ref = model.tensor(name)
            for off, new in maps[name].runs():
                entries.extend(hp.diff_entries(name, off, base(name, off, len(new)), new,
                                               ref.dtype.name, ref.shape))
        patch = hp.HexPatch(entries, hp.validate_description(description))
        if checksums:
            patch.base_model_checksum = self.model_checksum(model)
            patch.tensor_checksums = {
                n: hp.tensor_checksum(TensorReader(model.tensor(n))) for n in sorted({e.tensor_name for e in entries})
            }
        return patch

    # -- patches in -----------------------------------------------------------------------------

    def verify_patch(self, model: Model, patch: hp.HexPatch) -> list[hp.ConflictItem]:
        """Conflicts of `patch` against the current staged state (base checksum only if nothing is staged)."""
        staged = bool(self.staged_tensors(model))
        conflicts = hp.find_conflicts(
            patch, model, self.current_bytes(model),
            model_checksum_fn=None if staged else (lambda: self.model_checksum(model)),
        )
        if not conflicts and patch.tensor_checksums:
            for name, expected in patch.tensor_checksums.items():
                if name not in model.tensors:
                    continue
                actual = hp.tensor_checksum(self.reader(model, name))  # the staged state, chunk by chunk
                if actual != expected:
                    conflicts.append(hp.ConflictItem(
                        "checksum", f"tensor_checksums[{name!r}] does not match its current bytes: the patch was "
                        "made for other weights", tensor_name=name, expected_hex=expected, actual_hex=actual))
        return conflicts

    def load_patch(self, model: Model, patch: hp.HexPatch, source: str) -> StagedEdit:
        """Stage a whole patch as one edit, or nothing at all (every conflict listed)."""
        with self._lock(model):
            hp.raise_conflicts(self.verify_patch(model, patch), source)
            runs = [ByteRun(e.tensor_name, e.offset_bytes, e.original, e.new) for e in patch.entries]
            desc = f"patch {source}: {patch.description}".rstrip(": ") + \
                f" ({len(runs):,} {'entry' if len(runs) == 1 else 'entries'}, {patch.changed_bytes:,} bytes)"
            staged = self.journal.stage(model_key(model), description=desc,
                                        spec={"op": "load_patch", "patch": source}, runs=runs)
        self._changed(model, "load_patch")
        return staged

    # -- export ---------------------------------------------------------------------------------

    def export_runs(self, model: Model, include_staged: bool, patches: list[tuple[str, hp.HexPatch]]):
        """The byte runs an export writes: staged edits (if asked), then each patch verified on top."""
        from .apply import StateReader, runs_for_patches

        state = StateReader(model, self.staged_runs(model) if include_staged else None)
        return runs_for_patches(model, patches, state, lambda: self.model_checksum(model))
