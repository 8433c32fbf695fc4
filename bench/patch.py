"""Export / patch benchmark: our writer against `cp` of the same files, in the same run.

    python bench/patch.py [--model DIR] [--repeat N]

- export: the SmolLM2-135M demo model folder (269 MB BF16 + config/tokenizer) exported with a
          small patch applied (the " Paris" embedding row zeroed, 1,152 bytes), by
          `writer.export_model` (kernel copy, patched runs written over it, fsync, rename).
          References: `cp -r --reflink=never` of the same folder, `shutil.copyfile` of each file,
          and `cp` followed by an fsync of every copied file (the same durability as ours).
          Best of N after a warm-up; the output is deleted (and `sync` run) between runs, untimed.
- apply:  a patch changing ~10% of a 50 MB region of the embedding (64-byte entries every 640
          bytes), applied the way `patch apply --out` does it: parse the .hexpatch, verify it and
          merge it into byte runs (`runs_for_patches`), export. Throughput in MB/s of patch data
          (the bytes the patch changes).
- verify: `verify_patches` of the same (parsed) patch against the model, MB/s of patch data.

Ends with `RESULT export_vs_cp=... export_vs_cp_fsync=... apply_mb_s=... verify_mb_s=...
parse_mb_s=... sign_1mb_ms=... verify_signature_1mb_ms=... sign_vs_parse=... verify_signature_vs_parse=...`
(export_vs_cp = ours / cp, lower is better, target <= 1.3; export_vs_cp_fsync =
ours / (cp then fsync of every file): the same durability as ours; sign/verify_signature: Ed25519
signing and checking a 1 MB cut of the same .hexpatch, against parsing that file; parse_mb_s = MB of .hexpatch
file parsed per second, target >= 50).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tensor_surgery.store import open_model  # noqa: E402
from tensor_surgery.surgery import hexpatch as hp  # noqa: E402
from tensor_surgery.surgery import signing  # noqa: E402
from tensor_surgery.surgery.apply import runs_for_patches, verify_patches  # noqa: E402
from tensor_surgery.surgery.writer import export_model  # noqa: E402

SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
OUT = Path(__file__).resolve().parent / "out" / "patch-bench"
EMB = "model.embed_tokens.weight"
PARIS = 7042  # token id of " Paris" in the SmolLM2 tokenizer (any row would do)


def drop(path: Path, settle: float = 0.3) -> None:
    """Delete an output, flush the disk, and give the device a moment (ext4 here mounts with
    `discard`: freeing 270 MB sends TRIMs that would otherwise slow the next timed run)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.sync()
    time.sleep(settle)


def fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def best_of(methods: dict, repeat: int, out: Path) -> dict[str, list[float]]:
    """Each method once as a warm-up, then `repeat` rounds with the methods interleaved."""
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


def row_patch(model) -> tuple[hp.HexPatch, dict]:
    ref = model.tensor(EMB)
    row = ref.nbytes // ref.shape[0]
    raw = ref.raw()
    orig = bytes(raw[PARIS * row : (PARIS + 1) * row])
    patch = hp.HexPatch([hp.PatchEntry(EMB, PARIS * row, orig, bytes(row), ref.dtype.name, ref.shape)], "zero a row")
    return patch, runs_for_patches(model, [("row", patch)])


def region_patch(model, region: int = 50_000_000, every: int = 640, width: int = 64) -> bytes:
    """A .hexpatch (as file bytes) changing `width` of every `every` bytes of the first `region` bytes."""
    ref = model.tensor(EMB)
    raw = ref.raw()
    region = min(region, ref.nbytes)
    entries = []
    for off in range(0, region - width, every):
        orig = bytes(raw[off : off + width])
        entries.append(hp.PatchEntry(EMB, off, orig, bytes(b ^ 0x01 for b in orig), ref.dtype.name, ref.shape))
    return hp.HexPatch(entries, f"~{width / every:.0%} of {region / 1e6:.0f} MB").dumps().encode()


