"""Statistics of a tensor (or slice) in one streaming pass over fixed-size chunks.

Two exact strategies, chosen by width:

- dtypes of at most 16 bits (BF16, F16, every F8, F4, 8/16-bit ints, BOOL): count every bit
  pattern (`np.bincount` over chunks). Every moment, extreme, percentile and histogram then
  follows exactly from at most 65,536 counts, so one pass answers everything and the counts are
  kept to serve histograms of any range later without touching the data again.
- 32/64-bit dtypes: per chunk, exact min/max, a Chan/Welford merge of mean and M2 in float64, the
  sparsity count, and a 65,536-bin histogram of the top 16 bits of an order-preserving key. A
  percentile's coarse bin is found from those counts; a second pass collects only the values of
  those few bins to give exact order statistics (numpy's 'linear' interpolation).

Integer dtypes are summed exactly: min, max, abs_max, `sum` (and percentiles that land on an
element) are Python ints, so a U64 maximum stays 2**64 - 1 instead of rounding through float64
to 2**64; mean, var, std and l2_norm are the exact sums divided, rounded once to float64.

Complex tensors are described by the magnitude of their elements (`of: "magnitude"`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidRequest
from .dtypes import DType, value_table
from .reader import TensorReader

CHUNK_ELEMS = 1 << 20  # 2 MB of BF16: bincount's sweet spot (see bench/read.py)
DEFAULT_PERCENTILES = (0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)
SPARSITY_THRESHOLD = 1e-8

Progress = Callable[[int, int], None]  # (elements done, elements total)


def uses_table(dtype: DType) -> bool:
    return dtype.decodable and dtype.bits <= 16 and dtype.kind != "complex"


# -- pattern counting (<= 16-bit dtypes) ------------------------------------------------------


def count_patterns(chunks: Iterable[np.ndarray], nbins: int, total: int, progress: Progress | None) -> np.ndarray:
    counts = None
    done = 0
    for pats in chunks:
        found = np.bincount(pats, minlength=nbins)
        if counts is None:
            counts = found  # most tensors are one chunk: no zeroed array and no addition
        else:
            counts += found
        done += pats.size
        if progress:
            progress(done, total)
    return np.zeros(nbins, dtype=np.int64) if counts is None else counts


@dataclass(frozen=True)
class _PatternTable:
    """What every bit pattern of a <= 16-bit dtype is, worked out once per dtype."""

    values: np.ndarray  # float64 value of each pattern
    kind: np.ndarray  # uint8: 0 finite, 1 NaN, 2 +inf, 3 -inf
    rank: np.ndarray  # uint16: the pattern's place in value order (equal values: any order)
    is_int: bool


_PATTERN_TABLES: dict[str, _PatternTable] = {}


def _pattern_table(dtype: DType) -> _PatternTable:
    t = _PATTERN_TABLES.get(dtype.name)
    if t is None:
        values = value_table(dtype)
        kind = np.zeros(values.size, dtype=np.uint8)
        kind[np.isnan(values)] = 1
        kind[values == np.inf] = 2
        kind[values == -np.inf] = 3
        rank = np.empty(values.size, dtype=np.uint16)
        rank[np.argsort(values, kind="stable")] = np.arange(values.size, dtype=np.uint16)
        t = _PATTERN_TABLES[dtype.name] = _PatternTable(values, kind, rank, dtype.kind in ("int", "uint"))
    return t


@dataclass
class PatternCounts:
    """Exact distribution of a <= 16-bit tensor: how many elements hold each bit pattern."""

    dtype: DType
    counts: np.ndarray

    def describe(self, threshold: float, percentiles: Iterable[float]) -> dict:
        # Only the patterns present (a few thousand of 65,536 in real weights), in value order,
        # with per-dtype tables worked out once: a few dozen small numpy calls per tensor, which
        # matters for a model of hundreds of tensors (their fixed cost was a quarter of the time
        # of a whole model's statistics).
        table = _pattern_table(self.dtype)
        present = np.flatnonzero(self.counts > 0)  # on a bool mask: 8x faster than on the counts
        c = self.counts[present]
        kind = table.kind[present]
        by_kind = np.bincount(kind, weights=c, minlength=4)  # float64: exact below 2**53 elements
        numel = int(c.sum())
        out = _base(self.dtype, numel, threshold)
        out["nan_count"] = int(by_kind[1])
        out["posinf_count"] = int(by_kind[2])
        out["neginf_count"] = int(by_kind[3])
        out["inf_count"] = out["posinf_count"] + out["neginf_count"]
        fin = kind == 0
        if not fin.all():
            present, c = present[fin], c[fin]
        n = int(c.sum())
        out["finite_count"] = n
        if n:
            order = np.argsort(table.rank[present], kind="stable")  # a radix sort of 16-bit keys
            cs = c[order]
            vs = table.values[present[order]]
            out["sparse_count"] = int(cs[np.abs(vs) <= threshold].sum())
            # values, not patterns: -0.0 and +0.0 are one value
            out["distinct_values"] = 1 + int(np.count_nonzero(vs[1:] != vs[:-1]))
            cum = np.cumsum(cs)
            if table.is_int:
                vi = vs.astype(np.int64)  # at most 16-bit values: exact
                _fill_int_moments(out, n, _dot_exact(cs, vi), _dot_exact(cs, vi * vi),
                                  int(vi[0]), int(vi[-1]))
                out["percentiles"] = _percentiles_from_sorted(vi, cum, percentiles)
            else:
                total = float(np.dot(cs, vs))
                mean = total / n
                m2 = float(np.dot(cs, (vs - mean) ** 2))
                _fill_moments(out, n, mean, m2, float(vs[0]), float(vs[-1]), float(np.dot(cs, vs * vs)))
                out["sum"] = total
                out["percentiles"] = _percentiles_from_sorted(vs, cum, percentiles)
        else:
            out["sparse_count"] = 0
            out["distinct_values"] = 0
        _finish(out)
        return out

    def histogram(self, bins: int, lo: float | None, hi: float | None, log: bool = False) -> dict:
        values = value_table(self.dtype)[: len(self.counts)]
        sel = (self.counts > 0) & np.isfinite(values)
        return _histogram_from_weighted(values[sel], self.counts[sel], bins, lo, hi, log)


# -- streaming moments (32/64-bit dtypes) --------------------------------------------------


def _order_key16(x: np.ndarray) -> np.ndarray:
    """Top 16 bits of a key that orders like the values (floats: sign-magnitude flipped)."""
    kind, width = x.dtype.kind, x.dtype.itemsize * 8
    bits = x.view(f"<u{x.dtype.itemsize}")
    shift = width - 16
    if kind == "f":
        sign = bits >> (width - 1)
        flipped = np.where(sign.astype(bool), ~bits, bits | (np.array(1, bits.dtype) << (width - 1)))
        return (flipped >> shift).astype(np.uint16)
    if kind == "i":
        return ((bits >> shift).astype(np.uint16) ^ np.uint16(0x8000))
    return (bits >> shift).astype(np.uint16)


@dataclass
class _Moments:
    threshold: float
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    sumsq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    numel: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    sparse: int = 0
    keys: np.ndarray = field(default_factory=lambda: np.zeros(1 << 16, dtype=np.int64))
    integer: bool = False  # integer values: the exact sums below, not the float moments
    isum: int = 0
    isumsq: int = 0

    def add(self, x: np.ndarray) -> None:
        self.numel += x.size
        if x.dtype.kind in "iu":
            self._add_int(x)
            return
        if x.dtype.kind == "f":
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled just below
                s = float(np.add.reduce(x, dtype=np.float64))
            if not math.isfinite(s):
                fin = np.isfinite(x)
                nfin = x.size - int(np.count_nonzero(fin))
                if nfin:
                    nan = int(np.count_nonzero(np.isnan(x)))
                    self.nan += nan
                    pos = int(np.count_nonzero(x == np.inf))
                    self.posinf += pos
                    self.neginf += nfin - nan - pos
                    x = x[fin]
        if not x.size:
            return
        t = self.threshold
        self.sparse += int(np.count_nonzero((x >= -t) & (x <= t)))
        self.keys += np.bincount(_order_key16(x), minlength=1 << 16)
        x64 = x.astype(np.float64)
        lo, hi = float(x64.min()), float(x64.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        n_b = x64.size
        mean_b = float(x64.sum() / n_b)
        d = x64 - mean_b
        m2_b = float(np.dot(d, d))
        self.sumsq += float(np.dot(x64, x64))
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    def _add_int(self, x: np.ndarray) -> None:
        """Exact: min, max and the sums as Python ints (float64 would round past 2**53)."""
        self.integer = True
        if not x.size:
            return
        lo_t, hi_t = _int_window(x.dtype, self.threshold)
        if lo_t <= hi_t:
            self.sparse += int(np.count_nonzero((x >= lo_t) & (x <= hi_t)))
        self.keys += np.bincount(_order_key16(x), minlength=1 << 16)
        lo, hi = int(x.min()), int(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        s, ss = _int_sums(x, max(abs(lo), abs(hi)))
        self.isum += s
        self.isumsq += ss
        self.n += x.size


def _int_window(dtype: np.dtype, threshold: float) -> tuple[int, int]:
    """The integers x with |x| <= threshold, as [lo, hi] clipped to the dtype (lo > hi: none)."""
    info = np.iinfo(dtype)
    if not threshold >= 0:  # negative or NaN: nothing is that small
        return 1, 0
    hi = info.max if threshold >= info.max else math.floor(threshold)
    lo = max(-hi, int(info.min))
    return lo, min(hi, int(info.max))


_BLOCK = 1 << 20  # elements per exact partial sum: 2**20 products of < 2**32 stay below 2**52


def _int_sums(x: np.ndarray, absmax: int) -> tuple[int, int]:
    """sum(x) and sum(x*x) of an integer array, exactly, with vectorised int64/uint64 partial sums.

    When every |x| is small enough (the usual case: ids, counts, small codes) one int64 pass per
    sum cannot overflow. Otherwise |x| is split into 16-bit limbs a_k: x*x is the sum over limb
    pairs of a_j*a_k*2**(16(j+k)), and each limb product is below 2**32, so the partial sums of a
    block of 2**20 elements fit 64 bits. The sum splits x into a high and a low 32-bit half.
    """
    total, squares = 0, 0
    x = x.reshape(-1)
    for i in range(0, x.size, _BLOCK):
        b = x[i : i + _BLOCK]
        n = b.size
        if absmax * n < 1 << 63:
            total += int(b.sum(dtype=np.int64))
        else:  # 64-bit values: halves (the high one signed for int64, floor-shifted)
            total += (int((b >> 32).sum(dtype=b.dtype)) << 32) + int((b & 0xFFFFFFFF).sum(dtype=np.uint64))
        if absmax * absmax * n < 1 << 63:
            v = b.astype(np.int64)
            squares += int(np.dot(v, v))
        else:
            squares += _sum_squares_limbs(b)
    return total, squares


def _sum_squares_limbs(b: np.ndarray) -> int:
    if b.dtype.kind == "i":
        # |x| as uint64: -2**63 maps to 2**63, which uint64 holds
        a = np.where(b < 0, (~b.astype(np.int64)).view(np.uint64) + np.uint64(1), b.astype(np.int64).view(np.uint64))
    else:
        a = b.astype(np.uint64)
    limbs = [((a >> np.uint64(16 * k)) & np.uint64(0xFFFF)) for k in range(4)]
    out = 0
    for j in range(4):
        for k in range(j, 4):
            part = int(np.dot(limbs[j], limbs[k]))  # < 2**52 for a block: exact in uint64
            out += (part << (16 * (j + k))) * (1 if j == k else 2)
    return out


def _dot_exact(counts: np.ndarray, values: np.ndarray) -> int:
    """sum(counts * values) exactly (pattern counts times <= 16-bit integer values or squares)."""
    bound = int(np.abs(values).max(initial=0)) * int(counts.sum())
    if bound < 1 << 63:
        return int(np.dot(counts, values))
    return sum(c * v for c, v in zip(counts.tolist(), values.tolist()))


def _stream_moments(chunks: Iterable[np.ndarray], threshold: float, total: int, progress: Progress | None) -> _Moments:
    m = _Moments(threshold)
    done = 0
    for x in chunks:
        m.add(x)
        done += x.size
        if progress:
            progress(done, total)
    return m


def _exact_percentiles(
    chunks: Callable[[], Iterator[np.ndarray]], keys: np.ndarray, n: int, percentiles: Iterable[float]
) -> dict[str, float]:
    """Exact order statistics: find each rank's coarse bin from key counts, then read its values."""
    pcts = list(percentiles)
    cum = np.cumsum(keys)
    ranks: set[int] = set()
    for p in pcts:
        h = (n - 1) * p / 100.0
        ranks.update({math.floor(h), min(math.floor(h) + 1, n - 1)})
    rank_list = sorted(ranks)
    bins = np.searchsorted(cum, np.array(rank_list), side="right")
    wanted = np.unique(bins).astype(np.uint16)
    collected: dict[int, list[np.ndarray]] = {int(b): [] for b in wanted}
    for x in chunks():
        if x.dtype.kind == "f":
            x = x[np.isfinite(x)]
        k = _order_key16(x)
        mask = np.isin(k, wanted, kind="table")
        hits, hk = x[mask], k[mask]
        for b in wanted:
            collected[int(b)].append(hits[hk == b])
    value_at: dict[int, float | int] = {}
    for r, b in zip(rank_list, bins):
        before = int(cum[b - 1]) if b > 0 else 0
        vals = np.concatenate(collected[int(b)])
        if vals.dtype.kind not in "iu":  # integers stay integers: exact Python ints below
            vals = vals.astype(np.float64)
        value_at[r] = np.sort(vals)[r - before].item()
    out = {}
    for p in pcts:
        h = (n - 1) * p / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        out[_pkey(p)] = _lerp(value_at[lo], value_at[hi], h - lo)
    return out


