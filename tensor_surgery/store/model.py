"""Open models: one safetensors file, a sharded `*.index.json`, or a folder holding either.

Tensors are memory-mapped. Opening reads and validates headers only; the data section is mapped
lazily on first access, and a read touches only the pages it needs. Each file remembers the
identity it had when validated (size, mtime, inode): a read from a file changed on disk since then
raises `ModelChanged` instead of trusting stale offsets (a truncated mapping would otherwise
crash the process with SIGBUS).

That check comes before a read, so a file truncated *during* a read would still fault. Short
reads (a slice for the viewer) copy from the map in microseconds; long ones (statistics,
overviews, rank, checksums) are copied with `pread` (`SafetensorsFile.copy_range`), which on a
shrunk file returns short instead of faulting: that, too, becomes `ModelChanged`.
"""

from __future__ import annotations

import gc
import mmap
import os
import re
import stat
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InvalidModelFile, ModelChanged, ModelNotFound, TensorNotFound
from .header import Header, TensorInfo, read_header, set_file

MAX_INDEX_SIZE = 100_000_000
PATH_CHECK_INTERVAL = 0.5  # seconds between checks that the path still names the mapped file
# Reads at least this long are copied with pread, not from the map: copying 256 KiB from the page
# cache takes ~20 us, a window a truncation cannot realistically hit; a whole-tensor read takes
# milliseconds to seconds, and one fault in it kills the server.
LONG_READ_BYTES = 256 << 10
_PREAD_MAX = 0x7FFFF000  # Linux moves at most this many bytes in one read(2)
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-\d{5}-of-(?P<total>\d{5})\.safetensors$")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of a regular file and its stat; refuse FIFOs, devices and sockets.

    O_NONBLOCK keeps open() itself from blocking forever on a FIFO planted where a model or
    shard is expected; it has no effect on reads of regular files.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelNotFound(f"{path}: no such file", file=path) from None
    except IsADirectoryError:
        raise InvalidModelFile(f"{path}: is a folder, not a file", file=path) from None
    except PermissionError:
        raise ModelNotFound(f"{path}: permission denied", file=path) from None
    except OSError as e:
        raise InvalidModelFile(f"{path}: cannot be opened: {e.strerror}", file=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModelFile(
                f"{path}: is not a regular file (a pipe, device or socket)", file=path
            )
        return fd, st
    except BaseException:
        os.close(fd)
        raise


class SafetensorsFile:
    """One validated safetensors file and its (lazy) read-only memory map."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        fd, st = _open_regular(self.path)
        try:
            self.identity = _identity(st)
            self.header: Header = self._read_header(fd, st.st_size)
        finally:
            os.close(fd)
        for info in self.header.tensors.values():
            set_file(info, self)
        self._mm: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None  # the whole map as uint8; tensors are slices of it
        self._views: dict[str, np.ndarray] = {}  # tensor -> shaped view of its bit patterns
        self._fd: int | None = None
        self._path_checked = 0.0  # monotonic time of the last stat of the path
        self._stale = False
        self._lock = threading.Lock()

    def _read_header(self, fd: int, size: int) -> Header:
        return read_header(self.path, fd, size)  # (GGUFFile reads its own format here)

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.header.tensors

    @property
    def data_start(self) -> int:
        return self.header.data_start

    def check_unchanged(self) -> None:
        """Refuse to read a file that changed on disk since it was validated.

        Two different dangers, checked at two different costs:
        - the mapped file itself truncated or rewritten in place: reading a truncated map kills
          the process with SIGBUS, so every read first fstats the mapped descriptor (~1 us);
        - the path replaced by a rename (as writers do): the old map stays valid memory, only
          stale, so the path is stat'ed at most every PATH_CHECK_INTERVAL seconds (~2 us each,
          which would double the cost of a small slice read).
        """
        if self._fd is not None and not self._stale:
            # fast path, taken by nearly every read: the mapped file is unchanged and the path
            # was checked recently (its inode and device cannot change under an open fd)
            st = os.fstat(self._fd)
            if (st.st_size == self.identity[0] and st.st_mtime_ns == self.identity[1]
                    and time.monotonic() - self._path_checked < PATH_CHECK_INTERVAL):
                return
        changed = self._stale
        if not changed:
            try:
                if self._fd is None:
                    changed = _identity(os.stat(self.path)) != self.identity
                else:
                    changed = _identity(os.fstat(self._fd)) != self.identity
                    now = time.monotonic()
                    if not changed and now - self._path_checked >= PATH_CHECK_INTERVAL:
                        self._path_checked = now
                        changed = _identity(os.stat(self.path)) != self.identity
            except OSError:
                changed = True
        if changed:
            self._changed()

    def _changed(self):
        self._stale = True  # once seen changed, every later read refuses too
        raise ModelChanged(
            f"{self.path} changed on disk after it was opened; reopen the model to read it",
            file=self.path,
        )

    def copy_range(self, info: TensorInfo, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """A copy of bytes [lo, hi) of one tensor, read with pread(2), never through the map.

        Reading a mapped page past the end of a file that another process truncated meanwhile
        kills the process with SIGBUS, and no Python handler can catch it. pread on a shrunk file
        returns short instead: that raises `ModelChanged`, and so does a file found changed
        (rewritten in place) when the read is done. `out` (uint8, hi - lo long) is filled instead
        of a new array: a loop over chunks reuses one buffer rather than faulting in fresh pages.
        """
        if out is None:
            out = np.empty(max(hi - lo, 0), dtype=np.uint8)
        elif out.dtype != np.uint8 or out.size != max(hi - lo, 0) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous uint8 array of {hi - lo} bytes")
        if out.size == 0:
            return out
        self.buffer()  # opens and validates the descriptor on first use, else checks it unchanged
        fd = self._fd
        pos = self.header.data_start + info.begin + lo
        view = memoryview(out)
        done = 0
        try:
            while done < out.size:
                n = os.preadv(fd, [view[done : done + _PREAD_MAX]], pos + done)
                if n <= 0:  # the file ends before the tensor does: it shrank under us
                    self._changed()
                done += n
        except (OSError, TypeError):  # descriptor closed meanwhile (TypeError: fd is None)
            self._changed()
        self.check_unchanged()
        return out

    def check_descriptor(self, fd: int) -> None:
        """Refuse (`ModelChanged`) a descriptor that is not this file as it was validated: another
        file now at the path, or this one truncated or rewritten since. Writers that copy from
        their own descriptor check it when they open it and again when they are done."""
        try:
            same = _identity(os.fstat(fd)) == self.identity
        except OSError:
            same = False
        if not same:
            self._changed()

    def pread(self, info: TensorInfo, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of one tensor (clipped to its end), with one pread(2) and no per-call
        unchanged-check: for many short reads (a patch's entries), where the caller checks the file
        once (`check_unchanged`). As safe as `copy_range` against a file that shrinks meanwhile."""
        hi = min(hi, info.end - info.begin)
        if hi <= lo:
            return b""
        if hi - lo > _PREAD_MAX:
            return self.copy_range(info, lo, hi).tobytes()
        fd = self._fd
        if fd is None:
            self.buffer()  # opens and validates the descriptor
            fd = self._fd
        try:
            data = os.pread(fd, hi - lo, self.header.data_start + info.begin + lo)
        except (OSError, TypeError):  # descriptor closed meanwhile (TypeError: fd is None)
            self._changed()
        if len(data) != hi - lo:  # the file ends before the tensor does: it shrank under us
            self._changed()
        return data

    def buffer(self) -> mmap.mmap:
        """The whole file, mapped read-only (mapped on first use)."""
        mm = self._mm
        if mm is None:
            with self._lock:
                if self._mm is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                    except OSError:  # deleted or replaced by something unreadable
                        raise ModelChanged(
                            f"{self.path} changed on disk after it was opened; reopen it",
                            file=self.path,
                        ) from None
                    try:
                        if _identity(os.fstat(fd)) != self.identity:
                            raise ModelChanged(
                                f"{self.path} changed on disk after it was opened; reopen it",
                                file=self.path,
                            )
                        self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)
                    except BaseException:
                        os.close(fd)
                        raise
                    # closed by close(), or when the file is garbage: a model dropped from the
                    # server's cache is not closed (a request may still be reading it)
                    self._close_fd = weakref.finalize(self, os.close, fd)
                    self._fd = fd
                mm = self._mm
        else:
            self.check_unchanged()
        return mm

    def tensor_bytes(self, info: TensorInfo) -> np.ndarray:
        """Zero-copy uint8 view of one tensor's bytes."""
        if info.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        self.buffer()  # maps the file on first use, else checks that it is unchanged
        # slicing one array of the whole map: np.frombuffer per read costs 4x as much
        start = self.header.data_start + info.begin
        return self._bytes[start : start + info.nbytes]

    def pattern_view(self, info: TensorInfo) -> np.ndarray:
        """Zero-copy view of a byte-aligned tensor's bit patterns in its shape, built once per
        tensor: slicing, viewing and reshaping the map on every read costs a third of a small read."""
        view = self._views.get(info.name)
        if view is None:
            raw = self.tensor_bytes(info)
            view = raw.view(info.dtype.storage).reshape(info.shape)
            self._views[info.name] = view
        else:
            self.check_unchanged()
        return view

    def close(self) -> None:
        with self._lock:
            self._views.clear()
            self._bytes = None
            if self._mm is not None:
                try:
                    self._mm.close()
                except BufferError:
                    # numpy views still reference the map; it is freed with them
                    pass
                self._mm = None
            if self._fd is not None:
                self._close_fd()
                self._fd = None

    def changed_on_disk(self) -> bool:
        """Whether the path no longer names the file that was validated (or is gone)."""
        try:
            return self._stale or _identity(os.stat(self.path)) != self.identity
        except OSError:
            return True


