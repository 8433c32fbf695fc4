"""Logit lens and tuned lens: what each decoder block's residual stream already predicts.

- **Logit lens**: block L's output goes through the model's own final norm and unembedding, as if
  the remaining blocks were skipped. For the last block this is the model's output.
- **Tuned lens** (Belrose et al.): before that, one affine translator per block,
  `h + h A_L^T + b_L`, with A and b initialized at zero, so the untrained tuned lens *is* the logit
  lens. The translators are trained to make each block's distribution match the final one
  (KL(final || lens), averaged over positions) on wikitext text, with the model frozen.

Both lenses are evaluated through the model's own norm and unembedding modules in the model's
dtype; the translator adds its (float32) correction to the block output, cast back to that dtype.
Training uses float32 copies of the norm and unembedding (bf16 gradients would lose small steps).
A trained lens is saved as a pack of kind `lens`: `translator.{L}.weight` / `.bias` tensors in
safetensors plus a `config.json` (tuned-lens itself saves pickles; we never do).

torch is imported lazily, only where a model runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, SurgeryError

MAX_LENS_TOKENS = 64  # the table is layers x positions; beyond this it is unreadable and slow


class InvalidLens(InvalidRequest):
    code = "invalid_lens"


def final_norm(hf_model):
    base = getattr(hf_model, "base_model", hf_model)
    for attr in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        mod = getattr(base, attr, None)
        if mod is not None:
            return mod
    raise SurgeryError(f"cannot find the final norm of this {type(hf_model).__name__}; the lens needs it",
                       field="model")


def unembedding(hf_model):
    head = hf_model.get_output_embeddings()
    if head is None:
        raise SurgeryError(f"{type(hf_model).__name__} has no unembedding (output embeddings)", field="model")
    return head


@dataclass
class TunedLens:
    """Per-block translators (float32 numpy), keyed by block index; absent blocks are identity."""

    weights: dict[int, np.ndarray]  # [width, width], the correction A (identity + A is the map)
    biases: dict[int, np.ndarray]  # [width]
    config: dict = field(default_factory=dict)

    @classmethod
    def identity(cls, n_layers: int, width: int) -> "TunedLens":
        return cls({L: np.zeros((width, width), np.float32) for L in range(n_layers)},
                   {L: np.zeros(width, np.float32) for L in range(n_layers)},
                   {"n_layers": n_layers, "hidden_size": width, "residual": True})

    def tensors(self) -> dict[str, np.ndarray]:
        out = {}
        for L in sorted(self.weights):
            out[f"translator.{L}.weight"] = np.ascontiguousarray(self.weights[L], np.float32)
            out[f"translator.{L}.bias"] = np.ascontiguousarray(self.biases[L], np.float32)
        return out

    @classmethod
    def from_pack(cls, pack, width: int, n_layers: int) -> "TunedLens":
        source = str(pack.folder)
        if pack.kind != "lens":
            raise InvalidLens(f"{source} is a {pack.kind!r} pack, not a lens", file=source, field="kind")
        weights, biases = {}, {}
        for name, arr in pack.tensors.items():
            parts = name.split(".")
            if len(parts) != 3 or parts[0] != "translator" or not parts[1].isdigit() or parts[2] not in ("weight", "bias"):
                raise InvalidLens(f"{source}: tensor {name!r} is not translator.N.weight or .bias", file=source, field=name)
            L = int(parts[1])
            want = (width, width) if parts[2] == "weight" else (width,)
            if tuple(arr.shape) != want:
                raise InvalidLens(f"{source}: {name} has shape {list(arr.shape)}, this model needs {list(want)}",
                                  file=source, field=name)
            if not 0 <= L < n_layers:
                raise InvalidLens(f"{source}: {name} names block {L}; the model has blocks 0-{n_layers - 1}",
                                  file=source, field=name)
            (weights if parts[2] == "weight" else biases)[L] = np.asarray(arr, np.float32)
        if set(weights) != set(biases) or not weights:
            raise InvalidLens(f"{source}: every translator needs a weight and a bias", file=source, field="tensors")
        return cls(weights, biases, dict(pack.meta.get("made_with", {})))


# -- evaluating ---------------------------------------------------------------------------------------


def block_outputs(hf_model, ids):
    """({layer: block output [tokens, width]}, final logits [tokens, vocab]) for one sequence."""
    import torch

    from ..live.hooks import Observer, attach, decoder_layers

    n = len(decoder_layers(hf_model))
    grab = Observer("lens", None, lambda hidden, ids: None)
    with torch.inference_mode(), attach(hf_model, [], [grab]) as captured:
        logits = hf_model(input_ids=ids).logits[0]
    return {L: captured[L][0] for L in range(n)}, logits


def lens_logits(hf_model, hidden, layer: int, lens: TunedLens | None = None):
    """Block `layer`'s output [tokens, width] -> lens logits [tokens, vocab] (float32)."""
    return lens_logits_with(final_norm(hf_model), unembedding(hf_model), hidden, layer, lens)


