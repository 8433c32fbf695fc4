"""The `.hexpatch` format, version 1 (see DESIGN.md): parse strictly, verify, invert, compose.

A patch is a list of byte replacements, each relative to the first byte of one tensor's data, so
it survives re-sharding and re-packing. Applying is all or nothing: every entry's original bytes
must match, entries of one patch must not overlap, tensors must exist and ranges must fit.

Top-level keys this module does not know are kept in `HexPatch.extra` and written back unchanged;
that is how the `signature` block of a signed patch (surgery/signing.py) travels through every
reader and writer here without being checked or lost.
"""

from __future__ import annotations

import gc
import hashlib
import json
import operator
import re
from collections import deque
from collections.abc import Iterable
from itertools import accumulate, chain, repeat
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import Conflict, InvalidRequest, SurgeryError, TooLarge
from ..store import Model, TensorReader

FORMAT = "hexpatch"
VERSION = 1
MAX_PATCH_BYTES = 512 * 1024 * 1024  # a patch file larger than this is refused before parsing
# fullmatch, not `$`: "$" also matches before a trailing newline ("ABC\n" would pass as hex)
_HEX = re.compile(r"[0-9A-Fa-f]*")
_SHA = re.compile(r"sha256:[0-9a-f]{64}")


class InvalidPatch(SurgeryError):
    code = "invalid_patch"
    http_status = 422


@dataclass(frozen=True, slots=True)
class PatchEntry:
    tensor_name: str
    offset_bytes: int
    original: bytes
    new: bytes
    dtype: str | None = None
    shape_at_edit_time: tuple[int, ...] | None = None
    note: str | None = None

    @property
    def end(self) -> int:
        return self.offset_bytes + len(self.new)

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "tensor_name": self.tensor_name,
            "offset_bytes": self.offset_bytes,
            "original_hex": self.original.hex().upper(),
            "new_hex": self.new.hex().upper(),
        }
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.shape_at_edit_time is not None:
            d["shape_at_edit_time"] = list(self.shape_at_edit_time)
        if self.note:
            d["note"] = self.note
        return d

    def inverted(self) -> "PatchEntry":
        return PatchEntry(self.tensor_name, self.offset_bytes, self.new, self.original,
                          self.dtype, self.shape_at_edit_time, self.note)


@dataclass
class HexPatch:
    entries: list[PatchEntry]
    description: str = ""
    base_model_checksum: str | None = None
    tensor_checksums: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys, kept on rewrite

    # -- serialization -------------------------------------------------------------------------

    def to_json(self) -> dict:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "description": self.description}
        if self.base_model_checksum:
            d["base_model_checksum"] = self.base_model_checksum
        if self.tensor_checksums:
            d["tensor_checksums"] = dict(sorted(self.tensor_checksums.items()))
        d.update({k: v for k, v in self.extra.items() if k not in d and k != "patches"})
        d["patches"] = [e.to_json() for e in self.entries]
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    # -- algebra -------------------------------------------------------------------------------

    def inverted(self, description: str | None = None) -> "HexPatch":
        """Swap original and new: applying then inverting restores the exact bytes.

        The checksums describe the weights *before* a patch, so the inverse cannot keep them.
        """
        return HexPatch(
            [e.inverted() for e in self.entries],
            description if description is not None else f"inverse of: {self.description}",
        )

    @property
    def tensors(self) -> list[str]:
        return sorted({e.tensor_name for e in self.entries})

    @property
    def changed_bytes(self) -> int:
        return sum(len(e.new) for e in self.entries)

    def summary(self) -> dict:
        return {
            "description": self.description,
            "entries": len(self.entries),
            "tensors": self.tensors,
            "changed_bytes": self.changed_bytes,
            "base_model_checksum": self.base_model_checksum,
        }


# -- parsing ----------------------------------------------------------------------------------


def loads(data: bytes | str, source: str = "patch") -> HexPatch:
    """Parse and validate a patch; every problem names the entry and field."""
    # A large patch is ~100k small objects parsed, then ~100k entries built while they are all
    # alive: the cyclic collector would rescan them again and again (none is in a cycle), which
    # took longer than the parsing itself.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _loads(data, source)
    finally:
        if enabled:
            gc.enable()


