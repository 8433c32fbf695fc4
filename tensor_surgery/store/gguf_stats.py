"""Exact statistics of Q4_0, Q4_1 and Q8_0 tensors from their codes and block scales, without
dequantizing every element.

Every element of these types is `value = fl32(fl32(d * (code - o)) + m)`, `d` (and `m`) a block's
float16 scale (and offset), exactly as `gguf.quants` computes it in float32 (o = 8 for Q4_0, 0 for
Q4_1, 128 for Q8_0 with its int8 code seen as `q + 128`; Q4_0 and Q8_0 have no `m`). So:

- Moments: a block's sum is `d * S1 + 32 m` and its spread `d^2 (32 S2 - S1^2) / 32`, from the
  integer sums of its codes S1 and of their squares S2 (SWAR byte sums over uint64 words: a few
  byte-wide numpy passes, no gathers). This is exact whenever every `d * c + m` of the block is a
  float32 (always for Q4_0 and Q8_0, whose products need at most 19 bits; for Q4_1 unless `m`
  dwarfs `d` by ~2^9); the few Q4_1 blocks where float32 rounds, and blocks whose scale is NaN or
  inf, are dequantized by `gguf` and summed value by value. Blocks merge with Chan's formula in
  float64, the same accuracy as the float path of `stats.py`.
- Order statistics (min, max, percentiles) and the sparsity count: within one block the value is
  monotone in the code (rising when d >= 0; the codes of blocks with d < 0 are mirrored so that it
  always rises). So "how many elements are <= x" is, per block, a binary search of x among the
  block's 16 (or 256) possible values, then one byte comparison of the codes against that count.
  A sample of blocks (every s-th, dequantized) brackets each wanted rank between two values; one
  more pass counts the elements below each bracket and collects only those inside it, which gives
  the exact order statistic (numpy's 'linear' interpolation between the two ranks). A bracket that
  missed its rank (a skewed sample) is widened and read again, so the result never depends on the
  sample, only the speed does.

Other GGML types (Q5_*, the K-quants, IQ types) keep the general path: dequantize each chunk, then
`stats.py`'s float statistics; so does Q8_0 by default (see ROUTED). Histograms also keep it (one
dequantizing pass with known range).

Speed, honestly: on the demo's Q4_1 matrices this measured only ~1.1x the CPU time of the general
path (2 shared cores under load; both ~0.008 GB/s there), far from the 0.5 GB/s target. The
moments are cheap (a few byte-wide passes); the order statistics are not: each bracket costs a
per-block search and a byte mask over every element, and the collected values a sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# type name -> (block bytes, code offset o, has m)
_LAYOUT = {"Q4_0": (18, 8, False), "Q4_1": (20, 0, True), "Q8_0": (34, 128, False)}
BLOCK_ELEMS = 32
CHUNK_BLOCKS = 1 << 15  # 1M elements per chunk, like stats.CHUNK_ELEMS
SAMPLE_BLOCKS = 4096  # blocks dequantized to place the brackets (at most 1/16 of the tensor)
MAX_ODD_FRACTION = 1 / 16  # beyond this share of NaN/inf-scaled blocks: the general path

_B8 = np.uint64(0x00FF00FF00FF00FF)
_H16 = np.uint64(0x0001000100010001)
_ONES = np.uint64(0x0101010101010101)
_H = np.uint64(0x8080808080808080)


class Unsupported(Exception):
    """This tensor is better served by the general path (hostile scales everywhere)."""


# The types `tensor_stats` sends here. Q8_0 is handled (and tested) but not routed: its 256-code
# blocks make the per-block searches costlier while its dequantization is a single multiply, and
# on the demo's token_embd this path measured ~1.3x slower than dequantize + float statistics.
ROUTED = {"Q4_0", "Q4_1"}


def supports(reader, types=None) -> bool:
    dt = reader.dtype
    return (getattr(dt, "quantized", False) and dt.name in (ROUTED if types is None else types)
            and hasattr(reader, "block_bytes_range")
            and reader.numel % BLOCK_ELEMS == 0 and reader.unit_elems == BLOCK_ELEMS
            and reader.unit_bytes == _LAYOUT[dt.name][0])


def _byte_sums(a: np.ndarray) -> np.ndarray:
    """Per row sums of a (nb, 32) uint8 array whose row sums stay below 2**16, as uint64."""
    w = a.view(np.uint64)  # (nb, 4) words of 8 bytes
    p = (w & _B8) + ((w >> np.uint64(8)) & _B8)  # 16-bit lanes, each <= 510
    s = p[:, 0] + p[:, 1] + p[:, 2] + p[:, 3]  # lanes <= 2040
    return (s * _H16) >> np.uint64(48)  # the four lanes added in the top one


def _square_sums(a: np.ndarray, wide: bool) -> np.ndarray:
    if not wide:  # codes <= 15: squares <= 225 fit a byte, sums <= 7200
        return _byte_sums(a * a)
    a16 = a.astype(np.uint16)
    a16 *= a16  # <= 65025
    w = a16.view(np.uint64)  # (nb, 8) words of four 16-bit squares
    m32 = np.uint64(0x0000FFFF0000FFFF)
    p = (w & m32) + ((w >> np.uint64(16)) & m32)  # 32-bit lanes
    s = p.sum(axis=1)  # lanes <= 8 * 130050
    return (s & np.uint64(0xFFFFFFFF)) + (s >> np.uint64(32))


@dataclass
class _Blocks:
    """One chunk of blocks: codes mirrored so values rise with them, and what the value needs."""

    codes: np.ndarray  # (nb, 32) uint8, raw codes (Q8_0: q + 128)
    flip: np.ndarray  # (nb,) uint8: 0, or the mirror mask (15 / 255) for blocks with d < 0
    mirrored: np.ndarray  # codes ^ flip
    d: np.ndarray  # (nb,) float32
    m: np.ndarray | None  # (nb,) float32 (Q4_1)
    odd: np.ndarray  # (nb,) bool: NaN/inf scale: values taken from gguf, not from the codes
    odd_values: np.ndarray  # finite values of the odd blocks (float32)


class _Kind:
    def __init__(self, name: str) -> None:
        self.name = name
        self.block_bytes, self.offset, self.has_m = _LAYOUT[name]
        self.ncodes = 256 if name == "Q8_0" else 16
        self.mask = np.uint8(self.ncodes - 1)

    def split(self, raw: np.ndarray, dequantize) -> _Blocks:
        blocks = raw.reshape(-1, self.block_bytes)
        d = blocks[:, 0:2].copy().view(np.float16).reshape(-1).astype(np.float32)
        m = blocks[:, 2:4].copy().view(np.float16).reshape(-1).astype(np.float32) if self.has_m else None
        start = 4 if self.has_m else 2
        qs = blocks[:, start:]
        nb = blocks.shape[0]
        if self.ncodes == 256:
            codes = qs ^ np.uint8(0x80)  # int8 q -> q + 128, order kept
        else:
            codes = np.empty((nb, 32), np.uint8)
            np.bitwise_and(qs, np.uint8(0x0F), out=codes[:, :16])
            np.right_shift(qs, np.uint8(4), out=codes[:, 16:])
        odd = ~np.isfinite(d)
        if m is not None:
            odd |= ~np.isfinite(m)
        flip = np.where(d < 0, self.mask, np.uint8(0)).astype(np.uint8)
        mirrored = codes ^ flip[:, None]
        odd_values = np.zeros(0, np.float32)
        if odd.any():
            with np.errstate(all="ignore"):
                vals = dequantize(np.ascontiguousarray(blocks[odd]).reshape(-1))
            odd_values = vals  # all values, NaN/inf included (counted by the caller)
        return _Blocks(np.ascontiguousarray(codes), flip, mirrored, d, m, odd, odd_values)

    def value(self, b: _Blocks, rows, mirrored_code) -> np.ndarray:
        """float32 values of mirrored codes in the given rows, exactly as gguf dequantizes."""
        code = (np.asarray(mirrored_code).astype(np.uint8) ^ b.flip[rows]).astype(np.float32)
        with np.errstate(all="ignore"):
            v = b.d[rows] * (code - np.float32(self.offset))
            if b.m is not None:
                v = v + b.m[rows]
        return v

    def below(self, b: _Blocks, x: np.float32, strict: bool) -> np.ndarray:
        """Per block, how many mirrored codes have values <= x (< x when strict): estimated by one
        division, then stepped to the exact count by comparing the values gguf would give."""
        nb = b.d.size
        c = self.ncodes
        if x == np.inf or x == -np.inf:  # every finite value is below +inf, none below -inf
            return np.full(nb, c if x == np.inf else 0, np.int32)
        d = b.d.astype(np.float64)
        m = b.m.astype(np.float64) if b.m is not None else 0.0
        with np.errstate(all="ignore"):
            q = (np.float64(x) - m) / d + self.offset  # the (unmirrored) code where the value is x
            est = np.where(d < 0, c - np.ceil(q), np.floor(q) + 1)
            zero = b.m if b.m is not None else np.zeros(nb, np.float32)
            flat = (zero < x) if strict else (zero <= x)  # d == 0: every value is m (or 0)
            est = np.where(d == 0, np.where(flat, c, 0), est)
        k = np.clip(np.nan_to_num(est, nan=0.0), 0, c).astype(np.int32)

        def ok(code):  # value of the mirrored code is within the bound
            v = self.value(b, slice(None), np.clip(code, 0, c - 1))
            return (v < x) if strict else (v <= x)

        while True:  # a value at k - 1 past x: step down
            down = (k > 0) & ~ok(k - 1)
            if not down.any():
                break
            k -= down
        while True:  # a value at k within x: step up
            up = (k < c) & ok(k)
            if not up.any():
                break
            k += up
        return k

    def masks(self, b: _Blocks, k: np.ndarray) -> np.ndarray:
        """Per element, whether its mirrored code is below its block's k: as uint8 bytes with the
        top bit set (Q4: a SWAR subtraction over 8 codes at once), or bool (Q8)."""
        k = np.where(b.odd, 0, k)
        if self.ncodes <= 16:
            kb = k.astype(np.uint64) * _ONES
            x = (kb[:, None] | _H) - b.mirrored.view(np.uint64) - _ONES  # 0x7F + k - c per byte
            x &= _H
            return x
        # 257 possible counts in a byte compare: c < k is c <= k - 1, and k == 0 blocks hold none
        mk = b.mirrored <= np.maximum(k - 1, 0).astype(np.uint8)[:, None]
        if not k.all():
            mk &= (k > 0)[:, None]
        return mk

    def count(self, b: _Blocks, k: np.ndarray) -> int:
        """Elements whose mirrored code is below k (per block), over the regular blocks."""
        mk = self.masks(b, k)
        if mk.dtype == np.uint64:
            return int(np.bitwise_count(mk).sum(dtype=np.int64))
        return int(np.count_nonzero(mk))


def _popcount(mask: np.ndarray) -> int:
    if mask.dtype == np.uint64:
        return int(np.bitwise_count(mask).sum(dtype=np.int64))
    return int(np.count_nonzero(mask))


def _odd_finite(b: _Blocks) -> np.ndarray:
    v = b.odd_values
    return v[np.isfinite(v)] if v.size else v


def quant_stats(reader, threshold: float, percentiles: tuple[float, ...], progress=None) -> dict:
    """`stats.tensor_stats` for a Q4_0 / Q4_1 / Q8_0 tensor (the same keys and values)."""
    from . import stats as st
    from .gguf import dequantize_blocks

    dt = reader.dtype
    kind = _Kind(dt.name)
    nblocks = reader.numel // BLOCK_ELEMS
    total = reader.numel

    def deq(raw):
        return dequantize_blocks(dt, raw)

    def chunks():
        for b0 in range(0, nblocks, CHUNK_BLOCKS):
            b1 = min(b0 + CHUNK_BLOCKS, nblocks)
            yield b0, kind.split(reader.block_bytes_range(b0, b1), deq)

    # -- pass 1: moments, non-finite counts, the sample
    stride = max(16, -(-nblocks // SAMPLE_BLOCKS))
    row_blocks = max(1, (reader.shape[-1] if reader.shape else 1) // BLOCK_ELEMS)
    while math.gcd(stride, row_blocks) != 1:  # a stride of whole rows would sample one column only
        stride += 1
    n = 0
    mean = 0.0
    m2 = 0.0
    sumsq = 0.0
    total_sum = 0.0
    nan = posinf = neginf = 0
    samples = []
    odd_blocks = 0
    side = st._Moments(threshold)  # the blocks summed value by value
    for b0, b in chunks():
        nb = b.d.size
        ov = b.odd_values
        if ov.size:
            odd_blocks += int(b.odd.sum())
            if odd_blocks > MAX_ODD_FRACTION * nblocks + 1:
                raise Unsupported
            nan += int(np.count_nonzero(np.isnan(ov)))
            posinf += int(np.count_nonzero(ov == np.inf))
            neginf += int(np.count_nonzero(ov == -np.inf))
        first = (-b0) % stride
        srows = np.arange(first, nb, stride)
        if srows.size:
            sv = kind.value(b, srows[:, None], b.mirrored[srows])
            sv = sv[~b.odd[srows]].reshape(-1)
            samples.append(sv)
        reg = ~b.odd
        if b.m is not None:
            # Q4_1: exact only where every d*c + m of the block is a float32 (checked on a grid:
            # the values are multiples of the smaller last-bit of d and m)
            d64, m64 = b.d.astype(np.float64), b.m.astype(np.float64)
            with np.errstate(all="ignore"):
                _, ed = np.frexp(b.d)
                _, em = np.frexp(b.m)
                lsb = np.minimum(np.where(b.d == 0, 1000, np.maximum(ed - 11, -24)),
                                 np.where(b.m == 0, 1000, np.maximum(em - 11, -24)))
                top = np.abs(d64) * 15 + np.abs(m64)
                exact = top < np.ldexp(1.0, np.minimum(lsb, 200) + 24)
            rounded = reg & ~exact
            if rounded.any():
                rv = kind.value(b, np.flatnonzero(rounded)[:, None], b.mirrored[rounded]).reshape(-1)
                side.add(rv)
                reg &= exact
        if not reg.all():
            codes = b.codes[reg]
            d = b.d[reg].astype(np.float64)
            mm = b.m[reg].astype(np.float64) if b.m is not None else None
        else:
            codes, d = b.codes, b.d.astype(np.float64)
            mm = b.m.astype(np.float64) if b.m is not None else None
        if codes.shape[0]:
            s1 = _byte_sums(codes).astype(np.float64)
            s2 = _square_sums(codes, kind.ncodes > 16).astype(np.float64)
            o = kind.offset
            su = s1 - 32 * o  # sums of (code - o): exact integers
            su2 = s2 - 2 * o * s1 + 32 * o * o
            bsum = d * su
            bsq = d * d * su2
            if mm is not None:
                bsq += 2 * d * mm * su + 32 * mm * mm
                bsum += 32 * mm
            bm2 = d * d * ((32 * su2 - su * su) / 32)
            nb_reg = codes.shape[0]
            cn = 32 * nb_reg
            csum = float(bsum.sum())
            cmean = csum / cn
            bmean = bsum / 32
            dev = bmean - cmean
            cm2 = float(bm2.sum()) + 32 * float(np.dot(dev, dev))
            sumsq += float(bsq.sum())
            total_sum += csum
            nn = n + cn
            delta = cmean - mean
            mean += delta * cn / nn
            m2 += cm2 + delta * delta * n * cn / nn
            n = nn
        of = _odd_finite(b)
        if of.size:
            side.add(of)
        if progress:
            progress(min((b0 + nb) * 32, total), 2 * total)
    # the side values (rounded or odd blocks) into the moments
    if side.n:
        nn = n + side.n
        delta = side.mean - mean
        mean += delta * side.n / nn
        m2 += side.m2 + delta * delta * n * side.n / nn
        sumsq += side.sumsq
        total_sum += side.mean * side.n
        n = nn
    out = st._base(dt, total, threshold)
    out.update(nan_count=nan, posinf_count=posinf, neginf_count=neginf, inf_count=posinf + neginf,
               finite_count=n)
    if not n:
        out["sparse_count"] = 0
        st._finish(out)
        return out

    # -- pass 2: order statistics and the sparsity count
    pcts = list(percentiles)
    ranks = {0, n - 1}
    for p in pcts:
        h = (n - 1) * p / 100.0
        ranks.update({math.floor(h), min(math.floor(h) + 1, n - 1)})
    sample = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    sample = np.sort(sample[np.isfinite(sample)])
    found: dict[int, float] = {}
    t = np.float32(threshold) if threshold >= 0 else None  # (NaN or negative: nothing is that small)
    sparse = None
    todo = sorted(ranks)
    widen = 1.0
    while todo:
        brackets = _brackets(todo, n, sample, widen)
        got = _read_brackets(kind, chunks, brackets, t if sparse is None else None)
        if sparse is None:
            sparse = got.pop("sparse")
        missed = []
        for (a, b_, rs), (below, vals) in zip(brackets, got["brackets"]):
            vals = np.sort(vals)
            for r in rs:
                i = r - below
                if 0 <= i < vals.size:
                    found[r] = float(vals[i])
                else:
                    missed.append(r)
        todo = sorted(set(missed))
        widen *= 4
        if progress:
            progress(total + total * len(found) // len(ranks), 2 * total)
    lo, hi = found[0], found[n - 1]
    out.update(min=lo, max=hi, mean=mean, var=m2 / n, std=math.sqrt(m2 / n),
               abs_max=max(abs(lo), abs(hi)), l2_norm=math.sqrt(sumsq), sum=total_sum,
               sparse_count=sparse)
    res = {}
    for p in pcts:
        h = (n - 1) * p / 100.0
        a = math.floor(h)
        res[st._pkey(p)] = st._lerp(found[a], found[min(a + 1, n - 1)], h - a)
    out["percentiles"] = res
    st._finish(out)
    return out


def _brackets(ranks: list[int], n: int, sample: np.ndarray, widen: float):
    """[(a, b, ranks)]: value intervals that should hold the given ranks (a=-inf/b=inf at the ends),
    nearby ranks sharing one interval."""
    ns = sample.size
    out = []
    for r in ranks:
        if ns == 0 or widen > 1e6:
            a, b = -np.inf, np.inf
        else:
            q = r / max(n - 1, 1) * (ns - 1)
            p = min(max(r / n, 1 / n), 1 - 1 / n)
            delta = widen * (5 * math.sqrt(ns * p * (1 - p)) + 8)
            i0, i1 = math.floor(q - delta), math.ceil(q + delta)
            a = -np.inf if i0 < 0 else float(sample[i0])
            b = np.inf if i1 >= ns else float(sample[i1])
        if out and a <= out[-1][1]:
            pa, pb, prs = out[-1]
            out[-1] = (pa, max(pb, b), prs + [r])
        else:
            out.append((a, b, [r]))
    return out


def _read_brackets(kind: _Kind, chunks, brackets, t):
    """One pass: per bracket [a, b], the elements below a and the values inside; the sparse count."""
    below = [0] * len(brackets)
    vals: list[list[np.ndarray]] = [[] for _ in brackets]
    sparse = 0
    starts = np.array([a for a, _, _ in brackets], np.float64)
    for _, b in chunks():
        of = _odd_finite(b)
        if t is not None:
            hi = kind.below(b, t, strict=False)
            lo = kind.below(b, -t, strict=True)
            sparse += kind.count(b, hi) - kind.count(b, lo)
            if of.size:
                sparse += int(np.count_nonzero((of >= -t) & (of <= t)))
        inside = None  # the union of every bracket's elements (brackets are disjoint)
        # each block's lowest and highest value: a narrow bracket (the tails, min, max) reads
        # only the blocks that reach into it; blocks wholly below it count 32 each
        nb = b.d.size
        with np.errstate(all="ignore"):
            lo_b = kind.value(b, slice(None), b.mirrored.min(axis=1))
            hi_b = kind.value(b, slice(None), b.mirrored.max(axis=1))
        lo_b[b.odd] = np.nan  # (odd blocks: their values are in `of`)
        hi_b[b.odd] = np.nan
        for i, (a, bb, _) in enumerate(brackets):
            if of.size:
                below[i] += int(np.count_nonzero(of < a))
                vals[i].append(of[(of >= a) & (of <= bb)])
            cand = np.flatnonzero((lo_b <= bb) & (hi_b >= a))
            if cand.size * 4 < nb:
                below[i] += BLOCK_ELEMS * int(np.count_nonzero(hi_b < a))
                if not cand.size:
                    continue
                sub = _Blocks(None, b.flip[cand], b.mirrored[cand], b.d[cand],
                              None if b.m is None else b.m[cand], b.odd[cand], b.odd_values)
                lt_a = kind.masks(sub, kind.below(sub, np.float32(a), strict=True))
                lt_b = kind.masks(sub, kind.below(sub, np.float32(bb), strict=False))
                below[i] += _popcount(lt_a)
                lt_b ^= lt_a
                hit = np.flatnonzero(lt_b.view(np.uint8) if lt_b.dtype == np.uint64 else lt_b)
                if hit.size:
                    vals[i].append(kind.value(sub, hit >> 5, sub.mirrored.reshape(-1)[hit]))
                continue
            lt_a = kind.masks(b, kind.below(b, np.float32(a), strict=True))
            lt_b = kind.masks(b, kind.below(b, np.float32(bb), strict=False))
            if lt_a.dtype == np.uint64:
                below[i] += int(np.bitwise_count(lt_a).sum(dtype=np.int64))
            else:
                below[i] += int(np.count_nonzero(lt_a))
            lt_b ^= lt_a  # below b and not below a (lt_a implies lt_b)
            if inside is None:
                inside = lt_b
            else:
                inside |= lt_b
        # one scan for all wide brackets, then each value to its bracket by the bracket starts
        hit = np.zeros(0, np.int64) if inside is None else np.flatnonzero(
            inside.view(np.uint8) if inside.dtype == np.uint64 else inside)
        if hit.size:
            v = kind.value(b, hit >> 5, b.mirrored.reshape(-1)[hit])
            which = np.searchsorted(starts, v, side="right") - 1
            order = np.argsort(which, kind="stable")
            v, which = v[order], which[order]
            cuts = np.searchsorted(which, np.arange(len(brackets) + 1))
            for i in range(len(brackets)):
                if cuts[i + 1] > cuts[i]:
                    vals[i].append(v[cuts[i]:cuts[i + 1]])
    res = [(below[i], np.concatenate(v).astype(np.float64) if v else np.zeros(0)) for i, v in enumerate(vals)]
    return {"brackets": res, "sparse": sparse}


__all__ = ["quant_stats", "supports", "Unsupported"]
