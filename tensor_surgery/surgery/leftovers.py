"""What killed exports and in-place applies leave behind, recognised and removed safely.

An export writes into a hidden `.<out>.partial-<tag>` folder that holds a marker file
(`.tensor-surgery-export.json`) naming the process that writes it and the files it will write; a
replaced previous export is set aside as `.<out>.old-<tag>` for a moment. An in-place apply
writes its journal files through `.<name>.tensor-surgery-<pid>-<tag>.tmp`. A SIGKILL leaves these
behind. They are removed only when both the name and the content say they are ours, their
writer is gone, and (for folders) every entry inside is one the marker names: a user's file is
never deleted, even one put inside a leftover.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading
import uuid
from pathlib import Path

from .library import atomic_write, fsync_path

MARKER_NAME = ".tensor-surgery-export.json"  # inside every export folder (and every partial one)
MARKER_FORMAT = "tensor-surgery-export"
SIDECAR_SUFFIX = ".tensor-surgery-export.json"  # beside a single-file export: .<name> + this
INTENT_NAME = ".tensor-surgery-inplace.json"  # the journal of an in-place apply, beside the model
INTENT_FORMAT = "tensor-surgery-inplace"
MAX_MARKER_BYTES = 1 << 20  # a marker lists file names; anything bigger is not one of ours

PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<tag>[0-9a-f]{12})")
OLD = re.compile(r"\.(?P<name>.+)\.old-(?P<tag>[0-9a-f]{12})")
SIDECAR = re.compile(r"\.(?P<name>.+)" + re.escape(SIDECAR_SUFFIX))
# journal files of an in-place apply, and what they are written through (older versions wrote
# `.<name>.<8 random>.tmp` with tempfile.mkstemp; the forms below also recognise those)
INPLACE_TARGET = re.compile(
    r"\.tensor-surgery-inplace\.json|\.tensor-surgery-forward-[0-9-]+\.hexpatch|.+\.backup-[0-9-]+\.hexpatch"
)
JOURNAL_TMP = re.compile(r"\.(?P<target>.+)\.(?:tensor-surgery-(?P<pid>\d+)-[0-9a-f]{12}|[a-z0-9_]{8})\.tmp")
MARKER_TMP = re.compile(re.escape(MARKER_NAME) + r"\.[A-Za-z0-9_]+\.tmp")
FORWARD = re.compile(r"\.tensor-surgery-forward-[0-9-]+\.hexpatch")
_JOURNAL_CONTENT = (b'"format": "hexpatch"', b'"format": "' + INTENT_FORMAT.encode() + b'"')

_active: set[str] = set()  # temporary outputs this process is writing right now
_active_lock = threading.Lock()


# -- which process wrote it -------------------------------------------------------------------


def process_token(pid: int | None = None) -> str:
    """`pid:start-time`: unlike a bare pid, it does not match a later process that reuses the pid."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # field 22 (start time in clock ticks), counted after the command name's closing bracket
        return f"{pid}:{int(stat[stat.rindex(b')') + 2:].split()[19])}"
    except (OSError, ValueError, IndexError):
        return f"{pid}:"


def writer_alive(token: object) -> bool:
    """Is the process named by `token` (from `process_token`) still running, and not this one?"""
    if not isinstance(token, str) or ":" not in token:
        return False
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid() or pid <= 0:
        return False  # this process (what it is writing now is in `_active`), or a bogus pid
    if start:
        return process_token(pid) == token
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OSError, OverflowError):
        return False
    return True


class Writing:
    """Registers a temporary output as being written by this process while the block runs."""

    def __init__(self, path: Path) -> None:
        self.path = os.path.realpath(path)

    def __enter__(self) -> "Writing":
        with _active_lock:
            _active.add(self.path)
        return self

    def __exit__(self, *exc) -> None:
        with _active_lock:
            _active.discard(self.path)


def _busy(path: Path, marker: dict | None) -> bool:
    with _active_lock:
        if os.path.realpath(path) in _active:
            return True
    return marker is not None and writer_alive(marker.get("writer"))


# -- markers ----------------------------------------------------------------------------------


def file_identity(path: Path) -> dict | None:
    """What says a file is still the one that was written: size, mtime and inode (no symlinks)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def read_marker(path: Path) -> dict | None:
    """The export marker at `path`, or None when there is none or it is not one of ours."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MARKER_BYTES:
            return None
        obj = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != MARKER_FORMAT or obj.get("version") != 1:
        return None
    return obj