# A model's tensor: its header entry, which also knows its file (see TensorInfo).
TensorRef = TensorInfo


@dataclass
class Model:
    path: str  # what was opened: a file or an index (a folder resolves to one of these)
    kind: str  # "file" or "sharded"
    files: list[SafetensorsFile]
    tensors: dict[str, TensorRef]
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    index_identity: tuple | None = None  # the shard index's, when sharded
    format = "safetensors"  # (a class attribute: "gguf" for store.gguf.GGUFModel)

    def changed_on_disk(self) -> bool:
        """Whether any file of the model (each shard, and the index) is no longer the one that was
        opened: its device, inode, size or mtime differ, or it is gone. Such a model must be opened
        again, not served from a cache (its reads answer "reopen the model")."""
        if self.index_identity is not None:
            try:
                if _identity(os.stat(self.path)) != self.index_identity:
                    return True
            except OSError:
                return True
        return any(f.changed_on_disk() for f in self.files)

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    @property
    def name(self) -> str:
        p = Path(self.path)
        if self.kind == "sharded" or p.name in ("model.safetensors",):
            return p.parent.name or p.name
        return p.name.removesuffix(".safetensors")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def tensor(self, name: str) -> TensorRef:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorNotFound(
                f"no tensor named {name!r} in {self.name}", tensor=name, model=self.path
            ) from None

    def summary(self) -> dict:
        dtypes: dict[str, int] = {}
        for t in self.tensors.values():
            dtypes[t.dtype.name] = dtypes.get(t.dtype.name, 0) + 1
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "shards": len(self.files),
            "shard_files": [os.path.basename(f.path) for f in self.files],
            "tensor_count": len(self.tensors),
            "total_bytes": self.nbytes,
            "numel": sum(t.numel for t in self.tensors.values()),
            "dtypes": dtypes,
            "metadata": self.metadata,
            "warnings": self.warnings,
        }

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_model_path(path: str | os.PathLike) -> str:
    """A file or index path for `path`, which may be a folder holding a model."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFound(f"{p}: no such file or folder", file=str(p))
    if not p.is_dir():
        return str(p)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        return str(index)
    indexes = sorted(p.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return str(indexes[0])
    if len(indexes) > 1:
        raise InvalidModelFile(
            f"{p}: holds several shard indexes ({', '.join(i.name for i in indexes)}); "
            "open one of them by path",
            file=str(p),
        )
    single = p / "model.safetensors"
    if single.is_file():
        return str(single)
    files = sorted(p.glob("*.safetensors"))
    if len(files) == 1:
        return str(files[0])
    if not files:
        ggufs = [g for g in sorted(p.glob("*.gguf")) if is_gguf_file(str(g))]  # one GGUF file: open it
        if len(ggufs) == 1:
            return str(ggufs[0])
        if len(ggufs) > 1:
            raise InvalidModelFile(
                f"{p}: holds {len(ggufs)} GGUF files and no .safetensors; open one of them by path "
                f"({', '.join(g.name for g in ggufs[:5])}{', ...' if len(ggufs) > 5 else ''})",
                file=str(p), field="format",
            )
        from .foreign import folder_message  # PyTorch or numpy files: say so, and what to do

        if found := folder_message(str(p)):
            raise InvalidModelFile(found[0], file=str(p), field="format", foreign_files=found[1])
        raise ModelNotFound(
            f"{p}: no .safetensors file or *.safetensors.index.json in this folder", file=str(p)
        )
    raise InvalidModelFile(
        f"{p}: holds {len(files)} .safetensors files and no index; open one of them by path "
        f"({', '.join(f.name for f in files[:5])}{', ...' if len(files) > 5 else ''})",
        file=str(p),
    )


PathGuard = Callable[[str], object]


def is_gguf_file(path: str) -> bool:
    """Whether `path` is a regular file starting with GGUF's magic number (opened by store.gguf)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 4, 0) == b"GGUF"
    except OSError:
        return False
    finally:
        os.close(fd)


