"""Model diff: how far each tensor of a model moved from its base (numpy only).

Tensors are matched by name. For each pair of the same shape, one streaming pass over both
(chunk by chunk, in float64) gives ||A||, ||B||, ||B - A||, A.B, max |B - A| and how many elements
changed (bit patterns that differ, or values when the dtypes differ), hence

    relative_change = ||B - A|| / ||A||      cosine = A.B / (||A|| ||B||)

A changed 2-D tensor small enough for an exact SVD (RANK_EXACT_MAX_ELEMENTS) is then read whole
once more for the numerical rank of its delta (a low-rank delta is a LoRA-like fine-tune).

The rank's tolerance is `max(RANK_RTOL * s_max, u_B * ||B||_F)`, u_B the unit roundoff of B's
dtype (2^-8 for BF16, 2^-24 for F32, 0 for integers). Why the second term: a fine-tune is stored
rounded, B = round(A + D), so the stored delta is D + E with |E_ij| <= u_B |B_ij|; by Weyl's
inequality each singular value moves by at most ||E||_2 <= ||E||_F <= u_B ||B||_F, so singular
values under that bound cannot be told from rounding (without it every BF16 delta is full rank).

Tensors only in one model, and pairs whose shapes differ, are listed with their status rather
than being errors: two models of different architectures diff by name, the rest listed unmatched.

The per-tensor work is `diff_names` over open models (in process) or `diff_task` over paths (a
picklable task that opens the models itself, for Ray workers that see the same files).
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from ..store import Model, TensorReader, TensorRef, open_model
from ..store.dtypes import value_table
from ..store.layout import infer_layout
from ..store.stats import uses_table

CHUNK_ELEMS = 1 << 20  # elements per streamed chunk: 8 MiB of float64 per side
RANK_EXACT_MAX_ELEMENTS = 1 << 25  # as store.rank: a 49152 x 576 embedding is exact, a 2 GB matrix is not
RANK_RTOL = 1e-6  # the analysis notes' `s > 1e-6 * s.max()`
TOP_SINGULAR_VALUES = 8  # kept in each row: enough to see a rank-2 delta's gap
STATUSES = ("changed", "unchanged", "only_in_base", "only_in_model", "shape_changed", "not_comparable")

# The table's columns, in order (every row holds each; None where it does not apply).
COLUMNS = (
    "name", "status", "layer_index", "type_group",
    "base_dtype", "model_dtype", "base_shape", "model_shape", "numel",
    "relative_change", "cosine", "max_abs_change", "changed_elements", "changed_fraction",
    "base_norm", "model_norm", "delta_norm",
    "delta_rank", "delta_rank_tolerance", "delta_max_rank", "delta_singular_values", "note",
)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def unit_roundoff(dtype) -> float:
    """Half the machine epsilon of a float dtype (the largest relative rounding error of one
    value); 0 for integer and boolean dtypes, whose values are stored exactly."""
    if dtype.kind != "float" or dtype.numpy is None:
        return 0.0
    return float(np.finfo(dtype.numpy).eps) / 2


def _empty_row(name: str, a: TensorRef | None, b: TensorRef | None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row["name"] = name
    if a is not None:
        row["base_dtype"], row["base_shape"] = a.dtype.name, list(a.shape)
    if b is not None:
        row["model_dtype"], row["model_shape"] = b.dtype.name, list(b.shape)
    return row


def diff_pair(a: TensorRef | None, b: TensorRef | None, *, rank: bool = True,
              chunk_elems: int = CHUNK_ELEMS, tick: Callable[[int], None] | None = None) -> dict:
    """One row of the diff: base tensor `a` against model tensor `b` (either may be missing)."""
    name = (b or a).name
    row = _empty_row(name, a, b)
    if a is None or b is None:
        row["status"] = "only_in_model" if a is None else "only_in_base"
        return row
    if a.shape != b.shape:
        row["status"] = "shape_changed"
        row["note"] = f"shape {list(a.shape)} in the base, {list(b.shape)} in the model: not compared"
        return row
    for ref in (a, b):
        if not ref.dtype.decodable or ref.dtype.kind == "complex":
            row["status"] = "not_comparable"
            row["note"] = f"{ref.dtype.name} values cannot be compared here (undecodable or complex)"
            return row
    row["numel"] = a.numel
    ra, rb = TensorReader(a), TensorReader(b)
    same_dtype = a.dtype.name == b.dtype.name
    acc = _Sums()
    by_table = same_dtype and uses_table(a.dtype)
    for start in range(0, a.numel, chunk_elems):
        stop = min(start + chunk_elems, a.numel)
        pa, pb = ra.chunk_patterns(start, stop), rb.chunk_patterns(start, stop)
        if by_table:
            acc.add_patterns(pa, pb, _square_table(a.dtype))
        else:
            acc.add_values(ra.decode(pa).astype(np.float64), rb.decode(pb).astype(np.float64), same_dtype, pa, pb)
        if tick:
            tick((stop - start) * (a.nbytes + b.nbytes) // max(a.numel, 1))
    if by_table:
        acc.finish_patterns()
    ss_a, ss_b, ss_d, dot = acc.ss_a, acc.ss_b, acc.ss_d, acc.dot
    max_abs, changed, nonfinite = acc.max_abs, acc.changed, acc.nonfinite
    na, nb, nd = math.sqrt(ss_a), math.sqrt(ss_b), math.sqrt(ss_d)
    row.update(
        status="changed" if changed else "unchanged",
        base_norm=na, model_norm=nb, delta_norm=nd,
        # ||A|| = 0: a change from nothing has no relative size (None, not infinity: JSON has none)
        relative_change=(nd / na) if na > 0 else (0.0 if nd == 0 else None),
        # clipped: rounding of the sums can put an unchanged tensor a hair above 1
        cosine=max(-1.0, min(1.0, dot / (na * nb))) if na > 0 and nb > 0 else None,
        max_abs_change=max_abs, changed_elements=changed,
        changed_fraction=changed / a.numel if a.numel else 0.0,
    )
    notes = []
    if nonfinite:
        notes.append(f"{nonfinite} element(s) NaN or Inf on either side: left out of the norms")
    if len(a.shape) == 2:
        row["delta_max_rank"] = min(a.shape)
        if not changed:
            row["delta_rank"] = 0
        elif not rank:
            pass
        elif a.numel > RANK_EXACT_MAX_ELEMENTS:
            notes.append(f"delta rank not computed: {a.numel:,} elements is over the exact-SVD limit "
                         f"of {RANK_EXACT_MAX_ELEMENTS:,}")
        elif nonfinite:
            notes.append("delta rank not computed: NaN or Inf values")
        else:
            s = np.linalg.svd(read_delta(a, b), compute_uv=False)
            tol = rank_tolerance(s, b, nb)
            row["delta_rank"] = int(np.count_nonzero(s > tol))
            row["delta_rank_tolerance"] = tol
            row["delta_singular_values"] = [float(v) for v in s[:TOP_SINGULAR_VALUES]]
    if not same_dtype:
        notes.append(f"dtype {a.dtype.name} in the base, {b.dtype.name} in the model: values compared")
    row["note"] = "; ".join(notes) or None
    return row


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of x * y in float64 by numpy's pairwise summation, not BLAS: a BLAS dot of a 65,536-long
    vector took 10 ms on a busy 2-core machine (its threads wait on each other), 100x the sum."""
    return float(np.sum(x * y))


