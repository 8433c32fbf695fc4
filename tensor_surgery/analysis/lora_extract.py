"""A fine-tune's deltas as a PEFT LoRA adapter: the truncated SVD of each changed 2-D weight.

For a linear layer's weight W (out x in) the delta D = W_model - W_base is factored as
D ~ U_r S_r V_r^T, and written as PEFT's `lora_B = U_r sqrt(S_r)` (out x r) and
`lora_A = sqrt(S_r) V_r^T` (r x in), with lora_alpha = r so PEFT's scaling is 1 and
W_base + B @ A is the best rank-r approximation of W_model (Eckart-Young). What the truncation
drops is reported per tensor as the discarded singular values' energy, sum_{i>r} s_i^2, and
relative to the delta, sqrt(sum_{i>r} s_i^2) / ||D||_F.

Only 2-D weights of linear layers can be captured: embeddings (PEFT's embedding LoRA has other
keys and semantics), norms and biases (1-D), tensors whose shape or dtype changed, and tensors only
one model holds are reported as not captured, with their delta's size, so the overall error says
how much of the fine-tune the adapter leaves out.

Matrices up to RANK_EXACT_MAX_ELEMENTS get an exact SVD; larger ones a randomized one (Halko et
al., 4 power iterations) whose discarded energy is still exact: ||D||_F^2 minus the kept s_i^2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest
from ..store import Model
from ..store.layout import infer_layout
from .diff import RANK_EXACT_MAX_ELEMENTS, read_delta

NOT_LORA_GROUPS = ("embedding", "norm")
MAX_LORA_RANK = 4096


def lora_target(name: str, shape: tuple[int, ...], type_group: str | None) -> str | None:
    """The module a weight belongs to, if a LoRA can carry its delta; else None."""
    if len(shape) != 2 or not name.endswith(".weight") or type_group in NOT_LORA_GROUPS:
        return None
    return name[: -len(".weight")]


def _truncated_svd(d: np.ndarray, r: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(U_r, s_r, V_r^T, discarded energy). Exact: the discarded s_i^2 summed (||D||^2 - kept would
    lose it to cancellation, a floor of ~1e-8 relative); randomized: ||D||^2 - kept, the only way."""
    if d.size <= RANK_EXACT_MAX_ELEMENTS:
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        return u[:, :r], s[:r], vt[:r], float(np.sum(s[r:] ** 2))
    rng = np.random.default_rng(seed)
    ell = min(r + 10, *d.shape)
    q, _ = np.linalg.qr(d @ rng.standard_normal((d.shape[1], ell)))
    for _ in range(4):
        z, _ = np.linalg.qr(d.T @ q)
        q, _ = np.linalg.qr(d @ z)
    ub, s, vt = np.linalg.svd(q.T @ d, full_matrices=False)
    s, kept = s[:r], float(np.sum(s[:r] ** 2))
    return (q @ ub)[:, :r], s, vt[:r], max(float(np.sum(d * d)) - kept, 0.0)


def extract_lora(base: Model, model: Model, diff_rows: list[dict], rank: int, out: str | os.PathLike,
                 *, progress=None) -> dict:
    """Write the changed linear weights' rank-`rank` deltas as a PEFT adapter folder at `out`
    (new; written under a hidden temporary name beside it and renamed, so a kill leaves none)."""
    from safetensors.numpy import save_file

    if not 1 <= rank <= MAX_LORA_RANK:
        raise InvalidRequest(f"--extract-lora RANK must be between 1 and {MAX_LORA_RANK}, got {rank}", field="rank")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise InvalidRequest(f"{out} already exists; choose a new folder for the adapter", field="out", path=str(out))
    layout = infer_layout(list(model.tensors), [t.shape for t in model.tensors.values()])
    moved = [r for r in diff_rows if r["status"] not in ("unchanged",)]
    tensors: dict[str, np.ndarray] = {}
    captured, not_captured = [], []
    rank_pattern: dict[str, int] = {}
    total = sum(model.tensors[r["name"]].nbytes for r in moved if r["name"] in model.tensors)
    done = 0
    for r in moved:
        name = r["name"]
        delta_energy = (r["delta_norm"] or 0.0) ** 2
        meta = layout.get(name)
        module = None
        if r["status"] == "changed":
            module = lora_target(name, model.tensors[name].shape, meta.type_group if meta else None)
        if module is None:
            why = {"only_in_base": "only in the base", "only_in_model": "only in the model",
                   "shape_changed": "its shape changed", "not_comparable": "its values cannot be compared"}.get(
                r["status"], "not the weight of a linear layer (LoRA carries 2-D linear weights only)")
            not_captured.append({"name": name, "status": r["status"], "reason": why,
                                 "delta_energy": delta_energy if r["status"] == "changed" else None})
            continue
        d = read_delta(base.tensors[name], model.tensors[name])
        k = min(rank, *d.shape)
        u, s, vt, discarded = _truncated_svd(d, k)
        energy = float(np.sum(d * d))
        root = np.sqrt(s)
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray((root[:, None] * vt).astype(np.float32))
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray((u * root[None, :]).astype(np.float32))
        if k != rank:
            rank_pattern[module] = k
        captured.append({
            "name": name, "module": module, "rank": k, "delta_energy": energy,
            "discarded_energy": discarded,
            "relative_error": math.sqrt(discarded / energy) if energy > 0 else 0.0,
            "kept_singular_values": [float(v) for v in s[:8]],
        })
        done += model.tensors[name].nbytes
        if progress:
            progress(done, total)
    if not captured:
        raise InvalidRequest("no changed 2-D linear weight to capture: the adapter would be empty "
                             f"({len(not_captured)} changed tensor(s), none LoRA-able)", field="extract_lora")
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": str(Path(base.path).parent),
        "r": rank,
        "lora_alpha": rank,  # scaling alpha / r = 1: B @ A is the delta itself
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "target_modules": sorted(c["module"] for c in captured),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    delta_total = sum(c["delta_energy"] for c in captured) + sum(n["delta_energy"] or 0.0 for n in not_captured)
    discarded_total = sum(c["discarded_energy"] for c in captured)
    uncaptured_total = sum(n["delta_energy"] or 0.0 for n in not_captured)
    captured_total = sum(c["delta_energy"] for c in captured)
    report = {
        "path": str(out), "rank": rank, "captured": captured, "not_captured": not_captured,
        "discarded_energy": discarded_total,
        # of the captured tensors' deltas, how much the truncation drops (relative Frobenius)
        "relative_error_captured": math.sqrt(discarded_total / captured_total) if captured_total else 0.0,
        # of the whole fine-tune's delta: truncation plus what no LoRA can carry
        "relative_error_overall": math.sqrt((discarded_total + uncaptured_total) / delta_total) if delta_total else 0.0,
        "uncaptured_unmeasured": [n["name"] for n in not_captured if n["delta_energy"] is None],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        (tmp / "extraction_report.json").write_text(json.dumps(report, indent=2))
        for f in tmp.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(tmp, out)  # fails (instead of merging) if `out` appeared meanwhile
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
