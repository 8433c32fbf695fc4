"""Signed patches: Ed25519 key pairs, a trust list, and a signature block inside a `.hexpatch`.

The signature block
-------------------
A signed patch carries one more top-level key, `"signature"`, that readers which do not know it
keep and ignore (the patch stays a valid version-1 `.hexpatch`):

    "signature": {
      "algorithm": "ed25519",
      "signer": "alice",                              (the signer's own name for the key)
      "public_key": "<base64 of the 32 raw bytes>",
      "fingerprint": "sha256:<64 hex>",               (sha256 of the 32 raw public key bytes)
      "value": "<base64 of the 64-byte Ed25519 signature>"
    }

What is signed (the canonical bytes)
------------------------------------
The patch as this tool reads and writes it (`HexPatch.to_json()`: `format`, `version`,
`description`, the checksums when present, any other top-level keys, and `patches` with each
entry's fields, hex in upper case), with the `signature` block in it minus its `value` field,
serialized as JSON with sorted keys, no whitespace (separators `,` and `:`), non-ASCII characters
as themselves, encoded as UTF-8:

    json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

So any change that means something (one hex digit, an offset, a tensor name, the description, the
order of the entries, the signer's name, the key) invalidates the signature, while a rewrite that
does not (indentation, key order, lower-case hex, the minimal form without `format`/`version`)
does not. A patch written by this tool already has upper-case hex, so for such a file the bytes
are simply the file's JSON with `signature.value` removed, re-serialized as above.

Trust
-----
Key pairs live in DATA_DIR/keys (folder 0700; `NAME.key` is the PKCS#8 PEM private key, mode
0600, created with O_EXCL; `NAME.pub` its public half). The trust list is DATA_DIR/keys/
trusted.json; `keys new` adds the new key to it, `keys trust FILE` adds someone else's exported
public key, `keys untrust` removes one. A valid signature by a key on the list is `trusted`, by
any other key `unknown_key`; a signature that does not verify, or a block that is malformed, is
`invalid`.

Policy (setting PATCH_SIGNATURES) for applying and loading patches: `off` (signatures are not
checked), `warn` (the default: an invalid signature is refused unless explicitly overridden;
unsigned patches apply, and so do patches signed by an unknown key, with a warning),
`require-signed` (unsigned ones are refused too) and `require-trusted` (only patches signed by a trusted key apply).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import InvalidRequest, SurgeryError
from .hexpatch import HexPatch
from .library import atomic_write, fsync_path

ALGORITHM = "ed25519"
BLOCK = "signature"
BLOCK_FIELDS = ("algorithm", "signer", "public_key", "fingerprint", "value")
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
POLICIES = ("off", "warn", "require-signed", "require-trusted")
TRUST_FORMAT = "tensor-surgery-trust-list"
PUBLIC_FORMAT = "tensor-surgery-public-key"
MAX_KEY_FILE_BYTES = 64 * 1024  # a key or trust file larger than this is refused before parsing
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
# top-level keys whose values HexPatch.to_json builds itself (strings, ints, lists of them)
_KNOWN = frozenset({"format", "version", "description", "base_model_checksum", "tensor_checksums", "patches", BLOCK})


class KeyNotFound(SurgeryError):
    code = "key_not_found"
    http_status = 404


class KeyExists(SurgeryError):
    code = "key_exists"
    http_status = 409


class InvalidKeyFile(SurgeryError):
    """A key file, public key file or the trust list cannot be read as what it should be."""

    code = "invalid_key_file"
    http_status = 422


class SignatureRefused(SurgeryError):
    """The PATCH_SIGNATURES policy (or an invalid signature) refuses to apply a patch."""

    code = "signature_refused"
    http_status = 403
    exit_code = 1


class InvalidSignature(SignatureRefused):
    """The patch's signature does not verify, or its block is malformed: it was altered."""

    code = "signature_invalid"
    http_status = 422
    exit_code = 2


class CannotSign(SurgeryError):
    code = "cannot_sign"
    http_status = 422


# -- keys and fingerprints ----------------------------------------------------------------------


def fingerprint(raw_public_key: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text, length: int, what: str) -> bytes | str:
    """The bytes of strict standard base64 `text` of exactly `length` bytes, or why not."""
    if not isinstance(text, str):
        return f"{what} must be a base64 string, not {_json_type(text)}"
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return f"{what} is not valid base64"
    if len(raw) != length:
        return f"{what} is {len(raw)} bytes, where Ed25519 has {length}"
    return raw


