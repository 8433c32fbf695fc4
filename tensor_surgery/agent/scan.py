"""Model-wide scans for the agent: every tensor's profile (norm, RMS, kurtosis, NaN/Inf, saturated
values, largest deviation), findings ranked by severity, and each role's trend across layers.

The scan streams over the tensors one at a time with progress, and reuses the workspace's cached
statistics; each tensor's profile is cached too (a few hundred bytes), so asking again is instant
even after the bulky pattern counts were evicted.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..store.layout import TYPE_GROUPS
from ..workspace import tensor_cache_key
from .registry import VIEW_PARAM, ToolContext, sig, tool
from .tensors import profile_stats

SEVERITY = {"critical": 3, "high": 2, "medium": 1, "info": 0}
ROBUST_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score (and 25% off the median, see _far)
MAX_SIGMA = 20.0  # a Gaussian tensor of a billion values peaks near 6 sigma; 20 is a planted or broken value
MIN_PEERS = 4  # a role needs this many layers before one of them can stand out


def tensor_profile(ctx: ToolContext, name: str, view: str = "base", progress=None) -> dict:
    reader = ctx.reader(name, view)
    ref = reader.ref

    def compute() -> dict:
        s = profile_stats(ctx, name, view, progress)
        meta = ctx.layout()[name]
        n = s.get("finite_count") or 0
        std, mean = s.get("std"), s.get("mean")
        extreme = None
        if s.get("min") is not None:
            extreme = max(abs(s["max"] - mean), abs(s["min"] - mean))
        return {
            "tensor": name, "layer": meta.layer_index, "block": meta.block, "type_group": meta.type_group,
            "role": meta.specific_type_key, "dtype": ref.dtype.name, "shape": list(ref.shape), "numel": ref.numel,
            "l2_norm": s.get("l2_norm"), "rms": (s["l2_norm"] / math.sqrt(n)) if n and s.get("l2_norm") is not None else None,
            "mean": mean, "std": std, "abs_max": s.get("abs_max"),
            "max_sigma": (extreme / std) if std and extreme is not None else None,
            "kurtosis": s.get("kurtosis"), "nan_count": s.get("nan_count", 0), "inf_count": s.get("inf_count", 0),
            "saturated_count": s.get("saturated_count", 0), "saturation_value": s.get("saturation_value"),
            "sparsity": s.get("sparsity"), "finite_count": n,
        }

    return ctx.workspace.cached(tensor_cache_key("agent-profile", reader), compute, lambda _: 1024)


def scan_profiles(ctx: ToolContext, view: str = "base", type_group: str | None = None) -> tuple[list[dict], list[dict]]:
    """Profiles of every decodable tensor (in canvas order), and the tensors skipped with why."""
    layout = ctx.layout()
    names = sorted(layout, key=lambda n: (layout[n].canvas_y, layout[n].canvas_x))
    if type_group:
        names = [n for n in names if layout[n].type_group == type_group]
    total = sum(ctx.model.tensors[n].nbytes for n in names) or 1
    done = 0
    profiles, skipped = [], []
    ctx.report("scanning tensors", 0, total)
    for name in names:
        ctx.check_cancelled()
        ref = ctx.model.tensors[name]
        if not ref.dtype.decodable:
            skipped.append({"tensor": name, "reason": f"{ref.dtype.name} values cannot be decoded"})
        elif ref.numel:
            per = ref.nbytes / ref.numel
            base = done

            def tick(elems, _total, base=base, per=per):
                ctx.check_cancelled()
                ctx.report("scanning tensors", base + int(elems * per), total)

            profiles.append(tensor_profile(ctx, name, view, tick))
        done += ref.nbytes
        ctx.report("scanning tensors", done, total)
    return profiles, skipped


def _far(ratio) -> bool:
    """Far enough from the role's median to matter: with few layers a tight spread makes tiny
    differences look like large z-scores, so a flag also needs 25% off the median."""
    return ratio is not None and np.isfinite(ratio) and (ratio >= 1.25 or ratio <= 0.8)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-scores (median and MAD); mean absolute deviation where the MAD is 0."""
    med = np.median(values)
    dev = np.abs(values - med)
    scale = 1.4826 * np.median(dev)
    if scale == 0:
        scale = 1.2533 * float(np.mean(dev))
    if scale == 0:
        return np.zeros_like(values)
    return (values - med) / scale


