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


# -- what a kill leaves behind ---------------------------------------------------------------------

SERVER_EXPORT_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from fastapi.testclient import TestClient
from tensor_surgery import jobs
from tensor_surgery.settings import Settings
from tensor_surgery.surgery import writer
from tensor_surgery.web.app import create_app

writer.COPY_CHUNK = 1 << 20
jobs.PERSIST_INTERVAL = 0.0  # every progress call reaches the job's record on disk
_cfr = os.copy_file_range
def slow_cfr(*a):
    time.sleep(0.05)
    return _cfr(*a)
os.copy_file_range = slow_cfr
model, data = sys.argv[2], sys.argv[3]
settings = Settings(_env_file=None, model_path=model, data_dir=data, patch_dir=os.path.join(data, "patches"))
with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
    r = c.post("/api/export", json={})
    assert r.status_code == 202, r.text
    print("start", flush=True)
    time.sleep(600)
"""

INPLACE_SLOW_JOURNAL_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
_fsync = os.fsync
def slow_fsync(fd):
    time.sleep(0.3)  # the journal files sit under their temporary names meanwhile
    return _fsync(fd)
os.fsync = slow_fsync
from tensor_surgery.cli import main
sys.argv = ["tensor-surgery", "patch", "apply", sys.argv[2], sys.argv[3], "--in-place"]
print("start", flush=True)
main()
"""


PERSIST_WAIT = 0.2  # > a few slowed copies: the job's record on disk has seen progress


def wait_for(cond, p: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.002)


def plant_lookalikes(folder: Path, real_partial: Path) -> dict[Path, bytes]:
    """Things of the user's named like our leftovers: none of them may be deleted."""
    planted = {}
    unmarked = folder / ".experiment.partial-0123456789ab"  # our name, no marker
    unmarked.mkdir()
    planted[unmarked / "notes.txt"] = b"mine"
    marked = folder / ".other.partial-abcdefabcdef"  # our name and a copied marker, plus a file of the user's
    marked.mkdir()
    real_marker = real_partial / ".tensor-surgery-export.json"
    planted[marked / ".tensor-surgery-export.json"] = real_marker.read_bytes() if real_marker.exists() else json.dumps(
        {"format": "tensor-surgery-export", "version": 1, "state": "partial", "files": ["model.safetensors"]}).encode()
    planted[marked / "keep.txt"] = b"also mine"
    for path, data in planted.items():
        path.write_bytes(data)
    return planted


