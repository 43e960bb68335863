"""Device and dtype selection: cuda > mps > cpu unless told otherwise."""
from __future__ import annotations

import torch


def select_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={preference} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device={preference} requested but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> str:
    """'auto' -> bfloat16 on CUDA (as in the paper), float32 elsewhere (CPU bf16 matmuls are slow)."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return name
