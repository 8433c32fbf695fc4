"""Signed patches: Ed25519 signatures checked with `cryptography` as the oracle over the documented
canonical bytes; every single-field tamper is INVALID; key files are 0600 and never overwritten;
the trust list; the PATCH_SIGNATURES policy in the CLI and the API; and the hostile signature
blocks and trust lists of tests/hostile.py (clear errors naming file and field, nothing staged lost).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from fastapi.testclient import TestClient
from hypothesis import given, settings as hsettings, strategies as st
from safetensors import safe_open

from tensor_surgery.surgery import hexpatch as hp
from tensor_surgery.surgery import signing as sg
from tensor_surgery.surgery.apply import runs_for_patches
from tensor_surgery.store import open_model

from .conftest import BASE_URL, assert_error, make_settings
from .hostile import SIGNATURE_CASES, TRUST_LIST_CASES

EMB = "model.embed_tokens.weight"  # BF16 [64, 16] in the tiny model
Q0 = "model.layers.0.self_attn.q_proj.weight"


# -- helpers ----------------------------------------------------------------------------------------


def tensor_bytes(model: Path, name: str) -> bytes:
    with safe_open(str(model), "np") as f:
        return f.get_tensor(name).tobytes()


def real_patch(model: Path, description: str = "flip three EMB bytes and one of Q0 — ünïcode ok") -> hp.HexPatch:
    """A patch that applies to the tiny model: entries in EMB (two) and Q0 (one), real original bytes."""
    emb, q0 = tensor_bytes(model, EMB), tensor_bytes(model, Q0)
    entries = [hp.PatchEntry(EMB, off, emb[off:off + 2], bytes(b ^ 0xFF for b in emb[off:off + 2]), "BF16", (64, 16))
               for off in (0, 64)]
    entries.append(hp.PatchEntry(Q0, 30, q0[30:32], bytes(b ^ 0x0F for b in q0[30:32]), "BF16", (16, 16), note="n"))
    return hp.HexPatch(entries, description, tensor_checksums={EMB: "sha256:" + hashlib.sha256(emb).hexdigest()})


def oracle_verify(doc: dict) -> bool:
    """The documented check, written from the README with `cryptography` alone: the file's JSON
    without `signature.value`, sorted keys, no whitespace, UTF-8, verified with the block's key."""
    doc = copy.deepcopy(doc)
    block = doc["signature"]
    sig = base64.b64decode(block.pop("value"))
    message = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw = base64.b64decode(block["public_key"])
    assert block["fingerprint"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
        return True
    except InvalidSignature:
        return False


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir) -> sg.KeyStore:
    s = sg.KeyStore(data_dir)
    s.new("alice")
    return s


@pytest.fixture
def signed_doc(tiny_model, store) -> dict:
    """A patch for the tiny model signed by alice (trusted), as the JSON object of its file."""
    return json.loads(sg.sign(real_patch(tiny_model), store.private_key("alice"), "alice").dumps())


def status_of(doc: dict | bytes, store: sg.KeyStore) -> sg.SignatureStatus:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return sg.check(hp.loads(data, "p.hexpatch"), store.trusted_fingerprints())


# -- the signature itself, against the oracle --------------------------------------------------------


def test_signature_verifies_independently_over_the_documented_bytes(signed_doc, store, data_dir):
    assert oracle_verify(signed_doc)
    block = signed_doc["signature"]
    assert block["algorithm"] == "ed25519" and block["signer"] == "alice"
    # the key in the block is the public half of the private key file (read by cryptography itself)
    private = load_pem_private_key((data_dir / "keys" / "alice.key").read_bytes(), password=None)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64decode(block["public_key"]) == raw and len(base64.b64decode(block["value"])) == 64
    # and our checker agrees: trusted, by the key's own name
    st = status_of(signed_doc, store)
    assert (st.status, st.signer, st.trusted_as, st.text) == ("trusted", "alice", "alice", "signed by alice (trusted)")
    # the canonical bytes are exactly what the oracle signs
    doc = copy.deepcopy(signed_doc)
    del doc["signature"]["value"]
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert sg.canonical_bytes(hp.loads(json.dumps(signed_doc), "p")) == expected
    assert "ünïcode".encode() in expected  # non-ASCII as itself, not \\u escapes


