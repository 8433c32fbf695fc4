"""The security baseline: loopback Host only, same-origin state changes and WebSockets, a token
off loopback, files only inside ALLOWED_ROOTS."""

from __future__ import annotations

import pytest
from fastapi import WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tensor_surgery.web.app import create_app

from .conftest import BASE_URL, WS_BASE, assert_error, make_settings


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "10.0.0.5:8000", ""])
def test_non_loopback_host_refused(client, host):
    r = client.get("/api/model", headers={"host": host})
    assert_error(r, 400, "bad_host", "loopback")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.2"])
def test_loopback_hosts_served(client, host):
    assert client.get("/api/model", headers={"host": host}).status_code == 200


def test_cross_origin_post_refused(client, tmp_path):
    body = {"path": str(tmp_path)}
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "http://localhost:8000"):
        r = client.post("/api/model", json=body, headers={"origin": origin})
        assert_error(r, 403, "cross_origin")
    r = client.post("/api/model", json=body, headers={"sec-fetch-site": "cross-site"})
    assert_error(r, 403, "cross_origin")
    # same origin passes the check (and then fails for its own reason: no model in that folder)
    r = client.post("/api/model", json=body, headers={"origin": BASE_URL})
    assert r.status_code != 403


def test_cross_origin_get_is_not_state_changing(client):
    # reads are not state changes; the browser's same-origin policy keeps their answers from the page
    assert client.get("/api/model", headers={"origin": "http://evil.example"}).status_code == 200


def _app_with_ws(settings):
    app = create_app(settings)

    @app.websocket("/ws/echo-test")
    async def echo(ws: WebSocket):
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    return app


def test_websocket_origin_check(settings):
    with TestClient(_app_with_ws(settings), base_url=BASE_URL) as c:
        with c.websocket_connect(WS_BASE + "/ws/echo-test", headers={"origin": BASE_URL}) as ws:
            assert ws.receive_text() == "hello"
        with pytest.raises(WebSocketDisconnect) as e:
            with c.websocket_connect(WS_BASE + "/ws/echo-test", headers={"origin": "http://evil.example"}) as ws:
                ws.receive_text()
        assert e.value.code == 4403
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(WS_BASE + "/ws/echo-test", headers={"host": "evil.example"}) as ws:
                ws.receive_text()


def test_token_required_off_loopback(tmp_path, tiny_model):
    s = make_settings(tmp_path, tiny_model, host="0.0.0.0", auth_token="s3cret-token")
    app = _app_with_ws(s)
    with TestClient(app, base_url="http://192.168.1.20:8000") as c:
        assert_error(c.get("/api/model"), 401, "token_required", "token")
        assert_error(c.get("/api/model", headers={"authorization": "Bearer wrong"}), 401, "token_required")
        assert c.get("/api/model", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        r = c.get("/?token=s3cret-token")
        assert r.status_code == 200 and "ts_token=s3cret-token" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/api/model").status_code == 200  # the cookie now carries it
        c.cookies.clear()
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(WS_BASE + "/ws/echo-test") as ws:
                ws.receive_text()


def test_token_generated_when_unset_off_loopback(tmp_path, tiny_model):
    app = create_app(make_settings(tmp_path, tiny_model, host="0.0.0.0"))
    assert app.state.token and len(app.state.token) >= 24


def test_model_outside_allowed_roots_refused(tmp_path, tiny_model):
    s = make_settings(tmp_path, tiny_model, allowed_roots=[tiny_model.parent])
    with TestClient(create_app(s), base_url=BASE_URL) as c:
        for path in ("/etc", "/etc/passwd", str(tiny_model.parent / ".." / ".."), str(tmp_path)):
            assert_error(c.post("/api/model", json={"path": path}), 403, "path_not_allowed")
        # a symlink inside the root pointing outside is judged by its target
        link = tiny_model.parent / "escape"
        link.symlink_to("/etc")
        assert_error(c.post("/api/model", json={"path": str(link)}), 403, "path_not_allowed")


def test_shard_symlink_outside_roots_refused(tmp_path):
    import json

    from .conftest import write_tiny_llama

    outside = write_tiny_llama(tmp_path / "outside" / "real.safetensors")
    root = tmp_path / "root"
    root.mkdir()
    (root / "model-00001-of-00001.safetensors").symlink_to(outside)
    from safetensors import safe_open

    with safe_open(str(outside), "np") as f:
        keys = list(f.keys())
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}})
    )
    current = write_tiny_llama(root / "current" / "model.safetensors")
    s = make_settings(tmp_path, current, allowed_roots=[root])
    with TestClient(create_app(s), base_url=BASE_URL) as c:
        assert_error(c.post("/api/model", json={"path": str(root)}), 403, "path_not_allowed", "model file")
        assert c.get("/api/model").json()["path"] == str(current)  # the current model stays


