"""Tensor clusters in 2-D or 3-D: similar tensors (or rows, columns, attention heads) land near each other.

Two kinds of points:

- **tensors** (`cluster_tensors`): every floating tensor of a model is one point. Its features are
  scale-free statistics and spectrum, read in one streaming pass plus a bounded sketch:
  mean/std, log10 std, log10 abs-max/std (how heavy the largest value is), log10 kurtosis,
  log10 stable rank and the top singular values over the first (sigma_2..6 / sigma_1), and how the
  matrix is laid out: log10 of its rows and of its columns (one role has one shape in every layer)
  and the spread (coefficient of variation) of its row norms and
  of its column norms (heads of unequal strength show in q_proj's rows, say). A tensor of more than
  two dimensions is viewed as (shape[0], rest); a vector as a 1 x n matrix (stable rank 1, no
  further singular values). The features are standardised (z-scores over the points) before
  the reduction, so that no single one dominates by its units.
- **parts of one matrix** (`cluster_matrix`): the rows, the columns, or the attention heads of a 2-D
  tensor (rows split by head_dim from config.json; o_proj-like tensors, whose inputs are the heads,
  split by columns). Points are the raw values: an embedding row, or a head's whole block.

Both reduce through the points' Gram matrix G = X X^T (points x points), accumulated block by block
over the matrix, so memory is bounded by the number of points (MAX_POINTS), never by the matrix:
- PCA: the top eigenpairs of the centred Gram matrix, coordinates V sqrt(lambda) (the same as the
  principal components of the centred points, up to sign);
- t-SNE: scikit-learn's, on the distances the Gram matrix gives, started from the PCA coordinates
  (deterministic for a given model).

numpy + scikit-learn (t-SNE only, imported when asked for); no torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import InvalidRequest
from ..store import Model, TensorReader
from ..store.dtypes import value_table
from ..store.layout import TYPE_GROUPS, infer_layout
from ..store.stats import uses_table

__all__ = ["FEATURES", "METHODS", "BY", "cluster_tensors", "cluster_matrix", "tensor_features", "reduce_gram",
           "points_csv"]

METHODS = ("pca", "tsne")
BY = ("rows", "cols", "heads")
FEATURES = ("mean_over_std", "log10_std", "log10_absmax_over_std", "log10_kurtosis", "log10_stable_rank",
            "s2_over_s1", "s3_over_s1", "s4_over_s1", "s5_over_s1", "s6_over_s1", "log10_rows", "log10_cols",
            "row_norm_cv", "col_norm_cv")
FEATURE_VERSION = 4  # part of the cache key: bump when a feature's definition changes
TOP_SV = 6  # singular values kept (the features use sigma_2..6 / sigma_1)
SKETCH_OVERSAMPLE = 10  # extra columns of the random sketch (Halko et al.: 5-10 is enough)
POWER_ITERS = 2  # power iterations of the sketch (big matrices only): flat spectra converge slowly
GRAM_MAX_SIDE = 2048  # exact singular values from a Gram matrix of at most 2048^2 (32 MB float64)...
GRAM_MAX_WORK = 1 << 33  # ...costing at most this many multiply-adds (a 4096 x 2048 matrix; an embedding sketches)
IN_MEMORY_ELEMS = 1 << 22  # a matrix up to this many elements is read once (16 MB float32), else streamed
BLOCK_ELEMS = 1 << 22  # elements per streamed block
CHUNK_ELEMS = 1 << 20  # elements per statistics chunk (the store's own)
MAX_POINTS = 1024  # points of one matrix (t-SNE of 1,024 points: seconds); more rows are sampled evenly
MAX_INDICES = MAX_POINTS
CONFIG_MAX_BYTES = 1 << 20

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


# -- features of one tensor ---------------------------------------------------------------------

def _moments(reader: TensorReader) -> dict | None:
    """count, mean, m2, m4 (central), abs_max, sum of squares; None when a value is NaN or Inf."""
    dt = reader.dtype
    if uses_table(dt):  # <= 16 bits: count every bit pattern once, then everything is exact
        nbins = 16 if dt.name == "F4" else 1 << dt.bits
        counts = np.zeros(nbins, dtype=np.int64)
        for pats in reader.iter_chunks(CHUNK_ELEMS):
            counts += np.bincount(pats, minlength=nbins)
        vals = value_table(dt)
        used = counts > 0
        if not np.isfinite(vals[used]).all():
            return None
        v, c = vals[used], counts[used].astype(np.float64)
        n = float(c.sum())
        mean = float(np.dot(c, v) / n)
        d = v - mean
        d2 = d * d
        return {"n": n, "mean": mean, "m2": float(np.dot(c, d2) / n), "m4": float(np.dot(c, d2 * d2) / n),
                "abs_max": float(np.abs(v).max()), "sumsq": float(np.dot(c, v * v))}
    # wider dtypes: exact float64 sums in two passes (the mean first, then central moments)
    n = 0
    total = 0.0
    abs_max = 0.0
    for pats in reader.iter_chunks(CHUNK_ELEMS):
        x = reader.decode(pats).astype(np.float64)
        if not np.isfinite(x).all():
            return None
        n += x.size
        total += float(x.sum())
        abs_max = max(abs_max, float(np.abs(x).max()))
    mean = total / n
    m2 = m4 = sumsq = 0.0
    for pats in reader.iter_chunks(CHUNK_ELEMS):
        x = reader.decode(pats).astype(np.float64)
        d2 = (x - mean) ** 2
        m2 += float(d2.sum())
        m4 += float((d2 * d2).sum())
        sumsq += float(np.dot(x, x))
    return {"n": float(n), "mean": mean, "m2": m2 / n, "m4": m4 / n, "abs_max": abs_max, "sumsq": sumsq}


def _row_blocks(reader: TensorReader, m: int, n: int) -> Callable[[], Iterable[np.ndarray]]:
    """A fresh pass over the (m, n) view as float32 row blocks, whole when small."""
    if m * n <= IN_MEMORY_ELEMS:
        whole = reader.decode(reader.chunk_patterns(0, m * n)).astype(np.float32).reshape(m, n)
        return lambda: iter((whole,))
    rows = max(1, BLOCK_ELEMS // n)

    def blocks():
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            yield reader.decode(reader.chunk_patterns(r0 * n, r1 * n)).astype(np.float32).reshape(r1 - r0, n)
    return blocks


def _cv(norms: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of row or column norms: 0 when all are alike."""
    mean = float(norms.mean())
    return float(norms.std()) / mean if mean > 0 else 0.0


