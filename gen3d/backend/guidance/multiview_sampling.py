"""MVDream's multi-view text(-and-image)-to-image sampler: the diffusers port's ``MVDreamPipeline.__call__`` over a
loaded :class:`~gen3d.backend.guidance.priors.mvdream.MVDreamPrior` (or ImageDream) and its folder's DDIM scheduler.

Each candidate is ``prior.num_frames`` (4) views of one object at one elevation, azimuths 0, 90, 180, 270° in our
orbit convention (front, right, back, left: the order ``get_camera`` gives the model in training; the camera rows
equal ``get_camera``'s, see :func:`~gen3d.backend.guidance.priors.mvdream.mvdream_cameras`). The loop: Gaussian
latents, then ``steps`` DDIM steps (eta 0) of ``eps_neg + s·(eps_cond − eps_neg)``, then the VAE decode.

Differences from the port, on purpose: N candidates are N objects, each with its views consecutive and its own
camera rows (the port's ``num_images_per_prompt > 1`` interleaves cameras and contexts of different objects); the
ImageDream reference frame is added inside the prior, so its latent is not denoised and decoded (the port steps and
decodes it, then shows the first 4); noise comes from ``generator`` (the port's reference latent uses the global RNG).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..geometry.cameras import Cameras, orbit_cameras


def view_azimuths(views: int = 4, start: float = 0.0) -> torch.Tensor:
    """``[views]`` azimuths in degrees, evenly spaced from ``start`` in the model's trained order."""
    return start + 360.0 / views * torch.arange(views, dtype=torch.float32)


def view_cameras(elevation: float, views: int = 4, size: int = 256, radius: float = 1.0,
                 fovy: float = 49.1) -> Cameras:
    """The sampler's cameras (only their directions reach the model; ``size``/``fovy`` are nominal)."""
    return orbit_cameras(elevation, view_azimuths(views), radius, fovy, size, size)


@torch.no_grad()
def sample_views(prior, prompt: str, negative_prompt: str = "", elevation: float = 0.0, steps: int = 50,
                 guidance_scale: float = 7.5, candidates: int = 1, generator: torch.Generator | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``candidates`` sets of ``prior.num_frames`` views: ``[N, F, 3, S, S]`` float in [0, 1], S = the prior's
    ``image_size`` (256 for MVDream). ``on_step(i, steps)`` after each DDIM step (progress, cancellation)."""
    from diffusers import DDIMScheduler

    f = prior.num_frames
    cond = prior.condition(prompt, negative_prompt, cameras=view_cameras(elevation, f).c2w.repeat(candidates, 1, 1))
    sched = DDIMScheduler.from_config(prior.scheduler.config)
    sched.set_timesteps(steps, device=prior.device)
    side = prior.image_size // prior.vae_scale
    latents = torch.randn(candidates * f, prior.latent_channels, side, side, generator=generator).to(prior.device)
    latents = latents * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        eps = prior.predict_cfg(latents, t.reshape(1).expand(len(latents)), cond, guidance_scale)
        latents = sched.step(eps, t, latents).prev_sample
        if on_step is not None:
            on_step(i + 1, steps)
    images = torch.cat([prior.decode(z) for z in latents.split(f)])
    return images.reshape(candidates, f, *images.shape[1:])


def views_grid(views: torch.Tensor) -> torch.Tensor:
    """``[N, F, 3, S, S]`` -> one image ``[N·S, F·S, 3]``: a row per candidate, views left to right."""
    n, f, c, s, _ = views.shape
    return views.permute(0, 3, 1, 4, 2).reshape(n * s, f * s, c)
