"""An in-place apply cut short by a crash: reading the model (CLI verbs, opening it in the server)
reports it and never writes a byte; recovering is an explicit step with both choices (`patch
recover [--rollback]`, `POST /api/model/recover`), checked against the bytes computed by hand."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tensor_surgery.cli import main
from tensor_surgery.surgery import apply as ap
from tensor_surgery.surgery import hexpatch as hp

from .conftest import write_tiny_llama


def _interrupted(tmp_path, monkeypatch):
    """A model whose in-place apply died after its journal was written and one entry landed."""
    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    original = model.read_bytes()
    name = "model.layers.0.mlp.up_proj.weight"
    patch = hp.HexPatch([hp.PatchEntry(name, 0, b"", b""), hp.PatchEntry(name, 100, b"", b"")], "two entries")
    from tensor_surgery.store import open_model

    with open_model(model) as m:
        raw = bytes(m.tensor(name).raw())
    patch.entries = [hp.PatchEntry(name, 0, raw[0:4], b"\x11\x22\x33\x44"),
                     hp.PatchEntry(name, 100, raw[100:104], b"\x55\x66\x77\x88")]
    real = ap._write_entries

    def dies_after_first(m, p):
        real(m, hp.HexPatch(p.entries[:1], p.description))
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ap, "_write_entries", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        ap.apply_in_place(model, [("p.hexpatch", patch)])
    monkeypatch.setattr(ap, "_write_entries", real)
    assert ap.intent_path(model.parent).exists()
    return model, original, patch


def _expected(original: bytes, model, patch) -> bytes:
    from tensor_surgery.store import open_model

    with open_model(model) as m:
        ref = m.tensor(patch.entries[0].tensor_name)
        start = ref.file.data_start + ref.begin
    out = bytearray(original)
    for e in patch.entries:
        out[start + e.offset_bytes : start + e.offset_bytes + len(e.new)] = e.new
    return bytes(out)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_reading_reports_and_never_writes(tmp_path, monkeypatch):
    model, original, patch = _interrupted(tmp_path, monkeypatch)
    torn = _sha(model)
    assert torn not in (_sha_bytes(original), _sha_bytes(_expected(original, model, patch)))
    runner = CliRunner()
    for args in (["ls", str(model)], ["ls", str(model), "--json"], ["stats", str(model), "--json"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 0, r.output
        assert "interrupted" in r.stderr and "patch recover" in r.stderr and "--rollback" in r.stderr, r.stderr
        assert _sha(model) == torn, args
    # verbs whose answer would be about torn bytes refuse, and say how to go on
    other = tmp_path / "p.hexpatch"
    other.write_text(patch.dumps())
    for args in (["patch", "verify", str(model), str(other)],
                 ["patch", "diff", str(model), str(model), "--out", str(tmp_path / "d.hexpatch")],
                 ["patch", "apply", str(model), str(other), "--out", str(tmp_path / "out")],
                 ["patch", "apply", str(model), str(other), "--in-place"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 1 and "recover" in r.stderr, (args, r.output)
        assert _sha(model) == torn, args
    assert ap.intent_path(model.parent).exists()
    # the explicit step: finish it
    r = runner.invoke(main, ["patch", "recover", str(model), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["direction"] == "rollforward"
    assert model.read_bytes() == _expected(original, model, patch)


def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("rollback", [False, True])
def test_server_reports_pending_and_recovers_only_when_asked(tmp_path, monkeypatch, rollback):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    model, original, patch = _interrupted(tmp_path, monkeypatch)
    torn = model.read_bytes()
    name = patch.entries[0].tensor_name
    with TestClient(create_app(make_settings(tmp_path, model)), base_url=BASE_URL) as c:
        info = c.get("/api/model").json()
        pending = info["interrupted_apply"]
        assert pending and pending["model"] == str(model) and pending["patches"] == ["p.hexpatch"]
        assert pending["entries"] == 2 and pending["backup"].startswith(str(model.parent / "model.safetensors.backup-"))
        assert "patch recover" in pending["message"]
        # reading (the listing, a slice, opening the model again) writes nothing
        assert c.get("/api/tensors").status_code == 200
        assert c.get(f"/api/tensor_slice/{name}", params={"dim0_start": 0, "dim0_end": 2}).status_code == 200
        assert c.post("/api/model", json={"path": str(model)}).json()["interrupted_apply"] == pending
        assert model.read_bytes() == torn
        # export refuses until it is recovered
        assert c.post("/api/export", json={"out": str(tmp_path / "data" / "x")}).status_code == 409
        r = c.post("/api/model/recover", json={"rollback": rollback})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["recovered"] is True and body["interrupted_apply"] is None
        assert body["direction"] == ("rollback" if rollback else "rollforward") and body["entries"] == 2
        want = original if rollback else _expected(original, model, patch)
        assert model.read_bytes() == want
        assert c.get("/api/model").json()["interrupted_apply"] is None
        # the server reopened the model: its reads serve the recovered bytes (safetensors: the oracle)
        from safetensors.torch import load

        expected = load(want)[name][:4].float().numpy()  # rows 0-3 hold both entries; BF16 -> F32 is exact
        r = c.get(f"/api/tensor_slice/{name}", params={"dim0_start": 0, "dim0_end": 4, "dim1_start": 0, "dim1_end": 16})
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["data"], dtype=np.float64)
        assert np.array_equal(got, expected.astype(np.float64)), (r.json(), expected)
        # nothing pending any more: asking again is a no-op
        again = c.post("/api/model/recover", json={"rollback": rollback}).json()
        assert again["recovered"] is False
    assert not ap.intent_path(model.parent).exists()
    assert not list(model.parent.glob(".tensor-surgery-forward-*"))


def test_recover_refuses_a_journal_that_names_files_elsewhere(tmp_path, monkeypatch):
    """The journal is a file in the model's folder: one naming a path outside it is refused."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, assert_error, make_settings

    model, _original, _ = _interrupted(tmp_path, monkeypatch)
    intent = ap.intent_path(model.parent)
    info = json.loads(intent.read_text())
    elsewhere = tmp_path / "elsewhere.hexpatch"
    elsewhere.write_text((model.parent / info["forward"]).read_text())
    info["forward"] = "../elsewhere.hexpatch"
    intent.write_text(json.dumps(info))
    torn = model.read_bytes()
    with TestClient(create_app(make_settings(tmp_path, model)), base_url=BASE_URL) as c:
        assert_error(c.post("/api/model/recover", json={}), 409, "interrupted_in_place_apply", "not one")
    assert model.read_bytes() == torn and intent.exists()


def test_explicit_rollback_before_any_start(tmp_path, monkeypatch):
    model, original, _ = _interrupted(tmp_path, monkeypatch)
    r = CliRunner().invoke(main, ["patch", "recover", str(model), "--rollback"])
    assert r.exit_code == 0, r.output
    assert model.read_bytes() == original
