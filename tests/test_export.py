"""Export: the source with byte runs applied, same sharding (headers and index byte-identical) or
re-sharded, written under a temporary name and renamed; through `writer.export_model` and the
`POST /api/export` job with its progress events. Checked against the safetensors library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tensor_surgery.errors import InvalidRequest, ModelChanged
from tensor_surgery.store import open_model
from tensor_surgery.surgery import writer
from tensor_surgery.surgery.writer import NotAnExport, OutputExists, export_model, parse_size, plan_shards

from .conftest import REPO, assert_error
from .surgery_helpers import (
    SIDE,
    add_side_files,
    expected_bytes,
    flip_bytes,
    header_of,
    runs_of,
    sha256,
    write_patch,
    write_sharded,
)

EMB = "model.embed_tokens.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"
NORM = "model.norm.weight"


def safe_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a file or folder as its raw bytes (uint8), read by the safetensors library."""
    import torch

    files = [path] if path.suffix == ".safetensors" else sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k).reshape(-1).view(torch.uint8).numpy().copy()
    return out


def patched_tensors(source: Path, runs) -> dict[str, bytes]:
    """Tensor bytes of the source model (via safe_open's key list) with `runs` applied."""
    src = safe_tensors(source)
    out = {}
    for k, v in src.items():
        b = bytearray(v.tobytes())
        for off, new in runs.get(k, []):
            b[off : off + len(new)] = new
        out[k] = bytes(b)
    return out


def torch_equal(a: Path, b: Path, names) -> None:
    """safe_open with the torch backend (real bfloat16) agrees tensor by tensor."""
    import torch

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        for n in names:
            assert torch.equal(fa.get_tensor(n).view(torch.uint8), fb.get_tensor(n).view(torch.uint8)), n


@pytest.fixture
def hf_tiny(tiny_model) -> Path:
    add_side_files(tiny_model.parent)
    return tiny_model


@pytest.fixture
def sharded(tmp_path) -> Path:
    return write_sharded(tmp_path / "models" / "sharded", shards=3)


# -- same layout ---------------------------------------------------------------------------------


def test_same_layout_folder_export_is_byte_exact(hf_tiny, tmp_path):
    entries = flip_bytes(hf_tiny, EMB, [0, 130, 2046]) + flip_bytes(hf_tiny, NORM, [4], 4)
    runs = runs_of(entries)
    out = tmp_path / "exports" / "tiny-patched"
    seen = []
    with open_model(hf_tiny) as m:
        result = export_model(m, out, runs, progress=lambda d, t: seen.append((d, t)))
    assert result["layout"] == "same" and result["patched_tensors"] == 2
    assert result["patched_bytes"] == 3 * 2 + 4
    # the header is the source's, byte for byte; the rest is the source with the runs written over it
    assert header_of(out / "model.safetensors")[0] == header_of(hf_tiny)[0]
    assert (out / "model.safetensors").read_bytes() == expected_bytes(hf_tiny, runs)
    # the safetensors library reads the patched values, and only those changed
    got, want = safe_tensors(out / "model.safetensors"), patched_tensors(hf_tiny, runs)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].tobytes() == want[k], k
    src = safe_tensors(hf_tiny)
    changed = {k for k in src if src[k].tobytes() != got[k].tobytes()}
    assert changed == {EMB, NORM}
    # an HF folder: config and tokenizer files come along, other files do not
    for name, text in SIDE.items():
        assert (out / name).read_text() == text
    assert not (out / "notes.txt").exists()
    assert sorted(result["files"]) == sorted(["model.safetensors", *SIDE])
    # progress: monotonic, ends at the total, never past it
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # nothing but the output was left beside it (no temporary names)
    assert [p.name for p in out.parent.iterdir()] == ["tiny-patched"]
    # our store opens it and sees the new bytes
    with open_model(out) as m2:
        assert bytes(m2.tensor(EMB).raw()[:2]) == entries[0].new


