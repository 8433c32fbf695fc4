"""Packs: steering vectors, lenses, probes (and SAEs) as a folder that can be verified and shared.

A pack is a folder holding `pack.json` and its tensors in safetensors files (never pickles):

```json
{
  "format": "tensor-surgery-pack", "format_version": 1,
  "name": "honesty", "kind": "steering", "version": "1.0.0",
  "model": {"checksum": "sha256:<64 hex>", "name": "SmolLM2-135M-Instruct"},
  "layers": [10, 11, 12],
  "made_with": {"data": "...", "method": "mean", "seed": 0, "code_version": "0.1.0", ...},
  "metrics": {...},
  "created": "2026-12-02T16:30:00Z",
  "files": {"tensors.safetensors": {"sha256": "<64 hex>", "size": 12345}}
}
```

- `model.checksum` is the hexpatch `base_model_checksum` of the weights the pack was made from
  (surgery.hexpatch.model_checksum); loading the pack for other weights warns naming both.
- `files` lists every file of the pack but `pack.json` with its sha256 and size. Loading verifies
  every one before any tensor is decoded: a missing or corrupted file refuses the whole pack (never
  half-loaded); a file that is not listed, a link, a pickle (by name or by its bytes) or a listed path
  that escapes the folder is refused too.
- Versions are dotted numbers (`1`, `1.2`, `1.2.3`) so that "newer" has one meaning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .. import __version__
from ..errors import SurgeryError
from ..surgery.library import atomic_write, fsync_path

log = logging.getLogger(__name__)

FORMAT = "tensor-surgery-pack"
FORMAT_VERSION = 1
MANIFEST = "pack.json"
TENSORS_FILE = "tensors.safetensors"
KINDS = ("steering", "lens", "probe", "sae")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_RE = re.compile(r"^\d{1,9}(\.\d{1,9}){0,3}$")
CHECKSUM_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# Files a pack may carry beside its tensors: metadata and readable notes. Anything that can hold code
# (pickles, torch checkpoints, numpy object arrays) is refused by name and by its first bytes.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".md", ".txt", ".gguf", ".jsonl")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".dill")
MAX_MANIFEST_BYTES = 4 << 20


class InvalidPack(SurgeryError):
    """A pack folder, archive or manifest that cannot be trusted as it is."""

    code = "invalid_pack"
    http_status = 422
    exit_code = 1


class PackNotFound(SurgeryError):
    code = "pack_not_found"
    http_status = 404


@dataclass
class Pack:
    folder: Path
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def model_checksum(self) -> str | None:
        return self.meta["model"].get("checksum")


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a dotted version: `1.10` is newer than `1.9`, `1.0` equals `1`."""
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strict_json(value: Any, where: str, fld: str) -> Any:
    """JSON-safe copy of `value` (no NaN/Infinity: readers elsewhere refuse them)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_np_default))
    except (TypeError, ValueError) as e:
        raise InvalidPack(f"{where}: field {fld!r} is not plain JSON ({e}); give numbers, strings, lists and objects "
                          "without NaN or Infinity", file=where, field=fld) from None


def _np_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON")


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    """Validate a parsed pack.json; every error names the file and the field."""

    def bad(msg: str, fld: str) -> InvalidPack:
        return InvalidPack(f"{where}: {msg}", file=where, field=fld)

    if not isinstance(meta, dict):
        raise bad("must hold a JSON object", "pack.json")
    if meta.get("format", FORMAT) != FORMAT:
        raise bad(f"field 'format' is {meta.get('format')!r}, not {FORMAT!r}: not a Tensor Surgery pack", "format")
    fv = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(fv, int) or isinstance(fv, bool) or fv > FORMAT_VERSION or fv < 1:
        raise bad(f"field 'format_version' is {fv!r}; this version of tensor-surgery reads format_version "
                  f"{FORMAT_VERSION} (upgrade to read newer packs)", "format_version")
    name = meta.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise bad(f"field 'name' is {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                  "or digit", "name")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise bad(f"field 'kind' is {kind!r}: one of {', '.join(KINDS)}", "kind")
    version = meta.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise bad(f"field 'version' is {version!r}: a dotted number such as '1', '1.2' or '1.2.3'", "version")
    model = meta.get("model")
    if not isinstance(model, dict):
        raise bad("field 'model' must be an object {\"checksum\": \"sha256:<64 hex>\" or null, \"name\": ...}", "model")
    checksum = model.get("checksum")
    if checksum is not None and (not isinstance(checksum, str) or not CHECKSUM_RE.match(checksum)):
        raise bad(f"field 'model.checksum' is {checksum!r}: 'sha256:' and 64 lower-case hex digits "
                  "(the weights' base_model_checksum), or null", "model.checksum")
    layers = meta.get("layers")
    if (not isinstance(layers, list) or
            not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 100_000 for x in layers)):
        raise bad(f"field 'layers' must be a list of layer numbers (integers from 0), not {layers!r}", "layers")
    if len(set(layers)) != len(layers):
        raise bad("field 'layers' lists a layer twice", "layers")
    for fld in ("made_with", "metrics"):
        if not isinstance(meta.get(fld, {}), dict):
            raise bad(f"field {fld!r} must be an object", fld)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("field 'files' must list every file of the pack with its sha256 and size", "files")
    for rel, entry in files.items():
        _check_relpath(rel, where)
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not HEX64_RE.match(entry["sha256"]) or not isinstance(entry.get("size"), int)
                or isinstance(entry.get("size"), bool) or entry["size"] < 0):
            raise bad(f"files[{rel!r}] must be {{\"sha256\": \"<64 hex>\", \"size\": <bytes>}}", f"files.{rel}")
    return meta


def _check_relpath(rel: Any, where: str) -> PurePosixPath:
    """A file name inside the pack: relative, no '..', no backslashes or NULs, a permitted suffix."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise InvalidPack(f"{where}: file name {rel!r} is not a plain relative path", file=where, field="files")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")) or rel == MANIFEST:
        raise InvalidPack(f"{where}: file {rel!r} escapes the pack folder (absolute or '..'): refused",
                          file=where, field=f"files.{rel}")
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidPack(f"{where}: file {rel!r} is a pickle-style file ({suffix}); packs carry tensors in "
                          "safetensors only (pickles can run code when loaded)", file=where, field=f"files.{rel}")
    if suffix not in ALLOWED_SUFFIXES:
        raise InvalidPack(f"{where}: file {rel!r} has a suffix packs do not carry; allowed: "
                          f"{', '.join(ALLOWED_SUFFIXES)}", file=where, field=f"files.{rel}")
    return p


