"""Steering vectors: directions in the residual stream, read from contrast pairs, added back live.

Contrast pairs are texts that differ in one concept (`{"positive": "I am thrilled", "negative":
"I am miserable"}`). Each text runs through the model once; at every chosen decoder block L the
block's output is read at the last token (`read="last"`) or averaged over the tokens
(`read="mean"`), in float64. Then per layer:

- `method="mean"`: the mean over pairs of (positive - negative) (ActAdd / CAA style; its norm is
  the typical size of the concept in that layer, so coefficient 1 moves by that much);
- `method="pca"`: repeng's `pca_diff`: the first principal component of the pair differences
  (centred, as sklearn's PCA centres them), unit length, its sign chosen so that most positives
  project above their negative.

Vector L is named `direction.{L}`: block L's output, `output_hidden_states[L + 1]` in transformers
(for the last block, before the final norm), which is also where applying it adds it, as repeng's
ControlModel and llama.cpp's control vectors do. Applying adds `coefficient x vector` to that
output at every position (negative coefficients invert the concept).

torch is imported lazily, only where a model runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, SurgeryError

METHODS = ("mean", "pca")
READS = ("last", "mean")
MAX_PAIRS = 1024
MAX_TEXT_CHARS = 4000
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "steering"


class InvalidPairs(InvalidRequest):
    code = "invalid_pairs"


class InvalidVector(InvalidRequest):
    code = "invalid_vector"


@dataclass
class Pair:
    positive: str
    negative: str


@dataclass
class SteeringVector:
    """One vector per layer (float32, the model's width), and how it was made."""

    name: str
    vectors: dict[int, np.ndarray]
    made_with: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def width(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def tensors(self) -> dict[str, np.ndarray]:
        return {f"direction.{L}": np.ascontiguousarray(v, dtype=np.float32) for L, v in sorted(self.vectors.items())}


# -- contrast pairs -------------------------------------------------------------------------------


def check_pairs(pairs: list[Pair], source: str = "pairs") -> list[Pair]:
    if len(pairs) < 2:
        raise InvalidPairs(f"{source}: {len(pairs)} contrast pair(s); give at least 2 (a direction from one pair "
                           "is that pair's noise as much as the concept)", file=source, field="pairs")
    if len(pairs) > MAX_PAIRS:
        raise InvalidPairs(f"{source}: {len(pairs)} pairs; at most {MAX_PAIRS}", file=source, field="pairs")
    for i, p in enumerate(pairs):
        for side in ("positive", "negative"):
            text = getattr(p, side)
            if not isinstance(text, str) or not text.strip():
                raise InvalidPairs(f"{source}: pair {i + 1} has an empty {side} side; every pair needs both texts",
                                   file=source, field=f"pairs[{i}].{side}")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidPairs(f"{source}: pair {i + 1}'s {side} text is over {MAX_TEXT_CHARS} characters",
                                   file=source, field=f"pairs[{i}].{side}")
    return pairs


def pairs_from_obj(obj, source: str = "pairs") -> list[Pair]:
    """Pairs from `[{positive, negative}, ...]` or `{"positive": [...], "negative": [...]}`."""
    if isinstance(obj, dict) and "positive" in obj and "negative" in obj:
        pos, neg = obj["positive"], obj["negative"]
        if not isinstance(pos, list) or not isinstance(neg, list):
            raise InvalidPairs(f"{source}: 'positive' and 'negative' must be lists of texts", file=source, field="positive")
        if len(pos) != len(neg):
            raise InvalidPairs(f"{source}: {len(pos)} positive texts but {len(neg)} negative; the lists pair up "
                               "one to one", file=source, field="negative")
        return check_pairs([Pair(p, n) for p, n in zip(pos, neg)], source)
    if not isinstance(obj, list):
        raise InvalidPairs(f"{source}: expected a list of {{positive, negative}} objects or an object with two "
                           "lists 'positive' and 'negative'", file=source, field="pairs")
    out = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict) or "positive" not in item or "negative" not in item:
            raise InvalidPairs(f"{source}: pair {i + 1} is not an object with 'positive' and 'negative'",
                               file=source, field=f"pairs[{i}]")
        out.append(Pair(item["positive"], item["negative"]))
    return check_pairs(out, source)


def read_pairs(path: Path) -> list[Pair]:
    """A JSONL file (one `{positive, negative}` per line) or a JSON file (either form above)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidPairs(f"cannot read {path}: {e.strerror}", file=str(path)) from None
    if len(raw) > 16 << 20:
        raise InvalidPairs(f"{path} is over 16 MiB; contrast pairs are a few hundred short texts", file=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidPairs(f"{path} is not UTF-8 (byte {e.start})", file=str(path)) from None
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and path.suffix == ".json"):
        try:
            return pairs_from_obj(json.loads(text), str(path))
        except json.JSONDecodeError as e:
            raise InvalidPairs(f"{path}: not JSON ({e.msg} at line {e.lineno})", file=str(path), line=e.lineno) from None
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidPairs(f"{path}: line {n} is not JSON ({e.msg})", file=str(path), line=n) from None
    return pairs_from_obj(items, str(path))


def example_sets() -> dict[str, Path]:
    """The shipped example pair sets, by name (file stem)."""
    if not EXAMPLES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.jsonl"))}


# -- layers -----------------------------------------------------------------------------------------


def parse_layers(spec, n_layers: int, source: str = "layers") -> list[int]:
    """'10-20', '3,5,7', '12', 'all' or a list of ints -> sorted block indices, each checked."""
    if isinstance(spec, (list, tuple)):
        layers = list(spec)
        if not all(type(L) is int for L in layers):
            raise InvalidRequest(f"{source} must be block indices (integers)", field=source)
    else:
        s = str(spec).strip().lower()
        if s == "all":
            return list(range(n_layers))
        layers = []
        for part in s.split(","):
            m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
            if not m:
                raise InvalidRequest(f"{source} {spec!r}: write a range A-B, a list 3,5,7 or 'all'", field=source)
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise InvalidRequest(f"{source} {spec!r}: the range {a}-{b} runs backwards", field=source)
            if b - a > 4096:
                raise InvalidRequest(f"{source} {spec!r}: the range is too long", field=source)
            layers.extend(range(a, b + 1))
    if not layers:
        raise InvalidRequest(f"{source}: no layers chosen", field=source)
    bad = [L for L in layers if not 0 <= L < n_layers]
    if bad:
        raise InvalidRequest(f"{source} {spec!r}: block {bad[0]} is outside the model, which has blocks 0-{n_layers - 1}",
                             field=source, layers=n_layers)
    return sorted(set(layers))


# -- extraction -------------------------------------------------------------------------------------


def read_activations(hf_model, tokenizer, texts: list[str], layers: list[int], read: str,
                     progress=None) -> dict[int, np.ndarray]:
    """{layer: [len(texts), width] float64}: each block output read at the last token or averaged.

    One text per forward pass: no padding, so nothing depends on how texts of different lengths
    would be batched."""
    import torch

    from ..live.hooks import Observer, attach

    if read not in READS:
        raise InvalidRequest(f"read must be one of {', '.join(READS)}, not {read!r}", field="read")
    device = next(hf_model.parameters()).device
    out = {L: [] for L in layers}
    grab = Observer("steering", tuple(layers), lambda hidden, ids: None)
    with torch.inference_mode():
        for i, text in enumerate(texts):
            ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
            with attach(hf_model, [], [grab]) as captured:
                hf_model(input_ids=ids)
            for L in layers:
                h = captured[L][0]
                v = h[-1] if read == "last" else h.double().mean(dim=0)
                out[L].append(v.double().cpu().numpy())
            if progress:
                progress(i + 1, len(texts))
    return {L: np.stack(v) for L, v in out.items()}


def directions(pos: np.ndarray, neg: np.ndarray, method: str) -> tuple[np.ndarray, dict]:
    """One layer's vector from [pairs, width] positive and negative activations (float64)."""
    diffs = pos - neg
    mean = diffs.mean(axis=0)
    if method == "mean":
        v = mean
        metrics = {"norm": float(np.linalg.norm(v))}
    elif method == "pca":
        centred = diffs - mean
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        v = vt[0]
        # repeng: flip so that positives project above their negatives for most pairs
        above = float(np.mean(diffs @ v > 0))
        if above < 0.5 or (above == 0.5 and mean @ v < 0):
            v = -v
        total = float((s ** 2).sum())
        metrics = {"norm": 1.0, "explained_variance": float(s[0] ** 2 / total) if total > 0 else 0.0,
                   "mean_diff_norm": float(np.linalg.norm(mean))}
    else:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, not {method!r}", field="method")
    metrics["pairs_separated"] = float(np.mean(diffs @ v > 0)) if np.any(v) else 0.0
    return v, metrics


def extract(hf_model, tokenizer, pairs: list[Pair], layers: list[int], method: str = "mean", read: str = "last",
            name: str = "steering", progress=None) -> SteeringVector:
    """A steering vector per layer from contrast pairs (see the module docstring)."""
    if method not in METHODS:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, not {method!r}", field="method")
    check_pairs(pairs)
    texts = [t for p in pairs for t in (p.positive, p.negative)]
    acts = read_activations(hf_model, tokenizer, texts, layers, read, progress)
    vectors, metrics = {}, {}
    for L in layers:
        v, m = directions(acts[L][0::2], acts[L][1::2], method)
        vectors[L] = v.astype(np.float32)
        metrics[str(L)] = m
    made_with = {"method": method, "read": read, "pairs": len(pairs),
                 "model_type": getattr(hf_model.config, "model_type", None),
                 "hidden_size": int(vectors[layers[0]].shape[0])}
    return SteeringVector(name, vectors, made_with, {"per_layer": metrics})


# -- applying -----------------------------------------------------------------------------------------


def check_vector(vec: SteeringVector, hidden_size: int, n_layers: int, source: str) -> None:
    """Refuse a vector that does not fit the model: wrong width or layers past its blocks."""
    for L, v in vec.vectors.items():
        if v.ndim != 1 or v.shape[0] != hidden_size:
            raise InvalidVector(f"{source}: direction.{L} has shape {list(v.shape)}, but the model's residual stream "
                                f"is {hidden_size} wide; this vector was made for another model",
                                file=source, field=f"direction.{L}", expected=hidden_size)
        if not 0 <= L < n_layers:
            raise InvalidVector(f"{source}: direction.{L} names block {L}, but the model has blocks 0-{n_layers - 1}",
                                file=source, field=f"direction.{L}")
        if not np.all(np.isfinite(v)):
            raise InvalidVector(f"{source}: direction.{L} holds NaN or infinite values", file=source,
                                field=f"direction.{L}")


def intervention(vec: SteeringVector, coefficient: float, layers: list[int] | None = None, *, device,
                 dtype, enabled: bool = True):
    """A live intervention adding coefficient x vector to the chosen blocks' outputs (all positions).

    The addend is cast to the model's dtype once; the hook then does one add per block, the same
    `hidden + addend` a hand-written transformers hook would do."""
    import torch

    from ..live.hooks import Intervention

    if not np.isfinite(coefficient) or abs(coefficient) > 1e4:
        raise InvalidRequest(f"coefficient {coefficient!r} must be a finite number within ±10000", field="coefficient")
    layers = vec.layers if layers is None else layers
    missing = [L for L in layers if L not in vec.vectors]
    if missing:
        raise InvalidRequest(f"vector {vec.name!r} has no direction for block {missing[0]} (it has "
                             f"{', '.join(map(str, vec.layers))})", field="layers")
    addends = {L: (coefficient * torch.from_numpy(vec.vectors[L]).float()).to(device=device, dtype=dtype)
               for L in layers}

    def add(L, hidden):
        return hidden + addends[L]

    return Intervention(vec.name, tuple(sorted(layers)), add, enabled, kind="steering",
                        info={"coefficient": coefficient, "vector_layers": vec.layers,
                              "made_with": vec.made_with}, payload=vec)


# -- packs ------------------------------------------------------------------------------------------


def vector_from_tensors(name: str, tensors: dict[str, np.ndarray], source: str, made_with: dict | None = None,
                        metrics: dict | None = None) -> SteeringVector:
    """`direction.{L}` tensors (a pack's, a safetensors export's) -> a SteeringVector."""
    vectors: dict[int, np.ndarray] = {}
    for tname, arr in tensors.items():
        m = re.fullmatch(r"direction\.(\d{1,6})", tname)
        if not m:
            raise InvalidVector(f"{source}: tensor {tname!r} is not named direction.N (N = decoder block)",
                                file=source, field=tname)
        a = np.asarray(arr)
        if a.ndim != 1 or a.dtype.kind != "f" or a.size == 0:
            raise InvalidVector(f"{source}: {tname} must be a 1-D float vector, not {a.dtype} {list(a.shape)}",
                                file=source, field=tname)
        vectors[int(m.group(1))] = a.astype(np.float32)
    if not vectors:
        raise InvalidVector(f"{source} holds no direction.N tensors", file=source, field="tensors")
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) > 1:
        raise InvalidVector(f"{source}: the directions have different widths {sorted(widths)}", file=source,
                            field="tensors")
    return SteeringVector(name, vectors, dict(made_with or {}), dict(metrics or {}))


def vector_from_pack(pack) -> SteeringVector:
    source = str(pack.folder)
    if pack.kind != "steering":
        raise InvalidVector(f"{source} is a {pack.kind!r} pack, not a steering pack", file=source, field="kind")
    return vector_from_tensors(pack.name, pack.tensors, source, pack.meta.get("made_with"), pack.meta.get("metrics"))


def save_pack(vec: SteeringVector, folder: Path, *, model_checksum: str | None, model_name: str | None,
              version: str = "1.0.0", overwrite: bool = False) -> Path:
    from .packs import write_pack

    return write_pack(Path(folder), name=vec.name, kind="steering", version=version, model_checksum=model_checksum,
                      layers=vec.layers, tensors=vec.tensors(), made_with=vec.made_with, metrics=vec.metrics,
                      model_name=model_name, overwrite=overwrite)