def _lerp(a, b, frac: float):
    """numpy's 'linear' interpolation; on an element (frac 0) the element itself, which keeps an
    integer exact (and an extreme float finite: b - a may overflow)."""
    if frac == 0:
        return a
    return a + frac * (b - a)


# -- shared helpers ---------------------------------------------------------------------------


def _pkey(p: float) -> str:
    return f"p{p:g}"


def _base(dtype: DType, numel: int, threshold: float) -> dict:
    return {
        "dtype": dtype.name,
        "of": "magnitude" if dtype.kind == "complex" else "value",
        "numel": numel,
        "sparsity_threshold": threshold,
        "min": None, "max": None, "sum": None, "mean": None, "std": None, "var": None,
        "abs_max": None, "l2_norm": None, "percentiles": {},
    }


def _fill_int_moments(out: dict, n: int, total: int, sumsq: int, lo: int, hi: int) -> None:
    """Moments from exact integer sums: each statistic rounded once (int / int is correctly
    rounded in Python), min/max/abs_max/sum exact."""
    var = (n * sumsq - total * total) / (n * n)
    out.update(
        min=lo, max=hi, sum=total, mean=total / n, var=var, std=math.sqrt(var),
        abs_max=max(abs(lo), abs(hi)), l2_norm=math.sqrt(sumsq),
    )