def test_sharded_same_layout_keeps_headers_and_index(sharded, tmp_path):
    folder = sharded.parent
    shard_files = sorted(folder.glob("*.safetensors"))
    assert len(shard_files) == 3
    # one run in each shard
    with open_model(sharded) as m:
        per_shard = [next(iter(f.tensors)) for f in m.files]
        entries = [e for n in per_shard for e in flip_bytes(folder / os.path.basename(m.tensor(n).file.path), n, [2])]
        runs = runs_of(entries)
        out = tmp_path / "out" / "sharded-patched"
        export_model(m, out, runs)
    assert (out / "model.safetensors.index.json").read_bytes() == sharded.read_bytes()
    for f in shard_files:
        assert header_of(out / f.name)[0] == header_of(f)[0], f.name
        assert (out / f.name).read_bytes() == expected_bytes(f, runs), f.name
    got = {}
    for f in shard_files:
        got |= safe_tensors(out / f.name)
    want = patched_tensors(folder, runs)
    assert {k: v.tobytes() for k, v in got.items()} == want
    assert sum(got[k].tobytes() != safe_tensors(folder)[k].tobytes() for k in got) == 3
    assert (out / "config.json").read_text() == SIDE["config.json"]
    with open_model(out) as m2:
        assert m2.kind == "sharded" and len(m2.files) == 3


def test_single_file_output(hf_tiny, tmp_path):
    runs = runs_of(flip_bytes(hf_tiny, Q0, [10]))
    out = tmp_path / "single" / "patched.safetensors"
    with open_model(hf_tiny) as m:
        result = export_model(m, out, runs)
    assert result["files"] == ["patched.safetensors"]
    assert out.read_bytes() == expected_bytes(hf_tiny, runs)
    # no side files for a file; only its hidden export marker beside it
    assert sorted(p.name for p in out.parent.iterdir()) == [".patched.safetensors.tensor-surgery-export.json",
                                                             "patched.safetensors"]
    torch_equal(out, out, [Q0])  # opens with torch


def test_one_shard_index_to_single_file(tmp_path):
    """A sharded model with a single shard exports to one .safetensors (its index is not needed)."""
    index = write_sharded(tmp_path / "models" / "one", shards=1)
    shard = index.parent / "model-00001-of-00001.safetensors"
    runs = runs_of(flip_bytes(shard, EMB, [0]))
    out = tmp_path / "one.safetensors"
    with open_model(index) as m:
        export_model(m, out, runs)
    assert out.read_bytes() == expected_bytes(shard, runs)


# -- re-sharding ---------------------------------------------------------------------------------


def test_reshard_tiny_by_max_size(hf_tiny, tmp_path):
    limit = parse_size("4KB")
    assert limit == 4000
    entries = flip_bytes(hf_tiny, EMB, [100]) + flip_bytes(hf_tiny, DOWN1, [0, 1020])
    runs = runs_of(entries)
    out = tmp_path / "resharded"
    with open_model(hf_tiny) as m:
        plan = plan_shards(m, limit)
        result = export_model(m, out, runs, max_shard_bytes=limit)
        sizes = {n: m.tensor(n).nbytes for n in m.tensors}
        total = m.nbytes
    n = len(plan)
    assert n >= 3 and result["layout"] == f"resharded into {n} file(s)"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    assert sorted(set(index["weight_map"].values())) == names
    assert index["weight_map"] == {t: names[i] for i, group in enumerate(plan) for t in group}
    want = patched_tensors(hf_tiny, runs)
    got = {}
    for fname in names:
        _, head = header_of(out / fname)
        assert head["__metadata__"] == {"format": "pt"}
        tensors = [k for k in head if k != "__metadata__"]
        assert {k for k, v in index["weight_map"].items() if v == fname} == set(tensors)
        data = sum(sizes[t] for t in tensors)
        assert data <= limit or len(tensors) == 1
        got |= {k: v.tobytes() for k, v in safe_tensors(out / fname).items()}
    assert got == want
    # our store opens the result and every tensor is bit-equal
    with open_model(out) as m2:
        assert m2.kind == "sharded" and len(m2.files) == n
        for k, v in want.items():
            assert bytes(m2.tensor(k).raw()) == v
    assert (out / "tokenizer.json").exists() and not (out / "model.safetensors").exists()


def test_reshard_sharded_into_one_file(sharded, tmp_path):
    out = tmp_path / "merged.safetensors"
    runs = {}
    with open_model(sharded) as m:
        export_model(m, out, runs, max_shard_bytes=parse_size("1GB"))
        total = m.nbytes
    assert out.stat().st_size - len(header_of(out)[0]) == total
    assert {k: v.tobytes() for k, v in safe_tensors(out).items()} == patched_tensors(sharded.parent, {})
    # and again to a folder: one shard, named model.safetensors, no index
    out2 = tmp_path / "merged"
    with open_model(sharded) as m:
        export_model(m, out2, runs, max_shard_bytes=parse_size("1GB"))
    assert (out2 / "model.safetensors").read_bytes() == out.read_bytes()
    assert not (out2 / "model.safetensors.index.json").exists()


