"""Instant3D's first stage: a text-to-image model fine-tuned to draw one 2x2 grid of four views of an object.

- :func:`blob_image`: the Gaussian-blob initialisation image: white background and one dark Gaussian blob centred in
  each tile (std 0.1 of the tile side), in [-1, 1]; as GRM's reproduction of Instant3D builds it.
- :func:`blob_latents`: the VAE latent of that image noised to the sampler's *first* timestep,
  ``(z + sigma_max * eps) / sqrt(1 + sigma_max^2)`` in variance-preserving form (GRM's ``fuse_latents``), returned in
  the scale a diffusers text-to-image pipeline expects for ``latents=`` (it multiplies by ``init_noise_sigma``).
- :func:`split_grid`: the grid -> four RGBA views, row-major (view k at row k // 2, column k % 2), alpha keyed from
  the white background; :func:`grid_cameras`: their ring, elevation 20 deg, azimuths 0/90/180/270 (our orbit
  convention: 0 = front on -Y, counter-clockwise seen from above).
- :class:`GridGenerator`: any diffusers SD-layout folder (SD 2.1-base, the light default, or SDXL, the paper's
  base), sampled with Euler from the blob latents. Without Instant3D's fine-tune (Adobe released none) an off-the-shelf
  model draws a 2x2 arrangement but not consistent views: point ``grid_weights_path`` at a folder fine-tuned on
  2x2 grids of multi-view renders.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...blender.poses import RINGS
from ...geometry.cameras import Cameras, orbit_cameras

#: the four views' ring, shared with ``dataset multiview --orbit instant3d``: elevation 20, azimuths 0/90/180/270,
#: distance 2.7 and vertical fov 50 (GRM's for its Instant3D grids)
GRID_RING = RINGS["instant3d"]
BLOB_STD = 0.1


def blob_image(size: int, std: float = BLOB_STD) -> torch.Tensor:
    """``[3, size, size]`` in [-1, 1]: white, with a dark Gaussian blob (depth 1 at its centre, std ``std`` of a
    tile) centred in each of the 2x2 tiles. Built like GRM's ``build_gaussians``: one blob on a full-size canvas,
    tiled 2x2, resized back to ``size`` bilinearly."""
    if size % 2:
        raise ValueError(f"grid size {size} must be even")
    coord = torch.arange(size, dtype=torch.float64)
    d2 = (coord[:, None] - size // 2) ** 2 + (coord[None, :] - size // 2) ** 2
    blob = 1.0 - torch.exp(-d2 / (2 * (std * size) ** 2))
    tiled = blob.repeat(2, 2)[None, None]
    img = torch.nn.functional.interpolate(tiled, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return (2 * img - 1).float().expand(3, -1, -1).contiguous()


def blob_latents(z: torch.Tensor, noise: torch.Tensor, scheduler) -> torch.Tensor:
    """Latents for a diffusers pipeline's ``latents=`` argument so that its first denoising step sees the blob
    latent ``z`` noised to the first timestep of ``scheduler`` (``set_timesteps`` already called): the scheduler's
    own ``add_noise`` (VP form for DDIM/DPM, ``z + sigma * eps`` for Euler), divided by ``init_noise_sigma`` which
    the pipeline multiplies back."""
    t0 = scheduler.timesteps[:1]
    noisy = scheduler.add_noise(z, noise, t0.to(z.device))
    return noisy / scheduler.init_noise_sigma


def white_key_alpha(rgb: np.ndarray, low: float = 0.02, high: float = 0.08) -> np.ndarray:
    """Alpha ``[H, W]`` from an object on white: the largest channel distance from white, ramped from ``low``
    (transparent) to ``high`` (opaque)."""
    d = (1.0 - rgb[..., :3]).max(-1)
    return np.clip((d - low) / (high - low), 0.0, 1.0).astype(np.float32)


def split_grid(grid: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """``grid [H, W, 3]`` float in [0, 1] -> ``rows * cols`` RGBA views ``[rows * cols, H/rows, W/cols, 4]``,
    row-major (Instant3D: 2x2; Zero123++: 3 rows x 2 columns)."""
    H, W = grid.shape[:2]
    if H % rows or W % cols or grid.ndim != 3 or grid.shape[2] < 3:
        raise ValueError(f"expected an RGB grid of {rows}x{cols} equal views, got shape {list(grid.shape)}")
    h, w = H // rows, W // cols
    views = grid[..., :3].reshape(rows, h, cols, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, h, w, 3)
    return np.concatenate([views, white_key_alpha(views)[..., None]], -1).astype(np.float32)


def grid_cameras(size: int, radius: float | None = None, fov_deg: float | None = None) -> Cameras:
    """The four grid views' cameras, in view order (``radius`` / ``fov_deg`` default to the ring's)."""
    ring = GRID_RING
    return orbit_cameras(ring.elevations, ring.azimuths, radius or ring.distance, fov_deg or ring.fov_deg, size, size)


class GridGenerator:
    """Text -> one 2x2 grid image from a diffusers text-to-image folder (SD or SDXL layout), Euler sampler with
    sgm-style linspace timesteps (the first at t=999, as GRM's EulerEDMSampler), classifier-free guidance."""

    def __init__(self, pipe):
        """``pipe``: a loaded diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``."""
        from diffusers import EulerDiscreteScheduler

        self.pipe = pipe
        self.device = pipe.device
        self.pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
        self.pipe.set_progress_bar_config(disable=True)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, sdxl: bool = False, device=None, dtype=None) -> "GridGenerator":
        """A diffusers folder in the SD (2.1-base) or SDXL layout, fp16 on CUDA and fp32 elsewhere by default."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from ...guidance.priors.base import default_dtype, fp16_variant

        folder, device = Path(folder), torch.device(device or "cpu")
        pipe_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
        extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
        pipe = pipe_class.from_pretrained(folder, torch_dtype=dtype or default_dtype(device),
                                          variant=fp16_variant(folder / "unet"), **extra)
        return cls(pipe.to(device))

    @torch.no_grad()
    def initial_latents(self, size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        dtype = vae.dtype
        upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)  # SDXL's VAE overflows
        if upcast:
            vae.to(torch.float32)
        blob = blob_image(size)[None].to(self.device, vae.dtype)
        z = vae.encode(blob).latent_dist.mean.float() * vae.config.scaling_factor  # the mode, not a sample
        if upcast:
            vae.to(dtype)
        noise = torch.randn(z.shape, generator=generator).to(self.device)
        self.pipe.scheduler.set_timesteps(steps, device=self.device)
        return blob_latents(z, noise, self.pipe.scheduler).to(self.pipe.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str, size: int, steps: int = 30, guidance_scale: float = 5.0, seed: int = 0,
                 negative_prompt: str = "", callback=None) -> np.ndarray:
        """The grid ``[size, size, 3]`` float32 in [0, 1]. ``callback(step, steps)`` after each denoising step."""
        gen = torch.Generator().manual_seed(seed)
        latents = self.initial_latents(size, steps, gen)

        def on_step(pipe, i, t, kwargs):
            if callback is not None:
                callback(i + 1, steps)
            return kwargs

        image = self.pipe(prompt, negative_prompt=negative_prompt or None, height=size, width=size,
                          num_inference_steps=steps, guidance_scale=guidance_scale, latents=latents,
                          output_type="np", callback_on_step_end=on_step).images[0]
        return np.clip(image.astype(np.float32), 0, 1)
