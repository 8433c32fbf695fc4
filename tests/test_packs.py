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
