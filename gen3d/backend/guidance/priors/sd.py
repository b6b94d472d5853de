"""Stable Diffusion text prior (SD 1.5 and 2.1-base diffusers folders) for SDS, CSD, VSD/BSD and SDEdit refinement."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ... import weights
from ...geometry.cameras import Cameras, orbit_angles
from .base import Condition, DiffusionPrior, default_dtype, fp16_variant
from .text import TextEncoder, text_branches


def load_unet_vae_scheduler(folder: Path, dtype: torch.dtype, unet_class=None):
    """``(vae, unet, DDIM scheduler)`` of a diffusers folder, through ``from_pretrained``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    unet_class = unet_class or UNet2DConditionModel
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype,
                                        variant=fp16_variant(folder / "vae"))
    unet = unet_class.from_pretrained(folder, subfolder="unet", torch_dtype=dtype,
                                      variant=fp16_variant(folder / "unet"))
    return vae, unet, DDIMScheduler.from_pretrained(folder, subfolder="scheduler")


class DiffusersTextPrior(DiffusionPrior):
    """A prior loaded from a diffusers text-to-image folder (vae, unet, scheduler, tokenizer, text_encoder): the
    UNet class is ``unet_class`` (None = diffusers' ``UNet2DConditionModel``); registry entry ``default_weights``."""

    unet_class = None
    default_weights = ""

    def __init__(self, folder: str | os.PathLike, device=None, dtype=None, guidance_scale: float | None = None):
        folder = Path(folder)
        device = torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        vae, unet, scheduler = load_unet_vae_scheduler(folder, dtype, self.unet_class)
        super().__init__(vae, unet, scheduler, device, dtype)
        self.text = TextEncoder(folder, self.device, self.dtype)
        if guidance_scale is not None:
            self.guidance_scale = guidance_scale

    @classmethod
    def from_registry(cls, name: str | None = None, path: str | os.PathLike | None = None, **kw):
        """Load registry entry ``name`` (default ``cls.default_weights``); raises MissingWeights when absent."""
        return cls(weights.resolve(name or cls.default_weights, path), **kw)


class StableDiffusionPrior(DiffusersTextPrior):
    """SD text prior (registry ``sd21-base`` or ``sd15``). ``condition(prompt, negative_prompt, elevation,
    azimuth)`` gives view-dependent prompts.

    Default CFG 100 (DreamFusion/DreamGaussian SDS); use 7.5 for VSD. Works at ``image_size`` (512 for SD;
    renders are resized bilinearly).
    """

    guidance_scale = 100.0
    default_weights = "sd21-base"

    def condition(self, prompt: str, negative_prompt: str = "", batch_size: int = 1, elevation=None, azimuth=None,
                  view_dependent: bool = True, cameras: Cameras | None = None) -> Condition:
        """Branches ``cond`` (with ", front/side/back/overhead view" when angles in degrees or ``cameras`` orbiting
        the origin are given, our orbit convention), ``plain``, ``negative`` and ``null``; each
        ``{"encoder_hidden_states": [B, 77, D]}``."""
        if cameras is not None:
            angles = orbit_angles(cameras.c2w)
            elevation, azimuth = angles[:, 0], angles[:, 1]
        if elevation is not None:
            batch_size = max(batch_size, torch.as_tensor(elevation).numel())
        return Condition(text_branches(self.text, prompt, negative_prompt, batch_size, "encoder_hidden_states",
                                       elevation, azimuth, view_dependent))

    def _eps(self, x, t, encoder_hidden_states):
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states.to(self.dtype)).sample
