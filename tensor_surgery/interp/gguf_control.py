"""llama.cpp control vectors: GGUF files of steering directions, written the way repeng writes them.

A control vector file has the GGUF architecture `controlvector`, the keys
`controlvector.model_hint` (the model type it was made for, e.g. "llama") and
`controlvector.layer_count`, and one F32 tensor of the model's width per layer named
`direction.{L}`. llama.cpp adds `direction.{L}` to the output of its layer L (0-based), the same
block our `direction.{L}` is read from and added to; it has no slot for layer 0 (its loader
refuses `direction.0`), so an export leaves block 0 out and says so.

Only the `gguf` package (numpy) is needed: no torch.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, SurgeryError
from .steering import SteeringVector

ARCH = "controlvector"
_DIRECTION = re.compile(r"direction\.(\d{1,6})")


class InvalidControlVector(SurgeryError):
    code = "invalid_control_vector"
    http_status = 422


def write_control_vector(path: Path, vec: SteeringVector, model_hint: str) -> dict:
    """Write `vec` as a llama.cpp control vector at `path` (atomically); returns what was written."""
    import gguf

    path = Path(path)
    layers = [L for L in vec.layers if L > 0]
    skipped = [L for L in vec.layers if L == 0]
    if not layers:
        raise InvalidRequest(f"vector {vec.name!r} has only block 0, which llama.cpp control vectors cannot hold",
                             field="layers")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        for L in layers:
            writer.add_tensor(f"direction.{L}", np.ascontiguousarray(vec.vectors[L], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    out = {"path": str(path), "format": "gguf", "arch": ARCH, "model_hint": model_hint, "layers": layers}
    if skipped:
        out["skipped"] = {"layers": skipped, "why": "llama.cpp control vectors have no slot for block 0"}
    return out


def read_control_vector(path: Path, name: str | None = None) -> tuple[SteeringVector, str | None]:
    """A control vector GGUF -> (vector, its model hint). Refuses anything else, naming the field."""
    import gguf

    path = Path(path)
    src = str(path)
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError, KeyError) as e:  # the gguf package's ways of saying "not GGUF"
        raise InvalidControlVector(f"{src} is not a readable GGUF file ({type(e).__name__}: {e})", file=src) from None
    arch = _string(reader, "general.architecture")
    if arch != ARCH:
        raise InvalidControlVector(f"{src} is a GGUF file for architecture {arch!r}, not a control vector "
                                   f"({ARCH!r}); it holds model weights, not steering directions",
                                   file=src, field="general.architecture", found=arch)
    hint = _string(reader, f"{ARCH}.model_hint")
    vectors: dict[int, np.ndarray] = {}
    width = None
    for t in reader.tensors:
        m = _DIRECTION.fullmatch(t.name)
        if not m:
            raise InvalidControlVector(f"{src}: tensor {t.name!r} is not named direction.N", file=src, field=t.name)
        data = np.asarray(t.data)
        if data.dtype not in (np.float32, np.float16) or data.size == 0:
            raise InvalidControlVector(f"{src}: {t.name} is {t.tensor_type.name}; control vectors hold F32 (or F16) values",
                                       file=src, field=t.name)
        v = data.reshape(-1).astype(np.float32)
        if width is not None and v.shape[0] != width:
            raise InvalidControlVector(f"{src}: {t.name} has {v.shape[0]} values, the other directions {width}",
                                       file=src, field=t.name)
        width = v.shape[0]
        L = int(m.group(1))
        if L in vectors:
            raise InvalidControlVector(f"{src}: {t.name} appears twice", file=src, field=t.name)
        vectors[L] = v
    if not vectors:
        raise InvalidControlVector(f"{src} holds no direction.N tensors", file=src, field="tensors")
    made_with = {"imported_from": path.name, "format": "gguf", "model_type": hint, "hidden_size": width}
    return SteeringVector(name or path.stem, vectors, made_with, {}), hint


def check_for_model(vec: SteeringVector, hint: str | None, model_type: str | None, hidden_size: int,
                    n_layers: int, source: str) -> None:
    """Refuse a control vector made for another architecture or width."""
    from .steering import check_vector

    if hint and model_type and hint != model_type:
        raise InvalidControlVector(f"{source} was made for a {hint!r} model ({ARCH}.model_hint); this model is "
                                   f"{model_type!r}", file=source, field=f"{ARCH}.model_hint", found=hint,
                                   expected=model_type)
    try:
        check_vector(vec, hidden_size, n_layers, source)
    except InvalidRequest as e:
        raise InvalidControlVector(e.message, **e.context) from None


def _string(reader, key: str) -> str | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    except (IndexError, UnicodeDecodeError, TypeError):
        return None