def _fill_moments(out: dict, n: int, mean: float, m2: float, lo: float, hi: float, sumsq: float) -> None:
    var = m2 / n
    out.update(
        min=lo, max=hi, mean=mean, var=var, std=math.sqrt(var),
        abs_max=max(abs(lo), abs(hi)), l2_norm=math.sqrt(sumsq),
    )


def _finish(out: dict) -> None:
    numel = out["numel"]
    out["sparsity"] = out["sparse_count"] / numel if numel else 0.0
    # float64 sums overflow for values beyond ~1e154 (F64 only): say so rather than emit inf/NaN,
    # which is not JSON
    overflowed = [k for k in ("mean", "var", "std", "l2_norm") if out[k] is not None and not math.isfinite(out[k])]
    for k in overflowed:
        out[k] = None
    if overflowed:
        out["overflow"] = f"{', '.join(overflowed)} overflow float64 for these magnitudes"


def _percentiles_from_sorted(vals: np.ndarray, cum: np.ndarray, percentiles: Iterable[float]) -> dict[str, float]:
    """numpy 'linear' percentiles over a distribution given as sorted values with cumulative counts."""
    n = int(cum[-1])
    pcts = list(percentiles)
    hs = [(n - 1) * p / 100.0 for p in pcts]
    los = [math.floor(h) for h in hs]
    ranks = los + [min(lo + 1, n - 1) for lo in los]
    at = vals[np.searchsorted(cum, ranks, side="right")].tolist()  # ints for integer values
    k = len(pcts)
    return {_pkey(p): _lerp(at[i], at[k + i], h - lo) for i, (p, h, lo) in enumerate(zip(pcts, hs, los))}


