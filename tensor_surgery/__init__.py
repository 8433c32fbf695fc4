"""Tensor Surgery: look inside .safetensors model weights and change them on purpose."""

__version__ = "0.1.0"
