"""Shared fixtures: small real models written with the safetensors library, the demo models,
an app on a temporary DATA_DIR, and an in-process client that talks like a loopback browser."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = Path(os.environ.get("TS_DEMO_MODELS", REPO / "data" / "models"))
BASE_URL = "http://127.0.0.1:8000"
WS_BASE = "ws://127.0.0.1:8000"  # TestClient ignores base_url for WebSockets


@pytest.fixture(scope="session")
def demo_models_dir() -> Path:
    """The real demo models; built on first use (make test builds them beforehand)."""
    smol = DEMO_DIR / "SmolLM2-135M-Instruct" / "model.safetensors"
    if not smol.is_file():
        from tensor_surgery.live.demo_models import build_demo_models

        build_demo_models(DEMO_DIR)
    return DEMO_DIR


@pytest.fixture(scope="session")
def smol_dir(demo_models_dir) -> Path:
    return demo_models_dir / "SmolLM2-135M-Instruct"


def tiny_llama_tensors(layers: int = 2, hidden: int = 16, inter: int = 32, vocab: int = 64, seed: int = 0) -> dict:
    """A small Llama-named model's tensors with real random BF16 (and F32 norm) values."""
    import ml_dtypes

    rng = np.random.default_rng(seed)

    def bf16(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(ml_dtypes.bfloat16)

    t = {"model.embed_tokens.weight": bf16(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {
            p + "self_attn.q_proj.weight": bf16(hidden, hidden),
            p + "self_attn.k_proj.weight": bf16(hidden // 2, hidden),
            p + "self_attn.v_proj.weight": bf16(hidden // 2, hidden),
            p + "self_attn.o_proj.weight": bf16(hidden, hidden),
            p + "mlp.gate_proj.weight": bf16(inter, hidden),
            p + "mlp.up_proj.weight": bf16(inter, hidden),
            p + "mlp.down_proj.weight": bf16(hidden, inter),
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        }
    return t


def write_tiny_llama(path: Path, layers: int = 2, hidden: int = 16, inter: int = 32, vocab: int = 64, seed: int = 0) -> Path:
    """`tiny_llama_tensors` written with the safetensors library's own writer."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_llama_tensors(layers, hidden, inter, vocab, seed), str(path), metadata={"format": "pt"})
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_llama(tmp_path / "models" / "tiny" / "model.safetensors")


def make_settings(tmp_path: Path, model_path: Path, **kw):
    from tensor_surgery.settings import Settings

    return Settings(
        _env_file=None,
        model_path=model_path,
        data_dir=tmp_path / "data",
        patch_dir=tmp_path / "patches",
        **kw,
    )


@pytest.fixture
def settings(tmp_path, tiny_model):
    return make_settings(tmp_path, tiny_model, allowed_roots=[tmp_path])


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        yield c


@pytest.fixture
def run():
    """The tensor-surgery command in-process: run("ls", path, "--json") -> click Result."""
    from click.testing import CliRunner

    from tensor_surgery.cli import main

    runner = CliRunner()

    def _run(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return _run


def assert_error(resp, status: int, code: str | None = None, contains: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    if code:
        assert err["code"] == code, err
    if contains:
        assert contains in err["message"], err
    return err