def _loads(data: bytes | str, source: str) -> HexPatch:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_PATCH_BYTES:
        raise TooLarge(
            f"{source}: {len(data):,} bytes is over the {MAX_PATCH_BYTES:,}-byte patch limit",
            file=source,
        )
    try:
        obj = orjson.loads(data)  # 10x json.loads on a large patch
    except orjson.JSONDecodeError:
        # json.loads reads a few things orjson refuses (unpaired surrogate escapes in a name,
        # integers past 64 bits), and words its errors as before
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InvalidPatch(f"{source}: not a UTF-8 JSON .hexpatch file: {e}", file=source) from None
    if not isinstance(obj, dict):
        raise InvalidPatch(f"{source}: a .hexpatch must be a JSON object", file=source)
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise InvalidPatch(f"{source}: format is {fmt!r}, expected {FORMAT!r}", file=source, field="format")
    version = obj.get("version", VERSION)
    if version != VERSION:
        raise InvalidPatch(
            f"{source}: version {version!r} is not supported (this tool reads version {VERSION})",
            file=source, field="version",
        )
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise InvalidPatch(f"{source}: description must be a string", file=source, field="description")
    checksum = obj.get("base_model_checksum")
    if checksum is not None and (not isinstance(checksum, str) or not _SHA.fullmatch(checksum.lower())):
        raise InvalidPatch(
            f"{source}: base_model_checksum must be 'sha256:' and 64 hex digits",
            file=source, field="base_model_checksum",
        )
    tchecks = obj.get("tensor_checksums") or {}
    if not isinstance(tchecks, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _SHA.fullmatch(v.lower()) for k, v in tchecks.items()
    ):
        raise InvalidPatch(
            f"{source}: tensor_checksums must map tensor names to 'sha256:<64 hex>'",
            file=source, field="tensor_checksums",
        )
    raw_entries = obj.get("patches")
    if not isinstance(raw_entries, list):
        raise InvalidPatch(f"{source}: 'patches' must be a list of entries", file=source, field="patches")
    entries = _plain_entries(raw_entries)
    if entries is None:  # something unusual: entry by entry, to accept it or name the culprit
        entries = [_plain_entry(e) or _entry(source, i, e) for i, e in enumerate(raw_entries)]
    check_no_overlap(entries, source)
    known = {"format", "version", "description", "base_model_checksum", "tensor_checksums", "patches"}
    return HexPatch(
        entries,
        description,
        checksum.lower() if checksum else None,
        {k: v.lower() for k, v in tchecks.items()},
        {k: v for k, v in obj.items() if k not in known},
    )


_fromhex = bytes.fromhex
_new = object.__new__
_ENTRY_SETTERS = tuple(getattr(PatchEntry, f).__set__ for f in PatchEntry.__slots__)
assert PatchEntry.__slots__ == ("tensor_name", "offset_bytes", "original", "new", "dtype",
                                "shape_at_edit_time", "note")
_NONE = type(None)


def _build_entries(n: int, *columns) -> list[PatchEntry]:
    """n PatchEntry from one iterable per field: the frozen `__init__` is a Python call per
    entry, while filling the slots column by column with map() runs in C."""
    entries = list(map(_new, repeat(PatchEntry, n)))
    for set_field, column in zip(_ENTRY_SETTERS, columns, strict=True):
        deque(map(set_field, entries, column), maxlen=0)
    return entries


def _plain_entries(raw: list) -> list[PatchEntry] | None:
    """Every entry of a well-formed patch, checked and built column by column (a large patch
    has ~100k entries, and a Python call per entry was most of the time of parsing it): all the
    hex of one field is decoded by one `bytes.fromhex` and sliced. None if any entry is
    unusual; the per-entry path then accepts it or names the culprit.
    """
    n = len(raw)
    if not n:
        return []
    if set(map(type, raw)) != {dict}:
        return None
    get = dict.get
    names = list(map(get, raw, repeat("tensor_name")))
    offsets = list(map(get, raw, repeat("offset_bytes")))
    original_hex = list(map(get, raw, repeat("original_hex")))
    new_hex = list(map(get, raw, repeat("new_hex")))
    dtypes = list(map(get, raw, repeat("dtype")))
    shapes = list(map(get, raw, repeat("shape_at_edit_time")))
    notes = list(map(get, raw, repeat("note")))
    if (set(map(type, names)) != {str} or "" in names
            or set(map(type, offsets)) != {int} or min(offsets) < 0
            or set(map(type, chain(original_hex, new_hex))) != {str}
            or not set(map(type, chain(dtypes, notes))) <= {str, _NONE}):
        return None
    lengths = list(map(len, original_hex))
    if lengths != list(map(len, new_hex)) or 0 in lengths or any(map(operator.and_, lengths, repeat(1))):
        return None
    try:
        # fromhex skips ASCII whitespace, which the format does not allow: the length says
        original, new = _fromhex("".join(original_hex)), _fromhex("".join(new_hex))
    except ValueError:
        return None
    total = sum(lengths)
    if 2 * len(original) != total or 2 * len(new) != total:
        return None
    kinds = set(map(type, shapes))
    if not kinds <= {list, _NONE}:
        return None
    if list in kinds:
        given = [s for s in shapes if s is not None] if _NONE in kinds else shapes
        dims = list(chain.from_iterable(given))
        if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
            return None
        distinct: dict = {}  # one tuple per distinct shape (a patch repeats a handful)
        keep = distinct.setdefault
        shapes = [None if s is None else keep(t := tuple(s), t) for s in shapes]
    ends = list(accumulate(map(operator.rshift, lengths, repeat(1))))
    spans = list(map(slice, chain((0,), ends), ends))
    return _build_entries(
        n, names, offsets, map(original.__getitem__, spans), map(new.__getitem__, spans),
        dtypes, shapes, notes,
    )


