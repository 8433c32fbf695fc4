"""Sparse safetensors models with real headers: giant shapes that cost kilobytes of disk.

Each file gets a header exactly as the `safetensors` library writes it (8-byte little-endian
length, compact JSON with `__metadata__` first and tensors in data order, padded with spaces to a
multiple of 8), then is `truncate`d to its full size: the data section is a hole that reads as
zeros. Every code path that reads headers, offsets and pages works on them unchanged.

- `write_sparse_file(path, [(name, dtype, shape), ...])` one file (reusable by tests)
- `make_llama70b(dir)`      Llama-3-70B: 723 BF16 tensors in 30 shards + index
- `make_deepseek_v3(dir)`   DeepSeek-V3: 91,991 tensors (FP8 + scales, MTP layer 61) in 163 shards
- `make_big_embedding(path)` one file with a 2 GB BF16 embedding whose first rows hold random bytes

Generators are idempotent: a file whose header bytes and size already match is left alone.

    python bench/sparse_models.py [OUT_DIR]     # builds all three under bench/out/ by default
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

BENCH_OUT = Path(__file__).resolve().parent / "out"

# bits per element of the dtypes used here (the safetensors names)
_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4,
}

Spec = tuple[str, str, Sequence[int]]  # (name, dtype, shape)


def nbytes_of(dtype: str, shape: Sequence[int]) -> int:
    return math.prod(shape) * _BITS[dtype] // 8


def header_bytes(specs: Iterable[Spec], metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """(8-byte prefix + padded JSON header, data size) laid out the way `safetensors` does it.

    Like the Rust writer, tensors are stored by descending element size, then by name.
    """
    specs = sorted(specs, key=lambda s: (-_BITS[s[1]], s[0]))
    obj: dict[str, object] = {}
    if metadata is not None:
        obj["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        n = nbytes_of(dtype, shape)
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def _matches(path: Path, head: bytes, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as f:
            return f.read(len(head)) == head
    except OSError:
        return False


def write_sparse_file(
    path: str | os.PathLike,
    specs: Iterable[Spec],
    metadata: dict[str, str] | None = None,
    fill: dict[str, bytes] | None = None,
) -> Path:
    """Write a safetensors file whose data section is a hole (zeros) of the full size.

    `fill` maps tensor names to bytes written at the start of that tensor's data (e.g. random
    rows). Nothing is written when the file already has this header, size and fill.
    """
    path = Path(path)
    specs = list(specs)
    head, data_size = header_bytes(specs, {"format": "pt"} if metadata is None else metadata)
    size = len(head) + data_size
    fill = fill or {}
    offsets = {}
    if fill:
        obj = json.loads(head[8:])
        offsets = {k: len(head) + obj[k]["data_offsets"][0] for k in fill}
    if _matches(path, head, size) and all(_holds(path, offsets[k], v) for k, v in fill.items()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        for k, v in fill.items():
            f.seek(offsets[k])
            f.write(v)
    os.truncate(tmp, size)
    os.replace(tmp, path)
    return path


def _holds(path: Path, offset: int, data: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(len(data)) == data


def _cut(sizes: Sequence[int], max_bytes: int) -> list[int]:
    """Indices where new shards start when filling greedily up to `max_bytes`."""
    starts = [0]
    size = 0
    for i, n in enumerate(sizes):
        if size and size + n > max_bytes:
            starts.append(i)
            size = 0
        size += n
    return starts


def shard_greedy(specs: Sequence[Spec], max_bytes: int) -> list[list[Spec]]:
    """Fill shards in order, starting a new one when the next tensor would pass `max_bytes`
    (what `transformers`' `save_pretrained` does)."""
    starts = _cut([nbytes_of(s[1], s[2]) for s in specs], max_bytes) + [len(specs)]
    return [list(specs[a:b]) for a, b in zip(starts, starts[1:])]


def shard_into(specs: Sequence[Spec], count: int) -> list[list[Spec]]:
    """Greedy sharding with the smallest shard size limit that gives exactly `count` shards."""
    sizes = [nbytes_of(s[1], s[2]) for s in specs]
    lo, hi = max(sizes), sum(sizes)  # a limit of sum(sizes) gives one shard
    while lo < hi:  # smallest limit with at most `count` shards
        mid = (lo + hi) // 2
        if len(_cut(sizes, mid)) <= count:
            hi = mid
        else:
            lo = mid + 1
    starts = _cut(sizes, lo)
    if len(starts) != count:
        raise ValueError(f"cannot cut these tensors into exactly {count} shards")
    starts.append(len(specs))
    return [list(specs[a:b]) for a, b in zip(starts, starts[1:])]


def write_sharded(
    folder: str | os.PathLike, specs: Sequence[Spec], shards: list[list[Spec]], name_fmt: str
) -> Path:
    """Write each shard sparsely plus `model.safetensors.index.json` the way HF does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        fname = name_fmt.format(i=i, n=len(shards))
        write_sparse_file(folder / fname, shard)
        for name, dtype, shape in shard:
            weight_map[name] = fname
            total += nbytes_of(dtype, shape)
    index = folder / "model.safetensors.index.json"
    text = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True
    ) + "\n"
    if not index.is_file() or index.read_text() != text:
        index.write_text(text)
    return index


# -- Llama-3-70B ----------------------------------------------------------------------------------


def llama_specs(hidden: int, inter: int, vocab: int, layers: int, kv: int, tied: bool = False) -> list[Spec]:
    """Tensor specs of a Llama-architecture model (BF16), as checkpoints name and shape them."""
    specs: list[Spec] = [("model.embed_tokens.weight", "BF16", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", "BF16", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", "BF16", (kv, hidden)),
            (p + "self_attn.v_proj.weight", "BF16", (kv, hidden)),
            (p + "self_attn.o_proj.weight", "BF16", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", "BF16", (inter, hidden)),
            (p + "mlp.up_proj.weight", "BF16", (inter, hidden)),
            (p + "mlp.down_proj.weight", "BF16", (hidden, inter)),
            (p + "input_layernorm.weight", "BF16", (hidden,)),
            (p + "post_attention_layernorm.weight", "BF16", (hidden,)),
        ]
    specs.append(("model.norm.weight", "BF16", (hidden,)))
    if not tied:  # a tied head shares the embedding and is not stored
        specs.append(("lm_head.weight", "BF16", (vocab, hidden)))
    return specs


def llama70b_specs() -> list[Spec]:
    # 64 heads of 128, 8 of them for keys and values (grouped-query attention)
    return llama_specs(hidden=8192, inter=28672, vocab=128256, layers=80, kv=8 * 128)


def make_llama70b(folder: str | os.PathLike = BENCH_OUT / "llama3-70b") -> Path:
    """Llama-3-70B-shaped sparse model (723 tensors, 141.1 GB, 30 shards); returns the index."""
    specs = llama70b_specs()
    assert len(specs) == 723
    return write_sharded(folder, specs, shard_into(specs, 30), "model-{i:05d}-of-{n:05d}.safetensors")


# -- DeepSeek-V3 ----------------------------------------------------------------------------------


def deepseek_v3_specs() -> list[Spec]:
    hidden, vocab = 7168, 129280
    dense_inter, moe_inter, experts, dense_layers, layers = 18432, 2048, 256, 3, 61
    heads, q_lora, kv_lora, rope, nope, v_dim = 128, 1536, 512, 64, 128, 128

    def fp8(name: str, out_f: int, in_f: int) -> list[Spec]:
        return [
            (name + ".weight", "F8_E4M3", (out_f, in_f)),
            (name + ".weight_scale_inv", "F32", (-(-out_f // 128), -(-in_f // 128))),
        ]

    def mlp(p: str, inter: int) -> list[Spec]:
        return fp8(p + "gate_proj", inter, hidden) + fp8(p + "up_proj", inter, hidden) + fp8(
            p + "down_proj", hidden, inter
        )

    def layer(i: int) -> list[Spec]:
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out: list[Spec] = [
            (p + "input_layernorm.weight", "BF16", (hidden,)),
            (p + "post_attention_layernorm.weight", "BF16", (hidden,)),
            (a + "q_a_layernorm.weight", "BF16", (q_lora,)),
            (a + "kv_a_layernorm.weight", "BF16", (kv_lora,)),
        ]
        out += fp8(a + "q_a_proj", q_lora, hidden)
        out += fp8(a + "q_b_proj", heads * (nope + rope), q_lora)
        out += fp8(a + "kv_a_proj_with_mqa", kv_lora + rope, hidden)
        out += fp8(a + "kv_b_proj", heads * (nope + v_dim), kv_lora)
        out += fp8(a + "o_proj", hidden, heads * v_dim)
        if i < dense_layers:
            return out + mlp(p + "mlp.", dense_inter)
        out += [
            (p + "mlp.gate.weight", "BF16", (experts, hidden)),
            (p + "mlp.gate.e_score_correction_bias", "F32", (experts,)),
        ]
        for e in range(experts):
            out += mlp(f"{p}mlp.experts.{e}.", moe_inter)
        return out + mlp(p + "mlp.shared_experts.", moe_inter)

    specs: list[Spec] = [("model.embed_tokens.weight", "BF16", (vocab, hidden))]
    for i in range(layers):
        specs += layer(i)
    specs += [("model.norm.weight", "BF16", (hidden,)), ("lm_head.weight", "BF16", (vocab, hidden))]
    # multi-token-prediction module, stored as layer 61
    p = f"model.layers.{layers}."
    specs += layer(layers) + [
        (p + "embed_tokens.weight", "BF16", (vocab, hidden)),
        (p + "enorm.weight", "BF16", (hidden,)),
        (p + "hnorm.weight", "BF16", (hidden,)),
        (p + "eh_proj.weight", "BF16", (hidden, 2 * hidden)),
        (p + "shared_head.norm.weight", "BF16", (hidden,)),
        (p + "shared_head.head.weight", "BF16", (vocab, hidden)),
    ]
    return specs


def make_deepseek_v3(folder: str | os.PathLike = BENCH_OUT / "deepseek-v3") -> Path:
    """DeepSeek-V3-shaped sparse model (91,991 tensors, FP8 + F32 scales, 163 shards)."""
    specs = deepseek_v3_specs()
    return write_sharded(folder, specs, shard_into(specs, 163), "model-{i:05d}-of-{n:06d}.safetensors")


# -- one big embedding ----------------------------------------------------------------------------

BIG_EMBEDDING = "model.embed_tokens.weight"
BIG_EMBEDDING_SHAPE = (128256, 8192)
RANDOM_ROWS = 64


def make_big_embedding(path: str | os.PathLike = BENCH_OUT / "big-embedding.safetensors") -> Path:
    """One file: a 2.1 GB BF16 embedding whose first 64 rows are random bf16 values (the rest a
    zero hole), plus a norm and a bias."""
    rows, cols = BIG_EMBEDDING_SHAPE
    rng = np.random.default_rng(0)
    head = rng.standard_normal((RANDOM_ROWS, cols), dtype=np.float32) * np.float32(0.02)
    bf16 = (head.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bfloat16 bit patterns
    specs = [
        (BIG_EMBEDDING, "BF16", BIG_EMBEDDING_SHAPE),
        ("model.norm.weight", "BF16", (cols,)),
        ("score.bias", "F32", (16,)),
    ]
    return write_sparse_file(path, specs, fill={BIG_EMBEDDING: bf16.tobytes()})


def disk_usage(paths: Iterable[Path]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of files."""
    app = alloc = 0
    for p in paths:
        st = p.stat()
        app += st.st_size
        alloc += st.st_blocks * 512
    return app, alloc


if __name__ == "__main__":
    import time

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_OUT
    for label, fn, arg in [
        ("llama3-70b", make_llama70b, out / "llama3-70b"),
        ("deepseek-v3", make_deepseek_v3, out / "deepseek-v3"),
        ("big-embedding", make_big_embedding, out / "big-embedding.safetensors"),
    ]:
        t = time.perf_counter()
        p = fn(arg)
        files = sorted(p.parent.glob("*.safetensors")) if p.name.endswith(".json") else [p]
        app, alloc = disk_usage(files)
        print(f"{label:14} {time.perf_counter() - t:6.2f}s  {len(files):4} file(s)  "
              f"{app / 1e9:9.1f} GB apparent  {alloc / 1e6:8.2f} MB on disk  -> {p}")