def test_layout_does_not_fit_single_file(sharded, hf_tiny, tmp_path):
    with open_model(sharded) as m, pytest.raises(InvalidRequest, match="3 shards"):
        export_model(m, tmp_path / "x.safetensors", {})
    with open_model(hf_tiny) as m, pytest.raises(InvalidRequest, match="shards at that size"):
        export_model(m, tmp_path / "y.safetensors", {}, max_shard_bytes=4000)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*partial*"))


# -- refusals ------------------------------------------------------------------------------------


def test_refuses_source_and_existing_output(hf_tiny, tmp_path):
    before = sha256(hf_tiny)
    with open_model(hf_tiny) as m:
        for target in (hf_tiny, hf_tiny.parent, hf_tiny.parent.parent):
            with pytest.raises(InvalidRequest, match="model being read"):
                export_model(m, target, {}, overwrite=True)
        with pytest.raises(InvalidRequest, match="outside the tensor"):
            export_model(m, tmp_path / "o1", {NORM: [(60, b"\0" * 8)]})
        out = tmp_path / "taken"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        with pytest.raises(OutputExists):
            export_model(m, out, {})
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        # overwrite replaces only a previous export: a folder of the user's is never replaced
        with pytest.raises(NotAnExport, match="no export wrote"):
            export_model(m, out, {}, overwrite=True)
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sha256(hf_tiny) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_replaces_only_an_unchanged_previous_export(hf_tiny, tmp_path):
    """A marked, unchanged previous export is replaced whole; one the user changed or added to, a
    file of the user's, a symlink, or a folder holding a root (`protected`) are refused untouched."""
    first, second = runs_of(flip_bytes(hf_tiny, EMB, [0])), runs_of(flip_bytes(hf_tiny, Q0, [6]))
    folder, single = tmp_path / "exports" / "run", tmp_path / "exports" / "run.safetensors"
    with open_model(hf_tiny) as m:
        for out in (folder, single):
            export_model(m, out, first)
            export_model(m, out, second, overwrite=True)
            data = out / "model.safetensors" if out == folder else out
            assert data.read_bytes() == expected_bytes(hf_tiny, second)
        assert sorted(p.name for p in folder.iterdir()) == sorted([".tensor-surgery-export.json", "model.safetensors", *SIDE])

        # the user adds a file to the export, or changes one of its files: no longer only an export
        (folder / "my-notes.md").write_text("results of the ablation")
        with pytest.raises(NotAnExport, match="my-notes.md"):
            export_model(m, folder, first, overwrite=True)
        assert (folder / "my-notes.md").read_text() == "results of the ablation"
        (folder / "my-notes.md").unlink()
        with open(folder / "config.json", "a") as f:
            f.write(" ")
        with pytest.raises(NotAnExport, match="changed since the export"):
            export_model(m, folder, first, overwrite=True)
        assert (folder / "model.safetensors").read_bytes() == expected_bytes(hf_tiny, second)
        time.sleep(0.05)  # past the file system's clock tick: a rewrite gets a later mtime
        with open(single, "r+b") as f:
            f.seek(-1, 2)
            f.write(b"\x7f")
        mine = single.read_bytes()
        with pytest.raises(NotAnExport, match="changed since"):
            export_model(m, single, first, overwrite=True)
        assert single.read_bytes() == mine
        # a file or a symlink that no export wrote
        user_file = tmp_path / "exports" / "downloaded.safetensors"
        user_file.write_bytes(hf_tiny.read_bytes())
        link = tmp_path / "exports" / "link"
        link.symlink_to(folder)
        for target in (user_file, link):
            with pytest.raises(NotAnExport):
                export_model(m, target, first, overwrite=True)
        assert user_file.read_bytes() == hf_tiny.read_bytes() and link.is_symlink()
        # a folder holding a protected one (a root, DATA_DIR...), or being it: never an output
        data_dir = tmp_path / "exports" / "data"
        data_dir.mkdir()
        for target in (data_dir, tmp_path / "exports"):
            with pytest.raises(InvalidRequest, match="DATA_DIR"):
                export_model(m, target, first, overwrite=True, protected=[("DATA_DIR", data_dir)])
        assert data_dir.is_dir()
    assert not [p.name for p in (tmp_path / "exports").iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_cli_overwrite_never_replaces_the_servers_folders_nor_the_users(run, hf_tiny, tmp_path, monkeypatch):
    """`patch apply --out X --overwrite` follows the API's rules: never DATA_DIR, PATCH_DIR or a
    folder holding them (as the settings name them), never a folder of the user's."""
    srv = tmp_path / "srv"
    data, library = srv / "data", srv / "patches"
    data.mkdir(parents=True)
    library.mkdir()
    (data / "tensor_surgery.db").write_bytes(b"the journal")
    (library / "mine.hexpatch").write_text("{}")
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("PATCH_DIR", str(library))
    patch = write_patch(tmp_path / "x.hexpatch", flip_bytes(hf_tiny, EMB, [0]))
    for out in (data, library, srv):
        r = run("patch", "apply", hf_tiny, patch, "--out", out, "--overwrite")
        assert r.exit_code == 2 and "never replaces" in r.stderr, r.output
    assert (data / "tensor_surgery.db").read_bytes() == b"the journal" and (library / "mine.hexpatch").exists()
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "results.csv").write_text("1,2\n")
    r = run("patch", "apply", hf_tiny, patch, "--out", mine, "--overwrite", "--json")
    assert r.exit_code != 0 and json.loads(r.stdout)["error"]["code"] == "not_an_export"
    assert [p.name for p in mine.iterdir()] == ["results.csv"]
    # a previous export is replaced
    out = tmp_path / "exported"
    assert run("patch", "apply", hf_tiny, patch, "--out", out).exit_code == 0
    assert run("patch", "apply", hf_tiny, patch, "--out", out, "--overwrite").exit_code == 0
    assert (out / "model.safetensors").read_bytes() == expected_bytes(hf_tiny, runs_of(flip_bytes(hf_tiny, EMB, [0])))


