"""Transplants: tensors and whole modules from a source model into a target model, as a new model.

A transplant is planned first, written second. The plan is the list of the result's tensors, each
with where its bytes come from (a tensor of the source or of the target) and what happens to them
on the way (copied, converted to another dtype, resized along the vocabulary), plus the result's
config.json. Operations, applied in this order to the target's tensors:

- map FROM=TO: FROM is a tensor name, a name prefix (a module such as `model.layers.10.self_attn`)
  or `layer N` of the source (of the target when no source is given); TO the name, prefix or layer
  it replaces or adds in the target (a prefix keeps each tensor's name after it);
- rename FROM=TO and delete NAME (names or prefixes of the target);
- resize the vocabulary (embedding and lm_head rows, and `vocab_size` in the config);
- duplicate layer N / remove layer N, numbered as in the target: layer N is written again right
  after itself (or left out), later layers are renumbered, and `num_hidden_layers` follows.

A dtype change is converted with round-to-nearest-even (ml_dtypes), or refused (`dtype_policy`).
Every plan is checked by the compatibility analysis (`compat.check_model`) before anything is
written: each written tensor gets a verdict (ok, warning, will_fail) and a reason.

A plan whose every change replaces a tensor by one of the same shape and dtype (phases 1 and 2)
can also be staged as ordinary byte edits on the target (`stage_runs`). Any other plan writes a
new model (`write_transplant`): tensor by tensor, unchanged bytes copied by the kernel, converted
ones a chunk at a time, so memory does not grow with the model; atomic like an export.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Conflict, InvalidRequest, SurgeryError, TensorNotFound
from ..store import Model, TensorReader, TensorRef
from ..store.dtypes import DType, get_dtype
from ..store.layout import infer_layout
from .ops import ByteRun
from .writer import SIDE_FILES, NewTensor, Progress, check_new_output, copy_range, group_shards, write_new_model
from .writer import _open_source

CHUNK_BYTES = 4 << 20  # converted and resized tensors pass through memory this much at a time
STAGE_CHUNK = 1 << 20  # a staged transplant is recorded in runs of this size; identical ones are skipped
STAGE_MAX_BYTES = 512 << 20  # staging keeps old and new bytes in the journal: larger, write a new model
MAX_CONFIG_BYTES = 1 << 20
RECIPE_NAME = "transplant-recipe.json"
DTYPE_POLICIES = ("convert", "refuse", "keep")
# `layer N` of a model: the one integer path component after a layers keyword
_LAYER = re.compile(r"^(?P<pre>(?:.*\.)?(?:layers|layer|h|block|blocks|blk)\.)(?P<n>0|[1-9][0-9]*)(?P<post>\..+)$")
_LAYER_WORDS = re.compile(r"^\s*(?:layer|l)\s*(0|[1-9][0-9]*)\s*$", re.I)
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


class PrefixNotFound(TensorNotFound):
    code = "prefix_not_found"


class DtypeRefused(SurgeryError):
    code = "dtype_mismatch"
    http_status = 409


class DiskFull(SurgeryError):
    code = "disk_full"
    http_status = 409
    exit_code = 1


class WriteFailed(SurgeryError):
    code = "write_failed"
    http_status = 409
    exit_code = 1


class NotStageable(SurgeryError):
    code = "not_stageable"
    http_status = 409


@dataclass
class TransplantSpec:
    """What to do, as the CLI, the page and a recipe say it."""

    maps: list[tuple[str, str]] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    duplicate_layers: list[int] = field(default_factory=list)
    remove_layers: list[int] = field(default_factory=list)
    dtype_policy: str = "convert"
    resize_vocab: int | None = None
    max_shard_bytes: int | None = None

    def to_json(self) -> dict:
        return {"map": [list(p) for p in self.maps], "rename": [list(p) for p in self.renames],
                "delete": list(self.deletes), "duplicate_layers": list(self.duplicate_layers),
                "remove_layers": list(self.remove_layers), "dtype_policy": self.dtype_policy,
                "resize_vocab": self.resize_vocab, "max_shard_bytes": self.max_shard_bytes}

    @classmethod
    def from_json(cls, obj: dict, where: str = "recipe") -> "TransplantSpec":
        def pairs(key: str) -> list[tuple[str, str]]:
            raw = obj.get(key) or []
            if not isinstance(raw, list) or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in raw):
                raise InvalidRequest(f"{where}: {key!r} must be a list of [FROM, TO] name pairs", field=key)
            return [(a, b) for a, b in raw]

        def ints(key: str) -> list[int]:
            raw = obj.get(key) or []
            if not isinstance(raw, list) or not all(type(n) is int and n >= 0 for n in raw):
                raise InvalidRequest(f"{where}: {key!r} must be a list of layer numbers", field=key)
            return list(raw)

        deletes = obj.get("delete") or []
        if not isinstance(deletes, list) or not all(isinstance(s, str) for s in deletes):
            raise InvalidRequest(f"{where}: 'delete' must be a list of names", field="delete")
        policy = obj.get("dtype_policy", "convert")
        vocab = obj.get("resize_vocab")
        shard = obj.get("max_shard_bytes")
        if vocab is not None and (type(vocab) is not int or vocab < 1):
            raise InvalidRequest(f"{where}: 'resize_vocab' must be a positive integer", field="resize_vocab")
        if shard is not None and (type(shard) is not int or shard < 1):
            raise InvalidRequest(f"{where}: 'max_shard_bytes' must be a positive integer", field="max_shard_bytes")
        spec = cls(pairs("map"), pairs("rename"), list(deletes), ints("duplicate_layers"), ints("remove_layers"),
                   policy, vocab, shard)
        spec.check()
        return spec

    def check(self) -> None:
        if self.dtype_policy not in DTYPE_POLICIES:
            raise InvalidRequest(f"dtype policy {self.dtype_policy!r} is not one of {', '.join(DTYPE_POLICIES)}",
                                 field="dtype_policy")
        if not (self.maps or self.renames or self.deletes or self.duplicate_layers or self.remove_layers
                or self.resize_vocab):
            raise InvalidRequest("nothing to do: give a mapping (FROM=TO), a layer to duplicate or remove, "
                                 "a rename, a delete or a vocabulary size", field="map")


@dataclass
class Item:
    """One tensor of the result."""

    name: str
    origin: str  # "source" | "target": which model its bytes come from
    ref: TensorRef  # the tensor they come from
    dtype: DType  # written dtype
    shape: tuple[int, ...]  # written shape
    action: str  # copy | replace | add | rename | duplicate | renumber | resize
    before: TensorRef | None  # what the target held under this name, if anything

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1)

    @property
    def converted(self) -> bool:
        return self.dtype.name != self.ref.dtype.name

    @property
    def changed(self) -> bool:
        return not (self.origin == "target" and self.ref.name == self.name and not self.converted
                    and self.shape == self.ref.shape)

    @property
    def shifted_in_place(self) -> bool:
        """A layer's tensor renumbered (or copied) onto a name the target has, same shape and dtype."""
        return (self.action in ("renumber", "duplicate") and self.before is not None
                and tuple(self.before.shape) == tuple(self.shape) and self.before.dtype.name == self.dtype.name)