def _histogram_from_weighted(values: np.ndarray, weights: np.ndarray, bins: int, lo, hi, log: bool) -> dict:
    _check_bins(bins)
    if values.size == 0:
        return {"edges": [], "counts": [], "log": log, "total": 0}
    if log:
        values = np.abs(values)
        pos = values > 0
        zeros = int(weights[~pos].sum())
        values, weights = values[pos], weights[pos]
        if values.size == 0:
            return {"edges": [], "counts": [], "log": True, "total": zeros, "zero_count": zeros}
        lo = math.log10(lo) if lo and lo > 0 else float(np.log10(values.min()))
        hi = math.log10(hi) if hi and hi > 0 else float(np.log10(values.max()))
        values = np.log10(values)
    else:
        lo = float(values.min()) if lo is None else float(lo)
        hi = float(values.max()) if hi is None else float(hi)
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1e-12)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi), weights=weights)
    res = {
        "edges": (10**edges).tolist() if log else edges.tolist(),
        "counts": counts.astype(np.int64).tolist(),
        "log": log,
        "total": int(weights.sum()),
    }
    if log:
        res["zero_count"] = zeros
    return res


def _check_bins(bins: int) -> None:
    if not 1 <= bins <= 4096:
        raise InvalidRequest(f"bins must be between 1 and 4096, got {bins}", field="bins")


