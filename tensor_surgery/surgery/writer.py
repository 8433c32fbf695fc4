"""Write new model files: the source with byte runs applied, same sharding or re-sharded.

Unchanged bytes never pass through Python: whole files (same layout) or whole tensors (new
layout) are copied by the kernel with `copy_file_range`, then only the patched runs are written
over them. With the layout unchanged, headers and the shard index are byte-identical to the
source. Everything is written under a temporary name beside the output, fsynced, and renamed into
place at the end, so the final name holds either nothing (or the old output) or the complete
new model, never a torn one.

Every export carries a marker (`.tensor-surgery-export.json` inside a folder, a hidden sidecar
beside a single file) listing what it wrote. Overwriting replaces only such a marked previous
export, unchanged since: never a folder or file the user owns, a root the caller protects (DATA_DIR,
PATCH_DIR, the allowed roots) or anything holding one. The markers also let the leftovers of
killed exports be recognised and removed (`leftovers.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InvalidRequest, ModelChanged, SurgeryError
from ..store import Model, SafetensorsFile
from .leftovers import (
    MARKER_NAME,
    Writing,
    clean_export_leftovers,
    file_identity,
    not_a_previous_export,
    process_token,
    sidecar_path,
    write_marker,
)
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
    exit_code = 2  # bad input (choose another OUT or --overwrite), though HTTP says 409


class NotAnExport(OutputExists):
    """Overwriting was asked for, but the output is not a previous export: it stays untouched."""

    code = "not_an_export"


# (what it is, path) pairs: never an export's output, never inside one (DATA_DIR, PATCH_DIR, roots)
Protected = Iterable[tuple[str, str | os.PathLike]]


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


def copy_range(src: int, dst: int, src_off: int, dst_off: int, count: int, tick: Callable[[int], None] | None = None,
               source: SafetensorsFile | None = None, writeback: bool = True) -> None:
    """Copy `count` bytes between file descriptors inside the kernel (falls back to pread/pwrite).

    A source that ends early shrank since it was validated: `source` (the file `src` reads) turns
    that into its `ModelChanged`, the error every other read of a changed model gives.
    `writeback=False` leaves starting the writeback to the caller (who copies many small ranges
    side by side, and would otherwise send the disk one small write per range)."""
    while count > 0:
        n = min(count, COPY_CHUNK)
        try:
            done = os.copy_file_range(src, dst, n, src_off, dst_off)
        except OSError:
            done = 0
        if done <= 0:  # not supported here (or across file systems): plain reads and writes
            data = os.pread(src, min(n, FALLBACK_CHUNK), src_off)
            if not data:
                if source is not None:
                    source.check_descriptor(src)  # raises ModelChanged: it is shorter than validated
                raise ModelChanged(f"{source.path if source else 'the source'} ended at byte {src_off:,}, before the "
                                   "bytes to copy: it changed on disk after it was opened; reopen the model and "
                                   "export again", file=source.path if source else None)
            done = os.pwrite(dst, data, dst_off)
            del data  # before the next read: one chunk in memory, not two
        if writeback:
            start_writeback(dst, dst_off, done)
        src_off += done
        dst_off += done
        count -= done
        if tick:
            tick(done)


def _open_source(f: SafetensorsFile) -> int:
    """A descriptor of a model file to copy from, refused (`ModelChanged`) unless it is the file
    that was validated: the path may name another one by now."""
    try:
        fd = os.open(f.path, os.O_RDONLY)
    except OSError:
        f.check_unchanged()  # gone or unreadable: raises ModelChanged
        raise
    try:
        f.check_descriptor(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    model: Model, out: str | os.PathLike, runs: Runs, *, max_shard_bytes: int | None = None, overwrite: bool = False,
    protected: Protected = (),
) -> list[list[str]] | None:
    """Check an export before any work (the API calls it before starting the job); returns the
    new layout (None: the source's own sharding)."""
    out = Path(out)
    real_out = os.path.realpath(out)
    sources = {os.path.realpath(f.path) for f in model.files} | {os.path.realpath(model.path)}
    if real_out in sources or any(s.startswith(real_out + os.sep) for s in sources):
        raise InvalidRequest(
            f"{out} is the model being read; export to a new path (or use patch apply --in-place)", field="out"
        )
    for what, path in protected:
        real = os.path.realpath(path)
        if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
            raise InvalidRequest(
                f"{out} {'is' if real == real_out else 'holds'} {what} ({path}); an export never replaces it: "
                f"export into a new folder inside it instead (e.g. {Path(path) / 'exports' / 'my-model'})",
                field="out", path=str(out),
            )
    for name, rs in runs.items():
        ref = model.tensor(name)
        for off, data in rs:
            if off < 0 or off + len(data) > ref.nbytes:
                raise InvalidRequest(f"run at byte {off} of {name!r} is outside the tensor", tensor=name)
    _check_replaceable(out, overwrite)
    single_file = _single_file(model, out)
    if model.format == "gguf" and max_shard_bytes is not None:
        raise InvalidRequest(f"{model.name} is a GGUF file: it is exported as one file (a .gguf, or a folder), "
                             "not re-sharded", field="max_shard_bytes")
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


def _single_file(model: Model, out: Path) -> bool:
    """Whether `out` names one model file (else a folder): a .safetensors, or a .gguf for a GGUF
    model. A file name of the other format is refused: its bytes would not be what its name says."""
    own, other = (".gguf", ".safetensors") if model.format == "gguf" else (".safetensors", ".gguf")
    if out.suffix == other:
        raise InvalidRequest(f"{out}: {model.name} is a {model.format} model; export it to a {own} file or a "
                             "folder (this tool does not convert between formats)", field="out")
    return out.suffix == own


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """An existing output may only be replaced when asked to, and only if it is a previous export."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise OutputExists(f"{out} already exists; choose another output or allow overwriting", path=str(out))
    why = not_a_previous_export(out)
    if why is not None:
        raise NotAnExport(
            f"{out} {why}; overwriting only ever replaces a previous export, so it was left alone. "
            "Choose another output (or remove it yourself)", path=str(out),
        )


def export_model(
    model: Model,
    out: str | os.PathLike,
    runs: Runs,
    *,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    protected: Protected = (),
) -> dict:
    out = Path(out)
    started = time.perf_counter()
    layout = plan_export(model, out, runs, max_shard_bytes=max_shard_bytes, overwrite=overwrite, protected=protected)
    single_file = _single_file(model, out)

    # what the copy ticks off: whole files (headers too) for the same layout, else tensor bytes
    total = sum(f.header.file_size for f in model.files) if layout is None else model.nbytes
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_export_leftovers(out.parent)  # what killed exports left beside this one
    # Everything is written inside one hidden folder, marked before the first byte: a kill at any
    # moment leaves something that cleaning recognises by its name and its marker.
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    marker = {"writer": process_token(), "source": model.path, "created": time.time()}
    with Writing(tmp):
        try:
            tmp.mkdir()
            write_marker(tmp / MARKER_NAME, {**marker, "state": "partial",
                                             "files": [out.name] if single_file else _planned_files(model, layout)})
            if single_file:
                target = tmp / out.name
                _write_same(model, target, runs, tick, single=True) if layout is None else \
                    _write_resharded(model, target, layout, runs, tick, single=True)
                _replace_file(target, out, overwrite, marker)
                shutil.rmtree(tmp)  # only its marker is left in it
            else:
                _write_same(model, tmp, runs, tick) if layout is None else \
                    _write_resharded(model, tmp, layout, runs, tick)
                _copy_side_files(model, tmp)
                write_marker(tmp / MARKER_NAME, {**marker, "state": "complete", "files": {
                    p.name: file_identity(p) for p in sorted(tmp.iterdir()) if p.name != MARKER_NAME}})
                fsync_path(tmp)
                _replace_folder(tmp, out, overwrite)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    files = [out] if single_file else sorted(p for p in out.iterdir() if p.is_file() and p.name != MARKER_NAME)
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
        sfd = _open_source(f)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            copy_range(sfd, dfd, 0, 0, size, tick, f)
            f.check_descriptor(sfd)  # not truncated or rewritten while it was copied
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


def _shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _planned_files(model: Model, layout: list[list[str]] | None) -> list[str]:
    """The names a folder export will hold (its partial marker lists them before they exist)."""
    if layout is None:
        names = [os.path.basename(f.path) for f in model.files]
        if model.kind == "sharded":
            names.append(os.path.basename(model.path))
    else:
        names = _shard_names(len(layout)) + (["model.safetensors.index.json"] if len(layout) > 1 else [])
    folder = Path(model.path).parent
    return names + sorted(e.name for e in os.scandir(folder) if e.name in SIDE_FILES and e.is_file())


def _write_resharded(model: Model, target: Path, layout: list[list[str]], runs: Runs, tick, single: bool = False) -> list[Path]:
    n = len(layout)
    names = _shard_names(n)
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
                        fds[f.path] = _open_source(f)
                    copy_range(fds[f.path], dfd, f.data_start + ref.info.begin, len(header) + begin, ref.nbytes, tick, f)
                    if runs.get(t):
                        _write_runs(dfd, len(header) + begin, runs[t])
                os.fsync(dfd)
            finally:
                os.close(dfd)
            written.append(dst)
        for f in model.files:  # none truncated or rewritten while it was copied
            if f.path in fds:
                f.check_descriptor(fds[f.path])
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



def _replace_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder into place. A folder cannot be renamed over another, so a previous
    export is set aside first (`.<out>.old-<tag>`: cleaning puts it back if a kill lands between
    the two renames), then removed."""
    old = None
    _check_replaceable(out, overwrite)  # again: the output may have appeared while this export ran
    with Writing(out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}") as aside:
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise NotAnExport(f"{out} is a file; a folder export cannot replace it", path=str(out))
            old = Path(aside.path)
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_path(out.parent)
        if old is not None:
            shutil.rmtree(old)


def _replace_file(target: Path, out: Path, overwrite: bool, marker: dict) -> None:
    """Move the finished file into place in one atomic rename. Its sidecar marker accepts both the
    old and the new file while the rename happens, so a kill leaves either one marked."""
    _check_replaceable(out, overwrite)
    identities = [file_identity(target)]
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise NotAnExport(f"{out} is a folder; a single-file export cannot replace it", path=str(out))
        identities.append(file_identity(out))
    sidecar = sidecar_path(out)
    with Writing(sidecar):
        write_marker(sidecar, {**marker, "kind": "file", "file": out.name, "identities": identities})
        os.replace(target, out)
        fsync_path(out.parent)
        if len(identities) > 1:
            write_marker(sidecar, {**marker, "kind": "file", "file": out.name, "identities": identities[:1]})


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


# -- new models from a list of tensors (transplants) ---------------------------------------------

Fill = Callable[[int, int, Callable[[int], None]], None]  # (descriptor, file offset, tick): write the bytes


class NewTensor:
    """One tensor of a model being built: its header entry and how its bytes get written."""

    __slots__ = ("name", "dtype", "shape", "nbytes", "fill")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int, fill: Fill) -> None:
        self.name, self.dtype, self.shape, self.nbytes, self.fill = name, dtype, tuple(shape), nbytes, fill


