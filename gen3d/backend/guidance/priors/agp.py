"""SweetDreamer's aligned geometric prior (AGP) as a prior: score distillation on canonical coordinate maps.

The AGP folder (registry ``agp``, written by ``python -m gen3d train agp``) holds ``unet/``
(:class:`~backend.models.agp.AGPUNet`), SD 2.1-base's ``scheduler/``, ``tokenizer/`` and ``text_encoder/``. There
is no VAE: the "latents" are the 4-channel CCMs :func:`~backend.geometry.ccm.agp_input` in [-1, 1], resized
bilinearly to the UNet's ``sample_size`` (64 for the real model, as the official code).

``condition(prompt, negative_prompt, cameras)`` adds the camera (:func:`~backend.geometry.ccm.agp_camera`) to each
text branch; the prompts are view-dependent like the official CCM prompt processor. Classifier-free guidance: the
official code forms ``ε_c + s·(ε_c − ε_u)`` with s = 20, which is diffusers' form with s = 21 (our default).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import weights
from ...geometry.cameras import Cameras, orbit_angles
from ...geometry.ccm import agp_camera
from .base import Condition, DiffusionPrior, default_dtype
from .text import TextEncoder, text_branches


class AGPPrior(DiffusionPrior):
    guidance_scale = 21.0
    scale_latents = False

    def __init__(self, folder: str | os.PathLike, device=None, dtype=None):
        from diffusers import DDIMScheduler

        from ...models.agp import AGPUNet

        folder = Path(folder)
        device = torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        unet = AGPUNet.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        super().__init__(None, unet, DDIMScheduler.from_pretrained(folder, subfolder="scheduler"), device, dtype)
        self.text = TextEncoder(folder, self.device, self.dtype)

    @classmethod
    def from_registry(cls, path: str | os.PathLike | None = None, **kw) -> "AGPPrior":
        """Load the ``agp`` entry; a missing one raises MissingWeights naming the training command."""
        return cls(weights.resolve("agp", path), **kw)

    @property
    def vae_scale(self) -> int:
        return 1

    def encode(self, ccm: torch.Tensor) -> torch.Tensor:
        """AGP inputs ``[B,4,H,W]`` in [-1, 1] -> the same at the UNet's size (float32, differentiable)."""
        size = self.image_size
        if ccm.shape[-2:] != (size, size):
            ccm = F.interpolate(ccm, (size, size), mode="bilinear", align_corners=False)
        return ccm.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float()

    def condition(self, prompt: str, negative_prompt: str, cameras: Cameras,
                  view_dependent: bool = True) -> Condition:
        """Branches ``cond``/``plain``/``negative``/``null``: ``encoder_hidden_states [B,77,D]`` and the camera
        ``class_labels [B,12]`` of ``cameras`` (B = len(cameras))."""
        angles = orbit_angles(cameras.c2w)
        branches = text_branches(self.text, prompt, negative_prompt, len(cameras), "encoder_hidden_states",
                                 angles[:, 0], angles[:, 1], view_dependent)
        camera = agp_camera(cameras.c2w).to(self.device)
        for inputs in branches.values():
            inputs["class_labels"] = camera
        return Condition(branches)

    def _eps(self, x, t, encoder_hidden_states, class_labels):
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states.to(self.dtype),
                         class_labels=class_labels.to(self.dtype)).sample
