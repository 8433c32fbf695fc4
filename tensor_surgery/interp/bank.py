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
