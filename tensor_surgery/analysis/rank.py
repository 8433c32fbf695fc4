"""Numerical rank of a weight matrix under the analysis notes' tolerance, `s > 1e-6 * s.max()`,
reading the matrix in blocks (a tensor of more than two dimensions is viewed as
`(shape[0], prod(shape[1:]))`, as the notes do).

- exact: the singular values squared are the eigenvalues of the Gram matrix of the smaller side
  (`A^T A` for a tall matrix, `A A^T` for a wide one), accumulated in float64 block by block, so
  memory is `min(m, n)**2` float64 plus one block, never the whole matrix. The Gram matrix squares
  the condition number, so the result is *certified*: when an eigenvalue lies within the rounding
  bound `E = (m + n) * eps * ||A||_F**2` of the squared tolerance (rank-deficient matrices: their
  zero singular values land there), the rank is taken from a full float64 SVD of the matrix
  instead (`np.linalg.svd`, the oracle's own method), which then holds the whole matrix.
- randomized: Halko, Martinsson & Tropp (2011) range finder with `k + 10` columns and two power
  iterations, streamed by row blocks. It gives the top `k` singular values and a bound on the
  rest: with probability at least 1 - 10**-10, every singular value of A lies within
  `rank_error_bound` above the one computed (their eq. 4.3: `10 * sqrt(2/pi)` times the largest
  residual of 10 Gaussian probes). The rank is exact (`rank_certain`) when nothing lies within
  that bound of the tolerance and the bound is below it; when singular values beyond those
  computed may pass the tolerance, it is a lower bound (`rank_is_lower_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

RANK_RTOL = 1e-6  # the notes' tolerance: s > 1e-6 * s.max()
BLOCK_ELEMS = 1 << 22  # 32 MB of float64 per block
EPS64 = float(np.finfo(np.float64).eps)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, cols) of the notes' 2-D view of a tensor; None for scalars and vectors."""
    if len(shape) < 2:
        return None
    return shape[0], math.prod(shape[1:])


class GramAccumulator:
    """A^T A of a tall matrix fed as whole row blocks (values of any dtype)."""

    def __init__(self, cols: int) -> None:
        self.gram = np.zeros((cols, cols), dtype=np.float64)
        self.cols = cols

    def add_rows(self, block: np.ndarray) -> None:
        b = np.asarray(block, dtype=np.float64).reshape(-1, self.cols)
        self.gram += b.T @ b


def rank_from_gram(gram: np.ndarray, m: int, n: int, full_matrix: Callable[[], np.ndarray]) -> dict:
    """Rank and spectrum facts from a Gram matrix; falls back to a full SVD when uncertain."""
    lam = np.linalg.eigvalsh(gram)[::-1]
    fro2 = float(np.trace(gram))
    if not math.isfinite(fro2):
        return _nonfinite()
    lam = np.clip(lam, 0.0, None)
    smax2 = float(lam[0]) if lam.size else 0.0
    if smax2 == 0.0:
        return _result(0, 0.0, fro2, "exact", certain=True)
    tol2 = (RANK_RTOL ** 2) * smax2
    err = (m + n) * EPS64 * fro2
    ambiguous = np.any(np.abs(lam - tol2) <= err)
    if not ambiguous:
        return _result(int(np.count_nonzero(lam > tol2)), math.sqrt(smax2), fro2, "exact", certain=True)
    s = np.linalg.svd(full_matrix(), compute_uv=False)
    smax = float(s[0]) if s.size else 0.0
    rank = int(np.count_nonzero(s > RANK_RTOL * smax)) if smax > 0 else 0
    return _result(rank, smax, float(np.dot(s, s)), "exact_svd", certain=True)


def _result(rank: int, smax: float, fro2: float, method: str, *, certain: bool, bound: float | None = None,
            lower_bound: bool = False) -> dict:
    return {
        "rank": rank,
        "rank_method": method,
        "rank_certain": certain,
        "rank_is_lower_bound": lower_bound,
        "rank_error_bound": bound,
        "spectral_norm": smax,
        "stable_rank": fro2 / (smax * smax) if smax > 0 else None,
    }


def _nonfinite() -> dict:
    return {"rank": None, "rank_method": "skipped: NaN or Inf values", "rank_certain": False,
            "rank_is_lower_bound": False, "rank_error_bound": None, "spectral_norm": None, "stable_rank": None}


RowBlocks = Callable[[], Iterator[np.ndarray]]  # a fresh pass: float64 row blocks (b, n), in order

PROBES = 10
POWER_ITERS = 2
OVERSAMPLE = 10


def randomized_rank(row_blocks: RowBlocks, m: int, n: int, k: int, seed: int) -> dict:
    """Top-k singular values by a streamed randomized range finder, with a probabilistic bound."""
    rng = np.random.default_rng(seed)
    ell = min(k + OVERSAMPLE, m, n)
    omega = rng.standard_normal((n, ell))
    y = _times(row_blocks, omega, m)
    if not np.isfinite(y).all():
        return _nonfinite()
    q, _ = np.linalg.qr(y)
    for _ in range(POWER_ITERS):
        z, _ = np.linalg.qr(_transpose_times(row_blocks, q, n))
        q, _ = np.linalg.qr(_times(row_blocks, z, m))
    # one last pass: B = Q^T A, and A @ probes for the residual bound
    probes = rng.standard_normal((n, PROBES))
    b = np.zeros((q.shape[1], n))
    a_probes = np.zeros((m, PROBES))
    fro2 = 0.0
    row = 0
    for blk in row_blocks():
        r = blk.shape[0]
        b += q[row : row + r].T @ blk
        a_probes[row : row + r] = blk @ probes
        fro2 += float(np.einsum("ij,ij->", blk, blk))
        row += r
    s = np.linalg.svd(b, compute_uv=False)
    residual = a_probes - q @ (b @ probes)
    bound = 10.0 * math.sqrt(2.0 / math.pi) * float(np.max(np.linalg.norm(residual, axis=0)))
    smax = float(s[0]) if s.size else 0.0
    tol_lo = RANK_RTOL * smax  # the tolerance if sigma_max is what we computed
    tol_hi = RANK_RTOL * (smax + bound)  # ...or as large as the bound allows
    rank = int(np.count_nonzero(s > tol_lo))
    # each true singular value lies in [s_j, s_j + bound]; those not computed, in [0, bound]
    straddling = bool(np.any((s + bound > tol_lo) & (s <= tol_hi)))
    unseen = s.size < min(m, n) and bound > tol_lo
    certain = not straddling and not unseen
    return _result(rank, smax, fro2, "randomized", certain=certain, bound=bound, lower_bound=unseen)


def _times(row_blocks: RowBlocks, right: np.ndarray, m: int) -> np.ndarray:
    out = np.empty((m, right.shape[1]))
    row = 0
    for blk in row_blocks():
        out[row : row + blk.shape[0]] = blk @ right
        row += blk.shape[0]
    return out


def _transpose_times(row_blocks: RowBlocks, q: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, q.shape[1]))
    row = 0
    for blk in row_blocks():
        out += blk.T @ q[row : row + blk.shape[0]]
        row += blk.shape[0]
    return out