def write_marker(path: Path, obj: dict) -> None:
    """Written under a temporary name, fsynced and renamed, like every file we rely on."""
    data = json.dumps({"format": MARKER_FORMAT, "version": 1, **obj}, indent=1).encode()
    atomic_write(path, data, path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp"))


def sidecar_path(out: Path) -> Path:
    return out.parent / f".{out.name}{SIDECAR_SUFFIX}"


def not_a_previous_export(out: Path) -> str | None:
    """None if `out` is a complete previous export, unchanged since it was written (so replacing
    it destroys nothing but that export); otherwise why it is not, in words."""
    if out.is_symlink():
        return "is a symbolic link"
    if out.is_dir():
        marker = read_marker(out / MARKER_NAME)
        if marker is None or marker.get("state") != "complete" or not isinstance(marker.get("files"), dict):
            return "is a folder that no export wrote (it has no export marker)"
        files = marker["files"]
        foreign, changed = [], []
        with os.scandir(out) as it:
            for entry in it:
                if entry.name == MARKER_NAME:
                    continue
                if entry.name not in files:
                    foreign.append(entry.name)
                elif file_identity(Path(entry.path)) != files[entry.name]:
                    changed.append(entry.name)
        if foreign:
            return f"holds files that the export did not write ({', '.join(sorted(foreign)[:5])})"
        if changed:
            return f"holds files changed since the export ({', '.join(sorted(changed)[:5])})"
        return None
    if out.is_file():
        marker = read_marker(sidecar_path(out))
        if marker is None or marker.get("file") != out.name:
            return "is a file that no export wrote"
        if file_identity(out) not in (marker.get("identities") or []):
            return "was changed since it was exported"
        return None
    return "is not a regular file or folder"


# -- cleaning ---------------------------------------------------------------------------------


def _partial_is_ours(folder: Path, marker: dict | None) -> bool:
    planned = set(marker.get("files") or ()) if marker else set()
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name == MARKER_NAME and marker is not None:
                continue
            if MARKER_TMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                continue
            if entry.name in planned and entry.is_file(follow_symlinks=False):
                continue
            return False
    return True


def clean_export_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove the leftovers of killed exports directly in `folder`; returns what was removed.

    - `.<out>.partial-<tag>` folders: an unfinished export whose writer is gone;
    - `.<out>.old-<tag>` folders: a previous export set aside while being replaced; if the new
      one never arrived the old one is put back instead of being removed;
    - `.<out>.tensor-surgery-export.json` sidecars whose file is gone.
    """
    folder = Path(folder)
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        try:
            if (m := PARTIAL.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False):
                marker = read_marker(path / MARKER_NAME)
                if _busy(path, marker) or not _partial_is_ours(path, marker):
                    continue
                shutil.rmtree(path)
                removed.append(str(path))
            elif (m := OLD.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False):
                if not_a_previous_export(path) is not None or _busy(path, None):
                    continue
                out = folder / m["name"]
                if out.exists() or out.is_symlink():
                    shutil.rmtree(path)
                    removed.append(str(path))
                else:  # killed between setting the old export aside and moving the new one in
                    os.rename(path, out)
            elif (m := SIDECAR.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False):
                marker = read_marker(path)
                target = folder / m["name"]
                if marker is None or marker.get("file") != m["name"] or _busy(path, marker):
                    continue
                if not target.exists() and not target.is_symlink():
                    path.unlink()
                    removed.append(str(path))
        except OSError:
            continue  # gone meanwhile, or not ours to touch: leave it
    if removed:
        try:
            fsync_path(folder)
        except OSError:
            pass
    return removed


def clean_in_place_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove what killed in-place applies leave in a model's folder: temporary journal files
    (`.<journal file>.tensor-surgery-<pid>-<tag>.tmp`, empty or holding a patch or an intent)
    and forward patches that no pending apply names (recovery needs that one)."""
    folder = Path(folder)
    removed: list[str] = []
    keep_forward: str | None = None
    intent = folder / INTENT_NAME
    if intent.exists() or intent.is_symlink():
        try:
            keep_forward = str(json.loads(intent.read_bytes())["forward"])
        except (OSError, ValueError, KeyError, TypeError):
            keep_forward = "*"  # a journal we cannot read: keep every forward patch
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if (m := JOURNAL_TMP.fullmatch(entry.name)) and INPLACE_TARGET.fullmatch(m["target"]):
                pid = int(m["pid"]) if m["pid"] else None
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    continue  # an apply running in another process right now
                if _busy(path, None):
                    continue
                if not _journal_content(path):
                    continue
            elif FORWARD.fullmatch(entry.name):
                if keep_forward in (entry.name, "*") or not _journal_content(path):
                    continue
            else:
                continue
            path.unlink()
            removed.append(str(path))
        except OSError:
            continue
    return removed


def _journal_content(path: Path) -> bool:
    """Empty (killed before the write) or a patch or intent written by an in-place apply."""
    with open(path, "rb") as f:
        head = f.read(256)
    return not head or any(k in head for k in _JOURNAL_CONTENT)
