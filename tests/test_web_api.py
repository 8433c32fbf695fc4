"""The read API against the safetensors library's own loader."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from .conftest import assert_error, write_tiny_llama


def oracle(path, name) -> np.ndarray:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name).float().numpy()


def test_model_info(client, tiny_model):
    r = client.get("/api/model")
    assert r.status_code == 200
    info = r.json()
    with safe_open(str(tiny_model), "pt") as f:
        keys = list(f.keys())
    assert info["tensor_count"] == len(keys)
    assert info["kind"] == "file"
    assert info["dtypes"] == {"BF16": 2 * 7 + 1, "F32": 2 * 2 + 1}
    assert info["total_bytes"] == sum(oracle(tiny_model, k).size * (2 if "norm" not in k else 4) for k in keys)


def test_tensor_list_matches_file(client, tiny_model):
    r = client.get("/api/tensors")
    assert r.status_code == 200
    entries = {e["name"]: e for e in r.json()}
    with safe_open(str(tiny_model), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            e = entries[k]
            assert e["shape"] == list(t.shape)
            assert e["numel"] == t.numel()
            assert e["nbytes"] == t.numel() * t.element_size()
    q = entries["model.layers.1.self_attn.q_proj.weight"]["metadata_for_canvas"]
    assert q["layer_index"] == 1 and q["type_group"] == "attention_qkv"
    assert entries["model.embed_tokens.weight"]["metadata_for_canvas"]["type_group"] == "embedding"


def test_slice_default_and_explicit(client, tiny_model):
    name = "model.layers.0.mlp.down_proj.weight"
    ref = oracle(tiny_model, name)
    r = client.get(f"/api/tensor_slice/{name}").json()
    assert r["original_shape"] == [16, 32] and r["slice_shape"] == [16, 32]
    assert np.array_equal(np.array(r["data"]), ref)
    r = client.get(f"/api/tensor_slice/{name}", params={"dim0_start": 3, "dim0_end": 7, "dim1_start": 10, "dim1_end": 30, "dim1_step": 4}).json()
    assert r["slice_definition"] == "[3:7, 10:30:4]"
    assert np.array_equal(np.array(r["data"]), ref[3:7, 10:30:4])
    assert r["min_value_in_slice"] == ref[3:7, 10:30:4].min()
    assert r["max_value_in_slice"] == ref[3:7, 10:30:4].max()


def test_slice_errors_are_4xx(client):
    name = "model.layers.0.mlp.down_proj.weight"
    assert_error(client.get(f"/api/tensor_slice/{name}", params={"dim0_start": 5, "dim0_end": 99}), 400, "invalid_request", "dim0")
    assert_error(client.get(f"/api/tensor_slice/{name}", params={"dim2_idx": 0}), 400, "invalid_request", "dim2_idx")
    assert_error(client.get(f"/api/tensor_slice/{name}", params={"dim0_start": "x"}), 400, "invalid_request", "integer")
    assert_error(client.get("/api/tensor_slice/no.such.tensor"), 404, "tensor_not_found", "no.such.tensor")
    assert_error(client.get(f"/api/tensor_slice/{name}", params={"view": "weird"}), 422, "invalid_request")


def test_slice_cell_cap(tmp_path):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    app = create_app(make_settings(tmp_path, model, max_slice_cells=100))
    with TestClient(app, base_url=BASE_URL) as c:
        err = assert_error(c.get("/api/tensor_slice/model.layers.0.mlp.down_proj.weight"), 413, "too_large")
        assert err["cells"] == 16 * 32 and err["limit"] == 100


def test_stats_and_cache(client, tiny_model, monkeypatch):
    from tensor_surgery.store import stats as st

    computed = []
    real = st.tensor_stats
    monkeypatch.setattr(st, "tensor_stats", lambda reader, **kw: computed.append(reader.ref.name) or real(reader, **kw))
    name = "model.layers.1.mlp.up_proj.weight"
    ref = oracle(tiny_model, name).astype(np.float64)
    s = client.get(f"/api/tensor_stats/{name}").json()
    assert s["numel"] == ref.size
    assert s["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(ref.std(), rel=1e-12)
    assert s["min"] == ref.min() and s["max"] == ref.max()
    assert s["l2_norm"] == pytest.approx(np.linalg.norm(ref), rel=1e-12)
    for p in (1, 50, 99):
        assert s["percentiles"][f"p{p}"] == pytest.approx(np.percentile(ref, p), rel=1e-12)
    assert computed == [name]
    # asked again (and by the histogram, which reuses the statistics' counts): served from the cache
    assert client.get(f"/api/tensor_stats/{name}").json() == s
    assert client.get(f"/api/tensor_histogram/{name}", params={"bins": 8}).status_code == 200
    assert computed == [name]
    # another threshold is another result
    client.get(f"/api/tensor_stats/{name}", params={"threshold": 0.5})
    assert computed == [name, name]
    sl = client.get(f"/api/tensor_stats/{name}", params={"dim0_start": 0, "dim0_end": 4, "dim1_start": 0, "dim1_end": 8}).json()
    assert sl["numel"] == 32 and sl["mean"] == pytest.approx(ref[:4, :8].mean(), rel=1e-12)


def test_histogram(client, tiny_model):
    name = "model.layers.1.mlp.up_proj.weight"
    ref = oracle(tiny_model, name).astype(np.float64)
    h = client.get(f"/api/tensor_histogram/{name}", params={"bins": 10}).json()
    counts, edges = np.histogram(ref, bins=10, range=(ref.min(), ref.max()))
    assert h["counts"] == counts.tolist()
    assert np.allclose(h["edges"], edges)
    hs = client.get(f"/api/tensor_histogram/{name}", params={"bins": 5, "dim0_idx": 2, "dim1_start": 0, "dim1_end": 16}).json()
    counts, _ = np.histogram(ref[2, :16], bins=5, range=(ref[2, :16].min(), ref[2, :16].max()))
    assert hs["counts"] == counts.tolist()


def test_hex_view(client, tiny_model):
    name = "model.embed_tokens.weight"
    with safe_open(str(tiny_model), "pt") as f:
        t = f.get_tensor(name)
    raw = t.view(__import__("torch").int16).numpy().astype("<i2").tobytes()
    h = client.get(f"/api/tensor_hex/{name}", params={"offset": 30, "length": 6}).json()
    assert h["hex"] == raw[30:36].hex().upper()
    assert [e["flat_index"] for e in h["elements"]] == [15, 16, 17]
    assert h["elements"][1]["index"] == [1, 0]
    assert h["elements"][1]["value"] == float(t.float()[1, 0])
    h2 = client.get(f"/api/tensor_hex/{name}", params={"element": 16, "count": 2}).json()
    assert h2["offset"] == 32 and h2["length"] == 4
    assert_error(client.get(f"/api/tensor_hex/{name}", params={"offset": 10**9}), 400, "invalid_request", "offset")


def test_overview(client, tiny_model):
    name = "model.layers.0.mlp.gate_proj.weight"
    ref = oracle(tiny_model, name).astype(np.float64)
    o = client.get(f"/api/tensor_overview/{name}", params={"rows": 4, "cols": 2}).json()
    assert o["blocks"] == [4, 2]
    expect = ref.reshape(4, 8, 2, 8).mean(axis=(1, 3))
    assert np.allclose(o["mean"], expect)
    assert np.allclose(o["absmax"], np.abs(ref).reshape(4, 8, 2, 8).max(axis=(1, 3)))


def test_rank(client, tmp_path):
    """Against numpy.linalg.matrix_rank, on matrices built with a known rank below min(shape).

    The factors are small integers, so every product is an integer below 256: exact in BF16 and
    F32, with no rounding noise to blur the rank."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    mats = {}
    for rank, (m, n) in ((5, (48, 32)), (1, (20, 40)), (12, (64, 64))):
        mats[f"r{rank}"] = (rng.integers(-2, 3, (m, rank)) @ rng.integers(-2, 3, (rank, n))).astype(np.float32)
    mats["full"] = rng.standard_normal((24, 16)).astype(np.float32)
    path = tmp_path / "models" / "ranks" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({**{f"{k}.f32": v for k, v in mats.items()},
               **{f"{k}.bf16": v.astype(ml_dtypes.bfloat16) for k, v in mats.items() if k != "full"}}, str(path))
    assert client.post("/api/model", json={"path": str(path)}).status_code == 200
    for key, w in mats.items():
        expected = int(np.linalg.matrix_rank(w))
        assert key == "full" and expected == min(w.shape) or expected == int(key[1:]) < min(w.shape)
        for dtype in ("f32", "bf16") if key != "full" else ("f32",):
            for method in ("exact", "randomized"):
                r = client.get(f"/api/tensor_rank/{key}.{dtype}", params={"method": method, "k": 16}).json()
                assert r["rank"] == expected, (key, dtype, method, r["singular_values"][:16])
                assert r["max_rank"] == min(w.shape)
                assert r["singular_values"][:3] == pytest.approx(np.linalg.svd(w.astype(np.float64),
                                                                               compute_uv=False)[:3], rel=1e-9)
    assert_error(client.get("/api/tensor_rank/nope"), 404)
    client.post("/api/model", json={"path": str(client.app.state.settings.model_path)})
    assert_error(client.get("/api/tensor_rank/model.norm.weight"), 400, "invalid_request", "2-D")