class _Sums:
    """Running sums of one tensor pair in float64, over the elements finite on both sides."""

    def __init__(self) -> None:
        self.ss_a = self.ss_b = self.ss_d = self.dot = self.max_abs = 0.0
        self.changed = self.nonfinite = 0

    def add_patterns(self, pa: np.ndarray, pb: np.ndarray, table: "_SquareTable") -> None:
        """Same <= 16-bit dtype: A's sums from a count of its bit patterns (65,536 at most, so one
        bincount instead of decoding a million values), B's as A's plus the changed elements'
        corrections. Most chunks of a fine-tune change nothing: they cost a bincount and a compare."""
        counts = np.bincount(pa, minlength=table.values.size).astype(np.float64)  # exact below 2**53
        self.ss_a += _dot(counts, table.squares)
        self.nonfinite += int(_dot(counts, table.nonfinite))
        idx = np.flatnonzero(pa != pb)
        if not idx.size:
            return
        self.changed += idx.size
        xa, xb = table.values[pa[idx]], table.values[pb[idx]]
        fa, fb = np.isfinite(xa), np.isfinite(xb)
        # an element finite in A only leaves A's sum; one finite in B only is counted non-finite
        lost = fa & ~fb
        self.ss_a -= _dot(xa[lost], xa[lost])
        self.nonfinite += int(np.count_nonzero(lost))
        ok = fa & fb
        xa, xb = xa[ok], xb[ok]
        self.ss_b += _dot(xb, xb) - _dot(xa, xa)
        self.dot += _dot(xa, xb) - _dot(xa, xa)
        d = xb - xa
        self.ss_d += _dot(d, d)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))

    def finish_patterns(self) -> None:
        """Unchanged elements add to B's sum and to A.B exactly what they add to A's."""
        self.ss_b += self.ss_a
        self.dot += self.ss_a

    def add_values(self, xa: np.ndarray, xb: np.ndarray, same_dtype: bool, pa: np.ndarray, pb: np.ndarray) -> None:
        if same_dtype:
            self.changed += int(np.count_nonzero(pa != pb))
        else:
            self.changed += int(np.count_nonzero((xa != xb) & ~(np.isnan(xa) & np.isnan(xb))))
        finite = np.isfinite(xa) & np.isfinite(xb)
        if not finite.all():
            self.nonfinite += int(finite.size - np.count_nonzero(finite))
            xa, xb = xa[finite], xb[finite]
        self.ss_a += _dot(xa, xa)
        self.ss_b += _dot(xb, xb)
        self.dot += _dot(xa, xb)
        d = xb - xa
        self.ss_d += _dot(d, d)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))