def lens_logits_with(norm, head, hidden, layer: int, lens: TunedLens | None = None):
    """One lens at one block, through the given final norm and unembedding modules."""
    import torch

    with torch.inference_mode():
        h = hidden
        if lens is not None and layer in lens.weights:
            A = torch.from_numpy(lens.weights[layer]).to(h.device)
            b = torch.from_numpy(lens.biases[layer]).to(h.device)
            hf = h.float()
            h = (hf + hf @ A.T + b).to(h.dtype)
        return head(norm(h)).float()


def lens_table(hf_model, tokenizer, ids, lens: TunedLens | None = None, top: int = 1) -> dict:
    """The layers x positions table for one prompt: top token, its probability, the entropy (nats)
    and the KL to the model's final distribution, for each block's output."""
    return lens_tables(hf_model, tokenizer, ids, [lens], top=top)[0]


def lens_tables(hf_model, tokenizer, ids, lenses: list, top: int = 1, *, sequential: bool = False) -> list[dict]:
    """`lens_table` for several lenses (TunedLens, or None for the logit lens) from one forward
    pass, evaluated together by a `bank.LensBank` (one batched translator matmul per block, then
    norm + unembedding over lenses x positions); `sequential=True` runs the per-lens reference loop."""
    from .bank import LensBank

    if ids.shape[1] > MAX_LENS_TOKENS:
        ids = ids[:, -MAX_LENS_TOKENS:]
    hidden, final = block_outputs(hf_model, ids)
    bank = LensBank(lenses, device=final.device)
    run = bank.stats_sequential if sequential else bank.stats
    st = run(final_norm(hf_model), unembedding(hf_model), hidden, final, top=top)
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    decoded: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in decoded:
            decoded[i] = tokenizer.decode([i])
        return decoded[i]

    tables = []
    for k, ln in enumerate(lenses):
        rows = []
        for j, L in enumerate(st["layers"]):
            tok = [int(i) for i in st["token_id"][k, j, :, 0]]
            rows.append({
                "layer": L,
                "token_id": tok, "token": [decode(i) for i in tok],
                "prob": [round(float(x), 6) for x in st["prob"][k, j, :, 0]],
                "entropy": [round(float(x), 6) for x in st["entropy"][k, j]],
                "kl_to_final": [round(max(float(x), 0.0), 6) for x in st["kl_to_final"][k, j]],
            })
        tables.append({"kind": "tuned" if ln is not None else "logit", "tokens": tokens, "layers": rows})
    return tables


# -- training -----------------------------------------------------------------------------------------


def wikitext_chunks(tokenizer, split: str = "valid", seq_len: int = 64, limit: int | None = None,
                    folder: Path | None = None) -> list[list[int]]:
    """Token id sequences of `seq_len` from `{folder}/{split}.txt` (default: the TEXT_CORPUS setting,
    wikitext-2 in ../shared/data)."""
    if folder is None:
        from ..settings import Settings

        folder = Settings().text_corpus
    path = Path(folder) / f"{split}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SurgeryError(f"cannot read the training text {path}: {e.strerror}", file=str(path)) from None
    paragraphs = [p.strip() for p in text.split("\n") if len(p.strip()) > 200 and not p.strip().startswith("=")]
    chunks: list[list[int]] = []
    for p in paragraphs:
        ids = tokenizer(p)["input_ids"]
        for i in range(0, len(ids) - seq_len + 1, seq_len):
            chunks.append(ids[i:i + seq_len])
            if limit and len(chunks) >= limit:
                return chunks
    return chunks