@dataclass
class Plan:
    target: Model
    source: Model  # the target itself when no source was given
    spec: TransplantSpec
    items: list[Item]
    deleted: list[str]
    config: dict | None  # the result's config.json (None: the target has none)
    config_changed: bool
    compat: object  # compat.CompatReport
    notes: list[str]

    @property
    def changed(self) -> list[Item]:
        return [i for i in self.items if i.changed]

    @property
    def stageable(self) -> str | None:
        """None if the plan can be staged as byte edits on the target, else why not."""
        if self.deleted:
            return "it deletes tensors"
        if self.config_changed:
            return "it changes config.json"
        for i in self.items:
            if i.changed and (i.before is None or i.before.name != i.name):
                return f"{i.name} is not in the target under that name"
            if i.changed and (i.shape != i.before.shape or i.dtype.name != i.before.dtype.name or i.converted):
                return f"{i.name} changes shape or dtype ({_fmt(i.before)} -> {i.dtype.name} {list(i.shape)})"
        if not self.changed:
            return "it changes nothing"
        return None

    def entry(self, i: Item) -> dict:
        v = self.compat.verdicts.get(i.name)
        verdict, reason = (v.verdict, v.reason) if v is not None else ("ok", "")
        if v is None and i.shifted_in_place:
            verdict, reason = "ok", (f"{i.ref.name} {'copied' if i.action == 'duplicate' else 'renumbered'} to "
                                     f"{i.name}: the same shape and dtype as the target's tensor there")
        notes = []
        if i.converted:
            notes.append(f"converted {i.ref.dtype.name} -> {i.dtype.name} (round to nearest even)")
        if i.action == "resize":
            notes.append(f"resized from {list(i.ref.shape)}")
        if notes:
            if verdict == "ok" and i.converted and i.dtype.bits < i.ref.dtype.bits:
                verdict = "warning"
            reason = "; ".join(([reason] if reason else []) + notes)
        return {
            "source": i.ref.name, "source_model": i.origin, "target": i.name,
            "source_shape": list(i.ref.shape), "target_shape": list(i.before.shape) if i.before is not None else None,
            "shape": list(i.shape), "source_dtype": i.ref.dtype.name,
            "target_dtype": i.before.dtype.name if i.before is not None else None, "dtype": i.dtype.name,
            "bytes": i.nbytes, "action": i.action, "verdict": verdict, "reason": reason,
        }

    def to_json(self) -> dict:
        entries = [self.entry(i) for i in self.changed]
        c = self.compat
        worst = "will_fail" if not c.will_load else (
            "warning" if c.verdict != "ok" or any(e["verdict"] != "ok" for e in entries) else "ok")
        return {
            "target": self.target.path, "source": self.source.path,
            "spec": self.spec.to_json(),
            "entries": entries,
            "deleted": self.deleted,
            "unchanged_tensors": len(self.items) - len(entries),
            "tensors": len(self.items),
            "bytes_to_write": sum(i.nbytes for i in self.items),
            "bytes_changed": sum(e["bytes"] for e in entries),
            "config_changes": _config_diff(_read_config(self.target)[0], self.config) if self.config_changed else {},
            "architecture": c.architecture,
            "problems": [p.to_json() for p in c.problems],
            "deleted_verdicts": {n: c.verdicts[n].to_json() for n in self.deleted if n in c.verdicts},
            "fixes": list(c.fixes),
            "will_load": bool(c.will_load),
            "verdict": worst,
            "stageable": self.stageable is None,
            "not_stageable_because": self.stageable,
            "notes": self.notes,
        }


