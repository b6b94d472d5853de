"""The image encoder of both LRM families: a plain ViT configured as DINOv2-with-registers (OpenLRM) or DINO ViT-B/16
(TripoSR, transformers' ``ViTModel``).

Parameter names follow Meta's DINOv2 code (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``ls1.gamma``, ...), which is
exactly how OpenLRM stores them; TripoSR's transformers-4.x names are converted in ``checkpoints.py``. Written here
rather than taken from transformers because the two published models resize their position embeddings in two
different ways (reference section 10) that neither transformers class reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LRMConfig


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ViTAttention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm ViT layer; with ``mod_dim`` both norms are modulated adaLN-style by a per-image vector (InstantMesh's
    camera modulation): ``shift1, scale1, shift2, scale2 = modulation(SiLU(mod))``, ``LN(x) * (1 + scale) + shift``,
    no gates. ``modulation`` starts at zero, so a fresh block is the plain ViT layer."""

    def __init__(self, dim: int, heads: int, eps: float, layerscale: bool, mod_dim: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ViTAttention(dim, heads)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = ViTMlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()
        self.modulation = nn.Linear(mod_dim, 4 * dim) if mod_dim else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        h1, h2 = self.norm1(x), None
        if self.modulation is not None:
            shift1, scale1, shift2, scale2 = self.modulation(F.silu(mod)).chunk(4, dim=-1)
            h1 = h1 * (1 + scale1[:, None]) + shift1[:, None]
        x = x + self.ls1(self.attn(h1))
        h2 = self.norm2(x)
        if self.modulation is not None:
            h2 = h2 * (1 + scale2[:, None]) + shift2[:, None]
        return x + self.ls2(self.mlp(h2))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos_embed(pos: torch.Tensor, grid_h: int, grid_w: int, offset: float, antialias: bool) -> torch.Tensor:
    """Bicubic resize of ViT position embeddings ``[1, 1+G*G, C]`` to a ``grid_h x grid_w`` patch grid.

    Reproduces DINO/DINOv2 and transformers 4.x: ``F.interpolate`` with ``scale_factor=(grid+offset)/G`` (not a
    target size), DINOv2-reg with ``offset=0, antialias=True``, DINO ViT with ``offset=0.1, antialias=False``.
    """
    n = pos.shape[1] - 1
    side = int(round(n ** 0.5))
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos
    cls, patches = pos[:, :1].float(), pos[:, 1:].float()
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((grid_h + offset) / side, (grid_w + offset) / side),
                            mode="bicubic", antialias=antialias)
    if patches.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"position embedding resize gave {tuple(patches.shape[-2:])}, wanted {(grid_h, grid_w)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat([cls, patches], 1).to(pos.dtype)


class ImageEncoder(nn.Module):
    """Images ``[B, 3, S, S]`` float in [0, 1] (S = ``cfg.image_size``) -> tokens ``[B, 1 + (S/p)^2, enc_dim]``:
    the final-normed CLS token followed by the normed patch tokens (register tokens dropped). With
    ``cfg.camera_modulates == "encoder"`` every layer is modulated by ``mod [B, camera_embed_dim]``, one per image."""

    def __init__(self, cfg: LRMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.enc_dim
        self.patch_embed = PatchEmbed(cfg.enc_patch, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.enc_pos_grid ** 2, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.enc_registers, d)) if cfg.enc_registers else None
        mod_dim = cfg.camera_embed_dim if cfg.camera_modulates == "encoder" else 0
        self.blocks = nn.ModuleList(ViTBlock(d, cfg.enc_heads, cfg.enc_eps, cfg.enc_layerscale, mod_dim)
                                    for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.enc_eps)

    def forward(self, images: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.image_mean is not None:  # made here, not a buffer: models are built on `meta` then assigned
            mean = torch.tensor(self.cfg.image_mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.cfg.image_std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            images = (images - mean) / std
        H, W = images.shape[-2:]
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + resize_pos_embed(self.pos_embed, H // self.cfg.enc_patch, W // self.cfg.enc_patch,
                                 self.cfg.enc_pos_offset, self.cfg.enc_pos_antialias)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(len(x), -1, -1), x[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x, mod)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + self.cfg.enc_registers:]], 1)
