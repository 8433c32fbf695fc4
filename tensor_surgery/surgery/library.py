"""The patch library: `.hexpatch` files in PATCH_DIR, written atomically.

Patch names are plain file names (letters, digits, `.`, `_`, `-`), never paths. Writes go to a
temporary file in the same folder, are fsynced, then renamed over the final name, so a crash
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import InvalidRequest, SurgeryError
from . import hexpatch as hp

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")  # fullmatch: `$` would let "name\n" through
SUFFIX = ".hexpatch"


class PatchNotFound(SurgeryError):
    code = "patch_not_found"
    http_status = 404


class PatchExists(SurgeryError):
    code = "patch_exists"
    http_status = 409


def patch_filename(name: str) -> str:
    """`name` as a safe file name ending in .hexpatch."""
    if not isinstance(name, str):
        raise InvalidRequest("patch name must be text", field="name")
    base = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not _NAME.fullmatch(base) or ".." in base:
        raise InvalidRequest(
            f"patch name {name!r} must be 1-150 letters, digits, '.', '_' or '-' (no folders)",
            field="name",
        )
    return base + SUFFIX


def atomic_write(path: Path, data: bytes, tmp: Path | None = None, *, durable: bool = True) -> None:
    """Write `data` to `path` so that a kill leaves the old file or the new one: written under a
    temporary name in the same folder (`tmp`, or `.<name>.<8 random characters>.tmp`), fsynced, renamed
    over `path`, and the folder fsynced. `tmp` lets a caller choose a name its cleaner recognises.
    `durable=False` skips both fsyncs (still atomic for a kill, not for a power cut): for frequent
    rewrites whose loss costs little, such as a job's progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder's entry list is what a rename changes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PatchLibrary:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / patch_filename(name)

    def list(self, describe=None) -> list[dict]:
        """Every patch with its summary; `describe(patch)`, if given, adds fields (the signature
        status) to each one that parses."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.glob("*" + SUFFIX)):
            if not _NAME.fullmatch(p.stem):
                continue
            st = p.stat()
            item = {"name": p.name, "size": st.st_size, "modified": st.st_mtime}
            try:
                patch = self.read(p.name)
                item.update(patch.summary())
                if describe is not None:
                    item.update(describe(patch))
            except SurgeryError as e:
                item["error"] = e.message
            out.append(item)
        return out

    def read_bytes(self, name: str) -> bytes:
        p = self.path(name)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise PatchNotFound(f"no patch named {patch_filename(name)!r} in the library", name=name) from None
        if size > hp.MAX_PATCH_BYTES:
            from ..errors import TooLarge

            raise TooLarge(f"{p.name} is {size:,} bytes, over the patch limit", name=name)
        return p.read_bytes()

    def read(self, name: str) -> hp.HexPatch:
        return hp.loads(self.read_bytes(name), patch_filename(name))

    def save(self, name: str, patch: hp.HexPatch, *, overwrite: bool = False) -> dict:
        p = self.path(name)
        if p.exists() and not overwrite:
            raise PatchExists(f"a patch named {p.name!r} already exists; choose another name", name=p.name)
        atomic_write(p, patch.dumps().encode("utf-8"))
        return {"name": p.name, **patch.summary()}

    def upload(self, name: str, data: bytes, *, overwrite: bool = False) -> dict:
        patch = hp.loads(data, patch_filename(name))  # refuse anything that does not parse
        p = self.path(name)
        if p.exists() and not overwrite:
            raise PatchExists(f"a patch named {p.name!r} already exists; choose another name", name=p.name)
        atomic_write(p, data)
        return {"name": p.name, **patch.summary()}

    def annotate(self, name: str, description: str) -> dict:
        """Change the description. The description is signed, so a signed patch loses its
        signature block (it would only be INVALID now): `signature_removed` says so."""
        from .signing import BLOCK, unsigned

        patch = self.read(name)
        description = hp.validate_description(description)
        was_signed = BLOCK in patch.extra and description != patch.description
        if was_signed:
            patch = unsigned(patch)
        patch.description = description
        return {**self.save(name, patch, overwrite=True), "signature_removed": was_signed}

    def delete(self, name: str) -> None:
        p = self.path(name)
        try:
            p.unlink()
        except FileNotFoundError:
            raise PatchNotFound(f"no patch named {p.name!r} in the library", name=name) from None
        fsync_path(p.parent)