def open_model(path: str | os.PathLike, guard: PathGuard | None = None) -> Model:
    """Open and validate a model: a .safetensors file, an *.index.json, or a folder.

    `guard`, if given, is called with every file path before it is opened (the index and each
    shard) and raises to refuse it: shard names come from a hostile file and may be symlinks.
    """
    resolved = resolve_model_path(path)
    if guard:
        guard(resolved)
    with _gc_paused():
        if resolved.endswith(".json"):
            return _open_sharded(resolved, guard)
        if is_gguf_file(resolved) or resolved.lower().endswith(".gguf"):  # by its first bytes, or its name
            from .gguf import open_gguf  # (imports the gguf package: only for GGUF files)

            return open_gguf(resolved)
        f = SafetensorsFile(resolved)
        tensors = dict(f.tensors)
        return Model(resolved, "file", [f], tensors, dict(f.header.metadata), list(f.header.warnings))


@contextmanager
def _gc_paused():
    """Hold off the cyclic garbage collector while a model opens.

    Opening allocates several container objects per tensor (the JSON's dicts and lists, infos,
    refs), none of them in cycles, and the collector would rescan the growing heap again and
    again: a third of the time of opening a 90k-tensor model. If it was off already, it stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _is_plain_shard_name(shard: str) -> bool:
    """A plain *.safetensors file name: shard names come from a hostile file, never paths."""
    return (
        bool(shard)
        and shard not in (".", "..")
        and "/" not in shard
        and "\\" not in shard
        and "\0" not in shard
        and shard.endswith(".safetensors")
    )


def _bad_shard_name(index_path: str, tensor: str, shard) -> None:
    raise InvalidModelFile(
        f"{index_path}: weight_map[{tensor!r}] = {shard!r} is not a plain "
        "*.safetensors file name in the index's folder",
        file=index_path,
        field="weight_map",
        tensor=tensor,
    )


def _read_index(index_path: str) -> tuple[dict, tuple]:
    from .header import _DuplicateKey, loads_unique

    try:
        size = os.path.getsize(index_path)
    except OSError:
        raise ModelNotFound(f"{index_path}: cannot read the shard index", file=index_path) from None
    if size > MAX_INDEX_SIZE:
        raise InvalidModelFile(
            f"{index_path}: shard index is {size:,} bytes, over the {MAX_INDEX_SIZE:,}-byte limit",
            file=index_path,
        )
    fd, st = _open_regular(index_path)
    try:
        # bounded by the size checked above (the stat of the path): a FIFO never gets here
        raw = os.read(fd, min(st.st_size, MAX_INDEX_SIZE) + 1)
        identity = _identity(os.fstat(fd))
    finally:
        os.close(fd)
    if len(raw) > MAX_INDEX_SIZE:
        raise InvalidModelFile(
            f"{index_path}: shard index is over the {MAX_INDEX_SIZE:,}-byte limit", file=index_path
        )
    try:
        obj = loads_unique(raw)  # bytes: orjson reads them as they are (invalid UTF-8 raises)
    except _DuplicateKey as e:
        raise InvalidModelFile(
            f"{index_path}: duplicate key {e.key!r} in the shard index",
            file=index_path, field="weight_map", key=e.key,
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidModelFile(
            f"{index_path}: shard index is not valid UTF-8 JSON: {e}", file=index_path
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise InvalidModelFile(
            f"{index_path}: shard index must be an object with a 'weight_map' object",
            file=index_path, field="weight_map",
        )
    if not obj["weight_map"]:
        raise InvalidModelFile(
            f"{index_path}: weight_map is empty", file=index_path, field="weight_map"
        )
    return obj, identity


def _open_sharded(index_path: str, guard: PathGuard | None) -> Model:
    obj, index_identity = _read_index(index_path)
    folder = os.path.dirname(os.path.abspath(index_path))
    weight_map: dict[str, str] = obj["weight_map"]
    if set(map(type, weight_map.values())) != {str}:
        tensor, shard = next((t, s) for t, s in weight_map.items() if type(s) is not str)
        _bad_shard_name(index_path, tensor, shard)
    shards = list(dict.fromkeys(weight_map.values()))  # distinct shard names, in index order
    for shard in shards:
        if not _is_plain_shard_name(shard):
            _bad_shard_name(index_path, next(t for t, s in weight_map.items() if s == shard), shard)

    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InvalidModelFile(
            f"{index_path}: {len(missing)} shard file(s) named in weight_map are missing: {shown}",
            file=index_path, field="weight_map", missing_shards=missing,
        )

    files: list[SafetensorsFile] = []
    tensors: dict[str, TensorRef] = {}
    owner_of = weight_map.get
    try:
        for shard in shards:
            shard_path = os.path.join(folder, shard)
            if guard:
                guard(shard_path)
            f = SafetensorsFile(shard_path)
            files.append(f)
            # every tensor the shard holds must be one the index puts in this shard; that also
            # rules out a tensor stored in two shards (the index names only one of them)
            strays = [name for name in f.tensors if owner_of(name) != shard]
            if strays:
                name = strays[0]
                if name in tensors:
                    msg = f"tensor {name!r} is stored in both {os.path.basename(tensors[name].file.path)} and {shard}"
                else:
                    owner = owner_of(name)
                    where = f"the index puts it in {owner}" if owner else "the index does not list it"
                    msg = f"tensor {name!r} is stored in {shard} but {where}"
                raise InvalidModelFile(f"{index_path}: {msg}", file=index_path, tensor=name, field="weight_map")
            tensors.update(f.tensors)
        if len(tensors) != len(weight_map):
            # some tensor the index lists is in none of the shards (each shard held only its own)
            absent = [t for t in weight_map if t not in tensors]
            shard = weight_map[absent[0]]
            n = sum(1 for t in absent if weight_map[t] == shard)
            raise InvalidModelFile(
                f"{index_path}: weight_map puts {n} tensor(s) in {shard} that it does not hold, "
                f"e.g. {absent[0]!r}",
                file=index_path, tensor=absent[0], field="weight_map",
            )
    except BaseException:
        for f in files:
            f.close()
        raise

    warnings = [w for f in files for w in f.header.warnings] + _extra_shard_warnings(folder, set(shards))
    meta = obj.get("metadata")
    metadata = {k: str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    total = meta.get("total_size") if isinstance(meta, dict) else None
    # each header was validated to tile its data section exactly with its tensors
    actual = sum(f.header.file_size - f.header.data_start for f in files)
    if type(total) is int and total != actual:
        warnings.append(
            f"index metadata says total_size {total:,} bytes; the shards hold {actual:,}"
        )
    return Model(index_path, "sharded", files, tensors, metadata, warnings, index_identity)


def _extra_shard_warnings(folder: str, used: set[str]) -> list[str]:
    """Shard-like files beside the index that it does not reference."""
    prefixes = {m["prefix"] for s in used if (m := _SHARD_NAME.match(s))}
    extra = []
    for entry in os.scandir(folder):
        m = _SHARD_NAME.match(entry.name)
        if m and m["prefix"] in prefixes and entry.name not in used:
            extra.append(entry.name)
    if not extra:
        return []
    extra.sort()
    return [
        f"{len(extra)} shard file(s) in the folder are not referenced by the index: "
        + ", ".join(extra[:10])
    ]
