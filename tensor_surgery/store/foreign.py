"""Name the model formats that are not safetensors, by their first bytes, to say what to do.

A GGUF file or a PyTorch checkpoint opened by mistake would otherwise read as a safetensors file
whose 8-byte header length is absurd ("header length ... over the limit"), which tells a user
nothing. These checks only look at magic numbers and, for zip archives, at the name of the first
member in its local header: nothing is decompressed, and nothing is ever unpickled.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

_ZIP_LOCAL = b"PK\x03\x04"
SNIFF_BYTES = 4096  # enough for the magic numbers and a zip member's name
_TO_SAFETENSORS = "convert it to .safetensors"


@dataclass(frozen=True)
class ForeignFormat:
    code: str  # stable, for the error context: gguf, pytorch_zip, pytorch_pickle, npz, npy, zip, hdf5
    what: str  # "a GGUF file (llama.cpp's format)"
    todo: str  # what to do, as a clause


_GGUF = ForeignFormat(
    "gguf", "a GGUF file (llama.cpp's format)",
    f"{_TO_SAFETENSORS} first, e.g. transformers' from_pretrained(folder, gguf_file=...) "
    "then save_pretrained(out, safe_serialization=True)",
)
_PT_ZIP = ForeignFormat(
    "pytorch_zip", "a PyTorch checkpoint (torch.save zip archive, .bin/.pt/.pth)",
    f"{_TO_SAFETENSORS} first, in an environment you trust, e.g. "
    "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')",
)
_PT_PICKLE = ForeignFormat(
    "pytorch_pickle", "a Python pickle (a legacy PyTorch .bin/.pt checkpoint)",
    f"{_TO_SAFETENSORS} first, in an environment you trust: loading a pickle can run code, so "
    "this tool never does",
)
_NPZ = ForeignFormat(
    "npz", "a numpy .npz archive",
    f"{_TO_SAFETENSORS} first, e.g. safetensors.numpy.save_file(dict(numpy.load(path)), "
    "'model.safetensors')",
)
_NPY = ForeignFormat(
    "npy", "a numpy .npy array",
    f"{_TO_SAFETENSORS} first, e.g. safetensors.numpy.save_file({{'weight': numpy.load(path)}}, "
    "'model.safetensors')",
)
_ZIP = ForeignFormat("zip", "a zip archive", "unpack it and open the .safetensors file inside")
_HDF5 = ForeignFormat("hdf5", "an HDF5 file (e.g. a Keras .h5 model)", f"{_TO_SAFETENSORS} first")


# what a pickle's first opcode after PROTO is, in what torch and pickle write: FRAME, LONG1
# (torch's legacy magic number), EMPTY_DICT, MARK, GLOBAL, EMPTY_LIST, SHORT_BINUNICODE
_PICKLE_SECOND_OPCODES = frozenset(b"\x95\x8a}(c]\x8c")


def sniff(head: bytes, pickle: bool = True) -> ForeignFormat | None:
    """The foreign format whose magic number `head` (a file's first bytes) starts with, or None.

    The multi-byte magic numbers read as safetensors header lengths over the 100 MB limit (the zip
    one just under it), so they cannot be mistaken for a safetensors file. A pickle's two-byte
    start can: give `pickle=False` when the file's length field looked plausible.
    """
    if head.startswith(b"GGUF"):
        return _GGUF
    if head.startswith(_ZIP_LOCAL):
        return _zip_kind(head)
    if head.startswith(b"\x93NUMPY"):
        return _NPY
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return _HDF5
    # pickle protocol 2-5 opens with PROTO (0x80) and the protocol number; torch's legacy
    # format is a pickle of a magic number, then of the storages
    if (pickle and len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5
            and head[2] in _PICKLE_SECOND_OPCODES):
        return _PT_PICKLE
    return None


def _zip_kind(head: bytes) -> ForeignFormat:
    """torch.save archives name their first member `<folder>/data.pkl` (or `.../byteorder`,
    `.../.format_version`, written first by newer versions); .npz members end in `.npy`."""
    if len(head) < 30:
        return _ZIP
    name_len = struct.unpack_from("<H", head, 26)[0]
    name = head[30 : 30 + name_len].decode("utf-8", "replace")
    if name.endswith(".npy"):
        return _NPZ
    leaf = name.rsplit("/", 1)[-1]
    if "/" in name and leaf in ("data.pkl", "byteorder", ".format_version", "version", ".data"):
        return _PT_ZIP
    if name.startswith(".data/") or "/.data/" in name:
        return _PT_ZIP
    return _ZIP


def sniff_file(path: str | os.PathLike) -> ForeignFormat | None:
    """`sniff` of a regular file's first bytes (None if it cannot be read: not ours to report)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return sniff(os.pread(fd, SNIFF_BYTES, 0))
    except OSError:
        return None
    finally:
        os.close(fd)


def message(path: str, fmt: ForeignFormat) -> str:
    return f"{path}: is {fmt.what}, not a safetensors file: {fmt.todo}"


# names worth sniffing in a folder that holds no safetensors (a model folder holds a few dozen
# files at most; anything else is skipped rather than opened)
_CANDIDATE_SUFFIXES = (".gguf", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".h5", ".pkl", ".zip")
_MAX_SNIFFED = 64


def folder_message(folder: str) -> tuple[str, list[dict]] | None:
    """For a folder without safetensors: a sentence naming the foreign model files it holds (by
    their bytes, not their names), and those files as `{name, format}`; None if it holds none."""
    found: list[tuple[str, ForeignFormat]] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if len(found) >= _MAX_SNIFFED:
            break
        if not entry.name.lower().endswith(_CANDIDATE_SUFFIXES):
            continue
        fmt = sniff_file(entry.path)
        if fmt is not None:
            found.append((entry.name, fmt))
    if not found:
        return None
    kinds = list(dict.fromkeys(f for _, f in found))
    names = ", ".join(n for n, _ in found[:5]) + (", ..." if len(found) > 5 else "")
    what = " and ".join(k.what for k in kinds)
    todo = kinds[0].todo if len(kinds) == 1 else f"{_TO_SAFETENSORS} first"
    msg = (f"{folder}: holds no .safetensors file, only {what} ({names}): this tool reads "
           f"safetensors only; {todo}")
    return msg, [{"name": n, "format": f.code} for n, f in found]
