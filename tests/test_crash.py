"""SIGKILL at random moments: during an export the final name holds nothing or the complete,
byte-correct output; during `patch apply --in-place` the model can always be rolled forward to
exactly the patched bytes or back to exactly the original ones.

The child processes are slowed down (small copy chunks and a sleep per kernel copy, a sleep per
in-place write) so that a kill lands inside the write most of the time."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tensor_surgery.cli import main
from tensor_surgery.store import open_model
from tensor_surgery.surgery import hexpatch as hp
from tensor_surgery.surgery.apply import INTENT_NAME
from tensor_surgery.surgery.writer import export_model

from .conftest import REPO
from .surgery_helpers import add_side_files, expected_bytes, runs_of, sha256, tree_digest, write_patch

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CRASH_SEED", "1234"))
TENSORS = 8
TENSOR_BYTES = 6 << 20  # 48 MB of random data in all

EXPORT_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tensor_surgery.store import open_model
from tensor_surgery.surgery import hexpatch as hp
from tensor_surgery.surgery import writer
from tensor_surgery.surgery.apply import runs_for_patches

writer.COPY_CHUNK = 1 << 20
_cfr = os.copy_file_range
def slow_cfr(*a):
    time.sleep(0.012)
    return _cfr(*a)
os.copy_file_range = slow_cfr
model_path, patch_path, out, overwrite = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
m = open_model(model_path)
patch = hp.loads(open(patch_path, "rb").read(), patch_path)
runs = runs_for_patches(m, [(patch_path, patch)])
print("start", flush=True)
writer.export_model(m, out, runs, overwrite=overwrite)
print("done", flush=True)
"""

INPLACE_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
_pw = os.pwrite
def slow_pwrite(fd, data, off):
    time.sleep(0.003)
    return _pw(fd, data, off)