def _plain_entry(e) -> PatchEntry | None:
    """`_entry` for a well-formed entry with as few Python operations as possible (a large patch
    has ~100k entries); None for anything unusual, which `_entry` then examines and reports.
    It accepts only what `_entry` accepts and builds the same entry.
    """
    if type(e) is not dict:
        return None
    get = e.get
    name, off, oh, nh = get("tensor_name"), get("offset_bytes"), get("original_hex"), get("new_hex")
    if (type(name) is not str or not name or type(off) is not int or off < 0
            or type(oh) is not str or type(nh) is not str or len(oh) != len(nh) or not oh):
        return None
    try:
        orig, new = _fromhex(oh), _fromhex(nh)
    except ValueError:
        return None
    # fromhex skips ASCII whitespace between bytes, which the format does not allow
    if 2 * len(orig) != len(oh) or 2 * len(new) != len(nh):
        return None
    dtype, shape, note = get("dtype"), get("shape_at_edit_time"), get("note")
    if dtype is not None and type(dtype) is not str:
        return None
    if shape is not None:
        if type(shape) is not list:
            return None
        for d in shape:
            if type(d) is not int or d < 0:
                return None
        shape = tuple(shape)
    if note is not None and type(note) is not str:
        return None
    return PatchEntry(name, off, orig, new, dtype, shape, note)


def _entry(source: str, i: int, e) -> PatchEntry:
    def bad(msg: str, fld: str) -> InvalidPatch:
        return InvalidPatch(f"{source}: patches[{i}]: {msg}", file=source, entry=i, field=fld)

    if not isinstance(e, dict):
        raise bad("entry must be an object", "patches")
    name = e.get("tensor_name")
    if not isinstance(name, str) or not name:
        raise bad("tensor_name must be a non-empty string", "tensor_name")
    off = e.get("offset_bytes")
    if type(off) is not int or off < 0:
        raise bad(f"offset_bytes must be a non-negative integer, got {off!r}", "offset_bytes")
    blobs = {}
    for key in ("original_hex", "new_hex"):
        h = e.get(key)
        if not isinstance(h, str) or not _HEX.fullmatch(h):
            raise bad(f"{key} must be a string of hex digits", key)
        if len(h) % 2:
            raise bad(f"{key} has an odd number of hex digits ({len(h)})", key)
        blobs[key] = bytes.fromhex(h)
    if len(blobs["original_hex"]) != len(blobs["new_hex"]):
        raise bad(
            f"original_hex is {len(blobs['original_hex'])} bytes but new_hex is {len(blobs['new_hex'])}: "
            "a patch replaces bytes one for one",
            "new_hex",
        )
    if not blobs["new_hex"]:
        raise bad("original_hex and new_hex are empty", "new_hex")
    dtype = e.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise bad("dtype must be a string", "dtype")
    shape = e.get("shape_at_edit_time")
    if shape is not None and (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)):
        raise bad("shape_at_edit_time must be a list of non-negative integers", "shape_at_edit_time")
    note = e.get("note")
    if note is not None and not isinstance(note, str):
        raise bad("note must be a string", "note")
    return PatchEntry(name, off, blobs["original_hex"], blobs["new_hex"], dtype,
                      tuple(shape) if shape is not None else None, note)