def test_failed_export_leaves_nothing(hf_tiny, tmp_path, monkeypatch):
    """An error mid-copy removes the temporary output; the final name never appears."""
    calls = [0]
    real = writer.copy_range

    def failing(*a, **k):
        calls[0] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "copy_range", failing)
    with open_model(hf_tiny) as m, pytest.raises(OSError):
        export_model(m, tmp_path / "out", {})
    assert calls[0] == 1 and list(tmp_path.iterdir()) == [tmp_path / "models"]
    monkeypatch.setattr(writer, "copy_range", real)


def change_source_mid_copy(monkeypatch, source: Path, how: str) -> list[int]:
    """After the first chunk of the export's copy, shrink the source to its first 2 KiB of data, or
    rewrite one of its bytes in place (same size, new mtime). Returns [calls so far]."""
    calls = [0]
    real = writer.start_writeback

    def then_change(fd, offset, count):
        real(fd, offset, count)
        calls[0] += 1
        if calls[0] == 1:
            data_start = 8 + int.from_bytes(source.read_bytes()[:8], "little")
            if how == "truncated":
                os.truncate(source, data_start + 2048)
            else:
                with open(source, "r+b") as f:
                    f.seek(data_start + 9000)
                    b = f.read(1)
                    f.seek(data_start + 9000)
                    f.write(bytes([b[0] ^ 0xFF]))
                os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely differs

    monkeypatch.setattr(writer, "COPY_CHUNK", 1024)
    monkeypatch.setattr(writer, "start_writeback", then_change)
    return calls


@pytest.mark.parametrize("how", ["truncated", "rewritten"])
@pytest.mark.parametrize("reshard", [False, True])
def test_source_changed_during_export_is_model_changed(hf_tiny, tmp_path, monkeypatch, how, reshard):
    """A source file truncated or rewritten while it is copied: the same `model_changed` error as
    every other read of a changed model (not a generic one), and no output left behind."""
    with open_model(hf_tiny) as m:
        assert m.nbytes > 9001  # the copy takes several chunks; the byte rewritten is past the first
        calls = change_source_mid_copy(monkeypatch, hf_tiny, how)
        with pytest.raises(ModelChanged) as e:
            export_model(m, tmp_path / "exports" / "out", {NORM: [(0, b"\0" * 4)]},
                         max_shard_bytes=parse_size("1GB") if reshard else None)
    assert calls[0] >= 1
    assert e.value.code == "model_changed" and e.value.exit_code == 1
    assert e.value.context["file"] == str(hf_tiny) and "changed on disk" in e.value.message
    assert list((tmp_path / "exports").iterdir()) == []


