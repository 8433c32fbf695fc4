"""Errors that carry their context and say what to do next.

Every failure a user can cause is a `SurgeryError` subclass with a stable `code`, a readable
`message` and context fields (file, tensor, field, offset...). The web layer turns them into
`{"error": {"code", "message", ...context}}` with the class's 4xx status; the CLI prints one line
and exits with the class's `exit_code`. Anything else escaping is a bug.
"""

from __future__ import annotations

from typing import Any


class SurgeryError(Exception):
    code = "error"
    http_status = 400
    exit_code = 2  # bad input by default; failures of an operation use 1

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.context}

    def __str__(self) -> str:
        return self.message


class InvalidModelFile(SurgeryError):
    """The file is not a valid safetensors file (or a shard index is broken)."""

    code = "invalid_model_file"
    http_status = 422


class ModelNotFound(SurgeryError):
    code = "model_not_found"
    http_status = 404


class ModelChanged(SurgeryError):
    """A file changed on disk after it was opened: its mapping can no longer be trusted."""

    code = "model_changed"
    http_status = 409
    exit_code = 1


class TensorNotFound(SurgeryError):
    code = "tensor_not_found"
    http_status = 404


class PathNotAllowed(SurgeryError):
    code = "path_not_allowed"
    http_status = 403


class InvalidRequest(SurgeryError):
    """A parameter is out of range or malformed (slice bounds, indices, options)."""

    code = "invalid_request"
    http_status = 400


class TooLarge(SurgeryError):
    code = "too_large"
    http_status = 413


class UnsupportedDtype(SurgeryError):
    """The dtype is valid safetensors, but its values cannot be decoded here."""

    code = "unsupported_dtype"
    http_status = 422


class Conflict(SurgeryError):
    code = "conflict"
    http_status = 409
    exit_code = 1
