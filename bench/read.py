"""Read-path benchmark: our store against the `safetensors` library, in the same process.

    python bench/read.py [--stats-model PATH] [--wait SECONDS] [--repeat N] [--slice-iters N]

- list:  open a model and list every tensor's name, shape and dtype (what `GET /api/tensors`
         starts from) for a sparse Llama-3-70B and a sparse DeepSeek-V3 (91,991 tensors).
         Reference: parse the index, `safe_open` each shard, `get_slice(k).get_shape()/get_dtype()`.
- slice: a 64x64 window of a 2.1 GB BF16 embedding, model already open. Ours:
         `TensorReader(ref).read_values(...)` (and `read_slice`, which adds the JSON-ready lists);
         reference: `f.get_slice(name)[a:b, c:d]` on a kept-open `safe_open`.
- stats: exact statistics of every tensor of the SmolLM2-135M demo model, single-threaded, warm
         page cache. Context: safetensors loading every tensor, and bare numpy passes. Without
         the demo model (`tensor-surgery demo-models`), a SmolLM2-shaped file of random BF16
         data stands in, and the output says so. `--chunk-sweep` also times stats.CHUNK_ELEMS
         candidates (1M elements is on the flat part of that curve: 256K..1M are within noise).

Ends with `RESULT list_ratio=... slice_ratio=... stats_gbps=... list_ratio_cpu=...
stats_floor_gbps=... load=...` (ratio = ours / reference, lower is better; targets: ratios <= 1.0,
stats >= 1.0 GB/s). list_ratio_cpu is the same ratio in CPU time, stats_floor_gbps what bare
np.bincount over the same bytes reaches in the same run, load the 1-minute load average: on a
shared machine they tell a slow machine from a slow method.
"""

from __future__ import annotations

import os

# single-threaded numbers: set before numpy (or torch) is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_models  # noqa: E402

from tensor_surgery.store import TensorReader, open_model  # noqa: E402
from tensor_surgery.store.slicing import read_slice  # noqa: E402
from tensor_surgery.store.stats import tensor_stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = sparse_models.BENCH_OUT
SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors"


def best_of(fn, repeat: int) -> float:
    """Minimum wall time of `repeat` runs after one warm-up run (page cache, imports, allocators)."""
    return best_of_both(fn, repeat)[0]