# -- the API -------------------------------------------------------------------------------------


def wait_job(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = client.get(f"/api/jobs/{job_id}").json()
        if snap["state"] != "running":
            return snap
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def read_sse(client, job_id: str) -> list[tuple[str, dict]]:
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind in ("done", "error"):
                    break
    return events


def stage_zero_row(client, name: str, row: int, width: int) -> dict:
    r = client.post("/api/edit_tensor", json={
        "tensor_name": name, "op": "zero",
        "slice": {"dim0_start": row, "dim0_end": row + 1, "dim1_start": 0, "dim1_end": width},
    })
    assert r.status_code == 200, r.text
    return r.json()


def test_api_export_job_with_staged_edits_and_patch(client, hf_tiny, tmp_path):
    # a library patch from one staged edit, then that edit cleared and another staged
    stage_zero_row(client, EMB, 5, 16)
    r = client.post("/api/patches", json={"name": "row5", "description": "zero row 5"})
    assert r.status_code == 200, r.text
    assert client.delete("/api/edits").status_code == 200
    stage_zero_row(client, Q0, 2, 16)
    out = tmp_path / "exports" / "both"
    r = client.post("/api/export", json={"out": str(out), "patches": ["row5"]})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["kind"] == "export" and job["state"] in ("running", "done")
    snap = wait_job(client, job["id"])
    assert snap["state"] == "done", snap
    assert snap["result"]["path"] == str(out) and snap["fraction"] == 1.0
    assert any(j["id"] == job["id"] for j in client.get("/api/jobs").json()["jobs"])
    # the file: the header unchanged, exactly rows EMB[5] and Q0[2] zeroed
    assert header_of(out / "model.safetensors")[0] == header_of(hf_tiny)[0]
    runs = {EMB: [(5 * 32, b"\0" * 32)], Q0: [(2 * 32, b"\0" * 32)]}
    want = expected_bytes(hf_tiny, runs)
    assert (out / "model.safetensors").read_bytes() == want
    assert (out / "config.json").exists()
    # the source is untouched, and the staged edit is still staged
    assert client.get("/api/edits").json()["staged_tensors"] == {Q0: 1}
    # include_staged=false: the patch alone
    out2 = tmp_path / "exports" / "patch-only.safetensors"
    r = client.post("/api/export", json={"out": str(out2), "patches": ["row5"], "include_staged": False})
    assert wait_job(client, r.json()["job"]["id"])["state"] == "done"
    assert out2.read_bytes() == expected_bytes(hf_tiny, {EMB: runs[EMB]})


def test_api_export_job_of_a_source_truncated_mid_copy_fails_model_changed(client, hf_tiny, tmp_path, monkeypatch):
    """The export job ends failed with the model_changed code and message, and reads refuse too."""
    change_source_mid_copy(monkeypatch, hf_tiny, "truncated")
    r = client.post("/api/export", json={"out": str(tmp_path / "exports" / "cut")})
    assert r.status_code == 202, r.text
    snap = wait_job(client, r.json()["job"]["id"])
    assert snap["state"] == "error", snap
    assert snap["error"]["code"] == "model_changed" and snap["error"]["file"] == str(hf_tiny), snap
    assert "changed on disk" in snap["error"]["message"] and "reopen" in snap["error"]["message"], snap
    assert not (tmp_path / "exports").exists() or list((tmp_path / "exports").iterdir()) == []
    assert_error(client.get(f"/api/tensor_slice/{NORM}"), 409, "model_changed", "reopen")


def test_api_export_progress_events(client, hf_tiny, tmp_path, monkeypatch):
    """The SSE stream shows progress events, then `done` with the result."""
    from tensor_surgery import jobs
    from tensor_surgery.web import routes_export

    real = writer.export_model

    def slowed(*a, progress, **k):
        def slow(done, total):
            progress(done, total)
            time.sleep(0.02)

        return real(*a, progress=slow, **k)

    monkeypatch.setattr(routes_export, "export_model", slowed)
    monkeypatch.setattr(writer, "COPY_CHUNK", 256)  # ~50 progress calls for the tiny model
    monkeypatch.setattr(jobs, "MIN_EVENT_INTERVAL", 0.0)
    stage_zero_row(client, EMB, 0, 16)
    out = tmp_path / "exports" / "sse"
    r = client.post("/api/export", json={"out": str(out), "max_shard_size": "4KB"})
    assert r.status_code == 202, r.text
    events = read_sse(client, r.json()["job"]["id"])
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done", kinds
    progress = [e for k, e in events if k == "progress"]
    assert len(progress) >= 2
    assert any(0 < e["done"] < e["total"] for e in progress)
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    final = events[-1][1]
    assert final["state"] == "done" and final["result"]["layout"].startswith("resharded into")
    assert (out / "model.safetensors.index.json").exists()
    # the stream of a finished job is just its final state
    again = read_sse(client, r.json()["job"]["id"])
    assert [k for k, _ in again] == ["done"]


def test_api_export_refusals(client, hf_tiny, tmp_path, tmp_path_factory, settings):
    outside = tmp_path_factory.mktemp("outside")
    assert_error(client.post("/api/export", json={"out": str(outside / "x")}), 403, "path_not_allowed")
    # a symlink inside the allowed root that points outside is outside too
    link = tmp_path / "sneaky"
    link.symlink_to(outside)
    assert_error(client.post("/api/export", json={"out": str(link / "x")}), 403, "path_not_allowed")
    assert not list(outside.iterdir())
    # the source itself (file and folder)
    assert_error(client.post("/api/export", json={"out": str(hf_tiny)}), 400, "invalid_request", "model being read")
    assert_error(client.post("/api/export", json={"out": str(hf_tiny.parent), "overwrite": True}), 400,
                 "invalid_request", "model being read")
    # an existing output without overwrite: 409, and it is left alone
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert_error(client.post("/api/export", json={"out": str(taken)}), 409, "output_exists")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    # bad sizes, unknown patches
    assert_error(client.post("/api/export", json={"out": str(tmp_path / "a"), "max_shard_size": "lots"}), 400)
    assert_error(client.post("/api/export", json={"out": str(tmp_path / "a"), "patches": ["nope"]}), 404,
                 "patch_not_found")
    assert_error(client.post("/api/export", json={"out": str(tmp_path / "a.safetensors"),
                                                  "max_shard_size": 4000}), 400, "invalid_request", "shards")
    # none of these started a job or created an output
    assert client.get("/api/jobs").json()["jobs"] == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.safetensors").exists()


def test_api_overwrite_never_destroys_what_the_user_owns(client, hf_tiny, tmp_path, settings):
    """`overwrite: true` aimed at DATA_DIR (the journal database), PATCH_DIR (the library), an
    allowed root, a folder holding one, the open model's folder or file, or a folder of the user's:
    refused before any job, everything intact, staged edits still there after a restart."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL

    stage_zero_row(client, EMB, 3, 16)
    assert client.post("/api/patches", json={"name": "keepme", "description": "mine"}).status_code == 200
    settings.data_dir.joinpath("exports").mkdir(parents=True, exist_ok=True)
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "results.csv").write_text("layer,loss\n")
    before = {p: sorted(q.name for q in p.iterdir()) for p in (settings.patch_dir, mine, settings.data_dir / "exports")}
    targets = {
        settings.data_dir: (400, "invalid_request"),  # DATA_DIR: the journal database lives there
        settings.patch_dir: (400, "invalid_request"),  # PATCH_DIR: the patch library
        tmp_path: (400, "invalid_request"),  # the allowed root itself
        tmp_path / "models": (400, "invalid_request"),  # holds the open model's folder
        hf_tiny.parent: (400, "invalid_request"),  # the open model's folder
        hf_tiny: (400, "invalid_request"),  # the open model's file
        settings.data_dir / "exports": (409, "not_an_export"),  # a folder of exports is not one
        settings.data_dir / "tensor_surgery.db": (409, "not_an_export"),  # the journal database itself
        mine: (409, "not_an_export"),  # a folder of the user's
    }
    for out, (status, code) in targets.items():
        err = assert_error(client.post("/api/export", json={"out": str(out), "overwrite": True}), status, code)
        assert str(out) in err["message"] or out.name in err["message"], err
    assert client.get("/api/jobs").json()["jobs"] == []
    assert {p: sorted(q.name for q in p.iterdir()) for p in before} == before
    assert (mine / "results.csv").read_text() == "layer,loss\n"
    assert (settings.data_dir / "tensor_surgery.db").is_file() and hf_tiny.is_file()
    assert [p["name"] for p in client.get("/api/patches").json()["patches"]] == ["keepme.hexpatch"]
    # a previous export (the default output, then the same name again) is what overwrite replaces
    out = settings.data_dir / "exports" / "mine-v1"
    for overwrite in (False, True):
        r = client.post("/api/export", json={"out": str(out), "overwrite": overwrite})
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["job"]["id"])["state"] == "done"
    # the journal survived all of it: a new server on the same DATA_DIR has the staged edit
    with TestClient(create_app(settings), base_url=BASE_URL) as again:
        assert again.get("/api/edits").json()["staged_tensors"] == {EMB: 1}


def test_api_export_first_removes_leftovers_of_killed_writes(client, hf_tiny, tmp_path, settings):
    """Before each export: an unfinished export's folder (its writer gone) in DATA_DIR/exports and a
    journal `.tmp` of a killed in-place apply beside the model are removed; a user's lookalike is not."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: nobody is writing these any more
    exports = settings.data_dir / "exports"
    partial = exports / ".old-run.partial-0123456789ab"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 64)
    (partial / ".tensor-surgery-export.json").write_text(json.dumps({
        "format": "tensor-surgery-export", "version": 1, "state": "partial", "writer": f"{pid}:1",
        "files": ["model.safetensors"]}))
    journal_tmp = hf_tiny.parent / f".model.safetensors.backup-20250101-000000.hexpatch.tensor-surgery-{pid}-0123456789ab.tmp"
    journal_tmp.write_text('{\n  "format": "hexpatch",\n  "version": 1')
    users = hf_tiny.parent / f".notes.md.tensor-surgery-{pid}-0123456789ab.tmp"
    users.write_text("not ours: the name does not end like one of our journal files")
    r = client.post("/api/export", json={"out": str(exports / "new")})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job"]["id"])["state"] == "done"
    assert not partial.exists() and not journal_tmp.exists() and users.exists()


