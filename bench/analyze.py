"""Per-parameter analysis benchmark: `tensor-surgery analyze`'s pipeline against a naive script, in
the same run, then in-process against Ray with 2 workers.

    python bench/analyze.py [--layers-70b N] [--skip-naive]

- naive (the reference): the SmolLM2-135M demo model tensor by tensor with the `safetensors`
  library (`safe_open`, framework "pt", as float32 numpy), numpy mean/std/var/sparsity, and
  `np.linalg.svd` for the rank of every matrix (the notes' tolerance s > 1e-6 * s.max()).
- ours: `analysis.table.build_table` on the same model with `--rank exact` (statistics streamed
  through the store; rank from the Gram matrix in float64, SVD only where that is not certain).
  analyze_vs_naive = ours / naive (target <= 0.5); rank_exact_s = ours' wall time.
- ray_speedup_2w: the same exact-rank table in this process vs as Ray tasks on a local Ray with 2
  CPUs, timed after the cluster is up (start-up is a one-off, reported apart). Target >= 1.5, which
  needs 2 idle cores: the load average is printed beside it.
- 70B: a sparse Llama-3-70B-shaped model (bench/sparse_models.py; holes read as zeros) with
  `--rank none`, the first N layers plus the embeddings and head (141 GB in all would take minutes
  of reading zeros), in a child process whose peak RSS is reported: statistics hold one chunk at a
  time, never a whole tensor (its embedding alone is 2.1 GB). peak_rss_mb is that child's.
  peak_rss_rank_mb is a child's running the demo model's exact-rank table (one matrix's Gram
  matrix and one block at a time; the SVD fallback holds one whole matrix in float64).

Both sides run single-threaded BLAS. Ends with `RESULT analyze_vs_naive=... analyze_vs_naive_cpu=... ray_speedup_2w=... rank_exact_s=... peak_rss_mb=...
peak_rss_rank_mb=... stats_gbps_70b=... stats_gbps_70b_cpu=... table_vs_store_stats_cpu=... ray_start_s=... load=...`
(table_vs_store_stats_cpu: the table without rank over the store's bare statistics, in CPU time).
"""

from __future__ import annotations

import os

# single-threaded BLAS on both sides (and in Ray's workers, which inherit it): a fair comparison
# on a shared machine, and Ray's 2 workers then mean 2 cores
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_models  # noqa: E402

from tensor_surgery.analysis import parallel  # noqa: E402
from tensor_surgery.analysis import table as tb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors"


def store_stats(path: Path) -> float:
    """CPU seconds of the store's own statistics over every tensor (the floor our table builds on)."""
    from tensor_surgery.store import TensorReader, open_model
    from tensor_surgery.store.stats import tensor_stats

    c0 = time.process_time()
    with open_model(path) as m:
        for ref in m.tensors.values():
            tensor_stats(TensorReader(ref))
    return time.process_time() - c0


def naive(path: Path) -> tuple[float, float, int]:
    import torch
    from safetensors import safe_open

    torch.set_num_threads(1)
    c0 = time.process_time()
    t0 = time.perf_counter()
    ranks = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            x = f.get_tensor(k).to(torch.float32).numpy()
            x.mean(), x.std(), x.var(), float(np.mean(np.abs(x) <= 1e-8))
            if x.ndim >= 2:
                s = np.linalg.svd(x.reshape(x.shape[0], -1), compute_uv=False)
                ranks += int(np.count_nonzero(s > 1e-6 * s.max()))
    return time.perf_counter() - t0, time.process_time() - c0, ranks


def ours(path: Path, rank: str, ray_address: str | None = None) -> tuple[float, list[dict], float]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    rows, _ = tb.build_table([tb.describe_model(str(path))], tb.Options(rank=rank), ray_address=ray_address)
    return time.perf_counter() - t0, rows, time.process_time() - c0


# Peak RSS from /proc's VmHWM: getrusage's ru_maxrss survives exec on Linux, so a child would
# report this (large) process's peak instead of its own.
CHILD = """
import json, re, sys, time
from tensor_surgery.analysis import table as tb
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
path, rank, match = sys.argv[1], sys.argv[2], sys.argv[3] or None
base = hwm_mb()
t0, c0 = time.perf_counter(), time.process_time()
info = tb.describe_model(path, re.compile(match) if match else None)
rows, skipped = tb.build_table([info], tb.Options(rank=rank))
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"s": dt, "cpu": cpu, "rows": len(rows), "bytes": sum(info.nbytes.values()),
                  "peak_rss_mb": hwm_mb(), "import_rss_mb": base}))
"""


