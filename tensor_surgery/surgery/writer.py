"""Write new model files: the source with byte runs applied, same sharding or re-sharded.

Unchanged bytes never pass through Python: whole files (same layout) or whole tensors (new
layout) are copied by the kernel with `copy_file_range`, then only the patched runs are written
over them. With the layout unchanged, headers and the shard index are byte-identical to the
source. Everything is written under a temporary name beside the output, fsynced, and renamed into
place at the end, so the final name holds either nothing (or the old output) or the complete
new model, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidRequest, SurgeryError
from ..store import Model
from .library import fsync_path

Runs = dict[str, list[tuple[int, bytes]]]
Progress = Callable[[int, int], None]
COPY_CHUNK = 16 << 20  # bytes per kernel copy; writeback of each chunk starts right after it
FALLBACK_CHUNK = 8 << 20  # bytes per read/write where copy_file_range is refused (held in memory)
# files a Hugging Face model folder needs beside its weights (copied when exporting a folder)
SIDE_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "data_config.json",
})


class OutputExists(SurgeryError):
    code = "output_exists"
    http_status = 409
    exit_code = 1  # like every other 409: the operation cannot go ahead as things are


def _sync_file_range():
    """Linux's sync_file_range, or None (elsewhere the final fsync does all the writing)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Start writing a just-copied range to disk without waiting for it, so that the fsync at the
    end overlaps the copy instead of following it (an export costs ~cp, not cp + sync)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, count, _SYNC_FILE_RANGE_WRITE)  # a hint: errors do not matter


def copy_range(src: int, dst: int, src_off: int, dst_off: int, count: int, tick: Callable[[int], None] | None = None) -> None:
    """Copy `count` bytes between file descriptors inside the kernel (falls back to pread/pwrite)."""
    while count > 0:
        n = min(count, COPY_CHUNK)
        try:
            done = os.copy_file_range(src, dst, n, src_off, dst_off)
        except OSError:
            done = 0
        if done <= 0:  # not supported here (or across file systems): plain reads and writes
            data = os.pread(src, min(n, FALLBACK_CHUNK), src_off)
            if not data:
                raise SurgeryError(f"source ended early while copying (at byte {src_off})")
            done = os.pwrite(dst, data, dst_off)
            del data  # before the next read: one chunk in memory, not two
        start_writeback(dst, dst_off, done)
        src_off += done
        dst_off += done
        count -= done
        if tick:
            tick(done)


def _write_runs(fd: int, base: int, runs: list[tuple[int, bytes]]) -> int:
    """pwrite each run at base+offset, in order (later runs win where they overlap)."""
    n = 0
    for off, data in runs:
        os.pwrite(fd, data, base + off)
        n += len(data)
    return n


def safetensors_header(entries: list[tuple[str, str, tuple[int, ...], int, int]], metadata: dict | None) -> bytes:
    """8-byte length + JSON header padded with spaces to a multiple of 8, as safetensors writes it."""
    obj: dict = {}
    if metadata:
        obj["__metadata__"] = metadata
    for name, dtype, shape, begin, end in entries:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


def plan_shards(model: Model, max_shard_bytes: int) -> list[list[str]]:
    """Tensors in file order, greedily grouped into shards of at most `max_shard_bytes`."""
    if max_shard_bytes < 1:
        raise InvalidRequest("max_shard_size must be positive", field="max_shard_size")
    shards: list[list[str]] = [[]]
    size = 0
    for f in model.files:
        for name, info in f.tensors.items():
            if shards[-1] and size + info.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += info.nbytes
    return shards


def plan_export(
    model: Model, out: str | os.PathLike, runs: Runs, *, max_shard_bytes: int | None = None, overwrite: bool = False
) -> list[list[str]] | None:
    """Check an export before any work (the API calls it before starting the job); returns the
    new layout (None: the source's own sharding)."""
    out = Path(out)
    sources = {os.path.realpath(f.path) for f in model.files} | {os.path.realpath(model.path)}
    if os.path.realpath(out) in sources or any(s.startswith(os.path.realpath(out) + os.sep) for s in sources):
        raise InvalidRequest(
            f"{out} is the model being read; export to a new path (or use patch apply --in-place)", field="out"
        )
    for name, rs in runs.items():
        ref = model.tensor(name)
        for off, data in rs:
            if off < 0 or off + len(data) > ref.nbytes:
                raise InvalidRequest(f"run at byte {off} of {name!r} is outside the tensor", tensor=name)
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} already exists; choose another output or allow overwriting", path=str(out))
    single_file = out.suffix == ".safetensors"
    if max_shard_bytes is None:
        if single_file and len(model.files) != 1:
            raise InvalidRequest(
                f"{model.name} has {len(model.files)} shards; export it to a folder, or set a max shard size "
                "large enough for one file", field="out")
        return None
    layout = plan_shards(model, max_shard_bytes)
    if single_file and len(layout) != 1:
        raise InvalidRequest(f"the model needs {len(layout)} shards at that size; export to a folder", field="out")
    return layout