def signing_times(patch: hp.HexPatch, repeat: int) -> dict:
    """Best-of times to parse, sign and check the signature of the first ~1 MB of `patch` (the
    parse of the same file is the same-run reference). The key is made in memory."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    per_entry = len(patch.dumps()) / len(patch.entries)
    cut = hp.HexPatch(patch.entries[: max(1, int(1e6 / per_entry))], "1 MB of the region patch")
    key = Ed25519PrivateKey.generate()
    signed = signing.sign(cut, key, "bench")
    data = signed.dumps().encode()
    trusted = {signed.extra[signing.BLOCK]["fingerprint"]: "bench"}
    times: dict[str, list[float]] = {"parse": [], "sign": [], "verify": []}
    for _ in range(repeat + 1):
        gc.collect()
        t0 = time.perf_counter()
        parsed = hp.loads(data, "signed.hexpatch")
        t1 = time.perf_counter()
        signing.sign(cut, key, "bench")
        t2 = time.perf_counter()
        status = signing.check(parsed, trusted)
        t3 = time.perf_counter()
        assert status.status == "trusted", status
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(dt)
    return {"mb": len(data) / 1e6, "entries": len(cut.entries), **{k: min(v[1:] or v) for k, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    src = args.model
    if not (src / "model.safetensors").is_file():
        print(f"{src} has no model.safetensors: run `tensor-surgery demo-models` first", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "out"
    files = sorted(p for p in src.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)

    model = open_model(src)
    _, runs = row_patch(model)

    def ours(o: Path) -> None:
        export_model(model, o, runs)

    def cp(o: Path) -> None:
        subprocess.run(["cp", "-r", "--reflink=never", str(src), str(o)], check=True)

    def copyfile(o: Path) -> None:
        o.mkdir()
        for p in files:
            shutil.copyfile(p, o / p.name)

    def cp_fsync(o: Path) -> None:
        cp(o)
        fsync_tree(o)

    t = best_of({"ours": ours, "cp": cp, "copyfile": copyfile, "cp+fsync": cp_fsync}, args.repeat, out)
    best = {k: min(v) for k, v in t.items()}
    ratio = best["ours"] / best["cp"]
    ratio_fsync = best["ours"] / best["cp+fsync"]

    # -- apply and verify throughput -------------------------------------------------------------
    data = region_patch(model)
    patch = hp.loads(data, "region.hexpatch")
    patch_mb = patch.changed_bytes / 1e6
    phases: dict[str, list[float]] = {"parse": [], "verify+runs": [], "export": [], "verify": []}
    for rnd in range(args.repeat + 1):
        drop(out)
        gc.collect()
        t0 = time.perf_counter()
        p = hp.loads(data, "region.hexpatch")
        t1 = time.perf_counter()
        r = runs_for_patches(model, [("region", p)])
        t2 = time.perf_counter()
        export_model(model, out, r)
        t3 = time.perf_counter()
        _, report = verify_patches(model, [("region", p)])
        t4 = time.perf_counter()
        assert report[0]["ok"]
        if rnd:  # the first round is the warm-up
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k].append(dt)
    drop(out)
    model.close()
    ph = {k: min(v) for k, v in phases.items()}
    sig = signing_times(patch, args.repeat)
    apply_s = ph["parse"] + ph["verify+runs"] + ph["export"]
    apply_mb_s = patch_mb / apply_s
    verify_mb_s = patch_mb / ph["verify"]

    mb = size / 1e6
    print(f"export of {src.name} ({len(files)} files, {mb:.1f} MB) with a {sum(len(d) for rs in runs.values() for _, d in rs):,}"
          f"-byte patch; best of {args.repeat} after a warm-up, output dropped between runs")
    print(f"{'measure':44} {'best s':>8} {'median s':>9} {'GB/s':>6} {'vs cp':>6}")
    print("-" * 78)
    for name, label in [("ours", "ours: writer.export_model (fsync + rename)"), ("cp", "cp -r --reflink=never"),
                        ("copyfile", "shutil.copyfile per file"), ("cp+fsync", "cp -r, then fsync every file")]:
        print(f"{label:44} {best[name]:8.3f} {statistics.median(t[name]):9.3f} {size / best[name] / 1e9:6.2f} "
              f"{best[name] / best['cp']:6.2f}")
    print()
    print(f"patch: {len(patch.entries):,} entries, {patch_mb:.2f} MB of patch data over 50 MB "
          f"of {EMB} ({len(data) / 1e6:.1f} MB .hexpatch file)")
    print(f"{'phase':44} {'best s':>8} {'MB/s':>9}")
    print("-" * 78)
    for k in ("parse", "verify+runs", "export"):
        print(f"apply: {k:37} {ph[k]:8.3f} {patch_mb / ph[k]:9.1f}")
    print(f"{'apply total (parse + verify/runs + export)':44} {apply_s:8.3f} {apply_mb_s:9.1f}")
    print(f"{'verify (verify_patches, parsed patch)':44} {ph['verify']:8.3f} {verify_mb_s:9.1f}")
    parse_mb_s = len(data) / 1e6 / ph["parse"]
    print(f"{'parse (hexpatch.loads), MB of .hexpatch file':44} {ph['parse']:8.3f} {parse_mb_s:9.1f}")
    print(f"signed patches, a {sig['mb']:.2f} MB .hexpatch ({sig['entries']:,} entries): parse {sig['parse'] * 1e3:.1f} ms, "
          f"sign {sig['sign'] * 1e3:.1f} ms ({sig['sign'] / sig['parse']:.2f}x parse), "
          f"verify the signature {sig['verify'] * 1e3:.1f} ms ({sig['verify'] / sig['parse']:.2f}x parse)")
    print(f"target export_vs_cp <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'} ({ratio:.2f}); "
          f"vs cp+fsync (same durability): {ratio_fsync:.2f}; "
          f"target parse >= 50 MB/s: {'met' if parse_mb_s >= 50 else 'NOT met'} ({parse_mb_s:.0f})")
    print(f"RESULT export_vs_cp={ratio:.3f} export_vs_cp_fsync={ratio_fsync:.3f} apply_mb_s={apply_mb_s:.1f} "
          f"verify_mb_s={verify_mb_s:.1f} parse_mb_s={parse_mb_s:.1f} sign_1mb_ms={sig['sign'] * 1e3:.1f} "
          f"verify_signature_1mb_ms={sig['verify'] * 1e3:.1f} sign_vs_parse={sig['sign'] / sig['parse']:.2f} "
          f"verify_signature_vs_parse={sig['verify'] / sig['parse']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
