"""Packs: the folder format (pack.json + safetensors), its verification, the registry and `pack` CLI.

Oracles: the safetensors library reads what write_pack wrote, hashlib recomputes the checksums,
tarfile/zipfile build hostile archives, and huggingface_hub's own snapshot_download path runs
against a local HTTP endpoint.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tensor_surgery.interp import packs as pk

CK_A = "sha256:" + "a" * 64
CK_B = "sha256:" + "b" * 64


def make(folder: Path, name="concept", version="1.0.0", seed=0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    tensors = kw.pop("tensors", None) or {f"direction.{L}": rng.standard_normal(8).astype(np.float32) for L in (3, 4)}
    return pk.write_pack(folder, name=name, kind=kw.pop("kind", "steering"), version=version, model_checksum=CK_A,
                         layers=kw.pop("layers", [3, 4]), tensors=tensors,
                         made_with={"data": "pairs.jsonl", "method": "mean", "seed": seed},
                         metrics={"separation": 1.5}, **kw)


# -- the format ------------------------------------------------------------------------------------


def test_write_then_load_round_trips_through_safetensors_and_hashlib(tmp_path):
    tensors = {"direction.3": np.arange(8, dtype=np.float32), "direction.4": -np.arange(8, dtype=np.float32)}
    folder = make(tmp_path / "p", tensors=tensors, extra_files={"README.md": b"why this pack exists\n"})
    meta = json.loads((folder / "pack.json").read_text())
    assert meta["name"] == "concept" and meta["kind"] == "steering" and meta["version"] == "1.0.0"
    assert meta["model"]["checksum"] == CK_A and meta["layers"] == [3, 4]
    assert meta["made_with"]["method"] == "mean" and meta["made_with"]["seed"] == 0
    assert meta["made_with"]["code_version"].startswith("tensor-surgery ")
    # every file but pack.json is listed with its real sha256 and size
    assert sorted(meta["files"]) == ["README.md", "tensors.safetensors"]
    for rel, entry in meta["files"].items():
        blob = (folder / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    oracle = load_file(folder / "tensors.safetensors")
    assert sorted(oracle) == sorted(tensors)
    pack = pk.load_pack(folder)
    for k, v in tensors.items():
        np.testing.assert_array_equal(oracle[k], v)
        np.testing.assert_array_equal(pack.tensors[k], v)
    assert pack.warnings == [] and pack.layers == [3, 4]
    # no partial folder left behind
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_other_weights_warn_naming_both_checksums(tmp_path):
    folder = make(tmp_path / "p")
    assert pk.load_pack(folder, model_checksum=CK_A).warnings == []
    warning = pk.load_pack(folder, model_checksum=CK_B).warnings
    assert len(warning) == 1 and CK_A in warning[0] and CK_B in warning[0]


def test_existing_folder_is_replaced_only_on_purpose(tmp_path):
    folder = make(tmp_path / "p")
    with pytest.raises(pk.InvalidPack, match="already exists"):
        make(folder, version="2")
    make(folder, version="2", overwrite=True)
    assert pk.load_pack(folder).version == "2"
    (tmp_path / "notpack").mkdir()
    (tmp_path / "notpack" / "data.txt").write_text("mine")
    with pytest.raises(pk.InvalidPack, match="not a pack folder"):
        make(tmp_path / "notpack", overwrite=True)
    assert (tmp_path / "notpack" / "data.txt").read_text() == "mine"


@pytest.mark.parametrize("field,value,match", [
    ("kind", "weights", "'kind'"),
    ("version", "v1", "'version'"),
    ("name", "../x", "'name'"),
    ("layers", [1, 1], "'layers'"),
    ("metrics", {"f1": float("nan")}, "'metrics'"),
])
def test_bad_fields_are_refused_naming_the_field(tmp_path, field, value, match):
    args = dict(name="ok", kind="probe", version="1", model_checksum=CK_A, layers=[0],
                tensors={"w": np.zeros(2, np.float32)}, made_with={}, metrics={})
    args[field] = value
    with pytest.raises(pk.InvalidPack, match=match):
        pk.write_pack(tmp_path / "p", **args)
    assert not (tmp_path / "p").exists()


def _rewrite_manifest(folder: Path, edit) -> None:
    meta = json.loads((folder / "pack.json").read_text())
    edit(meta)
    (folder / "pack.json").write_text(json.dumps(meta))


def test_corrupted_tensor_file_is_refused_not_half_loaded(tmp_path):
    folder = make(tmp_path / "p", extra_files={"notes.txt": b"x"})
    blob = bytearray((folder / "tensors.safetensors").read_bytes())
    blob[-1] ^= 0x01  # one bit of one value: still valid safetensors, wrong checksum
    (folder / "tensors.safetensors").write_bytes(bytes(blob))
    with pytest.raises(pk.InvalidPack, match=r"tensors\.safetensors: checksum mismatch") as e:
        pk.load_pack(folder)
    assert e.value.context["field"] == "files.tensors.safetensors"


def test_missing_file_is_refused(tmp_path):
    folder = make(tmp_path / "p")
    (folder / "tensors.safetensors").unlink()
    with pytest.raises(pk.InvalidPack, match="missing"):
        pk.load_pack(folder)


def test_pickles_are_refused_listed_or_not(tmp_path):
    folder = make(tmp_path / "p")
    (folder / "probe.pt").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(pk.InvalidPack, match="probe.pt is a pickle"):
        pk.load_pack(folder)
    (folder / "probe.pt").unlink()
    # a pickle under an innocent name, listed with its right checksum, is refused by its bytes
    blob = pickle.dumps({"w": [1, 2]}, protocol=4)
    (folder / "notes.txt").write_bytes(blob)
    _rewrite_manifest(folder, lambda m: m["files"].__setitem__(
        "notes.txt", {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}))
    with pytest.raises(pk.InvalidPack, match="look like a pickle"):
        pk.load_pack(folder)


def test_unlisted_files_and_links_are_refused(tmp_path):
    folder = make(tmp_path / "p")
    (folder / "extra.json").write_text("{}")
    with pytest.raises(pk.InvalidPack, match="extra.json is not listed"):
        pk.load_pack(folder)
    (folder / "extra.json").unlink()
    (tmp_path / "secret.txt").write_text("s")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(pk.InvalidPack, match="link"):
        pk.load_pack(folder)


@pytest.mark.parametrize("rel", ["../secret.safetensors", "/etc/passwd.json", "a/../../b.json", "a\\..\\b.json"])
def test_paths_escaping_the_folder_are_refused(tmp_path, rel):
    folder = make(tmp_path / "p")
    _rewrite_manifest(folder, lambda m: m["files"].__setitem__(rel, {"sha256": "0" * 64, "size": 1}))
    with pytest.raises(pk.InvalidPack) as e:
        pk.load_pack(folder)
    assert "pack.json" in e.value.message and repr(rel) in e.value.message


def test_versions_compare_as_numbers():
    assert pk.version_key("1.10") > pk.version_key("1.9")
    assert pk.version_key("2") == pk.version_key("2.0.0")
    assert max(["1.2", "1.10", "1.9.9"], key=pk.version_key) == "1.10"


# -- the registry and the `pack` command ---------------------------------------------------------------

import io  # noqa: E402
import tarfile  # noqa: E402
import zipfile  # noqa: E402

from tensor_surgery.interp.registry import PackRegistry  # noqa: E402


def cli(data_dir: Path, *args, env=None):
    """`tensor-surgery pack ARGS --json` in-process: (exit status, parsed stdout, stderr)."""
    from click.testing import CliRunner

    from tensor_surgery.cli import main

    r = CliRunner().invoke(main, ["pack", *args, "--json"], env={"DATA_DIR": str(data_dir), **(env or {})})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


@pytest.fixture()
def remote(tmp_path):
    """A folder remote holding versions 1.0.0 and 1.1.0 of pack 'concept'."""
    root = tmp_path / "remote"
    make(root / "1.0.0", version="1.0.0", seed=1)
    make(root / "1.1.0", version="1.1.0", seed=2)
    return root


def test_install_status_push_verify_remove_round_trip_through_a_folder_remote(tmp_path, remote):
    data = tmp_path / "data"
    rc, out, err = cli(data, "install", str(tmp_path / "nowhere"))
    assert rc == 2 and out["error"]["code"] == "invalid_pack_source" and "nowhere" in out["error"]["message"]
    rc, out, err = cli(data, "install", str(remote), "--version", "1.0.0")
    assert rc == 0, err
    assert out["name"] == "concept" and out["version"] == "1.0.0"
    installed = data / "packs" / "concept"
    # what is installed is byte for byte the remote's 1.0.0
    for rel in ("pack.json", "tensors.safetensors"):
        assert (installed / rel).read_bytes() == (remote / "1.0.0" / rel).read_bytes()
    rc, out, _ = cli(data, "list")
    [row] = out["packs"]
    assert row["source"] == {"type": "folder", "location": str(remote.resolve())}
    assert row["modified"] is False and row["size"] == sum(f.stat().st_size for f in installed.iterdir())
    rc, out, _ = cli(data, "status")
    assert out["packs"][0]["newer"] is True and out["packs"][0]["latest"] == "1.1.0"
    assert cli(data, "verify", "concept")[0] == 0

    # push to a second remote and into a tar; install each elsewhere; same tensors
    rc, out, err = cli(data, "push", "concept", str(tmp_path / "mirror"))
    assert rc == 0, err and out["dest"]["type"] == "folder"
    assert (tmp_path / "mirror" / "1.0.0" / "tensors.safetensors").read_bytes() == \
        (installed / "tensors.safetensors").read_bytes()
    rc, out, err = cli(data, "push", "concept", str(tmp_path / "concept.tar.gz"))
    assert rc == 0, err
    with tarfile.open(tmp_path / "concept.tar.gz") as t:
        assert sorted(t.getnames()) == ["pack.json", "tensors.safetensors"]
    other = tmp_path / "data2"
    assert cli(other, "install", str(tmp_path / "concept.tar.gz"))[0] == 0
    assert cli(other, "install", str(tmp_path / "mirror"))[0] == 0
    oracle = load_file(remote / "1.0.0" / "tensors.safetensors")
    got = load_file(other / "packs" / "concept" / "tensors.safetensors")
    assert all(np.array_equal(oracle[k], got[k]) for k in oracle)

    # upgrade to the newest: status is up to date
    rc, out, _ = cli(data, "install", str(remote))
    assert rc == 0 and out["version"] == "1.1.0" and out["replaced"] == "1.0.0"
    assert cli(data, "status")[1]["packs"][0]["newer"] is False

    # remove
    rc, out, _ = cli(data, "remove", "concept")
    assert rc == 0 and not installed.exists() and cli(data, "list")[1]["packs"] == []


def test_local_modification_is_detected_and_protected(tmp_path, remote):
    reg = PackRegistry(tmp_path / "data")
    reg.install(str(remote), "1.0.0")
    folder = reg.path("concept")
    assert reg.list()[0]["modified"] is False
    # rewritten on purpose (still a valid pack): modified, verifies
    make(folder, version="1.0.0", seed=9, overwrite=True)
    assert reg.list()[0]["modified"] is True
    assert reg.verify("concept")["ok"] is True
    # installing over it needs force, and nothing is lost without it
    before = (folder / "tensors.safetensors").read_bytes()
    with pytest.raises(pk.SurgeryError, match="modified locally"):
        reg.install(str(remote), "1.1.0")
    assert (folder / "tensors.safetensors").read_bytes() == before
    # damaged: modified and verify fails with exit 1 naming the file
    blob = bytearray(before)
    blob[-1] ^= 1
    (folder / "tensors.safetensors").write_bytes(bytes(blob))
    rc, out, _ = cli(tmp_path / "data", "verify", "concept")
    assert rc == 1 and out["ok"] is False and "tensors.safetensors" in out["errors"][0]["message"]
    assert out["modified"] is True
    assert reg.install(str(remote), "1.1.0", force=True)["version"] == "1.1.0"
    assert reg.verify("concept")["ok"] and reg.list()[0]["modified"] is False


def test_corrupted_registry_is_rebuilt_from_installed_folders_with_a_warning(tmp_path, remote):
    data = tmp_path / "data"
    PackRegistry(data).install(str(remote))
    (data / "packs" / "registry.json").write_text('{"format": "tensor-surgery-pack-registry", "packs": [1,')
    rc, out, err = cli(data, "list")
    assert rc == 0
    [row] = out["packs"]
    assert row["name"] == "concept" and row["version"] == "1.1.0" and row["source"] is None
    assert "corrupted" in out["warnings"][0] and "rebuilt" in out["warnings"][0]
    # the bad file is kept beside it, and the rebuilt registry reads cleanly from now on
    assert [p.name for p in (data / "packs").glob("registry.json.corrupt-*")]
    assert "warnings" not in cli(data, "list")[1]
    assert cli(data, "verify", "concept")[0] == 0


def _tar_with(path: Path, members) -> None:
    with tarfile.open(path, "w") as t:
        for info, blob in members:
            t.addfile(info, io.BytesIO(blob) if blob is not None else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_hostile_tar_is_refused_before_anything_is_written(tmp_path, kind):
    def member(name, blob=b"x", type_=tarfile.REGTYPE, link=""):
        i = tarfile.TarInfo(name)
        i.size, i.type, i.linkname = (len(blob) if blob else 0), type_, link
        return i, blob if type_ == tarfile.REGTYPE else None

    bad = {"dotdot": member("../evil.json"), "absolute": member("/tmp/evil.json"),
           "symlink": member("pack.json", type_=tarfile.SYMTYPE, link="/etc/passwd"),
           "hardlink": member("x.json", type_=tarfile.LNKTYPE, link="/etc/passwd")}[kind]
    arch = tmp_path / "bad.tar"
    _tar_with(arch, [member("ok.json"), bad])
    data = tmp_path / "data"
    rc, out, _ = cli(data, "install", str(arch))
    assert rc == 1 and out["error"]["code"] == "invalid_pack" and "bad.tar" in out["error"]["message"]
    assert not (tmp_path / "evil.json").exists()
    assert [p.name for p in (data / "packs").iterdir() if not p.name.startswith(".registry")] == []


def test_hostile_zip_and_pickled_pack_are_refused(tmp_path, remote):
    arch = tmp_path / "bad.zip"
    with zipfile.ZipFile(arch, "w") as z:
        z.writestr("../../evil.json", "{}")
    reg = PackRegistry(tmp_path / "data")
    with pytest.raises(pk.InvalidPack, match="escapes"):
        reg.install(str(arch))
    # a remote version carrying a pickle is refused and nothing is installed
    (remote / "1.1.0" / "extra.pkl").write_bytes(pickle.dumps([1]))
    with pytest.raises(pk.InvalidPack, match="pickle"):
        reg.install(str(remote))
    assert reg.list() == [] and not reg.path("concept").exists()


def test_push_refuses_to_overwrite_a_different_version_at_the_remote(tmp_path, remote):
    reg = PackRegistry(tmp_path / "data")
    reg.install(str(remote), "1.0.0")
    assert reg.push("concept", str(remote))["unchanged"] is True  # same bytes already there
    make(reg.path("concept"), version="1.0.0", seed=5, overwrite=True)
    with pytest.raises(pk.SurgeryError, match="bump the pack's version"):
        reg.push("concept", str(remote))
    make(tmp_path / "other" / "1.0.0", name="other")
    with pytest.raises(pk.SurgeryError, match="remote of pack 'other'"):
        reg.push("concept", str(tmp_path / "other"))


# -- the Hugging Face code path, against a local hub ---------------------------------------------------


def test_install_and_status_from_a_hugging_face_repo_through_huggingface_hub(tmp_path, remote):
    """The real huggingface_hub client (a subprocess with HF_ENDPOINT set, as a user runs it) against
    tests/test_download.py's local hub serving a repo laid out like a folder remote."""
    import os
    import subprocess
    import sys

    from .test_download import REPO_ID, FakeHub

    hub = FakeHub()
    try:
        hub.files = {f"{v}/{f.name}": (f.read_bytes(), f.suffix == ".safetensors")
                     for v in ("1.0.0", "1.1.0") for f in sorted((remote / v).iterdir())}
        hub.files["README.md"] = (b"concept packs\n", False)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
               "DATA_DIR": str(tmp_path / "data")}

        def run(*args):
            p = subprocess.run([sys.executable, "-c", "from tensor_surgery.cli import main; main()", "pack", *args,
                                "--json"], capture_output=True, text=True, env=env, timeout=180)
            return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr

        rc, out, err = run("install", f"hf:{REPO_ID}", "--version", "1.0.0")
        assert rc == 0, err
        assert out["version"] == "1.0.0" and out["source"] == {"type": "hf", "location": REPO_ID}
        installed = tmp_path / "data" / "packs" / "concept"
        assert sorted(p.name for p in installed.iterdir()) == ["pack.json", "tensors.safetensors"]
        assert (installed / "tensors.safetensors").read_bytes() == (remote / "1.0.0" / "tensors.safetensors").read_bytes()
        rc, out, _ = run("status")
        assert rc == 0 and out["packs"][0]["latest"] == "1.1.0" and out["packs"][0]["newer"] is True
        # a version the hub does not have is bad input naming what it has; a corrupted file is refused
        rc, out, _ = run("install", f"hf:{REPO_ID}", "--version", "9")
        assert rc == 2 and "has no version 9" in out["error"]["message"] and "1.1.0" in out["error"]["message"]
        hub.serve_wrong_bytes.add("1.1.0/tensors.safetensors")
        rc, out, _ = run("install", f"hf:{REPO_ID}")
        assert rc == 1, out
        assert pk.load_pack(installed).version == "1.0.0"  # nothing installed is lost
    finally:
        hub.server.shutdown()


