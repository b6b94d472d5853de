"""The interface every diffusion prior shares, so any score-distillation variant combines with any prior.

A prior wraps a (latent) diffusion model loaded with ``from_pretrained`` from a local folder:

- ``condition(...)`` (prior-specific arguments) returns a :class:`Condition`: named *branches* (``"cond"``,
  ``"negative"``, ``"null"``, ...), each a dict of batched UNet inputs. ``"negative"`` is classifier-free guidance's
  unconditional branch (the negative prompt when one is given, else the null condition); ``"null"`` is always the
  empty condition (CSD needs both).
- ``encode(images)`` maps ``[B,3,H,W]`` float in [0,1] to latents ``[B,4,h,w]`` (differentiable); ``decode`` inverts.
- ``predict(z_t, t, cond, branches)`` returns the epsilon prediction of each named branch (one batched UNet call,
  float32, converted from v-prediction when the scheduler says so).
- ``prior(images, cond, t, distillation)`` encodes and applies a distillation (default :class:`SDS` with the
  prior's ``guidance_scale``) and returns a dict of losses (``loss_*``) and logging scalars (``grad_norm``).
- ``refine(images, cond, strength, steps)``: SDEdit. **Strength follows diffusers' img2img convention**: the fraction
  of the ``steps``-step DDIM trajectory that is re-run, so 0 returns the input and 1 starts from pure noise.
  DreamGaussian's ``strength`` is the opposite: its 0.8 skips the first 80 % of the 50 DDIM steps and re-runs the
  last 20 %, which is our 0.2; ours = 1 - DreamGaussian's (:func:`sdedit_timesteps`).

Device and precision: fp16 on CUDA, fp32 elsewhere (override with ``dtype``). Weights are frozen.
Classifier-free guidance is always the diffusers form ``eps_negative + s * (eps_cond - eps_negative)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def fp16_variant(folder: Path) -> str | None:
    """``"fp16"`` when a component folder holds only the ``*.fp16.safetensors`` variant (how we download SD)."""
    files = [p.name for p in Path(folder).glob("*.safetensors")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def sdedit_timesteps(scheduler, strength: float, steps: int) -> torch.Tensor:
    """The timesteps SDEdit re-runs: the last ``int(strength·steps)`` of ``scheduler``'s ``steps``-step schedule.

    As diffusers' img2img ``get_timesteps``, except that a product a hair below an integer (``0.29 * 100``) counts as
    that integer, so ``(steps - k) / steps`` re-runs exactly ``steps - k`` steps. ``scheduler.set_timesteps(steps)``
    must have been called.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    run = min(int(steps * strength + 1e-6), steps)
    return scheduler.timesteps[steps - run:]


