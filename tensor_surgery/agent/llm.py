"""The LLM behind the agent: which one (from settings and the environment only, never from a
request), and one completion call with an explicit timeout, bounded retries with backoff, and
provider errors turned into readable ones.

The model is any LiteLLM model name (LLM_MODEL); the provider's usual key variables
(OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) come from the environment or `.env`; LLM_API_BASE and
LLM_API_KEY override them for OpenAI-compatible servers. Nothing else sets where requests go.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SurgeryError
from ..settings import Settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch a price list

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 1.0  # first wait before a retry; doubles each time
MAX_BACKOFF_S = 20.0


class AgentNotConfigured(SurgeryError):
    code = "agent_not_configured"
    http_status = 409


class LLMError(SurgeryError):
    """A failure of the LLM call itself (after retries), with what to do about it."""

    code = "llm_error"
    http_status = 502
    exit_code = 1


@dataclass
class LLMConfig:
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    num_retries: int = 2
    max_steps: int = 8
    retry_backoff: float | None = None  # None: RETRY_BACKOFF_S (read at call time, so tests can shorten it)
    extra: dict = field(default_factory=dict)  # more litellm.completion arguments, set by code only (tests)

    @classmethod
    def from_settings(cls, settings: Settings) -> "LLMConfig":
        if not settings.llm_model:
            raise AgentNotConfigured(
                "no LLM is configured: set LLM_MODEL (any LiteLLM model name, e.g. openai/gpt-4o-mini) and "
                "the provider's key variable (e.g. OPENAI_API_KEY) in .env, then restart. Meanwhile the "
                "agent's tools run by hand: in the Investigate tab, or with "
                "`tensor-surgery investigate MODEL --tool NAME --args JSON`.")
        load_provider_env()
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return cls(
            model=settings.llm_model, api_base=settings.llm_api_base, api_key=key or None,
            timeout=settings.llm_timeout, num_retries=settings.llm_num_retries, max_steps=settings.llm_max_steps,
        )


_ENV_LOADED: set[str] = set()


def load_provider_env(path: str | os.PathLike = ".env") -> None:
    """Put `.env`'s variables (the provider's keys) into the environment, where LiteLLM reads them.

    Settings reads only its own fields from `.env`; provider variables are LiteLLM's business. As
    with python-dotenv, a variable already set in the environment wins.
    """
    p = Path(path)
    real = str(p.resolve())
    if real in _ENV_LOADED or not p.is_file():
        return
    from dotenv import dotenv_values

    own = {name.upper() for name in Settings.model_fields}  # Settings reads those itself
    for k, v in dotenv_values(p).items():
        if v is not None and k not in os.environ and k.upper() not in own:
            os.environ[k] = v
    _ENV_LOADED.add(real)


def llm_status(settings: Settings, *, check_keys: bool | None = None) -> dict:
    """What the UI says about the LLM: configured or not, and why not. Never the key or its value.

    Static: it never imports litellm (a 3 s import on an idle machine, 30 s on a loaded one, and
    the page lists the agent's tools with it). Whether the provider's key variable is missing is
    litellm's knowledge, so that warning comes with `check_keys=True` (which imports it), or by
    default once litellm is loaded (`warm_up` loads it in the background when the server starts).
    """
    if not settings.llm_model:
        return {"configured": False, "model": None,
                "message": "No LLM is configured. Set LLM_MODEL (and the provider's key, e.g. OPENAI_API_KEY) "
                           "in .env and restart to ask questions in plain language. The tools below work now."}
    if "litellm" not in sys.modules and importlib.util.find_spec("litellm") is None:
        return {"configured": False, "model": settings.llm_model,
                "message": f"LLM_MODEL is {settings.llm_model}, but litellm is not installed: "
                           "pip install -e '.[agent]' and restart."}
    config = LLMConfig.from_settings(settings)
    if check_keys is None:
        check_keys = _litellm_loaded()
    missing = []
    if not config.api_key and check_keys:
        try:
            env = _litellm().validate_environment(model=config.model, api_base=config.api_base)
            missing = list(env.get("missing_keys") or [])
        except Exception:  # an unknown provider: the call itself will say what is wrong
            missing = []
    status = {"configured": True, "model": config.model, "max_steps": config.max_steps,
              "timeout_s": config.timeout, "num_retries": config.num_retries}
    if missing:
        status["warning"] = f"{', '.join(missing)} is not set: the provider will likely refuse the requests"
    return status


_WARM: threading.Thread | None = None
_WARMED = threading.Event()  # set when litellm (and what a call with tools imports) is loaded


def _litellm_loaded() -> bool:
    """Whether litellm is imported completely (not still being imported by another thread)."""
    mod = sys.modules.get("litellm")
    return _WARMED.is_set() or (mod is not None and not getattr(mod.__spec__, "_initializing", False))


def warm_up(settings: Settings) -> threading.Thread | None:
    """With an LLM configured, import litellm in a background thread, once per process, so that
    the first question does not wait for it. Returns the thread (None: nothing to load)."""
    global _WARM
    if not settings.llm_model or _WARMED.is_set() or importlib.util.find_spec("litellm") is None:
        return None
    if _WARM is None:
        def load() -> None:
            try:
                _litellm()
                _mcp_workaround()
                _WARMED.set()
            except Exception:  # the question will say what is wrong, with what to do
                log.warning("loading litellm in the background failed", exc_info=True)

        _WARM = threading.Thread(target=load, name="warm-litellm", daemon=True)
        _WARM.start()
    return _WARM


def _litellm():
    try:
        import litellm
    except ImportError:
        raise AgentNotConfigured("the agent needs litellm: pip install -e '.[agent]'") from None
    litellm.suppress_debug_info = True  # its "Give Feedback" banner on every error: ours say what to do
    return litellm


_MCP_SKIP: dict | None = None


def _mcp_workaround() -> dict:
    """litellm 1.10x imports its MCP gateway for every call with tools, and that needs the optional
    `mcp` package; our tools are plain functions, so where that import fails, skip the handler."""
    global _MCP_SKIP
    if _MCP_SKIP is None:
        try:
            import litellm.responses.mcp.chat_completions_handler  # noqa: F401
            _MCP_SKIP = {}
        except ImportError as e:
            # an older litellm has no such module (and no such flag); a newer one lacks `mcp`
            _MCP_SKIP = {} if (e.name or "").startswith("litellm") else {"_skip_mcp_handler": True}
    return _MCP_SKIP


RETRYABLE = ("Timeout", "RateLimitError", "APIConnectionError", "InternalServerError", "ServiceUnavailableError")


def complete(config: LLMConfig, messages: list[dict], tools: list[dict],
             on_retry: Callable[[dict], None] | None = None, cancelled: Callable[[], bool] = lambda: False):
    """One chat completion with tools: at most 1 + num_retries attempts, then a readable LLMError."""
    litellm = _litellm()
    kwargs = dict(model=config.model, messages=messages, tools=tools, tool_choice="auto", timeout=config.timeout,
                  num_retries=0, max_retries=0)  # retries are counted and shown here, not hidden inside
    if config.api_base:
        kwargs["api_base"] = config.api_base
    if config.api_key:
        kwargs["api_key"] = config.api_key
    kwargs.update(_mcp_workaround())
    kwargs.update(config.extra)
    attempt = 0
    while True:
        attempt += 1
        try:
            return litellm.completion(**kwargs)
        except Exception as e:
            kind = _kind(litellm, e)
            if kind in RETRYABLE and attempt <= config.num_retries and not cancelled():
                backoff = RETRY_BACKOFF_S if config.retry_backoff is None else config.retry_backoff
                wait = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
                if on_retry:
                    on_retry({"attempt": attempt, "retries": config.num_retries, "wait_s": wait,
                              "reason": _reason(kind)})
                time.sleep(wait)
                continue
            raise llm_error(config, e, kind, attempt) from None


def _kind(litellm, e: Exception) -> str:
    # most specific first: ContextWindowExceededError is a BadRequestError, Timeout an APIConnectionError
    for name in ("ContextWindowExceededError", "Timeout", "RateLimitError", "AuthenticationError",
                 "PermissionDeniedError", "NotFoundError", "ContentPolicyViolationError", "BadRequestError",
                 "ServiceUnavailableError", "InternalServerError", "APIConnectionError", "APIError"):
        cls = getattr(litellm, name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return name
    return type(e).__name__


def _reason(kind: str) -> str:
    return {"Timeout": "timed out", "RateLimitError": "rate limited", "APIConnectionError": "could not connect",
            "InternalServerError": "server error", "ServiceUnavailableError": "service unavailable"}.get(kind, kind)


def llm_error(config: LLMConfig, e: Exception, kind: str, attempts: int) -> LLMError:
    tries = f" ({attempts} attempt{'s' if attempts != 1 else ''})"
    where = f" at {config.api_base}" if config.api_base else ""
    detail = _clean(str(e), config)
    messages = {
        "Timeout": ("llm_timeout", f"the LLM ({config.model}) did not answer within LLM_TIMEOUT={config.timeout:g} s"
                                   f"{tries}; try again, or raise LLM_TIMEOUT"),
        "RateLimitError": ("llm_rate_limited", f"the provider is rate-limiting requests to {config.model}{tries}; "
                                               "wait a minute and ask again, or raise LLM_NUM_RETRIES"),
        "AuthenticationError": ("llm_auth", f"the provider refused the API key for {config.model}: check the "
                                            "provider's key variable (e.g. OPENAI_API_KEY) or LLM_API_KEY in .env"),
        "PermissionDeniedError": ("llm_auth", f"the provider denied access to {config.model}: check the key's "
                                              "permissions"),
        "NotFoundError": ("llm_not_found", f"the provider does not know the model {config.model!r}{where}: check "
                                           "LLM_MODEL"),
        "ContextWindowExceededError": ("llm_context", f"the conversation no longer fits {config.model}'s context "
                                                      "window: start a new conversation"),
        "ContentPolicyViolationError": ("llm_refused", "the provider refused the request (content policy)"),
        "BadRequestError": ("llm_bad_request", f"the provider rejected the request for {config.model}"),
        "APIConnectionError": ("llm_unreachable", f"could not reach the LLM provider{where}{tries}: check the "
                                                  "network or LLM_API_BASE"),
        "InternalServerError": ("llm_server_error", f"the LLM provider failed{tries}; try again later"),
        "ServiceUnavailableError": ("llm_server_error", f"the LLM provider is unavailable{tries}; try again later"),
    }
    code, message = messages.get(kind, ("llm_error", f"the LLM call failed ({kind})"))
    if detail:
        message += f". Provider said: {detail}"
    err = LLMError(message, attempts=attempts)
    err.code = code
    return err


def _clean(text: str, config: LLMConfig, n: int = 300) -> str:
    """A provider's message, short, with the key (should it echo it) removed."""
    text = " ".join(text.split())
    if config.api_key:
        text = text.replace(config.api_key, "***")
    for prefix in ("litellm.", "Litellm."):
        if text.startswith(prefix):
            text = text.split(":", 1)[-1].strip()
    return text if len(text) <= n else text[: n - 1] + "…"