def role_groups(profiles: list[dict]) -> dict[tuple, list[dict]]:
    """Tensors of the same role across layers (same stack and specific type key), by layer."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in profiles:
        if p["layer"] >= 0 and "*" in p["role"]:
            groups[(p["block"], p["role"])].append(p)
    for members in groups.values():
        members.sort(key=lambda p: p["layer"])
    return groups


def layer_z_scores(profiles: list[dict]) -> dict[str, dict]:
    """Per tensor: z-scores of its RMS and kurtosis among its role's layers (roles with enough layers)."""
    out: dict[str, dict] = {}
    for members in role_groups(profiles).values():
        if len(members) < MIN_PEERS:
            continue
        rms = np.array([p["rms"] if p["rms"] is not None else np.nan for p in members])
        kurt = np.array([p["kurtosis"] if p["kurtosis"] is not None else np.nan for p in members])
        ok = np.isfinite(rms)
        z_rms = np.full(len(members), np.nan)
        if ok.sum() >= MIN_PEERS:
            z_rms[ok] = robust_z(rms[ok])
        z_classic = np.full(len(members), np.nan)
        if ok.sum() >= 2 and np.std(rms[ok]) > 0:
            z_classic[ok] = (rms[ok] - rms[ok].mean()) / rms[ok].std()
        okk = np.isfinite(kurt)
        z_k = np.full(len(members), np.nan)
        if okk.sum() >= MIN_PEERS:
            # kurtosis is heavy-tailed itself: compare on a log scale
            z_k[okk] = robust_z(np.log1p(np.maximum(kurt[okk], 0.0)))
        med = float(np.median(rms[ok])) if ok.any() else 0.0
        ratio = rms / med if med > 0 else np.full(len(members), np.nan)
        for p, a, b, c, r in zip(members, z_rms, z_classic, z_k, ratio):
            out[p["tensor"]] = {"rms_robust_z": a, "rms_z": b, "kurtosis_robust_z": c, "rms_vs_median": r}
    return out


def findings_for(profiles: list[dict], zs: dict[str, dict]) -> list[dict]:
    found = []

    def add(p, severity, kind, detail, score):
        found.append({"tensor": p["tensor"], "severity": severity, "kind": kind, "detail": detail,
                      "score": sig(score, 4), "layer": p["layer"], "type_group": p["type_group"]})

    for p in profiles:
        name_numel = p["numel"]
        if p["nan_count"]:
            add(p, "critical", "nan", f"{p['nan_count']:,} NaN value(s) of {name_numel:,}", p["nan_count"] / name_numel)
        if p["inf_count"]:
            add(p, "critical", "inf", f"{p['inf_count']:,} infinite value(s) of {name_numel:,}", p["inf_count"] / name_numel)
        if p["saturated_count"]:
            add(p, "high", "saturated",
                f"{p['saturated_count']:,} value(s) sit at the {p['dtype']} limit ±{sig(p['saturation_value'], 4)}",
                p["saturated_count"] / name_numel)
        if p["std"] == 0 and name_numel > 1 and p["type_group"] != "norm":
            if p["abs_max"] == 0:
                add(p, "high", "all_zero", "every value is zero", 1.0)
            else:
                add(p, "medium", "constant", f"every value is {sig(p['mean'])}", 1.0)
        if p["max_sigma"] is not None and p["max_sigma"] >= MAX_SIGMA:
            add(p, "medium", "extreme_value",
                f"largest deviation is {sig(p['max_sigma'], 3)} standard deviations from the mean "
                f"(|max| {sig(p['abs_max'])}, std {sig(p['std'])})", p["max_sigma"] / MAX_SIGMA)
        z = zs.get(p["tensor"])
        if z:
            zr, ratio = z["rms_robust_z"], z["rms_vs_median"]
            if np.isfinite(zr) and abs(zr) >= ROBUST_Z and _far(ratio):
                add(p, "high" if abs(zr) >= 10 else "medium", "layer_norm_outlier",
                    f"RMS {sig(p['rms'])} is {sig(ratio, 3)}x the median of role {p['role']} across layers "
                    f"(robust z {sig(zr, 3)})",
                    abs(zr) / ROBUST_Z)
            zk = z["kurtosis_robust_z"]
            if np.isfinite(zk) and zk >= ROBUST_Z and (p["kurtosis"] or 0) > 3:
                add(p, "medium", "heavy_tails",
                    f"excess kurtosis {sig(p['kurtosis'], 4)} is far above the other layers of role {p['role']} "
                    f"(robust z {sig(zk, 3)} on a log scale)", zk / ROBUST_Z)
    found.sort(key=lambda f: (-SEVERITY[f["severity"]], -(f["score"] or 0)))
    return found