def test_push_to_a_hugging_face_repo_then_install_it_elsewhere_byte_for_byte(tmp_path, remote):
    """`pack push NAME hf:owner/name` through the real huggingface_hub client (create_repo, then
    upload_folder's preupload + NDJSON commit) into tests/test_download.py's local hub; a fresh
    registry then installs it from the same hub and gets the very bytes. A hub that refuses the
    write (401, 403) is a clear error, exit 1, and nothing local changes."""
    import os
    import subprocess
    import sys

    from tensor_surgery.interp.registry import file_checksums

    from .test_download import FakeHub

    hub = FakeHub()
    try:
        base = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
                "HF_TOKEN": "hf_local_test_token", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1"}

        def run(data: Path, *args):
            p = subprocess.run([sys.executable, "-c", "from tensor_surgery.cli import main; main()", "pack", *args,
                                "--json"], capture_output=True, text=True, env={**base, "DATA_DIR": str(data)},
                               timeout=180)
            return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr

        data = tmp_path / "data"
        assert cli(data, "install", str(remote), "--version", "1.1.0")[0] == 0
        installed = data / "packs" / "concept"
        rc, out, err = run(data, "push", "concept", "hf:acme/concept-packs")
        assert rc == 0, (out, err)
        assert out["version"] == "1.1.0" and out["dest"] == {"type": "hf", "location": "acme/concept-packs"}
        assert "/api/repos/create" in hub.posts and "/api/models/acme/concept-packs/commit/main" in hub.posts
        # the hub holds the version's files under 1.1.0/, byte for byte
        stored = hub.pushed["acme/concept-packs"]
        assert sorted(stored) == ["1.1.0/pack.json", "1.1.0/tensors.safetensors"]
        for rel in ("pack.json", "tensors.safetensors"):
            assert stored[f"1.1.0/{rel}"][0] == (installed / rel).read_bytes()

        # a fresh registry installs it from the hub: the same bytes, and the safetensors library agrees
        fresh = tmp_path / "fresh"
        rc, out, err = run(fresh, "install", "hf:acme/concept-packs")
        assert rc == 0, (out, err)
        assert out["version"] == "1.1.0" and out["source"] == {"type": "hf", "location": "acme/concept-packs"}
        got = fresh / "packs" / "concept"
        assert sorted(p.name for p in got.iterdir()) == ["pack.json", "tensors.safetensors"]
        for rel in ("pack.json", "tensors.safetensors"):
            assert (got / rel).read_bytes() == (remote / "1.1.0" / rel).read_bytes()
        for key, arr in load_file(remote / "1.1.0" / "tensors.safetensors").items():
            np.testing.assert_array_equal(load_file(got / "tensors.safetensors")[key], arr)
        assert cli(fresh, "verify", "concept")[0] == 0
        # the same version again is a conflict (bump the version), and the hub is not written
        posts = len(hub.posts)
        rc, out, _ = run(data, "push", "concept", "hf:acme/concept-packs")
        assert rc == 1 and out["error"]["code"] == "conflict" and "already has version 1.1.0" in out["error"]["message"]
        assert len(hub.posts) == posts

        # a hub that refuses the write: exit 1 naming the repo and the refusal; nothing local changed
        before = ((data / "packs" / "registry.json").read_bytes(), file_checksums(installed))
        for status in (401, 403):
            hub.refuse_writes = status
            rc, out, _ = run(data, "push", "concept", "hf:acme/elsewhere")
            assert rc == 1, out
            err = out["error"]
            assert err["code"] == "pack_source_error" and "hf:acme/elsewhere" in err["message"]
            assert str(status) in err["message"]
            assert ((data / "packs" / "registry.json").read_bytes(), file_checksums(installed)) == before
        assert "acme/elsewhere" not in hub.pushed
    finally:
        hub.server.shutdown()