def test_open_another_model(client, tmp_path):
    other = write_tiny_llama(tmp_path / "other" / "m.safetensors", layers=3, seed=1)
    r = client.post("/api/model", json={"path": str(other)})
    assert r.status_code == 200, r.text
    assert r.json()["tensor_count"] == 2 + 3 * 9
    assert len(client.get("/api/tensors").json()) == 2 + 3 * 9
    assert_error(client.post("/api/model", json={"path": "/etc/passwd"}), 403, "path_not_allowed", "ALLOWED_ROOTS")
    assert_error(client.post("/api/model", json={"path": str(tmp_path / "nope")}), 404, "model_not_found")
    assert_error(client.post("/api/model", json={}), 422, "invalid_request", "path")


def test_openapi_documents_routes(client):
    spec = client.get("/openapi.json").json()
    for route in ("/api/model", "/api/tensors", "/api/tensor_slice/{tensor_name}", "/api/tensor_stats/{tensor_name}",
                  "/api/tensor_histogram/{tensor_name}", "/api/tensor_hex/{tensor_name}"):
        assert route in spec["paths"], route


def test_settings_route_redacts_secrets(tmp_path):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    app = create_app(make_settings(tmp_path, model, auth_token="s3cret", llm_api_key="sk-hidden"))
    with TestClient(app, base_url=BASE_URL) as c:
        r = c.get("/api/settings", headers={"authorization": "Bearer s3cret"})
        shown = r.json()["settings"]
    assert shown["MODEL_PATH"]["value"] == str(model) and shown["MODEL_PATH"]["help"]
    assert "s3cret" not in r.text and "sk-hidden" not in r.text
    assert shown["AUTH_TOKEN"]["value"] == "********"