def test_a_signature_by_cryptography_itself_is_accepted(tiny_model, store):
    """The other direction: a block made by the oracle (not by `sign`) checks as valid."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = real_patch(tiny_model).to_json()
    doc["signature"] = {"algorithm": "ed25519", "signer": "carol", "public_key": base64.b64encode(raw).decode(),
                        "fingerprint": "sha256:" + hashlib.sha256(raw).hexdigest()}
    message = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    doc["signature"]["value"] = base64.b64encode(key.sign(message)).decode()
    st = status_of(doc, store)
    assert st.status == "unknown_key" and st.signer == "carol"
    assert st.text.startswith("signed by carol (unknown key sha256:")


def test_readers_that_do_not_know_the_block_ignore_it_and_the_patch_applies(tiny_model, signed_doc, run, tmp_path,
                                                                             monkeypatch, data_dir):
    plain = real_patch(tiny_model)
    parsed = hp.loads(json.dumps(signed_doc), "signed.hexpatch")
    assert parsed.entries == plain.entries and parsed.description == plain.description
    with open_model(tiny_model) as m:
        assert runs_for_patches(m, [("s", parsed)]) == runs_for_patches(m, [("p", plain)])
    # rewriting it (as the library does) keeps the block and the signature valid
    assert json.loads(parsed.dumps()) == signed_doc
    # and `patch apply` writes the patched bytes
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    f = tmp_path / "signed.hexpatch"
    f.write_text(json.dumps(signed_doc))
    r = run("patch", "apply", tiny_model, f, "--out", tmp_path / "out.safetensors")
    assert r.exit_code == 0, r.output
    after = tensor_bytes(tmp_path / "out.safetensors", EMB)
    e = plain.entries[0]
    assert after[e.offset_bytes:e.end] == e.new


def _swap_entries(d):
    d["patches"][0], d["patches"][1] = d["patches"][1], d["patches"][0]


def _flip_digit(key):
    def f(d):
        h = d["patches"][0][key]
        d["patches"][0][key] = h[:-1] + ("0" if h[-1] != "0" else "1")
    return f


def _other_key(d):
    """A consistent key and fingerprint of somebody else: well-formed, but not the signer's."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    d["signature"]["public_key"] = base64.b64encode(raw).decode()
    d["signature"]["fingerprint"] = "sha256:" + hashlib.sha256(raw).hexdigest()


TAMPERS = {
    "new_hex_one_digit": _flip_digit("new_hex"),
    "original_hex_one_digit": _flip_digit("original_hex"),
    "description": lambda d: d.__setitem__("description", d["description"] + "."),
    "offset": lambda d: d["patches"][1].__setitem__("offset_bytes", d["patches"][1]["offset_bytes"] + 2),
    "tensor_name": lambda d: d["patches"][2].__setitem__("tensor_name", "model.layers.1.self_attn.q_proj.weight"),
    "entry_order": _swap_entries,
    "entry_removed": lambda d: d["patches"].pop(),
    "entry_duplicated_elsewhere": lambda d: d["patches"].append({**d["patches"][0], "offset_bytes": 500}),
    "dtype": lambda d: d["patches"][0].__setitem__("dtype", "F16"),
    "shape": lambda d: d["patches"][0].__setitem__("shape_at_edit_time", [16, 64]),
    "note": lambda d: d["patches"][2].__setitem__("note", "m"),
    "tensor_checksums": lambda d: d["tensor_checksums"].__setitem__(EMB, "sha256:" + "1" * 64),
    "base_model_checksum_added": lambda d: d.__setitem__("base_model_checksum", "sha256:" + "2" * 64),
    "extra_top_level_key": lambda d: d.__setitem__("license", "MIT"),
    "signer_name": lambda d: d["signature"].__setitem__("signer", "mallory"),
    "key_and_fingerprint": _other_key,
    "extra_block_field": lambda d: d["signature"].__setitem__("comment", "hi"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_every_single_field_tamper_is_invalid(tamper, signed_doc, store):
    doc = copy.deepcopy(signed_doc)
    TAMPERS[tamper](doc)
    assert doc != signed_doc
    assert not oracle_verify(doc)  # the oracle agrees that it no longer verifies
    st = status_of(doc, store)
    assert st.status == "invalid", st
    assert "INVALID" in st.text and st.field == "signature.value"


REWRITES = {  # changes of form, not of meaning: the signature still holds
    "indented_differently": lambda d: json.dumps(d, indent=7).encode(),
    "keys_reordered": lambda d: json.dumps(dict(reversed(d.items()))).encode(),
    "hex_lower_case": lambda d: json.dumps({**d, "patches": [{**e, "original_hex": e["original_hex"].lower(),
                                                              "new_hex": e["new_hex"].lower()} for e in d["patches"]]}).encode(),
    "ascii_escaped": lambda d: json.dumps(d, ensure_ascii=True).encode(),
}


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_rewrites_that_change_no_meaning_keep_it_valid(rewrite, signed_doc, store):
    assert status_of(REWRITES[rewrite](signed_doc), store).status == "trusted"


@given(description=st.text(max_size=40), names=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4),
       offsets=st.lists(st.integers(0, 2**70), min_size=4, max_size=4),
       extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in hp.HexPatch([]).to_json() and k != "signature"),
                             st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=10)
                             | st.floats(allow_nan=False, allow_infinity=False) | st.lists(st.integers(), max_size=3), max_size=3),
       signer_extra=st.none() | st.text(max_size=10) | st.floats(allow_nan=False, allow_infinity=False))