def layer_trends(profiles: list[dict], zs: dict[str, dict]) -> list[dict]:
    trends = []
    for (block, role), members in role_groups(profiles).items():
        pts = [(p["layer"], p["rms"]) for p in members if p["rms"] is not None]
        if len(pts) < 3:
            continue
        x = np.array([a for a, _ in pts], dtype=np.float64)
        y = np.array([b for _, b in pts], dtype=np.float64)
        slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
        r = float(np.corrcoef(x, y)[0, 1]) if np.std(y) > 0 and np.std(x) > 0 else 0.0
        outliers = []
        for p in members:
            z = zs.get(p["tensor"], {}).get("rms_robust_z")
            if z is not None and np.isfinite(z) and abs(z) >= ROBUST_Z and _far(zs[p["tensor"]]["rms_vs_median"]):
                outliers.append({"tensor": p["tensor"], "layer": p["layer"], "rms": sig(p["rms"]), "robust_z": sig(z, 3)})
        i_min, i_max = int(np.argmin(y)), int(np.argmax(y))
        mean = float(y.mean())
        trends.append({
            "role": role, "block": block, "type_group": members[0]["type_group"], "layers": len(pts),
            "rms_first": sig(y[0]), "rms_last": sig(y[-1]), "rms_mean": sig(mean),
            "rms_min": {"layer": int(x[i_min]), "rms": sig(y[i_min])},
            "rms_max": {"layer": int(x[i_max]), "rms": sig(y[i_max])},
            "relative_slope_per_layer": sig(slope / mean, 3) if mean else None,
            "correlation_with_depth": sig(r, 3), "outliers": outliers,
        })
    trends.sort(key=lambda t: (-max((abs(o["robust_z"]) for o in t["outliers"]), default=0.0),
                               -abs(t["correlation_with_depth"] or 0)))
    return trends


def _top(profiles, key, n):
    ranked = sorted((p for p in profiles if p[key] is not None), key=lambda p: -p[key])[:n]
    return [{"tensor": p["tensor"], key: sig(p[key], 4), "layer": p["layer"]} for p in ranked]


@tool(
    "Scan every tensor of the model (or one type group) for anomalies: NaN/Inf values, values "
    "saturated at the dtype's limit, all-zero or constant tensors, extreme values (in standard "
    "deviations), and layers whose RMS or kurtosis stands out from the same role in the other "
    "layers (robust z-scores), plus each role's trend with depth. Findings are ranked by severity.",
    {"type_group": {"type": "string", "enum": list(TYPE_GROUPS)},
     "top": {"type": "integer", "minimum": 1, "maximum": 100, "default": 25,
             "description": "how many findings to return"},
     "view": VIEW_PARAM},
)
def scan_outliers(ctx: ToolContext, type_group: str | None = None, top: int = 25, view: str = "base") -> dict:
    profiles, skipped = scan_profiles(ctx, view, type_group)
    zs = layer_z_scores(profiles)
    found = findings_for(profiles, zs)
    by_severity: dict[str, int] = {}
    for f in found:
        by_severity[f["severity"]] = by_severity.get(f["severity"], 0) + 1
    trends = layer_trends(profiles, zs)
    return {
        "model": ctx.model.name, "view": view, "type_group": type_group, "tensors_scanned": len(profiles),
        "skipped": skipped[:10], "skipped_total": len(skipped),
        "findings_total": len(found), "findings_by_severity": by_severity, "findings": found[:top],
        "highest_kurtosis": _top(profiles, "kurtosis", 8),
        "largest_max_sigma": _top(profiles, "max_sigma", 8),
        "layer_trends": trends[:12], "layer_trends_total": len(trends),
        "method": "kurtosis is excess (normal = 0); max_sigma = largest |value - mean| / std; robust z = "
                  "(x - median) / (1.4826 MAD) over the same role's layers; an RMS is flagged at |z| >= 3.5 and 25% "
                  "or more off the median",
    }


