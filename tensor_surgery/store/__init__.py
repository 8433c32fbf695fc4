"""Reading models: safetensors parsing and validation, memory-mapped tensors, sharded indexes,
layout inference, slices, overviews and streaming statistics. numpy + ml_dtypes only (and, for
GGUF files, the numpy-only `gguf` package: see gguf.py)."""

from .model import Model, SafetensorsFile, TensorRef, open_model, resolve_model_path
from .reader import TensorReader

__all__ = ["Model", "SafetensorsFile", "TensorRef", "TensorReader", "open_model", "resolve_model_path"]
