"""Which torch device a stage runs on: one rule for every stage (``auto`` = CUDA when present).

A bottom-level module: curation, evaluation and training all pick their device here, so none of
them reaches into another layer for it.
"""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device; ``cuda`` means this process's GPU
    (``local_rank`` under torchrun). Asking for CUDA where there is none is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'cpu'/'auto'")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)
