"""The one typed Settings object: environment variables and `.env`, each with a default and help.

`.env.example` lists every setting; `tensor-surgery serve --show-settings` prints them with
secrets redacted.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_MODEL = "SmolLM2-135M-Instruct"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    model_path: Path | None = Field(
        None,
        description="A .safetensors file, a sharded *.safetensors.index.json, or a folder holding "
        "either. Default: the SmolLM2 demo model in DATA_DIR/models.",
    )
    host: str = Field("127.0.0.1", description="Address the server listens on (loopback by default).")
    port: int = Field(8000, ge=0, le=65535, description="Port the server listens on.")
    patch_dir: Path = Field(Path("patches"), description="The patch library the UI lists.")
    patch_signatures: Literal["off", "warn", "require-signed", "require-trusted"] = Field(
        "warn",
        description="Signed patches when applying or loading: off (not checked), warn (an INVALID "
        "signature is refused without an explicit override; unsigned patches apply, unknown-key ones with "
        "a warning), require-signed (unsigned refused too), require-trusted (only keys in DATA_DIR/keys/trusted.json).",
    )
    data_dir: Path = Field(
        Path("data"), description="Journal database, caches, demo models and exports."
    )
    database_url: str | None = Field(
        None,
        description="Any SQLAlchemy URL for the journal. Default: sqlite:///<DATA_DIR>/tensor_surgery.db",
    )
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated folders the server may read or write on a request's behalf. "
        "Default: MODEL_PATH's folder, PATCH_DIR, DATA_DIR and the demo models folder (DATA_DIR/models, "
        "and the demo folder MODEL_PATH lies in).",
    )
    auth_token: SecretStr | None = Field(
        None,
        description="Token required on every request when HOST is not loopback "
        "(generated and printed at start if unset).",
    )
    llm_model: str | None = Field(
        None, description="LiteLLM model name for the investigation agent (unset: agent off)."
    )
    llm_api_base: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Base URL of an OpenAI-compatible server for LLM_MODEL (e.g. http://127.0.0.1:11434/v1); "
        "unset: the provider's own. Only settings choose where the agent's requests go.",
    )
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key for LLM_API_BASE. Unset: the provider's usual variable (OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY, ...) from the environment or .env.",
    )
    llm_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds to wait for one LLM response.")
    llm_num_retries: int = Field(
        2, ge=0, le=10, description="Retries of an LLM call that timed out, was rate-limited or hit a server error."
    )
    llm_max_steps: int = Field(
        8, ge=1, le=50, description="Most LLM calls (rounds of tool use) for one question before the agent stops."
    )
    max_slice_cells: int = Field(
        1 << 20, ge=1, description="Most cells one slice request may return."
    )
    sparsity_threshold: float = Field(
        1e-8, ge=0, description="|x| at or below this counts as zero in sparsity statistics."
    )
    stats_cache_mb: int = Field(256, ge=0, description="Memory for cached statistics, in MB.")
    model_cache_size: int = Field(
        4, ge=1, le=1000,
        description="Open models the server keeps (with their tensor listings): the current one and the "
        "most recently used others; older ones are dropped and reopened when asked for again.",
    )
    live_device: str = Field("auto", description="Device for the live model: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps.")
    live_max_prompt_tokens: int = Field(
        256, ge=1, le=32768, description="Longer prompts are cut to their last tokens, with a notice."
    )
    live_top_k: int = Field(10, ge=1, le=100, description="Tokens shown in the live logits chart.")
    live_prompt: str = Field("The capital of France is", description="The live view's first prompt.")
    text_corpus: Path = Field(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2",
        description="Folder holding valid.txt (training) and test.txt (held out) plain text, for tuned-lens "
        "training (default: wikitext-2 in ../shared/data beside the checkout).",
    )

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, v):
        if isinstance(v, str):
            return [p.strip() for p in v.replace(os.pathsep, ",").split(",") if p.strip()]
        return v

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else self.models_dir / DEMO_MODEL

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tensor_surgery.db').resolve()}"

    @cached_property
    def resolved_allowed_roots(self) -> list[Path]:
        if self.allowed_roots:
            roots = list(self.allowed_roots)
        else:
            # the demo models folder is a root of its own: DATA_DIR/models may be a link to elsewhere
            # (roots are judged by real paths), and MODEL_PATH may name a demo model of another
            # DATA_DIR; either way the Open box offers the other demo models, so they must open
            from .live.demo_models import MANIFEST

            mp = self.resolved_model_path
            folder = mp if mp.is_dir() else mp.parent
            roots = [folder, self.patch_dir, self.data_dir, self.models_dir]
            roots += [p for p in (folder, folder.parent) if (p / MANIFEST).is_file()]
        out: list[Path] = []
        for r in roots:
            real = Path(os.path.realpath(r))
            if real not in out:
                out.append(real)
        return out

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def describe(self) -> dict[str, dict[str, str]]:
        """Every setting with its value (secrets redacted) and help text."""
        out = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********" if value.get_secret_value() else ""
            elif isinstance(value, list):
                shown = ",".join(map(str, value))
            else:
                shown = "" if value is None else str(value)
            if name == "database_url" and value and "@" in value:
                shown = _redact_url(value)
            out[name.upper()] = {"value": shown, "help": info.description or ""}
        return out


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}"
