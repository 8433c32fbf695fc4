"""`tensor-surgery analyze`: every column against an independent oracle (the safetensors library,
numpy in float64, np.linalg.matrix_rank under the notes' tolerance), the notes' ordering, the three
formats read back (pyarrow for Parquet), run_meta.json, resume, bad tensors, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from tensor_surgery.analysis import run as run_mod
from tensor_surgery.analysis import table as tb
from tensor_surgery.analysis.writers import SCHEMA

EPS = float(np.finfo(np.float64).eps)
# one layer, the final norm (a non-layer parameter) of SmolLM2; MiniLM's small embeddings
SMOL_MATCH = r"^model\.layers\.3\.|^model\.norm\."
MINI_MATCH = r"^encoder\.layer\.1\.|^embeddings\.(token_type|position)_embeddings|^pooler\."


def oracle_tensors(path: Path, names) -> dict[str, np.ndarray]:
    """The tensors as the safetensors library reads them, in float64."""
    with safe_open(str(path), framework="pt") as f:
        return {n: f.get_tensor(n).to(torch.float64).numpy() for n in names}


def oracle_row(x: np.ndarray, eps: float) -> dict:
    out = {
        "mean": x.mean(), "std": x.std(), "var": x.var(), "sparsity": float(np.mean(np.abs(x) <= eps)),
        "min": x.min(), "max": x.max(), "abs_max": np.abs(x).max(), "l2_norm": np.sqrt(np.sum(x * x)),
        "numel": x.size,
    }
    for col, p in zip(tb.PERCENTILE_COLUMNS, tb.PERCENTILES):
        out[col] = np.percentile(x, p)
    if x.ndim >= 2:
        a = x.reshape(x.shape[0], -1)
        s = np.linalg.svd(a, compute_uv=False)
        out["rank"] = int(np.linalg.matrix_rank(a, tol=1e-6 * s.max()))
        out["spectral_norm"] = s[0]
        out["stable_rank"] = float(np.sum(s * s) / s[0] ** 2)
        out["rows"], out["cols"] = a.shape
    else:
        out["rank"] = out["spectral_norm"] = out["stable_rank"] = out["rows"] = out["cols"] = None
    return out


@pytest.fixture(scope="module")
def smol_table(demo_models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "smol.jsonl"
    res = run_mod.analyze_to_file([str(demo_models_dir / "SmolLM2-135M-Instruct")], out, tb.Options(),
                                  pattern=SMOL_MATCH, command=["test"])
    return out, res


def check_against_oracle(rows: list[dict], model_file: Path, eps: float = 1e-8) -> None:
    xs = oracle_tensors(model_file, [r["param_name"] for r in rows])
    for r in rows:
        x = xs[r["param_name"]]
        o = oracle_row(x, eps)
        n = x.size
        name = r["param_name"]
        assert r["shape"] == str(tuple(x.shape)), name
        assert (r["rows"], r["cols"]) == (o["rows"], o["cols"]), name
        assert r["rank"] == o["rank"], name
        assert r["numel"] == n and r["nan_count"] == 0 and r["inf_count"] == 0
        assert r["sparsity"] == o["sparsity"], name  # a count over n: exact
        for k in ("min", "max", "abs_max"):
            assert r[k] == o[k], (name, k)  # elements themselves
        # numpy's linear interpolation between two neighbours a, b at fraction f of (n-1)*p/100:
        # f is rounded relative to n (n*eps), the lerp to a few eps of |x|
        spread = o["max"] - o["min"]
        for k in tb.PERCENTILE_COLUMNS:
            assert abs(r[k] - o[k]) <= n * EPS * spread + 4 * EPS * o["abs_max"], (name, k)
        # float64 sums of n terms: each differs from numpy's pairwise sum by at most n*eps of
        # the sum of magnitudes (Higham's bound for recursive summation)
        mean_abs = float(np.mean(np.abs(x)))
        assert abs(r["mean"] - o["mean"]) <= n * EPS * mean_abs, name
        ms = float(np.mean(x * x))
        assert abs(r["var"] - o["var"]) <= 4 * n * EPS * ms, name
        assert abs(r["std"] - o["std"]) <= 4 * n * EPS * ms / max(o["std"], 1e-300), name
        assert r["l2_norm"] == pytest.approx(o["l2_norm"], rel=n * EPS), name
        if o["spectral_norm"] is not None:
            m, c = o["rows"], o["cols"]
            # from the Gram matrix's eigenvalues: relative error up to (m+n)*eps times the stable rank
            rel = (m + c) * EPS * o["stable_rank"] * 4
            assert r["spectral_norm"] == pytest.approx(o["spectral_norm"], rel=rel), name
            assert r["stable_rank"] == pytest.approx(o["stable_rank"], rel=2 * rel), name
            assert r["rank_method"] in ("exact", "exact_svd") and r["rank_certain"] is True
        else:
            assert r["rank"] is None and r["rank_method"] == "none: not a matrix"


def test_every_column_matches_the_oracle_on_smollm2(smol_table, smol_dir):
    out, res = smol_table
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and [tuple(r) for r in rows] == [tb.ALL_COLUMNS] * 10
    check_against_oracle(rows, smol_dir / "model.safetensors")
    by = {r["param_name"]: r for r in rows}
    q = by["model.layers.3.self_attn.q_proj.weight"]
    assert q["layer_index"] == 3 and q["block_type"] == "q_proj" and q["dtype"] == "BF16"
    assert by["model.layers.3.mlp.down_proj.weight"]["block_type"] == "down_proj"
    assert by["model.norm.weight"]["layer_index"] is None and by["model.norm.weight"]["block_type"] == "norm"
    assert q["model_id"] == "SmolLM2-135M-Instruct" and q["revision"] is None
    assert q["model_path"] == str(smol_dir / "model.safetensors")
    assert q["created_at"].endswith("Z")


def test_every_column_matches_the_oracle_on_minilm_f32(demo_models_dir, tmp_path):
    model = demo_models_dir / "all-MiniLM-L6-v2"
    out = tmp_path / "mini.csv"
    run_mod.analyze_to_file([str(model)], out, tb.Options(sparsity_eps=1e-3), pattern=MINI_MATCH, command=["t"])
    rows = read_csv(out)
    assert len(rows) == 20
    check_against_oracle(rows, model / "model.safetensors", eps=1e-3)
    by = {r["param_name"]: r for r in rows}
    assert by["encoder.layer.1.attention.self.query.weight"]["block_type"] == "query"
    assert by["encoder.layer.1.attention.output.dense.weight"]["block_type"] == "attention.output.dense"
    assert by["encoder.layer.1.output.dense.weight"]["block_type"] == "output.dense"
    assert by["embeddings.position_embeddings.weight"]["block_type"] == "embedding"
    assert by["pooler.dense.weight"]["block_type"] == "output"


def read_csv(path: Path) -> list[dict]:
    """CSV back into typed rows with the schema's types (what a reader of the file would do)."""
    types = {f.name: str(f.type) for f in SCHEMA}
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            row = {}
            for k, v in rec.items():
                t = types[k]
                if v == "":
                    row[k] = None
                elif t in ("int64", "int32"):
                    row[k] = int(v)
                elif t == "double":
                    row[k] = float(v)
                elif t == "bool":
                    row[k] = v == "true"
                else:
                    row[k] = v
            rows.append(row)
    return rows


