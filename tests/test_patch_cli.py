"""`tensor-surgery patch apply|verify|diff|invert|recover`: exit codes 0/1/2, --json, byte-exact
results checked against files written and modified independently of our writer."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensor_surgery.store import open_model
from tensor_surgery.surgery import apply as apply_mod
from tensor_surgery.surgery import diff as diff_mod
from tensor_surgery.surgery import hexpatch as hp

from .conftest import REPO, write_tiny_llama
from .surgery_helpers import (
    SIDE,
    add_side_files,
    expected_bytes,
    flip_bytes,
    header_of,
    runs_of,
    sha256,
    tree_digest,
    write_patch,
    write_sharded,
)

EMB = "model.embed_tokens.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"


@pytest.fixture
def hf_tiny(tiny_model) -> Path:
    add_side_files(tiny_model.parent)
    return tiny_model


@pytest.fixture
def patch_file(hf_tiny, tmp_path) -> Path:
    return write_patch(tmp_path / "p" / "flip.hexpatch", flip_bytes(hf_tiny, EMB, [0, 64, 200]) + flip_bytes(hf_tiny, Q0, [30]))


def modify_copy(src: Path, dst: Path, edits: dict[str, list[tuple[int, bytes]]]) -> Path:
    """A copy of a safetensors file with some tensor bytes overwritten (the 'fine-tune')."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(expected_bytes(src, edits))
    return dst


# -- apply --out -------------------------------------------------------------------------------------


def test_apply_out_folder_and_file(run, hf_tiny, patch_file, tmp_path):
    patch = hp.loads(patch_file.read_bytes())
    runs = runs_of(patch.entries)
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["patched_tensors"] == 2 and res["patched_bytes"] == 8 and res["layout"] == "same"
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == expected_bytes(hf_tiny, runs)
    assert all((tmp_path / "out" / n).read_text() == t for n, t in SIDE.items())
    # a single .safetensors file, text output
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "one.safetensors")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "8 patched bytes" in r.stdout
    assert (tmp_path / "one.safetensors").read_bytes() == expected_bytes(hf_tiny, runs)
    # the output exists now: refused as bad input (exit 2: choose another OUT), unless --overwrite
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "one.safetensors")
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "one.safetensors", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]["code"] == "output_exists"
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "one.safetensors", "--overwrite")
    assert r.exit_code == 0, r.output


def test_apply_stacked_patches_in_order_and_reshard(run, hf_tiny, patch_file, tmp_path):
    """A second patch made on top of the first applies after it; --max-shard-size re-shards."""
    first = hp.loads(patch_file.read_bytes())
    mid = modify_copy(hf_tiny, tmp_path / "mid.safetensors", runs_of(first.entries))
    second = write_patch(tmp_path / "p" / "second.hexpatch", flip_bytes(mid, EMB, [0], 4))  # overlaps the first
    final = expected_bytes(mid, runs_of(hp.loads(second.read_bytes()).entries))
    r = run("patch", "apply", hf_tiny, patch_file, second, "--out", tmp_path / "two.safetensors")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "two.safetensors").read_bytes() == final
    # in the other order the second does not apply: nothing is written
    r = run("patch", "apply", hf_tiny, second, patch_file, "--out", tmp_path / "never")
    assert r.exit_code == 1 and "conflict" in r.stderr and not (tmp_path / "never").exists()
    # re-sharded output, opened by our store: same tensor bytes as the single-file result
    r = run("patch", "apply", hf_tiny, patch_file, second, "--out", tmp_path / "sharded", "--max-shard-size", "4KB")
    assert r.exit_code == 0, r.output
    with open_model(tmp_path / "sharded") as a, open_model(tmp_path / "two.safetensors") as b:
        assert len(a.files) > 1 and set(a.tensors) == set(b.tensors)
        assert all(bytes(a.tensor(n).raw()) == bytes(b.tensor(n).raw()) for n in b.tensors)


def test_apply_needs_exactly_one_target(run, hf_tiny, patch_file, tmp_path):
    assert run("patch", "apply", hf_tiny, patch_file).exit_code == 2
    r = run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "o", "--in-place")
    assert r.exit_code == 2 and "exactly one" in r.stderr
    assert run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "o", "--max-shard-size", "big").exit_code == 2
    assert not (tmp_path / "o").exists()