def child(path: Path, rank: str, match: str | None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), rank, match or ""], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers-70b", type=int, default=1, help="layers of the sparse 70B model to analyse")
    ap.add_argument("--skip-naive", action="store_true", help="skip the naive reference (minutes on 2 cores)")
    args = ap.parse_args(argv)
    if not SMOLLM2.is_file():
        sys.exit(f"no demo model at {SMOLLM2}: run `tensor-surgery demo-models` first")

    # warm the page cache, then the rows the ratios are about
    ours(SMOLLM2, "none")
    t_none, _, c_none = ours(SMOLLM2, "none")
    c_store = store_stats(SMOLLM2)
    t_exact, rows, c_exact = ours(SMOLLM2, "exact")
    size = SMOLLM2.stat().st_size / 1e9
    print(f"demo model {size * 1e3:.0f} MB, {len(rows)} tensors: table without rank {t_none:.2f} s "
          f"({size / c_none:.2f} GB per CPU second; the store's own statistics alone: {size / c_store:.2f}), "
          f"with exact rank {t_exact:.2f} s")
    if args.skip_naive:
        ratio = ratio_cpu = float("nan")
    else:
        t_naive, c_naive, naive_ranks = naive(SMOLLM2)
        ours_ranks = sum(r["rank"] or 0 for r in rows)
        ratio, ratio_cpu = t_exact / t_naive, c_exact / c_naive
        print(f"naive (safetensors + numpy + np.linalg.svd): {t_naive:.2f} s ({c_naive:.2f} s CPU); ours "
              f"{t_exact:.2f} s ({c_exact:.2f} s CPU); ours / naive = {ratio:.3f} wall, {ratio_cpu:.3f} CPU; "
              f"sum of ranks ours {ours_ranks}, naive (float32 SVD) {naive_ranks}")

    speedup, ray_start = float("nan"), float("nan")
    t0 = time.perf_counter()
    try:
        parallel.run_tasks(abs, [(-1,)], ray_address="local:2")  # connecting starts Ray; later calls reuse it
    except Exception as e:  # a local Ray cannot start on an overloaded machine: say so, go on
        print(f"Ray did not start: {e}")
    else:
        import ray

        ray_start = time.perf_counter() - t0
        try:
            t_ray, ray_rows, _ = ours(SMOLLM2, "exact", ray_address="local:2")
            strip = lambda rs: [{k: v for k, v in r.items() if k != "created_at"} for r in rs]  # noqa: E731
            same = strip(ray_rows) == strip(rows)
        finally:
            ray.shutdown()
        speedup = t_exact / t_ray
        print(f"Ray, 2 workers (started in {ray_start:.1f} s): {t_ray:.2f} s vs {t_exact:.2f} s in-process: "
              f"speedup {speedup:.2f}; same table: {same}")

    index = sparse_models.make_llama70b()
    layers = "|".join(str(i) for i in range(args.layers_70b))
    big = child(index, "none", rf"^model\.layers\.({layers})\.|^model\.embed_tokens|^lm_head|^model\.norm")
    gbps = big["bytes"] / 1e9 / big["s"]
    gbps_cpu = big["bytes"] / 1e9 / big["cpu"]
    print(f"sparse 70B shape, {big['rows']} tensors ({big['bytes'] / 1e9:.1f} GB, holes), rank none: {big['s']:.1f} s "
          f"({gbps:.2f} GB/s; {gbps_cpu:.2f} GB per CPU second), peak RSS {big['peak_rss_mb']:.0f} MB "
          f"({big['import_rss_mb']:.0f} MB after imports; its embedding alone is 2.1 GB)")
    rank_child = child(SMOLLM2, "exact", None)
    print(f"demo model exact rank in a child: {rank_child['s']:.1f} s, peak RSS {rank_child['peak_rss_mb']:.0f} MB "
          f"({rank_child['import_rss_mb']:.0f} MB after imports)")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"RESULT analyze_vs_naive={ratio:.3f} analyze_vs_naive_cpu={ratio_cpu:.3f} ray_speedup_2w={speedup:.2f} rank_exact_s={t_exact:.2f} "
          f"peak_rss_mb={big['peak_rss_mb']:.0f} peak_rss_rank_mb={rank_child['peak_rss_mb']:.0f} "
          f"stats_gbps_70b={gbps:.2f} stats_gbps_70b_cpu={gbps_cpu:.2f} table_vs_store_stats_cpu={c_none / c_store:.2f} "
          f"ray_start_s={ray_start:.1f} load={load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