def matrix_facts(reader: TensorReader, k: int = TOP_SV, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """The top k singular values of the tensor's (shape[0], rest) view, and the coefficients of
    variation of its row norms and of its column norms.

    A matrix whose smaller side is at most GRAM_MAX_SIDE, and whose Gram matrix costs at most
    GRAM_MAX_WORK multiply-adds (every layer matrix of a small model), gets its singular values from
    the Gram matrix of that side, accumulated block by block
    (float32 products, float64 sums: relative error about sqrt(rows) * eps32), so memory is that
    side squared. Bigger ones use a randomized range finder (Halko, Martinsson & Tropp 2011) with
    POWER_ITERS power iterations, streamed by row blocks: (rows + cols) x (k + SKETCH_OVERSAMPLE)
    of memory; its values are lower bounds of the true ones (Ritz values), close for the top one."""
    m = reader.shape[0]
    n = reader.numel // m
    small = min(m, n)
    if small <= GRAM_MAX_SIDE and m * n * small <= GRAM_MAX_WORK \
            and (m >= n or len(reader.shape) == 2 or m * n <= IN_MEMORY_ELEMS):
        return _gram_facts(reader, m, n, k)
    return _sketch_facts(reader, m, n, k, seed)


def _gram_facts(reader: TensorReader, m: int, n: int, k: int) -> tuple[np.ndarray, float, float]:
    row_sq = np.zeros(m)
    col_sq = np.zeros(n)
    if m >= n:  # tall: A^T A over row blocks
        gram = np.zeros((n, n))
        row = 0
        for b in _row_blocks(reader, m, n)():
            gram += (b.T @ b).astype(np.float64)
            sq = np.square(b, dtype=np.float64)
            row_sq[row:row + b.shape[0]] = sq.sum(axis=1)
            col_sq += sq.sum(axis=0)
            row += b.shape[0]
    else:  # wide: A A^T over column blocks
        gram = np.zeros((m, m))
        if m * n <= IN_MEMORY_ELEMS:
            whole = next(iter(_row_blocks(reader, m, n)()))
            parts = ((0, whole),)
        else:
            cols = max(1, BLOCK_ELEMS // m)
            parts = ((c0, reader.decode(reader.read_patterns((slice(0, m), slice(c0, min(n, c0 + cols)))))
                      .astype(np.float32)) for c0 in range(0, n, cols))
        for c0, b in parts:
            gram += (b @ b.T).astype(np.float64)
            sq = np.square(b, dtype=np.float64)
            row_sq += sq.sum(axis=1)
            col_sq[c0:c0 + b.shape[1]] = sq.sum(axis=0)
    from scipy.linalg import eigvalsh  # (scikit-learn's dependency) the top k only: 3-30x faster than all

    side = gram.shape[0]
    lam = eigvalsh(gram, subset_by_index=[max(0, side - k), side - 1])[::-1]
    return np.sqrt(np.clip(lam, 0.0, None)), _cv(np.sqrt(row_sq)), _cv(np.sqrt(col_sq))


def _sketch_facts(reader: TensorReader, m: int, n: int, k: int, seed: int) -> tuple[np.ndarray, float, float]:
    blocks = _row_blocks(reader, m, n)
    ell = min(k + SKETCH_OVERSAMPLE, m, n)
    omega = np.random.default_rng(seed).standard_normal((n, ell)).astype(np.float32)
    row_sq = np.empty(m)
    col_sq = np.zeros(n)

    def times(right: np.ndarray, norms: bool = False) -> np.ndarray:  # A @ right
        out, row = np.empty((m, right.shape[1]), np.float32), 0
        for b in blocks():
            out[row:row + b.shape[0]] = b @ right
            if norms:  # the first pass also gives the norms, in float64
                sq = np.square(b, dtype=np.float64)
                row_sq[row:row + b.shape[0]] = sq.sum(axis=1)
                col_sq[:] += sq.sum(axis=0)
            row += b.shape[0]
        return out

    def t_times(left: np.ndarray) -> np.ndarray:  # A^T @ left
        out, row = np.zeros((n, left.shape[1]), np.float32), 0
        for b in blocks():
            out += b.T @ left[row:row + b.shape[0]]
            row += b.shape[0]
        return out

    q, _ = np.linalg.qr(times(omega, norms=True))
    for _ in range(POWER_ITERS):
        z, _ = np.linalg.qr(t_times(q))
        q, _ = np.linalg.qr(times(z))
    b = t_times(q).T  # Q^T A, (ell, n)
    sv = np.linalg.svd(b.astype(np.float64), compute_uv=False)[:k]
    return sv, _cv(np.sqrt(row_sq)), _cv(np.sqrt(col_sq))


def top_singular_values(reader: TensorReader, k: int = TOP_SV, seed: int = 0) -> np.ndarray:
    return matrix_facts(reader, k, seed)[0]


class Skip(Exception):
    """This tensor cannot be a point; `reason` says why (listed with the result, not an error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tensor_features(reader: TensorReader) -> dict:
    """One tensor's features (FEATURES, in order) and the statistics they come from.

    Raises Skip for tensors that cannot be a point: integer/boolean/complex or undecodable dtypes,
    fewer than two elements, NaN or Inf values, all values equal."""
    dt = reader.dtype
    name = reader.ref.name
    if not dt.decodable or dt.kind != "float":
        raise Skip(f"{dt.name} values are not real numbers to compare")
    if reader.numel < 2:
        raise Skip("fewer than two elements")
    mo = _moments(reader)
    if mo is None:
        raise Skip("holds NaN or Inf values")
    std = math.sqrt(mo["m2"])
    if std == 0.0:
        raise Skip("all its values are equal")
    shape = reader.shape
    rows = shape[0] if len(shape) >= 2 else 1
    cols = reader.numel // rows
    if rows >= 2 and cols >= 2:
        sv, row_cv, col_cv = matrix_facts(reader)
    else:  # a vector: a 1 x n (or n x 1) matrix, whose only singular value is its norm
        sv = np.array([math.sqrt(mo["sumsq"])])
        x = np.abs(reader.decode(reader.chunk_patterns(0, reader.numel)).astype(np.float64))
        row_cv, col_cv = (0.0, _cv(x)) if rows == 1 else (_cv(x), 0.0)
    s1 = float(sv[0]) if sv.size else 0.0
    ratios = [(float(sv[i]) / s1 if s1 > 0 and i < sv.size else 0.0) for i in range(1, TOP_SV)]
    stable_rank = mo["sumsq"] / (s1 * s1) if s1 > 0 else 1.0
    kurtosis = mo["m4"] / (mo["m2"] ** 2)
    values = [mo["mean"] / std, math.log10(std), math.log10(mo["abs_max"] / std), math.log10(kurtosis),
              math.log10(max(stable_rank, 1.0)), *ratios, math.log10(rows), math.log10(cols),
              row_cv, col_cv]
    return {"tensor": name, "features": values, "mean": mo["mean"], "std": std, "abs_max": mo["abs_max"],
            "kurtosis": kurtosis, "stable_rank": stable_rank, "singular_values": [float(s) for s in sv]}


# -- reduction --------------------------------------------------------------------------------

def _check_method(method: str, dims: int) -> None:
    if method not in METHODS:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, got {method!r}", field="method")
    if dims not in (2, 3):
        raise InvalidRequest(f"dims must be 2 or 3, got {dims!r}", field="dims")


def reduce_gram(gram: np.ndarray, method: str = "pca", dims: int = 2, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Coordinates (points x dims) from the points' Gram matrix X X^T, and facts about the reduction
    (PCA: the variance each axis explains)."""
    _check_method(method, dims)
    p = gram.shape[0]
    g = np.asarray(gram, dtype=np.float64)
    g = (g + g.T) / 2
    centred = g - g.mean(axis=0, keepdims=True) - g.mean(axis=1, keepdims=True) + g.mean()
    lam, vec = np.linalg.eigh(centred)
    order = np.argsort(lam)[::-1]
    lam, vec = np.clip(lam[order], 0.0, None), vec[:, order]
    k = min(dims, p)
    coords = np.zeros((p, dims))
    coords[:, :k] = vec[:, :k] * np.sqrt(lam[:k])
    total = float(lam.sum())
    info = {"explained_variance_ratio": [float(v / total) if total > 0 else 0.0 for v in lam[:dims]]
            + [0.0] * (dims - k)}
    if method == "pca" or p < 3:
        if method == "tsne":
            info["note"] = "t-SNE needs at least 3 points: PCA coordinates shown"
        return coords, info
    from sklearn.manifold import TSNE

    diag = np.diag(g)
    dist = np.sqrt(np.clip(diag[:, None] + diag[None, :] - 2 * g, 0.0, None))
    np.fill_diagonal(dist, 0.0)
    perplexity = float(max(1.0, min(30.0, (p - 1) / 3)))
    # scikit-learn's own "pca" init is not allowed with precomputed distances: give it ours, scaled
    # the way it scales its own (std of the first axis 1e-4), so the run is deterministic
    init = coords[:, :dims].copy()
    spread = float(init[:, 0].std()) or 1.0
    init = init / spread * 1e-4 if spread else np.random.default_rng(seed).standard_normal((p, dims)) * 1e-4
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=dims, perplexity=perplexity, metric="precomputed", init=init, random_state=seed)
    with threadpool_limits(1):  # a few hundred points: OpenMP threads only fight the server's (and spin)
        out = tsne.fit_transform(dist)
    info["perplexity"] = perplexity
    info["kl_divergence"] = float(tsne.kl_divergence_)
    return np.asarray(out, dtype=np.float64), info


def _round(coords: np.ndarray) -> list[list[float]]:
    return [[float(f"{v:.6g}") for v in row] for row in coords]


# -- tensors as points ------------------------------------------------------------------------

def _regex(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidRequest(f"match {pattern!r} is not a valid regular expression: {e}", field="match") from None


def _one_blas_thread(fn):
    """Run fn with BLAS on one thread. These are many small products (a 576-wide Gram matrix per
    tensor): OpenBLAS's threads spin-wait on each other between them, and on a busy 2-core machine
    the map of SmolLM2 took 189 s with 2 threads against 11 s with 1 (measured in the same minute)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


@_one_blas_thread
def cluster_tensors(model: Model, *, method: str = "pca", dims: int = 2, match: str | None = None,
                    groups: Sequence[str] | None = None, reader: Callable[[str], TensorReader] | None = None,
                    features: Callable[[TensorReader], dict] | None = None,
                    progress: Progress | None = None) -> dict:
    """Every floating tensor of `model` (those matching `match` and `groups`) as one point.

    `reader(name)` gives the tensor's reader (the web app passes the workspace's, with the view);
    `features(reader)` computes or fetches the cached features (default: `tensor_features`)."""
    _check_method(method, dims)
    rx = _regex(match)
    groups = list(groups or [])
    bad = [g for g in groups if g not in TYPE_GROUPS]
    if bad:
        raise InvalidRequest(f"unknown type group(s) {', '.join(map(repr, bad))}; known: {', '.join(TYPE_GROUPS)}",
                             field="groups")
    reader = reader or (lambda name: TensorReader(model.tensor(name)))
    features = features or tensor_features
    names = list(model.tensors)
    layout = infer_layout(names, [model.tensors[n].shape for n in names])
    chosen = [n for n in names if (rx is None or rx.search(n)) and (not groups or layout[n].type_group in groups)]
    if not chosen:
        raise InvalidRequest("no tensor matches" + (f" {match!r}" if match else "")
                             + (f" in group(s) {', '.join(groups)}" if groups else ""), field="match")
    total = sum(model.tensors[n].nbytes for n in chosen)
    done = 0
    rows, points, skipped = [], [], []
    for name in chosen:
        try:
            f = features(reader(name))
        except Skip as s:
            skipped.append({"name": name, "reason": s.reason})
        else:
            rows.append(f["features"])
            meta = layout[name]
            points.append({"id": name, "label": name, "layer_index": meta.layer_index, "type_group": meta.type_group,
                           "block": meta.block, "shape": list(model.tensors[name].shape),
                           "dtype": model.tensors[name].dtype.name,
                           "stats": {k: f[k] for k in ("mean", "std", "abs_max", "kurtosis", "stable_rank")}})
        done += model.tensors[name].nbytes
        if progress:
            progress(done, total)
    if len(points) < 2:
        raise InvalidRequest(f"{len(points)} tensor(s) can be compared here; clustering needs at least 2"
                             + (f" ({len(skipped)} skipped: {skipped[0]['name']}: {skipped[0]['reason']})"
                                if skipped else ""), field="match")
    x = np.asarray(rows, dtype=np.float64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    coords, info = reduce_gram(z @ z.T, method, dims)
    for point, c, raw in zip(points, _round(coords), x):
        point["coords"] = c
        point["features"] = [float(f"{v:.6g}") for v in raw]
    return {"mode": "tensors", "model": model.name, "tensor": None, "by": None, "method": method, "dims": dims,
            "features": list(FEATURES), "color_by": ["type_group", "layer_index"], **info,
            "count": len(points), "points": points, "skipped": skipped}


# -- parts of one matrix as points --------------------------------------------------------------

def head_split(config: dict | None, type_group: str, shape: tuple[int, int], head_dim: int | None = None,
               name: str = "") -> tuple[str, int, int]:
    """(axis, number of heads, head_dim) of a 2-D attention tensor: heads are rows of q/k/v_proj and
    columns of o_proj (its inputs are the heads' outputs). head_dim comes from the argument, else
    config.json's head_dim, else hidden_size / num_attention_heads."""
    cfg = config or {}
    if head_dim is None:
        hd = cfg.get("head_dim")
        if not (isinstance(hd, int) and hd > 0):
            h, nh = cfg.get("hidden_size"), cfg.get("num_attention_heads")
            hd = h // nh if isinstance(h, int) and isinstance(nh, int) and nh > 0 and h % nh == 0 else None
        head_dim = hd
    if head_dim is None:
        raise InvalidRequest(f"no head_dim for {name!r}: config.json beside the model names neither head_dim nor "
                             "hidden_size and num_attention_heads; give head_dim", field="head_dim", tensor=name)
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        raise InvalidRequest(f"head_dim must be a positive integer, got {head_dim!r}", field="head_dim")
    axis = "cols" if type_group == "attention_out" else "rows"
    size = shape[1] if axis == "cols" else shape[0]
    if size % head_dim:
        raise InvalidRequest(f"{name!r} has {size} {axis}, not a multiple of head_dim {head_dim}: it cannot be split "
                             "into heads", field="head_dim", tensor=name)
    return axis, size // head_dim, head_dim


def _selection(count: int, indices: Sequence[int] | None, what: str, name: str) -> tuple[slice | list[int], str | None]:
    """Which rows (or columns) are points: the given indices, or all, or an even sample of MAX_POINTS."""
    if indices is not None:
        idx = list(indices)
        if not idx:
            raise InvalidRequest(f"no {what} chosen", field="indices")
        if len(idx) > MAX_INDICES:
            raise InvalidRequest(f"{len(idx)} {what} chosen; at most {MAX_INDICES}", field="indices")
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
                raise InvalidRequest(f"{what[:-1]} {i!r} is outside the {count:,} {what} of {name!r}",
                                     field="indices", tensor=name)
        return idx, None
    if count <= MAX_POINTS:
        return slice(0, count), None
    step = -(-count // MAX_POINTS)
    return slice(0, count, step), f"{len(range(0, count, step)):,} of {count:,} {what} shown (every {step}th)"


def _gram_rows(reader: TensorReader, sel: slice | list[int], m: int, n: int, progress: Progress | None) -> np.ndarray:
    """Gram matrix of the chosen rows, accumulated over column blocks."""
    p = len(range(m)[sel]) if isinstance(sel, slice) else len(sel)
    gram = np.zeros((p, p))
    cols = max(1, BLOCK_ELEMS // max(p, 1))
    for c0 in range(0, n, cols):
        c1 = min(n, c0 + cols)
        if isinstance(sel, slice):
            b = reader.decode(reader.read_patterns((sel, slice(c0, c1))))
        else:
            b = np.stack([reader.decode(reader.read_patterns((i, slice(c0, c1)))) for i in sel])
        b = b.astype(np.float64)
        gram += b @ b.T
        if progress:
            progress(c1, n)
    return gram


def _gram_cols(reader: TensorReader, sel: slice | list[int], m: int, n: int, progress: Progress | None) -> np.ndarray:
    """Gram matrix of the chosen columns, accumulated over row blocks."""
    p = len(range(n)[sel]) if isinstance(sel, slice) else len(sel)
    gram = np.zeros((p, p))
    rows = max(1, BLOCK_ELEMS // n)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        b = reader.decode(reader.read_patterns((slice(r0, r1), slice(0, n)))).astype(np.float64)[:, sel]
        gram += b.T @ b
        if progress:
            progress(r1, m)
    return gram


def _gram_heads(reader: TensorReader, axis: str, heads: int, hd: int, m: int, n: int,
                progress: Progress | None) -> np.ndarray:
    """Gram matrix of the heads: head h is rows (or columns) h*hd .. (h+1)*hd - 1, flattened."""
    gram = np.zeros((heads, heads))
    if axis == "rows":
        cols = max(1, BLOCK_ELEMS // m)
        for c0 in range(0, n, cols):
            c1 = min(n, c0 + cols)
            b = reader.decode(reader.read_patterns((slice(0, m), slice(c0, c1)))).astype(np.float64)
            r = b.reshape(heads, -1)
            gram += r @ r.T
            if progress:
                progress(c1, n)
    else:
        rows = max(1, BLOCK_ELEMS // n)
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            b = reader.decode(reader.read_patterns((slice(r0, r1), slice(0, n)))).astype(np.float64)
            r = b.reshape(r1 - r0, heads, hd).transpose(1, 0, 2).reshape(heads, -1)
            gram += r @ r.T
            if progress:
                progress(r1, m)
    return gram


@_one_blas_thread
def cluster_matrix(model: Model, name: str, by: str = "rows", *, method: str = "pca", dims: int = 2,
                   indices: Sequence[int] | None = None, labels: Sequence[str] | None = None,
                   config: dict | None = None, head_dim: int | None = None,
                   reader: TensorReader | None = None, progress: Progress | None = None) -> dict:
    """The rows, columns or attention heads of the 2-D tensor `name` as points.

    `indices` chooses rows/columns (e.g. the token ids of chosen tokens; `labels` names them);
    without it every one is a point, or an even sample of MAX_POINTS of them."""
    _check_method(method, dims)
    if by not in BY:
        raise InvalidRequest(f"by must be one of {', '.join(BY)}, got {by!r}", field="by")
    ref = model.tensor(name)
    reader = reader or TensorReader(ref)
    shape = tuple(ref.shape)
    if len(shape) != 2:
        raise InvalidRequest(f"{name!r} has shape {list(shape)}: splitting into rows, columns or heads needs a 2-D "
                             "matrix", tensor=name, field="tensor")
    dt = reader.dtype
    if not dt.decodable or dt.kind != "float":
        raise InvalidRequest(f"{name!r} is {dt.name}: clustering needs real floating-point values", tensor=name,
                             field="tensor")
    m, n = shape
    meta = infer_layout([name], [shape])[name]
    note = None
    groups: list[int | None]
    if by == "heads":
        if indices is not None:
            raise InvalidRequest("indices choose rows or columns; with by=heads every head is a point",
                                 field="indices")
        axis, heads, hd = head_split(config, meta.type_group, shape, head_dim, name)
        if heads < 2:
            raise InvalidRequest(f"{name!r} holds {heads} head of {hd}: nothing to compare", field="head_dim",
                                 tensor=name)
        gram = _gram_heads(reader, axis, heads, hd, m, n, progress)
        ids = list(range(heads))
        texts = [f"head {h}" for h in ids]
        nh = (config or {}).get("num_attention_heads")
        nkv = (config or {}).get("num_key_value_heads")
        if meta.type_group != "attention_out" and isinstance(nh, int) and isinstance(nkv, int) and 0 < nkv < nh \
                and heads == nh and nh % nkv == 0:
            groups = [h // (nh // nkv) for h in ids]  # query heads sharing one key/value head
        else:
            groups = [None] * heads
        extra = {"axis": axis, "head_dim": hd, "heads": heads}
    else:
        count = m if by == "rows" else n
        sel, note = _selection(count, indices, by, name)
        ids = list(range(count)[sel]) if isinstance(sel, slice) else list(sel)
        gram = (_gram_rows if by == "rows" else _gram_cols)(reader, sel, m, n, progress)
        if labels is not None and len(labels) != len(ids):
            raise InvalidRequest("labels must name each chosen index", field="labels")
        texts = list(labels) if labels is not None else [f"{by[:-1]} {i}" for i in ids]
        groups = [None] * len(ids)
        extra = {}
    if not np.isfinite(gram).all():
        raise InvalidRequest(f"{name!r} holds NaN or Inf values in the chosen {by}: their distances are undefined",
                             tensor=name)
    if len(ids) < 2:
        raise InvalidRequest(f"one {by[:-1]} only: clustering needs at least 2 points", field="indices")
    coords, info = reduce_gram(gram, method, dims)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    points = [{"id": f"{name}#{by}{i}", "label": t, "index": i, "group": g, "norm": float(f"{nv:.6g}"),
               "coords": c} for i, t, g, nv, c in zip(ids, texts, groups, norms, _round(coords))]
    out = {"mode": by, "model": model.name, "tensor": name, "by": by, "method": method, "dims": dims,
           "shape": list(shape), "type_group": meta.type_group, "color_by": ["group", "index", "norm"], **info,
           **extra, "count": len(points), "points": points, "skipped": []}
    if note:
        out["note"] = note
    return out


def model_config(model: Model) -> dict | None:
    """config.json beside the model (for head_dim and head counts), or None: absent, unreadable,
    over CONFIG_MAX_BYTES (a real one is a few KB) or not a JSON object."""
    path = os.path.join(model.folder, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read(CONFIG_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= CONFIG_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- output -----------------------------------------------------------------------------------

def points_csv(result: dict) -> str:
    """The points as CSV: id, label, x, y[, z], then what colours them."""
    import csv
    import io

    axes = ["x", "y", "z"][: result["dims"]]
    extra = ["layer_index", "type_group"] if result["mode"] == "tensors" else ["index", "group", "norm"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", *axes, *extra])
    for p in result["points"]:
        w.writerow([p["id"], p["label"], *p["coords"], *("" if p.get(k) is None else p[k] for k in extra)])
    return buf.getvalue()
