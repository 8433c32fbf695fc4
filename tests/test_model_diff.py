"""Model diff and LoRA extraction against independent oracles.

A fine-tune of the real SmolLM2 demo model is made here with known changes (a rank-2 and a rank-4
delta, one weight scaled by 1.25), written with the safetensors library; every number of the diff
is checked against numpy float64 on the tensors the safetensors library loads, the delta ranks
against np.linalg.matrix_rank, the extracted LoRA against numpy's SVD (Eckart-Young) and, loaded
with peft onto the base, against the fine-tune's own logits (transformers).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import tiny_llama_tensors

Q2 = "model.layers.3.self_attn.q_proj.weight"  # + a rank-2 delta
V4 = "model.layers.20.self_attn.v_proj.weight"  # + a rank-4 delta
DOWN = "model.layers.10.mlp.down_proj.weight"  # scaled by 1.25: a full-rank delta
CHANGED = {Q2, V4, DOWN}
MOVED_LAYERS = r"layers\.(3|10|20)\."  # --match for the LoRA runs: the rest was shown unchanged above


def _bf16_unit_roundoff() -> float:
    import ml_dtypes

    return float(np.finfo(ml_dtypes.bfloat16).eps) / 2  # 2^-8


@pytest.fixture(scope="module")
def smol_ft(smol_dir, tmp_path_factory) -> dict:
    """The SmolLM2 demo model and a fine-tune of it with known changes, in float64 for oracles."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("smolft")
    base = load_file(str(smol_dir / "model.safetensors"))
    rng = np.random.default_rng(11)

    def plus_low_rank(name: str, r: int) -> torch.Tensor:
        w = base[name].double()
        d = rng.standard_normal((w.shape[0], r)) @ rng.standard_normal((r, w.shape[1]))
        d *= 0.5 * float(w.norm()) / np.linalg.norm(d)  # ||D|| = ||W|| / 2: far above BF16 rounding
        return (w + torch.from_numpy(d)).to(torch.bfloat16)

    ft = dict(base)
    ft[Q2] = plus_low_rank(Q2, 2)
    ft[V4] = plus_low_rank(V4, 4)
    ft[DOWN] = (base[DOWN].double() * 1.25).to(torch.bfloat16)
    ft_dir = root / "smol-ft"
    ft_dir.mkdir()
    save_file(ft, str(ft_dir / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(smol_dir / "config.json", ft_dir / "config.json")
    # oracles: what the safetensors library reads back, in float64
    loaded_ft = load_file(str(ft_dir / "model.safetensors"))
    oracle_changed = {n for n in base if not torch.equal(base[n], loaded_ft[n])}

    def arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
        return base[name].double().numpy(), loaded_ft[name].double().numpy()

    return {"base": smol_dir, "ft": ft_dir, "root": root, "arrays": arrays, "names": set(base),
            "oracle_changed": oracle_changed}


@pytest.fixture(scope="module")
def smol_diff(smol_ft) -> dict:
    from tensor_surgery.analysis.diff import diff_models
    from tensor_surgery.store import open_model

    with open_model(smol_ft["base"]) as a, open_model(smol_ft["ft"]) as b:
        return diff_models(a, b)


def test_diff_finds_exactly_the_changed_tensors(smol_diff, smol_ft):
    rows = {r["name"]: r for r in smol_diff["rows"]}
    assert set(rows) == smol_ft["names"]
    changed = {n for n, r in rows.items() if r["status"] == "changed"}
    assert changed == CHANGED
    assert changed == smol_ft["oracle_changed"]
    assert smol_diff["summary"]["changed"] == 3 and smol_diff["summary"]["unchanged"] == len(rows) - 3
    # most moved first
    order = [r["name"] for r in smol_diff["rows"][:3]]
    rel = [rows[n]["relative_change"] for n in order]
    assert rel == sorted(rel, reverse=True)


def test_diff_numbers_match_numpy_float64(smol_diff, smol_ft):
    # The sums run in float64 over at most ~1M products; their relative rounding is below 1e-12,
    # so 1e-9 is a tolerance with room to spare (and tighter than the 1e-6 asked for).
    rows = {r["name"]: r for r in smol_diff["rows"]}
    for name in [*CHANGED, "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]:
        a, b = smol_ft["arrays"](name)
        d = b - a
        r = rows[name]
        na, nb, nd = np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(d)
        assert r["relative_change"] == pytest.approx(nd / na, rel=1e-9, abs=1e-15), name
        assert r["cosine"] == pytest.approx(float(np.sum(a * b)) / (na * nb), rel=1e-9), name
        assert r["max_abs_change"] == float(np.max(np.abs(d))), name  # exact: one subtraction of two BF16
        assert r["changed_elements"] == int(np.count_nonzero(a != b)), name
        assert r["changed_fraction"] == pytest.approx(np.count_nonzero(a != b) / a.size, rel=1e-12), name
        assert r["base_norm"] == pytest.approx(na, rel=1e-9) and r["delta_norm"] == pytest.approx(nd, rel=1e-9, abs=1e-15)
    # the scaled weight moved by a quarter (before BF16 rounding of 1.25 x)
    assert rows[DOWN]["relative_change"] == pytest.approx(0.25, abs=2 * _bf16_unit_roundoff())


def test_delta_ranks_against_matrix_rank(smol_diff, smol_ft):
    rows = {r["name"]: r for r in smol_diff["rows"]}
    u = _bf16_unit_roundoff()
    for name, want in ((Q2, 2), (V4, 4)):
        a, b = smol_ft["arrays"](name)
        s = np.linalg.svd(b - a, compute_uv=False)
        tol = max(1e-6 * s[0], u * np.linalg.norm(b))  # the documented tolerance, recomputed here
        assert np.count_nonzero(s > tol) == want  # np.linalg.matrix_rank(b - a, tol=tol), one SVD fewer
        assert rows[name]["delta_rank"] == want, rows[name]
        assert rows[name]["delta_rank_tolerance"] == pytest.approx(tol, rel=1e-9)
        assert rows[name]["delta_singular_values"][:want] == pytest.approx(s[:want], rel=1e-9)
    a, b = smol_ft["arrays"](DOWN)
    s = np.linalg.svd(b - a, compute_uv=False)
    tol = max(1e-6 * s[0], u * np.linalg.norm(b))
    assert rows[DOWN]["delta_rank"] == np.count_nonzero(s > tol) > 100  # a scaling is full rank
    assert rows["model.layers.0.mlp.up_proj.weight"]["delta_rank"] == 0  # unchanged


@pytest.fixture(scope="module")
def logits(smol_ft):
    """The base model (float32, transformers) with a fixed token sequence and the next-token
    logits of base and fine-tune; adapters are put on the same base object and taken off again."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345, 30, 378]])
    ft = AutoModelForCausalLM.from_pretrained(str(smol_ft["ft"]), dtype=torch.float32)
    with torch.no_grad():
        ft_logits = ft(ids).logits[0].double().numpy()
    del ft
    base = AutoModelForCausalLM.from_pretrained(str(smol_ft["base"]), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits[0].double().numpy()
    return {"model": base, "ids": ids, "base": base_logits, "ft": ft_logits}


def _lora_logits(logits, adapter: Path) -> np.ndarray:
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(logits["model"], str(adapter))
    model.eval()
    try:
        with torch.no_grad():
            return model(logits["ids"]).logits[0].double().numpy()
    finally:
        logits["model"] = model.unload()  # the bare base again, for the next adapter


def test_extract_lora_full_rank_reproduces_the_fine_tune(smol_ft, logits, run):
    out = smol_ft["root"] / "lora-full"
    res = run("diff", smol_ft["base"], smol_ft["ft"], "--out", out, "--extract-lora", 576, "--match", MOVED_LAYERS, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert {c["name"] for c in report["captured"]} == CHANGED
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and sorted(cfg["target_modules"]) == sorted(n[:-7] for n in CHANGED)
    assert cfg["rank_pattern"] == {V4[:-7]: 192}  # v_proj is 192 x 576: rank at most 192
    # at full rank nothing is discarded but float64 rounding of the SVD
    assert report["relative_error_overall"] < 1e-12
    lg = logits
    got = _lora_logits(logits, out)
    moved = np.max(np.abs(lg["ft"] - lg["base"]))
    assert moved > 0.5  # the fine-tune changes the logits visibly
    # The adapter holds the deltas in float32 (relative rounding 2^-24 per factor); evaluated in
    # float32 through 30 layers, what is left is float32 noise, far below the fine-tune's effect.
    assert np.max(np.abs(got - lg["ft"])) < 1e-3 * moved


def test_extract_lora_truncated_reports_what_it_drops(smol_ft, logits, run):
    from safetensors.numpy import load_file

    out = smol_ft["root"] / "lora-2"
    res = run("diff", smol_ft["base"], smol_ft["ft"], "--out", out, "--extract-lora", 2, "--match", MOVED_LAYERS, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    weights = load_file(str(out / "adapter_model.safetensors"))
    total_energy = discarded = 0.0
    for c in report["captured"]:
        a, b = smol_ft["arrays"](c["name"])
        d = b - a
        s = np.linalg.svd(d, compute_uv=False)
        assert c["discarded_energy"] == pytest.approx(float(np.sum(s[2:] ** 2)), rel=1e-6, abs=1e-9)
        # Eckart-Young: B @ A is the best rank-2 approximation, within float32 storage of the factors
        prefix = f"base_model.model.{c['module']}"
        approx = weights[f"{prefix}.lora_B.weight"].astype(np.float64) @ weights[f"{prefix}.lora_A.weight"].astype(np.float64)
        best = np.linalg.norm(d - approx) ** 2
        assert best == pytest.approx(float(np.sum(s[2:] ** 2)), rel=1e-4, abs=1e-6 * float(np.sum(s ** 2)))
        total_energy += float(np.sum(s ** 2))
        discarded += float(np.sum(s[2:] ** 2))
    assert report["relative_error_overall"] == pytest.approx(math.sqrt(discarded / total_energy), rel=1e-6)
    q2 = next(c for c in report["captured"] if c["name"] == Q2)
    assert q2["relative_error"] < 0.02  # a rank-2 delta: rank 2 keeps it but for BF16 rounding
    assert next(c for c in report["captured"] if c["name"] == V4)["relative_error"] > 0.3
    lg = logits
    got = _lora_logits(logits, out)
    # what the adapter misses moves the logits less than the fine-tune itself did
    assert np.max(np.abs(got - lg["ft"])) < np.max(np.abs(lg["base"] - lg["ft"]))


# -- small models: statuses, formats, bad input -------------------------------------------------


@pytest.fixture
def tiny_pair(tmp_path) -> tuple[Path, Path, dict, dict]:
    import ml_dtypes
    from safetensors.numpy import save_file

    base = tiny_llama_tensors()
    ft = dict(base)
    ft["model.layers.0.mlp.up_proj.weight"] = (base["model.layers.0.mlp.up_proj.weight"].astype(np.float64) * 2).astype(ml_dtypes.bfloat16)
    ft["model.norm.weight"] = base["model.norm.weight"] + np.float32(0.5)
    del ft["model.layers.1.input_layernorm.weight"]
    ft["model.extra.weight"] = np.ones((4, 4), np.float32)
    ft["model.layers.1.mlp.gate_proj.weight"] = np.zeros((8, 16), ml_dtypes.bfloat16)  # was 32 x 16
    ft["model.layers.0.self_attn.k_proj.weight"] = base["model.layers.0.self_attn.k_proj.weight"].astype(np.float32)  # same values
    a, b = tmp_path / "base.safetensors", tmp_path / "ft.safetensors"
    save_file(base, str(a))
    save_file(ft, str(b))
    return a, b, base, ft


def test_unmatched_and_reshaped_tensors_are_listed(tiny_pair, tmp_path, run):
    a, b, base, ft = tiny_pair
    out = tmp_path / "d.json"
    res = run("diff", a, b, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["model.layers.1.input_layernorm.weight"]["status"] == "only_in_base"
    assert rows["model.extra.weight"]["status"] == "only_in_model"
    g = rows["model.layers.1.mlp.gate_proj.weight"]
    assert g["status"] == "shape_changed" and g["base_shape"] == [32, 16] and g["model_shape"] == [8, 16]
    assert rows["model.norm.weight"]["relative_change"] == pytest.approx(0.5, rel=1e-12)  # ones + 0.5
    k = rows["model.layers.0.self_attn.k_proj.weight"]  # BF16 -> F32, exactly: a dtype change, not a value change
    assert (k["status"], k["base_dtype"], k["model_dtype"], k["changed_elements"]) == ("unchanged", "BF16", "F32", 0)
    assert "dtype BF16 in the base, F32 in the model" in k["note"]
    assert {n for n, r in rows.items() if r["status"] == "changed"} == {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    assert set(rows) == set(base) | set(ft)
    assert json.loads(res.output)["summary"]["only_in_base"] == 1


def test_lora_reports_norms_and_embeddings_as_not_captured(tiny_pair, tmp_path, run):
    import ml_dtypes
    from safetensors.numpy import save_file

    a, _, base, ft = tiny_pair
    ft = dict(ft)
    emb = "model.embed_tokens.weight"  # 2-D, but an embedding: PEFT's Linear LoRA cannot carry it
    ft[emb] = (base[emb].astype(np.float64) + 0.01).astype(ml_dtypes.bfloat16)
    b = tmp_path / "ft-emb.safetensors"
    save_file(ft, str(b))
    res = run("diff", a, b, "--out", tmp_path / "lora", "--extract-lora", 4, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert [c["name"] for c in report["captured"]] == ["model.layers.0.mlp.up_proj.weight"]
    missed = {n["name"]: n for n in report["not_captured"]}
    assert missed["model.norm.weight"]["delta_energy"] == pytest.approx(16 * 0.25, rel=1e-12)
    d = ft[emb].astype(np.float64) - base[emb].astype(np.float64)
    assert missed[emb]["delta_energy"] == pytest.approx(float(np.sum(d * d)), rel=1e-9)
    assert set(missed) == {"model.norm.weight", emb, "model.layers.1.input_layernorm.weight", "model.extra.weight",
                           "model.layers.1.mlp.gate_proj.weight"}
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["model.layers.0.mlp.up_proj"]
    # what no LoRA carries counts in the overall error, not in the truncation's
    assert report["relative_error_overall"] > report["relative_error_captured"]


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet", ".json"])
def test_output_formats_read_back(tiny_pair, tmp_path, run, ext):
    from tensor_surgery.analysis.diff import COLUMNS

    a, b, *_ = tiny_pair
    out = tmp_path / f"d{ext}"
    assert run("diff", a, b, "--out", out).exit_code == 0
    if ext == ".csv":
        with out.open() as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == COLUMNS
        first = rows[0]
        assert first["name"] == "model.layers.0.mlp.up_proj.weight" and float(first["relative_change"]) == pytest.approx(1.0)
        assert json.loads(first["base_shape"]) == [32, 16]
    elif ext == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert tuple(rows[0]) == COLUMNS and rows[0]["relative_change"] == pytest.approx(1.0)
    elif ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        assert tuple(t.schema.names) == COLUMNS
        assert t.schema.field("relative_change").type == pa.float64()
        assert t.schema.field("base_shape").type == pa.list_(pa.int64())
        rows = t.to_pylist()
        assert rows[0]["relative_change"] == pytest.approx(1.0) and rows[0]["delta_rank"] == 16
    else:
        doc = json.loads(out.read_text())
        rows = doc["rows"]
        assert doc["summary"]["changed"] == 2
    assert len(rows) == 21  # every name of either model once (the reshaped one too)


def test_different_architectures_are_matched_by_name(demo_models_dir, tmp_path, run):
    out = tmp_path / "arch.jsonl"
    res = run("diff", demo_models_dir / "SmolLM2-135M-Instruct", demo_models_dir / "all-MiniLM-L6-v2", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    status = {r["status"] for r in rows}
    assert status == {"only_in_base", "only_in_model"}
    from safetensors import safe_open

    with safe_open(demo_models_dir / "all-MiniLM-L6-v2" / "model.safetensors", "np") as f:
        mini = set(f.keys())
    assert {r["name"] for r in rows if r["status"] == "only_in_model"} == mini


def test_bad_inputs_exit_2_and_write_nothing(tiny_pair, tmp_path, run):
    a, b, *_ = tiny_pair
    exists = tmp_path / "exists.csv"
    exists.write_text("keep me")
    for args, field in [
        (("--out", exists), "out"),
        (("--out", tmp_path / "d.xlsx"), "out"),
        (("--out", tmp_path / "d.csv", "--match", "("), "match"),
        (("--out", tmp_path / "lora", "--extract-lora", 0), "rank"),
    ]:
        res = run("diff", a, b, *args, "--json")
        assert res.exit_code == 2, res.output
        assert json.loads(res.output)["error"]["field"] == field
    assert exists.read_text() == "keep me"
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "lora").exists()
    res = run("diff", a, tmp_path / "missing.safetensors", "--out", tmp_path / "d.csv", "--json")
    assert res.exit_code == 2 and json.loads(res.output)["error"]["code"] == "model_not_found"


def test_unwritable_output_folder(tiny_pair, tmp_path, run):
    import os

    a, b, *_ = tiny_pair
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    res = run("diff", a, b, "--out", a_file / "d.csv", "--json")  # refused even for root
    assert res.exit_code == 2, res.output
    assert "not a writable folder" in json.loads(res.output)["error"]["message"]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        res = run("diff", a, b, "--out", locked / "d.csv", "--json")
        assert res.exit_code == 2, res.output
        assert "not a writable folder" in json.loads(res.output)["error"]["message"]
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_failed_write_exits_1_and_leaves_nothing(tiny_pair, tmp_path, run, monkeypatch):
    import errno

    from tensor_surgery.surgery import library

    real = library.atomic_write

    def full_disk(path, data, *a, **kw):  # the real write, cut short the way a full disk cuts it
        def refuse(*_a, **_kw):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(library.os, "replace", refuse)
        try:
            real(path, data, *a, **kw)
        finally:
            monkeypatch.undo()

    monkeypatch.setattr(library, "atomic_write", full_disk)
    a, b, *_ = tiny_pair
    res = run("diff", a, b, "--out", tmp_path / "d.jsonl", "--json")
    assert res.exit_code == 1, res.output
    err = json.loads(res.output)["error"]
    assert err["code"] == "write_failed" and "No space left" in err["message"]
    assert not list(tmp_path.glob("*d.jsonl*"))  # neither the table nor its temporary file


def test_dead_ray_address_fails_fast_and_writes_nothing(tiny_pair, tmp_path, run):
    import socket

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("this process already holds a Ray connection, which --ray would use")
    a, b, *_ = tiny_pair
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "d.csv"
    t0 = time.monotonic()
    res = run("diff", a, b, "--out", out, "--ray", f"127.0.0.1:{port}", "--json")
    assert time.monotonic() - t0 < 10
    assert res.exit_code == 1, res.output
    err = json.loads(res.output)["error"]
    assert err["code"] == "ray_unavailable" and f"127.0.0.1:{port}" in err["message"]
    assert list(tmp_path.glob("d.csv*")) == [] and list(tmp_path.glob(".d.csv*")) == []


def test_ray_path_equals_in_process(tiny_pair, tmp_path):
    """On a local Ray cluster ("local:2": ray.init(num_cpus=2, include_dashboard=False) on
    127.0.0.1, shut down after), one tensor per task so results come back in any order."""
    pytest.importorskip("ray")
    from tensor_surgery.analysis import diff as diff_mod
    from tensor_surgery.store import open_model

    a, b, *_ = tiny_pair
    ticks = []
    with open_model(a) as ma, open_model(b) as mb:
        local = diff_mod.diff_models(ma, mb)
        old = diff_mod.RAY_TASK_BYTES
        diff_mod.RAY_TASK_BYTES = 1
        try:
            remote = diff_mod.diff_models(ma, mb, ray_address="local:2", progress=lambda d, t: ticks.append((d, t)))
        finally:
            diff_mod.RAY_TASK_BYTES = old
    assert remote == local
    assert ticks[-1][0] == ticks[-1][1] > 0 and len(ticks) > 10  # the progress bar moved per task


# -- the web API ---------------------------------------------------------------------------------


@pytest.fixture
def diff_client(tiny_pair, tmp_path):
    """A server whose open model is the fine-tune; the base lies beside it, both inside ALLOWED_ROOTS."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    a, b, *_ = tiny_pair
    settings = make_settings(tmp_path, b, allowed_roots=[tmp_path])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        yield c


def _wait_job(client, job_id: str) -> dict:
    for _ in range(600):
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("diff job did not finish")


def test_api_diff_job_table_and_delta_slices(diff_client, tiny_pair, tmp_path):
    import ml_dtypes

    from tensor_surgery.analysis.diff import diff_models
    from tensor_surgery.store import open_model

    from .conftest import assert_error

    a, b, base, ft = tiny_pair
    assert_error(diff_client.get("/api/diff"), 404, "no_diff")
    out = tmp_path / "table.parquet"
    r = diff_client.post("/api/diff", json={"base": str(a), "out": str(out)})
    assert r.status_code == 202, r.text
    job = _wait_job(diff_client, r.json()["job"]["id"])
    assert job["state"] == "done", job
    assert job["result"]["summary"]["changed"] == 2
    got = diff_client.get("/api/diff").json()
    with open_model(a) as ma, open_model(b) as mb:
        want = diff_models(ma, mb)
    assert got["rows"] == want["rows"] and got["summary"] == want["summary"]
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == len(want["rows"])
    # a slice of the delta, against numpy on the arrays the fixture wrote
    name = "model.layers.0.mlp.up_proj.weight"
    r = diff_client.get(f"/api/diff/delta/{name}", params={"dim0_start": 2, "dim0_end": 7, "dim1_start": 0, "dim1_end": 16})
    assert r.status_code == 200, r.text
    d = ft[name].astype(np.float64) - base[name].astype(np.float64)
    assert np.array_equal(np.array(r.json()["data"]), d[2:7, 0:16])  # exact: BF16 differences fit float64
    assert r.json()["slice_shape"] == [5, 16] and r.json()["min_value_in_slice"] == d[2:7].min()
    assert base[name].dtype == ml_dtypes.bfloat16
    # unchanged tensors have a zero delta; missing or reshaped ones none at all
    z = diff_client.get("/api/diff/delta/model.layers.1.mlp.up_proj.weight").json()
    assert np.count_nonzero(np.array(z["data"])) == 0
    assert_error(diff_client.get("/api/diff/delta/model.extra.weight"), 400, "invalid_request", "not in the base")
    assert_error(diff_client.get("/api/diff/delta/model.layers.1.mlp.gate_proj.weight"), 400, "invalid_request", "[32, 16] in the base")
    assert_error(diff_client.get(f"/api/diff/delta/{name}", params={"dim0_start": 0, "dim0_end": 99}), 400)
    assert diff_client.delete("/api/diff").status_code == 200
    assert_error(diff_client.get("/api/diff"), 404, "no_diff")


def test_api_diff_bad_input(diff_client, tiny_pair, tmp_path, tmp_path_factory):
    from .conftest import assert_error

    a, b, *_ = tiny_pair
    outside = tmp_path_factory.mktemp("outside")
    assert_error(diff_client.post("/api/diff", json={"base": str(a), "out": str(outside / "d.csv")}), 403, "path_not_allowed")
    assert_error(diff_client.post("/api/diff", json={"base": str(outside)}), 403, "path_not_allowed")
    (tmp_path / "taken.csv").write_text("x")
    assert_error(diff_client.post("/api/diff", json={"base": str(a), "out": str(tmp_path / "taken.csv")}), 409, "conflict")
    assert_error(diff_client.post("/api/diff", json={"base": str(a), "out": str(tmp_path / "d.xlsx")}), 400)
    assert_error(diff_client.post("/api/diff", json={"base": str(a), "match": "("}), 400, "invalid_request")
    assert_error(diff_client.post("/api/diff", json={"base": str(b)}), 400, "invalid_request", "open model itself")
    assert_error(diff_client.post("/api/diff", json={"base": str(tmp_path / "nope.safetensors")}), 404, "model_not_found")
    assert diff_client.post("/api/diff", json={"base": str(a), "bogus": 1}).status_code == 422
    assert (tmp_path / "taken.csv").read_text() == "x" and not list(outside.iterdir())