def check_no_overlap(entries: Iterable[PatchEntry], source: str = "patch") -> None:
    by_tensor: dict[str, list[tuple[int, int, int]]] = {}
    for i, e in enumerate(entries):
        by_tensor.setdefault(e.tensor_name, []).append((e.offset_bytes, e.end, i))
    for name, spans in by_tensor.items():
        spans.sort()
        for (a0, a1, ai), (b0, b1, bi) in zip(spans, spans[1:]):
            if b0 < a1:
                first, second = sorted((ai, bi))  # in file order: the later entry is the one at fault
                raise InvalidPatch(
                    f"{source}: patches[{first}] and patches[{second}] overlap in {name!r} "
                    f"(bytes {b0}..{min(a1, b1)}): one patch may change each byte once",
                    file=source, tensor=name, entry=second, field="offset_bytes",
                )


# -- checksums ----------------------------------------------------------------------------------


def tensor_checksum(reader: TensorReader) -> str:
    """`tensor_checksums` value of one tensor: sha256 of its bytes as `reader` sees them (base or
    staged), read chunk by chunk."""
    return "sha256:" + reader.sha256()


def model_checksum(model: Model, progress=None) -> str:
    """sha256 over, for each tensor in name order: UTF-8 name, NUL, dtype, NUL, the shape as
    comma-separated decimals, NUL, then the tensor's bytes. It names the weights, not the files."""
    h = hashlib.sha256()
    total = model.nbytes
    done = 0
    for name in sorted(model.tensors):
        ref = model.tensors[name]
        h.update(name.encode("utf-8") + b"\0" + ref.dtype.name.encode() + b"\0"
                 + ",".join(map(str, ref.shape)).encode() + b"\0")
        for chunk in TensorReader(ref).iter_bytes():  # pread copies: a shrinking file raises ModelChanged, no SIGBUS
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return "sha256:" + h.hexdigest()


# -- verification --------------------------------------------------------------------------------


@dataclass
class ConflictItem:
    kind: str  # unknown_tensor | out_of_range | mismatch | checksum | overlap
    message: str
    entry: int | None = None
    tensor_name: str | None = None
    offset_bytes: int | None = None
    expected_hex: str | None = None
    actual_hex: str | None = None
    patch: int | None = None  # which of several patches (compose), counted from 0

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _short_hex(b: bytes, limit: int = 64) -> str:
    h = b.hex().upper()
    return h if len(h) <= limit * 2 else h[: limit * 2] + f"…(+{len(b) - limit} bytes)"


def find_conflicts(
    patch: HexPatch,
    model: Model,
    read_bytes,
    *,
    model_checksum_fn=None,
) -> list[ConflictItem]:
    """Every reason `patch` cannot apply to the bytes `read_bytes(tensor, offset, length)` gives.

    `read_bytes` is the current state (the base model, or the base with staged edits). Checksums
    are compared only when the patch carries them and the state is the base model
    (`model_checksum_fn` given; it may answer None when the model is too big to hash).
    """
    out: list[ConflictItem] = []
    for i, e in enumerate(patch.entries):
        ref = model.tensors.get(e.tensor_name)
        if ref is None:
            out.append(ConflictItem("unknown_tensor", f"patches[{i}]: no tensor {e.tensor_name!r} in {model.name}",
                                    i, e.tensor_name, e.offset_bytes))
            continue
        if e.end > ref.nbytes:
            out.append(ConflictItem(
                "out_of_range",
                f"patches[{i}]: bytes {e.offset_bytes}..{e.end} run past the end of {e.tensor_name!r} "
                f"({ref.nbytes} bytes)", i, e.tensor_name, e.offset_bytes))
            continue
        if e.dtype is not None and e.dtype != ref.dtype.name:
            out.append(ConflictItem(
                "dtype", f"patches[{i}]: made for {e.dtype} but {e.tensor_name!r} is {ref.dtype.name}",
                i, e.tensor_name, e.offset_bytes))
            continue
        actual = read_bytes(e.tensor_name, e.offset_bytes, len(e.original))
        if actual != e.original:
            expected_hex, actual_hex = _short_hex(e.original), _short_hex(actual)
            out.append(ConflictItem(
                "mismatch",
                f"patches[{i}]: {e.tensor_name!r} holds {_short_hex(actual, 16)} at byte "
                f"{e.offset_bytes}, where the patch expects {_short_hex(e.original, 16)}",
                i, e.tensor_name, e.offset_bytes, expected_hex, actual_hex))
    if model_checksum_fn is not None and patch.base_model_checksum and not out:
        actual = model_checksum_fn()  # None: not computed (a model too big to hash in time)
        if actual is not None and actual != patch.base_model_checksum:
            out.append(ConflictItem(
                "checksum",
                f"base_model_checksum is {patch.base_model_checksum} but {model.name} is {actual}: "
                "the patch was made for other weights", expected_hex=patch.base_model_checksum, actual_hex=actual))
    return out


