"""The hostile-file corpus through the user's two doors: the API (a 4xx JSON error naming the file
and field, quickly, and the server keeps serving) and the CLI (exit 2, one readable line)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from tensor_surgery.cli import main
from tensor_surgery.errors import SurgeryError

from .hostile import CORPUS, EXPECTED, FIELDS

CODES = {cls.__name__: cls.code for cls in SurgeryError.__subclasses__()}
STATUS = {cls.__name__: cls.http_status for cls in SurgeryError.__subclasses__()}


def _build(name, tmp_path):
    folder = tmp_path / "hostile" / name
    folder.mkdir(parents=True)
    return CORPUS[name](folder)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_api_refuses_with_a_specific_4xx(name, client, tmp_path):
    target = _build(name, tmp_path)
    error_cls, substring = EXPECTED[name]
    t0 = time.perf_counter()
    r = client.post("/api/model", json={"path": str(target)})
    elapsed = time.perf_counter() - t0
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.status_code == STATUS[error_cls], (name, r.text)
    err = r.json()["error"]
    assert err["code"] == CODES[error_cls]
    assert substring in err["message"]
    assert "file" in err and err["file"], err  # names the file
    if name in FIELDS:
        assert err["field"] == FIELDS[name]
    assert elapsed < 1.0, f"{name} took {elapsed:.2f} s"
    # the server keeps serving the model it had
    assert client.get("/api/model").status_code == 200
    assert client.get("/api/tensor_slice/model.norm.weight").status_code == 200


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_cli_exits_2_with_one_line(name, tmp_path):
    target = _build(name, tmp_path)
    r = CliRunner().invoke(main, ["ls", str(target)])
    assert r.exit_code == 2, (name, r.output)
    lines = r.stderr.strip().splitlines() if hasattr(r, "stderr") else r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert EXPECTED[name][1] in lines[0]
