"""GET /api/tensors: built once at start, served gzipped as stored when the client takes gzip."""

from __future__ import annotations

import gzip
import json


def test_listing_is_built_at_start_and_served_pre_compressed(client):
    ws = client.app.state.workspace
    assert ws.current.path in ws._listings  # built while starting, before the first request

    plain = client.get("/api/tensors", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers

    # ask for gzip and read the raw body: one gzip stream of the same JSON (not compressed twice)
    with client.stream("GET", "/api/tensors", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in r.headers["vary"].lower()
        raw = b"".join(r.iter_raw())
    assert json.loads(gzip.decompress(raw)) == plain.json()
