"""`tensor-surgery keys ...` and `tensor-surgery patch sign/show`: signed patches on the command line.

Keys live in DATA_DIR/keys (see surgery/signing.py for the format and what is signed). The checks
that `patch apply` and `patch verify` run (`signature_gate`, `signature_report`) are here too, so
that cli.py only calls them.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import emit, handles_errors, json_option
from .errors import InvalidRequest, SurgeryError
from .settings import Settings
from .surgery import signing as sg


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())).upper() or "settings"
        raise InvalidRequest(f"setting {name}: {first.get('msg')}", field=name) from None


def _store() -> sg.KeyStore:
    return sg.KeyStore(_settings().data_dir)


# -- keys ---------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Ed25519 key pairs for signing patches, and the trust list (in DATA_DIR/keys)."""


@keys.command("new")
@click.argument("name")
@json_option
@handles_errors
def keys_new(name: str, as_json: bool) -> None:
    """Create the key pair NAME (private key readable only by you) and trust its public key."""
    result = _store().new(name)
    emit(result, as_json, f"created key {result['name']} ({result['fingerprint']})\n"
         f"  private key: {result['private_key']} (mode 0600: keep it secret)\n"
         f"  public key:  {result['public_key']} (share it: `tensor-surgery keys export {name}`)")


@keys.command("list")
@json_option
@handles_errors
def keys_list(as_json: bool) -> None:
    """Your key pairs and the trusted public keys."""
    store = _store()
    mine, trusted = store.list(), store.trusted()
    if as_json:
        emit({"keys": mine, "trusted": trusted, "folder": str(store.folder)}, True)
        return
    click.echo(f"your keys ({store.folder}):" if mine else f"no keys in {store.folder} (`tensor-surgery keys new NAME`)")
    for k in mine:
        what = k.get("error") or k["fingerprint"] + ("" if k["private_key"] else " (public key only)")
        click.echo(f"  {k['name']}  {what}")
    click.echo("trusted keys:" if trusted else "no trusted keys")
    for k in trusted:
        click.echo(f"  {k['name']}  {k['fingerprint']}")


@keys.command("export")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Write the public key file here (default: print it).")
@json_option
@handles_errors
def keys_export(name: str, out: Path | None, as_json: bool) -> None:
    """The public key file of NAME, for others to `tensor-surgery keys trust`."""
    import json

    from .surgery.library import atomic_write

    doc = _store().public_document(name)
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)  # the file itself, with or without --json
        return
    if out.exists():
        raise InvalidRequest(f"{out} exists; choose another --out", field="out", file=str(out))
    atomic_write(out, text.encode())
    emit({"path": str(out), **doc}, as_json, f"wrote {out}: public key {name} ({doc['fingerprint']})")


@keys.command("trust")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="The name to trust it as (default: the name in the file).")
@json_option
@handles_errors
def keys_trust(file: Path, name: str | None, as_json: bool) -> None:
    """Add the public key in FILE (from `keys export`, or a PEM Ed25519 key) to the trust list."""
    result = _store().trust_file(file, name)
    verb = "already trusted" if result["already_trusted"] else "trusted"
    emit(result, as_json, f"{verb}: {result['name']} ({result['fingerprint']})")


@keys.command("untrust")
@click.argument("name_or_fingerprint")
@json_option
@handles_errors
def keys_untrust(name_or_fingerprint: str, as_json: bool) -> None:
    """Remove a key (by its trusted name or fingerprint) from the trust list."""
    result = _store().untrust(name_or_fingerprint)
    emit(result, as_json, "\n".join(f"no longer trusted: {k['name']} ({k['fingerprint']})" for k in result["removed"]))


# -- patch sign / show ------------------------------------------------------------------------------


def _read_patch(path: Path):
    from .surgery import hexpatch as hp

    try:
        data = path.read_bytes()
    except OSError as e:
        raise SurgeryError(f"{path}: cannot read the patch: {e.strerror}", file=str(path)) from None
    return hp.loads(data, str(path))


