"""Transplants: plans, staged same-shape transplants, new models of any shape, recipes, bad input.

Oracles: the safetensors library (what a file holds), transformers (whether the result loads and
runs), torch (round-to-nearest-even dtype conversion) and numpy float64 (means of rows)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tests.conftest import BASE_URL, assert_error, make_settings, tiny_llama_tensors, write_tiny_llama
from tests.surgery_helpers import tree_digest

# transformers builds a LlamaForCausalLM from this config and the tiny_llama_tensors shapes
TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
               "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
               "num_hidden_layers": 2, "vocab_size": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
               "max_position_embeddings": 64, "torch_dtype": "bfloat16"}


def tiny_folder(folder: Path, seed: int = 0, hidden: int = 16, layers: int = 2) -> Path:
    write_tiny_llama(folder / "model.safetensors", layers=layers, hidden=hidden, inter=32, vocab=64, seed=seed)
    cfg = {**TINY_CONFIG, "hidden_size": hidden, "num_hidden_layers": layers, "head_dim": hidden // 2}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def raw(path, name: str) -> bytes:
    """A tensor's bytes, as the safetensors library reads them."""
    with safe_open(str(path), "numpy") as f:
        return f.get_tensor(name).tobytes()


def names_of(path) -> list[str]:
    with safe_open(str(path), "numpy") as f:
        return list(f.keys())


@pytest.fixture
def run_cli(run):
    def go(*args, code=0):
        r = run("transplant", *args)
        assert r.exit_code == code, r.output
        return r
    return go


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    return tiny_folder(tmp_path / "models" / "target", seed=0), tiny_folder(tmp_path / "models" / "source", seed=1)


# -- (1) same shape: staged as edits, then exported ------------------------------------------------


@pytest.fixture
def web(tmp_path, models):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    target, _ = models
    settings = make_settings(tmp_path, target / "model.safetensors", allowed_roots=[tmp_path / "models", tmp_path / "data"])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        yield c