def test_sigkill_during_server_export_is_recorded_and_its_leftovers_cleaned_at_start(big, tmp_path):
    """A server killed mid-export: the next start lists the job as interrupted (how far it got,
    where it was writing) and removes the partial output; lookalikes of the user's stay."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    data = tmp_path / "data"
    exports = data / "exports"
    p = spawn(SERVER_EXPORT_CHILD, big["model"], data)

    def partway() -> bool:  # a few MB into the copy
        partials = [e for e in exports.iterdir() if ".partial-" in e.name] if exports.is_dir() else []
        return any(f.stat().st_size > (4 << 20) for d in partials for f in d.glob("*.safetensors"))

    wait_for(partway, p)
    time.sleep(PERSIST_WAIT)
    assert kill_after(p, 0.0)
    partial = next(e for e in exports.iterdir() if ".partial-" in e.name)
    planted = plant_lookalikes(exports, partial)

    settings = make_settings(tmp_path, big["model"])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        (job,) = c.get("/api/jobs").json()["jobs"]
        assert job["state"] == "interrupted" and job["error"]["code"] == "interrupted", job
        assert 0 < job["done"] < job["total"] and job["kind"] == "export"
        assert job["out"].startswith(str(exports.resolve())) and "%" in job["error"]["message"]
        assert c.get(f"/api/jobs/{job['id']}").json()["state"] == "interrupted"
    assert not partial.exists()
    assert {path: path.read_bytes() for path in planted} == planted
    assert not [e for e in exports.iterdir() if e.name.startswith(".") and ".partial-" not in e.name]


def test_leftovers_of_a_killed_export_are_removed_by_the_next_export(big, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    p = spawn(EXPORT_CHILD, big["model"], big["patch"], folder / "first", "0")
    wait_for(lambda: any(f.stat().st_size > (4 << 20) for d in folder.iterdir() for f in d.glob("*.safetensors")), p)
    assert kill_after(p, 0.0)
    (partial,) = [e for e in folder.iterdir() if ".partial-" in e.name]
    assert sum(f.stat().st_size for f in partial.iterdir()) > 0
    planted = plant_lookalikes(folder, partial)
    with open_model(big["model"]) as m:
        export_model(m, folder / "second", runs_of(big["entries"]))
    assert tree_digest(folder / "second") == big["refs"]["new"]
    assert not partial.exists() and not (folder / "first").exists()
    assert {path: path.read_bytes() for path in planted} == planted


def test_sigkill_while_journaling_an_in_place_apply_leaves_no_tmp_after_restart(big, tmp_path):
    """A kill while the backup is still under its temporary name: the next server start removes
    that `.tmp` (ours by name and content) and no file of the user's named like it."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    work = tmp_path / "m"
    work.mkdir()
    model = work / "model.safetensors"
    shutil.copyfile(big["model"], model)
    original = sha256(model)
    p = spawn(INPLACE_SLOW_JOURNAL_CHILD, model, big["patch"])
    wait_for(lambda: any(e.name.endswith(".tmp") for e in work.iterdir()), p)
    assert kill_after(p, 0.0)
    (tmp,) = [e for e in work.iterdir() if e.name.endswith(".tmp")]
    assert tmp.name.startswith(".model.safetensors.backup-") and tmp.name.endswith(".tmp")
    planted = {
        work / ".notes.txt.abcdefgh.tmp": b"a user's editor swap file",
        work / ".model.safetensors.backup-20250101-000000.hexpatch.abcdefgh.tmp": b"not a patch: the user's",
    }
    for path, data in planted.items():
        path.write_bytes(data)
    with TestClient(create_app(make_settings(tmp_path, model)), base_url=BASE_URL) as c:
        assert c.get("/api/model").json().get("interrupted_apply") is None  # killed before the journal
    assert not tmp.exists()
    assert {path: path.read_bytes() for path in planted} == planted
    assert sha256(model) == original


SERVER_TRANSPLANT_CHILD = SERVER_EXPORT_CHILD.replace(
    'r = c.post("/api/export", json={})',
    'r = c.post("/api/transplant/write", json={"out": sys.argv[4], "recipe": False, '
    '"rename": [{"from": sys.argv[5], "to": sys.argv[5] + ".moved"}]})')


def test_sigkill_during_server_transplant_leftovers_beside_its_output_are_cleaned_at_start(big, tmp_path):
    """A transplant writes through the same hidden partial folder as an export, beside its own
    output (here a folder of the user's, not DATA_DIR/exports): the next start finds the job
    interrupted and removes that partial folder, and nothing of the user's next to it."""
    from fastapi.testclient import TestClient
    from safetensors import safe_open

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings

    data = tmp_path / "data"
    mine = data / "mine"
    mine.mkdir(parents=True)
    with safe_open(big["model"], "np") as f:
        first = sorted(f.keys())[0]
    p = spawn(SERVER_TRANSPLANT_CHILD, big["model"], data, mine / "copy", first)

    def partway() -> bool:
        return any(f.stat().st_size > (4 << 20) for d in mine.iterdir() if ".partial-" in d.name
                   for f in d.glob("*.safetensors"))

    wait_for(partway, p)
    time.sleep(PERSIST_WAIT)
    assert kill_after(p, 0.0)
    partial = next(e for e in mine.iterdir() if ".partial-" in e.name)
    planted = plant_lookalikes(mine, partial)

    settings = make_settings(tmp_path, big["model"])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        (job,) = c.get("/api/jobs").json()["jobs"]
        assert job["state"] == "interrupted" and job["kind"] == "transplant", job
    assert not partial.exists()
    assert not (mine / "copy").exists()
    assert {path: path.read_bytes() for path in planted} == planted