@dataclass(frozen=True)
class _SquareTable:
    values: np.ndarray  # float64 value of each bit pattern
    squares: np.ndarray  # its square, 0 for NaN and Inf
    nonfinite: np.ndarray  # 1.0 for NaN and Inf patterns


_SQUARE_TABLES: dict[str, _SquareTable] = {}


def _square_table(dtype) -> _SquareTable:
    t = _SQUARE_TABLES.get(dtype.name)
    if t is None:
        values = value_table(dtype)
        finite = np.isfinite(values)
        fv = np.where(finite, values, 0.0)
        t = _SQUARE_TABLES[dtype.name] = _SquareTable(values, fv * fv, (~finite).astype(np.float64))
    return t


def rank_tolerance(s: np.ndarray, b: TensorRef, model_norm: float) -> float:
    """Singular values of a delta at or under this are rounding (see the module's docstring)."""
    smax = float(s[0]) if s.size else 0.0
    return max(RANK_RTOL * smax, unit_roundoff(b.dtype) * model_norm)


def read_delta(a: TensorRef, b: TensorRef) -> np.ndarray:
    """B - A of a whole 2-D tensor, in float64 (one matrix in memory: rank and LoRA only)."""
    full = (slice(0, a.shape[0]), slice(0, a.shape[1]))
    ra, rb = TensorReader(a), TensorReader(b)
    return rb.decode(rb.read_patterns(full)).astype(np.float64) - ra.decode(ra.read_patterns(full)).astype(np.float64)


# -- whole models ------------------------------------------------------------------------------