@hsettings(max_examples=60, deadline=None)
def test_canonical_bytes_are_the_documented_json_for_any_content(description, names, offsets, extra, signer_extra):
    """Whichever serializer writes them (orjson when it can, json otherwise), the bytes are the
    documented json.dumps(sort_keys, no whitespace, ensure_ascii=False) of the patch."""
    entries = [hp.PatchEntry(n, offsets[i] + 8 * i, b"\x00\x01", b"\xfe\xff", note=n) for i, n in enumerate(names)]
    block = {"algorithm": "ed25519", "signer": "a", "public_key": "x", "fingerprint": "y", "value": "z"}
    if signer_extra is not None:
        block["comment"] = signer_extra
    patch = hp.HexPatch(entries, description, extra={**extra, "signature": block})
    doc = patch.to_json()
    doc["signature"] = {k: v for k, v in block.items() if k != "value"}
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert sg.canonical_bytes(patch) == expected


def test_minimal_form_signed_is_checked_in_its_full_form(tiny_model, store):
    """A minimal-form patch (no format/version) is signed as the reader sees it."""
    raw = json.dumps({"patches": [e.to_json() for e in real_patch(tiny_model).entries]}).encode()
    signed = sg.sign(hp.loads(raw, "m"), store.private_key("alice"), "alice")
    doc = json.loads(signed.dumps())
    assert doc["format"] == "hexpatch" and oracle_verify(doc)


def test_resigning_replaces_the_signature(signed_doc, store, tiny_model):
    bob = sg.KeyStore(store.folder.parent)
    bob.new("bob")
    again = sg.sign(hp.loads(json.dumps(signed_doc), "p"), bob.private_key("bob"), "bob")
    doc = json.loads(again.dumps())
    assert doc["signature"]["signer"] == "bob" and oracle_verify(doc)
    assert status_of(doc, store).text == "signed by bob (trusted)"


# -- keys and the trust list -----------------------------------------------------------------------


def test_private_key_file_is_0600_whatever_the_umask_and_never_overwritten(data_dir):
    s = sg.KeyStore(data_dir)
    old = os.umask(0)  # a permissive umask must not widen the key file
    try:
        s.new("wide")
    finally:
        os.umask(old)
    key = data_dir / "keys" / "wide.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
    assert not [p for p in (data_dir / "keys").iterdir() if p.name.startswith(".")]  # no temporary left
    before = key.read_bytes()
    with pytest.raises(sg.KeyExists, match="already exists"):
        s.new("wide")
    assert key.read_bytes() == before
    assert [k["name"] for k in s.trusted()] == ["wide"]


def test_a_private_key_others_can_read_is_refused(data_dir, tiny_model):
    s = sg.KeyStore(data_dir)
    s.new("loose")
    key = data_dir / "keys" / "loose.key"
    key.chmod(0o644)
    with pytest.raises(sg.InvalidKeyFile, match="chmod 600") as info:
        s.private_key("loose")
    assert info.value.context["field"] == "mode" and info.value.context["file"] == str(key)
    key.chmod(0o600)
    assert sg.check(sg.sign(real_patch(tiny_model), s.private_key("loose"), "loose"), s.trusted_fingerprints()).status == "trusted"


