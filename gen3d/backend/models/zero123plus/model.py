"""Zero123++ v1.2: one image of an object -> six views of it in one 3x2 image (rows x columns, 320-pixel views).

The published model is a diffusers folder (hub ``sudo-ai/zero123plus-v1.2``) run by a custom pipeline class
(``Zero123PlusPipeline``); this module is our own implementation of that pipeline on the folder as published:

- ``model_index.json`` (``_class_name`` ``Zero123PlusPipeline``; ``ramping_coefficients``: one weight per text token),
  ``unet/`` (an SD-2 ``UNet2DConditionModel``, v-prediction), ``vae/``, ``text_encoder/`` + ``tokenizer/`` (SD 2's
  OpenCLIP-H text side), ``vision_encoder/`` (``CLIPVisionModelWithProjection``), ``feature_extractor_clip/`` and
  ``feature_extractor_vae/`` (``CLIPImageProcessor`` configs: CLIP's 224 crop; the VAE's crop with mean 0.5, std 0.8),
  ``scheduler/`` (Euler ancestral, linear betas; sampled with ``timestep_spacing="trailing"`` as its README says).
- **Reference attention** (:class:`ReferenceUNet`): the condition image's VAE latent (a *sample* of the posterior,
  unscaled), noised by the sampler to the current timestep with fresh noise, runs through the same UNet first; every
  self-attention of the main pass then attends to ``[its own tokens; the reference pass's tokens at that layer]``.
  Classifier-free guidance's negative condition is the latent of an all-zero (mid-grey) VAE input.
- **Global condition**: the CLIP image embedding, weighted per token by the ramp, is added to the text encoding of
  the empty prompt (the negative branch gets the empty prompt's encoding alone).
- **Latent scaling**: the sampler works on ``(z - 0.22) * 0.75`` of the VAE's scaled latent ``z``; the decoder's
  output is divided by ``0.5 / 0.8`` before the usual ``[-1, 1] -> [0, 1]``.
- InstantMesh ships a white-background fine-tune of the UNet (``TencentARC/InstantMesh``
  ``diffusion_pytorch_model.bin``, the UNet's state dict) and composites RGBA inputs on white; the base model on
  grey (127).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ...errors import BadInput

LATENT_SHIFT, LATENT_GAIN = 0.22, 0.75
IMAGE_GAIN = 0.5 / 0.8
#: the output image: 3 rows x 2 columns of views, view k at row k // 2, column k % 2
VIEW_ROWS, VIEW_COLS = 3, 2
VIEW_SIZE = 320
#: grey the base model composites RGBA inputs on (InstantMesh's fine-tune: white, 255)
BASE_BACKGROUND = 127
PIPELINE_CLASS = "Zero123PlusPipeline"


def scale_latents(z: torch.Tensor) -> torch.Tensor:
    return (z - LATENT_SHIFT) * LATENT_GAIN


def unscale_latents(z: torch.Tensor) -> torch.Tensor:
    return z / LATENT_GAIN + LATENT_SHIFT


def unscale_image(x: torch.Tensor) -> torch.Tensor:
    return x / IMAGE_GAIN


class _ReferenceTokens:
    """What the reference pass leaves for the main pass: ``mode`` ``"write"`` / ``"read"`` / None, tokens by layer."""

    def __init__(self):
        self.mode: str | None = None
        self.tokens: dict[str, torch.Tensor] = {}


class ReferenceAttention:
    """Self-attention processor (``attn1``) of reference-only conditioning: in ``"write"`` mode it keeps its input
    tokens ``[B, N, C]``; in ``"read"`` mode its keys/values come from ``[own tokens; kept tokens]`` (``[B, N + M,
    C]``); otherwise plain self-attention. The attention itself is diffusers' SDPA processor."""

    def __init__(self, name: str, store: _ReferenceTokens):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name, self.store, self.attend = name, store, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if self.store.mode == "write":
            self.store.tokens[self.name] = context
        elif self.store.mode == "read":
            context = torch.cat([context, self.store.tokens.pop(self.name)], 1)
        return self.attend(attn, hidden_states, context, attention_mask, temb)


class ReferenceUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` whose self-attentions also see a reference latent's tokens (see the module)."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import AttnProcessor2_0

        super().__init__()
        self.unet, self.store = unet, _ReferenceTokens()
        unet.set_attn_processor({name: ReferenceAttention(name, self.store) if name.endswith("attn1.processor")
                                 else AttnProcessor2_0() for name in unet.attn_processors})

    def forward(self, sample: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                reference: torch.Tensor) -> torch.Tensor:
        """``sample [B, 4, h, w]`` and ``reference [B, 4, h', w']`` (both already scaled for the sampler's step),
        ``context [B, 77, D]`` -> the UNet's prediction for ``sample``."""
        try:
            self.store.mode = "write"
            self.unet(reference, t, encoder_hidden_states=context)
            self.store.mode = "read"
            return self.unet(sample, t, encoder_hidden_states=context).sample
        finally:
            self.store.mode = None
            self.store.tokens.clear()


def rgba_to_pil(rgba: np.ndarray, background: int):
    """Straight RGBA ``[H, W, 4]`` float in [0, 1] -> an RGB PIL image composited on grey level ``background``."""
    from PIL import Image

    a = rgba[..., 3:]
    rgb = rgba[..., :3] * a + (background / 255.0) * (1 - a)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


class Zero123Plus:
    """Zero123++ v1.2 loaded from its published folder; :meth:`__call__` samples the 3x2 view image."""

    def __init__(self, unet, vae, text_encoder, tokenizer, vision_encoder, clip_processor, vae_processor, scheduler,
                 ramp: list[float], background: int):
        self.unet, self.vae, self.text_encoder, self.tokenizer = ReferenceUNet(unet), vae, text_encoder, tokenizer
        self.vision_encoder, self.clip_processor, self.vae_processor = vision_encoder, clip_processor, vae_processor
        self.scheduler, self.background = scheduler, background
        self.ramp = torch.tensor(ramp, dtype=torch.float32)
        if len(self.ramp) != tokenizer.model_max_length:
            raise BadInput(f"ramping_coefficients has {len(self.ramp)} weights for {tokenizer.model_max_length} "
                           "text tokens", {"field": "ramping_coefficients"})

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, unet_weights: str | os.PathLike | None = None, device=None,
                    dtype=None) -> "Zero123Plus":
        """The published folder; ``unet_weights``: a UNet state dict file replacing ``unet/`` (InstantMesh's
        white-background ``diffusion_pytorch_model.bin``). fp16 on CUDA, fp32 elsewhere by default."""
        from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        from ...guidance.priors.base import default_dtype

        folder, device = Path(folder), torch.device(device or "cpu")
        dtype = dtype or default_dtype(device)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise BadInput(f"{folder}: not a Zero123++ folder (no model_index.json)", {"field": "zero123plus_path"})
        index = json.loads(index_file.read_text())
        if index.get("_class_name") != PIPELINE_CLASS or "ramping_coefficients" not in index:
            raise BadInput(f"{index_file}: expected {PIPELINE_CLASS} with ramping_coefficients, got "
                           f"{index.get('_class_name')!r}", {"field": "zero123plus_path"})
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype)
        if unet_weights is not None:
            _load_unet_state(unet, Path(unet_weights))
        scheduler = EulerAncestralDiscreteScheduler.from_pretrained(folder / "scheduler")
        modules = [unet, AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype),
                   CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype),
                   CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                   CLIPVisionModelWithProjection.from_pretrained(folder / "vision_encoder", dtype=dtype)]
        for m in modules:
            if isinstance(m, torch.nn.Module):
                m.to(device).eval().requires_grad_(False)
        return cls(*modules, CLIPImageProcessor.from_pretrained(folder / "feature_extractor_clip"),
                   CLIPImageProcessor.from_pretrained(folder / "feature_extractor_vae"),
                   EulerAncestralDiscreteScheduler.from_config(scheduler.config, timestep_spacing="trailing"),
                   index["ramping_coefficients"], 255 if unet_weights is not None else BASE_BACKGROUND)

    @torch.no_grad()
    def condition(self, image, guided: bool, generator: torch.Generator | None = None):
        """An RGB PIL image -> ``(reference latents [B, 4, h', w'], text context [B, 77, D])`` with ``B = 2``
        (negative, conditional) when ``guided``, else 1. Draws the posterior samples from ``generator``."""
        dev, dtype = self.device, self.vae.dtype
        pixels = self.vae_processor(images=image, return_tensors="pt").pixel_values.to(dev, dtype)
        clip_pixels = self.clip_processor(images=image, return_tensors="pt").pixel_values.to(dev, dtype)
        latents = [self.vae.encode(pixels).latent_dist.sample(generator)]
        if guided:
            latents.insert(0, self.vae.encode(torch.zeros_like(pixels)).latent_dist.sample(generator))
        embed = self.vision_encoder(clip_pixels).image_embeds[:, None]  # [1, 1, D]
        ids = self.tokenizer("", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(dev)
        empty = self.text_encoder(ids)[0]
        context = empty + embed * self.ramp.to(embed)[:, None]
        if guided:
            context = torch.cat([empty, context])
        return torch.cat(latents), context

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, t: torch.Tensor, reference: torch.Tensor, context: torch.Tensor,
                guidance_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sampler step of ``latents [1, 4, h, w]`` at ``t`` (the reference noised afresh to ``t``)."""
        sched = self.scheduler
        guided = len(reference) == 2
        x = sched.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        noise = torch.randn(reference.shape, generator=generator, dtype=torch.float32).to(reference)
        ref = sched.scale_model_input(sched.add_noise(reference, noise, t.reshape(-1)), t)
        pred = self.unet(x.to(self.unet.unet.dtype), t, context, ref.to(self.unet.unet.dtype))
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        return sched.step(pred, t, latents, generator=generator).prev_sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Sampler latents ``[1, 4, h, w]`` -> the image ``[8h, 8w, 3]`` float32 in [0, 1]."""
        z = unscale_latents(latents) / self.vae.config.scaling_factor
        x = unscale_image(self.vae.decode(z.to(self.vae.dtype)).sample)
        return (x / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()

    @torch.no_grad()
    def __call__(self, image, steps: int = 28, guidance_scale: float = 4.0, generator: torch.Generator | None = None,
                 view_size: int = VIEW_SIZE, callback=None) -> np.ndarray:
        """An RGB PIL image (or straight RGBA ``[H, W, 4]`` float, composited on the model's background) -> the
        ``[3 * view_size, 2 * view_size, 3]`` view image in [0, 1]. ``callback(step, steps)`` after each step."""
        if isinstance(image, np.ndarray):
            image = rgba_to_pil(image, self.background)
        reference, context = self.condition(image, guidance_scale > 1, generator)
        self.scheduler.set_timesteps(steps, device=self.device)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (1, self.unet.unet.config.in_channels, VIEW_ROWS * view_size // factor, VIEW_COLS * view_size // factor)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        for i, t in enumerate(self.scheduler.timesteps):
            latents = self.denoise(latents, t, reference, context, guidance_scale, generator)
            if callback is not None:
                callback(i + 1, steps)
        return self.decode(latents)


def _load_unet_state(unet, path: Path) -> None:
    """A UNet state dict file (``torch.save``, tensors only) into ``unet``; one BadInput for any mismatch."""
    if not path.is_file():
        raise BadInput(f"{path}: no such UNet weights file", {"field": "zero123plus_unet_path"})
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        unet.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:  # unpicklable, wrong keys or shapes
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise BadInput(f"{path}: not a Zero123++ UNet state dict for this folder ({first})",
                       {"field": "zero123plus_unet_path"}) from None