os.pwrite = slow_pwrite
from tensor_surgery.cli import main
sys.argv = ["tensor-surgery", "patch", "apply", sys.argv[2], sys.argv[3], "--in-place"]
print("start", flush=True)
main()
"""


def write_random_model(folder: Path, seed: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": np.frombuffer(rng.bytes(TENSOR_BYTES), np.uint8).reshape(-1, 1024)
               for i in range(TENSORS)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    add_side_files(folder)
    return folder / "model.safetensors"


def many_entries(model: Path, count: int, seed: int) -> list[hp.PatchEntry]:
    """`count` 64-byte entries spread over every tensor (inverted bytes: always a change)."""
    rng = random.Random(seed)
    entries = []
    with open_model(model) as m:
        names = sorted(m.tensors)
        per = count // len(names)
        for name in names:
            raw = m.tensor(name).raw()
            step = m.tensor(name).nbytes // per
            for k in range(per):
                off = k * step + rng.randrange(0, step - 64)
                orig = bytes(raw[off : off + 64])
                entries.append(hp.PatchEntry(name, off, orig, bytes(b ^ 0xFF for b in orig), "U8"))
    return entries


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    model = write_random_model(root / "model", SEED)
    entries = many_entries(model, 256, SEED)
    patch = write_patch(root / "p.hexpatch", entries, "256 entries")
    old_patch = write_patch(root / "old.hexpatch", entries[:3], "3 entries")
    refs = {}
    with open_model(model) as m:
        for kind, p, out in [("new", entries, root / "ref-new"), ("old", entries[:3], root / "ref-old")]:
            export_model(m, out, runs_of(p))
            refs[kind] = tree_digest(out)
            refs[kind + "-file"] = sha256(out / "model.safetensors")
    return {"root": root, "model": model, "patch": patch, "old_patch": old_patch, "entries": entries, "refs": refs}


def spawn(script: str, *args) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", script, str(REPO), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start", p.stderr.read()
    return p


def kill_after(p: subprocess.Popen, delay: float) -> bool:
    """SIGKILL `p` after `delay` seconds; True if it was still running then."""
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def test_sigkill_during_export(big):
    """Six kills at random moments, folder and single-file outputs, fresh and overwriting."""
    rng = random.Random(SEED)
    root, refs = big["root"], big["refs"]
    killed_mid = 0
    outcomes = []
    # how long an unkilled slowed export takes, to spread the kills over it
    p = spawn(EXPORT_CHILD, big["model"], big["patch"], root / "timing", "0")
    t = time.monotonic()
    assert p.wait(timeout=60) == 0, p.stderr.read()
    duration = time.monotonic() - t
    assert tree_digest(root / "timing") == refs["new"]
    shutil.rmtree(root / "timing")
    trials = [("folder", False), ("file", False), ("folder", True), ("file", True), ("folder", False), ("file", True)]
    for i, (kind, overwrite) in enumerate(trials):
        out = root / f"trial-{i}" / ("out" if kind == "folder" else "out.safetensors")
        out.parent.mkdir()
        if overwrite:  # an older export is there: the kill must leave it, or the new one
            with open_model(big["model"]) as m:
                export_model(m, out, runs_of(big["entries"][:3]))
        p = spawn(EXPORT_CHILD, big["model"], big["patch"], out, "1" if overwrite else "0")
        was_running = kill_after(p, rng.uniform(0.05, duration * 1.1))
        killed_mid += was_running
        if kind == "folder":
            state = tree_digest(out) if out.exists() else None
            assert state in ([refs["new"], None] if not overwrite else [refs["new"], refs["old"]]), (i, state)
            outcome = "new" if state == refs["new"] else "old" if state == refs["old"] else "absent"
        else:
            state = sha256(out) if out.exists() else None
            assert state in ([refs["new-file"], None] if not overwrite else [refs["new-file"], refs["old-file"]]), i
            outcome = "new" if state == refs["new-file"] else "old" if state == refs["old-file"] else "absent"
        if not was_running:
            assert outcome == "new"
        outcomes.append(outcome)
        # leftovers only under temporary (hidden) names; a new export to the same name works
        for extra in out.parent.iterdir():
            assert extra == out or extra.name.startswith("." + out.name + "."), extra
        if outcome != "new":
            with open_model(big["model"]) as m:
                export_model(m, out, runs_of(big["entries"]), overwrite=True)
            assert (tree_digest(out) == refs["new"]) if kind == "folder" else (sha256(out) == refs["new-file"])
        shutil.rmtree(out.parent)
    assert killed_mid >= 3, f"only {killed_mid} kills landed during the export ({outcomes})"


def test_sigkill_during_in_place_apply(big, tmp_path):
    rng = random.Random(SEED + 1)
    src, entries = big["model"], big["entries"]
    original = sha256(src)
    patched = sha256(big["root"] / "ref-new" / "model.safetensors")
    work = tmp_path / "m"
    torn_seen = 0
    runner = CliRunner()
    trials = ["forward", "rollback", "forward", "rollback", "forward", "rollback"]
    for i, direction in enumerate(trials):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        model = work / "model.safetensors"
        shutil.copyfile(src, model)
        p = spawn(INPLACE_CHILD, model, big["patch"])
        if i < 4:
            # wait for the journal (the writes start right after it), then kill somewhere in the
            # 256 writes x 3 ms
            deadline = time.monotonic() + 30
            while not (work / INTENT_NAME).exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            kill_after(p, rng.uniform(0, 0.8))
        else:  # at any moment: before the journal, during the writes, or after the end
            kill_after(p, rng.uniform(0, 2.0))
        pending = (work / INTENT_NAME).exists()
        now = sha256(model)
        if pending:
            # the backup (inverse patch) was complete on disk before the first byte was written
            intent = json.loads((work / INTENT_NAME).read_text())
            backup = hp.loads((work / intent["backup"]).read_bytes())
            assert len(backup.entries) == len(entries)
            torn_seen += now not in (original, patched)
        else:
            assert now in (original, patched)
        args = ["patch", "recover", str(model), "--json"] + (["--rollback"] if direction == "rollback" else [])
        r = runner.invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout)
        assert result["recovered"] is pending
        after = sha256(model)
        if pending:
            assert after == (patched if direction == "forward" else original), (i, direction)
        else:
            assert after == now
        assert not (work / INTENT_NAME).exists()
        assert not list(work.glob(".tensor-surgery-forward-*"))
        # a second recover is a no-op, and the model opens and validates
        r = runner.invoke(main, ["patch", "recover", str(model)], catch_exceptions=False)
        assert r.exit_code == 0 and "no interrupted" in r.stdout
        with open_model(model) as m:
            assert len(m.tensors) == TENSORS
    assert torn_seen >= 2, "the kills never landed in the middle of the writes"


def test_rollback_then_the_backup_restores(big, tmp_path):
    """After a completed in-place apply (not killed), the backup written beside the model restores it."""
    model = tmp_path / "model.safetensors"
    shutil.copyfile(big["model"], model)
    original = sha256(model)
    r = CliRunner().invoke(main, ["patch", "apply", str(model), str(big["patch"]), "--in-place", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sha256(model) == sha256(big["root"] / "ref-new" / "model.safetensors")
    backup = json.loads(r.stdout)["backup"]
    r = CliRunner().invoke(main, ["patch", "apply", str(model), backup, "--in-place"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sha256(model) == original
    assert model.read_bytes() == expected_bytes(big["model"], {})
