"""Tensor clustering: coordinates against a numpy SVD oracle, features against numpy float64 on the
values the safetensors library reads, head splits against the tensor read by safetensors, the
q_proj / down_proj separation on the real demo model, and bad input (4xx, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from tensor_surgery.analysis import clustering as cl
from tensor_surgery.store import TensorReader, open_model

from .conftest import BASE_URL, assert_error, make_settings

# Coordinates come from the eigenvectors of a float64 Gram matrix, the oracle's from an SVD of the
# points: both exact up to float64 rounding, which the Gram matrix squares (condition number of the
# few top components here: < 1e3), so 1e-9 of the largest coordinate leaves 1e3 x headroom over
# eps64 * cond^2 * n. The answer then rounds each coordinate to 6 significant digits: 5e-6 relative.
COORD_ATOL = 1e-9
ROUNDING_RTOL = 5e-6


def _read(path, name) -> np.ndarray:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name).float().numpy().astype(np.float64)


def _pca_oracle(points: np.ndarray, dims: int) -> np.ndarray:
    x = points - points.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :dims] * s[:dims]


def _same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    scale = np.abs(b).max()
    for j in range(b.shape[1]):
        sign = 1.0 if np.dot(a[:, j], b[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(sign * a[:, j], b[:, j], atol=COORD_ATOL * scale, rtol=ROUNDING_RTOL)


@pytest.fixture(scope="module")
def smol(smol_dir):
    with open_model(smol_dir) as m:
        yield m


@pytest.fixture(scope="module")
def smol_file(smol_dir):
    return smol_dir / "model.safetensors"


@pytest.fixture(scope="module")
def smol_config(smol_dir):
    return json.loads((smol_dir / "config.json").read_text())


def _coords(result) -> np.ndarray:
    return np.array([p["coords"] for p in result["points"]])


# -- reduction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_reduce_gram_pca_is_the_svd_of_the_centred_points(dims):
    x = np.random.default_rng(3).standard_normal((40, 7)) * np.array([5, 3, 2, 1, 0.5, 0.2, 0.1])
    coords, info = cl.reduce_gram(x @ x.T, "pca", dims)
    oracle = _pca_oracle(x, dims)
    _same_up_to_sign(coords, oracle)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(info["explained_variance_ratio"], (s**2 / np.sum(s**2))[:dims], rtol=1e-9)


def test_rows_pca_matches_svd_of_the_rows_read_by_safetensors(smol, smol_file):
    name = "model.layers.0.self_attn.k_proj.weight"
    result = cl.cluster_matrix(smol, name, "rows", dims=3)
    oracle = _pca_oracle(_read(smol_file, name), 3)
    assert [p["index"] for p in result["points"]] == list(range(192))
    _same_up_to_sign(_coords(result), oracle)


def test_cols_with_indices_match_the_oracle(smol, smol_file):
    name = "model.layers.2.mlp.down_proj.weight"
    idx = [5, 900, 17, 1535, 300, 64]
    result = cl.cluster_matrix(smol, name, "cols", indices=idx)
    oracle = _pca_oracle(_read(smol_file, name)[:, idx].T, 2)
    assert [p["index"] for p in result["points"]] == idx
    _same_up_to_sign(_coords(result), oracle)


def test_big_matrix_rows_are_sampled_evenly(smol, smol_file):
    result = cl.cluster_matrix(smol, "model.embed_tokens.weight", "rows")
    step = -(-49152 // cl.MAX_POINTS)
    assert [p["index"] for p in result["points"]] == list(range(0, 49152, step))
    assert "every 48th" in result["note"]
    oracle = _pca_oracle(_read(smol_file, "model.embed_tokens.weight")[::step], 2)
    _same_up_to_sign(_coords(result), oracle)


# -- heads --------------------------------------------------------------------------------------

def test_q_proj_heads_are_its_row_blocks(smol, smol_file, smol_config):
    name = "model.layers.3.self_attn.q_proj.weight"
    result = cl.cluster_matrix(smol, name, "heads", config=smol_config, dims=3)
    w = _read(smol_file, name)
    heads = np.stack([w[h * 64:(h + 1) * 64].ravel() for h in range(9)])
    assert result["heads"] == 9 and result["head_dim"] == 64 and result["axis"] == "rows"
    _same_up_to_sign(_coords(result), _pca_oracle(heads, 3))
    np.testing.assert_allclose([p["norm"] for p in result["points"]], np.linalg.norm(heads, axis=1), rtol=1e-5)
    # 9 query heads share 3 key/value heads: heads 0-2 read kv head 0, and so on
    assert [p["group"] for p in result["points"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_o_proj_heads_are_its_column_blocks(smol, smol_file, smol_config):
    name = "model.layers.3.self_attn.o_proj.weight"
    result = cl.cluster_matrix(smol, name, "heads", config=smol_config)
    w = _read(smol_file, name)
    heads = np.stack([w[:, h * 64:(h + 1) * 64].ravel() for h in range(9)])
    assert result["axis"] == "cols"
    _same_up_to_sign(_coords(result), _pca_oracle(heads, 2))


def test_k_proj_splits_into_its_three_heads(smol, smol_config):
    result = cl.cluster_matrix(smol, "model.layers.3.self_attn.k_proj.weight", "heads", config=smol_config)
    assert result["heads"] == 3 and [p["label"] for p in result["points"]] == ["head 0", "head 1", "head 2"]


# -- features -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_dir,name", [
    ("SmolLM2-135M-Instruct", "model.layers.5.mlp.up_proj.weight"),  # BF16: pattern counts
    ("all-MiniLM-L6-v2", "encoder.layer.1.intermediate.dense.weight"),  # F32: two float64 passes
    ("all-MiniLM-L6-v2", "encoder.layer.1.output.LayerNorm.weight"),  # a vector
])
def test_features_match_numpy_float64(demo_models_dir, model_dir, name):
    path = demo_models_dir / model_dir / "model.safetensors"
    x = _read(path, name)
    with open_model(path) as m:
        f = cl.tensor_features(TensorReader(m.tensor(name)))
    v = x.ravel()
    mean, std = v.mean(), v.std()
    kurt = np.mean((v - mean) ** 4) / np.var(v) ** 2
    # both sides sum the same float64 values in another order: a few ulps per element summed
    tol = 1e-12 * v.size ** 0.5
    np.testing.assert_allclose([f["mean"] / std, f["std"], f["abs_max"], f["kurtosis"]],
                               [mean / std, std, np.abs(v).max(), kurt], rtol=max(tol, 1e-12), atol=1e-12)
    mat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[None, :]
    s = np.linalg.svd(mat, compute_uv=False)
    # exact through a Gram matrix of float32 products summed in float64: relative error of sigma^2
    # about sqrt(rows) * eps32 (< 1e-5 here), half that on sigma
    np.testing.assert_allclose(f["singular_values"], s[:len(f["singular_values"])], rtol=1e-5)
    assert f["features"][cl.FEATURES.index("log10_rows")] == pytest.approx(np.log10(mat.shape[0]))
    rows = np.linalg.norm(mat, axis=1)
    if mat.shape[0] > 1:
        assert f["features"][cl.FEATURES.index("row_norm_cv")] == pytest.approx(rows.std() / rows.mean(), rel=1e-5)


def test_integer_and_constant_tensors_are_skipped_not_errors(demo_models_dir):
    with open_model(demo_models_dir / "all-MiniLM-L6-v2") as m:
        result = cl.cluster_tensors(m, match=r"^embeddings\.")
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    assert "I64" in skipped["embeddings.position_ids"]
    assert {p["id"] for p in result["points"]} == {
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}


def test_sketch_for_big_matrices_gives_lower_bounds(smol, smol_file):
    """Matrices past GRAM_MAX_WORK (here the 49152 x 576 embedding) are sketched: Ritz values, never
    above the true singular values (float32 products: 1e-5 slack), the top one close."""
    name = "model.embed_tokens.weight"
    reader = TensorReader(smol.tensor(name))
    assert 49152 * 576 * 576 > cl.GRAM_MAX_WORK
    got, _, _ = cl.matrix_facts(reader)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # 2 spinning OpenBLAS threads make this SVD 5x slower here
        s = np.linalg.svd(_read(smol_file, name), compute_uv=False)[:got.size]
    assert np.all(got <= s * (1 + 1e-5))
    assert got[0] >= 0.99 * s[0]  # a dominant direction: two power iterations converge (measured 1.000)


# -- the demo model: similar tensors land together ------------------------------------------------

@pytest.fixture(scope="module")
def layer_map(smol):
    """Every tensor of SmolLM2 (272 points), PCA to 3-D."""
    return cl.cluster_tensors(smol, dims=3)


def test_tensor_pca_is_the_svd_of_the_standardised_features(layer_map):
    x = np.array([p["features"] for p in layer_map["points"]])
    z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1)
    # the features are returned rounded to 6 significant digits: that rounding bounds the agreement
    got = _coords(layer_map)
    oracle = _pca_oracle(z, 3)
    scale = np.abs(oracle).max()
    for j in range(3):
        sign = 1.0 if np.dot(got[:, j], oracle[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(sign * got[:, j], oracle[:, j], atol=1e-4 * scale)


def test_q_proj_cluster_apart_from_down_proj(layer_map):
    from sklearn.metrics import silhouette_score

    pts = layer_map["points"]
    assert layer_map["count"] == 272 and not layer_map["skipped"]
    c = _coords(layer_map)
    q = np.array(["self_attn.q_proj" in p["id"] for p in pts])
    d = np.array(["mlp.down_proj" in p["id"] for p in pts])
    assert q.sum() == d.sum() == 30
    cq, cd = c[q].mean(axis=0), c[d].mean(axis=0)
    q_near = np.linalg.norm(c[q] - cq, axis=1) < np.linalg.norm(c[q] - cd, axis=1)
    d_near = np.linalg.norm(c[d] - cd, axis=1) < np.linalg.norm(c[d] - cq, axis=1)
    assert q_near.all() and d_near.all(), (np.array(layer_map["points"])[q][~q_near], np.array(pts)[d][~d_near])
    both = q | d
    assert silhouette_score(c[both], q[both]) > 0.5
    # the same layers' types differ more than one type's layers do: a type is a cluster, not a layer
    assert np.linalg.norm(cq - cd) > 2 * max(np.linalg.norm(c[q] - cq, axis=1).mean(),
                                              np.linalg.norm(c[d] - cd, axis=1).mean())


# -- the API ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory, demo_models_dir):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    tmp = tmp_path_factory.mktemp("clusters")
    settings = make_settings(tmp, demo_models_dir / "all-MiniLM-L6-v2",
                             allowed_roots=[tmp, demo_models_dir])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        yield c


def test_api_maps_the_model_tensors(api):
    r = api.get("/api/clusters", params={"method": "pca", "dims": 3})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["mode"] == "tensors" and data["dims"] == 3 and data["features"] == list(cl.FEATURES)
    by_id = {p["id"]: p for p in data["points"]}
    q = by_id["encoder.layer.2.attention.self.query.weight"]
    assert q["type_group"] == "attention_qkv" and q["layer_index"] == 2 and len(q["coords"]) == 3
    skipped = {s["name"]: s["reason"] for s in data["skipped"]}
    assert set(skipped) == {"embeddings.position_ids", "pooler.dense.bias"}  # I64; all zeros in MiniLM
    assert "equal" in skipped["pooler.dense.bias"]
    # the same map again is served from the per-tensor feature cache: identical numbers
    assert api.get("/api/clusters", params={"method": "pca", "dims": 3}).json()["points"] == data["points"]


def test_api_tsne_is_deterministic(api):
    body = {"method": "tsne", "dims": 2, "match": r"encoder\.layer\.\d+\.(attention|intermediate|output)"}
    a = api.post("/api/clusters", json=body)
    assert a.status_code == 200, a.text
    coords = _coords(a.json())
    assert np.isfinite(coords).all() and coords.shape == (a.json()["count"], 2)
    assert a.json()["points"] == api.post("/api/clusters", json=body).json()["points"]


def test_api_heads_and_rows(api):
    r = api.get("/api/clusters", params={"tensor": "encoder.layer.0.attention.self.query.weight", "by": "heads"})
    assert r.status_code == 200, r.text
    assert r.json()["heads"] == 12 and r.json()["head_dim"] == 32
    r = api.post("/api/clusters", json={"tensor": "embeddings.word_embeddings.weight", "by": "rows",
                                        "tokens": ["paris", "london", "apple", "banana"]})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["points"]]
    assert len(labels) == 4 and "'paris'" in labels[0]


@pytest.mark.parametrize("params,status,field,text", [
    ({"tensor": "no.such.tensor"}, 404, None, "no.such.tensor"),
    ({"tensor": "encoder.layer.0.output.LayerNorm.weight"}, 400, "tensor", "2-D"),
    ({"tensor": "embeddings.position_ids"}, 400, "tensor", "I64"),
    ({"method": "umap"}, 422, None, None),
    ({"dims": 4}, 422, None, None),
    ({"tensor": "encoder.layer.0.attention.self.query.weight", "by": "heads", "head_dim": 100}, 400, "head_dim",
     "not a multiple"),
    ({"tensor": "encoder.layer.0.attention.self.query.weight", "indices": "1,2,999"}, 400, "indices", "999"),
    ({"tensor": "encoder.layer.0.attention.self.query.weight", "indices": "1,x"}, 400, "indices", "integers"),
    ({"indices": "1,2"}, 400, "indices", "give `tensor`"),
    ({"match": "("}, 400, "match", "regular expression"),
    ({"match": "nothing-matches-this"}, 400, "match", "no tensor matches"),
    ({"groups": "attention_qkv,bogus"}, 400, "groups", "bogus"),
])
def test_api_bad_input_is_a_clear_4xx(api, params, status, field, text):
    r = api.get("/api/clusters", params=params)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if field:
        assert err.get("field") == field, err
    if text:
        assert text in err["message"], err


def test_api_post_rejects_unknown_fields_and_bad_types(api):
    assert_error(api.post("/api/clusters", json={"method": "pca", "colour": "red"}), 422)
    assert_error(api.post("/api/clusters", json={"tensor": "embeddings.word_embeddings.weight", "by": "cols",
                                                 "tokens": ["paris"]}), 400, contains="by=rows")


# -- the CLI ------------------------------------------------------------------------------------

def test_cli_writes_csv_and_json(run, demo_models_dir, tmp_path):
    model = demo_models_dir / "all-MiniLM-L6-v2"
    out = tmp_path / "heads.csv"
    r = run("cluster", model, "--tensor", "encoder.layer.0.attention.self.key.weight", "--by", "heads",
            "--dims", "3", "--out", out)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,x,y,z,index,group,norm" and len(lines) == 13
    r = run("cluster", model, "--match", r"encoder\.layer\.[01]\.", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["count"] == 32 and all(len(p["coords"]) == 2 for p in data["points"])


@pytest.mark.parametrize("args,field", [
    (["--tensor", "no.such.tensor"], None),
    (["--tensor", "encoder.layer.0.output.LayerNorm.weight"], "tensor"),
    (["--method", "umap"], "method"),
    (["--dims", "4"], "dims"),
    (["--tensor", "embeddings.word_embeddings.weight", "--indices", "1,999999"], "indices"),
    (["--out", "points.txt"], "out"),
])
def test_cli_bad_input_exits_2(run, demo_models_dir, args, field):
    r = run("cluster", demo_models_dir / "all-MiniLM-L6-v2", *args, "--json")
    assert r.exit_code == 2, r.output
    err = json.loads(r.output.strip().splitlines()[-1])["error"]
    if field:
        assert err.get("field") == field, err
