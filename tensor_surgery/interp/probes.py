"""Linear probes: does layer L's residual stream linearly encode a concept?

From labelled texts (JSONL lines `{"text": ..., "label": ...}`, two classes), each text's block
outputs are read at its last token or averaged over its tokens (steering.read_activations: one text
per pass, no padding), and one logistic regression per layer is trained on a stratified split
(scikit-learn; features standardized for the solver, the scaling folded back into the weights so the
saved probe is a plain `sigmoid(h . w + b)` on the raw residual). Held-out accuracy and F1 per
layer, and the best layer, are reported and saved with the probe as a pack of kind `probe`:

- `probe.weight.{L}`: [k, width] float32, `probe.bias.{L}`: [k] float32, one row per probe; a
  trained pack has k = 1, and `made_with.probe_names` names the rows (the monitor shows them);
- `made_with.labels`: which label is the positive class (score -> 1) and which the negative.

Layer L is block L's output, `output_hidden_states[L + 1]` in transformers, as for steering vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest

READS = ("last", "mean")
# the repository's examples/probes (a source checkout; an installed wheel has none, and the page says so)
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "probes"
MAX_TEXTS = 20_000
MAX_TEXT_CHARS = 20_000


class InvalidLabels(InvalidRequest):
    code = "invalid_labels"


@dataclass
class Labelled:
    texts: list[str]
    y: np.ndarray  # 0/1
    positive: object
    negative: object
    source: str


def weight_name(layer: int) -> str:
    return f"probe.weight.{layer}"


def bias_name(layer: int) -> str:
    return f"probe.bias.{layer}"


def labelled_from_rows(rows: list, source: str = "data") -> Labelled:
    """Check `[{"text", "label"}, ...]`: non-empty texts, exactly two label values (each at least
    twice, so that both the training and the held-out part see both)."""
    if not isinstance(rows, list):
        raise InvalidLabels(f"{source}: expected a list of {{\"text\", \"label\"}} objects", file=source, field="data")
    if len(rows) > MAX_TEXTS:
        raise InvalidLabels(f"{source}: {len(rows)} texts; at most {MAX_TEXTS}", file=source, field="data")
    texts, labels = [], []
    for i, r in enumerate(rows):
        where = f"{source} line {i + 1}"
        if not isinstance(r, dict):
            raise InvalidLabels(f"{where}: expected an object with 'text' and 'label'", file=source, line=i + 1)
        text, label = r.get("text"), r.get("label")
        if not isinstance(text, str) or not text.strip():
            raise InvalidLabels(f"{where}: field 'text' must be a non-empty string", file=source, line=i + 1,
                                field="text")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidLabels(f"{where}: field 'text' is over {MAX_TEXT_CHARS} characters", file=source,
                                line=i + 1, field="text")
        if isinstance(label, float) or not isinstance(label, (str, int, bool)) or label == "":
            raise InvalidLabels(f"{where}: field 'label' must be a string, an integer or true/false, not {label!r}",
                                file=source, line=i + 1, field="label")
        texts.append(text)
        labels.append(label)
    values = sorted(set(labels), key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        raise InvalidLabels(f"{source}: every label is {values[0]!r} if any; a probe needs two classes (texts "
                            "with the concept and texts without)" if values else f"{source}: no texts",
                            file=source, field="label")
    if len(values) > 2:
        raise InvalidLabels(f"{source}: field 'label' has {len(values)} values ({', '.join(map(repr, values[:5]))}); "
                            "probes are binary: give two", file=source, field="label")
    # 1/True/"yes"-style labels are the positive class when they are recognisable; else the second value
    pos = next((v for v in values if v in (1, True) or str(v).lower() in ("1", "true", "yes", "positive", "pos")),
               values[1])
    neg = values[0] if pos == values[1] else values[1]
    y = np.array([1 if lab == pos else 0 for lab in labels], dtype=np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise InvalidLabels(f"{source}: label {neg if counts[0] < 2 else pos!r} has {int(counts.min())} text(s); "
                            "each class needs at least 2", file=source, field="label")
    return Labelled(texts, y, pos, neg, source)


def read_labelled(path: Path) -> Labelled:
    """A JSONL file of `{"text", "label"}` lines (blank lines skipped)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidLabels(f"{path}: cannot read ({e.strerror})", file=str(path)) from None
    if len(raw) > 64 << 20:
        raise InvalidLabels(f"{path}: over 64 MiB", file=str(path))
    rows = []
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidLabels(f"{path}: not UTF-8 text", file=str(path)) from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise InvalidLabels(f"{path} line {i + 1}: not JSON ({e})", file=str(path), line=i + 1) from None
    return labelled_from_rows(rows, str(path))


def example_sets() -> dict[str, Path]:
    """The shipped labelled example sets, by name (file stem)."""
    if not EXAMPLES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.jsonl"))}


@dataclass
class ProbeFit:
    layer: int
    weight: np.ndarray  # [width] float64, on the raw residual
    bias: float
    accuracy: float  # held out
    f1: float  # held out, positive class
    train_accuracy: float


