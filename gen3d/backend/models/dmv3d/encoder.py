"""Noisy views + their cameras -> tokens: per-pixel Plücker rays concatenated to RGB, patchified, a ViT.

Plücker coordinates of the ray through a pixel with origin ``o`` and unit direction ``d`` are ``(o x d, d)``
(GRM/LGM's order), six channels. The ViT blocks are the LRM encoder's (``..lrm.encoder.ViTBlock``); a learned
per-view embedding tells the clean input view (index 0) from the noisy ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..lrm.config import LRMConfig
from ..lrm.encoder import ViTBlock
from .config import RAY_CHANNELS


def plucker_rays(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Rays ``origins, dirs [..., H, W, 3]`` (world, unit directions) -> Plücker ``[..., 6, H, W]`` = (o x d, d)."""
    d = torch.nn.functional.normalize(dirs, dim=-1)
    return torch.cat([torch.linalg.cross(origins, d, dim=-1), d], -1).movedim(-1, -3)


class RayImageEncoder(nn.Module):
    """``images [B, V, 3, S, S]`` in [-1, 1] and ``rays [B, V, 6, S, S]`` -> tokens ``[B, V * (S/p)^2, enc_dim]``."""

    def __init__(self, cfg: LRMConfig, views: int):
        super().__init__()
        d, p = cfg.enc_dim, cfg.enc_patch
        self.patch_embed = nn.Conv2d(3 + RAY_CHANNELS, d, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, cfg.enc_pos_grid ** 2, d))
        self.view_embed = nn.Parameter(torch.zeros(1, views, 1, d))
        self.blocks = nn.ModuleList(ViTBlock(d, cfg.enc_heads, cfg.enc_eps, cfg.enc_layerscale)
                                    for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.enc_eps)

    def forward(self, images: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        B, V = images.shape[:2]
        x = self.patch_embed(torch.cat([images, rays.to(images)], 2).flatten(0, 1))  # [B*V, d, g, g]
        x = x.flatten(2).transpose(1, 2).reshape(B, V, -1, x.shape[1])
        x = (x + self.pos_embed + self.view_embed[:, :V]).flatten(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
