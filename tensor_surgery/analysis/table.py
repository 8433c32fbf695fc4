"""The per-parameter table: one row per tensor of one or more models, the analysis notes' columns
first (`COLUMNS`, in the notes' order), then the extra ones (`EXTRA_COLUMNS`).

The work per tensor is `analyze_tensors(model_path, names, options)`, a module-level function that
opens the model itself: it runs in this process or as a Ray task on any node that sees the path
(`analysis.parallel.run_tasks`). Statistics stream through the store's chunked reader (pattern
counts for <= 16-bit dtypes, exact moments otherwise); the rank is computed in the same pass for
tall matrices (see `analysis.rank`).

Ordering (the notes' rule): rows by numeric `layer_index` ascending; parameters outside the
repeated layers (embeddings, final norm, lm_head, pooler) have `layer_index` null and come last.
Ties keep the models in the order given, then each model's canvas order.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, SurgeryError
from ..store import TensorReader, open_model
from ..store import stats as st
from ..store.listing import tensor_entries
from . import rank as rk
from .parallel import run_tasks

# The notes' columns, in their order: the public contract of every table this writes.
COLUMNS = (
    "model_path", "model_id", "revision", "param_name", "layer_index", "block_type", "shape", "rows",
    "cols", "rank", "mean", "std", "var", "sparsity", "dtype", "created_at",
)
PERCENTILES = (0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)
PERCENTILE_COLUMNS = tuple("p" + f"{p:g}".replace(".", "_") for p in PERCENTILES)
EXTRA_COLUMNS = (
    "type_group", "numel", "min", "max", "abs_max", "l2_norm", "nan_count", "inf_count",
    *PERCENTILE_COLUMNS, "spectral_norm", "stable_rank", "rank_method", "rank_certain",
    "rank_error_bound",
)
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS
RANK_METHODS = ("exact", "randomized", "none")
DEFAULT_RANK_K = 128
TASK_BYTES = 64 << 20  # a task reads at most this much (more only for one big tensor)
TASKS_PER_MODEL = 32  # ...and a model is cut into at least this many, for the workers to share


@dataclass(frozen=True)
class Options:
    rank: str = "exact"
    sparsity_eps: float = st.SPARSITY_THRESHOLD
    rank_k: int = DEFAULT_RANK_K  # singular values a randomized rank computes
    seed: int = 0  # the randomized rank's; recorded in run_meta.json

    def check(self) -> Options:
        if self.rank not in RANK_METHODS:
            raise InvalidRequest(f"rank must be one of {', '.join(RANK_METHODS)}, not {self.rank!r}", field="rank")
        if not (math.isfinite(self.sparsity_eps) and self.sparsity_eps >= 0):
            raise InvalidRequest(f"sparsity_eps must be a finite number >= 0, not {self.sparsity_eps}",
                                 field="sparsity_eps")
        if not 1 <= self.rank_k <= 4096:
            raise InvalidRequest("rank_k must be between 1 and 4096", field="rank_k")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# -- the per-task work (runs in a Ray worker too) -----------------------------------------------

_OPEN: dict[str, object] = {}  # per process: a worker keeps the models its tasks opened


def _model(path: str):
    m = _OPEN.get(path)
    if m is not None and not m.changed_on_disk():
        return m
    if m is not None:
        m.close()
    if len(_OPEN) >= 8:
        _OPEN.pop(next(iter(_OPEN))).close()
    m = _OPEN[path] = open_model(path)
    return m


def analyze_tensors(model_path: str, names: list[str], options: dict) -> list[dict]:
    """Statistics and rank of `names` in the model at `model_path` (a path every worker sees).

    Returns one `{"param_name", "values": {...}}` per tensor, or `{"param_name", "skipped":
    {"shape", "dtype", "reason"}}` for a tensor that cannot be analysed (its values cannot be
    decoded, ...), so that one bad tensor never stops the run.
    """
    opts = Options(**options)
    model = _model(model_path)
    out = []
    for name in names:
        ref = model.tensor(name)
        try:
            values = _analyze(TensorReader(ref), opts)
        except SurgeryError as e:
            if e.code == "model_changed":
                raise
            out.append({"param_name": name, "skipped": {
                "param_name": name, "shape": list(ref.shape), "dtype": ref.dtype.name, "reason": e.message}})
            continue
        values["created_at"] = _now()
        out.append({"param_name": name, "values": values})
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _GramTee:
    """Stands in for a reader in `tensor_stats`: its first pass over the chunks (whole rows)
    also feeds the Gram matrix, so a tall matrix's rank costs no second read."""

    def __init__(self, reader: TensorReader, gram: rk.GramAccumulator) -> None:
        self._reader, self._gram = reader, gram
        self.dtype, self.numel, self.ref = reader.dtype, reader.numel, reader.ref
        self._fed = False

    def decode(self, patterns):
        return self._reader.decode(patterns)

    def iter_chunks(self, chunk_elems: int):
        feed = not self._fed
        self._fed = True
        for pats in self._reader.iter_chunks(chunk_elems):
            if feed:
                self._gram.add_rows(self._reader.decode(pats))
            yield pats