def _values_chunks(reader: TensorReader, chunk: int) -> Iterator[np.ndarray]:
    for pats in reader.iter_chunks(chunk):
        v = reader.decode(pats)
        yield np.abs(v) if v.dtype.kind == "c" else v


# -- public API -------------------------------------------------------------------------------


def tensor_stats(
    reader: TensorReader,
    *,
    threshold: float = SPARSITY_THRESHOLD,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    progress: Progress | None = None,
    chunk_elems: int = CHUNK_ELEMS,
) -> tuple[dict, PatternCounts | None]:
    """Full statistics of a whole tensor; also the pattern counts when the dtype allows them."""
    dt = reader.dtype
    if not dt.decodable:
        raise dt.undecodable()
    percentiles = _check_percentiles(percentiles)
    if getattr(dt, "quantized", False):  # Q4_0 / Q4_1 / Q8_0: from codes and block scales
        from . import gguf_stats

        if gguf_stats.supports(reader):
            try:
                return gguf_stats.quant_stats(reader, threshold, percentiles, progress), None
            except gguf_stats.Unsupported:  # NaN/inf scales in many blocks: the general path
                pass
    if uses_table(dt):
        nbins = 16 if dt.name == "F4" else 1 << dt.bits
        counts = count_patterns(reader.iter_chunks(chunk_elems), nbins, reader.numel, progress)
        pc = PatternCounts(dt, counts)
        return pc.describe(threshold, percentiles), pc
    m = _stream_moments(_values_chunks(reader, chunk_elems), threshold, reader.numel, progress)
    return _describe_moments(dt, m, threshold, percentiles, lambda: _values_chunks(reader, chunk_elems)), None


