"""compat.check_model against transformers: for corrupted copies of the real demo models, the
predicted will_load must match whether `from_pretrained` + one forward pass succeeds, and the reason
must name the tensors that break.

To stay fast the copies are the real models cut down: the first two layers, the first 4096 token
rows (config.json's vocab_size set to match), everything else their real weights and config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tensor_surgery.surgery.compat import CompatReport, check_model  # noqa: E402

VOCAB = 4096
LAYERS = 2


def _cut(src: Path, layer_rx: str, embeds: tuple[str, ...]) -> tuple[dict, dict]:
    import re

    cfg = json.loads((src / "config.json").read_text())
    cfg.update(num_hidden_layers=LAYERS, vocab_size=VOCAB)
    rx = re.compile(layer_rx)
    out = {}
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        for name in f.keys():
            m = rx.match(name)
            if m and int(m.group(1)) >= LAYERS:
                continue
            t = f.get_tensor(name)
            out[name] = t[:VOCAB].clone() if name in embeds else t
    return cfg, out


@pytest.fixture(scope="module")
def smol(smol_dir):
    return _cut(smol_dir, r"model\.layers\.(\d+)\.", ("model.embed_tokens.weight",))


@pytest.fixture(scope="module")
def minilm(demo_models_dir):
    return _cut(demo_models_dir / "all-MiniLM-L6-v2", r"encoder\.layer\.(\d+)\.", ("embeddings.word_embeddings.weight",))


def _dtype_str(t) -> str:
    return {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64",
            torch.int8: "I8"}[t.dtype]


def _headers(tensors: dict) -> dict:
    return {k: (tuple(v.shape), _dtype_str(v)) for k, v in tensors.items()}


def _loads(folder: Path, causal: bool) -> tuple[bool, str]:
    """The oracle: transformers loads the folder and runs one forward pass."""
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        model = cls.from_pretrained(str(folder))
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 5, 9, 100]]))
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure is what we predict
        return False, f"{type(exc).__name__}: {exc}"


def _run(tmp_path: Path, base: tuple[dict, dict], *, causal: bool, cfg: dict | None = None,
         put: dict | None = None, drop: tuple[str, ...] = ()) -> tuple[CompatReport, bool, str]:
    config, tensors = base
    config = {**config, **(cfg or {})}
    tensors = {k: v for k, v in tensors.items() if k not in drop} | (put or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    report = check_model(config, _headers(tensors), [*(put or {}), *drop])
    ok, why = _loads(tmp_path, causal)
    assert report.will_load == ok, (report.to_json(), why)
    return report, ok, why


Q0, O0 = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"


def test_smol_cut_copy_loads_and_is_ok(tmp_path, smol):
    report, ok, _ = _run(tmp_path, smol, causal=True)
    assert ok and report.verdict == "ok" and not report.problems and not report.fixes
    assert report.architecture == "llama"


def test_smol_same_shape_swap_is_ok(tmp_path, smol):
    q1 = smol[1]["model.layers.1.self_attn.q_proj.weight"]
    report, ok, _ = _run(tmp_path, smol, causal=True, put={Q0: q1})
    assert ok and report.verdicts[Q0].verdict == "ok"


def test_smol_wider_q_proj_fails_naming_o_proj(tmp_path, smol):
    report, ok, why = _run(tmp_path, smol, causal=True, put={Q0: torch.zeros(640, 576, dtype=torch.bfloat16)})
    assert not ok and "mismatch" in why.lower()
    v = report.verdicts[Q0]
    assert v.verdict == "will_fail" and v.tensors[:2] == (Q0, O0)
    assert "would output 640 features but o_proj" in v.reason and "expects 576" in v.reason and O0 in v.reason
    assert "inference will fail with a shape mismatch" in v.reason


def test_smol_consistent_q_and_o_still_fail_against_config(tmp_path, smol):
    # q and o agree with each other (10 heads) but config.json builds 9: transformers refuses both
    put = {Q0: torch.zeros(640, 576, dtype=torch.bfloat16), O0: torch.zeros(576, 640, dtype=torch.bfloat16)}
    report, ok, _ = _run(tmp_path, smol, causal=True, put=put)
    assert not ok
    assert report.verdicts[Q0].verdict == report.verdicts[O0].verdict == "will_fail"
    assert "would read 640 features but q_proj" in report.verdicts[O0].reason


def test_smol_transposed_down_proj_fails_naming_up_proj(tmp_path, smol):
    name = "model.layers.1.mlp.down_proj.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, put={name: smol[1][name].T.contiguous()})
    assert not ok
    v = report.verdicts[name]
    assert v.verdict == "will_fail" and "model.layers.1.mlp.up_proj.weight" in v.tensors
    assert "would output 1536 features but the residual stream is 576 wide" in v.reason
    assert "would read 576 features but gate_proj and up_proj" in v.reason


def test_smol_norm_of_wrong_rank_fails(tmp_path, smol):
    name = "model.layers.0.input_layernorm.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, put={name: smol[1][name][None, :]})
    assert not ok and report.verdicts[name].verdict == "will_fail" and "2-D [1, 576]" in report.verdicts[name].reason


def test_smol_other_dtype_is_a_warning_and_loads(tmp_path, smol):
    name = "model.layers.0.mlp.up_proj.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, put={name: smol[1][name].float()})
    assert ok and report.verdicts[name].verdict == "warning"
    assert "F32 while the rest of the model is BF16" in report.verdicts[name].reason


def test_smol_deleted_tensor_warns_random_init_and_loads(tmp_path, smol):
    name = "model.layers.1.mlp.up_proj.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, drop=(name,))
    assert ok and report.verdicts[name].verdict == "warning" and "random" in report.verdicts[name].reason


def test_smol_unknown_tensor_is_ignored_with_a_warning(tmp_path, smol):
    name = "model.layers.0.self_attn.extra_proj.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, put={name: torch.zeros(4, 4, dtype=torch.bfloat16)})
    assert ok and report.verdicts[name].verdict == "warning" and "ignores it" in report.verdicts[name].reason


def test_smol_config_with_more_layers_than_present(tmp_path, smol):
    report, ok, _ = _run(tmp_path, smol, causal=True, cfg={"num_hidden_layers": 3})
    assert ok and report.verdict == "warning"
    assert any("num_hidden_layers is 3" in p.reason for p in report.problems)
    assert {"kind": "set_config", "changes": {"num_hidden_layers": 2}} in [
        {k: f.get(k) for k in ("kind", "changes")} for f in report.fixes]


def test_smol_fewer_kv_heads_in_config_fails_on_untouched_k_and_v(tmp_path, smol):
    report, ok, _ = _run(tmp_path, smol, causal=True, cfg={"num_key_value_heads": 1})
    assert not ok and not report.will_load
    failing = {v.tensors[0] for v in report.problems if v.verdict == "will_fail"}
    assert failing == {f"model.layers.{i}.self_attn.{x}_proj.weight" for i in range(LAYERS) for x in "kv"}


def test_smol_vocab_mismatch_fails_and_offers_resize(tmp_path, smol):
    name = "model.embed_tokens.weight"
    report, ok, _ = _run(tmp_path, smol, causal=True, put={name: smol[1][name][:4000].clone()})
    assert not ok and report.verdicts[name].verdict == "will_fail"
    assert "4000 rows" in report.verdicts[name].reason and f"vocab_size is {VOCAB}" in report.verdicts[name].reason
    resize = next(f for f in report.fixes if f["kind"] == "resize_vocab")
    assert resize["vocab_size"] == VOCAB and resize["tensors"] == [name]
    assert {"kind": "set_config", "changes": {"vocab_size": 4000}} in [
        {k: f.get(k) for k in ("kind", "changes")} for f in report.fixes]


def test_smol_untied_without_lm_head_warns_and_loads(tmp_path, smol):
    report, ok, _ = _run(tmp_path, smol, causal=True, cfg={"tie_word_embeddings": False})
    assert ok and any("lm_head.weight" in p.tensors for p in report.problems)


def test_smol_lm_head_with_other_vocab_fails(tmp_path, smol):
    report, ok, _ = _run(tmp_path, smol, causal=True, cfg={"tie_word_embeddings": False},
                         put={"lm_head.weight": torch.zeros(VOCAB + 8, 576, dtype=torch.bfloat16)})
    assert not ok and report.verdicts["lm_head.weight"].verdict == "will_fail"
    assert "would emit 4104 logits" in report.verdicts["lm_head.weight"].reason
    assert any(f["kind"] == "resize_vocab" and f["tensors"] == ["lm_head.weight"] for f in report.fixes)


def test_generic_fallback_predicts_the_same_outcomes(smol):
    """With the architecture unknown, the generic checks (layer peers, the shape before the plan)
    still tell a wider q_proj (fails, transformers above) from a same-shape swap (loads)."""
    config, tensors = smol
    cfg = {**config, "model_type": "someone-elses-llama"}
    heads = _headers(tensors)
    wide = check_model(cfg, heads | {Q0: ((640, 576), "BF16")}, [Q0])
    assert wide.architecture == "generic" and not wide.will_load
    assert "model.layers.1.self_attn.q_proj.weight" in wide.verdicts[Q0].tensors
    same = check_model(cfg, heads, [Q0], before=heads)
    assert same.will_load and same.verdicts[Q0].verdict == "ok"
    both = {Q0: ((640, 576), "BF16"), "model.layers.1.self_attn.q_proj.weight": ((640, 576), "BF16")}
    # every layer changed alike: no peer left to compare, the shape before the plan decides
    assert not check_model(cfg, heads | both, list(both), before=heads).will_load


B0 = "encoder.layer.0."


def test_minilm_cut_copy_loads_and_is_ok(tmp_path, minilm):
    report, ok, _ = _run(tmp_path, minilm, causal=False)
    assert ok and report.verdict == "ok" and report.architecture == "bert"


def test_minilm_narrow_intermediate_fails_naming_output_dense(tmp_path, minilm):
    name = B0 + "intermediate.dense.weight"
    report, ok, _ = _run(tmp_path, minilm, causal=False, put={name: torch.zeros(1024, 384)})
    assert not ok and report.verdicts[name].verdict == "will_fail"
    assert B0 + "output.dense.weight" in report.verdicts[name].tensors
    assert "would output 1024 features but output.dense" in report.verdicts[name].reason


def test_minilm_short_query_bias_fails(tmp_path, minilm):
    name = B0 + "attention.self.query.bias"
    report, ok, _ = _run(tmp_path, minilm, causal=False, put={name: torch.zeros(380)})
    assert not ok and "would add 380 values" in report.verdicts[name].reason


def test_minilm_without_pooler_warns_and_loads(tmp_path, minilm):
    drop = ("pooler.dense.weight", "pooler.dense.bias")
    report, ok, _ = _run(tmp_path, minilm, causal=False, drop=drop)
    assert ok and all(report.verdicts[n].verdict == "warning" for n in drop)


def test_minilm_config_intermediate_change_fails_on_untouched_tensors(tmp_path, minilm):
    report, ok, _ = _run(tmp_path, minilm, causal=False, cfg={"intermediate_size": 1024})
    assert not ok
    failing = {v.tensors[0] for v in report.problems if v.verdict == "will_fail"}
    assert {B0 + "intermediate.dense.weight", B0 + "intermediate.dense.bias", B0 + "output.dense.weight"} <= failing


def test_minilm_heads_that_do_not_divide_hidden_fail(tmp_path, minilm):
    report, ok, why = _run(tmp_path, minilm, causal=False, cfg={"num_attention_heads": 5})
    assert not ok and any("not a multiple of num_attention_heads" in p.reason for p in report.problems)


def test_minilm_vocab_mismatch_fails_with_fix(tmp_path, minilm):
    name = "embeddings.word_embeddings.weight"
    report, ok, _ = _run(tmp_path, minilm, causal=False, put={name: minilm[1][name][:3000].clone()})
    assert not ok and report.verdicts[name].verdict == "will_fail"
    assert [f["tensors"] for f in report.fixes if f["kind"] == "resize_vocab"] == [[name]]


def test_report_json_shape():
    report = check_model({"model_type": "llama"}, {"x.weight": ((2, 2), "F32")}, ["x.weight", "gone.weight"])
    data = report.to_json()
    assert data["architecture"] == "generic" and set(data["verdicts"]) == {"x.weight", "gone.weight"}
    assert data["verdicts"]["gone.weight"]["verdict"] == "warning"
    assert data["will_load"] is True
    json.dumps(data)
