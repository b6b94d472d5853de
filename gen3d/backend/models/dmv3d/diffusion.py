"""DMV3D's diffusion: a DDPM noise schedule on the views, x0 predicted by rendering the denoiser's triplane at the
noisy views' cameras, and a deterministic DDIM sampler (eta 0) whose every step's x0 renders are kept as previews.

Images live in [-1, 1]; ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with the linear betas of DDPM
(1e-4 .. 0.02 over T = 1000). DDIM (Song et al. 2021, eq. 12 with sigma 0) from step t to t' < t:
``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``, ``x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps``, with
``abar_{-1} = 1`` for the last step; the sampled steps are ``T/steps`` apart starting at 0 ("leading" spacing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Schedule:
    alphas_cumprod: torch.Tensor  # [T] float64

    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """``abar_t`` for integer ``t`` (``-1`` -> 1), float32 with ``t``'s shape."""
        a = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return a[(t.long() + 1).cpu()].float().to(t.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0, noise [B, ...]``, ``t [B]`` -> ``x_t``."""
        a = self.abar(t).view(-1, *([1] * (x0.dim() - 1))).to(x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sampling_steps(self, n: int) -> list[int]:
        """``n`` DDIM steps, descending: ``[(n-1) k, ..., k, 0]`` with ``k = T // n``."""
        k = self.steps // n
        return [i * k for i in reversed(range(n))]

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """One deterministic DDIM update from ``t`` to ``t_prev`` (``-1``: the clean image) given the prediction
        ``x0``."""
        a, a_prev = (float(self.abar(torch.tensor(s))) for s in (t, t_prev))
        eps = (x_t - a ** 0.5 * x0) / (1 - a) ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def ddim_sample(denoise: Callable[[torch.Tensor, int], torch.Tensor], shape: tuple[int, ...], schedule: Schedule,
                steps: int, generator: torch.Generator | None = None, device=None,
                on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Start from Gaussian noise of ``shape`` and run ``steps`` DDIM steps; ``denoise(x_t, t) -> x0``.
    ``on_step(i, t, x0)`` sees every step's x0 prediction (the preview frames). Returns the last x0."""
    x = torch.randn(shape, generator=generator).to(device)
    ts = schedule.sampling_steps(steps)
    x0 = x
    for i, t in enumerate(ts):
        x0 = denoise(x, t)
        if on_step is not None:
            on_step(i, t, x0)
        x = schedule.ddim_step(x, x0, t, ts[i + 1] if i + 1 < len(ts) else -1)
    return x0