@click.command("sign")
@click.argument("patch_file", type=click.Path(path_type=Path))
@click.option("--key", "key_name", required=True, help="Sign with this key pair (DATA_DIR/keys/NAME.key).")
@click.option("--out", type=click.Path(path_type=Path), help="Write the signed patch here (default: rewrite PATCH_FILE).")
@json_option
@handles_errors
def patch_sign(patch_file: Path, key_name: str, out: Path | None, as_json: bool) -> None:
    """Add a signature block (signer, public key, fingerprint, Ed25519 signature) to PATCH_FILE."""
    from .surgery.library import atomic_write

    store = _store()
    key = store.private_key(key_name)
    patch = _read_patch(patch_file)
    replaced = sg.BLOCK in patch.extra
    signed = sg.sign(patch, key, key_name)
    target = out or patch_file
    if out is not None and out.exists():
        raise InvalidRequest(f"{out} exists; choose another --out (or sign in place without --out)",
                             field="out", file=str(out))
    atomic_write(target, signed.dumps().encode("utf-8"))
    status = sg.check(signed, store.trusted_fingerprints())
    block = signed.extra[sg.BLOCK]
    emit({"path": str(target), "signer": key_name, "fingerprint": block["fingerprint"],
          "replaced_signature": replaced, "signature": status.to_json()}, as_json,
         f"signed {target} as {key_name} ({block['fingerprint']})"
         + ("; the previous signature was replaced" if replaced else ""))


@click.command("show")
@click.argument("patch_file", type=click.Path(path_type=Path))
@json_option
@handles_errors
def patch_show(patch_file: Path, as_json: bool) -> None:
    """PATCH_FILE's summary and signature status (signed by NAME: trusted / unknown key / INVALID)."""
    patch = _read_patch(patch_file)
    status = sg.check(patch, _store().trusted_fingerprints())
    s = patch.summary()
    if as_json:
        emit({"path": str(patch_file), **s, "signature": status.to_json()}, True)
        return
    click.echo(f"{patch_file}: {s['description'] or '(no description)'}")
    click.echo(f"  {s['entries']:,} entries, {s['changed_bytes']:,} bytes in {len(s['tensors'])} tensor(s)")
    if s["base_model_checksum"]:
        click.echo(f"  base model: {s['base_model_checksum']}")
    click.echo(f"  {status.text}")


# -- the checks patch apply / verify run ----------------------------------------------------------


def signature_report(loaded: list[tuple[str, object]], allow_invalid: bool = False) -> list[dict]:
    """For each (source, patch): its signature status and whether the policy lets it apply
    (`signature_ok`, with `signature_refused` saying why not). Never raises for a patch."""
    settings = _settings()
    trusted = sg.KeyStore(settings.data_dir).trusted_fingerprints()  # a corrupt list: a clear error
    out = []
    for source, patch in loaded:
        status = sg.check(patch, trusted)
        item = {"signature": status.to_json(), "signature_ok": True}
        try:
            warning = sg.enforce(status, settings.patch_signatures, source, allow_invalid=allow_invalid)
        except sg.SignatureRefused as e:
            item.update(signature_ok=False, signature_refused=e.to_dict())
        else:
            if warning:
                item["signature_warning"] = warning
        out.append(item)
    return out


def signature_gate(loaded: list[tuple[str, object]], allow_invalid: bool, as_json: bool) -> list[str]:
    """Refuse (raise) the first patch the PATCH_SIGNATURES policy refuses, before anything is
    read or written; otherwise the warnings (printed to stderr, so --json's stdout stays JSON)."""
    settings = _settings()
    warnings = sg.enforce_policy(loaded, settings.patch_signatures, sg.KeyStore(settings.data_dir),
                                 allow_invalid=allow_invalid)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    return warnings
