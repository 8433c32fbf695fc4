"""Every tool the agent has, in one registry that the LLM loop, the manual mode (web and CLI) and
their JSON-schema descriptions all share, in the order the LLM is shown them.

The machinery (validation, running, capping results) is in `registry.py`; the tools are in
`tensors.py` (the model and its tensors, proposed edits), `scan.py` (model-wide scans) and
`tokens.py` (the tokenizer and the embedding). None of them imports this module.
"""

from __future__ import annotations

from . import scan, tensors, tokens
from .registry import (  # noqa: F401  (the names callers use)
    MAX_ARGUMENT_CHARS,
    Cancelled,
    InvalidArguments,
    OversizedArguments,
    Registry,
    Tool,
    ToolContext,
    UnknownTool,
    parse_arguments,
)

REGISTRY = Registry.collect([tensors, scan, tokens])
get_tool = REGISTRY.find
run_tool = REGISTRY.run
run_tool_call = REGISTRY.run_call
tool_schemas = REGISTRY.schemas