def compile_match(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidRequest(f"--match {pattern!r} is not a valid regular expression: {e}", field="match") from None


def plan_names(base: Model, model: Model, match: str | None = None) -> list[str]:
    """Every tensor name of either model (filtered by `match`), the model's order first, then
    what only the base holds."""
    rx = compile_match(match)
    names = list(model.tensors) + [n for n in base.tensors if n not in model.tensors]
    return [n for n in names if rx is None or rx.search(n)]


def pair_bytes(base: Model, model: Model, name: str) -> int:
    """What diffing this name reads: the progress bar's unit."""
    a, b = base.tensors.get(name), model.tensors.get(name)
    if a is None or b is None or a.shape != b.shape:
        return 0
    return a.nbytes + b.nbytes


def diff_names(base: Model, model: Model, names: Iterable[str], *, rank: bool = True,
               tick: Callable[[int], None] | None = None) -> list[dict]:
    return [diff_pair(base.tensors.get(n), model.tensors.get(n), rank=rank, tick=tick) for n in names]


RAY_TASK_BYTES = 64 << 20  # tensors per Ray task until they read this much: start-up amortized


def ray_tasks(base: Model, model: Model, names: list[str], rank: bool) -> list[tuple]:
    """Picklable `diff_task` arguments: (base path, model path, names, rank), a few tensors each."""
    tasks, batch, size = [], [], 0
    base_path, model_path = os.path.abspath(base.path), os.path.abspath(model.path)
    for n in names:
        batch.append(n)
        size += pair_bytes(base, model, n)
        if size >= RAY_TASK_BYTES:
            tasks.append((base_path, model_path, tuple(batch), rank))
            batch, size = [], 0
    if batch:
        tasks.append((base_path, model_path, tuple(batch), rank))
    return tasks


_open_lock = threading.Lock()
_opened: dict[str, Model] = {}  # path -> model, in a worker process: a task opens a model once


def _open_cached(path: str) -> Model:
    with _open_lock:
        m = _opened.get(path)
        if m is None or m.changed_on_disk():
            if len(_opened) >= 4:
                _opened.clear()  # (dropped models close when their last reference goes)
            m = _opened[path] = open_model(path)
        return m


def diff_task(base_path: str, model_path: str, names: tuple[str, ...], rank: bool = True) -> list[dict]:
    """The per-tensor work of a diff, from paths (runs in a Ray worker, or anywhere)."""
    return diff_names(_open_cached(base_path), _open_cached(model_path), names, rank=rank)


def annotate(rows: list[dict], base: Model, model: Model) -> None:
    """Layer and type group of each row, as the canvas places the tensor (the model's layout,
    the base's for tensors only the base holds)."""
    for m, want in ((model, lambda r: r["status"] != "only_in_base"), (base, lambda r: r["status"] == "only_in_base")):
        mine = [r for r in rows if want(r)]
        if not mine:
            continue
        layout = infer_layout(list(m.tensors), [t.shape for t in m.tensors.values()])
        for r in mine:
            meta = layout.get(r["name"])
            if meta is not None:
                r["layer_index"], r["type_group"] = meta.layer_index, meta.type_group


def summarize(rows: list[dict]) -> dict:
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] += 1
    moved = [r for r in rows if r["status"] == "changed" and r["relative_change"] is not None]
    top = max(moved, key=lambda r: r["relative_change"], default=None)
    return {
        "tensors": len(rows), **counts,
        "max_relative_change": top["relative_change"] if top else 0.0,
        "most_changed": top["name"] if top else None,
        "low_rank_deltas": sum(1 for r in rows if r["delta_rank"] and r["delta_max_rank"]
                               and r["delta_rank"] <= r["delta_max_rank"] // 8),
    }


def sort_rows(rows: list[dict]) -> list[dict]:
    """Most moved first; unchanged next; unmatched and incomparable tensors last, by name."""
    def key(r):
        if r["status"] == "changed":
            return (0, -(r["relative_change"] if r["relative_change"] is not None else math.inf), r["name"])
        return (1 if r["status"] == "unchanged" else 2, 0.0, r["name"])
    return sorted(rows, key=key)


def diff_models(base: Model, model: Model, *, match: str | None = None, rank: bool = True,
                ray_address: str | None = None, progress: Progress | None = None) -> dict:
    """The whole diff: every name of either model, one row each, most moved first.

    In process by default; with `ray_address` ("auto" or an address) each tensor is a Ray task that
    opens both models by path, so the cluster's nodes must see the same files."""
    names = plan_names(base, model, match)
    total = sum(pair_bytes(base, model, n) for n in names)
    done = [0]
    rows: list[dict] = []

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(min(done[0], total), total)

    if ray_address is None:
        lock = threading.Lock()

        def tick(n: int) -> None:
            with lock:
                advance(n)

        for name in names:
            before = done[0]
            rows += diff_names(base, model, [name], rank=rank, tick=tick)
            advance(pair_bytes(base, model, name) - (done[0] - before))  # rounding of the ticks
    else:
        from .parallel import run_tasks

        # connects first: an address that does not answer fails here, before anything is written
        for task, result in run_tasks(diff_task, ray_tasks(base, model, names, rank), ray_address=ray_address):
            rows += result
            advance(sum(pair_bytes(base, model, n) for n in task[2]))
    if progress:
        progress(total, total)
    annotate(rows, base, model)
    rows = sort_rows(rows)
    return {"base": base.path, "model": model.path, "match": match, "summary": summarize(rows), "rows": rows}
