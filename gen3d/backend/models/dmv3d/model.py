"""The DMV3D denoiser: noisy views (+ the clean input view) with Plücker rays and a timestep -> a triplane NeRF.

It *is* an LRM (:class:`..lrm.LRM`, whose triplane transformer, upsampler, NeRF MLP, ``field`` and
``render_settings`` it inherits unchanged); what differs is the tokeniser (:class:`RayImageEncoder` over RGB +
rays instead of DINOv2) and the adaLN input: the timestep embedding replaces the LRM's camera embedding, so every
LayerNorm of every triplane block is modulated by ``t``. ``forward_planes(images, rays, t)`` gives
``planes [B, 3, C, 2r, 2r]``; rendering them at the noisy views' cameras is the x0 prediction (``diffusion.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..lrm.model import LRM, NeRFMLP
from ..lrm.transformer import TriplaneTransformer
from .config import DMV3DConfig
from .encoder import RayImageEncoder


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of ``t [B]`` -> ``[B, dim]`` (cos half, then sin half; DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class DMV3D(LRM):
    """Ray-image encoder, timestep embedder (sinusoid -> Linear -> SiLU -> Linear, the LRM camera embedder's
    shape), the LRM's triplane transformer (its cross-attention reads the view tokens, and in the text variant the
    projected text tokens after them), 2x ConvTranspose upsampler and NeRF MLP."""

    def __init__(self, config: DMV3DConfig):
        nn.Module.__init__(self)
        self.config = config
        self.cfg = cfg = config.lrm
        self.encoder = RayImageEncoder(cfg, config.views)
        self.camera_embedder = nn.Sequential(nn.Linear(cfg.camera_embed_dim, cfg.camera_embed_dim), nn.SiLU(),
                                             nn.Linear(cfg.camera_embed_dim, cfg.camera_embed_dim))
        self.transformer = TriplaneTransformer(cfg)
        self.upsampler = nn.ConvTranspose2d(cfg.dim, cfg.triplane_dim, kernel_size=2, stride=2)
        self.nerf = NeRFMLP(cfg)
        self.text_proj = nn.Linear(config.text_dim, cfg.enc_dim) if config.text_dim else None

    def forward_planes(self, images: torch.Tensor, rays: torch.Tensor, t: torch.Tensor,
                       text: torch.Tensor | None = None) -> torch.Tensor:
        """``images [B, V, 3, S, S]`` in [-1, 1] (view 0: the clean input view, the rest noisy at step ``t``),
        ``rays [B, V, 6, S, S]`` Plücker, ``t [B]``, ``text [B, L, text_dim]`` (CLIP's last hidden state; text
        variant only) -> ``planes [B, 3, triplane_dim, 2r, 2r]``."""
        tokens = self.encoder(images, rays)
        if self.text_proj is not None:
            tokens = torch.cat([tokens, self.text_proj(text.to(tokens.dtype))], 1)
        mod = self.camera_embedder(timestep_features(t, self.cfg.camera_embed_dim).to(tokens.dtype))
        return self.upsample(self.transformer(tokens, mod))


def fresh_dmv3d(config: DMV3DConfig, seed: int = 0) -> DMV3D:
    """A newly initialised DMV3D (PyTorch's layer init; triplane tokens ``randn / sqrt(D)`` as OpenLRM, position
    and view embeddings ``trunc_normal(0.02)``; adaLN projections zero, DiT's adaLN-Zero start), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DMV3D(config)
        with torch.no_grad():
            model.transformer.tokens.normal_(0.0, config.lrm.dim ** -0.5)
            nn.init.trunc_normal_(model.encoder.pos_embed, std=0.02)
            nn.init.trunc_normal_(model.encoder.view_embed, std=0.02)
            for name, p in model.transformer.named_parameters():
                if ".mod." in name:
                    p.zero_()
    return model