def is_applied(patch: HexPatch, model: Model, read_bytes) -> bool:
    """Whether the bytes `read_bytes` gives already are the patch's result: every entry's range
    holds its new bytes (and some entry changes something). Such a patch conflicts entry by entry,
    but nothing is wrong: it was applied (or loaded) already, and applying it again changes nothing."""
    changes = False
    for e in patch.entries:
        ref = model.tensors.get(e.tensor_name)
        if ref is None or e.end > ref.nbytes or (e.dtype is not None and e.dtype != ref.dtype.name):
            return False
        if read_bytes(e.tensor_name, e.offset_bytes, len(e.new)) != e.new:
            return False
        changes = changes or e.new != e.original
    return changes


def raise_conflicts(conflicts: list[ConflictItem], source: str) -> None:
    if conflicts:
        raise PatchConflict(
            f"{source}: {len(conflicts)} conflict(s); nothing was applied. First: {conflicts[0].message}",
            file=source, conflicts=[c.to_json() for c in conflicts],
        )


class PatchConflict(Conflict):
    code = "patch_conflict"


def compose(patches: list[HexPatch], read_base, description: str = "") -> HexPatch:
    """One patch with the effect of applying `patches` in order to the base bytes.

    Entries later in the list may change bytes that earlier ones changed; the result maps base
    bytes straight to the final bytes, merged per tensor. Each patch must apply on top of the
    ones before it (as applying them in order would check): otherwise every conflict is listed
    and nothing is composed.
    """
    from .runs import ByteMap

    maps: dict[str, ByteMap] = {}
    meta: dict[str, tuple[str | None, tuple | None]] = {}
    conflicts: list[ConflictItem] = []
    for pi, p in enumerate(patches):
        ok = []
        for i, e in enumerate(p.entries):
            actual = read_base(e.tensor_name, e.offset_bytes, len(e.original))
            if e.tensor_name in maps:
                actual = maps[e.tensor_name].overlay(e.offset_bytes, actual)
            if actual == e.original:
                ok.append(e)
                continue
            expected_hex, actual_hex = _short_hex(e.original), _short_hex(actual)
            conflicts.append(ConflictItem(
                "mismatch",
                f"patch {pi + 1} of {len(patches)}, patches[{i}]: after the patches before it, "
                f"{e.tensor_name!r} holds {_short_hex(actual, 16)} at byte {e.offset_bytes}, where "
                f"the patch expects {_short_hex(e.original, 16)}",
                i, e.tensor_name, e.offset_bytes, expected_hex, actual_hex, patch=pi))
        for e in ok:  # (a conflicting entry is skipped, so later patches are checked on a sensible state)
            maps.setdefault(e.tensor_name, ByteMap()).write(e.offset_bytes, e.new)
            meta.setdefault(e.tensor_name, (e.dtype, e.shape_at_edit_time))
    raise_conflicts(conflicts, "compose")
    entries = []
    for name in sorted(maps):
        dtype, shape = meta[name]
        for off, new in maps[name].runs():
            orig = read_base(name, off, len(new))
            entries.extend(diff_entries(name, off, orig, new, dtype, shape))
    if not description:
        description = "composed of: " + "; ".join(p.description or "(no description)" for p in patches)
    return HexPatch(entries, description)


def diff_entries(name: str, off: int, orig: bytes, new: bytes, dtype=None, shape=None, gap: int = 16) -> list[PatchEntry]:
    """Entries for the bytes that differ between `orig` and `new` (runs closer than `gap` merged)."""
    from .runs import changed_runs

    return [
        PatchEntry(name, off + a, orig[a:b], new[a:b], dtype, shape)
        for a, b in changed_runs(orig, new, gap)
    ]


def validate_description(text: str) -> str:
    if not isinstance(text, str) or len(text) > 10_000:
        raise InvalidRequest("description must be text of at most 10,000 characters", field="description")
    return text
