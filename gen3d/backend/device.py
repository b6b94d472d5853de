"""Device choice: ``cuda``, then ``mps``, then ``cpu``; no module hard-codes a device."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or the best available one (cuda > mps > cpu)."""
    if requested and requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