def test_failed_computations_leave_nothing_in_the_cache(client):
    ws = client.app.state.workspace
    for k in range(1, 6):  # a different cache key each time, each failing (rank of a 1-D tensor)
        assert client.get("/api/tensor_rank/model.norm.weight", params={"k": k}).status_code == 400
    assert ws.cache._inflight == {}


# -- the model cache: reopened when its files change, bounded; the listing paginated and gzipped ----


def _open(c, path):
    r = c.post("/api/model", json={"path": str(path)})
    assert r.status_code == 200, r.text
    return r.json()


def test_reopening_a_model_changed_on_disk_reads_the_new_bytes(client, tiny_model):
    """An in-place rewrite (what `patch apply --in-place` does) made reads answer 409 "reopen the
    model", but POST /api/model on the same path returned the cached stale object until restart."""
    from safetensors.numpy import save_file

    from .conftest import tiny_llama_tensors

    name = "model.layers.0.self_attn.q_proj.weight"
    assert client.get(f"/api/tensor_slice/{name}").status_code == 200
    new = tiny_llama_tensors(seed=7)
    save_file(new, str(tiny_model), metadata={"format": "pt"})  # same path and size, new bytes
    assert_error(client.get(f"/api/tensor_slice/{name}"), 409, "model_changed", "reopen")
    _open(client, tiny_model)  # the path it was opened by: the cache held the stale model under it
    r = client.get(f"/api/tensor_slice/{name}", params={"dim0_start": 0, "dim0_end": 4, "dim1_start": 0, "dim1_end": 4})
    assert r.status_code == 200, r.text
    with safe_open(str(tiny_model), "np") as f:  # the oracle: the safetensors library
        expected = f.get_tensor(name)[:4, :4].astype(np.float64).tolist()
    assert r.json()["data"] == expected
    assert client.get(f"/api/tensor_stats/{name}").status_code == 200