# -- the API -----------------------------------------------------------------------------------------------


def test_packs_api_installs_verifies_and_refuses_bad_input(tmp_path, remote):
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .conftest import BASE_URL, make_settings, write_tiny_llama

    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    app = create_app(make_settings(tmp_path, model, allowed_roots=[tmp_path / "m", tmp_path / "data", remote]))
    with TestClient(app, base_url=BASE_URL) as c:
        r = c.post("/api/packs/install", json={"source": str(remote), "version": "1.0.0"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "1.0.0"
        [row] = c.get("/api/packs").json()["packs"]
        assert row["name"] == "concept" and row["modified"] is False
        assert c.get("/api/packs/status").json()["packs"][0]["latest"] == "1.1.0"
        assert c.post("/api/packs/concept/verify").json()["ok"] is True
        # a path outside ALLOWED_ROOTS is refused before anything is read
        outside = tmp_path / "elsewhere"
        make(outside / "1.0.0")
        r = c.post("/api/packs/install", json={"source": str(outside)})
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
        # a damaged pack verifies as failed, naming the file (a 200 report, not an error)
        blob = tmp_path / "data" / "packs" / "concept" / "tensors.safetensors"
        blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
        report = c.post("/api/packs/concept/verify").json()
        assert report["ok"] is False and "tensors.safetensors" in report["errors"][0]["message"]
        assert c.get("/api/packs").json()["packs"][0]["modified"] is True
        # the monitor needs the live model; unknown packs are 404; bad names are 422
        r = c.put("/api/packs/monitor", json={"packs": ["concept"]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "live_not_loaded"
        assert c.post("/api/packs/nope/verify").status_code == 404
        assert c.delete("/api/packs/..%2Fetc").status_code in (404, 422)
        assert c.delete("/api/packs/concept").json()["removed"] is True
        assert c.get("/api/packs").json()["packs"] == []
