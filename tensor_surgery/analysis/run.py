"""One analysis run: models in, a table file and `run_meta.json` out, resumable.

While it runs, every finished tensor is appended to a hidden partial-results file beside the
output (`.<name>.partial.jsonl`; its first line names the options and the models' files). A run
killed or interrupted and started again with the same `--out` and options reads it and computes
only the tensors missing from it; a run with other options or changed model files starts over.
On success the table is written atomically, then `run_meta.json`, then the partial file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import InvalidRequest, SurgeryError
from ..surgery.library import atomic_write
from . import table as tb
from .writers import format_of, write_table

META_NAME = "run_meta.json"


class WriteFailed(SurgeryError):
    code = "write_failed"
    http_status = 409  # the file system refused; not a bug of ours (5xx would say so)
    exit_code = 1

PARTIAL_VERSION = 1


def partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial.jsonl")


def _files_identity(model_path: str) -> list[list]:
    """Size and mtime of the model's files: a partial result of other bytes must not be reused."""
    from ..store import open_model

    with open_model(model_path) as m:
        paths = [m.path] + [f.path for f in m.files if f.path != m.path]
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.basename(p), st.st_size, st.st_mtime_ns])
    return out


def _partial_header(models: list[tb.ModelInfo], options: tb.Options, pattern: str | None) -> dict:
    return {
        "partial_version": PARTIAL_VERSION,
        "options": options.to_dict(),
        "match": pattern,
        "models": [{"path": m.path, "files": _files_identity(m.path)} for m in models],
    }


def load_partial(path: Path, header: dict) -> dict[tuple[str, str], dict]:
    """Results of an interrupted run with the same header; {} when there is none or it differs.
    A torn last line (the kill came mid-write) is ignored."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return {}
    if not lines:
        return {}
    try:
        if json.loads(lines[0]) != header:
            return {}
    except ValueError:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
            done[(rec["model_path"], rec["result"]["param_name"])] = rec["result"]
        except (ValueError, KeyError, TypeError):
            continue
    return done


class _PartialLog:
    """Appends one JSON line per finished tensor, flushed at once (a kill loses at most one)."""

    def __init__(self, path: Path, header: dict, keep: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "ab" if keep else "wb"
        self.f = open(path, mode)  # noqa: SIM115 (closed by close())
        if not keep:
            self.f.write(json.dumps(header).encode() + b"\n")
            self.f.flush()

    def add(self, model_path: str, result: dict) -> None:
        self.f.write(json.dumps({"model_path": model_path, "result": result}, allow_nan=False).encode() + b"\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def code_version() -> str:
    """The git commit of the code that ran (with `-dirty` when it has local changes), else the
    package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tensor_surgery"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"tensor-surgery {__version__}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_meta(models: list[tb.ModelInfo], options: tb.Options, *, out: Path, fmt: str, rows: int,
             skipped: list[dict], command: list[str], ray_address: str | None, started: float,
             resumed: int, pattern: str | None) -> dict:
    """Provenance of a table: what ran, on what, with which versions (the notes' run_meta.json)."""
    ids = [m.model_id for m in models]
    revs = [m.revision for m in models]
    return {
        "model_id": ids[0] if len(ids) == 1 else ids,
        "revision": revs[0] if len(revs) == 1 else revs,
        "models": [{"model_path": m.path, "model_id": m.model_id, "revision": m.revision,
                    "tensors": len(m.order)} for m in models],
        "code_version": code_version(),
        "package_version": __version__,
        "python_version": platform.python_version(),
        "numpy_version": _version("numpy"),
        "torch_version": _version("torch"),
        "transformers_version": _version("transformers"),
        "pyarrow_version": _version("pyarrow"),
        "ray_version": _version("ray") if ray_address else None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": command,
        "seed": options.seed,
        "options": options.to_dict() | {"match": pattern},
        "framework": "safetensors",
        "device": "cpu",
        "precision": "statistics and ranks accumulated in float64",
        "ray_address": ray_address,
        "output": out.name,
        "format": fmt,
        "rows": rows,
        "skipped": skipped,
        "resumed_tensors": resumed,
        "elapsed_s": round(time.time() - started, 3),
        "host": platform.node(),
    }


def compile_match(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidRequest(f"--match {pattern!r} is not a valid regular expression: {e}", field="match") from None


def analyze_to_file(
    model_paths: list[str],
    out: str | os.PathLike,
    options: tb.Options,
    *,
    pattern: str | None = None,
    ray_address: str | None = None,
    command: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Analyse the models into `out` (+ run_meta.json beside it); returns a summary."""
    started = time.time()
    out = Path(out)
    fmt = format_of(out)
    options = options.check()
    if not model_paths:
        raise InvalidRequest("give at least one model", field="models")
    if out.exists() and not overwrite:
        raise InvalidRequest(f"{out} exists: choose another --out, or pass --overwrite", field="out")
    if out.is_dir():
        raise InvalidRequest(f"{out} is a folder: --out names a .csv, .jsonl or .parquet file", field="out")
    _check_writable(out.parent)
    rx = compile_match(pattern)
    models = [tb.describe_model(p, rx) for p in model_paths]
    paths = [m.path for m in models]
    if len(set(paths)) != len(paths):
        raise InvalidRequest("the same model is given twice", field="models")
    if rx is not None and not any(m.order for m in models):
        raise InvalidRequest(f"--match {pattern!r} matches no tensor", field="match")
    header = _partial_header(models, options, pattern)
    ppath = partial_path(out)
    done = load_partial(ppath, header)
    resumed = len(done)
    # Connect to the cluster before writing anything: a dead address leaves no partial file.
    log = None
    with contextlib.ExitStack() as stack:
        def record(model_path: str, result: dict) -> None:
            nonlocal log
            if log is None:
                log = _PartialLog(ppath, header, keep=bool(done))
                stack.callback(log.close)
            log.add(model_path, result)

        rows, skipped = tb.build_table(models, options, ray_address=ray_address, done=done,
                                       on_result=record, progress=progress)
    meta = run_meta(models, options, out=out, fmt=fmt, rows=len(rows), skipped=skipped,
                    command=command if command is not None else list(sys.argv), ray_address=ray_address,
                    started=started, resumed=resumed, pattern=pattern)
    try:
        nbytes = write_table(rows, out, fmt)
        atomic_write(out.parent / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as e:  # a full disk, a folder made read-only meanwhile: the results stay in the partial file
        raise WriteFailed(f"could not write {out}: {e.strerror or e}; run the same command again to retry "
                          "(the analysed tensors are kept)", path=str(out)) from None
    ppath.unlink(missing_ok=True)
    return {"out": str(out), "format": fmt, "bytes": nbytes, "rows": len(rows), "skipped": skipped,
            "resumed_tensors": resumed, "run_meta": str(out.parent / META_NAME), "table": rows}


def _check_writable(folder: Path) -> None:
    if not folder.exists():
        raise InvalidRequest(f"{folder} does not exist: create the output's folder first", field="out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidRequest(f"{folder} is not writable: choose another --out", field="out")