def test_model_cache_keeps_at_most_model_cache_size_models(tmp_path):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    paths = [write_tiny_llama(tmp_path / f"m{i}" / "model.safetensors", seed=i) for i in range(4)]
    app = create_app(make_settings(tmp_path, paths[0], allowed_roots=[tmp_path], model_cache_size=2))
    with TestClient(app, base_url=BASE_URL) as c:
        ws = c.app.state.workspace
        for p in paths[1:]:
            _open(c, p)
            assert c.get("/api/tensors").status_code == 200
            distinct = {id(m): m for m in ws.models.values()}
            assert len(distinct) <= 2
            assert ws.current.path == str(p)
            assert set(ws._listings) <= {m.path for m in distinct.values()}  # listings go with models
        assert {m.path for m in ws.models.values()} == {str(paths[2]), str(paths[3])}
        info = _open(c, paths[0])  # an evicted model opens again
        assert info["path"] == str(paths[0])


def test_tensor_listing_pages_and_encodings(client):
    import gzip

    whole = client.get("/api/tensors", headers={"Accept-Encoding": "identity"})
    assert whole.status_code == 200 and "content-encoding" not in whole.headers
    entries = whole.json()
    n = len(entries)
    assert int(whole.headers["x-total-count"]) == n
    with client.stream("GET", "/api/tensors", headers={"Accept-Encoding": "br, gzip;q=0.5"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert json_loads(gzip.decompress(b"".join(r.iter_raw()))) == entries
    r = client.get("/api/tensors", headers={"Accept-Encoding": ""})  # what curl sends: nothing
    assert "content-encoding" not in r.headers and r.json() == entries
    for offset, limit in [(0, 1), (3, 5), (n - 2, 10), (n, 3), (5, None)]:
        params = {"offset": offset} | ({"limit": limit} if limit else {})
        r = client.get("/api/tensors", params=params)
        assert r.json() == entries[offset : None if limit is None else offset + limit], params
    assert_error(client.get("/api/tensors", params={"limit": 0}), 422)
    assert_error(client.get("/api/tensors", params={"offset": -1}), 422)


def _sparse_model(path, n: int):
    """A real safetensors header of `n` small BF16 tensors over sparse zeros."""
    import json
    import struct

    header = {f"model.layers.{i}.self_attn.q_proj.weight": {"dtype": "BF16", "shape": [4, 4],
                                                           "data_offsets": [32 * i, 32 * i + 32]} for i in range(n)}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 32 * n)
    return set(header)


REFUSE_GZIP = ["gzip;q=0", "gzip; q=0.000, deflate", "deflate, GZIP;Q=0", "*, gzip;q=0", "*;q=0",
               "br, x-gzip;q=0", "identity", "gzip;q=nan"]


@pytest.mark.parametrize("accept", REFUSE_GZIP + ["gzip;q=0.001", "*", "br;q=1, *;q=0.1", "x-gzip"])
def test_tensor_listing_honours_gzip_refused_with_q0(tmp_path, accept):
    """`Accept-Encoding: gzip;q=0` means "not gzip" (RFC 9110): the whole listing, streamed, and a
    window of it (compressed by the middleware when large) are sent plain. The middleware once
    looked only for the text "gzip" in the header."""
    import gzip

    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    path = tmp_path / "many" / "model.safetensors"
    names = _sparse_model(path, 300)
    plain = accept in REFUSE_GZIP
    with TestClient(create_app(make_settings(tmp_path, path, allowed_roots=[tmp_path])), base_url=BASE_URL) as c:
        for params in ({}, {"offset": 0, "limit": 300}):
            with c.stream("GET", "/api/tensors", params=params, headers={"Accept-Encoding": accept}) as r:
                raw = b"".join(r.iter_raw())
                encoding = r.headers.get("content-encoding")
            assert r.status_code == 200
            assert encoding == (None if plain else "gzip"), (params, r.headers)
            body = raw if plain else gzip.decompress(raw)
            assert len(body) > 8192  # over the middleware's minimum: it would have compressed it
            assert {e["name"] for e in json_loads(body)} == names
            assert "accept-encoding" in r.headers.get("vary", "").lower()


def json_loads(raw: bytes):
    import json

    return json.loads(raw)


def test_many_tensor_listing_is_kept_compressed_and_paged(tmp_path):
    """A 20k-tensor model (real header, sparse data): the listing is held compressed, sent gzipped,
    and a page costs a block or two to inflate. (A 1M-tensor file once left the server at 2.1 GB
    RSS and took 23 s and 225 MB per GET /api/tensors.)"""
    import gzip
    import json
    import struct
    import time

    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    n_layers, per_layer = 200, 100
    header, offset = {}, 0
    for layer in range(n_layers):
        for e in range(per_layer):
            header[f"model.layers.{layer}.mlp.experts.{e}.down_proj.weight"] = {
                "dtype": "BF16", "shape": [64, 32], "data_offsets": [offset, offset + 4096]}
            offset += 4096
    raw = json.dumps(header).encode()
    path = tmp_path / "big" / "model.safetensors"
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # 82 MB of zeros that take no disk
    n = n_layers * per_layer
    app = create_app(make_settings(tmp_path, path, allowed_roots=[tmp_path]))
    with TestClient(app, base_url=BASE_URL) as c:
        listing = c.app.state.workspace.tensor_listing()
        assert listing.count == n
        assert listing.nbytes < listing.json_size / 8, (listing.nbytes, listing.json_size)
        with c.stream("GET", "/api/tensors", headers={"Accept-Encoding": "gzip"}) as r:
            packed = b"".join(r.iter_raw())
        assert len(packed) < listing.json_size / 8
        entries = json.loads(gzip.decompress(packed))
        assert len(entries) == n and len({e["name"] for e in entries}) == n
        assert set(header) == {e["name"] for e in entries}
        t0 = time.perf_counter()
        page = c.get("/api/tensors", params={"offset": n - 1500, "limit": 2000}).json()
        elapsed = time.perf_counter() - t0
        assert page == entries[n - 1500 :]
        assert elapsed < 0.5, elapsed
        plain = c.get("/api/tensors", headers={"Accept-Encoding": "identity"})
        assert len(plain.content) == listing.json_size and plain.json() == entries