def _short_role(role: str) -> str:
    return role.split("*.", 1)[1] if "*." in role else role


@tool(
    "Per-layer summary. Without `layer`: one row per layer with its parameter count and the RMS of "
    "each role (q_proj, mlp.down_proj, ...), plus its largest kurtosis. With `layer`: every tensor "
    "of that layer with RMS, L2 norm, std, kurtosis, max_sigma, NaN/Inf/saturated counts and its "
    "z-scores against the same role in the other layers.",
    {"layer": {"type": "integer", "minimum": -1}, "view": VIEW_PARAM},
)
def layer_summary(ctx: ToolContext, layer: int | None = None, view: str = "base") -> dict:
    profiles, skipped = scan_profiles(ctx, view)
    zs = layer_z_scores(profiles)
    if layer is not None:
        rows = [p for p in profiles if p["layer"] == layer]
        if not rows:
            layers = sorted({p["layer"] for p in profiles})
            from ..errors import InvalidRequest

            raise InvalidRequest(f"no tensors in layer {layer}; layers run from {layers[0]} to {layers[-1]}",
                                 field="layer")
        return {"layer": layer, "view": view, "tensors": [{
            "tensor": p["tensor"], "type_group": p["type_group"], "shape": p["shape"], "dtype": p["dtype"],
            "rms": sig(p["rms"]), "l2_norm": sig(p["l2_norm"]), "std": sig(p["std"]),
            "kurtosis": sig(p["kurtosis"], 4), "max_sigma": sig(p["max_sigma"], 4),
            "nan_count": p["nan_count"], "inf_count": p["inf_count"], "saturated_count": p["saturated_count"],
            "rms_robust_z_vs_other_layers": sig(zs.get(p["tensor"], {}).get("rms_robust_z"), 3),
            "kurtosis_robust_z_vs_other_layers": sig(zs.get(p["tensor"], {}).get("kurtosis_robust_z"), 3),
        } for p in rows]}
    by_layer: dict[tuple, list[dict]] = defaultdict(list)
    for p in profiles:
        if p["layer"] >= 0 and "*" in p["role"]:
            by_layer[(p["block"] or "", p["layer"])].append(p)
    keys = sorted(by_layer)
    rows = []
    for block, lay in keys[:200]:
        members = by_layer[(block, lay)]
        kurts = [p["kurtosis"] for p in members if p["kurtosis"] is not None]
        row = {"layer": lay, "parameters": sum(p["numel"] for p in members),
               "rms": {_short_role(p["role"]): sig(p["rms"], 4) for p in members},
               "max_kurtosis": sig(max(kurts), 4) if kurts else None,
               "nonfinite": sum(p["nan_count"] + p["inf_count"] for p in members)}
        if block:
            row["block"] = block
        rows.append(row)
    outside = [p for p in profiles if not (p["layer"] >= 0 and "*" in p["role"])]
    return {
        "view": view, "layers": rows, "layers_total": len(keys), "truncated": len(keys) > 200,
        "outside_layers": [{"tensor": p["tensor"], "type_group": p["type_group"], "rms": sig(p["rms"], 4),
                            "kurtosis": sig(p["kurtosis"], 4)} for p in outside[:20]],
        "skipped_total": len(skipped),
    }