def train_tuned_lens(hf_model, tokenizer, *, steps: int = 200, seq_len: int = 64, lr: float = 1e-3,
                     eval_chunks: int = 4, seed: int = 0, capture=None, progress=None,
                     data_folder: Path | None = None) -> tuple[TunedLens, dict]:
    """Train translators for every block; returns (lens, metrics with per-layer KL and perplexity
    of the logit lens and the tuned lens on held-out text).

    `capture(ids) -> (hidden, final logits)` runs the frozen model (default: block_outputs here;
    the web job passes one that runs on the live model's thread)."""
    import copy

    import torch

    from ..live.hooks import decoder_layers

    if not 1 <= steps <= 100_000:
        raise InvalidRequest("steps must be between 1 and 100000", field="steps")
    capture = capture or (lambda ids: block_outputs(hf_model, ids))
    n = len(decoder_layers(hf_model))
    width = int(hf_model.config.hidden_size)
    device = next(hf_model.parameters()).device
    train = wikitext_chunks(tokenizer, "valid", seq_len, steps, data_folder)
    held = wikitext_chunks(tokenizer, "test", seq_len, eval_chunks, data_folder)
    if not train or not held:
        raise SurgeryError("not enough wikitext to train on", field="data")
    gen = torch.Generator().manual_seed(seed)
    norm32 = copy.deepcopy(final_norm(hf_model)).float().requires_grad_(False)
    head = unembedding(hf_model)
    W = head.weight.detach().float()
    hb = None if getattr(head, "bias", None) is None else head.bias.detach().float()
    A = torch.nn.Parameter(torch.zeros(n, width, width, device=device))
    b = torch.nn.Parameter(torch.zeros(n, width, device=device))
    opt = torch.optim.Adam([A, b], lr=lr)
    order = torch.randperm(len(train), generator=gen).tolist()
    losses = []
    for step in range(steps):
        ids = torch.tensor([train[order[step % len(train)]]], device=device)
        hidden, final = capture(ids)
        target = torch.log_softmax(final.float(), dim=-1).detach()
        opt.zero_grad()
        loss = 0.0
        for L in range(n):  # one backward per block: only one [tokens, vocab] graph alive at a time
            h = hidden[L].float().detach()
            logits = torch.nn.functional.linear(norm32(h + h @ A[L].T + b[L]), W, hb)
            logp = torch.log_softmax(logits, dim=-1)
            kl = (target.exp() * (target - logp)).sum(-1).mean() / n
            kl.backward()
            loss += float(kl.detach())
        opt.step()
        losses.append(loss)
        if progress:
            progress(step + 1, steps)
    lens = TunedLens({L: A[L].detach().cpu().numpy().copy() for L in range(n)},
                     {L: b[L].detach().cpu().numpy().copy() for L in range(n)},
                     {"n_layers": n, "hidden_size": width, "residual": True, "steps": steps, "seq_len": seq_len,
                      "lr": lr, "seed": seed, "data": "wikitext-2 valid (train), test (held out)",
                      "objective": "KL(final || lens) per block, mean over positions"})
    metrics = evaluate(hf_model, [torch.tensor([c], device=device) for c in held], lens, capture)
    metrics["train_loss_first"], metrics["train_loss_last"] = losses[0], losses[-1]
    return lens, metrics


def evaluate(hf_model, batches, lens: TunedLens | None, capture=None) -> dict:
    """Per-layer KL to the final distribution and perplexity on the next tokens, logit lens and
    (with `lens`) tuned lens, over `batches` of token ids."""
    import torch

    capture = capture or (lambda ids: block_outputs(hf_model, ids))
    sums: dict[str, np.ndarray] = {}
    count = 0
    for ids in batches:
        hidden, final = capture(ids)
        final_logp = torch.log_softmax(final.float(), dim=-1)
        nxt = ids[0, 1:]
        for kind, ln in (("logit", None), ("tuned", lens)):
            if kind == "tuned" and lens is None:
                continue
            kl, nll = [], []
            for L in sorted(hidden):
                logp = torch.log_softmax(lens_logits(hf_model, hidden[L], L, ln), dim=-1)
                kl.append(float((final_logp.exp() * (final_logp - logp)).sum(-1).mean()))
                nll.append(float(-logp[:-1].gather(1, nxt[:, None]).mean()))
            sums[f"{kind}_kl"] = sums.get(f"{kind}_kl", 0) + np.array(kl)
            sums[f"{kind}_nll"] = sums.get(f"{kind}_nll", 0) + np.array(nll)
        count += 1
    out: dict = {"eval_sequences": count}
    for key, total in sums.items():
        mean = total / max(count, 1)
        if key.endswith("_kl"):
            out[key] = [round(float(x), 6) for x in mean]
        else:
            out[key.replace("_nll", "_perplexity")] = [round(float(math.exp(min(x, 700))), 4) for x in mean]
    return out


def save_lens(lens: TunedLens, metrics: dict, folder: Path, *, name: str, model_checksum: str | None,
              model_name: str | None, model_type: str | None, overwrite: bool = False) -> Path:
    from .packs import write_pack

    config = {**lens.config, "model_type": model_type, "kind": "tuned_lens"}
    return write_pack(Path(folder), name=name, kind="lens", version="1.0.0", model_checksum=model_checksum,
                      layers=sorted(lens.weights), tensors=lens.tensors(), made_with=config, metrics=metrics,
                      model_name=model_name, overwrite=overwrite,
                      extra_files={"config.json": (json.dumps(config, indent=2) + "\n").encode()})