def array_stats(
    values: np.ndarray,
    dtype: DType,
    *,
    threshold: float = SPARSITY_THRESHOLD,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    patterns: np.ndarray | None = None,
) -> dict:
    """The same statistics for values already in memory (a slice)."""
    percentiles = _check_percentiles(percentiles)
    if uses_table(dt := dtype) and patterns is not None:
        nbins = 16 if dt.name == "F4" else 1 << dt.bits
        counts = np.bincount(patterns.ravel(), minlength=nbins)
        return PatternCounts(dt, counts).describe(threshold, percentiles)
    v = values.ravel()
    v = np.abs(v) if v.dtype.kind == "c" else v
    if v.dtype.kind in "iu":
        if v.dtype.itemsize < 4:
            v = v.astype(np.int64)  # the exact integer path; its order keys need 32/64 bits
    elif v.dtype.itemsize < 4 or v.dtype.kind == "b":
        v = v.astype(np.float32)
    m = _Moments(threshold)
    m.add(v)
    return _describe_moments(dt, m, threshold, percentiles, lambda: iter([v]))


def _describe_moments(dt: DType, m: _Moments, threshold: float, percentiles, rechunk) -> dict:
    out = _base(dt, m.numel, threshold)
    out.update(
        nan_count=m.nan, posinf_count=m.posinf, neginf_count=m.neginf,
        inf_count=m.posinf + m.neginf, finite_count=m.n, sparse_count=m.sparse,
    )
    if m.n:
        if m.integer:
            _fill_int_moments(out, m.n, m.isum, m.isumsq, m.lo, m.hi)
        else:
            _fill_moments(out, m.n, m.mean, m.m2, m.lo, m.hi, m.sumsq)
            out["sum"] = m.mean * m.n
        out["percentiles"] = _exact_percentiles(rechunk, m.keys, m.n, percentiles)
    _finish(out)
    return out


def _check_percentiles(percentiles: Iterable[float]) -> tuple[float, ...]:
    ps = tuple(float(p) for p in percentiles)
    if not ps or len(ps) > 64 or not all(0.0 <= p <= 100.0 for p in ps):
        raise InvalidRequest("percentiles must be 1 to 64 numbers between 0 and 100", field="percentiles")
    return ps


def tensor_histogram(
    reader: TensorReader,
    *,
    bins: int = 64,
    lo: float | None = None,
    hi: float | None = None,
    log: bool = False,
    counts: PatternCounts | None = None,
    value_range: tuple[float, float] | None = None,
    chunk_elems: int = CHUNK_ELEMS,
) -> dict:
    """Histogram of a whole tensor: exact from pattern counts, else one streaming pass."""
    _check_bins(bins)
    if counts is not None:
        return counts.histogram(bins, lo, hi, log)
    if not reader.dtype.decodable:
        raise reader.dtype.undecodable()
    if log:
        lo_, hi_ = None, None
    else:
        lo_ = lo if lo is not None else (value_range[0] if value_range else None)
        hi_ = hi if hi is not None else (value_range[1] if value_range else None)
    if (lo_ is None or hi_ is None) or log:
        # find the range (or the positive magnitude range for log) first
        mn, mx, any_ = math.inf, -math.inf, False
        for v in _values_chunks(reader, chunk_elems):
            v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
            if log:
                v = np.abs(v)
                v = v[v > 0]
            if v.size:
                any_ = True
                mn, mx = min(mn, float(v.min())), max(mx, float(v.max()))
        if not any_:
            return {"edges": [], "counts": [], "log": log, "total": 0}
        if log:
            lo_, hi_ = (lo if lo and lo > 0 else mn), (hi if hi and hi > 0 else mx)
        else:
            lo_, hi_ = (mn if lo_ is None else lo_), (mx if hi_ is None else hi_)
    if hi_ <= lo_:
        hi_ = lo_ + (abs(lo_) * 1e-6 or 1e-12)
    if log:
        edges = np.logspace(math.log10(lo_), math.log10(hi_), bins + 1)
        # 10**log10(x) can round below x: pin the ends, or the extreme values fall outside
        edges[0], edges[-1] = lo_, hi_
    else:
        edges = np.linspace(lo_, hi_, bins + 1)
    total = np.zeros(bins, dtype=np.int64)
    zeros = 0
    for v in _values_chunks(reader, chunk_elems):
        v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        if log:
            v = np.abs(v)
            zeros += int(np.count_nonzero(v == 0))
            v = v[v > 0]
        total += np.histogram(v, bins=edges)[0]
    res = {"edges": edges.tolist(), "counts": total.tolist(), "log": log, "total": int(total.sum()) + zeros}
    if log:
        res["zero_count"] = zeros
    return res


