"""Running models: torch, transformers and peft, imported lazily. Nothing outside this package
imports torch, so the explorer starts fast and works without it."""
