"""Zero123 image prior (Zero123-XL, Zero123 in the kxhit layout, Stable Zero123).

Conditioning (diffusers ports): the reference image's CLIP ``image_embeds`` concatenated with the relative pose
(:func:`backend.models.zero123.relative_pose`) and projected to one cross-attention token; plus the reference's VAE
latent (**not** multiplied by the scaling factor) concatenated channel-wise with the noisy latent (UNet
``in_channels = 8``). The unconditional branch is zeros for both. Default CFG 5 (DreamGaussian).

The reference is first resized bilinearly to ``image_size`` (DreamGaussian's ``get_img_embeds``); its CLIP pixels are
the published pipeline's (:func:`backend.guidance.clip_image.clip_pixels`: 8-bit by truncation, then the folder's
``feature_extractor``). Its latent is the VAE posterior's **mode** by default (diffusers' ``Zero123Pipeline`` and the
original zero123 sampler); DreamGaussian conditions on one **sample** drawn when the reference is set, which
``latent="sample"`` reproduces (drawn from the given generator, so seeded by the job's seed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from ... import weights
from ...geometry.cameras import Cameras, orbit_angles
from ...models.zero123 import load_projection, relative_pose
from ..clip_image import clip_pixels, load_clip_processor
from .base import Condition, DiffusionPrior, default_dtype, fp16_variant
from .sd import load_unet_vae_scheduler

#: how the reference latent is taken from the VAE posterior (module docstring)
LATENTS = ("mode", "sample")


class Zero123Prior(DiffusionPrior):
    """Novel-view prior. Call :meth:`set_reference` once, then :meth:`condition` per step with the render angles."""

    guidance_scale = 5.0

    def __init__(self, folder: str | os.PathLike, stable: bool = False, device=None, dtype=None,
                 guidance_scale: float | None = None):
        from transformers import CLIPVisionModelWithProjection

        folder = Path(folder)
        device = torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        vae, unet, scheduler = load_unet_vae_scheduler(folder, dtype)
        super().__init__(vae, unet, scheduler, device, dtype)
        self.stable = stable
        self.image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder, subfolder="image_encoder", torch_dtype=dtype, variant=fp16_variant(folder / "image_encoder"))
        self.image_encoder.to(self.device).eval().requires_grad_(False)
        self.projection = load_projection(folder).to(self.device, self.dtype).eval().requires_grad_(False)
        self.clip_processor = load_clip_processor(folder, self.image_encoder.config.image_size)
        self.reference: dict | None = None
        if guidance_scale is not None:
            self.guidance_scale = guidance_scale

    @classmethod
    def from_registry(cls, name: str = "zero123-xl", path: str | os.PathLike | None = None, **kw) -> "Zero123Prior":
        """``zero123-xl``, ``zero123-105000`` or ``stable-zero123`` (the latter sets ``stable``)."""
        stable = kw.pop("stable", weights.get_entry(name).extra.get("stable", False))
        return cls(weights.resolve(name, path), stable=stable, **kw)

    @torch.no_grad()
    def set_reference(self, image: torch.Tensor, elevation: float, azimuth: float = 0.0, radius: float = 0.0,
                      latent: Literal["mode", "sample"] = "mode", generator: torch.Generator | None = None) -> None:
        """Reference view ``[1,3,H,W]`` in [0,1] (object on white, square) and its angles (degrees, our convention).

        ``latent``: the VAE posterior's ``mode`` (default) or one ``sample`` from ``generator`` (module docstring).
        """
        if latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
        image = self.resize(image.float().clamp(0, 1))
        x = clip_pixels(image, self.clip_processor).to(self.device, self.dtype)
        clip = self.image_encoder(x).image_embeds.float()
        posterior = self.vae.encode(image.to(self.device, self.dtype) * 2 - 1).latent_dist
        # no scaling factor (both hub pipelines)
        latent = (posterior.mode() if latent == "mode" else posterior.sample(generator)).float()
        self.reference = {"clip": clip, "latent": latent, "elevation": float(elevation), "azimuth": float(azimuth),
                          "radius": float(radius)}

    def condition(self, elevation=None, azimuth=None, radius=0.0, cameras: Cameras | None = None) -> Condition:
        """Branches ``cond`` and ``negative`` = ``null`` (zeros) for target views at the given angles (degrees) or
        ``cameras`` orbiting the origin."""
        if self.reference is None:
            raise RuntimeError("call set_reference(image, elevation, azimuth, radius) before condition()")
        if cameras is not None:
            elevation, azimuth, radius = orbit_angles(cameras.c2w).unbind(-1)
        ref = self.reference
        pose = relative_pose(elevation, azimuth, radius, ref["elevation"], ref["azimuth"], ref["radius"],
                             self.stable).to(self.device)
        b = pose.shape[0]
        tokens = self.projection(torch.cat([ref["clip"].expand(b, -1), pose], -1).to(self.dtype))[:, None].float()
        latent = ref["latent"].expand(b, -1, -1, -1)
        zero = {"encoder_hidden_states": torch.zeros_like(tokens), "concat": torch.zeros_like(latent)}
        return Condition({"cond": {"encoder_hidden_states": tokens, "concat": latent}, "negative": zero, "null": zero},
                         extra={"pose": pose})

    def _eps(self, x, t, encoder_hidden_states, concat):
        x = torch.cat([x, concat.to(x.dtype)], dim=1)
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states.to(self.dtype)).sample