def values_histogram(values: np.ndarray, *, bins: int = 64, lo=None, hi=None, log: bool = False) -> dict:
    v = values.ravel()
    v = np.abs(v) if v.dtype.kind == "c" else v
    v = v.astype(np.float64)
    v = v[np.isfinite(v)]
    return _histogram_from_weighted(v, np.ones(v.size, dtype=np.int64), bins, lo, hi, log)


# -- tails: kurtosis and saturation -------------------------------------------------------------


def saturation_bounds(dtype: DType) -> tuple[float, float] | tuple[int, int] | None:
    """The extreme finite values of a dtype (lowest, highest), or None where saturation means nothing.

    Unsigned dtypes (and E8M0, which has no sign) saturate at the top only: both bounds are the top.

    A value sitting exactly there is "saturated": what an overflowing cast clamps to, or a
    weight someone pinned at the limit. Complex tensors (described by magnitude) and BOOL have none.
    """
    if not dtype.decodable or dtype.kind in ("complex", "bool"):
        return None
    # integer limits as exact ints: as floats, U64's 2**64 - 1 rounds to 2**64 and every value
    # within 2**11 of it would count as saturated
    if dtype.kind == "uint":  # 0 is an ordinary value, not a limit
        hi = int(np.iinfo(dtype.numpy).max)
        return hi, hi
    if dtype.kind == "int":
        info = np.iinfo(dtype.numpy)
        return int(info.min), int(info.max)
    if uses_table(dtype):
        table = value_table(dtype)
        hi = float(np.max(np.abs(table[np.isfinite(table)])))
    else:
        hi = float(np.finfo(dtype.numpy).max)
    return (hi if dtype.name == "F8_E8M0" else -hi), hi  # E8M0 holds no negative values


def tail_stats(
    reader: TensorReader,
    stats: dict,
    counts: PatternCounts | None = None,
    *,
    chunk_elems: int = CHUNK_ELEMS,
    progress: Progress | None = None,
) -> dict:
    """Excess kurtosis and saturated values of a whole tensor, beside `tensor_stats`.

    Reuses what `tensor_stats` returned (its mean, variance and, for <= 16-bit dtypes, the
    pattern counts, so nothing is read again); other dtypes take one streaming pass for the
    fourth central moment. Kurtosis is Fisher's (a normal distribution gives 0.0), over the
    finite values; None when they have no variance or the moment overflows float64.
    """
    dt = reader.dtype
    if not dt.decodable:
        raise dt.undecodable()
    bounds = saturation_bounds(dt)
    mean, var = stats.get("mean"), stats.get("var")
    n = stats.get("finite_count") or 0
    m4_sum = 0.0
    saturated = 0
    if counts is not None:
        values = value_table(dt)[: len(counts.counts)]
        present = np.flatnonzero(counts.counts > 0)
        c, v = counts.counts[present], values[present]
        fin = np.isfinite(v)
        c, v = c[fin], v[fin]
        if mean is not None and n:
            with np.errstate(over="ignore", invalid="ignore"):
                m4_sum = float(np.dot(c, (v - mean) ** 4))
        if bounds is not None:
            saturated = int(c[(v == bounds[0]) | (v == bounds[1])].sum())
    else:
        done = 0
        for x in _values_chunks(reader, chunk_elems):
            done += x.size
            if x.dtype.kind == "f":
                x = x[np.isfinite(x)]
            if bounds is not None:
                saturated += int(np.count_nonzero((x == bounds[0]) | (x == bounds[1])))
            if mean is not None and x.size:
                d = x.astype(np.float64) - mean
                d *= d
                with np.errstate(over="ignore", invalid="ignore"):
                    m4_sum += float(np.dot(d, d))
            if progress:
                progress(done, reader.numel)
    kurtosis = None
    if n and var and var > 0 and math.isfinite(m4_sum):
        k = (m4_sum / n) / (var * var) - 3.0
        kurtosis = k if math.isfinite(k) else None
    return {
        "kurtosis": kurtosis,
        "saturated_count": saturated,
        "saturation_value": None if bounds is None else bounds[1],
    }
