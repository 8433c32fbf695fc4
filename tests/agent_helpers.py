"""Models for the agent's tests: a tiny Llama with a real tokenizer.json (tokenizers' own writer)
and embedding rows with known geometry, and one with planted anomalies."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

from .conftest import write_tiny_llama

WORDS = ["[UNK]", "ĠParis", "ĠLondon", "ĠBerlin", "Ġbanana", "Ġapple"] + [str(d) for d in range(10)] + \
        ["Ġ7", "Ġ42"]
VOCAB = 64
HIDDEN = 16
EMBED = "model.embed_tokens.weight"


def write_tokenizer(folder: Path, vocab_size: int = VOCAB) -> dict[str, int]:
    """A byte-level word tokenizer: ' Paris' is one token, like GPT-2's 'ĠParis'."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    words = WORDS + [f"w{i}" for i in range(vocab_size - len(WORDS))]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    return vocab


def rewrite(path: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_token_model(path: Path) -> Path:
    """Tiny Llama whose embedding puts the cities close together and fruit elsewhere."""
    write_tiny_llama(path, layers=2, hidden=HIDDEN, vocab=VOCAB)
    vocab = write_tokenizer(path.parent)
    rng = np.random.default_rng(7)

    def change(t):
        emb = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
        city = rng.standard_normal(HIDDEN)
        for w, noise in (("ĠParis", 0.1), ("ĠLondon", 0.15), ("ĠBerlin", 0.3)):
            emb[vocab[w]] = city + noise * rng.standard_normal(HIDDEN)
        fruit = rng.standard_normal(HIDDEN)
        emb[vocab["Ġbanana"]] = fruit
        emb[vocab["Ġapple"]] = fruit + 0.2 * rng.standard_normal(HIDDEN)
        t[EMBED] = emb.astype(ml_dtypes.bfloat16)

    rewrite(path, change)
    return path


def embedding(path: Path) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor(EMBED).float().numpy().astype(np.float64)


BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def write_anomalous_model(path: Path) -> Path:
    """Six layers with one planted anomaly each in layers 1-5."""
    write_tiny_llama(path, layers=6, hidden=HIDDEN, inter=32, vocab=VOCAB, seed=3)

    def change(t):
        def edit(name, fn):
            a = t[name].astype(np.float32)
            fn(a)
            t[name] = a.astype(ml_dtypes.bfloat16)

        edit("model.layers.1.self_attn.q_proj.weight", lambda a: a.__setitem__((0, 0), np.nan))
        edit("model.layers.2.self_attn.k_proj.weight", lambda a: a.__setitem__((1, 2), np.inf))
        edit("model.layers.3.self_attn.v_proj.weight", lambda a: a.__setitem__((2, 3), BF16_MAX))
        edit("model.layers.4.self_attn.o_proj.weight", lambda a: a.__imul__(20.0))
        edit("model.layers.5.mlp.down_proj.weight", lambda a: a.__setitem__((3, 4), 5.0))  # 100 std

    rewrite(path, change)
    return path
