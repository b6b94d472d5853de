"""Image -> triplane by DMV3D sampling: the input view stays clean (t = 0 in its pixels, camera fixed on -Y),
the noisy views start from pure noise and each DDIM step renders the denoiser's triplane at their cameras as the
x0 prediction (:func:`render_views`). The last step's triplane is the 3D asset.

Unconditional sampling gives a blank input view (all zeros in [-1, 1], the recipe's condition dropout).
Classifier-free guidance mixes the two denoisers' *triplanes*, ``planes_u + w (planes_c - planes_u)``, and renders
the mix as x0: guidance stays in 3D, so every step's x0 is still the render of one triplane and the last one is the
asset (``w = 1``: conditional only).
"""

from __future__ import annotations

from typing import Callable

import torch

from ...geometry.cameras import Cameras, orbit_cameras
from ...representations.triplane import RenderSettings
from .diffusion import Schedule, ddim_sample
from .encoder import plucker_rays
from .model import DMV3D


def view_cameras(model: DMV3D) -> Cameras:
    """The sampling layout, ``views`` cameras at the model's image size: the input camera (on -Y at
    ``source_camera_distance``, elevation 0, looking at the origin) then the noisy views on its sphere, all with
    ``view_fov_deg``. Image variant: the frame is the input view's (it is the canonical camera). Text variant: the
    frame is the training data's world (Z up, front on -Y; the recipe's ``world_frame``), the blank input slot its
    front camera, and the exported ``view_elevation_deg`` the data's median elevation."""
    c, cfg = model.config, model.cfg
    el = torch.tensor([0.0] + [c.view_elevation_deg] * c.noisy_views)
    az = torch.tensor([0.0, *c.view_azimuths_deg[:c.noisy_views]])
    return orbit_cameras(el, az, cfg.source_camera_distance, c.view_fov_deg, cfg.image_size, cfg.image_size)


def render_views(model: DMV3D, planes: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor,
                 settings: RenderSettings, background: float | torch.Tensor = 1.0, generator=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``planes [B, 3, C, H, W]``, rays ``[B, V, S, S, 3]`` -> ``rgb [B, V, S, S, 3]`` in [0, 1] over
    ``background`` (a float, or per object ``[B, V*S*S, 1]``) and ``opacity [B, V, S, S]``."""
    rgbs, alphas = [], []
    for b in range(len(planes)):
        out = model.field(planes[b]).render_rays(origins[b].reshape(-1, 3), dirs[b].reshape(-1, 3), settings,
                                                 background=background if isinstance(background, float)
                                                 else background[b], generator=generator)
        rgbs.append(out["rgb"].reshape(origins[b].shape))
        alphas.append(out["opacity"].reshape(origins[b].shape[:-1]))
    return torch.stack(rgbs), torch.stack(alphas)


def to_model(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., S, S, 3]`` in [0, 1] -> ``[..., 3, S, S]`` in [-1, 1]."""
    return (rgb * 2 - 1).movedim(-1, -3)


@torch.no_grad()
def sample_triplane(model: DMV3D, source: torch.Tensor | None, steps: int, generator: torch.Generator | None = None,
                    rays: tuple[torch.Tensor, torch.Tensor] | None = None, samples_per_ray: int | None = None,
                    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                    guidance: float = 1.0, text: torch.Tensor | None = None,
                    null_text: torch.Tensor | None = None) -> torch.Tensor:
    """``source [1, 3, S, S]`` in [0, 1] (the input view on white, as ``lrm.preprocess.model_input`` makes it; None:
    unconditional) -> ``planes [1, 3, C, 2r, 2r]`` after ``steps`` DDIM steps. ``rays``: ``(origins, dirs)
    [V, S, S, 3]`` of the input and noisy views (default: :func:`view_cameras`). ``guidance``: the classifier-free
    guidance scale ``w``. Text variant: ``text``, ``null_text [1, L, text_dim]`` (the prompt's and the empty
    prompt's CLIP tokens; the input view stays blank). ``on_step(i, t, x0 [V-1, S, S, 3] in [0, 1])``."""
    dev = next(model.parameters()).device if source is None else source.device
    origins, dirs = rays if rays is not None else view_cameras(model).to(dev).pixel_rays()
    plucker = plucker_rays(origins, dirs)[None]
    settings = model.render_settings(jitter=False, ray_chunk=1 << 16)
    if samples_per_ray:
        settings.n_coarse, settings.n_importance = samples_per_ray - samples_per_ray // 2, samples_per_ray // 2
    c, S = model.config, model.cfg.image_size
    schedule = Schedule.linear(c.train_steps, c.beta_start, c.beta_end)
    blank = torch.zeros(1, 1, 3, S, S, device=dev)
    clean = blank if source is None else source[:, None] * 2 - 1
    guided = (source is not None or text is not None) and guidance != 1.0
    tokens = None if text is None else torch.cat([text, null_text]) if guided else text
    planes = None

    def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
        nonlocal planes
        inputs = torch.cat([clean, x_t], 1)
        if guided:
            inputs = torch.cat([inputs, torch.cat([blank, x_t], 1)])
        planes = model.forward_planes(inputs, plucker.expand(len(inputs), -1, -1, -1, -1),
                                      torch.full((len(inputs),), t, device=dev), tokens)
        if guided:
            planes = planes[1:] + guidance * (planes[:1] - planes[1:])
        return to_model(render_views(model, planes, origins[None, 1:], dirs[None, 1:], settings)[0])

    preview = None if on_step is None else (
        lambda i, t, x0: on_step(i, t, ((x0[0] + 1) / 2).movedim(-3, -1).clamp(0, 1)))
    ddim_sample(denoise, (1, c.noisy_views, 3, S, S), schedule, steps, generator, dev, preview)
    return planes