def _json_type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def check_key_name(name: str, what: str = "key name") -> str:
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-' (no folders)", field="name")
    return name


# -- canonical bytes, signing and checking ----------------------------------------------------------


def canonical_bytes(patch: HexPatch, block: dict | None = None) -> bytes:
    """The bytes a signature covers (module docstring): the patch with `block` (default: its own
    signature block) minus `value`, as sorted-key, whitespace-free UTF-8 JSON."""
    doc = patch.to_json()
    doc.pop(BLOCK, None)
    if block is None:
        block = patch.extra.get(BLOCK)
    if block is not None:
        doc[BLOCK] = {k: v for k, v in block.items() if k != "value"}
    # orjson writes exactly these bytes for str, int, bool and null (sorted keys, no whitespace, UTF-8,
    # the same escapes) ~50x faster; floats it formats differently, so a patch with any unknown
    # non-scalar or float top-level value takes the reference path below
    scalars = (str, int, bool, type(None))
    if all(type(v) in scalars for k, v in doc.items() if k not in _KNOWN) and \
            all(type(v) in scalars for v in doc.get(BLOCK, {}).values()):
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # an integer past 64 bits or an unpaired surrogate
            pass
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        # NaN/Infinity or an unpaired surrogate (the lenient JSON reader lets both through):
        # there is no canonical form to sign
        raise CannotSign(f"the patch holds a value JSON cannot carry canonically ({e})") from None
    except RecursionError:  # an unknown key nested ~1000 deep: orjson reads it, json.dumps cannot write it
        raise CannotSign("the patch nests JSON too deeply to serialize canonically") from None


