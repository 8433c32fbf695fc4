"""Model-diff benchmark: `analysis.diff.diff_models` against a naive script, in the same process.

    python bench/diff.py [--base PATH] [--repeat N]

The pair: the SmolLM2-135M demo model (BF16, 272 tensors, 269 MB) and a fine-tune of it written
once into bench/out/smol-ft (three weights changed: a rank-2 and a rank-4 delta, one scaled by
1.25), so both read the same 538 MB.
- ours:  `diff_models(base, ft)` (streaming, bit-pattern counts for the unchanged bulk, an SVD per
         changed matrix for its delta rank), single-threaded.
- naive: what one would write with the libraries: load each tensor pair with `safetensors`
         (torch, as numpy has no BF16), float64 numpy norms, cosine, max |B-A|, changed count, and
         `np.linalg.matrix_rank` of each changed matrix's delta.
Also the LoRA extraction (rank 8) of the same pair.

Ends with `RESULT diff_vs_naive=... diff_s=... naive_s=... diff_gbps=... lora_s=... load=...`
(diff_vs_naive = ours / naive, lower is better; load: the 1-minute load average, which tells a
busy machine from a slow method).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCH_OUT = Path(__file__).resolve().parent / "out"

from tensor_surgery.analysis.diff import diff_models  # noqa: E402
from tensor_surgery.analysis.lora_extract import extract_lora  # noqa: E402
from tensor_surgery.store import open_model  # noqa: E402

CHANGED = {"model.layers.3.self_attn.q_proj.weight": 2, "model.layers.20.self_attn.v_proj.weight": 4,
           "model.layers.10.mlp.down_proj.weight": None}


def make_fine_tune(base_dir: Path, out_dir: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    target = out_dir / "model.safetensors"
    if target.is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t = load_file(str(base_dir / "model.safetensors"))
    rng = np.random.default_rng(0)
    for name, r in CHANGED.items():
        w = t[name].double()
        if r is None:
            t[name] = (w * 1.25).to(torch.bfloat16)
        else:
            d = rng.standard_normal((w.shape[0], r)) @ rng.standard_normal((r, w.shape[1]))
            t[name] = (w + torch.from_numpy(0.5 * float(w.norm()) * d / np.linalg.norm(d))).to(torch.bfloat16)
    save_file(t, str(target) + ".tmp", metadata={"format": "pt"})
    os.replace(str(target) + ".tmp", target)
    shutil.copy(base_dir / "config.json", out_dir / "config.json")
    return out_dir


def naive(base_file: Path, ft_file: Path) -> dict:
    from safetensors import safe_open

    rows = {}
    with safe_open(str(base_file), "pt") as fa, safe_open(str(ft_file), "pt") as fb:
        for name in fb.keys():
            a = fa.get_tensor(name).double().numpy()
            b = fb.get_tensor(name).double().numpy()
            d = b - a
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            changed = int(np.count_nonzero(a != b))
            row = {"relative_change": np.linalg.norm(d) / na, "cosine": float(np.sum(a * b)) / (na * nb),
                   "max_abs_change": float(np.max(np.abs(d))), "changed": changed}
            if changed and d.ndim == 2:
                row["rank"] = int(np.linalg.matrix_rank(d))
            rows[name] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=REPO / "data" / "models" / "SmolLM2-135M-Instruct")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    ft_dir = make_fine_tune(args.base, BENCH_OUT / "smol-ft")
    base_file, ft_file = args.base / "model.safetensors", ft_dir / "model.safetensors"
    nbytes = base_file.stat().st_size + ft_file.stat().st_size

    ours_t, naive_t = [], []
    for _ in range(args.repeat):  # interleaved, so a change of machine load hits both alike
        t = time.perf_counter()
        with open_model(args.base) as a, open_model(ft_dir) as b:
            result = diff_models(a, b)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = naive(base_file, ft_file)
        naive_t.append(time.perf_counter() - t)
    rows = {r["name"]: r for r in result["rows"]}
    changed = {n for n, r in rows.items() if r["status"] == "changed"}
    assert changed == set(CHANGED) == {n for n, r in ref.items() if r["changed"]}, changed
    for n in changed:
        assert abs(rows[n]["relative_change"] - ref[n]["relative_change"]) <= 1e-9 * ref[n]["relative_change"]

    with open_model(args.base) as a, open_model(ft_dir) as b, tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = extract_lora(a, b, result["rows"], 8, Path(tmp) / "lora")
        lora_s = time.perf_counter() - t

    ours, ref_s = statistics.median(ours_t), statistics.median(naive_t)
    print(f"pair: {args.base.name} vs a fine-tune ({len(rows)} tensors, {nbytes / 1e6:.0f} MB read per diff)")
    print(f"ours  diff_models:  {ours:.2f} s  ({nbytes / ours / 1e9:.2f} GB/s)  runs {[round(x, 2) for x in ours_t]}")
    print(f"naive safetensors+numpy: {ref_s:.2f} s  runs {[round(x, 2) for x in naive_t]}")
    print(f"delta ranks: " + ", ".join(f"{n.split('.')[2]}.{n.split('.')[-2]}={rows[n]['delta_rank']}" for n in sorted(changed)))
    print(f"LoRA rank 8: {lora_s:.2f} s, relative error {report['relative_error_overall']:.3e}")
    print(f"RESULT diff_vs_naive={ours / ref_s:.3f} diff_s={ours:.3f} naive_s={ref_s:.3f} "
          f"diff_gbps={nbytes / ours / 1e9:.3f} lora_s={lora_s:.3f} load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