def test_same_shape_transplant_staged_then_exported_holds_the_source_bytes(web, models, tmp_path):
    target, source = models
    body = {"source": str(source), "map": [{"from": "model.layers.1.self_attn", "to": "model.layers.0.self_attn"}]}
    plan = web.post("/api/transplant/plan", json=body).json()
    assert plan["stageable"] and plan["will_load"] and plan["verdict"] == "ok"
    assert {e["target"] for e in plan["entries"]} == {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkvo"}
    staged = web.post("/api/transplant/stage", json=body)
    assert staged.status_code == 200, staged.text
    edits = web.get("/api/edits").json()["edits"]
    assert len(edits) == 1 and "transplant" in edits[0]["description"]
    saved = web.post("/api/patches", json={"name": "attn-from-source", "description": "a staged transplant"})
    assert saved.status_code in (200, 201), saved.text
    patch = json.loads((tmp_path / "patches" / "attn-from-source.hexpatch").read_text())
    assert {e["tensor_name"] for e in patch["patches"]} == {e["target"] for e in plan["entries"]}
    out = tmp_path / "data" / "exports" / "staged-transplant"
    job = web.post("/api/export", json={"out": str(out)}).json()["job"]
    assert wait_job(web, job["id"])["state"] == "done"
    new, old = out / "model.safetensors", target / "model.safetensors"
    assert names_of(new) == names_of(old)
    for name in names_of(old):
        if name.startswith("model.layers.0.self_attn."):
            assert raw(new, name) == raw(source / "model.safetensors", name.replace(".0.", ".1.")), name
            assert raw(new, name) != raw(old, name)
        else:
            assert raw(new, name) == raw(old, name), name


def wait_job(client, job_id: str) -> dict:
    for _ in range(600):
        snap = client.get(f"/api/jobs/{job_id}").json()
        if snap["state"] != "running":
            return snap
        import time

        time.sleep(0.05)
    raise AssertionError("job did not finish")


# -- (2) duplicating layer 10 of SmolLM2 ------------------------------------------------------------


@pytest.fixture(scope="module")
def smol31(smol_dir, tmp_path_factory):
    from click.testing import CliRunner

    from tensor_surgery.cli import main

    out = tmp_path_factory.mktemp("dup") / "smol-31"
    r = CliRunner().invoke(main, ["transplant", str(smol_dir), "--duplicate-layer", "10", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.output)


def test_duplicate_layer_10_of_smollm2_loads_and_runs_with_31_layers(smol31, smol_dir):
    import torch
    from transformers import AutoModelForCausalLM

    out, result = smol31
    assert result["plan"]["config_changes"] == {"num_hidden_layers": [30, 31]}
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 31
    with safe_open(str(smol_dir / "model.safetensors"), "numpy") as old, \
            safe_open(str(out / "model.safetensors"), "numpy") as new:
        assert len(new.keys()) == len(old.keys()) + 9
        for name in old.keys():
            was = old.get_tensor(name).tobytes()
            parts = name.split(".")
            k = int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None
            if k == 10:  # layer 10 and its copy, layer 11: the original layer 10's bytes
                assert new.get_tensor(name).tobytes() == was
                assert new.get_tensor(name.replace(".10.", ".11.", 1)).tobytes() == was
            elif k is not None and k > 10:
                assert new.get_tensor(name.replace(f".{k}.", f".{k + 1}.", 1)).tobytes() == was
            else:
                assert new.get_tensor(name).tobytes() == was
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert model.config.num_hidden_layers == 31 and len(model.model.layers) == 31
    with torch.no_grad():  # token ids of "The capital of France is" (the tokenizer file is compared below)
        logits = model(torch.tensor([[504, 3575, 282, 4649, 314]])).logits
    assert logits.shape == (1, 5, 49152) and torch.isfinite(logits).all()
    # the tokenizer and other side files came along, byte for byte; the recipe is beside the weights
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (smol_dir / f).read_bytes()
    recipe = json.loads((out / "transplant-recipe.json").read_text())
    assert recipe["duplicate_layers"] == [10] and recipe["target"]["checksum"].startswith("sha256:")


def test_dry_run_json_lists_every_written_tensor_with_its_verdict(run_cli, smol_dir, tmp_path):
    r = run_cli(smol_dir, "--duplicate-layer", "10", "--dry-run", "--json")
    plan = json.loads(r.output)
    by_target = {e["target"]: e for e in plan["entries"]}
    # layer 11 is the copy of 10; 12..30 are 11..29 renumbered; nothing else is written anew
    assert len(by_target) == 20 * 9
    e = by_target["model.layers.11.self_attn.q_proj.weight"]
    assert (e["source"], e["action"], e["source_shape"], e["target_shape"], e["verdict"]) == (
        "model.layers.10.self_attn.q_proj.weight", "duplicate", [576, 576], [576, 576], "ok")
    assert by_target["model.layers.30.mlp.down_proj.weight"]["source"] == "model.layers.29.mlp.down_proj.weight"
    assert all(set(x) >= {"source", "target", "source_shape", "target_shape", "verdict", "reason"}
               for x in plan["entries"])
    assert not (tmp_path / "anything").exists()


# -- (3) any shape: a valid file with the new shape, and the failure predicted ----------------------


def test_any_shape_transplant_is_a_valid_file_and_the_predicted_failure_is_what_transformers_raises(run_cli, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    target = tiny_folder(tmp_path / "models" / "t16", hidden=16)
    wide = tiny_folder(tmp_path / "models" / "t24", hidden=24, seed=3)
    name = "model.layers.0.self_attn.q_proj.weight"
    dry = json.loads(run_cli(target, "--source", wide, "--map", f"{name}={name}", "--dry-run", "--json").output)
    (entry,) = dry["entries"]
    assert entry["source_shape"] == [24, 24] and entry["target_shape"] == [16, 16]
    assert entry["verdict"] == "will_fail" and "q_proj" in entry["reason"]
    assert dry["will_load"] is False and dry["stageable"] is False
    out = tmp_path / "out" / "wide-q"
    r = run_cli(target, "--source", wide, "--map", f"{name}={name}", "--out", out, "--json")
    assert json.loads(r.output)["will_load"] is False
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        assert list(f.get_slice(name).get_shape()) == [24, 24]
        assert f.get_tensor(name).tobytes() == raw(wide / "model.safetensors", name)
    for other in names_of(target / "model.safetensors"):
        if other != name:
            assert raw(out / "model.safetensors", other) == raw(target / "model.safetensors", other)
    with pytest.raises(Exception, match=r"(?i)mismatched_sizes|size mismatch"):
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)


def test_module_prefix_and_layer_words_map_every_tensor_under_them(models, run_cli):
    target, source = models
    plan = json.loads(run_cli(target, "--source", source, "--map", "layer 1=layer 0", "--dry-run", "--json").output)
    assert sorted(e["target"] for e in plan["entries"]) == sorted(
        n for n in tiny_llama_tensors() if n.startswith("model.layers.0."))
    assert all(e["source"] == e["target"].replace(".0.", ".1.", 1) for e in plan["entries"])


def test_dtype_change_is_converted_round_to_nearest_even_or_refused(tmp_path, run_cli):
    import torch

    target = tiny_folder(tmp_path / "models" / "t")
    src = tmp_path / "models" / "f32" / "model.safetensors"
    src.parent.mkdir(parents=True)
    name = "model.layers.0.mlp.up_proj.weight"
    # values on and between bfloat16's grid, ties included, so rounding is exercised
    vals = (np.random.default_rng(7).standard_normal((32, 16)) * 0.05).astype(np.float32)
    vals.view(np.uint32)[0, :4] = [0x3F808000, 0x3F818000, 0x3F80C000, 0xBF808001]  # ties to even both ways, above
    save_file({name: vals}, str(src))
    run_cli(target, "--source", src, "--map", f"{name}={name}", "--dtype", "refuse", "--dry-run", code=2)
    out = tmp_path / "out" / "conv"
    run_cli(target, "--source", src, "--map", f"{name}={name}", "--out", out)
    got = load_file(str(out / "model.safetensors"))[name]
    assert got.dtype == ml_dtypes.bfloat16
    want = torch.from_numpy(vals).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    assert got.tobytes() == want
    kept = tmp_path / "out" / "kept"
    run_cli(target, "--source", src, "--map", f"{name}={name}", "--dtype", "keep", "--out", kept)
    assert load_file(str(kept / "model.safetensors"))[name].dtype == np.float32


def test_vocab_resize_grows_rows_with_their_mean_and_updates_the_config(models, run_cli, tmp_path):
    target, _ = models
    out = tmp_path / "out" / "v80"
    run_cli(target, "--resize-vocab", "80", "--out", out)
    old = load_file(str(target / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert new.shape == (80, 16) and new[:64].tobytes() == old.tobytes()
    mean = old.astype(np.float64).mean(axis=0).astype(ml_dtypes.bfloat16)
    assert all(new[i].tobytes() == mean.tobytes() for i in range(64, 80))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 80
    small = tmp_path / "out" / "v40"
    run_cli(target, "--resize-vocab", "40", "--out", small)
    assert load_file(str(small / "model.safetensors"))["model.embed_tokens.weight"].tobytes() == old[:40].tobytes()


def test_remove_rename_delete_and_sharded_output(models, run_cli, tmp_path):
    target, _ = models
    out = tmp_path / "out" / "sharded"
    run_cli(target, "--remove-layer", "0", "--delete", "model.norm.weight",
            "--rename", "model.embed_tokens.weight=model.embed.weight", "--max-shard-size", "4KB", "--out", out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    got = {}
    for s in shards:
        got |= load_file(str(out / s))
    assert set(got) == set(index["weight_map"])
    old = load_file(str(target / "model.safetensors"))
    assert "model.norm.weight" not in got and got["model.embed.weight"].tobytes() == old["model.embed_tokens.weight"].tobytes()
    assert {n for n in got if ".layers." in n} == {n for n in old if n.startswith("model.layers.0.")}
    for n in old:
        if n.startswith("model.layers.1."):
            assert got[n.replace(".1.", ".0.", 1)].tobytes() == old[n].tobytes()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


# -- (4) recipes ------------------------------------------------------------------------------------


def test_recipe_rerun_is_byte_identical_and_refuses_changed_weights(models, run_cli, tmp_path):
    target, source = models
    first = tmp_path / "out" / "first"
    copy = tmp_path / "out" / "recipe.json"
    run_cli(target, "--source", source, "--map", "layer 1=layer 0", "--duplicate-layer", "1", "--out", first,
            "--recipe-out", copy)
    assert copy.read_bytes() == (first / "transplant-recipe.json").read_bytes()
    again = tmp_path / "out" / "again"
    run_cli(first / "transplant-recipe.json", "--out", again)  # `transplant RECIPE --out OUT`
    assert tree_digest(first) == tree_digest(again)
    r = run_cli("--recipe", copy, "--out", again, "--json", code=2)
    assert json.loads(r.output)["error"]["code"] == "output_exists"
    # the source's weights change: the recipe is refused, naming it
    tensors = tiny_llama_tensors(seed=5)
    save_file(tensors, str(source / "model.safetensors"))
    r = run_cli("--recipe", copy, "--out", tmp_path / "out" / "third", "--json", code=2)
    err = json.loads(r.output)["error"]
    assert err["code"] == "recipe_checksum_mismatch" and str(source) in err["message"]
    assert not (tmp_path / "out" / "third").exists()


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_specific_error(models, run_cli, tmp_path):
    target, source = models

    def err(*args):
        return json.loads(run_cli(*args, "--json", code=2).output)["error"]

    e = err(target, "--source", source, "--map", "model.nope.weight=model.norm.weight", "--dry-run")
    assert e["code"] == "prefix_not_found" and "model.nope.weight" in e["message"]
    e = err(target, "--source", source, "--map", "model.layers.7=model.layers.0", "--dry-run")
    assert e["code"] == "prefix_not_found" and "source" in e["message"]
    e = err(target, "--duplicate-layer", "5", "--dry-run")
    assert "no layer 5" in e["message"]
    # in place, inside a model's folder, the model itself
    for out in (target, target / "new", source / "new", target / "model.safetensors"):
        e = err(target, "--source", source, "--map", "layer 1=layer 0", "--out", out)
        assert e["field"] == "out", e
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    e = err(target, "--out", tmp_path / "x")
    assert e["code"] == "invalid_request" and "nothing to do" in e["message"]
    e = err(target, "--map", "layer 1=layer 0", "--max-shard-size", "4KB", "--out", tmp_path / "one.safetensors")
    assert e["field"] == "out" and "shards" in e["message"]
    e = err(target, "--duplicate-layer", "1", "--out", tmp_path / "one.safetensors")
    assert e["field"] == "out" and "config.json" in e["message"]
    # a single-file output: the recipe goes beside it
    run_cli(target, "--source", source, "--map", "layer 1=layer 0", "--out", tmp_path / "one.safetensors")
    assert names_of(tmp_path / "one.safetensors") == names_of(target / "model.safetensors")
    assert json.loads((tmp_path / "one.recipe.json").read_text())["map"] == [["layer 1", "layer 0"]]


def test_disk_full_mid_write_leaves_no_torn_output(models, tmp_path, monkeypatch):
    from tensor_surgery.store import open_model
    from tensor_surgery.surgery import transplant as tp

    target, source = models
    written = [0]
    real = tp.copy_range

    def filling(src, dst, src_off, dst_off, count, tick=None, source=None, **kw):
        if written[0] > 2000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += count
        return real(src, dst, src_off, dst_off, count, tick, source, **kw)

    monkeypatch.setattr(tp, "copy_range", filling)
    out = tmp_path / "out" / "full"
    with open_model(target) as t, open_model(source) as s:
        plan = tp.plan_transplant(t, s, tp.TransplantSpec(maps=[("layer 1", "layer 0")], duplicate_layers=[0]))
        with pytest.raises(tp.DiskFull, match="filled up"):
            tp.write_transplant(plan, out, recipe={"format": "x"})
    assert written[0] > 2000
    assert not out.exists() and os.listdir(out.parent) == []


def test_web_bad_input_and_nothing_staged_is_lost(web, models, tmp_path):
    target, source = models
    edit = web.post("/api/edit_tensor", json={"tensor_name": "model.norm.weight", "op": "scale", "factor": 2.0})
    assert edit.status_code == 200, edit.text
    before = web.get("/api/edits").json()["edits"]
    body = {"source": str(source), "map": [{"from": "layer 1", "to": "layer 0"}]}
    assert_error(web.post("/api/transplant/plan", json={**body, "source": "/etc"}), 403, "path_not_allowed")
    assert_error(web.post("/api/transplant/plan", json={**body, "map": [{"from": "nope", "to": "x"}]}), 404,
                 "prefix_not_found")
    assert_error(web.post("/api/transplant/write", json={**body, "out": str(tmp_path / "elsewhere")}), 403,
                 "path_not_allowed")
    assert_error(web.post("/api/transplant/write", json={**body, "out": str(target / "inside")}), 400,
                 "invalid_request", "inside")
    assert_error(web.post("/api/transplant/write", json={**body, "out": str(target)}), 400, "invalid_request")
    assert_error(web.post("/api/transplant/stage", json={**body, "duplicate_layers": [0]}), 409, "not_stageable")
    assert web.get("/api/edits").json()["edits"] == before
    # a write as a job: the result is listed, with the recipe beside it
    out = tmp_path / "data" / "exports" / "web-transplant"
    job = web.post("/api/transplant/write", json={**body, "duplicate_layers": [1], "out": str(out)})
    assert job.status_code == 202, job.text
    snap = wait_job(web, job.json()["job"]["id"])
    assert snap["state"] == "done", snap
    assert snap["result"]["path"] == str(out) and (out / "transplant-recipe.json").is_file()
    assert len(names_of(out / "model.safetensors")) == len(tiny_llama_tensors()) + 9
    assert web.get("/api/edits").json()["edits"] == before


def test_holes_of_a_sparse_source_read_back_as_the_zeros_they_held(tmp_path, run_cli):
    import importlib.util

    # loaded from its file: bench/ on sys.path would let bench/gguf.py shadow the gguf package
    path = Path(__file__).resolve().parents[1] / "bench" / "sparse_models.py"
    spec = importlib.util.spec_from_file_location("bench_sparse_models", path)
    sparse_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sparse_models)
    write_sparse_file = sparse_models.write_sparse_file

    folder = tmp_path / "models" / "sparse"
    specs = [(n, "BF16", a.shape) for n, a in tiny_llama_tensors(hidden=64, inter=4096).items()]
    rng = np.random.default_rng(1)
    # data at the start of some tensors, holes everywhere else (4 KiB blocks: real holes on ext4)
    fill = {n: rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for n, *_ in specs if "up_proj" in n}
    write_sparse_file(folder / "model.safetensors", specs, fill=fill)
    out = tmp_path / "out" / "sparse-dup"
    run_cli(folder, "--duplicate-layer", "0", "--out", out)
    old, new = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert len(new) == len(old) + 9
    for name, value in old.items():
        if name.startswith("model.layers.1."):  # renumbered after the copy of layer 0
            assert new[name.replace(".1.", ".2.", 1)].tobytes() == value.tobytes(), name
            continue
        assert new[name].tobytes() == value.tobytes(), name
        if name.startswith("model.layers.0."):
            assert new[name.replace(".0.", ".1.", 1)].tobytes() == value.tobytes(), name
    assert any(v.tobytes().strip(b"\0") for v in new.values()) and os.stat(out / "model.safetensors").st_blocks * 512 < \
        os.stat(out / "model.safetensors").st_size / 2  # the holes stayed holes


@pytest.mark.parametrize("content, field", [
    (b"{not json", None),
    (json.dumps({"format": "hexpatch", "version": 1}).encode(), "format"),
    (json.dumps({"format": "tensor-surgery-transplant", "version": 9}).encode(), "version"),
    (json.dumps({"format": "tensor-surgery-transplant", "version": 1, "target": {"path": "/x"}}).encode(), "target"),
    (json.dumps({"format": "tensor-surgery-transplant", "version": 1, "target": {"path": "/x", "checksum": "sha256:0"},
                 "source": None, "map": [["a"]]}).encode(), "map"),
    (json.dumps({"format": "tensor-surgery-transplant", "version": 1, "target": {"path": "/x", "checksum": "sha256:0"},
                 "source": None, "duplicate_layers": [-1]}).encode(), "duplicate_layers"),
    (b"\xff\xfe" + b"{}" * 10, None),
])
def test_a_malformed_recipe_is_refused_naming_what_is_wrong(tmp_path, run_cli, content, field):
    recipe = tmp_path / "bad.json"
    recipe.write_bytes(content)
    e = json.loads(run_cli("--recipe", recipe, "--out", tmp_path / "out", "--json", code=2).output)["error"]
    assert e["code"] == "invalid_recipe" and str(recipe) in e["message"]
    if field:
        assert e["field"] == field
    assert not (tmp_path / "out").exists()


def test_an_embedding_of_another_vocabulary_gets_the_offered_resize(models, run_cli, tmp_path):
    target, _ = models
    other = tmp_path / "models" / "v80"
    write_tiny_llama(other / "model.safetensors", vocab=80, seed=9)
    emb = "model.embed_tokens.weight"
    plan = json.loads(run_cli(target, "--source", other, "--map", f"{emb}={emb}", "--dry-run", "--json").output)
    (entry,) = plan["entries"]
    assert entry["source_shape"] == [80, 16] and entry["verdict"] == "will_fail" and not plan["will_load"]
    fix = next(f for f in plan["fixes"] if f["kind"] == "resize_vocab")
    assert fix["vocab_size"] == 64
    out = tmp_path / "out" / "fixed"
    r = run_cli(target, "--source", other, "--map", f"{emb}={emb}", "--resize-vocab", str(fix["vocab_size"]),
                "--out", out, "--json")
    assert json.loads(r.output)["plan"]["will_load"] is True
    got = load_file(str(out / "model.safetensors"))[emb]
    assert got.shape == (64, 16) and got.tobytes() == load_file(str(other / "model.safetensors"))[emb][:64].tobytes()
