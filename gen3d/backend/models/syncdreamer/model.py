"""SyncDreamer (liuyuan-pal/SyncDreamer ``SyncMultiviewDiffusion``) with the checkpoint's parameter names.

Modules (state-dict prefixes of ``syncdreamer-pretrain.ckpt``): ``model.diffusion_model`` (the UNet, LDM names),
``spatial_volume`` (volume nets), ``time_embed`` (256-wide timestep MLP of the volume nets), ``cc_projection``
(Linear 772 -> 768), ``first_stage_model`` (the SD VAE; here diffusers' ``AutoencoderKL``, names converted on load)
and ``clip_image_encoder`` (OpenAI CLIP ViT-L/14's image tower; here transformers' ``CLIPVisionModelWithProjection``,
names converted on load), plus the buffers ``poses``, ``Ks``, ``azimuth`` and the DDPM schedule.

Conditioning of target view ``i`` (``predict_noise``): the UNet input is the noisy latent concatenated with the input
image's VAE latent (a posterior *sample*, unscaled, as Zero123); the context is one token ``cc_projection([CLIP
image embedding, viewpoint_embedding_i])``; the depth-wise attention reads view ``i``'s frustum features. The
classifier-free branch zeroes the projected token, the frustum features and the concatenated latent;
``eps = eps_u + cfg * (eps_c - eps_u)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..mvdream_unet import timestep_embedding
from .cameras import NUM_VIEWS, official_azimuths, official_intrinsics, official_poses, viewpoint_embedding
from .unet import DepthWiseAttentionUNet
from .volume import SpatialVolumeNet

LATENT_SCALE = 0.18215
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class SyncDreamerConfig:
    """Sizes; the defaults are the published ``configs/syncdreamer.yaml`` (tiny test models shrink them, images
    included: the cameras' intrinsics scale with ``image_size`` as in the official ``_init_multiview``)."""

    image_size: int = 256
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    num_heads: int = 8
    context_dim: int = 768
    volume_dims: tuple[int, ...] = (64, 128, 256, 512)
    time_dim: int = 256
    encoder_dim: int = 16
    frustum_depth: int = 48
    volume_size: int = 32
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_norm_groups: int = 32
    clip: dict = field(default_factory=lambda: dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                    num_attention_heads=16, patch_size=14, image_size=224))

    @classmethod
    def from_dict(cls, d: dict) -> "SyncDreamerConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        return asdict(self)


def _vae(cfg: SyncDreamerConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=tuple(cfg.vae_channels), down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=cfg.vae_norm_groups,
                         sample_size=cfg.image_size, scaling_factor=LATENT_SCALE)


def _clip(cfg: SyncDreamerConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**cfg.clip, projection_dim=cfg.context_dim, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5)
    return CLIPVisionModelWithProjection(config)


def ddpm_schedule(steps: int = 1000, start: float = 0.00085, end: float = 0.012) -> dict[str, torch.Tensor]:
    """The LDM "linear" schedule (betas linear in sqrt) and the buffers the checkpoint stores with it."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float32) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {"betas": betas, "alphas": alphas, "alphas_cumprod": ac, "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "posterior_variance": post_var.float(),
            "posterior_log_variance_clipped": post_var.clamp_min(1e-20).log().clamp_min(-10).float()}


class _UNetHolder(nn.Module):
    """Keeps the official prefix ``model.diffusion_model``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.diffusion_model = unet