# -- verify ------------------------------------------------------------------------------------------


def bad_patch(hf_tiny: Path, path: Path) -> Path:
    good = flip_bytes(hf_tiny, EMB, [0, 8])
    entries = [
        good[0],
        hp.PatchEntry(EMB, 8, good[1].new, good[1].original, "BF16"),  # wrong original bytes
        hp.PatchEntry("model.missing.weight", 0, b"\x00", b"\x01"),
        hp.PatchEntry(NORM, 60, b"\x00" * 8, b"\x01" * 8, "F32"),  # past the end (64 bytes)
        hp.PatchEntry(Q0, 0, b"\x00\x00", b"\x00\x00", "F32"),  # wrong dtype
    ]
    return write_patch(path, entries)


def test_verify_clean_and_conflicts(run, hf_tiny, patch_file, tmp_path):
    r = run("patch", "verify", hf_tiny, patch_file)
    assert r.exit_code == 0 and "applies cleanly (4 entries)" in r.stdout
    bad = bad_patch(hf_tiny, tmp_path / "p" / "bad.hexpatch")
    r = run("patch", "verify", hf_tiny, patch_file, bad)
    assert r.exit_code == 1
    lines = r.stdout.strip().splitlines()
    assert lines[0].endswith("applies cleanly (4 entries)")
    # in order: entry 0 of bad.hexpatch was already applied by flip.hexpatch, so it conflicts too
    assert lines[1].endswith("5 conflict(s) (5 entries)")
    # a mismatch is one sentence: what the bytes hold, where, and what the patch expects there
    entries = hp.loads(bad.read_bytes()).entries
    state = expected_bytes(hf_tiny, runs_of(hp.loads(patch_file.read_bytes()).entries))  # after the first
    head, meta = header_of(hf_tiny)
    emb_start = len(head) + meta[EMB]["data_offsets"][0]
    for i in (0, 1):
        e = entries[i]
        held = state[emb_start + e.offset_bytes : emb_start + e.offset_bytes + len(e.original)]
        sentence = (f"  - patches[{i}]: {EMB!r} holds {held.hex().upper()} at byte {e.offset_bytes}, "
                    f"where the patch expects {e.original.hex().upper()}")
        assert held != e.original and sentence in lines, (sentence, lines)
    for i, what in [(2, "no tensor 'model.missing.weight'"), (3, "past the end"), (4, "made for F32")]:
        assert any(f"patches[{i}]" in ln and what in ln for ln in lines[2:]), (i, lines)
    assert " found " not in r.stdout
    r = run("patch", "verify", hf_tiny, bad, "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["ok"] is False
    assert [c["kind"] for c in out["patches"][0]["conflicts"]] == ["mismatch", "unknown_tensor", "out_of_range", "dtype"]
    assert [c["entry"] for c in out["patches"][0]["conflicts"]] == [1, 2, 3, 4]
    mismatch = out["patches"][0]["conflicts"][0]
    assert mismatch["expected_hex"] == entries[1].original.hex().upper()
    assert mismatch["actual_hex"] == entries[1].new.hex().upper()  # the base holds what entry 1 writes
    # the model is untouched by verifying
    assert (hf_tiny.parent / "model.safetensors").read_bytes() == hf_tiny.read_bytes()


def test_verify_says_already_applied(run, hf_tiny, patch_file, tmp_path):
    # the same patch twice, in order: the second finds every range holding its new bytes
    r = run("patch", "verify", hf_tiny, patch_file, patch_file)
    lines = r.stdout.strip().splitlines()
    assert r.exit_code == 1 and lines[0].endswith("applies cleanly (4 entries)"), lines
    assert "already applied" in lines[1] and len(lines) == 2, lines  # no hex dumps
    out = json.loads(run("patch", "verify", hf_tiny, patch_file, patch_file, "--json").stdout)
    assert [p["already_applied"] for p in out["patches"]] == [False, True]
    # on a model that was patched with it (checked on the raw file bytes first)
    out_model = tmp_path / "patched.safetensors"
    assert run("patch", "apply", hf_tiny, patch_file, "--out", out_model).exit_code == 0
    entries = hp.loads(patch_file.read_bytes()).entries
    head, meta = header_of(out_model)
    data = out_model.read_bytes()
    for e in entries:  # the oracle: the patched file holds new_hex at every entry
        start = len(head) + meta[e.tensor_name]["data_offsets"][0] + e.offset_bytes
        assert data[start:start + len(e.new)] == e.new
    r = run("patch", "verify", out_model, patch_file)
    assert r.exit_code == 1 and "already applied" in r.stdout, r.stdout
    # a patch that conflicts for another reason is not called applied
    bad = bad_patch(hf_tiny, tmp_path / "p" / "bad.hexpatch")
    out = json.loads(run("patch", "verify", hf_tiny, bad, "--json").stdout)
    assert out["patches"][0]["already_applied"] is False


def test_verify_checks_base_model_checksum(run, hf_tiny, tmp_path):
    with open_model(hf_tiny) as m:
        real = hp.model_checksum(m)
    entries = flip_bytes(hf_tiny, EMB, [0])
    p = hp.HexPatch(entries, "with checksum", base_model_checksum=real)
    ok = tmp_path / "ok.hexpatch"
    ok.write_text(p.dumps())
    assert run("patch", "verify", hf_tiny, ok).exit_code == 0
    p.base_model_checksum = "sha256:" + "0" * 64
    wrong = tmp_path / "wrong.hexpatch"
    wrong.write_text(p.dumps())
    r = run("patch", "verify", hf_tiny, wrong, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["patches"][0]["conflicts"][0]["kind"] == "checksum"
    assert run("patch", "apply", hf_tiny, wrong, "--out", tmp_path / "o").exit_code == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, what", [
    (b"{not json", "not a UTF-8 JSON"),
    (b'{"patches": [{"tensor_name": "x", "offset_bytes": 0, "original_hex": "ABC", "new_hex": "ABC"}]}', "odd number"),
    (b'{"format": "hexpatch", "version": 7, "patches": []}', "version 7"),
    (b'{"patches": [{"tensor_name": "x", "offset_bytes": -1, "original_hex": "00", "new_hex": "01"}]}', "offset_bytes"),
    (b"\xff\xfe", "not a UTF-8 JSON"),
])
def test_malformed_patch_is_exit_2_one_line(run, hf_tiny, tmp_path, content, what):
    bad = tmp_path / "broken.hexpatch"
    bad.write_bytes(content)
    for args in (("verify", hf_tiny, bad), ("apply", hf_tiny, bad, "--out", tmp_path / "o"), ("invert", bad, "--out", tmp_path / "i")):
        r = run("patch", *args)
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and what in lines[0], lines
    assert not (tmp_path / "o").exists() and not (tmp_path / "i").exists()
    r = run("patch", "verify", hf_tiny, tmp_path / "missing.hexpatch", "--json")
    assert r.exit_code == 2 and "missing.hexpatch" in json.loads(r.stdout)["error"]["message"]


