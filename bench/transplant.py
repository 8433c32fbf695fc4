"""Transplant benchmark: duplicating one layer into a new model, against `cp` and the naive way.

    python bench/transplant.py [--model DIR] [--repeat N] [--no-70b]

- ours:  layer 10 of the SmolLM2-135M demo model duplicated into a new 31-layer model folder by
         `transplant.write_transplant` (new header and offsets, tensors copied by the kernel one
         at a time, config/tokenizer copied, fsync, rename). The recipe is left out here: its
         checksums are a read of the weights that `build_recipe` adds (timed on its own below).
- cp:    `cp -r --reflink=never` of the model folder (the same bytes, give or take one layer).
- naive: what a script would do: `safetensors.torch.load_file` of every tensor, the renumbered dict
         built in memory, `save_file`, the side files copied.
Best of N after a warm-up, methods interleaved; the output is deleted (and `sync` run) between runs.

Peak RSS: the same duplication on the sparse Llama-3-70B shape (bench/sparse_models.py: 723
tensors, 141 GB in 30 shards, holes that read as zeros and stay holes in the output), run in a
child process whose peak resident memory (ru_maxrss) is reported: it does not grow with the model.

Ends with `RESULT transplant_vs_cp=... transplant_vs_naive=... peak_rss_mb=... transplant_vs_cp_fsync=...`
(targets: transplant_vs_cp <= 1.5, transplant_vs_naive <= 0.5, peak_rss_mb < 1024 on the 70B shape;
transplant_vs_cp_fsync compares with `cp` followed by an fsync of every file, our durability).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from patch import drop, fsync_tree  # noqa: E402 (bench/patch.py: delete+sync+settle; fsync a folder)

from tensor_surgery.store import open_model  # noqa: E402
from tensor_surgery.surgery.recipe import build_recipe  # noqa: E402
from tensor_surgery.surgery.transplant import TransplantSpec, plan_transplant, write_transplant  # noqa: E402
from tensor_surgery.surgery.writer import SIDE_FILES  # noqa: E402

SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
OUT = Path(__file__).resolve().parent / "out" / "transplant-bench"
LAYER = re.compile(r"^(model\.layers\.)(\d+)(\..+)$")


def best_of(methods: dict, repeat: int, out: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in methods}
    for rnd in range(repeat + 1):
        for name, fn in methods.items():
            drop(out)
            gc.collect()
            t = time.perf_counter()
            fn(out)
            dt = time.perf_counter() - t
            if rnd:
                times[name].append(dt)
    drop(out)
    return times


def naive(src: Path, out: Path, layer: int) -> None:
    """Load everything, renumber in a dict, save_file: the way a one-off script does it."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    new = {}
    for name, t in tensors.items():
        m = LAYER.match(name)
        k = int(m[2]) if m else -1
        if m and k > layer:
            new[f"{m[1]}{k + 1}{m[3]}"] = t
        else:
            new[name] = t
            if m and k == layer:
                new[f"{m[1]}{k + 1}{m[3]}"] = t.clone()
    out.mkdir()
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    for p in src.iterdir():
        if p.name in SIDE_FILES:
            shutil.copyfile(p, out / p.name)


CHILD = """
import sys, shutil, time
sys.path.insert(0, {root!r})
from tensor_surgery.store import open_model
from tensor_surgery.surgery.transplant import TransplantSpec, plan_transplant, write_transplant
out = {out!r}
shutil.rmtree(out, ignore_errors=True)
t = time.perf_counter()
with open_model({index!r}) as m:
    plan = plan_transplant(m, None, TransplantSpec(duplicate_layers=[40]))
    r = write_transplant(plan, out)
print("seconds", round(time.perf_counter() - t, 2), "tensors", r["tensors"], "shards", r["shards"], "bytes", r["bytes"])
# VmHWM: this process's own peak resident set. (ru_maxrss would count the parent's memory too: Linux
# carries it over the fork and exec that started this child.)
print("hwm_kb", next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
shutil.rmtree(out)
"""


def peak_rss_70b() -> tuple[float, str]:
    from sparse_models import make_llama70b

    index = make_llama70b()
    out = OUT / "llama70b-81"
    r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), out=str(out), index=str(index))],
                       capture_output=True, text=True, check=True)
    kb = int(re.search(r"hwm_kb (\d+)", r.stdout)[1])
    return kb / 1024, r.stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-70b", action="store_true", help="skip the peak-RSS run on the sparse 70B shape")
    args = ap.parse_args(argv)
    src = args.model
    if not (src / "model.safetensors").is_file():
        print(f"{src} has no model.safetensors: run `tensor-surgery demo-models` first", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "out"
    size = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    model = open_model(src)
    spec = TransplantSpec(duplicate_layers=[10])
    plan = plan_transplant(model, None, spec)

    def ours(o: Path) -> None:
        write_transplant(plan, o)

    def cp(o: Path) -> None:
        subprocess.run(["cp", "-r", "--reflink=never", str(src), str(o)], check=True)

    def cp_fsync(o: Path) -> None:
        cp(o)
        fsync_tree(o)

    t = best_of({"ours": ours, "cp": cp, "cp+fsync": cp_fsync, "naive": lambda o: naive(src, o, 10)}, args.repeat, out)
    best = {k: min(v) for k, v in t.items()}
    t0 = time.perf_counter()
    build_recipe(model, None, spec)
    recipe_s = time.perf_counter() - t0
    model.close()
    ratio_cp = best["ours"] / best["cp"]
    ratio_naive = best["ours"] / best["naive"]
    ratio_fsync = best["ours"] / best["cp+fsync"]
    print(f"duplicate layer 10 of {src.name} ({size / 1e6:.1f} MB folder -> {plan.to_json()['bytes_to_write'] / 1e6:.1f} MB "
          f"of tensors); best of {args.repeat} after a warm-up, output dropped between runs")
    print(f"{'measure':52} {'best s':>8} {'median s':>9} {'vs cp':>6}")
    print("-" * 78)
    for name, label in [("ours", "ours: transplant.write_transplant (fsync + rename)"), ("cp", "cp -r --reflink=never"),
                        ("cp+fsync", "cp -r, then fsync every file (our durability)"), ("naive", "naive: safetensors load_file + dict + save_file")]:
        print(f"{label:52} {best[name]:8.3f} {statistics.median(t[name]):9.3f} {best[name] / best['cp']:6.2f}")
    print(f"{'recipe checksum (build_recipe, one read of the weights)':52} {recipe_s:8.3f}")
    rss = float("nan")
    if not args.no_70b:
        rss, line = peak_rss_70b()
        print(f"sparse Llama-3-70B shape, duplicate layer 40 (80 -> 81 layers): {line}; peak RSS {rss:.0f} MB "
              f"(this process, which held the naive run's whole model: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    print(f"targets: transplant_vs_cp <= 1.5 {'met' if ratio_cp <= 1.5 else 'NOT met'} ({ratio_cp:.2f}); "
          f"transplant_vs_naive <= 0.5 {'met' if ratio_naive <= 0.5 else 'NOT met'} ({ratio_naive:.2f}); "
          f"peak RSS < 1024 MB {'met' if rss < 1024 else 'NOT met'} ({rss:.0f})")
    print(f"RESULT transplant_vs_cp={ratio_cp:.3f} transplant_vs_naive={ratio_naive:.3f} peak_rss_mb={rss:.0f} "
          f"transplant_vs_cp_fsync={ratio_fsync:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