def test_new_key_refuses_a_planted_key_file_or_link_and_never_writes_through_it(data_dir, tmp_path):
    s = sg.KeyStore(data_dir)
    s.folder.mkdir(parents=True)
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (s.folder / "mallory.key").symlink_to(target)
    with pytest.raises(sg.KeyExists):
        s.new("mallory")
    assert target.read_text() == "precious"


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "trusted.json/.."])
def test_key_names_are_names_not_paths(data_dir, name):
    with pytest.raises(sg.InvalidRequest):
        sg.KeyStore(data_dir).new(name)
    assert not (data_dir / "keys").exists() or not list((data_dir / "keys").glob("*.key"))


def test_unknown_key_until_trusted_then_untrusted(tiny_model, tmp_path, store):
    other = sg.KeyStore(tmp_path / "elsewhere")
    other.new("bob")
    doc = json.loads(sg.sign(real_patch(tiny_model), other.private_key("bob"), "bob").dumps())
    st = status_of(doc, store)
    assert st.status == "unknown_key" and st.fingerprint == doc["signature"]["fingerprint"]
    exported = tmp_path / "bob.pub.json"
    exported.write_text(json.dumps(other.public_document("bob")))
    assert store.trust_file(exported)["already_trusted"] is False
    assert store.trust_file(exported)["already_trusted"] is True
    assert status_of(doc, store).status == "trusted"
    # trusted under another name: the trust list's name is shown beside the claimed one
    store.untrust("bob")
    store.trust_file(exported, "robert")
    assert status_of(doc, store).text == "signed by bob (trusted as robert)"
    store.untrust(doc["signature"]["fingerprint"])
    assert status_of(doc, store).status == "unknown_key"
    with pytest.raises(sg.KeyNotFound):
        store.untrust("robert")


def test_trust_accepts_a_pem_public_key(tmp_path, store):
    from cryptography.hazmat.primitives.serialization import PublicFormat as PF

    key = Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.public_bytes(Encoding.PEM, PF.SubjectPublicKeyInfo))
    with pytest.raises(sg.InvalidRequest, match="--name"):
        store.trust_file(pem)
    got = store.trust_file(pem, "pem-key")
    assert got["fingerprint"] == "sha256:" + hashlib.sha256(key.public_bytes(Encoding.Raw, PF.Raw)).hexdigest()


BAD_PUBLIC_FILES = {
    "not_json": (b"nope", None, "not a public key file"),
    "wrong_format": (json.dumps({"format": "x"}).encode(), "format", "format must be"),
    "wrong_algorithm": (json.dumps({"format": sg.PUBLIC_FORMAT, "algorithm": "rsa"}).encode(), "algorithm", "not supported"),
    "bad_base64": (json.dumps({"format": sg.PUBLIC_FORMAT, "algorithm": "ed25519", "name": "k",
                               "public_key": "@@@@"}).encode(), "public_key", "not valid base64"),
    "short_key": (json.dumps({"format": sg.PUBLIC_FORMAT, "algorithm": "ed25519", "name": "k",
                              "public_key": base64.b64encode(b"x" * 16).decode()}).encode(), "public_key", "16 bytes"),
    "fingerprint_mismatch": (json.dumps({"format": sg.PUBLIC_FORMAT, "algorithm": "ed25519", "name": "k",
                                         "public_key": base64.b64encode(b"x" * 32).decode(),
                                         "fingerprint": "sha256:" + "0" * 64}).encode(), "fingerprint", "not the sha256"),
    "rsa_pem": (None, "algorithm", "not an Ed25519 public key"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUBLIC_FILES))
def test_keys_trust_refuses_bad_public_key_files(case, run, tmp_path, monkeypatch, store):
    data, field, words = BAD_PUBLIC_FILES[case]
    if data is None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        data = rsa.generate_private_key(65537, 1024).public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    f = tmp_path / "k.json"
    f.write_bytes(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(store.folder.parent))
    before = store.trust_path.read_bytes()
    r = run("keys", "trust", f, "--json")
    assert r.exit_code == 2, r.output
    err = json.loads(r.stdout)["error"]
    assert words in err["message"] and err["file"] == str(f) and err.get("field") == field
    assert store.trust_path.read_bytes() == before


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.delenv("PATCH_SIGNATURES", raising=False)
    return monkeypatch