def sign(patch: HexPatch, private_key, signer: str) -> HexPatch:
    """`patch` with a fresh signature block by `private_key` (an Ed25519PrivateKey) as `signer`;
    any previous signature is replaced."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    check_key_name(signer, "signer name")
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    block = {"algorithm": ALGORITHM, "signer": signer, "public_key": b64(raw), "fingerprint": fingerprint(raw)}
    signed = copy.copy(patch)
    signed.extra = {k: v for k, v in patch.extra.items() if k != BLOCK}
    block["value"] = b64(private_key.sign(canonical_bytes(signed, block)))
    signed.extra[BLOCK] = block
    return signed


def unsigned(patch: HexPatch) -> HexPatch:
    """`patch` without its signature block (for a rewrite that would invalidate it)."""
    out = copy.copy(patch)
    out.extra = {k: v for k, v in patch.extra.items() if k != BLOCK}
    return out


@dataclass
class SignatureStatus:
    status: str  # unsigned | trusted | unknown_key | invalid
    signer: str | None = None  # the name the block claims
    fingerprint: str | None = None
    trusted_as: str | None = None  # the trust list's name for the key
    reason: str | None = None  # why invalid
    field: str | None = None  # the block's field at fault, e.g. "signature.value"

    @property
    def text(self) -> str:
        if self.status == "unsigned":
            return "unsigned"
        who = self.signer if isinstance(self.signer, str) else "an unnamed signer"
        if self.status == "invalid":
            return f"signed by {who} (INVALID: {self.reason})"
        if self.status == "trusted":
            alias = f" as {self.trusted_as}" if self.trusted_as and self.trusted_as != self.signer else ""
            return f"signed by {who} (trusted{alias})"
        return f"signed by {who} (unknown key {self.fingerprint})"

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d["text"] = self.text
        return d


def check(patch: HexPatch, trusted: dict[str, str]) -> SignatureStatus:
    """The signature status of `patch`; `trusted` maps fingerprints to the trust list's names.
    Never raises for anything inside the patch: a malformed block is `invalid`, naming its field."""
    if BLOCK not in patch.extra:
        return SignatureStatus("unsigned")
    block = patch.extra[BLOCK]

    def invalid(reason: str, fld: str | None, signer=None, fp=None) -> SignatureStatus:
        return SignatureStatus("invalid", signer if isinstance(signer, str) else None,
                               fp if isinstance(fp, str) and _FINGERPRINT.fullmatch(fp) else None,
                               reason=reason, field=fld)

    if not isinstance(block, dict):
        return invalid(f"the signature block must be a JSON object, not {_json_type(block)}", BLOCK)
    signer, fp = block.get("signer"), block.get("fingerprint")
    for name in BLOCK_FIELDS:
        if name not in block:
            return invalid(f"signature.{name} is missing", f"{BLOCK}.{name}", signer, fp)
    if block["algorithm"] != ALGORITHM:
        return invalid(f"signature.algorithm {block['algorithm']!r} is not supported (only {ALGORITHM!r})",
                       f"{BLOCK}.algorithm", signer, fp)
    if not isinstance(signer, str) or not _KEY_NAME.fullmatch(signer):
        return invalid("signature.signer must be a name of 1-64 letters, digits, '.', '_' or '-'",
                       f"{BLOCK}.signer", None, fp)
    raw = _unb64(block["public_key"], PUBLIC_KEY_BYTES, "signature.public_key")
    if isinstance(raw, str):
        return invalid(raw, f"{BLOCK}.public_key", signer, fp)
    if fp != fingerprint(raw):
        return invalid("signature.fingerprint is not the sha256 of signature.public_key",
                       f"{BLOCK}.fingerprint", signer, None)
    sig = _unb64(block["value"], SIGNATURE_BYTES, "signature.value")
    if isinstance(sig, str):
        return invalid(sig, f"{BLOCK}.value", signer, fp)
    try:
        message = canonical_bytes(patch, block)
    except CannotSign as e:
        return invalid(e.message, None, signer, fp)
    from cryptography.exceptions import InvalidSignature as _Bad
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
    except _Bad:
        return invalid("the signature does not match the patch's content: it was changed after signing",
                       f"{BLOCK}.value", signer, fp)
    except ValueError as e:  # not a point on the curve
        return invalid(f"signature.public_key is not an Ed25519 public key ({e})", f"{BLOCK}.public_key", signer, fp)
    if fp in trusted:
        return SignatureStatus("trusted", signer, fp, trusted_as=trusted[fp])
    return SignatureStatus("unknown_key", signer, fp)


def enforce(status: SignatureStatus, policy: str, source: str, *, allow_invalid: bool = False) -> str | None:
    """Raise if `policy` refuses a patch with `status`; otherwise a warning to show, or None."""
    if policy == "off":
        return None
    if status.status == "invalid":
        if allow_invalid and policy in ("require-signed", "require-trusted"):
            # the override accepts an altered patch, but an invalid signature proves no signer
            raise SignatureRefused(
                f"{source}: {status.text}. An invalid signature proves no signer, and PATCH_SIGNATURES="
                f"{policy} applies only validly signed patches{' by trusted keys' if policy == 'require-trusted' else ''}, "
                "even with the override; nothing was applied",
                file=source, field=status.field, policy=policy, signature=status.to_json())
        if allow_invalid:
            return f"{source}: the signature is INVALID ({status.reason}); applied anyway, as asked"
        raise InvalidSignature(
            f"{source}: {status.text}. The patch was changed after it was signed, or its signature "
            "block is broken; nothing was applied. Apply it anyway only if you know why "
            "(--allow-invalid-signature, or confirm in the page)",
            file=source, field=status.field, signature=status.to_json())
    if status.status == "unsigned" and policy in ("require-signed", "require-trusted"):
        raise SignatureRefused(
            f"{source} is unsigned and PATCH_SIGNATURES={policy} applies only signed patches; nothing "
            "was applied. Ask its author for a signed copy (tensor-surgery patch sign)",
            file=source, field=BLOCK, policy=policy, signature=status.to_json())
    if status.status == "unknown_key" and policy == "require-trusted":
        raise SignatureRefused(
            f"{source}: {status.text}, and PATCH_SIGNATURES=require-trusted applies only patches "
            "signed by a trusted key; nothing was applied. Trust the signer's exported public key "
            "with `tensor-surgery keys trust FILE` if you mean to",
            file=source, field=f"{BLOCK}.fingerprint", policy=policy, signature=status.to_json())
    if status.status == "unknown_key":
        return f"{source}: {status.text}"
    return None  # unsigned under warn: the norm for patches made here, not worth a warning each time


def enforce_policy(loaded, policy: str, store: "KeyStore", *, allow_invalid: bool = False) -> list[str]:
    """`enforce` for each (source, patch) of `loaded`, in order: raises the first refusal, else
    returns the warnings. With policy `off` nothing is checked (not even the trust list read)."""
    if policy == "off":
        return []
    trusted = store.trusted_fingerprints()
    return [w for source, patch in loaded
            if (w := enforce(check(patch, trusted), policy, source, allow_invalid=allow_invalid))]


# -- the key store and the trust list ----------------------------------------------------------------


def _read_small(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyNotFound(f"{path}: no such {what}", file=str(path)) from None
    except OSError as e:
        raise InvalidKeyFile(f"{path}: cannot read the {what}: {e.strerror}", file=str(path)) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidKeyFile(f"{path}: over {MAX_KEY_FILE_BYTES:,} bytes: not a {what}", file=str(path))
    return data


def parse_public_key_file(data: bytes, source: str) -> tuple[str | None, bytes]:
    """(name or None, 32 raw bytes) from what `keys export` writes (JSON), or from a PEM
    SubjectPublicKeyInfo Ed25519 key (as `openssl pkey -pubout` writes); errors name the field."""
    def bad(msg: str, fld: str | None = None) -> InvalidKeyFile:
        return InvalidKeyFile(f"{source}: {msg}", file=source, field=fld)

    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

        try:
            key = load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise bad(f"not a PEM public key ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise bad(f"a {type(key).__name__.lstrip('_')}, not an Ed25519 public key", "algorithm")
        return None, key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"not a public key file (JSON from `tensor-surgery keys export`, or PEM): {e}") from None
    if not isinstance(obj, dict):
        raise bad("a public key file must be a JSON object")
    if obj.get("format") != PUBLIC_FORMAT:
        raise bad(f"format must be {PUBLIC_FORMAT!r}", "format")
    if obj.get("algorithm") != ALGORITHM:
        raise bad(f"algorithm {obj.get('algorithm')!r} is not supported (only {ALGORITHM!r})", "algorithm")
    name = obj.get("name")
    if name is not None:
        check_key_name(name)
    raw = _unb64(obj.get("public_key"), PUBLIC_KEY_BYTES, "public_key")
    if isinstance(raw, str):
        raise bad(raw, "public_key")
    if "fingerprint" in obj and obj["fingerprint"] != fingerprint(raw):
        raise bad("fingerprint is not the sha256 of public_key", "fingerprint")
    return name, raw


def public_key_document(name: str, raw: bytes) -> dict:
    return {"format": PUBLIC_FORMAT, "name": name, "algorithm": ALGORITHM, "public_key": b64(raw),
            "fingerprint": fingerprint(raw)}


class KeyStore:
    """Key pairs and the trust list in DATA_DIR/keys."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / "keys"

    @property
    def trust_path(self) -> Path:
        return self.folder / "trusted.json"

    def _ensure_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    # key pairs

    def new(self, name: str) -> dict:
        """A fresh Ed25519 key pair NAME, its public key trusted. The private key file is created
        0600 under a temporary name with O_EXCL and published with link(), which refuses an
        existing name: never readable by others, never half written, never overwriting."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                                  PublicFormat)

        check_key_name(name)
        self.trusted()  # a corrupt trust list fails now, not after the key pair exists
        self._ensure_folder()
        final = self.folder / f"{name}.key"
        if final.exists() or (self.folder / f"{name}.pub").exists():
            raise KeyExists(f"a key named {name!r} already exists in {self.folder}; choose another name "
                            "(keys are never overwritten)", name=name, file=str(final))
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        tmp = self.folder / f".{name}.key.{os.getpid()}.{time.monotonic_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise KeyExists(f"a key named {name!r} already exists in {self.folder}; choose another name",
                                name=name, file=str(final)) from None
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write(self.folder / f"{name}.pub",
                     (json.dumps(public_key_document(name, raw), indent=2) + "\n").encode())
        fsync_path(self.folder)
        self.trust(raw, name)
        return {"name": name, "fingerprint": fingerprint(raw), "private_key": str(final),
                "public_key": str(self.folder / f"{name}.pub")}

    def private_key(self, name: str):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        check_key_name(name)
        path = self.folder / f"{name}.key"
        if not path.is_file():
            raise KeyNotFound(f"no private key named {name!r} in {self.folder} (create one with "
                              f"`tensor-surgery keys new {name}`)", name=name, file=str(path))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # as ssh does: a key others could read may have been copied already
            raise InvalidKeyFile(f"{path} is readable or writable by others (mode {mode:04o}); make it private "
                                 f"with `chmod 600 {path}` (and consider it leaked)", file=str(path), field="mode")
        try:
            key = load_pem_private_key(_read_small(path, "private key"), password=None)
        except (ValueError, TypeError) as e:
            raise InvalidKeyFile(f"{path}: not an unencrypted PEM private key ({e})", file=str(path)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidKeyFile(f"{path}: not an Ed25519 private key", file=str(path), field="algorithm")
        return key

    def public_document(self, name: str) -> dict:
        check_key_name(name)
        path = self.folder / f"{name}.pub"
        _, raw = parse_public_key_file(_read_small(path, "public key file"), str(path))
        return public_key_document(name, raw)

    def list(self) -> list[dict]:
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.glob("*.pub")):
            if not _KEY_NAME.fullmatch(p.stem):
                continue
            item = {"name": p.stem, "private_key": (self.folder / f"{p.stem}.key").is_file()}
            try:
                _, raw = parse_public_key_file(_read_small(p, "public key file"), str(p))
                item["fingerprint"] = fingerprint(raw)
            except SurgeryError as e:
                item["error"] = e.message
            out.append(item)
        return out

    # the trust list

    def trusted(self) -> list[dict]:
        """The trust list: [{name, public_key, fingerprint, added}], validated entry by entry;
        a corrupt file raises InvalidKeyFile naming the file and the field."""
        path = self.trust_path
        if not path.exists():
            return []
        data = _read_small(path, "trust list")
        src = str(path)

        def bad(msg: str, fld: str) -> InvalidKeyFile:
            return InvalidKeyFile(f"{src}: {msg}. Fix or remove the file (then `tensor-surgery keys trust` "
                                  "each key again)", file=src, field=fld)

        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise bad(f"the trust list is not UTF-8 JSON ({e})", "keys") from None
        if not isinstance(obj, dict) or obj.get("format") != TRUST_FORMAT:
            raise bad(f"the trust list must be a JSON object with format {TRUST_FORMAT!r}", "format")
        keys = obj.get("keys")
        if not isinstance(keys, list):
            raise bad("keys must be a list", "keys")
        out = []
        for i, k in enumerate(keys):
            if not isinstance(k, dict):
                raise bad(f"keys[{i}] must be an object", f"keys[{i}]")
            if not isinstance(k.get("name"), str) or not _KEY_NAME.fullmatch(k["name"]):
                raise bad(f"keys[{i}].name must be a name of 1-64 letters, digits, '.', '_' or '-'", f"keys[{i}].name")
            raw = _unb64(k.get("public_key"), PUBLIC_KEY_BYTES, f"keys[{i}].public_key")
            if isinstance(raw, str):
                raise bad(raw, f"keys[{i}].public_key")
            if k.get("fingerprint") != fingerprint(raw):
                raise bad(f"keys[{i}].fingerprint is not the sha256 of its public_key", f"keys[{i}].fingerprint")
            out.append({"name": k["name"], "public_key": k["public_key"], "fingerprint": k["fingerprint"],
                        "added": k.get("added")})
        return out

    def trusted_fingerprints(self) -> dict[str, str]:
        return {k["fingerprint"]: k["name"] for k in self.trusted()}

    def _write_trust(self, keys: list[dict]) -> None:
        self._ensure_folder()
        doc = {"format": TRUST_FORMAT, "version": 1, "keys": keys}
        atomic_write(self.trust_path, (json.dumps(doc, indent=2) + "\n").encode())

    def trust(self, raw: bytes, name: str) -> dict:
        check_key_name(name)
        keys = self.trusted()
        fp = fingerprint(raw)
        for k in keys:
            if k["fingerprint"] == fp:
                return {**k, "already_trusted": True}
            if k["name"] == name:
                raise KeyExists(f"the trust list already has a key named {name!r} ({k['fingerprint']}); "
                                "choose another name with --name", name=name, file=str(self.trust_path))
        entry = {"name": name, "public_key": b64(raw), "fingerprint": fp,
                 "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write_trust([*keys, entry])
        return {**entry, "already_trusted": False}

    def trust_file(self, path: Path, name: str | None = None) -> dict:
        claimed, raw = parse_public_key_file(_read_small(Path(path), "public key file"), str(path))
        name = name or claimed
        if not name:
            raise InvalidRequest(f"{path} does not name its key: give one with --name", field="name", file=str(path))
        return self.trust(raw, name)

    def untrust(self, which: str) -> dict:
        """Remove the key named `which` (or with that fingerprint) from the trust list."""
        keys = self.trusted()
        keep = [k for k in keys if which not in (k["name"], k["fingerprint"])]
        if len(keep) == len(keys):
            raise KeyNotFound(f"no key {which!r} in the trust list {self.trust_path}", name=which,
                              file=str(self.trust_path))
        self._write_trust(keep)
        return {"removed": [k for k in keys if k not in keep]}
