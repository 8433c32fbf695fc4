"""The pack registry: packs installed under DATA_DIR/packs, where they came from, and whether they
changed since.

```
DATA_DIR/packs/registry.json      {"format": "tensor-surgery-pack-registry", "version": 1, "packs": {name: entry}}
DATA_DIR/packs/<name>/            the installed pack (one version per name)
```

An entry holds the pack's kind and version, its source (`{"type": "folder"|"archive"|"hf", "location"}`,
null when unknown), the installed time, the size, and the sha256 of every file as installed: a pack
whose files differ from those is *locally modified* (it may still verify, if it was rewritten with
write_pack; or not, if a file was damaged). A registry file that cannot be read is moved aside
(`registry.json.corrupt-<time>`) and rebuilt from the installed folders, with a warning: nothing
installed is lost.

Sources and destinations:
- a folder: a pack folder (holding pack.json), or a *remote* holding versions as `<version>/pack.json`
  (push writes `DEST/<version>/`);
- a `.tar`, `.tar.gz`, `.tgz` or `.zip` file holding one pack (at its root or in one folder) or
  versions; extraction refuses absolute paths, '..', links and special files;
- a Hugging Face repo id (`owner/name`, or `hf:owner/name`), laid out like a remote folder, through
  huggingface_hub (HF_ENDPOINT chooses the hub).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import Conflict, SurgeryError
from ..surgery.library import atomic_write
from . import packs as pk
from .packs import InvalidPack, PackNotFound

log = logging.getLogger(__name__)

REGISTRY_FORMAT = "tensor-surgery-pack-registry"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
HF_ID_RE = re.compile(r"^(hf:)?([A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})$")
MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 16 << 30


class SourceError(SurgeryError):
    """A source or destination that cannot be read or written (missing, unreachable, refused)."""

    code = "pack_source_error"
    http_status = 400
    exit_code = 1


class InvalidSource(SourceError):
    """Bad input: no such folder or archive, not a repo id, no such version at the source."""

    code = "invalid_pack_source"
    exit_code = 2


@dataclass(frozen=True)
class Source:
    type: str  # folder | archive | hf (| local: made on this machine, no source to fetch from)
    location: str

    def to_json(self) -> dict:
        return {"type": self.type, "location": self.location}

    def __str__(self) -> str:
        return f"hf:{self.location}" if self.type == "hf" else self.location


def parse_source(text: str | Path) -> Source:
    """A folder or archive that exists, else `hf:owner/name` or `owner/name`, else an error."""
    s = str(text)
    if s.startswith("hf:"):
        m = HF_ID_RE.match(s)
        if not m:
            raise InvalidSource(f"{s}: not a Hugging Face repo id (hf:owner/name)", field="source")
        return Source("hf", m.group(2))
    p = Path(s).expanduser()
    if p.is_dir():
        return Source("folder", str(p.resolve()))
    if _is_archive_name(p.name):
        return Source("archive", str(p.resolve()))
    if p.exists():
        raise InvalidSource(f"{s}: neither a folder nor a .tar/.tar.gz/.tgz/.zip archive", file=s, field="source")
    m = HF_ID_RE.match(s)
    if m and not s.startswith((".", "/", "~")):
        return Source("hf", m.group(2))
    raise InvalidSource(f"{s}: no such folder or archive (a Hugging Face repo id looks like owner/name)",
                      file=s, field="source")


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a pack folder, pack.json included (what "locally modified" compares)."""
    return {rel: pk.sha256_file(folder / rel) for rel in pk.scan_folder(folder)}


# -- reading sources -------------------------------------------------------------------------------


def folder_versions(folder: Path) -> dict[str, Path]:
    """version -> pack folder, for a pack folder or a remote holding `<version>/pack.json`."""
    if (folder / pk.MANIFEST).is_file():
        return {pk.read_manifest(folder)["version"]: folder}
    out: dict[str, Path] = {}
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if sub.is_dir() and not sub.is_symlink() and (sub / pk.MANIFEST).is_file():
            meta = pk.read_manifest(sub)
            out[meta["version"]] = sub
    return out


