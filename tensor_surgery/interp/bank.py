"""Every loaded probe scored together: one matrix product per layer, on the model's device.

A `ProbeBank` stacks the probes of all loaded packs layer by layer: for layer L, the weights of its
P_L probes form one [P_L, width] matrix and their biases one [P_L] vector, kept on the device the
model runs on. Scoring the block outputs of a pass is then, per layer, one `addmm` of the [tokens,
width] hidden states with that matrix (instead of P_L small products), a concatenation and one
sigmoid; the scores stay on the device until the final [probes, tokens] result is copied back
once. `scores_sequential` is the reference loop (one product per probe), same arithmetic.

The monitor is an observer on live/hooks.py's seam: while the live model runs the prompt, every
probe of every layer scores every token, and the result rides along in the live `logits` message
(`observers.probes`) for the page's heat strip.

A `LensBank` does the same for lenses (tuned lenses and the logit lens): per block, the
translators of every lens in one matmul, then the final norm and the unembedding over lenses x
positions, the table's statistics reduced on the device and copied back once (`lens_tables`, the
lens table of the page and `lens show`). On CPU the bf16 unembedding (vocab x width per row) is
nearly all the work and costs about the same either way (bench/probes.py measures it).

torch is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest

MONITOR = "probes"  # the observer's name, and its key in the live message's `observers`


@dataclass(frozen=True)
class Column:
    pack: str
    name: str
    layer: int

    def to_json(self) -> dict:
        return {"pack": self.pack, "name": self.name, "layer": self.layer}


class ProbeBank:
    """Probes grouped by layer as stacked tensors on `device`. Build it with `from_packs` or from
    `{layer: [(pack, names, W [k, width], b [k]), ...]}`."""

    def __init__(self, per_layer: dict[int, list[tuple[str, list[str], np.ndarray, np.ndarray]]], device="cpu"):
        import torch

        self.device = torch.device(device)
        self.pack_names: list[str] = sorted({pack for items in per_layer.values() for pack, *_ in items})
        self.layers: list[int] = sorted(L for L, items in per_layer.items() if items)
        self.columns: list[Column] = []
        self.weights: dict[int, object] = {}  # L -> [P_L, width] float32 on device
        self.biases: dict[int, object] = {}  # L -> [P_L]
        widths = set()
        for L in self.layers:
            ws, bs = [], []
            for pack, names, w, b in per_layer[L]:
                ws.append(np.asarray(w, dtype=np.float32))
                bs.append(np.asarray(b, dtype=np.float32))
                self.columns += [Column(pack, n, L) for n in names]
            W = np.concatenate(ws, axis=0)
            widths.add(W.shape[1])
            self.weights[L] = torch.from_numpy(W).to(self.device)
            self.biases[L] = torch.from_numpy(np.concatenate(bs)).to(self.device)
        if len(widths) > 1:
            raise InvalidRequest(f"the loaded probes have different widths ({sorted(widths)}): they were made for "
                                 "different models", field="packs")
        self.width = widths.pop() if widths else None

    @classmethod
    def from_packs(cls, packs: list, *, width: int, n_layers: int, device="cpu") -> "ProbeBank":
        """Stack the probes of probe packs, checking each against the model (width, layers)."""
        from .packs import InvalidPack
        from .probes import probes_of_pack, weight_name

        per_layer: dict[int, list] = {}
        for pack in packs:
            for L, (w, b, names) in probes_of_pack(pack).items():
                if not 0 <= L < n_layers:
                    raise InvalidPack(f"{pack.folder}: pack {pack.name!r} has probes for block {L}; this model has "
                                      f"blocks 0-{n_layers - 1}", file=str(pack.folder), field="layers")
                if w.shape[1] != width:
                    raise InvalidPack(f"{pack.folder}: {weight_name(L)!r} is {w.shape[1]} wide; this model's residual "
                                      f"stream is {width} wide (a probe for another model)",
                                      file=str(pack.folder), tensor=weight_name(L))
                per_layer.setdefault(L, []).append((pack.name, names, w, b))
        bank = cls(per_layer, device)
        bank.pack_names = [p.name for p in packs]
        return bank

    def __len__(self) -> int:
        return len(self.columns)

    @staticmethod
    def _tokens(h):
        return (h[0] if h.dim() == 3 else h).float()  # [tokens, width]; block outputs are [1, tokens, width]

    def logits(self, hidden: dict):
        """[tokens, probes] pre-sigmoid scores on the device: one addmm per layer."""
        import torch

        parts = [torch.addmm(self.biases[L], self._tokens(hidden[L]), self.weights[L].T) for L in self.layers]
        return torch.cat(parts, dim=1)

    def scores(self, hidden: dict):
        """[tokens, probes] probabilities on the device (columns in `self.columns` order)."""
        return torch_sigmoid(self.logits(hidden))

    def scores_sequential(self, hidden: dict):
        """The reference: the same scores, one probe at a time."""
        import torch

        cols = []
        for L in self.layers:
            h = self._tokens(hidden[L])
            W, b = self.weights[L], self.biases[L]
            for i in range(W.shape[0]):
                cols.append(h @ W[i] + b[i])
        return torch_sigmoid(torch.stack(cols, dim=1))

    def observer(self, decode, max_tokens: int = 256):
        """The live monitor: an Observer whose result is {tokens, columns, scores [probes][tokens]}."""
        from ..live.hooks import Observer

        columns = [c.to_json() for c in self.columns]

        def finish(hidden: dict, ids) -> dict:
            missing = [L for L in self.layers if L not in hidden]
            if missing:
                return {"error": f"the model has no block {missing[0]} (the probes were made for a deeper model)"}
            import torch

            with torch.no_grad():
                s = self.scores(hidden)[-max_tokens:]  # [tokens, probes], still on the device
                s = s.T.contiguous().cpu().numpy()  # the one copy back: [probes, tokens]
            tok = [int(t) for t in ids[0].tolist()][-max_tokens:]
            return {"tokens": [decode(t) for t in tok], "columns": columns,
                    "scores": np.round(s.astype(np.float64), 4).tolist()}

        return Observer(MONITOR, tuple(self.layers), finish)


def torch_sigmoid(x):
    import torch

    return torch.sigmoid(x)


# -- lenses ---------------------------------------------------------------------------------------------

# lens logits held at once ([rows, vocab] float32): 32 MiB per buffer, ~170 rows of a 49k vocabulary.
# Measured on CPU (bench/probes.py): 640-row chunks ran slower than one lens at a time, as the
# softmax temporaries left the cache; a few hundred rows keep the batch and the cache.
LENS_CHUNK_ELEMENTS = 1 << 23


class LensBank:
    """Several lenses evaluated together, block by block, on `device`.

    Each lens is a tuned lens (`interp.lens.TunedLens`, translators `h + h A_L^T + b_L`) or None,
    the logit lens (no translator). For block L, the A's of every lens that has a translator there
    are laid side by side, transposed, as one [width, K_L x width] matrix and their biases as
    [K_L, 1, width], so translating the block output for all K_L lenses is one matmul; the
    [lenses, tokens, width] result is then cast to the model's dtype and pushed through the final
    norm and the unembedding as one batch of lenses x positions rows. The per-row statistics (top
    tokens, probability, entropy, KL to the final distribution) are reduced on the device and
    copied back once, at the end. `stats_sequential` is the reference: one lens and one block at a
    time, as `interp.lens.lens_logits` does it.
    """

    def __init__(self, lenses: list, device="cpu", names: list[str] | None = None):
        import torch

        self.device = torch.device(device)
        self.lenses = list(lenses)
        self.names = list(names) if names is not None else [
            "logit" if ln is None else str(ln.config.get("name", f"lens {i}")) for i, ln in enumerate(self.lenses)]
        widths = {w.shape[1] for ln in self.lenses if ln is not None for w in ln.weights.values()}
        if len(widths) > 1:
            raise InvalidRequest(f"the loaded lenses have different widths ({sorted(widths)}): they were made for "
                                 "different models", field="lenses")
        self.width = widths.pop() if widths else None
        layers = sorted({L for ln in self.lenses if ln is not None for L in ln.weights})
        self.translated: dict[int, object] = {}  # L -> index tensor of the lenses with a translator at L
        self.weights_t: dict[int, object] = {}  # L -> [width, K_L * width] float32: A^T of each, side by side
        self.biases: dict[int, object] = {}  # L -> [K_L, 1, width]
        for L in layers:
            idx = [i for i, ln in enumerate(self.lenses) if ln is not None and L in ln.weights]
            A = np.concatenate([np.asarray(self.lenses[i].weights[L], np.float32).T for i in idx], axis=1)
            b = np.stack([np.asarray(self.lenses[i].biases[L], np.float32)[None, :] for i in idx])
            self.translated[L] = torch.tensor(idx, device=self.device)
            self.weights_t[L] = torch.from_numpy(np.ascontiguousarray(A)).to(self.device)
            self.biases[L] = torch.from_numpy(b).to(self.device)

    def __len__(self) -> int:
        return len(self.lenses)

    def translate(self, L: int, h):
        """Block L's output [tokens, width] -> [lenses, tokens, width] float32, every lens's
        translator applied (one matmul for all); lenses without one at L pass h through."""
        import torch

        h32 = h.float()
        out = h32.unsqueeze(0).expand(len(self.lenses), *h32.shape)
        if L not in self.translated:
            return out
        k = self.biases[L].shape[0]
        prod = (h32 @ self.weights_t[L]).view(h32.shape[0], k, h32.shape[1]).transpose(0, 1)
        moved = h32 + prod + self.biases[L]  # [K_L, tokens, width]
        if moved.shape[0] == len(self.lenses):
            return moved
        out = out.clone()
        out[self.translated[L]] = moved
        return out

    def stats(self, norm, head, hidden: dict, final_logits, top: int = 1) -> dict:
        """For every lens and every block in `hidden` ({L: [tokens, width]} in the model's dtype):
        {"layers", "token_id" [lenses, layers, tokens, top], "prob" (same), "entropy" and
        "kl_to_final" [lenses, layers, tokens]} as float64/int64 numpy, copied back once."""
        import torch

        layers = sorted(hidden)
        final_logp = torch.log_softmax(final_logits.float(), dim=-1)
        final_p = final_logp.exp()
        n, t = len(self.lenses), final_logits.shape[0]
        rows = max(1, LENS_CHUNK_ELEMENTS // max(int(final_logits.shape[-1]), 1))
        parts: dict[str, list] = {"token_id": [], "prob": [], "entropy": [], "kl_to_final": []}
        with torch.inference_mode():
            for L in layers:
                h = hidden[L]
                x = self.translate(L, h).to(h.dtype)  # [lenses, tokens, width]
                per: dict[str, list] = {k: [] for k in parts}
                # whole lenses a chunk (rows // t of them), or slices of one lens's positions
                step, span = (max(1, rows // t), t) if rows >= t else (1, rows)
                for s in range(0, n, step):
                    for a in range(0, t, span):
                        logits = head(norm(x[s:s + step, a:a + span])).float()  # [k, positions, vocab]
                        stats = _row_stats(logits, final_logp[a:a + span], final_p[a:a + span], top)
                        for k, v in stats.items():
                            per[k].append((s, a, v))
                for k in parts:
                    lens_rows = [torch.cat([v for s2, _, v in per[k] if s2 == s], dim=1) for s in range(0, n, step)]
                    parts[k].append(torch.cat(lens_rows, dim=0))
            out = {k: torch.stack(v, dim=1).cpu().numpy() for k, v in parts.items()}  # the one copy back
        return {"layers": layers, **out}

    def stats_sequential(self, norm, head, hidden: dict, final_logits, top: int = 1) -> dict:
        """The reference: the same statistics, one lens and one block at a time (lens_logits' way)."""
        import torch

        from .lens import lens_logits_with

        layers = sorted(hidden)
        final_logp = torch.log_softmax(final_logits.float(), dim=-1)
        final_p = final_logp.exp()
        per_lens = []
        with torch.inference_mode():
            for ln in self.lenses:
                rows = []
                for L in layers:
                    logits = lens_logits_with(norm, head, hidden[L], L, ln)
                    rows.append(_row_stats(logits[None], final_logp, final_p, top))
                per_lens.append({k: torch.cat([r[k] for r in rows], dim=0) for k in rows[0]})
        out = {k: torch.stack([p[k] for p in per_lens]).cpu().numpy() for k in per_lens[0]}
        return {"layers": layers, **out}


def _row_stats(logits, final_logp, final_p, top: int) -> dict:
    """[k, tokens, vocab] float32 logits -> top ids/probabilities [k, tokens, top], entropy (nats)
    and KL(final || lens) [k, tokens], all on the device."""
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    prob, tok = p.topk(top, dim=-1)
    entropy = -(p * logp).nan_to_num().sum(-1)
    kl = (final_p * (final_logp - logp)).nan_to_num().sum(-1)
    return {"token_id": tok, "prob": prob, "entropy": entropy, "kl_to_final": kl}