def test_api_export_conflicting_patch_lists_every_conflict(client, hf_tiny, tmp_path, settings):
    good = flip_bytes(hf_tiny, EMB, [0, 64])
    bad = [
        good[0],
        # wrong original bytes at two places, an unknown tensor, and a range past the end
        *[type(e)(e.tensor_name, e.offset_bytes, e.new, e.original, e.dtype, e.shape_at_edit_time)
          for e in flip_bytes(hf_tiny, Q0, [0, 40])],
        type(good[1])("model.nope.weight", 0, b"\x00\x01", b"\x02\x03"),
        type(good[1])(NORM, 62, b"\x00\x00\x80\x3f", b"\x00\x00\x00\x40", "F32"),
    ]
    write_patch(settings.patch_dir / "bad.hexpatch", bad)
    write_patch(settings.patch_dir / "good.hexpatch", [good[1]])
    out = tmp_path / "exports" / "never"
    r = client.post("/api/export", json={"out": str(out), "patches": ["good", "bad"]})
    err = assert_error(r, 409, "patch_conflict")
    kinds = sorted(c["kind"] for c in err["conflicts"])
    assert kinds == ["mismatch", "mismatch", "out_of_range", "unknown_tensor"]
    assert sorted(c["entry"] for c in err["conflicts"]) == [1, 2, 3, 4]
    assert [r["ok"] for r in err["report"]] == [True, False]
    assert client.get("/api/jobs").json()["jobs"] == []
    assert not out.exists() and not (tmp_path / "exports").exists()
    # the same patch twice conflicts with itself (its original bytes are gone after the first)
    r = client.post("/api/export", json={"out": str(out), "patches": ["good", "good"]})
    err = assert_error(r, 409, "patch_conflict")
    assert len(err["conflicts"]) == 1 and err["conflicts"][0]["kind"] == "mismatch"
    assert not out.exists()


