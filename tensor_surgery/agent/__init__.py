"""The LiteLLM investigation agent and its read-only tools over the store."""
