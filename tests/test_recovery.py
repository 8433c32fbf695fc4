"""The next start after a crash in the middle of an in-place apply finishes it (forward), says so,
and leaves the backup patch that undoes it."""

from __future__ import annotations

import hashlib

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


def test_server_start_rolls_forward(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    model, original, patch = _interrupted(tmp_path, monkeypatch)
    with TestClient(create_app(make_settings(tmp_path, model)), base_url=BASE_URL) as c:
        info = c.get("/api/model").json()
    assert any("interrupted" in w and "backup" in w for w in info["warnings"]), info["warnings"]
    assert model.read_bytes() == _expected(original, model, patch)
    assert not ap.intent_path(model.parent).exists()
    backups = list(model.parent.glob("model.safetensors.backup-*.hexpatch"))
    assert len(backups) == 1
    r = CliRunner().invoke(main, ["patch", "apply", str(model), str(backups[0]), "--in-place"])
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(model.read_bytes()).digest() == hashlib.sha256(original).digest()


def test_cli_start_rolls_forward_and_says_so(tmp_path, monkeypatch):
    model, original, patch = _interrupted(tmp_path, monkeypatch)
    r = CliRunner().invoke(main, ["ls", str(model)])
    assert r.exit_code == 0
    assert "interrupted" in r.stderr and "backup" in r.stderr
    assert model.read_bytes() == _expected(original, model, patch)


def test_explicit_rollback_before_any_start(tmp_path, monkeypatch):
    model, original, _ = _interrupted(tmp_path, monkeypatch)
    r = CliRunner().invoke(main, ["patch", "recover", str(model), "--rollback"])
    assert r.exit_code == 0, r.output
    assert model.read_bytes() == original
