"""Settings: every one documented in .env.example, parsed from the environment, secrets redacted."""

from __future__ import annotations

import re
from pathlib import Path

from tensor_surgery.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting():
    text = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z_]+)=", text, re.M))
    names = {n.upper() for n in Settings.model_fields}
    assert names <= listed, f"missing from .env.example: {sorted(names - listed)}"
    for name, item in Settings(_env_file=None).describe().items():
        assert item["help"], f"{name} has no help text"
        assert item["help"] in text, f".env.example's help for {name} is out of date"


def test_environment_parsing(monkeypatch, tmp_path):
    monkeypatch.setenv("ALLOWED_ROOTS", f"{tmp_path}/a, {tmp_path}/b")
    monkeypatch.setenv("PORT", "9001")
    s = Settings(_env_file=None)
    assert s.port == 9001
    assert [p.name for p in s.allowed_roots] == ["a", "b"]


def test_defaults_follow_data_dir(tmp_path):
    s = Settings(_env_file=None, data_dir=tmp_path / "d")
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'tensor_surgery.db').resolve()}"
    assert s.resolved_model_path == tmp_path / "d" / "models" / "SmolLM2-135M-Instruct"
    roots = s.resolved_allowed_roots
    assert Path((tmp_path / "d").resolve()) in roots


def test_secrets_redacted():
    s = Settings(_env_file=None, auth_token="hunter2", database_url="postgresql://bob:pw@db/ts")
    shown = s.describe()
    assert shown["AUTH_TOKEN"]["value"] == "********"
    assert "pw" not in shown["DATABASE_URL"]["value"] and "bob" in shown["DATABASE_URL"]["value"]