def test_ordering_is_numeric_layers_then_non_layer_parameters(tmp_path):
    from tests.conftest import write_tiny_llama  # noqa: PLC0415

    a = write_tiny_llama(tmp_path / "a" / "model.safetensors")
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": np.full((2, 3), i, np.float32) for i in (0, 2, 10, 1)}
    tensors |= {"model.embed_tokens.weight": np.ones((4, 3), np.float32), "lm_head.weight": np.ones((4, 3), np.float32)}
    b = tmp_path / "b" / "model.safetensors"
    b.parent.mkdir()
    save_file(tensors, str(b))
    out = tmp_path / "both.jsonl"
    run_mod.analyze_to_file([str(a), str(b)], out, tb.Options(rank="none"), command=["t"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    layers = [r["layer_index"] for r in rows]
    first_none = layers.index(None)
    assert all(li is None for li in layers[first_none:])
    numeric = layers[:first_none]
    assert numeric == sorted(numeric) and numeric[-1] == 10  # 10 after 2: numeric, not text
    assert {r["model_path"] for r in rows} == {str(a), str(b)}
    b_layers = [(r["layer_index"], r["mean"]) for r in rows if r["model_path"] == str(b) and r["layer_index"] is not None]
    assert b_layers == [(0, 0.0), (1, 1.0), (2, 2.0), (10, 10.0)]
    tail = [(r["model_path"], r["param_name"]) for r in rows[first_none:]]
    assert tail[-2:] == [(str(b), "model.embed_tokens.weight"), (str(b), "lm_head.weight")]
    assert {r["block_type"] for r in rows if r["param_name"] == "lm_head.weight"} == {"output"}


def test_three_formats_hold_the_same_table_and_parquet_has_the_declared_schema(smol_table, tmp_path, smol_dir):
    _, res = smol_table
    rows = res["table"]
    from tensor_surgery.analysis.writers import write_table

    write_table(rows, tmp_path / "t.parquet")
    write_table(rows, tmp_path / "t.csv")
    t = pq.read_table(tmp_path / "t.parquet")
    # Parquet has no second-resolution timestamps: pyarrow stores created_at in milliseconds
    expected = [(f.name, str(f.type).replace("timestamp[s,", "timestamp[ms,"), f.nullable) for f in SCHEMA]
    assert [(f.name, str(f.type), f.nullable) for f in t.schema] == expected
    assert t.schema.names == list(tb.ALL_COLUMNS)
    back = t.to_pylist()
    csv_rows = read_csv(tmp_path / "t.csv")
    for r, p, c in zip(rows, back, csv_rows):
        for k in tb.ALL_COLUMNS:
            if k == "created_at":
                assert p[k].isoformat().replace("+00:00", "Z") == r[k] == c[k]
                continue
            assert p[k] == r[k] == c[k], k


def test_run_meta_json_records_provenance(smol_table, smol_dir):
    out, _ = smol_table
    meta = json.loads((out.parent / "run_meta.json").read_text())
    for key in ("model_id", "revision", "code_version", "python_version", "numpy_version", "torch_version",
                "transformers_version", "timestamp", "command", "seed", "options", "rows", "skipped"):
        assert key in meta, key
    assert meta["model_id"] == "SmolLM2-135M-Instruct" and meta["rows"] == 10 and meta["command"] == ["test"]
    assert meta["options"]["rank"] == "exact" and meta["options"]["match"] == SMOL_MATCH
    assert meta["torch_version"] == torch.__version__
    assert not (out.parent / f".{out.name}.partial.jsonl").exists()


def test_hf_cache_paths_give_model_id_and_revision(tmp_path):
    commit = "a" * 40
    snap = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / commit
    assert tb.model_identity(str(snap / "model.safetensors")) == ("HuggingFaceTB/SmolLM2-135M", commit)
    assert tb.model_identity(str(tmp_path / "x" / "model.safetensors")) == ("x", None)


def test_randomized_rank_states_a_bound_that_holds(tmp_path):
    rng = np.random.default_rng(3)
    low = (rng.standard_normal((300, 5)) @ rng.standard_normal((5, 200))).astype(np.float32)
    full = rng.standard_normal((120, 90)).astype(np.float32)
    path = tmp_path / "m" / "model.safetensors"
    path.parent.mkdir()
    save_file({"low": low, "full": full}, str(path))
    out = tmp_path / "r.jsonl"
    run_mod.analyze_to_file([str(path)], out, tb.Options(rank="randomized", rank_k=20), command=["t"])
    by = {json.loads(x)["param_name"]: json.loads(x) for x in out.read_text().splitlines()}
    s_low = np.linalg.svd(low.astype(np.float64), compute_uv=False)
    assert by["low"]["rank"] == np.linalg.matrix_rank(low.astype(np.float64), tol=1e-6 * s_low[0]) == 5
    assert by["low"]["rank_certain"] is True and by["low"]["rank_method"] == "randomized"
    assert 0 <= by["low"]["rank_error_bound"] < 1e-6 * s_low[0]
    assert by["low"]["spectral_norm"] == pytest.approx(s_low[0], rel=1e-9)
    # full rank 90 > k + oversample: a lower bound, said so, with a bound above the tolerance
    s_full = np.linalg.svd(full.astype(np.float64), compute_uv=False)
    assert by["full"]["rank"] == 30 and by["full"]["rank_certain"] is False
    assert by["full"]["rank_error_bound"] >= s_full[30]  # the bound covers what was not computed
    assert by["full"]["spectral_norm"] <= s_full[0] <= by["full"]["spectral_norm"] + by["full"]["rank_error_bound"]


def test_exact_rank_near_the_tolerance_falls_back_to_svd(tmp_path):
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((64, 3)) @ rng.standard_normal((3, 40))).astype(np.float64)
    # singular values a hair above and below 1e-6 * s.max(): inside the Gram matrix's rounding
    # bound, so the rank must come from the SVD (the oracle's own method)
    above = np.diag([1.0, 1e-6 * (1 + 1e-9), 0.5])
    below = np.diag([1.0, 1e-6 * (1 - 1e-9), 0.5])
    path = tmp_path / "m" / "model.safetensors"
    path.parent.mkdir()
    save_file({"tall": a, "wide": np.ascontiguousarray(a.T), "zero": np.zeros((5, 4), np.float32),
               "above": above, "below": below}, str(path))
    rows = run_mod.analyze_to_file([str(path)], tmp_path / "o.jsonl", tb.Options(), command=["t"])["table"]
    by = {r["param_name"]: r for r in rows}
    for name, x in (("tall", a), ("wide", a.T), ("above", above), ("below", below)):
        s = np.linalg.svd(x, compute_uv=False)
        assert by[name]["rank"] == np.linalg.matrix_rank(x, tol=1e-6 * s[0]), name
    assert by["tall"]["rank"] == by["wide"]["rank"] == 3
    assert (by["above"]["rank"], by["below"]["rank"]) == (3, 2)
    assert by["above"]["rank_method"] == by["below"]["rank_method"] == "exact_svd"
    assert by["zero"]["rank"] == 0 and by["zero"]["sparsity"] == 1.0


def test_resume_computes_only_what_the_interrupted_run_left(demo_models_dir, tmp_path, monkeypatch):
    model = str(demo_models_dir / "all-MiniLM-L6-v2")
    out = tmp_path / "r.parquet"
    full = run_mod.analyze_to_file([model], tmp_path / "full.jsonl", tb.Options(rank="none"), command=["t"])["table"]
    monkeypatch.setattr(tb, "TASKS_PER_MODEL", 8)
    real = tb.analyze_tensors
    seen: list[str] = []

    def counting(path, names, options):
        seen.extend(names)
        return real(path, names, options)

    monkeypatch.setattr(tb, "analyze_tensors", counting)
    calls = {"n": 0}

    def kill_after_two_tasks(done, total):
        calls["n"] += 1
        if calls["n"] == 3:  # the first call reports the start; then one per task
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_mod.analyze_to_file([model], out, tb.Options(rank="none"), progress=kill_after_two_tasks, command=["t"])
    assert not out.exists()
    partial = out.with_name(f".{out.name}.partial.jsonl")
    first = list(seen)
    assert partial.is_file() and 0 < len(first) < len(full)
    seen.clear()
    res = run_mod.analyze_to_file([model], out, tb.Options(rank="none"), command=["t"])
    assert res["resumed_tensors"] == len(first)
    assert sorted(seen) == sorted(set(r["param_name"] for r in full) - set(first))  # nothing twice
    assert not partial.exists()
    again = pq.read_table(out).to_pylist()
    assert [{k: v for k, v in r.items() if k != "created_at"} for r in again] == \
        [{k: v for k, v in r.items() if k != "created_at"} for r in full]


def test_resume_ignores_results_of_other_options(demo_models_dir, tmp_path):
    model = str(demo_models_dir / "all-MiniLM-L6-v2")
    out = tmp_path / "r.jsonl"
    header = run_mod._partial_header([tb.describe_model(model)], tb.Options(rank="none", sparsity_eps=0.5), None)
    assert run_mod.load_partial(out, header) == {}
    partial = run_mod.partial_path(out)
    fake = {"param_name": "pooler.dense.bias", "values": {"mean": 123.0}}
    partial.write_text(json.dumps(header) + "\n" + json.dumps({"model_path": "x", "result": fake}) + "\n{torn")
    assert run_mod.load_partial(partial, header) == {("x", "pooler.dense.bias"): fake}  # torn line ignored
    other = run_mod._partial_header([tb.describe_model(model)], tb.Options(rank="none"), None)
    assert run_mod.load_partial(partial, other) == {}


def write_raw_safetensors(path: Path, specs) -> None:
    """A valid safetensors file with zeroed data, for dtypes the safetensors library cannot write."""
    header, offset = {}, 0
    for name, dtype, shape, nbytes in specs:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(offset))