def _looks_like_pickle(head: bytes) -> bool:
    # Pickle protocol 2+ starts with PROTO (0x80) and the protocol number; torch.save writes a zip
    # whose entries include data.pkl. Protocols 0/1 have no magic, but their suffixes are refused.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or (head[:2] == b"PK")


def scan_folder(folder: Path) -> list[str]:
    """Every file under `folder` as a relative posix path (pack.json included), refusing links,
    special files and pickles wherever they are. Hidden partial folders of our own writes are
    never inside a pack folder, so nothing is skipped."""
    where = str(folder)
    out: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for d in dirs:
            p = Path(root) / d
            if p.is_symlink():
                raise InvalidPack(f"{where}: {p.relative_to(folder)} is a link; packs hold plain files only",
                                  file=where, field=str(p.relative_to(folder)))
        for f in files:
            p = Path(root) / f
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or not p.is_file():
                raise InvalidPack(f"{where}: {rel} is a link or a special file; packs hold plain files only",
                                  file=where, field=rel)
            if PurePosixPath(rel).suffix.lower() in PICKLE_SUFFIXES:
                raise InvalidPack(f"{where}: {rel} is a pickle-style file; packs carry tensors in safetensors only "
                                  "(pickles can run code when loaded): remove it", file=where, field=rel)
            out.append(rel)
    return sorted(out)