def test_api_default_output_goes_to_data_exports(client, settings):
    r = client.post("/api/export", json={})
    assert r.status_code == 202, r.text
    snap = wait_job(client, r.json()["job"]["id"])
    assert snap["state"] == "done", snap
    out = Path(snap["result"]["path"])
    assert out.parent == (settings.data_dir / "exports").resolve() and (out / "model.safetensors").is_file()


# -- memory: the model never passes through Python -----------------------------------------------


RSS_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[3])
from tensor_surgery.store import open_model
from tensor_surgery.surgery import writer
if sys.argv[4] == "fallback":   # no copy_file_range (another file system): plain reads and writes
    import os
    def no_cfr(*a, **k):
        raise OSError(18, "Invalid cross-device link")
    os.copy_file_range = no_cfr
m = open_model(sys.argv[1])
name = "model.embed_tokens.weight"
runs = {name: [(0, bytes(1152))]}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = writer.export_model(m, sys.argv[2], runs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "bytes": result["bytes"]}))
"""


@pytest.mark.parametrize("mode", ["copy_file_range", "fallback"])
def test_export_streams_smollm2(smol_dir, tmp_path, mode):
    out = tmp_path / "smol-export"
    p = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(smol_dir), str(out), str(REPO), mode],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    size = r["bytes"]
    assert size > 250e6
    growth = (r["after_kb"] - r["before_kb"]) * 1024
    # the kernel copies; Python holds at most one fallback chunk (8 MB) and the patched runs
    assert growth < size / 10, f"peak RSS grew {growth / 1e6:.1f} MB exporting a {size / 1e6:.0f} MB model"
    src = smol_dir / "model.safetensors"
    assert header_of(out / "model.safetensors")[0] == header_of(src)[0]
    assert (out / "model.safetensors").stat().st_size == src.stat().st_size
    # the source's files, and the export's marker
    assert sorted(p.name for p in out.iterdir()) == sorted([".tensor-surgery-export.json",
                                                            *(p.name for p in smol_dir.iterdir())])


def test_api_export_refused_while_in_place_apply_is_pending(client, hf_tiny, tmp_path):
    from tensor_surgery.surgery.apply import INTENT_NAME

    (hf_tiny.parent / INTENT_NAME).write_text(json.dumps({"model": str(hf_tiny)}))
    err = assert_error(client.post("/api/export", json={"out": str(tmp_path / "x")}), 409, "conflict", "recover")
    assert err["intent"].endswith(INTENT_NAME)
    assert client.get("/api/jobs").json()["jobs"] == [] and not (tmp_path / "x").exists()


@pytest.mark.parametrize("failure, code", [("model_changed", "model_changed"), ("disk_full", "io_error")])
def test_api_export_job_failure_is_an_error_event(client, hf_tiny, tmp_path, monkeypatch, failure, code):
    """A failure inside the job (the model rewritten under it, a full disk): an `error` event with
    its code, the job in state error, and no output."""
    from tensor_surgery.web import routes_export

    real = writer.export_model

    def failing(model, out, runs, **k):
        if failure == "model_changed":
            os.utime(hf_tiny, ns=(1, 1))  # the file changes after it was opened and checked
        else:
            def full(*a, **kw):
                raise OSError(28, "No space left on device", str(out))

            monkeypatch.setattr(writer, "copy_range", full)
        return real(model, out, runs, **k)

    monkeypatch.setattr(routes_export, "export_model", failing)
    out = tmp_path / "exports" / "failed"
    r = client.post("/api/export", json={"out": str(out)})
    assert r.status_code == 202, r.text
    events = read_sse(client, r.json()["job"]["id"])
    kind, last = events[-1]
    assert kind == "error" and last["state"] == "error" and last["error"]["code"] == code, last
    assert wait_job(client, last["id"])["error"]["code"] == code
    assert not out.exists() and not list((tmp_path / "exports").iterdir())


@pytest.mark.slow
def test_resharded_smollm2_loads_in_transformers(smol_dir, tmp_path):
    """SmolLM2 re-sharded into 100 MB files: transformers loads the index and computes the same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "smol-100MB"
    with open_model(smol_dir) as m:
        result = export_model(m, out, {}, max_shard_bytes=parse_size("100MB"))
    assert result["layout"] == "resharded into 3 file(s)"
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    logits = []
    for folder in (smol_dir, out):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.equal(logits[0], logits[1])