def test_cli_keys_and_sign_round_trip(run, cli_env, tiny_model, tmp_path, data_dir):
    r = run("keys", "new", "alice", "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert stat.S_IMODE(Path(made["private_key"]).stat().st_mode) == 0o600
    assert run("keys", "new", "alice").exit_code == 2  # never overwritten
    listed = json.loads(run("keys", "list", "--json").stdout)
    assert [k["name"] for k in listed["keys"]] == [k["name"] for k in listed["trusted"]] == ["alice"]
    exported = tmp_path / "alice.pub.json"
    assert run("keys", "export", "alice", "--out", exported).exit_code == 0
    assert json.loads(exported.read_text())["fingerprint"] == made["fingerprint"]

    p = tmp_path / "p.hexpatch"
    p.write_text(real_patch(tiny_model).dumps())
    assert json.loads(run("patch", "show", p, "--json").stdout)["signature"]["status"] == "unsigned"
    r = run("patch", "sign", p, "--key", "alice", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(p.read_text())
    assert oracle_verify(doc) and doc["signature"]["fingerprint"] == made["fingerprint"]
    assert "signed by alice (trusted)" in run("patch", "show", p).stdout
    r = run("patch", "verify", tiny_model, p)
    assert r.exit_code == 0 and "p.hexpatch: signed by alice (trusted)" in r.stdout, r.output

    # --out leaves the original alone; an existing --out is refused
    out = tmp_path / "q.hexpatch"
    assert run("patch", "sign", p, "--key", "alice", "--out", out).exit_code == 0
    assert run("patch", "sign", p, "--key", "alice", "--out", out).exit_code == 2
    assert run("patch", "sign", p, "--key", "nobody").exit_code == 2

    # tampered: verify says INVALID and fails; apply refuses unless overridden
    doc["description"] = "changed"
    p.write_text(json.dumps(doc))
    r = run("patch", "verify", tiny_model, p, "--json")
    report = json.loads(r.stdout)["patches"][0]
    assert r.exit_code == 1 and report["ok"] is True and report["signature_ok"] is False
    assert report["signature"]["status"] == "invalid"
    r = run("patch", "verify", tiny_model, p)
    assert "signed by alice (INVALID: " in r.stdout


def _patches(tiny_model, store, tmp_path) -> dict[str, Path]:
    """One patch file of each kind: unsigned, trusted (alice), unknown key, invalid."""
    other = sg.KeyStore(tmp_path / "elsewhere")
    other.new("bob")
    plain = real_patch(tiny_model)
    docs = {
        "unsigned": plain.to_json(),
        "trusted": json.loads(sg.sign(plain, store.private_key("alice"), "alice").dumps()),
        "unknown": json.loads(sg.sign(plain, other.private_key("bob"), "bob").dumps()),
    }
    docs["invalid"] = {**docs["trusted"], "description": "quietly changed"}
    folder = tmp_path / "kinds"
    folder.mkdir(exist_ok=True)
    out = {}
    for kind, doc in docs.items():
        out[kind] = folder / f"{kind}.hexpatch"
        out[kind].write_text(json.dumps(doc))
    return out


# policy -> the kinds it applies (the others are refused); "invalid" applies under any policy but
# `off` only with --allow-invalid-signature
APPLIES = {
    "off": {"unsigned", "trusted", "unknown", "invalid"},
    "warn": {"unsigned", "trusted", "unknown"},
    "require-signed": {"trusted", "unknown"},
    "require-trusted": {"trusted"},
}


@pytest.mark.parametrize("policy", sorted(APPLIES))
def test_cli_apply_follows_the_policy(policy, run, cli_env, tiny_model, store, tmp_path):
    cli_env.setenv("PATCH_SIGNATURES", policy)
    files = _patches(tiny_model, store, tmp_path)
    for kind, f in files.items():
        out = tmp_path / f"out-{policy}-{kind}.safetensors"
        r = run("patch", "apply", tiny_model, f, "--out", out, "--json")
        if kind in APPLIES[policy]:
            assert r.exit_code == 0, (kind, r.output)
            assert out.exists()
            if kind == "unknown" and policy != "off":
                assert "warning: " in r.stderr and "unknown key" in r.stderr
        else:
            err = json.loads(r.stdout)["error"]
            assert not out.exists(), kind  # refused before any work
            assert err["file"] == str(f)
            if kind == "invalid":
                assert r.exit_code == 2 and err["code"] == "signature_invalid" and "INVALID" in err["message"]
                assert "--allow-invalid-signature" in err["message"]
                r = run("patch", "apply", tiny_model, f, "--out", out, "--allow-invalid-signature")
                if policy == "warn":
                    assert r.exit_code == 0 and out.exists() and "INVALID" in r.stderr, r.output
                else:  # an invalid signature proves no signer: the override does not satisfy require-*
                    assert r.exit_code == 1 and not out.exists() and "even with the override" in r.stderr, r.output
            else:
                assert r.exit_code == 1 and err["code"] == "signature_refused" and err["policy"] == policy
                assert policy in err["message"]


def test_cli_in_place_apply_refused_before_touching_the_model(run, cli_env, tiny_model, store, tmp_path):
    files = _patches(tiny_model, store, tmp_path)
    before = tiny_model.read_bytes()
    r = run("patch", "apply", tiny_model, files["invalid"], "--in-place")
    assert r.exit_code == 2 and "INVALID" in r.stderr
    assert tiny_model.read_bytes() == before and [p.name for p in tiny_model.parent.iterdir()] == ["model.safetensors"]


def test_cli_bad_policy_setting_is_a_clear_error(run, cli_env, tiny_model, store, tmp_path):
    cli_env.setenv("PATCH_SIGNATURES", "strict")
    files = _patches(tiny_model, store, tmp_path)
    r = run("patch", "apply", tiny_model, files["trusted"], "--out", tmp_path / "o.safetensors", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]["field"] == "PATCH_SIGNATURES"


# -- the API ---------------------------------------------------------------------------------------


def policy_client(tmp_path, tiny_model, policy: str):
    return TestClient(__import__("tensor_surgery.web.app", fromlist=["create_app"]).create_app(
        make_settings(tmp_path, tiny_model, allowed_roots=[tmp_path], patch_signatures=policy)), base_url=BASE_URL)


def into_library(files: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "patches"
    lib.mkdir(exist_ok=True)
    for kind, f in files.items():
        (lib / f.name).write_bytes(f.read_bytes())


def staged(client) -> list:
    return [e["description"] for e in client.get("/api/edits").json()["edits"]]


@pytest.mark.parametrize("policy", sorted(APPLIES))
def test_api_load_follows_the_policy(policy, tmp_path, tiny_model, store):
    files = _patches(tiny_model, store, tmp_path)
    into_library(files, tmp_path)
    with policy_client(tmp_path, tiny_model, policy) as client:
        listed = {p["name"]: p["signature"] for p in client.get("/api/patches").json()["patches"]}
        assert {n: s["status"] for n, s in listed.items()} == {
            "invalid.hexpatch": "invalid", "trusted.hexpatch": "trusted",
            "unknown.hexpatch": "unknown_key", "unsigned.hexpatch": "unsigned"}
        assert listed["trusted.hexpatch"]["text"] == "signed by alice (trusted)"
        for kind in files:
            name = f"{kind}.hexpatch"
            before = staged(client)
            verdict = client.post(f"/api/patches/{name}/verify").json()
            assert verdict["signature_ok"] is (kind in APPLIES[policy]), (kind, verdict)
            r = client.post(f"/api/patches/{name}/load")
            if kind in APPLIES[policy]:
                assert r.status_code == 200, (kind, r.text)
                assert bool(r.json()["signature_warnings"]) is (kind == "unknown" and policy != "off")
                client.post("/api/edits/undo")
                continue
            if kind == "invalid":
                err = assert_error(r, 422, "signature_invalid", "INVALID")
                assert err["signature"]["status"] == "invalid"
            else:
                err = assert_error(r, 403, "signature_refused", policy)
            assert err["file"] == name
            assert staged(client) == before  # nothing staged, nothing lost
        # the explicit override loads the invalid one, but does not make it count as signed
        r = client.post("/api/patches/invalid.hexpatch/load", params={"allow_invalid_signature": "true"})
        if policy in ("off", "warn"):
            assert r.status_code == 200, r.text
            assert r.json()["signature_warnings"] == ([] if policy == "off" else [
                "invalid.hexpatch: the signature is INVALID (the signature does not match the patch's content: "
                "it was changed after signing); applied anyway, as asked"])
        else:
            assert_error(r, 403, "signature_refused", "even with the override")


def test_api_export_applies_the_policy_to_library_patches(tmp_path, tiny_model, store):
    files = _patches(tiny_model, store, tmp_path)
    into_library(files, tmp_path)
    with policy_client(tmp_path, tiny_model, "require-trusted") as client:
        for kind in ("unsigned", "unknown", "invalid"):
            out = tmp_path / f"export-{kind}"
            r = client.post("/api/export", json={"out": str(out), "patches": [f"{kind}.hexpatch"]})
            assert r.status_code in (403, 422) and r.json()["error"]["code"].startswith("signature_"), r.text
            assert not out.exists()
        r = client.post("/api/export", json={"out": str(tmp_path / "export-ok"), "patches": ["trusted.hexpatch"]})
        assert r.status_code == 202, r.text


def test_api_show_and_annotate(tmp_path, tiny_model, store):
    files = _patches(tiny_model, store, tmp_path)
    into_library(files, tmp_path)
    with policy_client(tmp_path, tiny_model, "warn") as client:
        shown = client.get("/api/patches/trusted.hexpatch").json()
        assert shown["signature_status"]["status"] == "trusted" and shown["signature"]["signer"] == "alice"
        # the description is signed: annotating drops the signature rather than leave it INVALID
        r = client.patch("/api/patches/trusted.hexpatch", json={"description": "new words"})
        assert r.status_code == 200 and r.json()["signature_removed"] is True
        listed = {p["name"]: p for p in client.get("/api/patches").json()["patches"]}
        assert listed["trusted.hexpatch"]["signature"]["status"] == "unsigned"
        assert listed["trusted.hexpatch"]["description"] == "new words"


# -- hostile signature blocks and trust lists (tests/hostile.py) --------------------------------------


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_hostile_signature_blocks_are_invalid_naming_the_field(case, signed_doc, store):
    mutate, field, words = SIGNATURE_CASES[case]
    doc = copy.deepcopy(signed_doc)
    mutate(doc)
    t0 = time.perf_counter()
    st = status_of(doc, store)
    assert time.perf_counter() - t0 < 0.5
    assert st.status == "invalid" and st.field == field and words in st.reason, st


def _unsignable(kind: str, signed_doc: dict) -> bytes:
    """A signed patch with an unknown top-level key that orjson reads but no canonical JSON can hold."""
    text = json.dumps({**signed_doc, "extra": "@"})
    return text.replace('"@"', "NaN" if kind == "nan" else "[" * 1000 + "]" * 1000).encode()


@pytest.mark.parametrize("kind", ["nan", "nested_1000_deep"])
def test_content_without_a_canonical_form_is_invalid_not_a_crash(kind, signed_doc, store, client, settings, run,
                                                                   cli_env, tmp_path, tiny_model):
    data = _unsignable(kind, signed_doc)
    st = status_of(data, store)
    assert st.status == "invalid" and "canonical" in st.reason and st.field is None
    with pytest.raises(sg.CannotSign):
        sg.sign(hp.loads(data, "p"), store.private_key("alice"), "alice")
    settings.patch_dir.mkdir(parents=True, exist_ok=True)
    (settings.patch_dir / "odd.hexpatch").write_bytes(data)
    assert client.get("/api/patches").json()["patches"][0]["signature"]["status"] == "invalid"
    assert_error(client.post("/api/patches/odd.hexpatch/load"), 422, "signature_invalid", "canonical")
    f = tmp_path / "odd.hexpatch"
    f.write_bytes(data)
    r = run("patch", "sign", f, "--key", "alice")
    assert r.exit_code == 2 and "canonical" in r.stderr and f.read_bytes() == data


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    """One library holding every hostile signature case, a trusted key, and a staged edit to keep."""
    from .conftest import write_tiny_llama

    tmp = tmp_path_factory.mktemp("hostile-signatures")
    model = write_tiny_llama(tmp / "models" / "tiny" / "model.safetensors")
    store = sg.KeyStore(tmp / "data")
    store.new("alice")
    good = json.loads(sg.sign(real_patch(model), store.private_key("alice"), "alice").dumps())
    (tmp / "patches").mkdir()
    for case, (mutate, _, _) in SIGNATURE_CASES.items():
        doc = copy.deepcopy(good)
        mutate(doc)
        (tmp / "patches" / f"{case}.hexpatch").write_text(json.dumps(doc))
    (tmp / "patches" / "good.hexpatch").write_text(json.dumps(good))
    return tmp, model, store


@pytest.fixture(scope="module")
def hostile_client(hostile_env):
    tmp, model, _ = hostile_env
    with TestClient(__import__("tensor_surgery.web.app", fromlist=["create_app"]).create_app(
            make_settings(tmp, model, allowed_roots=[tmp])), base_url=BASE_URL) as client:
        r = client.post("/api/edit_tensor", json={"tensor_name": "model.norm.weight", "op": "scale", "factor": 2.0})
        assert r.status_code == 200, r.text
        yield client


def test_hostile_signature_blocks_through_the_api(hostile_client):
    client = hostile_client
    before = staged(client)
    assert len(before) == 1
    listed = {p["name"]: p for p in client.get("/api/patches").json()["patches"]}
    for case, (_, field, words) in SIGNATURE_CASES.items():
        name = f"{case}.hexpatch"
        assert listed[name]["signature"]["status"] == "invalid" and listed[name]["signature"]["field"] == field
        t0 = time.perf_counter()
        err = assert_error(client.post(f"/api/patches/{name}/load"), 422, "signature_invalid", words)
        assert time.perf_counter() - t0 < 1.0
        assert err["file"] == name and err["field"] == field
        verdict = client.post(f"/api/patches/{name}/verify").json()
        assert verdict["signature_ok"] is False and verdict["ok"] is False
        assert staged(client) == before  # nothing staged lost, nothing added
    assert listed["good.hexpatch"]["signature"]["status"] == "trusted"


def test_hostile_signature_blocks_through_the_cli(hostile_env, run, monkeypatch):
    tmp, model, _ = hostile_env
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("DATA_DIR", str(tmp / "data"))
    monkeypatch.delenv("PATCH_SIGNATURES", raising=False)
    for case, (_, field, words) in SIGNATURE_CASES.items():
        f = tmp / "patches" / f"{case}.hexpatch"
        r = run("patch", "apply", model, f, "--out", tmp / "never.safetensors")
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, r.output)
        assert str(f) in lines[0] and words in lines[0], lines
        shown = json.loads(run("patch", "show", f, "--json").stdout)["signature"]
        assert shown["status"] == "invalid" and shown["field"] == field
    assert not (tmp / "never.safetensors").exists()


@pytest.mark.parametrize("case", sorted(TRUST_LIST_CASES))
def test_corrupt_trust_list_is_a_clear_error_and_loses_nothing(case, hostile_env, hostile_client, run, monkeypatch):
    tmp, model, store = hostile_env
    content, field, words = TRUST_LIST_CASES[case]
    good = store.trust_path.read_bytes()
    store.trust_path.write_bytes(content)
    try:
        client = hostile_client
        before = staged(client)
        r = client.get("/api/patches")  # the list still answers, saying what is wrong
        assert r.status_code == 200 and words in r.json()["trust_error"]["message"]
        for route in ("load", "verify"):
            t0 = time.perf_counter()
            err = assert_error(client.post(f"/api/patches/good.hexpatch/{route}"), 422, "invalid_key_file", words)
            assert time.perf_counter() - t0 < 1.0
            assert err["file"] == str(store.trust_path) and err.get("field", "") == field
        assert staged(client) == before
        # the CLI: exit 2, one line naming the trust list
        monkeypatch.chdir(tmp)
        monkeypatch.setenv("DATA_DIR", str(tmp / "data"))
        r = run("patch", "verify", model, tmp / "patches" / "good.hexpatch")
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and str(store.trust_path) in lines[0] and words in lines[0], r.output
        assert run("keys", "list").exit_code == 2
        assert run("keys", "new", "carol").exit_code == 2  # refused before the key pair exists
        assert not (store.folder / "carol.key").exists()
    finally:
        store.trust_path.write_bytes(good)