def fit_probes(acts: dict[int, np.ndarray], y: np.ndarray, *, seed: int = 0, test_fraction: float = 0.25,
               c: float = 1.0) -> tuple[dict[int, ProbeFit], dict]:
    """One logistic regression per layer on a stratified split (the same split for every layer)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    if not 0.05 <= test_fraction <= 0.5:
        raise InvalidRequest(f"test fraction {test_fraction} must be between 0.05 and 0.5", field="test_fraction")
    n = len(y)
    idx = np.arange(n)
    n_test = max(2, int(round(n * test_fraction)))
    if n - n_test < 2:
        raise InvalidLabels(f"{n} texts are too few to hold {n_test} out and still train", field="data")
    train, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=y)
    fits = {}
    for L, X in acts.items():
        X = np.asarray(X, dtype=np.float64)
        mu = X[train].mean(axis=0)
        sd = X[train].std(axis=0)
        sd[sd == 0] = 1.0
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit((X[train] - mu) / sd, y[train])
        w = clf.coef_[0] / sd
        b = float(clf.intercept_[0] - (mu * w).sum())
        pred = (X[test] @ w + b > 0).astype(int)
        pred_train = (X[train] @ w + b > 0).astype(int)
        fits[L] = ProbeFit(L, w, b, float(accuracy_score(y[test], pred)),
                           float(f1_score(y[test], pred, zero_division=0)),
                           float(accuracy_score(y[train], pred_train)))
    split = {"train": int(len(train)), "test": int(len(test)), "seed": seed, "test_fraction": test_fraction}
    return fits, split


def best_layer(fits: dict[int, ProbeFit]) -> int:
    """Highest held-out F1, then accuracy; the earliest layer among equals (cheapest to read)."""
    return max(sorted(fits), key=lambda L: (fits[L].f1, fits[L].accuracy, -L))


def pack_tensors(fits: dict[int, ProbeFit]) -> dict[str, np.ndarray]:
    out = {}
    for L, f in fits.items():
        out[weight_name(L)] = f.weight.astype(np.float32)[None, :]
        out[bias_name(L)] = np.array([f.bias], dtype=np.float32)
    return out


def metrics_of(fits: dict[int, ProbeFit], split: dict) -> dict:
    best = best_layer(fits)
    return {"best_layer": best, "best_accuracy": fits[best].accuracy, "best_f1": fits[best].f1, "split": split,
            "per_layer": {str(L): {"accuracy": f.accuracy, "f1": f.f1, "train_accuracy": f.train_accuracy}
                          for L, f in sorted(fits.items())}}


def train(hf_model, tokenizer, data: Labelled, layers: list[int], *, read: str = "last", seed: int = 0,
          test_fraction: float = 0.25, progress=None) -> tuple[dict[int, ProbeFit], dict]:
    """Read the residuals of `data`'s texts and fit a probe per layer; returns (fits, metrics)."""
    from .steering import read_activations

    if read not in READS:
        raise InvalidRequest(f"read must be one of {', '.join(READS)}, not {read!r}", field="read")
    acts = read_activations(hf_model, tokenizer, data.texts, layers, read, progress)
    fits, split = fit_probes(acts, data.y, seed=seed, test_fraction=test_fraction)
    return fits, metrics_of(fits, split)


def write_probe_pack(folder: Path, fits: dict[int, ProbeFit], metrics: dict, data: Labelled, *, name: str,
                     version: str = "1.0.0", model_checksum: str | None, model_name: str | None, read: str,
                     seed: int, overwrite: bool = False) -> Path:
    from .packs import write_pack

    made_with = {"data": data.source, "texts": len(data.texts), "method": "logistic regression (scikit-learn, "
                 "standardized features folded into the weights)", "read": read, "seed": seed,
                 "labels": {"positive": data.positive, "negative": data.negative}, "probe_names": [name]}
    return write_pack(folder, name=name, kind="probe", version=version, model_checksum=model_checksum,
                      layers=sorted(fits), tensors=pack_tensors(fits), made_with=made_with, metrics=metrics,
                      model_name=model_name, overwrite=overwrite)


def probes_of_pack(pack) -> dict[int, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{layer: (weights [k, width], biases [k], names)} of a probe pack, every shape checked."""
    from .packs import InvalidPack

    where = str(pack.folder)
    if pack.kind != "probe":
        raise InvalidPack(f"{where}: pack {pack.name!r} is a {pack.kind} pack, not a probe pack", file=where,
                          field="kind")
    out = {}
    for L in pack.layers:
        w, b = pack.tensors.get(weight_name(L)), pack.tensors.get(bias_name(L))
        if w is None or b is None:
            raise InvalidPack(f"{where}: layer {L} is listed but {weight_name(L)!r} or {bias_name(L)!r} is missing",
                              file=where, tensor=weight_name(L))
        if w.ndim != 2 or b.shape != (w.shape[0],) or w.dtype.kind != "f" or b.dtype.kind != "f":
            raise InvalidPack(f"{where}: {weight_name(L)!r} must be [k, width] and {bias_name(L)!r} [k] floats "
                              f"(got {list(w.shape)} and {list(b.shape)})", file=where, tensor=weight_name(L))
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InvalidPack(f"{where}: {weight_name(L)!r} holds NaN or infinite values", file=where,
                              tensor=weight_name(L))
        names = pack.meta.get("made_with", {}).get("probe_names")
        if not (isinstance(names, list) and len(names) == w.shape[0] and all(isinstance(n, str) for n in names)):
            names = [pack.name] if w.shape[0] == 1 else [f"{pack.name}[{i}]" for i in range(w.shape[0])]
        out[L] = (w, b, names)
    return out