def _pick(versions: dict[str, Any], want: str | None, where: str):
    if not versions:
        raise InvalidSource(f"{where}: holds no pack (no pack.json at its top or in <version>/ folders)",
                          file=where, field="source")
    if want is None:
        return max(versions, key=pk.version_key)
    for v in versions:
        if pk.version_key(v) == pk.version_key(want):
            return v
    raise InvalidSource(f"{where}: has no version {want} (it has {', '.join(sorted(versions, key=pk.version_key))})",
                      file=where, field="version")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar/.tar.gz/.tgz/.zip into `dest`, refusing (before writing anything) absolute
    paths, '..', links, devices and oversized or overcrowded archives."""
    where = str(archive)

    def check(name: str) -> PurePosixPath:
        p = PurePosixPath(name.replace("\\", "/"))
        if (not name or p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts
                or re.match(r"^[A-Za-z]:", name) or "\0" in name):
            raise InvalidPack(f"{where}: member {name!r} escapes the folder (absolute or '..'): refused",
                              file=where, field=name)
        return p

    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                if len(infos) > MAX_ARCHIVE_MEMBERS or sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
                    raise InvalidPack(f"{where}: too many or too large members for a pack", file=where)
                for i in infos:
                    check(i.filename)
                    mode = i.external_attr >> 16
                    if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                        raise InvalidPack(f"{where}: member {i.filename!r} is a link or a special file: refused",
                                          file=where, field=i.filename)
                for i in infos:
                    target = dest / check(i.filename)
                    if i.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(i) as src, open(target, "xb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        else:
            with tarfile.open(archive, "r:*") as t:
                members = t.getmembers()
                if len(members) > MAX_ARCHIVE_MEMBERS or sum(m.size for m in members) > MAX_ARCHIVE_BYTES:
                    raise InvalidPack(f"{where}: too many or too large members for a pack", file=where)
                for m in members:
                    check(m.name)
                    if not (m.isfile() or m.isdir()):
                        raise InvalidPack(f"{where}: member {m.name!r} is a link or a special file: refused",
                                          file=where, field=m.name)
                for m in members:
                    target = dest / check(m.name)
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = t.extractfile(m)
                    with open(target, "xb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileExistsError):
            raise InvalidPack(f"{where}: a member appears twice ({e.filename}): refused", file=where) from None
        raise InvalidPack(f"{where}: not a readable archive ({e})", file=where) from None


def _archive_root(folder: Path) -> Path:
    """Where the pack or the versions sit inside an extracted archive: its top, or its one folder."""
    if (folder / pk.MANIFEST).is_file():
        return folder
    entries = [p for p in folder.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and not folder_versions(folder):
        return entries[0]
    return folder


def _hf_api():
    from huggingface_hub import HfApi

    return HfApi()


def _hf_call(repo: str, fn):
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except OfflineModeIsEnabled:
        raise SourceError(f"hf:{repo}: huggingface_hub is offline (HF_HUB_OFFLINE is set)", file=repo) from None
    except LocalEntryNotFoundError as e:
        raise SourceError(f"hf:{repo}: the hub cannot be reached and nothing is cached ({e})", file=repo) from None
    except HfHubHTTPError as e:
        raise SourceError(f"hf:{repo}: the hub answered {e}", file=repo) from None
    except OSError as e:
        raise SourceError(f"hf:{repo}: the hub cannot be reached ({e})", file=repo) from None


def hf_files(repo: str) -> list[str]:
    """Every file of the repo's main revision (the model info's siblings)."""
    return _hf_call(repo, lambda: [s.rfilename for s in (_hf_api().model_info(repo).siblings or [])])


def hf_versions(repo: str, files: list[str] | None = None) -> dict[str, str]:
    """version -> folder in the repo ('' for a pack at its top), from the repo's file list."""
    files = hf_files(repo) if files is None else files
    out: dict[str, str] = {}
    for f in files:
        parts = f.split("/")
        if len(parts) == 2 and parts[1] == pk.MANIFEST and pk.VERSION_RE.match(parts[0]):
            out[parts[0]] = parts[0]
    if pk.MANIFEST in files:
        from huggingface_hub import hf_hub_download

        with tempfile.TemporaryDirectory() as tmp:
            path = _hf_call(repo, lambda: hf_hub_download(repo, pk.MANIFEST, local_dir=tmp))
            meta = pk.read_manifest(Path(path).parent)
        out[meta["version"]] = ""
    return out


def source_versions(source: Source) -> list[str]:
    """The versions a source offers, oldest first."""
    if source.type == "folder":
        vs = list(folder_versions(Path(source.location)))
    elif source.type == "hf":
        vs = list(hf_versions(source.location))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            safe_extract(Path(source.location), Path(tmp))
            vs = list(folder_versions(_archive_root(Path(tmp))))
    return sorted(vs, key=pk.version_key)