def _analyze(reader: TensorReader, opts: Options) -> dict:
    dt = reader.dtype
    if not dt.decodable:
        raise dt.undecodable()
    if dt.kind == "complex":
        raise InvalidRequest(f"{dt.name} is complex: the table's statistics need real values",
                             tensor=reader.ref.name)
    shape = tuple(reader.shape)
    mat = rk.matrix_shape(shape)
    want_rank = opts.rank != "none" and mat is not None and reader.numel > 0
    gram = None
    source: object = reader
    chunk = st.CHUNK_ELEMS
    if want_rank and opts.rank == "exact" and mat[0] >= mat[1]:
        gram = rk.GramAccumulator(mat[1])
        source = _GramTee(reader, gram)
        chunk = max(1, st.CHUNK_ELEMS // mat[1]) * mat[1]  # whole rows per chunk
    stats, _ = st.tensor_stats(source, threshold=opts.sparsity_eps, percentiles=PERCENTILES, chunk_elems=chunk)
    values = {
        "mean": stats["mean"], "std": stats["std"], "var": stats["var"], "sparsity": stats["sparsity"],
        "numel": stats["numel"], "min": _num(stats["min"]), "max": _num(stats["max"]),
        "abs_max": _num(stats["abs_max"]), "l2_norm": stats["l2_norm"],
        "nan_count": stats["nan_count"], "inf_count": stats["inf_count"],
    }
    for col, p in zip(PERCENTILE_COLUMNS, PERCENTILES):
        values[col] = _num(stats["percentiles"].get(f"p{p:g}"))
    values.update(rank=None, spectral_norm=None, stable_rank=None, rank_method=None, rank_certain=None,
                  rank_error_bound=None)
    if want_rank:
        if stats["nan_count"] or stats["inf_count"]:
            values.update(rank_method="none: NaN or Inf values")
        else:
            values.update(_rank(reader, opts, mat, gram))
            values.pop("rank_is_lower_bound", None)
    elif opts.rank != "none":
        values["rank_method"] = "none: not a matrix" if mat is None else "none: empty"
    else:
        values["rank_method"] = "none"
    return values


def _num(v):
    """Integers (integer dtypes) stay exact; floats as float. Columns hold one type each, so
    int columns are written as float where a float dtype may appear in the same column."""
    return None if v is None else float(v)


def _rank(reader: TensorReader, opts: Options, mat: tuple[int, int], gram: rk.GramAccumulator | None) -> dict:
    m, n = mat
    if opts.rank == "randomized":
        return rk.randomized_rank(lambda: _row_blocks(reader, n), m, n, opts.rank_k, opts.seed)
    if gram is None:  # wide: the Gram matrix of the rows, A A^T, from column blocks
        gram = _wide_gram(reader, m, n)
    return rk.rank_from_gram(gram.gram if isinstance(gram, rk.GramAccumulator) else gram, m, n,
                             lambda: _whole(reader, m, n))


def _row_blocks(reader: TensorReader, n: int) -> Iterator[np.ndarray]:
    rows = max(1, rk.BLOCK_ELEMS // n)
    for pats in reader.iter_chunks(rows * n):
        yield reader.decode(pats).astype(np.float64).reshape(-1, n)


def _wide_gram(reader: TensorReader, m: int, n: int) -> np.ndarray:
    gram = np.zeros((m, m))
    if len(reader.shape) != 2:  # a wide tensor of > 2 dims: rare (conv kernels), read whole
        a = _whole(reader, m, n)
        return a @ a.T
    cols = max(1, rk.BLOCK_ELEMS // m)
    for c in range(0, n, cols):
        b = reader.decode(reader.read_patterns((slice(0, m), slice(c, min(c + cols, n))))).astype(np.float64)
        gram += b @ b.T
    return gram


def _whole(reader: TensorReader, m: int, n: int) -> np.ndarray:
    return reader.decode(reader.chunk_patterns(0, reader.numel)).astype(np.float64).reshape(m, n)


# -- the driver -------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """What the driver knows about one model before any task runs."""

    path: str  # as opened (a file or an index): what tasks open
    model_id: str
    revision: str | None
    static: dict[str, dict]  # param_name -> the columns known from the header
    order: list[str]  # canvas order
    nbytes: dict[str, int]


_HF_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<org>[^/]+?)(?:--(?P<name>[^/]+))?/snapshots/(?P<rev>[0-9a-f]{40})(?:/|$)")


def model_identity(path: str) -> tuple[str, str | None]:
    """(model_id, revision): from a Hugging Face cache path (`models--org--name/snapshots/<commit>`)
    when it is one, else the model's folder (or file) name and no revision."""
    real = os.path.abspath(path)  # not realpath: the cache's snapshot entries are links into blobs/
    mt = _HF_SNAPSHOT.search(real.replace(os.sep, "/"))
    if mt:
        repo = mt["org"] if mt["name"] is None else f"{mt['org']}/{mt['name']}"
        return repo, mt["rev"]
    p = Path(real)
    if p.name == "model.safetensors" or p.name.endswith(".index.json"):
        return p.parent.name, None
    return p.name.removesuffix(".safetensors"), None


def describe_model(path: str | os.PathLike, pattern: re.Pattern | None = None) -> ModelInfo:
    """Open the model (validating it) and work out the static columns of each matching tensor."""
    with open_model(os.path.abspath(path)) as model:
        entries = tensor_entries(model)
        model_id, revision = model_identity(str(path))
        if pattern is not None:
            entries = [e for e in entries if pattern.search(e["name"])]
        names = [e["name"] for e in entries]
        blocks = block_types(entries)
        static = {}
        for e in entries:
            meta = e["metadata_for_canvas"]
            shape = tuple(e["shape"])
            mat = rk.matrix_shape(shape)
            static[e["name"]] = {
                "model_path": model.path, "model_id": model_id, "revision": revision,
                "param_name": e["name"], "layer_index": _layer_of(meta),
                "block_type": blocks[e["name"]], "shape": str(shape), "rows": mat[0] if mat else None,
                "cols": mat[1] if mat else None, "dtype": e["dtype"], "type_group": meta["type_group"],
            }
        return ModelInfo(model.path, model_id, revision, static, names, {e["name"]: e["nbytes"] for e in entries})


def _layer_of(meta: dict) -> int | None:
    """The repeated block's index; None outside the layers. The layout puts embeddings at -1 and
    the final norm / head after the last layer: only names templated on a layer number
    (`model.layers.*.…`) are in a layer."""
    key = meta.get("specific_type_key") or ""
    li = meta.get("layer_index")
    if "*" not in key or li is None or li < 0:
        return None
    return int(li)


_ROLE_ALIASES = {"embedding": "embedding", "output_head": "output"}


def block_types(entries: Iterable[dict]) -> dict[str, str]:
    """A short module name per tensor: the part of its name after the layer number, without
    `.weight` (`q_proj`, `down_proj`, `input_layernorm`, `q_proj.bias`), or the full part where
    the short one would join different modules (BERT's several `dense`); `embedding` and `output`
    for the embeddings and head outside the layers, as the notes name them."""
    entries = list(entries)
    tails = {}
    for e in entries:
        meta = e["metadata_for_canvas"]
        key = meta.get("specific_type_key") or e["name"]
        if _layer_of(meta) is None:
            alias = _ROLE_ALIASES.get(meta["type_group"])
            tails[e["name"]] = alias or _short(_strip_weight(e["name"]))
            continue
        tail = key.split("*.", 1)[1] if "*." in key else key
        tails[e["name"]] = _strip_weight(tail)
    layer_tails = {t for e in entries if _layer_of(e["metadata_for_canvas"]) is not None for t in [tails[e["name"]]]}
    short_of: dict[str, set[str]] = {}
    for t in layer_tails:
        short_of.setdefault(_short(t), set()).add(t)
    out = {}
    for e in entries:
        t = tails[e["name"]]
        if _layer_of(e["metadata_for_canvas"]) is None:
            out[e["name"]] = t
        else:
            s = _short(t)
            out[e["name"]] = s if len(short_of[s]) == 1 else t
    return out


def _strip_weight(tail: str) -> str:
    return tail[: -len(".weight")] if tail.endswith(".weight") else tail


def _short(tail: str) -> str:
    parts = tail.split(".")
    if parts[-1] in ("bias", "weight_scale_inv", "scale") and len(parts) > 1:
        return ".".join(parts[-2:])
    return parts[-1]


def plan_tasks(info: ModelInfo, names: list[str], options: Options) -> list[tuple]:
    """Cut a model's tensors into tasks `(path, [names], options)` of similar bytes."""
    total = sum(info.nbytes[n] for n in names)
    target = max(1, min(TASK_BYTES, total // TASKS_PER_MODEL))
    tasks, cur, size = [], [], 0
    for n in names:
        cur.append(n)
        size += info.nbytes[n]
        if size >= target:
            tasks.append((info.path, cur, options.to_dict()))
            cur, size = [], 0
    if cur:
        tasks.append((info.path, cur, options.to_dict()))
    return tasks


def sort_rows(rows: list[dict], model_order: dict[str, int], tensor_order: dict[tuple[str, str], int]) -> list[dict]:
    """The notes' ordering: numeric layer_index ascending, non-layer parameters last."""
    def key(r):
        li = r["layer_index"]
        return (li is None, li if li is not None else 0, model_order[r["model_path"]],
                tensor_order[(r["model_path"], r["param_name"])])
    return sorted(rows, key=key)


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def build_table(
    models: list[ModelInfo],
    options: Options,
    *,
    ray_address: str | None = None,
    done: dict[tuple[str, str], dict] | None = None,
    on_result: Callable[[str, dict], None] | None = None,
    progress: Progress | None = None,
) -> tuple[list[dict], list[dict]]:
    """(rows in the notes' order, skipped tensors) for the models.

    `done` holds results of a previous, interrupted run (`(model_path, param_name)` -> result):
    those tensors are not computed again. `on_result(model_path, result)` sees each new result as
    it arrives (the resume file is written from it).
    """
    done = dict(done or {})
    tasks = []
    for info in models:
        todo = [n for n in info.order if (info.path, n) not in done]
        tasks += plan_tasks(info, todo, options)
    total = sum(info.nbytes[n] for info in models for n in info.order)
    finished = sum(info.nbytes[n] for info in models for n in info.order if (info.path, n) in done)
    if progress:
        progress(finished, total)
    by_path = {info.path: info for info in models}
    for task, results in run_tasks(analyze_tensors, tasks, ray_address=ray_address):
        path = task[0]
        for res in results:
            done[(path, res["param_name"])] = res
            if on_result:
                on_result(path, res)
        finished += sum(by_path[path].nbytes[n] for n in task[1])
        if progress:
            progress(finished, total)
    rows, skipped = [], []
    for info in models:
        for n in info.order:
            res = done[(info.path, n)]
            if "skipped" in res:
                skipped.append({"model_path": info.path, **res["skipped"]})
                continue
            rows.append({c: None for c in ALL_COLUMNS} | info.static[n] | res["values"])
    model_order = {info.path: i for i, info in enumerate(models)}
    tensor_order = {(info.path, n): i for info in models for i, n in enumerate(info.order)}
    return [{c: r[c] for c in ALL_COLUMNS} for r in sort_rows(rows, model_order, tensor_order)], skipped