def group_shards(tensors: list[NewTensor], max_shard_bytes: int | None) -> list[list[NewTensor]]:
    """Tensors in order, greedily grouped into shards of at most `max_shard_bytes` (None: one)."""
    if max_shard_bytes is None:
        return [list(tensors)]
    shards: list[list[NewTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def check_new_output(out: Path, reading: Iterable[str], overwrite: bool, protected: Protected = ()) -> None:
    """Refuse an output that is (or holds, or lies inside the folder of) a model being read, or
    that is a protected folder; then the usual rule for an output that exists."""
    real_out = os.path.realpath(out)
    for path in reading:
        real = os.path.realpath(path)
        folder = os.path.dirname(real)
        if real_out == real or real.startswith(real_out + os.sep):
            raise InvalidRequest(f"{out} is (or holds) {path}, a model being read: a transplant always writes a "
                                 "new model; choose a new output path", field="out", path=str(out))
        if real_out == folder or real_out.startswith(folder + os.sep):
            raise InvalidRequest(f"{out} is inside {folder}, the folder of {os.path.basename(path)} which is "
                                 "being read: write the new model somewhere else (e.g. a sibling folder)",
                                 field="out", path=str(out))
    for what, path in protected:
        real = os.path.realpath(path)
        if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
            raise InvalidRequest(
                f"{out} {'is' if real == real_out else 'holds'} {what} ({path}); a new model never replaces it: "
                f"write into a new folder inside it instead (e.g. {Path(path) / 'exports' / 'my-model'})",
                field="out", path=str(out))
    _check_replaceable(out, overwrite)


def write_new_model(
    out: str | os.PathLike,
    tensors: list[NewTensor],
    *,
    max_shard_bytes: int | None = None,
    metadata: dict | None = None,
    side_files: dict[str, str | os.PathLike | bytes] | None = None,
    source: str = "",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Write a model made of `tensors` (header, offsets and index computed here), each tensor's
    bytes written by its `fill`, one at a time. Atomic like an export: everything goes into a
    hidden marked `.<out>.partial-<tag>` folder that is renamed into place at the end. `side_files`
    (a folder output only) are copied from a path or written from bytes. The caller checks the
    output first (`check_new_output`)."""
    out = Path(out)
    started = time.perf_counter()
    single_file = out.suffix == ".safetensors"
    layout = group_shards(tensors, max_shard_bytes)
    if single_file and len(layout) != 1:
        raise InvalidRequest(f"the model needs {len(layout)} shards at that size; write to a folder", field="out")
    names = _shard_names(len(layout))
    files = [out.name] if single_file else names + (["model.safetensors.index.json"] if len(layout) > 1 else []) \
        + sorted(side_files or ())
    total = sum(t.nbytes for t in tensors)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_export_leftovers(out.parent)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    marker = {"writer": process_token(), "source": source, "created": time.time()}
    with Writing(tmp):
        try:
            tmp.mkdir()
            write_marker(tmp / MARKER_NAME, {**marker, "state": "partial", "files": files})
            weight_map = {}
            for shard, fname in zip(layout, names):
                entries, pos = [], 0
                for t in shard:
                    entries.append((t.name, t.dtype, t.shape, pos, pos + t.nbytes))
                    pos += t.nbytes
                    weight_map[t.name] = fname
                header = safetensors_header(entries, metadata)
                dst = tmp / (out.name if single_file else fname)
                dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.pwrite(dfd, header, 0)
                    flushed = 0  # writeback started up to here: in COPY_CHUNK steps, not per tensor
                    for t, (_, _, _, begin, end) in zip(shard, entries):
                        t.fill(dfd, len(header) + begin, tick)
                        if len(header) + end - flushed >= COPY_CHUNK:
                            upto = (len(header) + end) & ~0xFFFFF  # whole MiBs: no page is written twice
                            start_writeback(dfd, flushed, upto - flushed)
                            flushed = upto
                    size = os.fstat(dfd).st_size
                    if size > len(header) + pos:
                        raise SurgeryError(f"{dst.name}: wrote {size:,} bytes, expected {len(header) + pos:,}")
                    if size < len(header) + pos:  # a fill left the source's trailing holes as holes
                        os.ftruncate(dfd, len(header) + pos)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            if single_file:
                _replace_file(tmp / out.name, out, overwrite, marker)
                shutil.rmtree(tmp)
            else:
                if len(layout) > 1:
                    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
                    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
                    fsync_path(tmp / "model.safetensors.index.json")
                for name, content in sorted((side_files or {}).items()):
                    if isinstance(content, bytes):
                        (tmp / name).write_bytes(content)
                    else:
                        shutil.copyfile(content, tmp / name)
                    fsync_path(tmp / name)
                write_marker(tmp / MARKER_NAME, {**marker, "state": "complete", "files": {
                    p.name: file_identity(p) for p in sorted(tmp.iterdir()) if p.name != MARKER_NAME}})
                fsync_path(tmp)
                _replace_folder(tmp, out, overwrite)
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    written = [out] if single_file else sorted(p for p in out.iterdir() if p.is_file() and p.name != MARKER_NAME)
    return {"path": str(out), "files": [p.name for p in written], "shards": len(layout), "tensors": len(tensors),
            "bytes": total, "seconds": round(time.perf_counter() - started, 3)}