class SyncDreamer(nn.Module):
    """The whole model; see the module docstring. Build with :func:`~.checkpoint.load_syncdreamer`."""

    def __init__(self, cfg: SyncDreamerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SyncDreamerConfig()
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(),
                                        nn.Linear(cfg.time_dim, cfg.time_dim))
        self.spatial_volume = SpatialVolumeNet(cfg.time_dim, 4, NUM_VIEWS, cfg.image_size,
                                               frustum_volume_depth=cfg.frustum_depth,
                                               spatial_volume_size=cfg.volume_size, dims=cfg.volume_dims,
                                               encoder_dim=cfg.encoder_dim)
        self.model = _UNetHolder(DepthWiseAttentionUNet(
            cfg.volume_dims, image_size=cfg.image_size // 8, model_channels=cfg.model_channels,
            attention_resolutions=cfg.attention_resolutions, channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks, num_heads=cfg.num_heads, context_dim=cfg.context_dim))
        self.cc_projection = nn.Linear(cfg.context_dim + 4, cfg.context_dim)
        self.first_stage_model = _vae(cfg)
        self.clip_image_encoder = _clip(cfg)
        with torch.device("cpu"):  # small constants, real even when the modules are built on "meta"
            buffers = {"poses": official_poses(), "Ks": official_intrinsics(NUM_VIEWS, cfg.image_size), "azimuth": official_azimuths(),
                       **ddpm_schedule()}
        for name, value in buffers.items():
            self.register_buffer(name, value)

    @property
    def unet(self) -> DepthWiseAttentionUNet:
        return self.model.diffusion_model

    # -- inputs -------------------------------------------------------------------------------------------------
    def clip_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """``image [B, 3, S, S]`` (S = ``cfg.image_size``, 256) in [-1, 1] -> CLIP input ``[B, 3, 224, 224]``: the official embedder's
        kornia resize (bicubic, align_corners=True, no antialias = ``F.interpolate``) and CLIP normalisation."""
        size = self.clip_image_encoder.config.image_size
        x = F.interpolate(image, (size, size), mode="bicubic", align_corners=True)
        mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        return ((x + 1) / 2 - mean) / std

    @torch.no_grad()
    def encode_input(self, image: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``image [B, 3, S, S]`` in [-1, 1] (object on white) -> ``clip [B, 1, 768]`` image embedding and
        ``latent [B, 4, S/8, S/8]``: one VAE posterior sample, unscaled (what the UNet concatenates)."""
        posterior = self.first_stage_model.encode(image).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype)
        latent = posterior.mean + posterior.std * noise.to(posterior.mean.device)
        clip = self.clip_image_encoder(pixel_values=self.clip_pixels(image)).image_embeds.float()
        return {"clip": clip[:, None], "latent": latent}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents [B, 4, h, w]`` (scaled) -> images ``[B, 3, 8h, 8w]`` in [-1, 1] (not clamped)."""
        return self.first_stage_model.decode(latents / LATENT_SCALE).sample

    # -- one denoising prediction -------------------------------------------------------------------------------
    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t, self.cfg.time_dim))

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, inputs: dict[str, torch.Tensor],
                      elevation: torch.Tensor, cfg_scale: float = 2.0, batch_view_num: int = 8) -> torch.Tensor:
        """``x_t [B, N, 4, h, w]`` all views' noisy latents, ``t [B]`` timesteps, ``inputs`` from
        :meth:`encode_input`, ``elevation [B]`` input elevation (radians, positive above) -> ``eps [B, N, 4, h, w]``.
        The spatial volume is built once from all views; the UNet runs ``batch_view_num`` views at a time."""
        B, N, _, h, w = x_t.shape
        v_embed = viewpoint_embedding(self.azimuth, elevation)
        t_embed = self.embed_time(t)
        volume = self.spatial_volume.spatial(x_t, t_embed, v_embed, self.poses, self.Ks)
        eps = []
        for start in range(0, N, batch_view_num):
            views = torch.arange(start, min(start + batch_view_num, N), device=x_t.device)
            TN = len(views)
            frustum = self.spatial_volume.frustum(volume, t_embed, v_embed, self.poses, self.Ks, views, w)
            token = inputs["clip"].repeat_interleave(TN, 0)  # [B*TN, 1, 768]
            token = self.cc_projection(torch.cat([token, v_embed[:, views].reshape(B * TN, 1, 4)], -1))
            concat = inputs["latent"].repeat_interleave(TN, 0)
            x = x_t[:, views].flatten(0, 1)
            tt = t.repeat_interleave(TN, 0)
            if cfg_scale != 1.0:
                two = lambda a: torch.cat([a, torch.zeros_like(a)])  # noqa: E731 (conditional, unconditional)
                out = self.unet(torch.cat([torch.cat([x, x]), two(concat)], 1), torch.cat([tt, tt]), two(token),
                                {k: two(v) for k, v in frustum.items()})
                cond, uncond = out.chunk(2)
                out = uncond + cfg_scale * (cond - uncond)
            else:
                out = self.unet(torch.cat([x, concat], 1), tt, token, frustum)
            eps.append(out.reshape(B, TN, *out.shape[1:]))
        return torch.cat(eps, 1)
