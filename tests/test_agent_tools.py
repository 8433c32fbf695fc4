"""The agent's read-only tools, checked against numpy and safetensors' own loader; the kurtosis
and saturation statistics; tensor-name mentions. No LLM involved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from tensor_surgery.agent import registry
from tensor_surgery.agent.mentions import find_mentions
from tensor_surgery.agent.tools import REGISTRY, ToolContext, run_tool, run_tool_call
from tensor_surgery.errors import InvalidRequest, SurgeryError, TensorNotFound, TooLarge
from tensor_surgery.settings import Settings
from tensor_surgery.store import TensorReader
from tensor_surgery.store import stats as st
from tensor_surgery.workspace import Workspace

from .agent_helpers import BF16_MAX, EMBED, embedding, write_anomalous_model, write_token_model
from .conftest import make_settings, write_tiny_llama


def oracle(path, name) -> np.ndarray:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name).float().numpy().astype(np.float64)


@pytest.fixture
def ctx_for(tmp_path):
    workspaces = []

    def make(model_path: Path) -> ToolContext:
        ws = Workspace(make_settings(tmp_path, model_path, allowed_roots=[tmp_path]))
        workspaces.append(ws)
        return ToolContext(ws, ws.open(model_path))

    yield make
    for ws in workspaces:
        ws.close()


@pytest.fixture
def token_model(tmp_path) -> Path:
    return write_token_model(tmp_path / "models" / "tok" / "model.safetensors")


# -- kurtosis and saturation (store/stats.py tail_stats) -----------------------------------------


def _kurtosis(x: np.ndarray) -> float:
    x = x[np.isfinite(x)].astype(np.float64)
    d = x - x.mean()
    return float(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0)


def _reader(tmp_path, arr: np.ndarray, name="t") -> TensorReader:
    from safetensors.numpy import save_file

    from tensor_surgery.store import open_model

    path = tmp_path / f"{name}-{arr.dtype}.safetensors"
    save_file({name: arr}, str(path))
    return TensorReader(open_model(path).tensor(name))


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, np.float32, np.float64])
def test_tail_stats_kurtosis_matches_numpy(tmp_path, dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5000), rng.standard_t(3, 3000) * 2]).astype(dtype)
    reader = _reader(tmp_path, x)
    stats, counts = st.tensor_stats(reader, chunk_elems=1024)
    tails = st.tail_stats(reader, stats, counts, chunk_elems=1024)  # several chunks for the streaming path
    assert (counts is not None) == (x.dtype.itemsize <= 2)
    assert tails["kurtosis"] == pytest.approx(_kurtosis(x.astype(np.float64)), rel=1e-9, abs=1e-9)
    assert tails["saturated_count"] == 0


def test_tail_stats_gaussian_is_near_zero_and_constant_is_none(tmp_path):
    x = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    r = _reader(tmp_path, x)
    s, c = st.tensor_stats(r)
    assert abs(st.tail_stats(r, s, c)["kurtosis"]) < 0.1
    r = _reader(tmp_path, np.full(10, 3.0, np.float32), "c")
    s, c = st.tensor_stats(r)
    assert st.tail_stats(r, s, c)["kurtosis"] is None


@pytest.mark.parametrize("dtype,limits", [
    (ml_dtypes.bfloat16, [BF16_MAX, -BF16_MAX]),
    (np.float32, [np.finfo(np.float32).max, -np.finfo(np.float32).max]),
    (ml_dtypes.float8_e4m3fn, [448.0, -448.0]),
    (np.int8, [127, -128]),
    (np.uint8, [255]),
])
def test_tail_stats_counts_values_at_the_dtype_limit(tmp_path, dtype, limits):
    x = np.zeros(100, dtype=np.float64)
    x[: len(limits)] = limits
    x[10:20] = 1.5
    arr = x.astype(dtype)
    r = _reader(tmp_path, arr)
    s, c = st.tensor_stats(r)
    tails = st.tail_stats(r, s, c)
    assert tails["saturated_count"] == len(limits)
    assert tails["saturation_value"] == pytest.approx(float(max(abs(v) for v in limits)) if dtype != np.int8 else 127.0)


def test_tail_stats_leaves_tensor_stats_outputs_alone(tmp_path):
    r = _reader(tmp_path, np.arange(10, dtype=np.float32))
    s, _ = st.tensor_stats(r)
    assert "kurtosis" not in s and "saturated_count" not in s


def test_tail_stats_nonfinite_values_are_left_out(tmp_path):
    x = np.array([1.0, 2.0, 3.0, 10.0, np.nan, np.inf], np.float32)
    r = _reader(tmp_path, x)
    s, c = st.tensor_stats(r)
    assert st.tail_stats(r, s, c)["kurtosis"] == pytest.approx(_kurtosis(x))


# -- the registry and argument validation ---------------------------------------------------------


def test_registry_schemas_are_closed_objects():
    assert set(REGISTRY) == {
        "model_summary", "list_tensors", "tensor_stats", "tensor_slice", "tensor_histogram", "propose_edit",
        "scan_outliers", "layer_summary", "search_vocab", "compare_tokens", "nearest_tokens", "token_layer_response"}
    for t in REGISTRY.values():
        p = t.parameters
        assert p["type"] == "object" and p["additionalProperties"] is False
        assert set(p.get("required", ())) <= set(p["properties"])
        assert t.schema()["function"]["name"] == t.name and len(t.description) > 30
        # no tool takes a path or a URL: the LLM cannot name a file to open or a host to reach
        assert not any(k in ("path", "file", "url", "folder") for k in p["properties"])


@pytest.mark.parametrize("args,message", [
    ({"bogus": 1}, "unknown argument 'bogus'"),
    ({"limit": "5"}, "limit must be integer"),
    ({"limit": 0}, "limit must be at least 1"),
    ({"limit": 5000}, "limit must be at most 200"),
    ({"type_group": "attention"}, "type_group must be one of"),
    ({"limit": True}, "limit must be integer"),
])
def test_invalid_arguments_say_which_and_why(ctx_for, tiny_model, args, message):
    with pytest.raises(InvalidRequest) as e:
        run_tool(ctx_for(tiny_model), "list_tensors", args)
    assert message in e.value.message
    assert e.value.code == "invalid_arguments"


def test_required_argument(ctx_for, tiny_model):
    with pytest.raises(InvalidRequest, match="argument 'tensor' is required"):
        run_tool(ctx_for(tiny_model), "tensor_stats", {})


@pytest.mark.parametrize("name,raw,code", [
    ("no_such_tool", "{}", "unknown_tool"),
    ("list_tensors", "{not json", "invalid_arguments"),
    ("list_tensors", "[1, 2]", "invalid_arguments"),
    ("list_tensors", json.dumps({"name_contains": "x" * 40_000}), "oversized_arguments"),
    ("tensor_stats", json.dumps({"tensor": "../../etc/passwd"}), "tensor_not_found"),
    (None, "{}", "unknown_tool"),
])
def test_tool_call_failures_become_error_results(ctx_for, tiny_model, name, raw, code):
    ok, result = run_tool_call(ctx_for(tiny_model), name, raw)
    assert not ok and result["error"]["code"] == code, result
    assert result["error"]["message"]


def test_results_over_the_cap_are_cut_and_marked(monkeypatch, ctx_for, tiny_model):
    monkeypatch.setattr(registry, "MAX_RESULT_CHARS", 1000)
    out = run_tool(ctx_for(tiny_model), "list_tensors", {"limit": 200})
    assert out["truncated"] is True and out["total_chars"] > 1000 and len(out["partial_json"]) < 1000


# -- tensors ----------------------------------------------------------------------------------------


def test_model_summary(ctx_for, token_model):
    s = run_tool(ctx_for(token_model), "model_summary", {})
    assert s["tensor_count"] == 2 * 9 + 2 and s["layers"] == 2
    assert s["tensors_per_type_group"]["attention_qkv"] == 6
    assert s["tokenizer"] is True and s["embedding_tensors"][0] == EMBED


def test_list_tensors_filters_and_counts(ctx_for, tiny_model):
    ctx = ctx_for(tiny_model)
    r = run_tool(ctx, "list_tensors", {"layer_min": 1, "layer_max": 1, "type_group": "attention_qkv"})
    assert [t["name"] for t in r["tensors"]] == [f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
    assert r["total_matching"] == 3 and not r["truncated"]
    r = run_tool(ctx, "list_tensors", {"name_contains": "PROJ", "limit": 4, "offset": 2})
    assert r["total_matching"] == 14 and r["returned"] == 4 and r["truncated"]
    assert r["tensors"][0]["name"] == "model.layers.0.self_attn.v_proj.weight"
    assert run_tool(ctx, "list_tensors", {"dtype": "f32"})["total_matching"] == 5


def test_tensor_stats_match_numpy(ctx_for, tiny_model):
    name = "model.layers.1.mlp.up_proj.weight"
    ref = oracle(tiny_model, name)
    r = run_tool(ctx_for(tiny_model), "tensor_stats", {"tensor": name})
    s = r["stats"]
    assert r["layer"] == 1 and r["type_group"] == "mlp_gateup" and r["shape"] == [32, 16]
    assert s["mean"] == pytest.approx(ref.mean(), rel=1e-4)
    assert s["std"] == pytest.approx(ref.std(), rel=1e-4)
    assert s["rms"] == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-4)
    assert s["kurtosis"] == pytest.approx(_kurtosis(ref), rel=1e-3)
    assert s["max_sigma"] == pytest.approx(np.max(np.abs(ref - ref.mean())) / ref.std(), rel=1e-3)
    assert s["nan_count"] == 0 and s["saturated_count"] == 0


def test_tensor_slice_values_and_cap(ctx_for, tiny_model):
    ctx = ctx_for(tiny_model)
    name = "model.layers.0.mlp.down_proj.weight"  # [16, 32]
    ref = oracle(tiny_model, name)
    r = run_tool(ctx, "tensor_slice", {"tensor": name, "slice": {"dim0_start": 2, "dim0_end": 5, "dim1_start": 7,
                                                                 "dim1_end": 30, "dim1_step": 5}})
    assert r["slice"] == "[2:5, 7:30:5]" and r["slice_shape"] == [3, 5]
    np.testing.assert_allclose(np.array(r["values"]), ref[2:5, 7:30:5], rtol=1e-3)
    r = run_tool(ctx, "tensor_slice", {"tensor": EMBED})  # [64, 16]: the default window is 32
    assert r["slice_shape"] == [32, 16]
    with pytest.raises(InvalidRequest, match="dim0_stop"):
        run_tool(ctx, "tensor_slice", {"tensor": name, "slice": {"dim0_stop": 3}})


def test_tensor_slice_refuses_more_than_4096_cells(ctx_for, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m" / "big.safetensors"
    path.parent.mkdir()
    save_file({"w": np.zeros((100, 100), np.float32)}, str(path))
    ctx = ctx_for(path)
    with pytest.raises(TooLarge, match="10,000 cells"):
        run_tool(ctx, "tensor_slice", {"tensor": "w", "slice": {"dim0_start": 0, "dim0_end": 100,
                                                              "dim1_start": 0, "dim1_end": 100}})
    r = run_tool(ctx, "tensor_slice", {"tensor": "w", "slice": {"dim0_start": 0, "dim0_end": 64,
                                                              "dim1_start": 0, "dim1_end": 64}})
    assert r["slice_shape"] == [64, 64]


def test_tensor_histogram(ctx_for, tiny_model):
    name = "model.layers.0.mlp.gate_proj.weight"
    ref = oracle(tiny_model, name)
    r = run_tool(ctx_for(tiny_model), "tensor_histogram", {"tensor": name, "bins": 8})
    counts, _ = np.histogram(ref, bins=8, range=(ref.min(), ref.max()))
    assert r["counts"] == counts.tolist() and r["total"] == ref.size and len(r["edges"]) == 9


def test_unknown_tensor(ctx_for, tiny_model):
    with pytest.raises(TensorNotFound):
        run_tool(ctx_for(tiny_model), "tensor_stats", {"tensor": "model.nope"})


# -- model-wide scan ------------------------------------------------------------------------------


def test_scan_outliers_finds_each_planted_anomaly(ctx_for, tmp_path):
    path = write_anomalous_model(tmp_path / "models" / "anom" / "model.safetensors")
    ctx = ctx_for(path)
    progress = []
    ctx.progress = lambda what, done, total: progress.append((done, total))
    r = run_tool(ctx, "scan_outliers", {"top": 100})
    assert r["tensors_scanned"] == 6 * 9 + 2
    kinds = {(f["tensor"], f["kind"]) for f in r["findings"]}
    assert ("model.layers.1.self_attn.q_proj.weight", "nan") in kinds
    assert ("model.layers.2.self_attn.k_proj.weight", "inf") in kinds
    assert ("model.layers.3.self_attn.v_proj.weight", "saturated") in kinds
    assert ("model.layers.4.self_attn.o_proj.weight", "layer_norm_outlier") in kinds
    assert ("model.layers.5.mlp.down_proj.weight", "extreme_value") in kinds
    assert ("model.layers.5.mlp.down_proj.weight", "heavy_tails") in kinds
    flagged = {t for t, _ in kinds}
    assert flagged <= {"model.layers.1.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                       "model.layers.3.self_attn.v_proj.weight", "model.layers.4.self_attn.o_proj.weight",
                       "model.layers.5.mlp.down_proj.weight"}, flagged  # nothing healthy is flagged
    assert [f["severity"] for f in r["findings"][:2]] == ["critical", "critical"]
    o_trend = next(t for t in r["layer_trends"] if t["role"] == "model.layers.*.self_attn.o_proj.weight")
    assert [o["layer"] for o in o_trend["outliers"]] == [4] and o_trend["rms_max"]["layer"] == 4
    assert progress and progress[-1][0] == progress[-1][1]
    json.dumps(r, allow_nan=False)  # plain JSON: no NaN/inf sneaks in
    # a second scan is answered from the cache
    ctx.progress = None
    assert run_tool(ctx, "scan_outliers", {"top": 100}) == r


def test_scan_outliers_sees_staged_edits(tmp_path):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL

    model = write_tiny_llama(tmp_path / "models" / "t" / "model.safetensors", layers=5)
    settings = make_settings(tmp_path, model, allowed_roots=[tmp_path])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        name = "model.layers.2.mlp.up_proj.weight"
        assert c.post("/api/edit_tensor", json={"tensor_name": name, "op": "fill", "value": float("1e30"),
                                               "cells": None, "slice": {"dim0_start": 0, "dim0_end": 1,
                                                                        "dim1_start": 0, "dim1_end": 1}}).status_code == 200
        base = c.post("/api/agent/tools/scan_outliers", json={"view": "base"}).json()["result"]
        staged = c.post("/api/agent/tools/scan_outliers", json={"view": "staged"}).json()["result"]
    assert not any(f["tensor"] == name for f in base["findings"])
    assert any(f["tensor"] == name and f["kind"] == "extreme_value" for f in staged["findings"])


def test_layer_summary(ctx_for, tiny_model):
    ctx = ctx_for(tiny_model)
    r = run_tool(ctx, "layer_summary", {})
    assert [row["layer"] for row in r["layers"]] == [0, 1]
    q = oracle(tiny_model, "model.layers.1.self_attn.q_proj.weight")
    assert r["layers"][1]["rms"]["self_attn.q_proj.weight"] == pytest.approx(np.sqrt(np.mean(q**2)), rel=1e-3)
    assert r["layers"][0]["parameters"] == 4 * 16 * 16 + 3 * 32 * 16 + 2 * 16 - 2 * 8 * 16
    one = run_tool(ctx, "layer_summary", {"layer": 1})
    assert len(one["tensors"]) == 9 and all(t["tensor"].startswith("model.layers.1.") for t in one["tensors"])
    with pytest.raises(InvalidRequest, match="no tensors in layer 7"):
        run_tool(ctx, "layer_summary", {"layer": 7})


# -- tokens ---------------------------------------------------------------------------------------


def test_compare_tokens_cosines(ctx_for, token_model):
    emb = embedding(token_model)
    r = run_tool(ctx_for(token_model), "compare_tokens", {"texts": [" Paris", " London", " banana"]})
    assert [i["token_ids"] for i in r["items"]] == [[1], [2], [4]]
    assert r["items"][0]["pieces"] == ["ĠParis"]

    def cos(a, b):
        return emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])

    pair = {(p["a"], p["b"]): p["cosine"] for p in r["pairs"]}
    assert pair[("' Paris'", "' London'")] == pytest.approx(cos(1, 2), abs=1e-3)
    assert pair[("' Paris'", "' banana'")] == pytest.approx(cos(1, 4), abs=1e-3)
    assert r["pairs"][0]["a"] == "' Paris'" and r["pairs"][0]["b"] == "' London'"  # most similar first
    assert -1 <= r["random_pairs_cosine"]["mean"] <= 1


def test_compare_tokens_by_id_and_errors(ctx_for, token_model):
    ctx = ctx_for(token_model)
    r = run_tool(ctx, "compare_tokens", {"token_ids": [1, 3]})
    assert r["items"][1]["item"] == "#3 ' Berlin'"
    with pytest.raises(InvalidRequest, match="not in the vocabulary"):
        run_tool(ctx, "compare_tokens", {"texts": [" Paris", "Pariss"]})
    with pytest.raises(InvalidRequest, match="at least two"):
        run_tool(ctx, "compare_tokens", {"texts": [" Paris"]})
    with pytest.raises(InvalidRequest, match="outside the 64 rows"):
        run_tool(ctx, "compare_tokens", {"token_ids": [1, 64]})


def test_nearest_tokens_scan_the_whole_vocabulary(ctx_for, token_model, monkeypatch):
    from tensor_surgery.agent import tokens

    monkeypatch.setattr(tokens, "CHUNK_ELEMS", 16 * 5)  # 5 rows per chunk: the top-k merge across chunks
    emb = embedding(token_model)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = [int(i) for i in np.argsort(-(unit @ unit[1])) if i != 1][:5]
    r = run_tool(ctx_for(token_model), "nearest_tokens", {"text": " Paris", "k": 5})
    assert [n["id"] for n in r["neighbours"]] == expected
    assert [n["text"] for n in r["neighbours"][:2]] == [" London", " Berlin"]
    assert r["neighbours"][0]["cosine"] == pytest.approx(unit[expected[0]] @ unit[1], abs=1e-3)


def test_nearest_tokens_of_a_zero_or_non_finite_row_warn_instead_of_ranking(ctx_for, token_model):
    """A zeroed row has no direction: every cosine with it is 0, and ten arbitrary tokens would be
    listed as "nearest". The tool says why there are none instead."""
    from .agent_helpers import rewrite

    def plant(t):
        emb = t[EMBED].astype(np.float32)
        emb[1] = 0.0  # ' Paris', zeroed
        emb[2, 3] = np.nan  # ' London', one NaN
        t[EMBED] = emb.astype(t[EMBED].dtype)

    rewrite(token_model, plant)
    ctx = ctx_for(token_model)
    r = run_tool(ctx, "nearest_tokens", {"text": " Paris"})
    assert r["neighbours"] == [] and "is zero" in r["warning"] and "' Paris'" in r["warning"]
    assert r["query"]["norm"] == 0
    r = run_tool(ctx, "nearest_tokens", {"token_id": 2})
    assert r["neighbours"] == [] and "not finite" in r["warning"] and r["query"]["nonfinite_values"] == 1
    # a healthy row still ranks (and the zeroed row, cosine 0, is not among its nearest)
    r = run_tool(ctx, "nearest_tokens", {"token_id": 3, "k": 3})
    assert "warning" not in r and len(r["neighbours"]) == 3 and 1 not in [x["id"] for x in r["neighbours"]]
    # compare_tokens: no cosine for a pair with an unusable vector, and a warning naming it
    r = run_tool(ctx, "compare_tokens", {"texts": [" Paris", " Berlin", " banana"]})
    cos = {(p["a"], p["b"]): p["cosine"] for p in r["pairs"]}
    assert cos[("' Paris'", "' Berlin'")] is None and cos[("' Berlin'", "' banana'")] is not None
    assert len(r["warnings"]) == 1 and "' Paris'" in r["warnings"][0]


def test_search_vocab(ctx_for, token_model):
    ctx = ctx_for(token_model)
    r = run_tool(ctx, "search_vocab", {"mode": "numeric"})
    assert [t["text"] for t in r["tokens"]] == [str(d) for d in range(10)] + [" 7", " 42"]
    assert run_tool(ctx, "search_vocab", {"query": "ARIS"})["tokens"] == [{"id": 1, "text": " Paris", "piece": "ĠParis"}]
    assert run_tool(ctx, "search_vocab", {"query": "ARIS", "case_sensitive": True})["total_matching"] == 0
    assert [t["text"] for t in run_tool(ctx, "search_vocab", {"query": " b", "mode": "prefix"})["tokens"]] == \
        [" Berlin", " banana"]
    assert run_tool(ctx, "search_vocab", {"query": " b", "mode": "prefix", "case_sensitive": True})["total_matching"] == 1
    with pytest.raises(InvalidRequest, match="needs a query"):
        run_tool(ctx, "search_vocab", {"mode": "exact"})


def test_token_layer_response_finds_the_layer_tuned_to_the_tokens(ctx_for, tmp_path):
    from .agent_helpers import rewrite

    path = write_token_model(tmp_path / "models" / "tl" / "model.safetensors")
    emb = embedding(path)
    u = emb[1] / np.linalg.norm(emb[1])

    def tune(t):  # layer 1's gate_proj reads the ' Paris' direction 50x more strongly
        w = t["model.layers.1.mlp.gate_proj.weight"].astype(np.float32)
        w += 50 * 0.05 * np.outer(np.ones(w.shape[0]), u).astype(np.float32)
        t["model.layers.1.mlp.gate_proj.weight"] = w.astype(ml_dtypes.bfloat16)

    rewrite(path, tune)
    r = run_tool(ctx_for(path), "token_layer_response", {"texts": [" Paris"], "baseline_tokens": 32})
    assert r["top_layers"][0]["layer"] == 1
    per = {row["layer"]: row for row in r["per_layer"]}
    gate = "mlp.gate_proj.weight"
    assert per[1]["by_tensor"][gate] > 3 * per[0]["by_tensor"][gate]
    assert per[1]["reads_score"] > per[0]["reads_score"]
    assert set(per[0]["by_tensor"]) == {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                        "self_attn.o_proj.weight", gate, "mlp.up_proj.weight", "mlp.down_proj.weight"}
    assert set(per) == {0, 1} and r["baseline_tokens"] == 32


def test_token_tools_need_a_tokenizer(ctx_for, tiny_model):
    with pytest.raises(SurgeryError) as e:
        run_tool(ctx_for(tiny_model), "nearest_tokens", {"text": " Paris"})
    assert e.value.code == "no_tokenizer" and "tokenizer.json" in e.value.message


def test_token_tools_on_the_real_demo_model(smol_dir, tmp_path):
    ws = Workspace(Settings(_env_file=None, data_dir=tmp_path / "data"))
    ctx = ToolContext(ws, ws.open(smol_dir, guarded=False))
    r = run_tool(ctx, "compare_tokens", {"texts": [" Paris", " London", " banana"]})
    pair = {(p["a"], p["b"]): p["cosine"] for p in r["pairs"]}
    assert pair[("' Paris'", "' London'")] > pair[("' Paris'", "' banana'")]
    near = [n["text"] for n in run_tool(ctx, "nearest_tokens", {"text": " Paris", "k": 10})["neighbours"]]
    assert " London" in near and " France" in near
    ws.close()


def test_token_tools_ignore_a_tokenizer_files_padding_and_truncation(demo_models_dir, tmp_path):
    """MiniLM's tokenizer.json pads every encoding to 128 tokens: the token tools must see only the
    text's own tokens (the oracle: the tokenizers library with padding and truncation switched off)."""
    from tokenizers import Tokenizer

    folder = demo_models_dir / "all-MiniLM-L6-v2"
    oracle = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert oracle.padding is not None  # the premise: the file itself asks for padding
    oracle.no_padding()
    oracle.no_truncation()
    ws = Workspace(Settings(_env_file=None, data_dir=tmp_path / "data"))
    ctx = ToolContext(ws, ws.open(folder, guarded=False))
    r = run_tool(ctx, "compare_tokens", {"texts": ["paris", "london"]})
    assert r["pairs"] and all("[PAD]" not in p["a"] + p["b"] for p in r["pairs"])
    from tensor_surgery.agent.tokens import load_vocab

    vocab = load_vocab(ctx)
    long = " ".join(["word"] * 300)
    assert vocab.encode("paris") == oracle.encode("paris", add_special_tokens=False).ids
    assert vocab.encode(long) == oracle.encode(long, add_special_tokens=False).ids  # 300 tokens, not 128
    ws.close()


