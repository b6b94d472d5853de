"""SyncDreamer's DDIM sampler (``SyncDDIMSampler``): all 16 views denoised jointly.

Timesteps ``1, 1 + c, ..., 1 + (S-1) c`` with ``c = 1000 // S`` (LDM's uniform DDIM discretisation), visited from the
last; ``alpha_prev`` of the first is ``alphas_cumprod[0]``; ``sigma = eta sqrt((1 - a_prev) / (1 - a) (1 - a /
a_prev))`` (published eta 1.0). Step: ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``, ``x_prev = sqrt(a_prev) x0 +
sqrt(max(1 - a_prev - sigma^2, 1e-7)) eps + sigma z`` with no noise on the final step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .model import SyncDreamer


@dataclass
class DDIMSchedule:
    timesteps: torch.Tensor  # [S] int64, ascending
    alphas: torch.Tensor  # [S]
    alphas_prev: torch.Tensor  # [S]
    sigmas: torch.Tensor  # [S]


def ddim_schedule(alphas_cumprod: torch.Tensor, steps: int, eta: float = 1.0) -> DDIMSchedule:
    c = len(alphas_cumprod) // steps
    ts = torch.arange(0, len(alphas_cumprod), c, dtype=torch.int64) + 1
    ac = alphas_cumprod.cpu()
    a = ac[ts].double()
    a_prev = torch.cat([ac[:1], ac[ts[:-1]]]).double()
    sig = eta * torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    return DDIMSchedule(ts, a.float(), a_prev.float(), sig.float())


def ddim_step(x: torch.Tensor, eps: torch.Tensor, s: DDIMSchedule, index: int,
              generator: torch.Generator | None) -> torch.Tensor:
    """One update ``x_t -> x_prev`` at schedule ``index`` (module docstring)."""
    a, a_prev, sigma = s.alphas[index].item(), s.alphas_prev[index].item(), s.sigmas[index]
    sqrt_1ma = torch.sqrt(1.0 - s.alphas[index]).item()
    x0 = (x - sqrt_1ma * eps) / a ** 0.5
    out = a_prev ** 0.5 * x0 + torch.clamp(1.0 - s.alphas_prev[index] - sigma ** 2, min=1e-7).sqrt().item() * eps
    if index > 0:
        out = out + sigma.item() * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return out


@torch.no_grad()
def denoise(model: SyncDreamer, inputs: dict[str, torch.Tensor], elevation: torch.Tensor, steps: int = 50,
            cfg_scale: float = 2.0, eta: float = 1.0, batch_view_num: int = 8,
            generator: torch.Generator | None = None,
            progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The DDIM loop from pure noise: ``inputs`` of :meth:`SyncDreamer.encode_input`, ``elevation [B]`` radians ->
    latents ``[B, 16, 4, h, w]``. ``progress(step, total)`` is called after each step."""
    latent = inputs["latent"]
    B, (_, h, w), dev = latent.shape[0], latent.shape[1:], latent.device
    x = torch.randn((B, len(model.poses), 4, h, w), generator=generator).to(dev)
    sched = ddim_schedule(model.alphas_cumprod, steps, eta)
    for i, index in enumerate(reversed(range(steps))):
        t = torch.full((B,), int(sched.timesteps[index]), device=dev, dtype=torch.long)
        eps = model.predict_noise(x, t, inputs, elevation.to(dev), cfg_scale, batch_view_num)
        x = ddim_step(x, eps, sched, index, generator)
        if progress is not None:
            progress(i + 1, steps)
    return x


@torch.no_grad()
def sample_views(model: SyncDreamer, image: torch.Tensor, elevation: torch.Tensor, steps: int = 50,
                 cfg_scale: float = 2.0, eta: float = 1.0, batch_view_num: int = 8,
                 generator: torch.Generator | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``image [B, 3, 256, 256]`` in [-1, 1] (object on white), ``elevation [B]`` radians -> the 16 views
    ``[B, 16, 3, 256, 256]`` in [0, 1]. ``generator`` (CPU) draws every random number in the official order:
    input latent sample, initial noise, then each step's noise."""
    inputs = model.encode_input(image, generator)
    x = denoise(model, inputs, elevation, steps, cfg_scale, eta, batch_view_num, generator, progress)
    views = torch.stack([model.decode(x[:, n]) for n in range(x.shape[1])], 1)
    return ((views.clamp(-1, 1) + 1) / 2).float()