def export_model(
    model: Model,
    out: str | os.PathLike,
    runs: Runs,
    *,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    out = Path(out)
    started = time.perf_counter()
    layout = plan_export(model, out, runs, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    single_file = out.suffix == ".safetensors"

    # what the copy ticks off: whole files (headers too) for the same layout, else tensor bytes
    total = sum(f.header.file_size for f in model.files) if layout is None else model.nbytes
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        if single_file:
            _write_same(model, tmp, runs, tick, single=True) if layout is None else \
                _write_resharded(model, tmp, layout, runs, tick, single=True)
        else:
            tmp.mkdir()
            _write_same(model, tmp, runs, tick) if layout is None else \
                _write_resharded(model, tmp, layout, runs, tick)
            _copy_side_files(model, tmp)
            fsync_path(tmp)
        _replace(tmp, out, overwrite)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
    files = [out] if single_file else sorted(p for p in out.iterdir() if p.is_file())
    return {
        "path": str(out),
        "files": [p.name for p in files],
        "layout": "same" if layout is None else f"resharded into {len(layout)} file(s)",
        "bytes": total,
        "patched_tensors": len([n for n, r in runs.items() if r]),
        "patched_bytes": sum(len(d) for r in runs.values() for _, d in r),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _write_same(model: Model, target: Path, runs: Runs, tick, single: bool = False) -> list[Path]:
    """Each source file copied whole, then patched; the index (if any) copied byte for byte."""
    written = []
    for f in model.files:
        dst = target if single else target / os.path.basename(f.path)
        size = f.header.file_size
        sfd = os.open(f.path, os.O_RDONLY)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            f.check_unchanged()
            copy_range(sfd, dfd, 0, 0, size, tick)
            for name, info in f.tensors.items():
                if runs.get(name):
                    _write_runs(dfd, f.data_start + info.begin, runs[name])
            os.fsync(dfd)
        finally:
            os.close(sfd)
            os.close(dfd)
        written.append(dst)
    if model.kind == "sharded" and not single:  # (a one-shard model exported to one file: no index)
        dst = target / os.path.basename(model.path)
        shutil.copyfile(model.path, dst)
        fsync_path(dst)
        written.append(dst)
    return written


def _write_resharded(model: Model, target: Path, layout: list[list[str]], runs: Runs, tick, single: bool = False) -> list[Path]:
    n = len(layout)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    metadata = dict(model.files[0].header.metadata) if model.files[0].header.metadata else None
    weight_map = {}
    written = []
    fds: dict[str, int] = {}
    try:
        for shard_names, fname in zip(layout, names):
            entries, pos = [], 0
            for t in shard_names:
                ref = model.tensor(t)
                entries.append((t, ref.dtype.name, ref.shape, pos, pos + ref.nbytes))
                pos += ref.nbytes
                weight_map[t] = fname
            header = safetensors_header(entries, metadata)
            dst = target if single else target / fname
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(dfd, header, 0)
                for (t, _, _, begin, _end) in entries:
                    ref = model.tensor(t)
                    f = ref.file
                    if f.path not in fds:
                        f.check_unchanged()
                        fds[f.path] = os.open(f.path, os.O_RDONLY)
                    copy_range(fds[f.path], dfd, f.data_start + ref.info.begin, len(header) + begin, ref.nbytes, tick)
                    if runs.get(t):
                        _write_runs(dfd, len(header) + begin, runs[t])
                os.fsync(dfd)
            finally:
                os.close(dfd)
            written.append(dst)
    finally:
        for fd in fds.values():
            os.close(fd)
    if n > 1:
        index = {"metadata": {"total_size": model.nbytes}, "weight_map": dict(sorted(weight_map.items()))}
        dst = target / "model.safetensors.index.json"
        dst.write_text(json.dumps(index, indent=2) + "\n")
        fsync_path(dst)
        written.append(dst)
    return written


def _copy_side_files(model: Model, target: Path) -> None:
    folder = Path(model.path).parent
    for entry in os.scandir(folder):
        if entry.name in SIDE_FILES and entry.is_file():
            shutil.copyfile(entry.path, target / entry.name)
            fsync_path(target / entry.name)



def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished output into place. A file replaces an old file in one atomic rename; a
    folder cannot be renamed over another, so an old folder is set aside first, then removed."""
    old = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExists(f"{out} already exists", path=str(out))
        if tmp.is_dir() or out.is_dir():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(out, old)
    os.replace(tmp, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(value: str | int) -> int:
    """Bytes from 123, '500MB', '2GB' or '1.5GiB' (decimal and binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        import re

        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]I?B|B)?\s*", str(value).upper())
        if not m:
            raise InvalidRequest(f"size {value!r} is not like 500MB, 2GB or 1.5GiB", field="max_shard_size")
        n = int(float(m[1]) * _UNITS[m[2] or ""])
    if n < 1:
        raise InvalidRequest("size must be positive", field="max_shard_size")
    return n
