"""Helpers shared by the export / patch / crash tests: real models written with the safetensors
library, expected file bytes computed independently of the writer, and patches built by hand."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from tensor_surgery.surgery import hexpatch as hp

SIDE = {
    "config.json": '{"model_type": "llama", "hidden_size": 16}\n',
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
    "tokenizer_config.json": '{"model_max_length": 2048}\n',
    "generation_config.json": '{"do_sample": false}\n',
}


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """name -> sha256 of every regular file directly in `folder` (hidden files included), except
    an export's marker, which differs between two exports of the same bytes (times, inodes)."""
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".tensor-surgery-export.json"}


def header_of(path: str | Path) -> tuple[bytes, dict]:
    """(the first 8+N bytes, the parsed header) of a safetensors file, read by hand."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return struct.pack("<Q", n) + raw, json.loads(raw)


def expected_bytes(path: str | Path, runs: dict[str, list[tuple[int, bytes]]]) -> bytes:
    """The source file's bytes with `runs` (tensor-relative) written over them."""
    data = bytearray(Path(path).read_bytes())
    head, meta = header_of(path)
    for name, rs in runs.items():
        if name not in meta:
            continue
        begin = len(head) + meta[name]["data_offsets"][0]
        for off, new in rs:
            data[begin + off : begin + off + len(new)] = new
    return bytes(data)


def tensor_bytes(path: str | Path, name: str) -> bytes:
    head, meta = header_of(path)
    b, e = meta[name]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(len(head) + b)
        return f.read(e - b)


def random_tensors(seed: int = 0, layers: int = 3, hidden: int = 32, vocab: int = 96) -> dict[str, np.ndarray]:
    from .conftest import tiny_llama_tensors

    return tiny_llama_tensors(layers=layers, hidden=hidden, inter=2 * hidden, vocab=vocab, seed=seed)


def write_sharded(folder: Path, shards: int = 3, seed: int = 0, side_files: bool = True) -> Path:
    """An HF-style sharded model: model-0000i-of-0000n.safetensors + index + side files."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(seed)
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    total = 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(folder / fname), metadata={"format": "pt"})
        for n in group:
            weight_map[n] = fname
            total += tensors[n].nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if side_files:
        add_side_files(folder)
    return folder / "model.safetensors.index.json"


def add_side_files(folder: Path) -> None:
    for name, text in SIDE.items():
        (folder / name).write_text(text)
    (folder / "notes.txt").write_text("not part of the model\n")


def flip_bytes(path: str | Path, name: str, offsets: list[int], length: int = 2) -> list[hp.PatchEntry]:
    """Entries that invert every bit of `length` bytes at each offset of `name` (read from the file)."""
    head, meta = header_of(path)
    data = tensor_bytes(path, name)
    info = meta[name]
    out = []
    for off in offsets:
        orig = data[off : off + length]
        out.append(hp.PatchEntry(name, off, orig, bytes(b ^ 0xFF for b in orig), info["dtype"], tuple(info["shape"])))
    return out


def write_patch(path: Path, entries: list[hp.PatchEntry], description: str = "test patch") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hp.HexPatch(entries, description).dumps())
    return path


def runs_of(entries: list[hp.PatchEntry]) -> dict[str, list[tuple[int, bytes]]]:
    runs: dict[str, list[tuple[int, bytes]]] = {}
    for e in entries:
        runs.setdefault(e.tensor_name, []).append((e.offset_bytes, e.new))
    return runs