def read_manifest(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    where = str(path)
    if not folder.is_dir():
        raise PackNotFound(f"{folder}: no such pack folder", file=str(folder))
    if path.is_symlink() or not path.is_file():
        raise InvalidPack(f"{where}: missing; a pack folder holds pack.json beside its tensors", file=where,
                          field="pack.json")
    raw = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidPack(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes", file=where, field="pack.json")
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidPack(f"{where}: not valid JSON ({e})", file=where, field="pack.json") from None
    return _check_meta(meta, where)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def verify_files(folder: Path, meta: dict[str, Any] | None = None) -> dict[str, bytes]:
    """Check every file against the manifest and return the bytes of the tensor files, read once
    (so what is decoded is exactly what was hashed). Raises InvalidPack naming the file."""
    folder = Path(folder)
    meta = meta if meta is not None else read_manifest(folder)
    where = str(folder / MANIFEST)
    present = scan_folder(folder)
    listed = meta["files"]
    extra = [f for f in present if f != MANIFEST and f not in listed]
    if extra:
        raise InvalidPack(f"{folder}: {extra[0]} is not listed in pack.json 'files' ({len(extra)} unlisted "
                          "file(s)); a pack holds only the files its manifest checksums: remove it",
                          file=str(folder / extra[0]), field="files")
    data: dict[str, bytes] = {}
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        if rel not in present:
            raise InvalidPack(f"{path}: missing (pack.json lists it); the pack is incomplete: reinstall it",
                              file=str(path), field=f"files.{rel}")
        # Files are read whole only when tensors are decoded from them; others are streamed.
        if rel.endswith(".safetensors"):
            blob = path.read_bytes()
            digest, size = hashlib.sha256(blob).hexdigest(), len(blob)
        else:
            digest, size, blob = sha256_file(path), path.stat().st_size, None
            with open(path, "rb") as f:
                if _looks_like_pickle(f.read(2)) and not rel.endswith(".gguf"):
                    raise InvalidPack(f"{path}: its bytes look like a pickle or a torch checkpoint; refused",
                                      file=str(path), field=f"files.{rel}")
        if size != entry["size"] or digest != entry["sha256"]:
            raise InvalidPack(f"{path}: checksum mismatch (pack.json says sha256 {entry['sha256'][:16]}..., "
                              f"{entry['size']} bytes; the file has {digest[:16]}..., {size} bytes): the file is "
                              "corrupted or was changed; reinstall the pack or rewrite it", file=str(path),
                              field=f"files.{rel}")
        if blob is not None:
            data[rel] = blob
    return data


def load_pack(folder: Path, *, model_checksum: str | None = None) -> Pack:
    """Read and verify a pack: every file's checksum first, then its tensors. Nothing is returned
    unless all of it verifies. With `model_checksum` (the open model's base_model_checksum), a pack
    made for other weights carries a warning naming both checksums (and it is logged)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    folder = Path(folder)
    meta = read_manifest(folder)
    blobs = verify_files(folder, meta)
    tensors: dict[str, np.ndarray] = {}
    for rel, blob in blobs.items():
        try:
            loaded = st_load(blob)
        except (SafetensorError, ValueError, TypeError) as e:
            raise InvalidPack(f"{folder / rel}: not a readable safetensors file ({e})", file=str(folder / rel),
                              field=f"files.{rel}") from None
        for name, arr in loaded.items():
            if name in tensors:
                raise InvalidPack(f"{folder / rel}: tensor {name!r} is also in another file of the pack",
                                  file=str(folder / rel), tensor=name)
            tensors[name] = arr
    pack = Pack(folder=folder, meta=meta, tensors=tensors)
    warning = model_mismatch(meta, model_checksum)
    if warning:
        pack.warnings.append(warning)
        log.info(warning)
    return pack


def model_mismatch(meta: dict[str, Any], model_checksum: str | None) -> str | None:
    made_for = (meta.get("model") or {}).get("checksum")
    if model_checksum and made_for and made_for != model_checksum:
        return (f"pack {meta['name']} {meta['version']} was made for weights {made_for}, but the open model's "
                f"weights are {model_checksum}: its vectors may not mean the same thing here")
    return None


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(*, name: str, kind: str, version: str, model_checksum: str | None, layers,
                   made_with: dict, metrics: dict, model_name: str | None = None,
                   files: dict[str, dict] | None = None, created: str | None = None) -> dict[str, Any]:
    where = f"pack {name!r}"
    made = dict(_strict_json(made_with or {}, where, "made_with"))
    made.setdefault("code_version", f"tensor-surgery {__version__}")
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": name, "kind": kind, "version": version,
        "model": {"checksum": model_checksum, **({"name": model_name} if model_name else {})},
        "layers": [int(x) for x in layers],
        "made_with": made,
        "metrics": _strict_json(metrics or {}, where, "metrics"),
        "created": created or _now(),
        "files": files or {},
    }
    return meta


def write_pack(folder: Path, *, name: str, kind: str, version: str, model_checksum: str | None, layers,
               tensors: dict[str, np.ndarray], made_with: dict, metrics: dict, model_name: str | None = None,
               extra_files: dict[str, bytes] | None = None, overwrite: bool = False) -> Path:
    """Write a pack folder atomically: everything goes into a hidden partial folder beside `folder`,
    fsynced, then renamed into place, so a kill leaves the old pack or the new one. `extra_files`
    (name -> bytes: a config.json, a README.md, a .gguf export) are checksummed like the tensors.
    An existing `folder` is replaced only with `overwrite=True` and only if it is a pack."""
    folder = Path(folder)
    where = str(folder)
    if not tensors:
        raise InvalidPack(f"{where}: a pack needs at least one tensor", file=where, field="tensors")
    arrays: dict[str, np.ndarray] = {}
    for tname, arr in tensors.items():
        if not isinstance(tname, str) or not tname:
            raise InvalidPack(f"{where}: tensor names must be non-empty strings", file=where, field="tensors")
        a = np.asarray(arr)
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise InvalidPack(f"{where}: tensor {tname!r} has dtype {a.dtype}; packs hold numeric tensors",
                              file=where, tensor=tname)
        arrays[tname] = np.ascontiguousarray(a)
    from safetensors.numpy import save as st_save

    blobs: dict[str, bytes] = {TENSORS_FILE: st_save(arrays)}
    for rel, blob in (extra_files or {}).items():
        _check_relpath(rel, where)
        if rel in blobs:
            raise InvalidPack(f"{where}: extra file {rel!r} would replace the tensors file", file=where, field=rel)
        blobs[rel] = bytes(blob)
    files = {rel: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for rel, b in sorted(blobs.items())}
    meta = build_manifest(name=name, kind=kind, version=version, model_checksum=model_checksum, layers=layers,
                          made_with=made_with, metrics=metrics, model_name=model_name, files=files)
    _check_meta(meta, where + "/" + MANIFEST)
    manifest = (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode()
    write_folder(folder, {MANIFEST: manifest, **blobs}, overwrite=overwrite)
    return folder


def write_folder(folder: Path, blobs: dict[str, bytes], *, overwrite: bool = False) -> None:
    """Create `folder` holding exactly `blobs`, atomically (partial folder + rename)."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        if not overwrite:
            raise InvalidPack(f"{folder}: already exists; choose another folder or overwrite it on purpose",
                              file=str(folder))
        if folder.is_symlink() or not folder.is_dir() or not (folder / MANIFEST).is_file():
            raise InvalidPack(f"{folder}: exists and is not a pack folder; refusing to replace it", file=str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for rel, blob in blobs.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(p, blob)
        fsync_path(tmp)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; an existing `dest` is moved aside first and removed after, so a kill
    leaves either the old folder, or the new one (plus a hidden `.old-` folder to clean)."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    fsync_path(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pack_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields a listing shows."""
    return {"name": meta["name"], "kind": meta["kind"], "version": meta["version"],
            "layers": meta["layers"], "model": meta["model"], "created": meta.get("created"),
            "metrics": meta.get("metrics", {}), "made_with": meta.get("made_with", {}),
            "size": sum(e["size"] for e in meta["files"].values())}
