"""Whether a model folder can run in the live view: checked without importing torch."""

from __future__ import annotations

from pathlib import Path

from ..errors import SurgeryError
from ..store import Model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class LiveUnavailable(SurgeryError):
    code = "live_unavailable"
    http_status = 409


def check_hf_folder(model: Model) -> Path:
    """The model's folder, if it is a Hugging Face model folder the live view can load."""
    folder = Path(model.path).parent
    why = None
    if not (folder / "config.json").is_file():
        why = "it has no config.json"
    elif not any((folder / f).is_file() for f in TOKENIZER_FILES):
        why = "it has no tokenizer files"
    if why:
        raise LiveUnavailable(
            f"the live view needs a Hugging Face model folder (config.json, tokenizer, safetensors); "
            f"{folder} cannot run: {why}. The explorer keeps working.",
            folder=str(folder),
        )
    return folder
