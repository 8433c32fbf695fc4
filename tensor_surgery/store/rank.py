"""Numerical rank of a 2-D tensor from its singular values: exact (full SVD) or randomized
(top-k singular values with power iterations, enough to bound the rank)."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest
from .reader import TensorReader

RANK_EXACT_MAX_ELEMENTS = 1 << 25  # 32M: a 49152 x 576 embedding is exact; a 2 GB one is not


def tensor_rank(
    reader: TensorReader,
    *,
    method: str = "auto",
    k: int = 256,
    rtol: float | None = None,
    seed: int = 0,
    oversample: int = 10,
    power_iters: int = 4,
) -> dict:
    """Numerical rank of a 2-D tensor from its singular values.

    `exact` runs a full SVD (float64 for small matrices, float32 otherwise); `randomized`
    estimates the top `k` singular values (Halko et al., with power iterations), enough to bound
    the rank by `k`. The tolerance is numpy's: sigma_max * max(M, N) * eps(float32) unless
    `rtol` is given (then sigma_max * rtol).
    """
    name = reader.ref.name
    if len(reader.shape) != 2:
        raise InvalidRequest(
            f"rank needs a 2-D tensor; {name!r} has shape {list(reader.shape)}", tensor=name
        )
    if not reader.dtype.decodable:
        raise reader.dtype.undecodable()
    m, n = reader.shape
    if m == 0 or n == 0:
        return {"tensor_name": name, "rank": 0, "singular_values": [], "method": "exact"}
    if method == "auto":
        method = "exact" if m * n <= RANK_EXACT_MAX_ELEMENTS else "randomized"
    if method not in ("exact", "randomized"):
        raise InvalidRequest("method must be auto, exact or randomized", field="method")
    x = reader.decode(reader.read_patterns((slice(0, m), slice(0, n))))
    x = np.abs(x) if x.dtype.kind == "c" else x
    x = x.astype(np.float64 if m * n <= 1 << 22 else np.float32)
    if not np.isfinite(x).all():
        raise InvalidRequest(f"{name!r} holds NaN or Inf values: its rank is undefined", tensor=name)
    kk = min(k, m, n)
    if method == "exact":
        s = np.linalg.svd(x, compute_uv=False)
    else:
        s = _randomized_singular_values(x, kk, oversample, power_iters, seed)
    s = s.astype(np.float64)
    smax = float(s[0]) if s.size else 0.0
    tol = smax * (rtol if rtol is not None else max(m, n) * float(np.finfo(np.float32).eps))
    rank = int(np.count_nonzero(s > tol))
    p = s / s.sum() if s.sum() > 0 else s
    p = p[p > 0]
    fro2 = float(np.sum(x.astype(np.float64) ** 2))
    return {
        "tensor_name": name,
        "shape": [m, n],
        "method": method,
        "rank": rank,
        "rank_is_lower_bound": method == "randomized" and rank == s.size and s.size < min(m, n),
        "max_rank": min(m, n),
        "tolerance": tol,
        "singular_values": s[:512].tolist(),
        "singular_values_computed": int(s.size),
        "stable_rank": fro2 / (smax * smax) if smax else 0.0,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))) if p.size else 0.0,
    }


def _randomized_singular_values(x: np.ndarray, k: int, oversample: int, power_iters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, n = x.shape
    ell = min(k + oversample, m, n)
    q = x @ rng.standard_normal((n, ell)).astype(x.dtype)
    q, _ = np.linalg.qr(q)
    for _ in range(power_iters):
        z, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ z)
    b = q.T @ x
    return np.linalg.svd(b, compute_uv=False)[:k]