def _fmt(ref: TensorRef) -> str:
    return f"{ref.dtype.name} {list(ref.shape)}"


def _config_diff(old: dict | None, new: dict | None) -> dict:
    old, new = old or {}, new or {}
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


# -- resolving names ------------------------------------------------------------------------------


def _layer_prefixes(names, n: int) -> list[str]:
    found = []
    for name in names:
        m = _LAYER.match(name)
        if m and int(m["n"]) == n and m["pre"] + m["n"] not in found:
            found.append(m["pre"] + m["n"])
    return found


def resolve(model: Model, what: str, role: str) -> tuple[str, list[str]]:
    """(prefix or name, matched tensor names) for a tensor name, a name prefix or `layer N`.

    A name matches itself; a prefix matches the names that continue it after a dot."""
    what = what.strip()
    if not what:
        raise InvalidRequest(f"an empty name for the {role}", field="map")
    m = _LAYER_WORDS.match(what)
    if m:
        prefixes = _layer_prefixes(model.tensors, int(m[1]))
        if not prefixes:
            raise PrefixNotFound(f"{what!r}: {model.name} (the {role}) has no layer {m[1]}", model=model.path,
                                 prefix=what)
        if len(prefixes) > 1:
            raise InvalidRequest(f"{what!r} is ambiguous in {model.name}: {', '.join(prefixes)}; give the prefix",
                                 field="map", prefix=what)
        what = prefixes[0]
    if what in model.tensors:
        return what, [what]
    p = what.rstrip(".") + "."
    names = [n for n in model.tensors if n.startswith(p)]
    if not names:
        close = difflib.get_close_matches(what, list(model.tensors), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list them with `tensor-surgery ls`"
        raise PrefixNotFound(f"{what!r} is neither a tensor nor a name prefix of {model.name} (the {role}){hint}",
                             model=model.path, prefix=what, tensor=what)
    return what.rstrip("."), names


def _target_name(src_prefix: str, src_name: str, to: str) -> str:
    if src_name == src_prefix:  # a single tensor: TO is its new name (or `layer N` + its suffix)
        return to
    return to + src_name[len(src_prefix):]


def _resolve_to(target: Model, to: str) -> str:
    to = to.strip()
    m = _LAYER_WORDS.match(to)
    if m:
        prefixes = _layer_prefixes(target.tensors, int(m[1]))
        if len(prefixes) != 1:
            raise PrefixNotFound(f"{to!r}: the target {target.name} has {'no' if not prefixes else 'several'} "
                                 f"layer {m[1]} ({', '.join(prefixes)}); give a prefix", model=target.path, prefix=to)
        return prefixes[0]
    if not to:
        raise InvalidRequest("an empty name for the target", field="map")
    return to.rstrip(".")


# -- planning -------------------------------------------------------------------------------------


def _read_config(model: Model) -> tuple[dict | None, str | None]:
    path = Path(model.path).parent / "config.json"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None, None
    if len(raw) > MAX_CONFIG_BYTES:
        return None, f"{path} is over {MAX_CONFIG_BYTES:,} bytes: not read"
    try:
        obj = json.loads(raw)
    except ValueError as e:
        return None, f"{path} is not valid JSON ({e}): not read, not updated"
    if not isinstance(obj, dict):
        return None, f"{path} is not a JSON object: not read, not updated"
    return obj, None


def _file_order(model: Model) -> list[TensorRef]:
    return [t for f in model.files for t in sorted(f.tensors.values(), key=lambda t: t.begin)]


def plan_transplant(target: Model, source: Model | None, spec: TransplantSpec) -> Plan:
    """The result's tensors and config, checked by the compatibility analysis. Nothing is written."""
    spec.check()
    source = source or target
    notes: list[str] = []
    items: dict[str, Item] = {t.name: Item(t.name, "target", t, t.dtype, t.shape, "copy", t) for t in _file_order(target)}
    config, why = _read_config(target)
    if why:
        notes.append(why)
    config = dict(config) if config is not None else None
    config_changed = False

    # map FROM=TO
    refused = []
    for frm, to in spec.maps:
        prefix, names = resolve(source, frm, "source")
        to = _resolve_to(target, to)
        for n in names:
            ref = source.tensor(n)
            out = _target_name(prefix, n, to)
            before = items.get(out)
            dtype = ref.dtype
            if before is not None and before.dtype.name != ref.dtype.name:
                if spec.dtype_policy == "refuse":
                    refused.append(f"{n} ({ref.dtype.name}) -> {out} ({before.dtype.name})")
                elif spec.dtype_policy == "convert":
                    _check_convertible(ref.dtype, before.dtype, n)
                    dtype = before.dtype
            items[out] = Item(out, "source", ref, dtype, ref.shape, "replace" if before is not None else "add",
                              before.before if before is not None else None)
    if refused:
        raise DtypeRefused(f"{len(refused)} tensor(s) would change dtype and the dtype policy is 'refuse': "
                           + "; ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
                           + ". Allow conversion (round to nearest even) or keep the source's dtype",
                           field="dtype_policy")

    # rename FROM=TO, delete NAME (the result so far)
    for frm, to in spec.renames:
        prefix, names = _resolve_in(items, frm, target)
        to = to.strip().rstrip(".")
        for n in names:
            new = to if n == prefix else to + n[len(prefix):]
            if new in items and new not in names:
                raise Conflict(f"cannot rename {n!r} to {new!r}: the target already has that tensor", tensor=new)
        moved = {n: items.pop(n) for n in names}
        for n, it in moved.items():
            new = to if n == prefix else to + n[len(prefix):]
            it.name, it.action = new, "rename" if it.action == "copy" else it.action
            items[new] = it
    deleted = []
    for what in spec.deletes:
        _, names = _resolve_in(items, what, target)
        for n in names:
            del items[n]
            deleted.append(n)

    # vocabulary size
    if spec.resize_vocab is not None:
        config_changed |= _resize_vocab(items, config, spec.resize_vocab, notes)

    # layers
    if spec.duplicate_layers or spec.remove_layers:
        items, count = _relayer(items, spec.duplicate_layers, spec.remove_layers, target)
        if config is not None:
            key = next((k for k in _LAYER_COUNT_KEYS if type(config.get(k)) is int), None)
            if key is None:
                notes.append("config.json names no layer count (num_hidden_layers): not updated")
            else:
                if config[key] != count[0]:
                    notes.append(f"config.json says {key}={config[key]} but the weights have {count[0]} layers")
                config[key] = count[1]
                config_changed = True
            if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == count[0]:
                config["layer_types"] = [config["layer_types"][i] for i in count[2]]
    else:
        items = list(items.values())

    from .compat import check_model

    tensors = {i.name: (tuple(i.shape), i.dtype.name) for i in items}
    # Layers moved by a duplication or removal are judged here when they take the place of a tensor of
    # the same shape and dtype (the layer they shift onto was built from the same config); compat
    # judges everything else. On a 92k-tensor MoE, that is a layer's tensors instead of most of the model.
    changed = [i.name for i in items if i.changed and not i.shifted_in_place]
    before = {t.name: (tuple(t.shape), t.dtype.name) for t in target.tensors.values()}
    report = check_model(config or {}, tensors, changed + deleted, before=before)
    return Plan(target, source, spec, items, deleted, config, config_changed, report, notes)


def _resolve_in(items: dict[str, Item], what: str, target: Model) -> tuple[str, list[str]]:
    what = what.strip()
    m = _LAYER_WORDS.match(what)
    if m:
        prefixes = _layer_prefixes(items, int(m[1]))
        if len(prefixes) != 1:
            raise PrefixNotFound(f"{what!r}: the target has {'no' if not prefixes else 'several'} layer {m[1]}",
                                 model=target.path, prefix=what)
        what = prefixes[0]
    if what in items:
        return what, [what]
    p = what.rstrip(".") + "."
    names = [n for n in items if n.startswith(p)]
    if not names:
        close = difflib.get_close_matches(what, list(items), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PrefixNotFound(f"{what!r} is neither a tensor nor a name prefix of the target {target.name}{hint}",
                             model=target.path, prefix=what, tensor=what)
    return what.rstrip("."), names


def _check_convertible(src: DType, dst: DType, name: str) -> None:
    for d in (src, dst):
        if d.kind != "float" or d.packed or not d.decodable:
            raise DtypeRefused(f"{name}: cannot convert {src.name} to {dst.name} (only between byte-sized float "
                               "dtypes); keep the source's dtype instead", tensor=name, field="dtype_policy")


def _resize_vocab(items: dict[str, Item], config: dict | None, n: int, notes: list[str]) -> bool:
    """Every token table (embedding, lm_head) to `n` rows, and `vocab_size` in the config: what
    the compatibility analysis offers when they disagree, or a new vocabulary on purpose."""
    names = list(items)
    layout = infer_layout(names, [items[k].shape for k in names])
    tables = [k for k in names if layout[k].type_group in ("embedding", "output_head") and len(items[k].shape) == 2
              and not re.search(r"position|token_type|segment", k)]
    if not tables:
        raise InvalidRequest("found no embedding or lm_head with one row per token to resize", field="resize_vocab")
    rows = [k for k in tables if items[k].shape[0] != n]
    for k in rows:
        it = items[k]
        if it.dtype.kind != "float" or it.dtype.packed or not it.dtype.decodable:
            raise InvalidRequest(f"{k} is {it.dtype.name}: only float tensors can be resized", tensor=k)
        if it.converted:
            raise InvalidRequest(f"{k} is both converted and resized: do one at a time", tensor=k)
        notes.append(f"{k}: {it.shape[0]} -> {n} rows" + ("; new rows are the mean of the old ones"
                                                          if n > it.ref.shape[0] else ""))
        it.shape = (n, *it.shape[1:])
        it.action = "resize"
    if config is not None and config.get("vocab_size") != n:
        config["vocab_size"] = n
        return True
    return False


def _relayer(items: dict[str, Item], dup: list[int], rem: list[int], target: Model):
    """Items in order with layers duplicated/removed and renumbered; (old count, new count, order)."""
    stacks: dict[str, set[int]] = {}
    for name in items:
        m = _LAYER.match(name)
        if m:
            stacks.setdefault(m["pre"], set()).add(int(m["n"]))
    asked = set(dup) | set(rem)
    having = [p for p, ls in stacks.items() if asked <= ls]
    if not stacks:
        raise InvalidRequest(f"{target.name} has no numbered layers to duplicate or remove", field="duplicate_layers")
    if not having:
        main = max(stacks, key=lambda p: len(stacks[p]))
        missing = sorted(asked - stacks[main])
        raise InvalidRequest(f"{target.name} has layers 0..{max(stacks[main])} under {main!r}: no layer "
                             f"{', '.join(map(str, missing))}", field="duplicate_layers")
    if len(having) > 1:
        raise InvalidRequest(f"layers {sorted(asked)} exist in several stacks of {target.name} "
                             f"({', '.join(having)}): duplicating or removing them is ambiguous",
                             field="duplicate_layers")
    pre = having[0]
    count = max(stacks[pre]) + 1
    order = []
    for i in range(count):
        if i in rem:
            continue
        order += [i] * (1 + dup.count(i))
    if not order:
        raise InvalidRequest("that would remove every layer", field="remove_layers")
    by_layer: dict[int, list[tuple[str, Item]]] = {}
    for name, it in items.items():
        m = _LAYER.match(name)
        if m and m["pre"] == pre:
            by_layer.setdefault(int(m["n"]), []).append((m["post"], it))
    out: list[Item] = []
    emitted = False
    for name, it in items.items():
        m = _LAYER.match(name)
        if not (m and m["pre"] == pre):
            out.append(it)
            continue
        if emitted:
            continue
        emitted = True
        seen: set[int] = set()
        for j, i in enumerate(order):
            first = i not in seen
            seen.add(i)
            for post, src in by_layer.get(i, []):
                new = f"{pre}{j}{post}"
                if first and new == src.name:
                    out.append(src)
                    continue
                plain = src.action in ("copy", "rename")  # else keep what was done to it (replace, resize...)
                action = ("renumber" if first else "duplicate") if plain else src.action
                out.append(Item(new, src.origin, src.ref, src.dtype, src.shape, action,
                                items[new].before if new in items else None))
    return out, (count, len(order), order)


# -- staging (phases 1 and 2) ---------------------------------------------------------------------


def stage_runs(plan: Plan, current: Callable[[str, int, int], bytes]) -> list[ByteRun]:
    """Byte runs that turn the target's staged state into the plan's tensors (same shapes and
    dtypes only), `STAGE_CHUNK` bytes each; runs already holding the new bytes are left out.
    `current(tensor, offset, length)` reads the target's staged state."""
    why = plan.stageable
    if why:
        raise NotStageable(f"this transplant cannot be staged as byte edits: {why}; write it as a new model")
    total = sum(i.nbytes for i in plan.changed)
    if total > STAGE_MAX_BYTES:
        raise NotStageable(f"this transplant changes {total:,} bytes; staging keeps up to {STAGE_MAX_BYTES:,} "
                           "(old and new bytes go into the journal): write it as a new model")
    runs = []
    for it in plan.changed:
        reader = TensorReader(it.ref)
        for off in range(0, it.nbytes, STAGE_CHUNK):
            n = min(STAGE_CHUNK, it.nbytes - off)
            new = reader.read_bytes(off, n)
            old = current(it.name, off, n)
            if new != old:
                runs.append(ByteRun(it.name, off, old, new))
    return runs


# -- writing (phase 3) ----------------------------------------------------------------------------


class _Sources:
    """Descriptors of the files tensors are copied from, opened once each and checked at the end."""

    def __init__(self) -> None:
        self.fds: dict[str, tuple[int, object]] = {}

    def fd(self, ref: TensorRef) -> int:
        f = ref.file
        if f.path not in self.fds:
            self.fds[f.path] = (_open_source(f), f)
        return self.fds[f.path][0]

    def check(self) -> None:
        for fd, f in self.fds.values():
            f.check_descriptor(fd)  # not truncated or rewritten while it was copied

    def close(self) -> None:
        for fd, _ in self.fds.values():
            os.close(fd)
        self.fds.clear()


def copy_sparse(sfd: int, dfd: int, src_off: int, dst_off: int, count: int, tick, source) -> None:
    """`copy_range`, except that holes of a sparse source stay holes (skipped, as `cp` does: the
    writer sizes each file at the end, and a hole reads as the zeros it held). A file without holes
    costs two lseeks more."""
    end = src_off + count
    pos = src_off
    while pos < end:
        try:
            data = os.lseek(sfd, pos, os.SEEK_DATA)
        except OSError as e:  # ENXIO: only a hole from here to the end of the file
            if e.errno != errno.ENXIO:
                raise
            data = end
        data = min(data, end)
        if data > pos:
            tick(data - pos)
            pos = data
            if pos >= end:
                break
        hole = min(os.lseek(sfd, pos, os.SEEK_HOLE), end)
        copy_range(sfd, dfd, pos, dst_off + (pos - src_off), hole - pos, tick, source, writeback=False)
        pos = hole


def _fill(it: Item, sources: _Sources):
    ref = it.ref

    def copy(dfd: int, off: int, tick) -> None:
        copy_sparse(sources.fd(ref), dfd, ref.file.data_start + ref.begin, off, ref.nbytes, tick, ref.file)

    def convert(dfd: int, off: int, tick) -> None:
        src, dst = ref.dtype.element, it.dtype.element
        step = CHUNK_BYTES - CHUNK_BYTES % ref.dtype.itemsize
        for chunk in TensorReader(ref).iter_bytes(step):
            # ml_dtypes casts round to nearest, ties to even (as torch's .to() does)
            data = chunk.view(src).astype(dst).tobytes()
            os.pwrite(dfd, data, off)
            off += len(data)
            tick(len(data))

    def resize(dfd: int, off: int, tick) -> None:
        row = ref.nbytes // max(ref.shape[0], 1)
        keep = min(ref.shape[0], it.shape[0])
        copy_sparse(sources.fd(ref), dfd, ref.file.data_start + ref.begin, off, keep * row, tick, ref.file)
        extra = it.shape[0] - keep
        if extra <= 0:
            return
        fill = _mean_row(ref).astype(ref.dtype.element).tobytes()
        per = max(1, CHUNK_BYTES // max(row, 1))
        pos = off + keep * row
        while extra > 0:
            k = min(per, extra)
            os.pwrite(dfd, fill * k, pos)
            pos += k * row
            extra -= k
            tick(k * row)

    if it.action == "resize":
        return resize
    return convert if it.converted else copy


def _mean_row(ref: TensorRef) -> np.ndarray:
    """The mean of a matrix's rows in float64, read a chunk of rows at a time."""
    rows = ref.shape[0]
    row_elems = int(np.prod(ref.shape[1:], dtype=np.int64)) if len(ref.shape) > 1 else 1
    row = ref.dtype.itemsize * row_elems
    total = np.zeros(row_elems, dtype=np.float64)
    per = max(1, CHUNK_BYTES // max(row, 1))
    for chunk in TensorReader(ref).iter_bytes(per * row):
        total += chunk.view(ref.dtype.element).reshape(-1, row_elems).astype(np.float64).sum(axis=0)
    return total / max(rows, 1)


def default_shard_bytes(target: Model) -> int | None:
    """Keep the target's kind of layout: one file for one file, else shards as large as its largest."""
    if len(target.files) == 1:
        return None
    return max(f.header.file_size - f.header.data_start for f in target.files)


def check_output(plan: Plan, out: str | os.PathLike, overwrite: bool = False, protected=()) -> None:
    reading = {f.path for m in (plan.target, plan.source) for f in m.files} | {plan.target.path, plan.source.path}
    check_new_output(Path(out), reading, overwrite, protected)
    if Path(out).suffix == ".safetensors":
        if plan.config_changed:
            raise InvalidRequest(f"{out}: this transplant changes config.json, which a single .safetensors file "
                                 "cannot carry: write to a folder", field="out")
        shards = len(group_shards(plan.items, _max_shard(plan)))
        if shards > 1:
            raise InvalidRequest(f"{out}: the new model takes {shards} shards at that size: write to a folder",
                                 field="out")


def _max_shard(plan: Plan) -> int | None:
    return plan.spec.max_shard_bytes if plan.spec.max_shard_bytes is not None else default_shard_bytes(plan.target)


def write_transplant(plan: Plan, out: str | os.PathLike, *, recipe: dict | None = None, overwrite: bool = False,
                     progress: Progress | None = None, protected=()) -> dict:
    """Write the plan as a new model (a folder, or one .safetensors file), atomically, with the
    target's config (updated), tokenizer and other side files, and the recipe beside the weights."""
    out = Path(out)
    check_output(plan, out, overwrite, protected)
    max_shard = _max_shard(plan)
    sources = _Sources()
    tensors = [NewTensor(i.name, i.dtype.name, i.shape, i.nbytes, _fill(i, sources)) for i in plan.items]
    side: dict[str, str | bytes] = {}
    folder = Path(plan.target.path).parent
    if out.suffix != ".safetensors":
        for entry in os.scandir(folder):
            if entry.name in SIDE_FILES and entry.is_file():
                side[entry.name] = entry.path
        if plan.config_changed and plan.config is not None:
            side["config.json"] = (json.dumps(plan.config, indent=2, ensure_ascii=False) + "\n").encode()
        if recipe is not None:
            side[RECIPE_NAME] = recipe_bytes(recipe)
    metadata = dict(plan.target.files[0].header.metadata) if plan.target.files[0].header.metadata else None
    try:
        try:
            result = write_new_model(out, tensors, max_shard_bytes=max_shard, metadata=metadata, side_files=side,
                                     source=plan.target.path, overwrite=overwrite, progress=progress)
            sources.check()
        finally:
            sources.close()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk holding {out.parent} filled up while writing the new model; nothing was "
                           "left at the output (the partial files were removed). Free some space, or choose "
                           "another output folder, and run it again", path=str(out)) from None
        raise WriteFailed(f"writing {out} failed: {e.strerror or e}; nothing was left at the output",
                          path=str(out)) from None
    if recipe is not None and out.suffix == ".safetensors":
        from .library import atomic_write

        atomic_write(out.with_name(out.stem + ".recipe.json"), recipe_bytes(recipe))
    result["recipe"] = str(out / RECIPE_NAME) if out.suffix != ".safetensors" and recipe is not None else (
        str(out.with_name(out.stem + ".recipe.json")) if recipe is not None else None)
    result["will_load"] = bool(plan.compat.will_load)
    result["changed_tensors"] = len(plan.changed)
    return result


def recipe_bytes(recipe: dict) -> bytes:
    return (json.dumps(recipe, indent=2, ensure_ascii=False) + "\n").encode()