def best_of_both(fn, repeat: int) -> tuple[float, float]:
    """(minimum wall time, minimum CPU time of this process) of `repeat` runs after a warm-up.

    On a machine shared with other work, wall time also counts the time this process waited
    for a core; CPU time counts only what it ran (both single-threaded here), so its ratios hold
    better under load. Both are printed."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def median_ns(fn, iters: int) -> float:
    for _ in range(min(100, iters)):
        fn()
    times = []
    clock = time.perf_counter_ns
    for _ in range(iters):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def fmt_s(s: float) -> str:
    return f"{s * 1e3:9.2f} ms" if s < 10 else f"{s:9.2f} s "


def fmt_us(ns: float) -> str:
    return f"{ns / 1e3:9.1f} us"


# -- list -------------------------------------------------------------------------------------


def list_ours(index: Path) -> int:
    model = open_model(index)
    try:
        rows = [(t.name, t.shape, t.dtype.name) for t in model.tensors.values()]
    finally:
        model.close()
    return len(rows)


def list_reference(index: Path) -> int:
    weight_map = json.loads(index.read_text())["weight_map"]
    rows = []
    for shard in dict.fromkeys(weight_map.values()):
        with safe_open(index.parent / shard, framework="numpy") as f:
            for k in f.keys():
                s = f.get_slice(k)
                rows.append((k, s.get_shape(), s.get_dtype()))
    return len(rows)


def bench_list(repeat: int) -> tuple[list[tuple], float, float]:
    rows, ratios, cpu_ratios = [], [], []
    for label, make in (("Llama-3-70B", sparse_models.make_llama70b),
                        ("DeepSeek-V3", sparse_models.make_deepseek_v3)):
        index = make()
        n_ours, n_ref = list_ours(index), list_reference(index)
        assert n_ours == n_ref, (label, n_ours, n_ref)
        shards = len(set(json.loads(index.read_text())["weight_map"].values()))
        # interleaved, so that both see the same load on a shared machine
        ours, ours_cpu, ref, ref_cpu = [], [], [], []
        for _ in range(repeat):
            for fn, walls, cpus in ((list_ours, ours, ours_cpu), (list_reference, ref, ref_cpu)):
                gc.collect()
                t, c = time.perf_counter(), time.process_time()
                fn(index)
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
        ours, ours_cpu, ref, ref_cpu = min(ours), min(ours_cpu), min(ref), min(ref_cpu)
        ratios.append(ours / ref)
        cpu_ratios.append(ours_cpu / ref_cpu)
        rows.append((f"list {label} ({n_ours:,} tensors, {shards} shards)", fmt_s(ours), fmt_s(ref),
                     ours / ref))
        rows.append(("  same, CPU time", fmt_s(ours_cpu), fmt_s(ref_cpu), ours_cpu / ref_cpu))
    return rows, max(ratios), max(cpu_ratios)


# -- slice ------------------------------------------------------------------------------------


def bench_slice(iters: int) -> tuple[list[tuple], float]:
    path = sparse_models.make_big_embedding()
    name = sparse_models.BIG_EMBEDDING
    rows, ratio = [], None
    model = open_model(path)
    ref_file = safe_open(path, framework="numpy")
    try:
        for label, (a, b, c, d) in (("rows 0:64 (random data)", (0, 64, 0, 64)),
                                    ("rows 60000:60064 (hole)", (60000, 60064, 4000, 4064))):
            index = (slice(a, b), slice(c, d))
            params = {"dim0_start": a, "dim0_end": b, "dim1_start": c, "dim1_end": d}
            ours_v = TensorReader(model.tensor(name)).read_values(index)
            ref_v = ref_file.get_slice(name)[a:b, c:d]
            assert ours_v.shape == ref_v.shape == (64, 64)
            assert ours_v.tobytes() == np.ascontiguousarray(ref_v).tobytes(), "slices differ"

            ours = median_ns(lambda: TensorReader(model.tensor(name)).read_values(index), iters)
            ref = median_ns(lambda: ref_file.get_slice(name)[a:b, c:d], iters)
            js = median_ns(lambda: read_slice(TensorReader(model.tensor(name)), params), iters)
            if ratio is None:
                ratio = ours / ref
            else:
                ratio = max(ratio, ours / ref)
            rows.append((f"slice 64x64 BF16 {label}", fmt_us(ours), fmt_us(ref), ours / ref))
            rows.append((f"  + read_slice (JSON-ready lists, range)", fmt_us(js), fmt_us(ref), js / ref))
    finally:
        model.close()
        del ref_file
    return rows, ratio


# -- stats ------------------------------------------------------------------------------------


def smollm2_shaped_specs() -> list[tuple[str, str, tuple[int, ...]]]:
    return sparse_models.llama_specs(hidden=576, inter=1536, vocab=49152, layers=30, kv=192, tied=True)


def make_random_smollm2(path: Path = OUT / "smollm2-shaped-random.safetensors") -> Path:
    """Stand-in for the demo model while it is not built: same shapes, random N(0, 0.02) data."""
    specs = smollm2_shaped_specs()
    head, size = sparse_models.header_bytes(specs, {"format": "pt"})
    if path.is_file() and path.stat().st_size == len(head) + size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        for _name, _dtype, shape in sorted(specs, key=lambda s: s[0]):
            x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            f.write(((x.view(np.uint32) + 0x8000) >> 16).astype(np.uint16).tobytes())
    os.replace(tmp, path)
    return path


def find_stats_model(explicit: str | None, wait: float) -> tuple[Path, str]:
    if explicit:
        return Path(explicit), Path(explicit).name
    deadline = time.monotonic() + wait
    while True:
        # the builder writes the file then the config; a complete file opens cleanly
        if SMOLLM2.is_file():
            try:
                open_model(SMOLLM2).close()
                return SMOLLM2, "SmolLM2-135M-Instruct (real weights)"
            except Exception:
                pass
        if time.monotonic() >= deadline:
            break
        time.sleep(10)
    print(f"note: {SMOLLM2} not found; using a SmolLM2-shaped file of random BF16 data", file=sys.stderr)
    return make_random_smollm2(), "SmolLM2-shaped random BF16 (demo model not built yet)"


def stats_ours(model, chunk_elems: int | None = None) -> int:
    n = 0
    kw = {} if chunk_elems is None else {"chunk_elems": chunk_elems}
    for ref in model.tensors.values():
        tensor_stats(TensorReader(ref), **kw)
        n += ref.nbytes
    return n


def chunk_sweep(path: Path) -> None:
    with open_model(path) as model:
        for shift in range(16, 24):
            t = best_of(lambda: stats_ours(model, 1 << shift), 3)
            print(f"stats chunk {1 << shift:>9,} elements: {model.nbytes / t / 1e9:5.2f} GB/s")


def load_safetensors_pt(path: Path, reduce: bool = False) -> None:
    """safetensors' own loading (numpy cannot take BF16 there). Its get_tensor maps the file
    and reads no data; with `reduce`, each tensor is also summed in float32 by torch."""
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if reduce:
                t.float().sum()


def numpy_pass(model) -> None:
    """Floor for one pass that looks at every value: bf16 -> f32 in 1M chunks, then a sum."""
    for ref in model.tensors.values():
        v = TensorReader(ref).values_view().reshape(-1)
        for i in range(0, v.size, 1 << 20):
            v[i : i + (1 << 20)].astype(np.float32).sum(dtype=np.float64)


def bincount_pass(model) -> None:
    """Floor for our method: np.bincount of every bit pattern, nothing else."""
    for ref in model.tensors.values():
        p = ref.raw().view(np.uint16)
        for i in range(0, p.size, 1 << 20):
            np.bincount(p[i : i + (1 << 20)], minlength=1 << 16)


def bench_stats(path: Path, label: str, repeat: int) -> tuple[list[tuple], float, str]:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    model = open_model(path)
    try:
        total = model.nbytes
        with open(path, "rb") as f:  # warm the page cache: these are in-memory numbers
            while f.read(1 << 24):
                pass
        t = time.perf_counter()
        stats_ours(model)
        first = time.perf_counter() - t
        ours = best_of(lambda: stats_ours(model), repeat)
        rows = [(f"stats, all {len(model.tensors)} tensors, {total / 1e6:.0f} MB", fmt_s(ours), "", None)]
        gbps = total / ours / 1e9
        rows.append((f"  = {gbps:.2f} GB/s (first run {total / first / 1e9:.2f} GB/s)", "", "", None))
        if torch is not None:
            t_load = best_of(lambda: load_safetensors_pt(path), repeat)
            rows.append(("  context: safetensors get_tensor all (pt, lazy)", "", fmt_s(t_load),
                         ours / t_load))
            t_sum = best_of(lambda: load_safetensors_pt(path, reduce=True), repeat)
            rows.append(("  context: safetensors get_tensor + torch f32 sum", "", fmt_s(t_sum), ours / t_sum))
        t_np = best_of(lambda: numpy_pass(model), repeat)
        rows.append(("  context: numpy bf16->f32 + sum", "", fmt_s(t_np), ours / t_np))
        t_bc = best_of(lambda: bincount_pass(model), repeat)
        rows.append(("  context: numpy bincount only", "", fmt_s(t_bc), ours / t_bc))
        floor_gbps = total / t_bc / 1e9
        rows.append((f"  = bincount alone {floor_gbps:.2f} GB/s on this machine now: the floor "
                     "of our method", "", "", None))
    finally:
        model.close()
    return rows, gbps, label, floor_gbps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stats-model",
                    help="safetensors file for the stats run (default: the SmolLM2 demo model)")
    ap.add_argument("--wait", type=float, default=0,
                    help="seconds to wait for the demo model (`tensor-surgery demo-models` builds it)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per list/stats measure (min is kept)")
    ap.add_argument("--slice-iters", type=int, default=2000, help="timed calls per slice measure (median)")
    ap.add_argument("--chunk-sweep", action="store_true", help="also time stats at chunk sizes 64K..8M")
    args = ap.parse_args(argv)

    stats_path, stats_label = find_stats_model(args.stats_model, args.wait)
    list_rows, list_ratio, list_ratio_cpu = bench_list(args.repeat)
    slice_rows, slice_ratio = bench_slice(args.slice_iters)
    stats_rows, stats_gbps, _, floor_gbps = bench_stats(stats_path, stats_label, args.repeat)

    print(f"tensor_surgery.store vs safetensors {__import__('safetensors').__version__} "
          f"(numpy {np.__version__}, python {sys.version.split()[0]}, 1 thread)")
    print(f"stats model: {stats_label}: {stats_path}")
    print(f"{'measure':58} {'ours':>12} {'reference':>12} {'ratio':>7}")
    print("-" * 92)
    for name, ours, ref, ratio in list_rows + slice_rows + stats_rows:
        print(f"{name:58} {ours:>12} {ref:>12} {'' if ratio is None else f'{ratio:7.2f}'}")
    print("list: best of", args.repeat, "after a warm-up; slice: median of", args.slice_iters,
          "calls; stats: best of", args.repeat, "with a warm page cache")
    if args.chunk_sweep:
        chunk_sweep(stats_path)
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores: above 1 per core, wall times include "
          "waiting for a core (the CPU-time ratio and the bincount floor say how much)")
    print(f"RESULT list_ratio={list_ratio:.3f} slice_ratio={slice_ratio:.3f} stats_gbps={stats_gbps:.3f} "
          f"list_ratio_cpu={list_ratio_cpu:.3f} stats_floor_gbps={floor_gbps:.3f} load={load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