def test_bad_tensors_are_reported_with_name_and_shape_and_skipped(tmp_path, run):
    path = tmp_path / "bad" / "model.safetensors"
    write_raw_safetensors(path, [("model.layers.0.mlp.up_proj.weight", "F32", (4, 3), 48),
                                 ("model.layers.0.odd", "F6_E2M3", (2, 4), 6),
                                 ("model.layers.0.complex", "C64", (2, 2), 32)])
    out = tmp_path / "bad.csv"
    res = run("analyze", path, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    skipped = {s["param_name"]: s for s in body["skipped"]}
    assert set(skipped) == {"model.layers.0.odd", "model.layers.0.complex"}
    assert skipped["model.layers.0.odd"]["shape"] == [2, 4] and "F6_E2M3" in skipped["model.layers.0.odd"]["reason"]
    rows = read_csv(out)
    assert [r["param_name"] for r in rows] == ["model.layers.0.mlp.up_proj.weight"]
    assert rows[0]["rank"] == 0 and rows[0]["sparsity"] == 1.0  # a hole reads as zeros
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert {s["param_name"] for s in meta["skipped"]} == set(skipped)


def test_nan_values_keep_their_row_without_a_rank(tmp_path):
    x = np.ones((4, 4), np.float32)
    x[1, 2] = np.nan
    x[0, 0] = np.inf
    path = tmp_path / "n" / "model.safetensors"
    path.parent.mkdir()
    save_file({"w": x}, str(path))
    (row,) = run_mod.analyze_to_file([str(path)], tmp_path / "n.jsonl", tb.Options(), command=["t"])["table"]
    assert row["nan_count"] == 1 and row["inf_count"] == 1 and row["rank"] is None
    assert row["mean"] == 1.0 and row["rank_method"].startswith("none: NaN")


@pytest.mark.parametrize(
    "args, code, field",
    [
        (["--out", "{tmp}/t.txt"], 2, "out"),
        (["--out", "{tmp}/nowhere/t.csv"], 2, "out"),
        (["--out", "{tmp}/t.csv", "--match", "("], 2, "match"),
        (["--out", "{tmp}/t.csv", "--match", "no-such-tensor"], 2, "match"),
        (["--out", "{tmp}/t.csv", "--sparsity-eps", "-1"], 2, "sparsity_eps"),
        (["--out", "{tmp}/t.csv", "--ray", "local:zero"], 1, "ray"),
        (["--out", "{tmp}/t.csv", "--ray", "127.0.0.1:1"], 1, "ray"),
    ],
)
def test_bad_input_exit_codes(run, tiny_model, tmp_path, args, code, field):
    res = run("analyze", tiny_model, *[a.format(tmp=tmp_path) for a in args], "--json")
    assert res.exit_code == code, res.output
    assert json.loads(res.stdout)["error"]["field"] == field
    assert not list(tmp_path.glob("t.*")) and not list(tmp_path.glob(".t.*"))


def test_existing_out_is_refused_unless_overwrite(run, tiny_model, tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text("keep me")
    res = run("analyze", tiny_model, "--out", out, "--json", "--rank", "none")
    assert res.exit_code == 2 and out.read_text() == "keep me"
    res = run("analyze", tiny_model, "--out", out, "--json", "--rank", "none", "--overwrite")
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == json.loads(res.stdout)["rows"] > 0


def test_unknown_model_is_bad_input(run, tmp_path):
    res = run("analyze", tmp_path / "missing", "--out", tmp_path / "t.csv", "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["code"] == "model_not_found"