# -- diff ----------------------------------------------------------------------------------------------


def test_diff_then_apply_reproduces_b(run, hf_tiny, tmp_path, monkeypatch):
    edits = {
        EMB: [(0, b"\x11\x22"), (10, b"\x33"), (100, b"\x44" * 40), (2046, b"\x55\x66")],  # runs and gaps
        NORM: [(60, b"\x00\x00\x00\x40")],
    }
    b = modify_copy(hf_tiny, tmp_path / "b" / "model.safetensors", edits)
    # small chunks so that changed runs cross chunk edges
    monkeypatch.setattr(diff_mod, "CHUNK", 64)
    out = tmp_path / "a2b.hexpatch"
    r = run("patch", "diff", hf_tiny, b, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    patch = hp.loads(out.read_bytes(), str(out))
    with open_model(hf_tiny) as m:
        assert res["base_model_checksum"] == patch.base_model_checksum == hp.model_checksum(m)
    assert res["entries"] == len(patch.entries) and patch.tensors == [EMB, NORM]
    # minimal: every entry starts and ends on a changed byte; nothing outside the edits
    src = hf_tiny.read_bytes()
    for e in patch.entries:
        assert e.original[0] != e.new[0] and e.original[-1] != e.new[-1]
    assert res["changed_bytes"] <= sum(len(d) for rs in edits.values() for _, d in rs) + 16 * 4
    # apply A + patch -> byte-identical to B (header included)
    r = run("patch", "apply", hf_tiny, out, "--out", tmp_path / "c.safetensors")
    assert r.exit_code == 0, r.output
    assert sha256(tmp_path / "c.safetensors") == sha256(b)
    assert hf_tiny.read_bytes() == src
    # A vs A: an empty patch
    r = run("patch", "diff", hf_tiny, hf_tiny, "--out", tmp_path / "none.hexpatch", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["entries"] == 0
    assert hp.loads((tmp_path / "none.hexpatch").read_bytes()).entries == []


def test_diff_sharded_models(run, tmp_path):
    a = write_sharded(tmp_path / "a", shards=3, seed=1)
    b_folder = tmp_path / "b"
    shutil.copytree(a.parent, b_folder)
    for shard in sorted(b_folder.glob("*.safetensors")):
        _, head = header_of(shard)
        name = next(k for k in head if k != "__metadata__")
        modify_copy(shard, shard, {name: [(4, b"\xAB\xCD")]})
    out = tmp_path / "ab.hexpatch"
    r = run("patch", "diff", a.parent, b_folder, "--out", out)
    assert r.exit_code == 0 and "3 entries" in r.stdout, r.output
    r = run("patch", "apply", a.parent, out, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert tree_digest(tmp_path / "c") == {k: v for k, v in tree_digest(b_folder).items() if k != "notes.txt"}


def test_diff_refuses_other_layouts(run, hf_tiny, tmp_path):
    other = write_tiny_llama(tmp_path / "other" / "model.safetensors", vocab=80)  # embed shape differs
    r = run("patch", "diff", hf_tiny, other, "--out", tmp_path / "x.hexpatch")
    assert r.exit_code == 2
    assert "transplant" in r.stderr and "model.embed_tokens.weight" in r.stderr
    fewer = write_tiny_llama(tmp_path / "fewer" / "model.safetensors", layers=1)
    r = run("patch", "diff", hf_tiny, fewer, "--out", tmp_path / "x.hexpatch", "--json")
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert "transplant" in err["message"] and "only in A" in err["message"]
    assert not (tmp_path / "x.hexpatch").exists() and not list(tmp_path.glob(".x.hexpatch*"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_diff_apply_roundtrip_property(tmp_path_factory, data):
    """Any set of byte changes: diff finds them, applying the diff reproduces B, the inverse restores A."""
    from tensor_surgery.surgery.apply import runs_for_patches
    from tensor_surgery.surgery.diff import diff_models
    from tensor_surgery.surgery.writer import export_model

    tmp = tmp_path_factory.mktemp("prop")
    a = write_tiny_llama(tmp / "a.safetensors", seed=data.draw(st.integers(0, 3)))
    with open_model(a) as m:
        sizes = {n: m.tensor(n).nbytes for n in m.tensors}
    edits: dict[str, list[tuple[int, bytes]]] = {}
    for _ in range(data.draw(st.integers(0, 6))):
        name = data.draw(st.sampled_from(sorted(sizes)))
        off = data.draw(st.integers(0, sizes[name] - 1))
        blob = data.draw(st.binary(min_size=1, max_size=min(64, sizes[name] - off)))
        edits.setdefault(name, []).append((off, blob))
    b = modify_copy(a, tmp / "b.safetensors", edits)
    with open_model(a) as ma, open_model(b) as mb:
        diff_models(ma, mb, tmp / "d.hexpatch")
    patch = hp.loads((tmp / "d.hexpatch").read_bytes())
    with open_model(a) as ma:
        runs = runs_for_patches(ma, [("d", patch)], checksum_fn=lambda: hp.model_checksum(ma))
        export_model(ma, tmp / "c.safetensors", runs)
    assert (tmp / "c.safetensors").read_bytes() == b.read_bytes()
    with open_model(tmp / "c.safetensors") as mc:
        runs = runs_for_patches(mc, [("inv", patch.inverted())])
        export_model(mc, tmp / "a2.safetensors", runs)
    assert (tmp / "a2.safetensors").read_bytes() == a.read_bytes()


# -- invert ----------------------------------------------------------------------------------------------


def test_invert_roundtrip(run, hf_tiny, patch_file, tmp_path):
    inv = tmp_path / "inv.hexpatch"
    r = run("patch", "invert", patch_file, "--out", inv, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["entries"] == 4
    p, q = hp.loads(patch_file.read_bytes()), hp.loads(inv.read_bytes())
    assert [(e.tensor_name, e.offset_bytes, e.original, e.new) for e in q.entries] == \
        [(e.tensor_name, e.offset_bytes, e.new, e.original) for e in p.entries]
    assert q.base_model_checksum is None  # the checksum named the weights before the patch
    assert run("patch", "apply", hf_tiny, patch_file, "--out", tmp_path / "fwd").exit_code == 0
    # the inverse does not apply to A, it applies to A+patch and gives A back
    assert run("patch", "verify", hf_tiny, inv).exit_code == 1
    assert run("patch", "verify", tmp_path / "fwd", inv).exit_code == 0
    assert run("patch", "apply", tmp_path / "fwd", inv, "--out", tmp_path / "back").exit_code == 0
    assert tree_digest(tmp_path / "back") == {k: v for k, v in tree_digest(hf_tiny.parent).items() if k != "notes.txt"}
    # inverting twice gives the patch's entries back
    r = run("patch", "invert", inv, "--out", tmp_path / "again.hexpatch")
    assert r.exit_code == 0 and hp.loads((tmp_path / "again.hexpatch").read_bytes()).entries == p.entries


# -- in place --------------------------------------------------------------------------------------------


def test_in_place_writes_backup_first_and_backup_restores(run, hf_tiny, patch_file, monkeypatch):
    folder = hf_tiny.parent
    original = sha256(hf_tiny)
    patch = hp.loads(patch_file.read_bytes())
    expected = expected_bytes(hf_tiny, runs_of(patch.entries))
    seen = {}
    real = apply_mod._write_entries

    def spy(model, forward):
        # before the first byte of the model is written: the backup and the journal are on disk
        backups = list(folder.glob("model.safetensors.backup-*.hexpatch"))
        assert len(backups) == 1
        backup = hp.loads(backups[0].read_bytes())
        intent = json.loads((folder / apply_mod.INTENT_NAME).read_text())
        assert intent["backup"] == backups[0].name and (folder / intent["forward"]).is_file()
        assert sha256(hf_tiny) == original
        seen["backup"] = backup
        return real(model, forward)

    monkeypatch.setattr(apply_mod, "_write_entries", spy)
    r = run("patch", "apply", hf_tiny, patch_file, "--in-place", "--json")
    monkeypatch.undo()
    assert r.exit_code == 0, r.output
    assert "backup" in seen
    res = json.loads(r.stdout)
    assert res["entries"] == 4 and res["changed_bytes"] == 8
    assert hf_tiny.read_bytes() == expected
    backup_path = Path(res["backup"])
    assert backup_path.parent == folder and backup_path.is_file()
    assert hp.loads(backup_path.read_bytes()).entries == seen["backup"].entries
    # the journal is gone; only the backup is left beside the model
    assert not (folder / apply_mod.INTENT_NAME).exists()
    assert not list(folder.glob(".tensor-surgery-forward-*"))
    # a second in-place apply in the same second keeps both backups
    second = write_patch(folder.parent / "second.hexpatch", flip_bytes(hf_tiny, NORM, [0], 4))
    r = run("patch", "apply", hf_tiny, second, "--in-place", "--json")
    assert r.exit_code == 0, r.output
    backup2 = Path(json.loads(r.stdout)["backup"])
    assert backup2 != backup_path and backup_path.is_file() and backup2.is_file()
    # undo both, newest first: the model's sha256 is the original's
    assert run("patch", "apply", hf_tiny, backup2, "--in-place").exit_code == 0
    r = run("patch", "apply", hf_tiny, backup_path, "--in-place")
    assert r.exit_code == 0, r.output
    assert sha256(hf_tiny) == original


def test_in_place_conflict_writes_nothing(run, hf_tiny, tmp_path):
    before = tree_digest(hf_tiny.parent)
    r = run("patch", "apply", hf_tiny, bad_patch(hf_tiny, tmp_path / "bad.hexpatch"), "--in-place")
    assert r.exit_code == 1 and "4 conflict(s)" in r.stderr
    assert tree_digest(hf_tiny.parent) == before  # not even a backup


def test_recover_noop_and_pending_intent_blocks(run, hf_tiny, patch_file, tmp_path, monkeypatch):
    r = run("patch", "recover", hf_tiny)
    assert r.exit_code == 0 and "no interrupted in-place apply" in r.stdout
    r = run("patch", "recover", hf_tiny.parent, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["recovered"] is False
    original = sha256(hf_tiny)
    patched = expected_bytes(hf_tiny, runs_of(hp.loads(patch_file.read_bytes()).entries))

    # an apply that dies after writing half its entries
    def half(model, forward):
        apply_mod._write_entries.__wrapped__(model, hp.HexPatch(forward.entries[: len(forward.entries) // 2]))
        raise KeyboardInterrupt

    half.__wrapped__ = apply_mod._write_entries
    monkeypatch.setattr(apply_mod, "_write_entries", half)
    r = run("patch", "apply", hf_tiny, patch_file, "--in-place")
    assert r.exit_code == 1
    monkeypatch.undo()
    assert sha256(hf_tiny) != original  # torn: half the entries written
    assert (hf_tiny.parent / apply_mod.INTENT_NAME).exists()
    # an explicit rollback, before anything else starts on the model, restores the old bytes
    r = run("patch", "recover", hf_tiny, "--rollback", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["direction"] == "rollback"
    assert sha256(hf_tiny) == original
    assert "no interrupted" in run("patch", "recover", hf_tiny).stdout

    # torn again: no other command recovers it behind the user's back (reading never writes);
    # verify refuses, saying how to recover, and `patch recover` finishes what was asked for
    monkeypatch.setattr(apply_mod, "_write_entries", half)
    assert run("patch", "apply", hf_tiny, patch_file, "--in-place").exit_code == 1
    monkeypatch.undo()
    torn = sha256(hf_tiny)
    assert torn not in (original, hashlib.sha256(patched).hexdigest())
    r = run("patch", "verify", hf_tiny, patch_file)
    assert r.exit_code == 1 and "interrupted" in r.stderr and "patch recover" in r.stderr
    assert sha256(hf_tiny) == torn
    assert run("patch", "recover", hf_tiny).exit_code == 0
    assert hf_tiny.read_bytes() == patched
    assert not (hf_tiny.parent / apply_mod.INTENT_NAME).exists()
    assert "no interrupted" in run("patch", "recover", hf_tiny).stdout


def test_in_place_sharded_and_rollforward(run, tmp_path, monkeypatch):
    index = write_sharded(tmp_path / "m", shards=3)
    folder = index.parent
    shards = sorted(folder.glob("*.safetensors"))
    entries = []
    for s in shards:
        _, head = header_of(s)
        name = next(k for k in head if k != "__metadata__")
        entries += flip_bytes(s, name, [0, 6])
    p = write_patch(tmp_path / "multi.hexpatch", entries)
    out = tmp_path / "ref"
    assert run("patch", "apply", folder, p, "--out", out).exit_code == 0
    want = {s.name: sha256(out / s.name) for s in shards}

    def dies(model, forward):
        dies.real(model, hp.HexPatch(forward.entries[:1]))
        raise KeyboardInterrupt

    dies.real = apply_mod._write_entries
    monkeypatch.setattr(apply_mod, "_write_entries", dies)
    assert run("patch", "apply", folder, p, "--in-place").exit_code == 1
    monkeypatch.undo()
    r = run("patch", "recover", folder, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["direction"] == "rollforward"
    assert {s.name: sha256(s) for s in shards} == want
    assert (folder / "model.safetensors.index.json").read_bytes() == (out / "model.safetensors.index.json").read_bytes()


# -- a real process ------------------------------------------------------------------------------------


def test_real_subprocess_apply_verify(hf_tiny, patch_file, tmp_path):
    exe = [sys.executable, "-m", "tensor_surgery.cli"]
    env_cwd = dict(cwd=REPO, capture_output=True, text=True, timeout=120)
    p = subprocess.run([*exe, "patch", "verify", str(hf_tiny), str(patch_file), "--json"], **env_cwd)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] is True
    p = subprocess.run([*exe, "patch", "apply", str(hf_tiny), str(patch_file), "--out", str(tmp_path / "sub")], **env_cwd)
    assert p.returncode == 0, p.stderr
    runs = runs_of(hp.loads(patch_file.read_bytes()).entries)
    assert (tmp_path / "sub" / "model.safetensors").read_bytes() == expected_bytes(hf_tiny, runs)
    bad = tmp_path / "bad.hexpatch"
    bad.write_text("[]")
    p = subprocess.run([*exe, "patch", "verify", str(hf_tiny), str(bad)], **env_cwd)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and str(bad) in p.stderr and "JSON object" in p.stderr
    # the installed console script, too
    script = Path(sys.executable).parent / "tensor-surgery"
    if script.exists():
        p = subprocess.run([str(script), "patch", "recover", str(hf_tiny)], **env_cwd)
        assert p.returncode == 0 and "no interrupted" in p.stdout


def test_recover_only_the_model_that_was_interrupted(run, hf_tiny, patch_file, monkeypatch):
    """Two models in one folder: the journal names its model, recovering the other is refused."""
    folder = hf_tiny.parent
    sibling = folder / "finetuned.safetensors"
    shutil.copyfile(hf_tiny, sibling)
    sibling_sha = sha256(sibling)

    def dies(model, forward):
        dies.real(model, hp.HexPatch(forward.entries[:1]))
        raise KeyboardInterrupt

    dies.real = apply_mod._write_entries
    monkeypatch.setattr(apply_mod, "_write_entries", dies)
    assert run("patch", "apply", hf_tiny, patch_file, "--in-place").exit_code == 1
    monkeypatch.undo()
    r = run("patch", "recover", sibling)
    assert r.exit_code == 1 and str(hf_tiny) in r.stderr and "not" in r.stderr
    assert sha256(sibling) == sibling_sha  # the forward patch was not written into the wrong model
    # the journal's own model recovers; its backup gone missing is a clear error, not a traceback
    intent = json.loads((folder / apply_mod.INTENT_NAME).read_text())
    backup = folder / intent["backup"]
    moved = backup.with_name("moved-away")
    backup.rename(moved)
    r = run("patch", "recover", hf_tiny, "--rollback")
    assert r.exit_code == 1 and "cannot recover" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    moved.rename(backup)
    r = run("patch", "recover", hf_tiny, "--rollback")
    assert r.exit_code == 0, r.output
    assert hf_tiny.read_bytes() == sibling.read_bytes()


def test_in_place_checks_base_model_checksum(run, hf_tiny, tmp_path):
    """A patch made for other weights is refused in place as it is with --out; nothing is written."""
    before = tree_digest(hf_tiny.parent)
    p = hp.HexPatch(flip_bytes(hf_tiny, EMB, [0]), "wrong base", base_model_checksum="sha256:" + "1" * 64)
    wrong = tmp_path / "wrong.hexpatch"
    wrong.write_text(p.dumps())
    r = run("patch", "apply", hf_tiny, wrong, "--in-place")
    assert r.exit_code == 1 and "base_model_checksum" in r.stderr
    assert tree_digest(hf_tiny.parent) == before
    with open_model(hf_tiny) as m:
        p.base_model_checksum = hp.model_checksum(m)
    wrong.write_text(p.dumps())
    assert run("patch", "apply", hf_tiny, wrong, "--in-place").exit_code == 0
