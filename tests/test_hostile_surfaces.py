"""The hostile-file corpus through the user's two doors: the API (a 4xx JSON error naming the file
and field, quickly, and the server keeps serving) and the CLI (exit 2, one readable line)."""

from __future__ import annotations

import gc
import time
from urllib.parse import quote

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
    gc.collect()  # the garbage earlier tests left (torch models...) is not this refusal's time
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


# -- hostile requests: each once answered 500; now a 4xx with the usual error body ---------------

BIG = 2**63  # one past SQLite's (and numpy's int64) largest integer
TENSOR = "model.norm.weight"


def _hostile_requests(tmp: str) -> list[tuple[str, str, dict]]:
    """(method, url, httpx keyword arguments): every case names what the issue found."""
    long_name = f"{tmp}/{'a' * 300}"
    nul = f"{tmp}/a\x00b"
    cases = [
        ("GET", f"/api/tensor_histogram/{TENSOR}?lo={v}", {}) for v in ("nan", "inf", "-inf", "1e400")
    ] + [
        ("GET", f"/api/tensor_histogram/{TENSOR}?hi=nan", {}),
        ("GET", f"/api/tensor_stats/{TENSOR}?threshold=inf", {}),
        ("GET", f"/api/edits/{BIG}", {}),
        ("POST", f"/api/edits/{BIG}/revert", {}),
        ("GET", f"/api/investigate/conversations/{BIG}", {}),
        ("DELETE", f"/api/investigate/conversations/{BIG}", {}),
        ("POST", f"/api/live/edits/{BIG}/toggle", {"json": {"enabled": True}}),
        ("POST", "/api/investigate", {"json": {"question": "why", "conversation_id": BIG}}),
    ]
    for value in ("1e400", "NaN", "Infinity", "-1e999"):  # raw JSON: the stdlib reads them as floats
        body = f'{{"tensor_name": "{TENSOR}", "op": "scale", "factor": 2, "dry_run": true, ' \
               f'"select": {{"mode": "top_k_abs", "value": {value}}}}}'
        cases.append(("POST", "/api/edit_tensor", {"content": body, "headers": {"content-type": "application/json"}}))
    cases.append(("POST", "/api/edit_tensor", {"content": f'{{"tensor_name": "{TENSOR}", "op": "set", "cells": '
                  f'[{{"index": [{BIG}], "value": 1}}]}}', "headers": {"content-type": "application/json"}}))
    for path in (nul, long_name):
        cases += [
            ("POST", "/api/model", {"json": {"path": path}}),
            ("POST", "/api/export", {"json": {"out": path}}),
            ("POST", "/api/live/adapters/import", {"json": {"path": path, "name": "x"}}),
            ("POST", "/api/live/adapters/x/export", {"json": {"out": path}}),
        ]
    surrogate = {"content": '{"tensor": "\\ud800"}', "headers": {"content-type": "application/json"}}
    cases += [
        ("POST", "/api/agent/tools/tensor_stats", surrogate),
        ("POST", "/api/agent/tools/search_vocab", {"content": '{"query": "a\\udfffb"}'}),  # no content type
        ("POST", "/api/model", {"content": '{"path": "\\ud800"}', "headers": {"content-type": "application/json"}}),
    ]
    return cases


@pytest.mark.parametrize("index", range(len(_hostile_requests("/t"))))
def test_hostile_requests_answer_4xx_with_the_error_body(index, client, tmp_path):
    method, url, kw = _hostile_requests(str(tmp_path))[index]
    r = client.request(method, url, **kw)
    assert 400 <= r.status_code < 500, (method, url, r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] and err["message"], err
    assert client.get("/api/model").status_code == 200  # and the server keeps serving
    assert client.get("/api/live/status").status_code == 200


def test_hostile_json_names_the_field(client):
    body = f'{{"tensor_name": "{TENSOR}", "op": "scale", "factor": 2, "select": {{"mode": "top_k_abs", "value": 1e400}}}}'
    r = client.post("/api/edit_tensor", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "select.value"
    assert "select.value" in r.json()["error"]["message"]
    r = client.post("/api/model", json={"path": "/tmp/a\x00b"})
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
    r = client.post("/api/model", json={"path": "/tmp/" + "b" * 300})
    assert r.status_code == 400 and "255" in r.json()["error"]["message"]
    # the limits are the file system's: a 255-byte name is a name, and merely absent
    r = client.post("/api/model", json={"path": str(client.app.state.settings.data_dir / ("c" * 255))})
    assert r.status_code == 404, r.text


def test_websocket_messages_are_validated_like_http_bodies(client):
    """A prompt "\\ud800" was accepted over the WebSocket; every /api/live/status then answered 500."""
    from .conftest import BASE_URL, WS_BASE

    bad = [
        '{"type": "prompt", "text": "\\ud800"}',
        '{"type": "prompt", "text": "x", "k": 1e400}',
        '{"type": "prompt", "text": "x", "k": 1000}',
        f'{{"type": "toggle_edit", "id": {BIG}, "enabled": true}}',
        '{"type": "toggle_adapter", "name": "' + "n" * 65 + '", "enabled": true}',
        '{"type": "prompt", "text": "x", "extra": 1}',
        '{"type": "nope"}',
        '[1, 2]',
    ]
    with client.websocket_connect(WS_BASE + "/ws/live", headers={"origin": BASE_URL}) as ws:
        for raw in bad:
            ws.send_text(raw)
            m = _next_error(ws)
            assert m is not None, f"{raw} was accepted"
            assert m["message"], raw
    r = client.get("/api/live/status")
    assert r.status_code == 200, r.text
    assert "\ud800" not in r.text


def test_route_sweep_never_answers_500(client, tmp_path):
    """Every route of the OpenAPI schema, each parameter in turn given a hostile value."""
    hostile_int = [str(BIG), str(2**64), "-1"]
    hostile_float = ["nan", "inf", "1e400"]
    hostile_str = ["a\x00b", "x" * 300, "%ff"]
    skip = {"/api/live/load", "/api/investigate"}  # would load a model or start a turn for real
    failures = []
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        if path in skip:
            continue
        for method, op in ops.items():
            params = op.get("parameters", [])
            defaults = {p["name"]: "model.norm.weight" if p["in"] == "path" else None for p in params}
            for p in params:
                schema = p.get("schema", {})
                kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
                values = hostile_int if "integer" in kinds else hostile_float if "number" in kinds else hostile_str
                for v in values:
                    url, query = path, {}
                    for q in params:
                        val = v if q is p else defaults[q["name"]]
                        if q["in"] == "path":
                            url = url.replace("{" + q["name"] + "}", quote(str(val), safe=""))
                        elif val is not None:
                            query[q["name"]] = val
                    r = client.request(method.upper(), url, params=query,
                                       json={} if method in ("post", "put", "patch") else None)
                    if r.status_code >= 500:
                        failures.append((method, url, query, r.status_code, r.text[:200]))
    assert not failures, failures


def _next_error(ws, timeout: float = 5.0) -> dict | None:
    """The next `error` message (status pushes may come first), or None after `timeout` seconds
    (the TestClient's own receive would wait forever for a message that never comes)."""
    import json

    import anyio

    async def get():
        with anyio.move_on_after(timeout):
            return await ws._send_rx.receive()

    while True:
        message = ws.portal.call(get)
        if message is None:
            return None
        ws._raise_on_close(message)
        m = json.loads(message["text"])
        if m["type"] == "error":
            return m
