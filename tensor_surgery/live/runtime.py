"""A running model whose parameters hold exactly the staged bytes.

The model is loaded once with transformers from the opened Hugging Face folder, in the dtype its
weights are stored in, so each parameter's bytes equal the file's. Staged edits are then written
straight into the parameters' storage as byte ranges: only the ranges whose target bytes changed
since the last application (old runs and new runs alike) are rewritten, from the store's bytes
with the new overlay applied, so removing an edit restores the original bits exactly. Tied
parameters (lm_head sharing the embedding) are one tensor, so they follow.

torch is imported here and only here (and in lora.py), lazily by the live service.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..store import Model, TensorReader
from .folder import LiveUnavailable, check_hf_folder

TORCH_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}


def pick_device(preferred: str = "auto") -> torch.device:
    if preferred != "auto":
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class LiveModel:
    store_model: Model
    hf_model: object
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    params: dict[str, torch.Tensor]  # checkpoint tensor name -> the live parameter holding it
    unmapped: dict[str, str] = field(default_factory=dict)  # tensor -> why edits cannot reach it
    applied: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)  # runs now in the params
    lock: threading.Lock = field(default_factory=threading.Lock)
    param_bytes: int = 0  # counted once at load: status() must not walk modules the worker is wrapping
    _decoded: dict[int, str] = field(default_factory=dict)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, store_model: Model, device: str = "auto", progress=None) -> "LiveModel":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder = check_hf_folder(store_model)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        say = progress or (lambda msg, frac: None)
        say("reading config and tokenizer", 0.05)
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise LiveUnavailable(f"transformers cannot read {folder}: {e}", folder=str(folder)) from None
        dtype = _stored_dtype(store_model)
        dev = pick_device(device)
        say(f"loading weights ({dtype}) onto {dev}", 0.2)
        try:
            hf = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, local_files_only=True)
        except ValueError as e:
            raise LiveUnavailable(
                f"{folder} is not a causal language model transformers can run ({e}); the live view "
                "shows next-token logits, so it needs one", folder=str(folder)) from None
        say("moving to device", 0.8)
        hf.to(dev).eval()
        params, unmapped = _map_params(store_model, hf)
        say("ready", 1.0)
        return cls(store_model, hf, tokenizer, dev, dtype, params, unmapped, param_bytes=_param_bytes(hf))

    def unload(self) -> None:
        self.hf_model = None
        self.params.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    # -- staged bytes -----------------------------------------------------------------------------

    def apply_overlays(self, overlays: dict[str, list[tuple[int, bytes]]]) -> int:
        """Make the parameters hold base bytes + `overlays` exactly; returns bytes written."""
        written = 0
        with torch.inference_mode():
            for name in set(self.applied) | set(overlays):
                new = overlays.get(name, [])
                old = self.applied.get(name, [])
                if new == old:
                    continue
                param = self.params.get(name)
                if param is None:
                    if new:
                        raise LiveUnavailable(
                            f"staged edits on {name!r} cannot reach the running model: {self.unmapped.get(name, 'no such parameter')}",
                            tensor=name)
                    continue
                ref = self.store_model.tensor(name)
                reader = TensorReader(ref, new) if new else TensorReader(ref)
                flat = param.data.view(-1).view(torch.uint8)
                for a, b in _merged_ranges(old + new):
                    data = reader.read_bytes(a, b - a)
                    flat[a:b] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(flat.device)
                    written += b - a
                if new:
                    self.applied[name] = list(new)
                else:
                    self.applied.pop(name, None)
        return written

    # -- inference --------------------------------------------------------------------------------

    def encode(self, prompt: str, max_tokens: int) -> tuple[torch.Tensor, bool]:
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        truncated = ids.shape[1] > max_tokens
        if truncated:
            ids = ids[:, -max_tokens:]  # the next token depends on the end of the prompt
        return ids.to(self.device), truncated

    def decode(self, token_id: int) -> str:
        """One token's text (cached: the same few tokens are shown pass after pass)."""
        if token_id not in self._decoded:
            self._decoded[token_id] = self.tokenizer.decode([token_id])
        return self._decoded[token_id]

    def logits(self, ids: torch.Tensor, model=None) -> tuple[torch.Tensor, float]:
        """Next-token logits; `model` is the PEFT wrapper when adapters exist (see Adapters)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = (model or self.hf_model)(input_ids=ids).logits[0, -1].float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out.cpu(), (time.perf_counter() - t0) * 1000

    def greedy(self, ids: torch.Tensor, n: int, model=None) -> list[int]:
        """The next `n` tokens, greedy, with the KV cache (hooks attached by the caller stay on for
        every step, as a steering vector stays on while text is generated)."""
        out_ids: list[int] = []
        with torch.inference_mode():
            out = (model or self.hf_model)(input_ids=ids, use_cache=True)
            for i in range(n):
                nxt = int(out.logits[0, -1].argmax())
                out_ids.append(nxt)
                if i + 1 == n or nxt == self.tokenizer.eos_token_id:
                    break
                key = "cache" if "cache" in out else "past_key_values"  # transformers renamed it
                out = (model or self.hf_model)(input_ids=torch.tensor([[nxt]], device=self.device),
                                               use_cache=True, **{key: out[key]})
        return out_ids


def top_k(logits: torch.Tensor, decode, k: int, base: torch.Tensor | None = None) -> list[dict]:
    """Top-k tokens of `logits`; with `base`, the union with base's top-k and each change.

    In numpy: a handful of small operations over the vocabulary, which torch would spread over
    its thread pool (costly when the cores are busy) for no gain."""
    lg = logits.numpy()
    probs = _softmax(lg)
    ids = _top_ids(lg, k)
    if base is not None:
        bl = base.numpy()
        bprobs = _softmax(bl)
        ids += [i for i in _top_ids(bl, k) if i not in ids]
    sel = np.array(ids)
    ranks = (lg[None, :] > lg[sel, None]).sum(axis=1)
    if base is not None:
        branks = (bl[None, :] > bl[sel, None]).sum(axis=1)
    out = []
    for j, i in enumerate(ids):
        row = {"id": i, "token": decode(i), "logit": float(lg[i]), "prob": float(probs[i]),
               "rank": int(ranks[j])}
        if base is not None:
            row.update(base_logit=float(bl[i]), base_prob=float(bprobs[i]), base_rank=int(branks[j]),
                       delta_logit=float(lg[i] - bl[i]), delta_prob=float(probs[i] - bprobs[i]))
        out.append(row)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def _top_ids(x: np.ndarray, k: int) -> list[int]:
    """The k largest, largest first (ties: lower id first, as torch.topk on CPU)."""
    k = min(k, x.size)
    part = np.argpartition(-x, k - 1)[:k]
    return [int(i) for i in part[np.lexsort((part, -x[part]))]]


def _param_bytes(hf) -> int:
    """Bytes of the model's parameters and buffers, tied ones counted once."""
    seen, n = set(), 0
    for t in [*hf.parameters(), *hf.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            n += t.numel() * t.element_size()
    return n


def _merged_ranges(runs: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    spans = sorted((o, o + len(d)) for o, d in runs)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _stored_dtype(model: Model) -> torch.dtype:
    """The dtype most of the weights are stored in (the running model uses it, so bytes match)."""
    counts: dict[str, int] = {}
    for t in model.tensors.values():
        counts[t.dtype.name] = counts.get(t.dtype.name, 0) + t.nbytes
    name = max(counts, key=counts.get)
    if name not in TORCH_DTYPES or not TORCH_DTYPES[name].is_floating_point:
        raise LiveUnavailable(f"weights stored as {name} cannot run in the live view")
    return TORCH_DTYPES[name]


def _map_params(store_model: Model, hf) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Checkpoint tensor -> live parameter (same name, shape and dtype), and why others can't map."""
    live = dict(hf.named_parameters(remove_duplicate=False))
    live.update(dict(hf.named_buffers(remove_duplicate=False)))
    params, unmapped = {}, {}
    for name, ref in store_model.tensors.items():
        p = live.get(name)
        if p is None:
            unmapped[name] = "transformers has no parameter of that name (renamed or fused on load)"
        elif tuple(p.shape) != ref.shape:
            unmapped[name] = f"the running parameter has shape {list(p.shape)}, the file {list(ref.shape)}"
        elif TORCH_DTYPES.get(ref.dtype.name) != p.dtype:
            unmapped[name] = f"the running parameter is {p.dtype}, the file {ref.dtype.name}"
        elif not p.is_contiguous():
            unmapped[name] = "the running parameter is not contiguous"
        else:
            params[name] = p
    return params, unmapped