# -- proposals --------------------------------------------------------------------------------------


def test_propose_edit_previews_but_never_stages(client, tiny_model):
    before = tiny_model.read_bytes()
    name = "model.layers.0.self_attn.q_proj.weight"
    r = client.post("/api/agent/tools/propose_edit", json={
        "tensor_name": name, "op": "scale", "factor": 0, "rationale": "silence the head"})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["proposal"] == {"tensor_name": name, "op": "scale", "factor": 0, "note": "silence the head"}
    assert res["preview"]["values_changed"] == 256 and res["preview"]["after"]["l2_norm"] == 0
    assert client.get("/api/edits").json()["edits"] == []
    assert tiny_model.read_bytes() == before
    # the proposal is exactly what /api/edit_tensor takes (the UI's Preview button sends it)
    spec = {k: v for k, v in res["proposal"].items() if k != "note"}
    assert client.post("/api/edit_tensor", json={**spec, "dry_run": True}).json()["preview"]["values_changed"] == 256


def test_propose_edit_validates_the_spec(client):
    r = client.post("/api/agent/tools/propose_edit", json={"tensor_name": "model.norm.weight", "op": "scale"})
    assert r.status_code == 400 and "factor" in r.json()["error"]["message"]
    r = client.post("/api/agent/tools/propose_edit", json={"tensor_name": "model.norm.weight", "op": "explode"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_arguments"
    # the same contract as the API: a parameter the op does not take is refused, naming it
    r = client.post("/api/agent/tools/propose_edit", json={"tensor_name": "model.norm.weight", "op": "zero", "factor": 2})
    err = r.json()["error"]
    assert r.status_code == 400 and err["field"] == "factor" and "zero does not take 'factor'" in err["message"]


# -- mentions -----------------------------------------------------------------------------------------


def _span(text: str, m: dict) -> str:
    return text.encode("utf-16-le")[2 * m["start"]: 2 * m["end"]].decode("utf-16-le")


def test_find_mentions_exact_names_only():
    names = {"model.norm.weight", "model.layers.1.mlp.down_proj.weight", "a b c", "lm_head.weight"}
    text = ("See model.norm.weight. And `model.layers.1.mlp.down_proj.weight`, (x:lm_head.weight), "
            "🙂 a b c; not model.norm.weights nor model.norm.")
    found = find_mentions(text, names)
    assert [m["name"] for m in found] == ["model.norm.weight", "model.layers.1.mlp.down_proj.weight",
                                          "lm_head.weight", "a b c"]
    for m in found:
        assert _span(text, m) == m["name"]  # offsets in UTF-16 units, as the browser slices
    assert found[-1]["start"] == text.index("a b c") + 1  # the emoji before it is two UTF-16 units


def test_find_mentions_prefers_the_longest_overlapping_name():
    names = {"model.layers.1", "model.layers.1.mlp.weight"}
    assert [m["name"] for m in find_mentions("x model.layers.1.mlp.weight y", names)] == ["model.layers.1.mlp.weight"]
    assert find_mentions("", names) == []
    assert math.isfinite(len(find_mentions("model.layers.1 " * 10, names)))


def test_results_never_carry_nan_or_inf():
    out = registry.cap_result({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": "x"})
    assert out == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": "x"}


def test_agent_modules_import_no_cycle():
    """The registry is apart from the tools: no agent module imports one that imports it back."""
    import ast

    from .conftest import REPO

    folder = REPO / "tensor_surgery" / "agent"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = {d.split(".")[0] for d in deps} & {p.stem for p in folder.glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    assert [m for m in sorted(graph) if reaches(m, m, set())] == []
    assert "registry" in graph and not graph["registry"]  # the machinery needs no tool