def fetch(source: Source, version: str | None, into: Path) -> Path:
    """Copy the chosen version (newest by default) of `source` into the empty folder `into`; returns
    the folder holding its pack.json (not yet verified: the caller loads it)."""
    where = str(source)
    if source.type == "folder":
        root = Path(source.location)
        if not root.is_dir():
            raise SourceError(f"{where}: no such folder", file=where, field="source")
        versions = folder_versions(root)
        src = versions[_pick(versions, version, where)]
        meta = pk.read_manifest(src)
        pk.verify_files(src, meta)  # refuse unlisted, linked or pickled files before copying anything
        for rel in [pk.MANIFEST, *meta["files"]]:
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, into / rel, follow_symlinks=False)
        return into
    if source.type == "archive":
        arch = Path(source.location)
        if not arch.is_file():
            raise SourceError(f"{where}: no such archive", file=where, field="source")
        safe_extract(arch, into)
        versions = folder_versions(_archive_root(into))
        return versions[_pick(versions, version, where)]
    repo = source.location
    files = hf_files(repo)
    versions = hf_versions(repo, files)
    sub = versions[_pick(versions, version, where)]
    # the chosen version's files only: `<version>/...`, or the top-level files of a pack at the top
    wanted = [f for f in files if f.startswith(sub + "/")] if sub else [f for f in files if "/" not in f]
    from huggingface_hub import hf_hub_download

    dl = into / "dl"
    for f in wanted:
        # huggingface_hub refuses names that escape local_dir; the pack's own checks run after
        _hf_call(repo, lambda f=f: hf_hub_download(repo, f, local_dir=dl))
    shutil.rmtree(dl / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping in local_dir
    return dl / sub if sub else dl


# -- the registry ----------------------------------------------------------------------------------


class PackRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / "packs"
        self.file = self.folder / "registry.json"
        self.warnings: list[str] = []

    # storage

    @contextlib.contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".registry.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict]:
        if not self.file.exists():
            installed = self._installed_folders()
            if installed:
                return self._rebuild(f"{self.file}: missing while {len(installed)} pack folder(s) are installed")
            return {}
        try:
            doc = json.loads(self.file.read_bytes().decode("utf-8"), parse_constant=pk._refuse_constant)
            if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT or not isinstance(doc.get("packs"), dict):
                raise ValueError("not a pack registry (format/packs fields)")
            for name, e in doc["packs"].items():
                if (not isinstance(e, dict) or e.get("name") != name or not isinstance(e.get("files"), dict)
                        or not isinstance(e.get("version"), str)):
                    raise ValueError(f"entry {name!r} is malformed")
            return doc["packs"]
        except (UnicodeDecodeError, ValueError) as e:
            aside = self.file.with_name(f"registry.json.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
            os.replace(self.file, aside)
            return self._rebuild(f"{self.file}: corrupted ({e}); kept as {aside.name}")

    def _write(self, entries: dict[str, dict]) -> None:
        doc = {"format": REGISTRY_FORMAT, "version": 1, "packs": dict(sorted(entries.items()))}
        atomic_write(self.file, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())

    def _installed_folders(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in sorted(self.folder.iterdir())
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and (p / pk.MANIFEST).exists()]

    def _rebuild(self, why: str) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        skipped = []
        for p in self._installed_folders():
            try:
                meta = pk.read_manifest(p)
                if meta["name"] != p.name:
                    raise InvalidPack(f"{p}: pack.json names {meta['name']!r}", file=str(p))
                entries[p.name] = self._entry(meta, p, None, datetime.fromtimestamp(
                    (p / pk.MANIFEST).stat().st_mtime, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"))
            except SurgeryError as e:
                skipped.append(f"{p.name} ({e.message})")
        msg = (f"{why}: rebuilt the pack registry from {len(entries)} installed folder(s); their sources are "
               "unknown until reinstalled" + (f"; not listed, left in place: {'; '.join(skipped)}" if skipped else ""))
        self.warnings.append(msg)
        log.info(msg)
        self._write(entries)
        return entries

    @staticmethod
    def _entry(meta: dict, folder: Path, source: Source | None, installed_at: str | None = None) -> dict:
        sums = file_checksums(folder)
        return {"name": meta["name"], "kind": meta["kind"], "version": meta["version"],
                "source": source.to_json() if source else None, "installed_at": installed_at or _now(),
                "size": sum((folder / rel).stat().st_size for rel in sums), "files": sums}

    # queries

    def path(self, name: str) -> Path:
        if not pk.NAME_RE.match(name or ""):
            raise PackNotFound(f"{name!r} is not a pack name", field="name")
        return self.folder / name

    def entry(self, name: str) -> dict:
        with self._locked():
            entries = self._read()
        if name not in entries:
            raise PackNotFound(f"no installed pack named {name!r} (`tensor-surgery pack list` shows them)",
                               field="name")
        return entries[name]

    def modified(self, entry: dict) -> bool | None:
        folder = self.path(entry["name"])
        try:
            return file_checksums(folder) != entry["files"]
        except (SurgeryError, OSError):
            return None  # unreadable: verify says why

    def list(self) -> list[dict]:
        with self._locked():
            entries = self._read()
        out = []
        for name, e in entries.items():
            row = {k: v for k, v in e.items() if k != "files"}
            row["modified"] = self.modified(e)
            row["folder"] = str(self.path(name))
            out.append(row)
        return out

    def show(self, name: str) -> dict:
        e = self.entry(name)
        meta = pk.read_manifest(self.path(name))
        return {**{k: v for k, v in e.items() if k != "files"}, "modified": self.modified(e),
                "folder": str(self.path(name)), "files": e["files"], "manifest": meta}

    def load(self, name: str, *, model_checksum: str | None = None) -> pk.Pack:
        self.entry(name)
        return pk.load_pack(self.path(name), model_checksum=model_checksum)

    def verify(self, target: str, *, installed: bool = False) -> dict:
        """Verify an installed pack (by name) or a pack folder (only an installed name with
        `installed`); never raises for a bad pack."""
        entry = None
        folder = Path(target)
        if installed or (pk.NAME_RE.match(target) and not folder.is_dir()):
            entry = self.entry(target)
            folder = self.path(target)
        report: dict[str, Any] = {"pack": target, "folder": str(folder), "ok": True, "errors": []}
        try:
            pack = pk.load_pack(folder)
            report.update(name=pack.name, kind=pack.kind, version=pack.version, tensors=len(pack.tensors))
        except SurgeryError as e:
            report["ok"] = False
            report["errors"].append(e.to_dict())
        if entry is not None:
            report["modified"] = self.modified(entry)
        return report

    def status(self) -> list[dict]:
        rows = []
        for e in self.list():
            row = {"name": e["name"], "version": e["version"], "source": e["source"], "modified": e["modified"],
                   "latest": None, "newer": False}
            if not e["source"]:
                row["error"] = "source unknown (reinstall from its source to track it)"
            elif e["source"]["type"] == "local":
                row["error"] = f"made here ({e['source']['location']}): no source to update from"
            else:
                try:
                    versions = source_versions(Source(**e["source"]))
                    if versions:
                        row["latest"] = versions[-1]
                        row["newer"] = pk.version_key(versions[-1]) > pk.version_key(e["version"])
                        row["versions"] = versions
                except SurgeryError as err:
                    row["error"] = err.message
            rows.append(row)
        return rows

    # changes

    def install(self, source: str | Source, version: str | None = None, *, force: bool = False,
                model_checksum: str | None = None) -> dict:
        """Fetch, verify in full, then move into place and record. A locally modified installed pack
        of the same name is replaced only with `force`."""
        src = source if isinstance(source, Source) else parse_source(source)
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.folder))
        try:
            fetch_dir = staging / "fetch"
            fetch_dir.mkdir()
            root = fetch(src, version, fetch_dir)
            pack = pk.load_pack(root, model_checksum=model_checksum)  # the whole pack verifies, or nothing moves
            with self._locked():
                entries = self._read()
                dest = self.path(pack.name)
                old = entries.get(pack.name)
                if old is not None and not force and self.modified(old):
                    raise Conflict(f"pack {pack.name!r} {old['version']} is installed and was modified locally; "
                                      "push it somewhere first, or install with --force to replace it",
                                      field="name", name=pack.name)
                if dest.exists() and old is None and not force:
                    raise Conflict(f"{dest} exists but is not in the registry; remove it or install with --force",
                                      file=str(dest))
                final = staging / "final"
                os.replace(root, final)
                pk.replace_folder(final, dest)
                entries[pack.name] = self._entry(pack.meta, dest, src)
                self._write(entries)
            return {**{k: v for k, v in entries[pack.name].items() if k != "files"}, "folder": str(dest),
                    "warnings": pack.warnings, "replaced": old["version"] if old else None}
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def add_local(self, folder: Path, label: str, *, force: bool = False) -> dict:
        """Adopt a pack written here (a trained probe) from `folder`, which is moved into the registry:
        its source is `{"type": "local", "location": label}` (nothing to update it from)."""
        pack = pk.load_pack(folder)
        with self._locked():
            entries = self._read()
            dest = self.path(pack.name)
            old = entries.get(pack.name)
            if (old is not None or dest.exists()) and not force:
                raise Conflict(f"a pack named {pack.name!r} is installed already; choose another name or replace it "
                               "on purpose", field="name", name=pack.name)
            pk.replace_folder(Path(folder), dest)
            entries[pack.name] = self._entry(pack.meta, dest, Source("local", label))
            self._write(entries)
        return {**{k: v for k, v in entries[pack.name].items() if k != "files"}, "folder": str(dest)}

    def remove(self, name: str) -> dict:
        with self._locked():
            entries = self._read()
            if name not in entries:
                raise PackNotFound(f"no installed pack named {name!r}", field="name")
            folder = self.path(name)
            if folder.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{name}.removed-", dir=self.folder))
                os.rmdir(aside)
                os.replace(folder, aside)
                shutil.rmtree(aside, ignore_errors=True)
            e = entries.pop(name)
            self._write(entries)
        return {"name": name, "version": e["version"], "removed": True}

    def push(self, name: str, dest: str, *, overwrite: bool = False) -> dict:
        """Publish an installed pack (verified first) to a folder remote (`DEST/<version>/`), an
        archive file, or a Hugging Face repo (`<version>/` in it)."""
        self.entry(name)
        folder = self.path(name)
        pack = pk.load_pack(folder)  # a damaged pack is not published
        files = [pk.MANIFEST, *pack.meta["files"]]
        version = pack.version
        p = Path(dest).expanduser()
        if dest.startswith("hf:") or (not p.exists() and not _is_archive_name(p.name) and HF_ID_RE.match(dest)
                                      and not dest.startswith((".", "/", "~"))):
            repo = HF_ID_RE.match(dest).group(2) if HF_ID_RE.match(dest) else None
            if repo is None:
                raise SourceError(f"{dest}: not a Hugging Face repo id", field="dest")
            if version in hf_versions_safe(repo) and not overwrite:
                raise Conflict(f"hf:{repo} already has version {version}; bump the pack's version", field="version")
            api = _hf_api()
            _hf_call(repo, lambda: api.create_repo(repo, exist_ok=True))
            _hf_call(repo, lambda: api.upload_folder(repo_id=repo, folder_path=str(folder), path_in_repo=version,
                                                     commit_message=f"pack {name} {version}"))
            return {"name": name, "version": version, "dest": {"type": "hf", "location": repo}}
        if _is_archive_name(p.name):
            if p.exists() and not overwrite:
                raise Conflict(f"{p}: already exists; choose another name or --overwrite", file=str(p))
            buf = io.BytesIO()
            if p.name.lower().endswith(".zip"):
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                    for rel in files:
                        z.write(folder / rel, rel)
            else:
                mode = "w:gz" if p.name.lower().endswith((".gz", ".tgz")) else "w"
                with tarfile.open(fileobj=buf, mode=mode) as t:
                    for rel in files:
                        info = t.gettarinfo(str(folder / rel), arcname=rel)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(folder / rel, "rb") as f:
                            t.addfile(info, f)
            atomic_write(p, buf.getvalue())
            return {"name": name, "version": version, "dest": {"type": "archive", "location": str(p.resolve())}}
        if p.exists() and not p.is_dir():
            raise SourceError(f"{p}: exists and is neither a folder nor an archive", file=str(p), field="dest")
        if (p / pk.MANIFEST).is_file():
            raise SourceError(f"{p}: is a pack folder, not a remote; push to the folder that holds versions",
                              file=str(p), field="dest")
        existing = folder_versions(p) if p.is_dir() else {}
        for v, vfolder in existing.items():
            other = pk.read_manifest(vfolder)["name"]
            if other != name:
                raise SourceError(f"{p}: is the remote of pack {other!r}, not {name!r}", file=str(p), field="dest")
        target = p / version
        if target.exists():
            if target.is_dir() and file_checksums(target) == file_checksums(folder):
                return {"name": name, "version": version, "dest": {"type": "folder", "location": str(p.resolve())},
                        "unchanged": True}
            if not overwrite:
                raise Conflict(f"{target}: version {version} is already there with other files; bump the pack's "
                                  "version (or --overwrite)", file=str(target), field="version")
        pk.write_folder(target, {rel: (folder / rel).read_bytes() for rel in files}, overwrite=overwrite)
        return {"name": name, "version": version, "dest": {"type": "folder", "location": str(p.resolve())}}


def hf_versions_safe(repo: str) -> dict[str, str]:
    try:
        return hf_versions(repo)
    except SourceError:
        return {}
