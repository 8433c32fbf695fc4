"""The patch that turns model A into model B (same layout), streamed to disk.

Both models are read once, tensor by tensor in name order and chunk by chunk; changed byte runs
become patch entries written as they are found, so neither the models nor the patch are ever
held in memory whole. A's base_model_checksum is computed in the same pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import InvalidRequest
from ..store import Model, TensorReader
from . import hexpatch as hp
from .library import fsync_path
from .runs import changed_runs

CHUNK = 16 << 20
GAP = 16  # merge runs closer than this: an entry costs more than a few unchanged bytes


def check_same_layout(a: Model, b: Model) -> None:
    problems = []
    only_a = sorted(set(a.tensors) - set(b.tensors))
    only_b = sorted(set(b.tensors) - set(a.tensors))
    if only_a:
        problems.append(f"{len(only_a)} tensor(s) only in A (e.g. {only_a[0]!r})")
    if only_b:
        problems.append(f"{len(only_b)} tensor(s) only in B (e.g. {only_b[0]!r})")
    for name in sorted(set(a.tensors) & set(b.tensors)):
        ta, tb = a.tensors[name], b.tensors[name]
        if ta.dtype.name != tb.dtype.name or ta.shape != tb.shape:
            problems.append(f"{name!r} is {ta.dtype.name}{list(ta.shape)} in A but {tb.dtype.name}{list(tb.shape)} in B")
            break
    if problems:
        raise InvalidRequest(
            "the models have different layouts, so no byte patch turns one into the other: "
            + "; ".join(problems) + ". Use a transplant (copy tensors between models) instead.",
            field="model_b",
        )


def diff_models(a: Model, b: Model, out: str | os.PathLike, description: str = "", progress=None) -> dict:
    """Write the minimal patch A -> B to `out` (atomically) and return its summary."""
    check_same_layout(a, b)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = a.nbytes
    done = 0
    entries = changed = 0
    sha = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write('{\n  "format": "hexpatch",\n  "version": 1,\n')
            f.write(f'  "description": {json.dumps(description or f"diff {a.name} -> {b.name}", ensure_ascii=False)},\n')
            f.write('  "patches": [')
            first = True
            for name in sorted(a.tensors):
                ta, tb = a.tensors[name], b.tensors[name]
                sha.update(name.encode() + b"\0" + ta.dtype.name.encode() + b"\0"
                           + ",".join(map(str, ta.shape)).encode() + b"\0")
                # pread chunk by chunk, not the map: a model file that shrinks meanwhile raises
                # ModelChanged instead of killing the process with SIGBUS
                pos = 0
                for ca, cb in zip(TensorReader(ta).iter_bytes(CHUNK), TensorReader(tb).iter_bytes(CHUNK)):
                    # a run crossing a chunk edge becomes two adjacent entries: still exact
                    end = pos + len(ca)
                    sha.update(ca)
                    for s, e in changed_runs(ca, cb, GAP):
                        entry = hp.PatchEntry(name, pos + s, ca[s:e].tobytes(), cb[s:e].tobytes(),
                                              ta.dtype.name, ta.shape)
                        f.write(("\n    " if first else ",\n    ") + json.dumps(entry.to_json()))
                        first = False
                        entries += 1
                        changed += e - s
                    done += end - pos
                    pos = end
                    if progress:
                        progress(done, total)
            f.write("\n  ],\n")
            f.write(f'  "base_model_checksum": "sha256:{sha.hexdigest()}"\n}}\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": str(out), "entries": entries, "changed_bytes": changed,
            "base_model_checksum": f"sha256:{sha.hexdigest()}"}
