"""Interpretability on the live model: steering vectors, lenses, probes, and the packs that carry them.

Modules here import torch lazily (only where a model runs); `packs` and `registry` need numpy and
safetensors only, so packs can be listed, verified and shared without torch.
"""