@dataclass
class Condition:
    """Named branches of batched UNet keyword inputs; every tensor has the batch as its first dimension."""

    branches: dict[str, dict[str, torch.Tensor]]
    extra: dict = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.branches

    def gather(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Concatenate the inputs of ``names`` (repeats allowed) along the batch."""
        missing = [n for n in names if n not in self.branches]
        if missing:
            raise KeyError(f"condition has no branch {missing[0]!r}; it has {sorted(self.branches)}")
        keys = self.branches[names[0]].keys()
        return {k: torch.cat([self.branches[n][k] for n in names]) for k in keys}


def cfg(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, diffusers form: ``eps_uncond + scale * (eps_cond - eps_uncond)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


class DiffusionPrior:
    """Base class: subclasses set ``unet``, ``vae``, ``scheduler`` and implement ``_eps`` and ``condition``."""

    #: default classifier-free guidance scale for score distillation
    guidance_scale: float = 7.5
    #: views denoised jointly (MVDream: 4); the batch is a multiple of it
    num_frames: int = 1
    #: scale latents by the VAE's scaling factor (all SD-family models)
    scale_latents: bool = True

    def __init__(self, vae, unet, scheduler, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or default_dtype(self.device)
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        for module in (vae, unet):
            if module is not None:
                module.to(self.device).eval().requires_grad_(False)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)

    # ----- sizes and latents
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the space the UNet denoises (the VAE's latents: 4)."""
        return int(self.vae.config.latent_channels)

    @property
    def image_size(self) -> int:
        """Pixel size the model works at (SD 2.1-base 512, Zero123 and MVDream 256; tiny models 64)."""
        cfg_ = self.unet.config
        return int(getattr(cfg_, "sample_size", None) or cfg_.image_size) * self.vae_scale

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def time_embedding(self) -> torch.nn.Module:
        """The module whose output is the timestep embedding (VSD adds its camera embedding there)."""
        return self.unet.time_embedding

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(images, (size, size), mode="bilinear", align_corners=False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> latents ``[B,4,h,w]`` (float32, differentiable; resized to ``image_size``)."""
        x = self.resize(images).to(self.device, self.dtype) * 2 - 1
        z = self.vae.encode(x).latent_dist.sample()
        return (z * self.vae.config.scaling_factor if self.scale_latents else z).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> ``[B,3,H,W]`` float32 in [0,1]."""
        z = latents / self.vae.config.scaling_factor if self.scale_latents else latents
        return (self.vae.decode(z.to(self.dtype)).sample.float() * 0.5 + 0.5).clamp(0, 1)

    def add_noise(self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, *([1] * (z.dim() - 1)))
        return a.sqrt() * z + (1 - a).sqrt() * noise

    # ----- the network
    def _eps(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition,
                branches: Sequence[str]) -> list[torch.Tensor]:
        """Epsilon of each branch for ``z_t [B,...]`` at timesteps ``t [B]``: a list in ``branches`` order, float32."""
        n = len(branches)
        x = torch.cat([z_t] * n).to(self.dtype)
        tt = torch.cat([t.reshape(-1).expand(z_t.shape[0])] * n).to(self.device)
        out = self._eps(x, tt, **{k: v.to(self.device) for k, v in cond.gather(branches).items()}).float()
        if self.scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            a = self.alphas_cumprod[tt].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x.float()
        return list(out.chunk(n))

    def predict_cfg(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, scale: float | None = None,
                    uncond: str = "negative") -> torch.Tensor:
        """Guided epsilon ``eps_uncond + s·(eps_cond - eps_uncond)`` (s defaults to ``guidance_scale``)."""
        eps_c, eps_u = self.predict(z_t, t, cond, ("cond", uncond))
        return cfg(eps_c, eps_u, self.guidance_scale if scale is None else scale)

    # ----- the interface the methods use
    def __call__(self, images: torch.Tensor, cond: Condition, t, distillation=None,
                 progress: float = 0.0, **kw) -> dict[str, torch.Tensor]:
        """Losses of ``images [B,3,H,W]`` in [0,1] under ``distillation`` (default SDS).

        ``t`` is either timesteps ``[B]`` or a schedule (:mod:`backend.guidance.schedules`) evaluated at ``progress``
        (one draw per group of ``num_frames`` views).
        """
        from ..distillation import SDS

        if not isinstance(t, torch.Tensor):
            t = t(progress, images.shape[0] // self.num_frames).repeat_interleave(self.num_frames)
        distillation = distillation or SDS()
        return distillation(self, self.encode(images), cond, t.to(self.device), progress=progress, **kw)

    @torch.no_grad()
    def refine(self, images: torch.Tensor, cond: Condition, strength: float = 0.5, steps: int = 50,
               guidance_scale: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """SDEdit: noise ``images`` to the DDIM step that leaves ``int(strength·steps)`` steps, denoise them.

        ``strength`` in [0, 1], diffusers' convention (see the module docstring). Returns ``[B,3,S,S]`` in [0,1]
        at the prior's ``image_size``.
        """
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler.config, prediction_type="epsilon")  # predict() gives eps
        sched.set_timesteps(steps, device=self.device)
        timesteps = sdedit_timesteps(sched, strength, steps)
        z = self.encode(images)
        if len(timesteps) == 0:
            return self.decode(z)
        noise = torch.randn(z.shape, generator=generator, device=z.device if generator is None else generator.device)
        z = self.add_noise(z, noise.to(z.device), timesteps[:1].expand(z.shape[0]))
        for t in timesteps:
            eps = self.predict_cfg(z, t.reshape(1).expand(z.shape[0]), cond, guidance_scale)
            z = sched.step(eps, t, z).prev_sample
        return self.decode(z)