def _listening(pid: int, port: int) -> list[str]:
    """Addresses the process `pid` listens on at `port`, from /proc/net/tcp{,6} (socket inodes
    matched against the process's open file descriptors)."""
    import ipaddress
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        try:
            lines = open(f"/proc/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, port_hex = cols[1].split(":")
            if cols[3] != "0A" or int(port_hex, 16) != port or cols[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.append(str(ipaddress.ip_address(raw)))
    return found


def _other_local_address() -> str | None:
    """A non-loopback address of this machine, if it has one (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


@pytest.mark.skipif(not __import__("os").path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_server_binds_loopback_by_default(tmp_path):
    """`tensor-surgery serve` with no HOST anywhere: the real listening socket is on 127.0.0.1 only."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from .conftest import write_tiny_llama

    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "AUTH_TOKEN")}
    env.update(DATA_DIR=str(tmp_path / "data"), PATCH_DIR=str(tmp_path / "patches"))
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(  # cwd without a .env: the default HOST is the one in force
        [sys.executable, "-c", "from tensor_surgery.cli import main; main()", "serve", str(model), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/api/model", timeout=5).status_code
                break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        assert _listening(proc.pid, port) == ["127.0.0.1"]
        assert status == 200  # and on loopback it needs no token
        other = _other_local_address()
        if other:  # from this machine's own non-loopback address, nobody answers
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=5):
                pass
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_cross_site_reads_of_the_api_refused(client):
    """A page on another site could plant <img src=".../api/tensor_rank/..."> and cost the server
    seconds of CPU per tag; it cannot read the answer, but it must not get the work done either."""
    for site in ("cross-site", "same-site"):
        r = client.get("/api/tensor_rank/model.embed_tokens.weight", headers={"sec-fetch-site": site})
        assert_error(r, 403, "cross_origin", site)
        assert_error(client.get("/api/tensors", headers={"sec-fetch-site": site}), 403, "cross_origin")
    for site in ("same-origin", "none"):  # the page itself, and a URL typed in the address bar
        assert client.get("/api/tensor_rank/model.embed_tokens.weight", headers={"sec-fetch-site": site}).status_code == 200
    assert client.get("/", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # a link to the app


def _raw_get(app, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict]:
    """One GET straight through the ASGI app, with exactly these header lines (clients merge
    duplicates before they reach the wire; a raw socket does not)."""
    import asyncio
    import json
    import threading

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/api/model", "raw_path": b"/api/model", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    # in a thread of its own: a test before this one may have left an event loop running in this
    # thread (Playwright's sync API does), and asyncio.run refuses to nest
    worker = threading.Thread(target=lambda: asyncio.run(app(scope, receive, send)))
    worker.start()
    worker.join()
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_two_host_headers_refused(client):
    app = client.app
    status, _ = _raw_get(app, [(b"host", b"127.0.0.1:8000")])
    assert status == 200
    for hosts in ([b"evil.example", b"127.0.0.1:8000"], [b"127.0.0.1:8000", b"127.0.0.1:8000"]):
        status, body = _raw_get(app, [(b"host", h) for h in hosts])
        assert status == 400, body
        assert body["error"]["code"] == "duplicate_header" and "Host" in body["error"]["message"]
    status, body = _raw_get(app, [(b"host", b"127.0.0.1:8000"), (b"sec-fetch-site", b"same-origin"),
                                  (b"sec-fetch-site", b"cross-site")])
    assert status == 400 and body["error"]["code"] == "duplicate_header"
