"""The triplane transformer of both LRM families: learned triplane tokens attend to image tokens.

One block class covers both: the order of its three sub-blocks (``cfg.block_order``), the feed-forward kind
(GELU MLP or GEGLU), attention biases and whether each LayerNorm is modulated by the camera (adaLN, OpenLRM) are
configuration. Attention projections are always separate ``q/k/v/out`` Linear layers; OpenLRM's packed
``nn.MultiheadAttention`` weights are split on load (``checkpoints.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LRMConfig


class Attention(nn.Module):
    """Multi-head attention of ``x [B, N, dim]`` to ``context [B, M, kdim]`` (``context=None``: self-attention)."""

    def __init__(self, dim: int, heads: int, kdim: int, qkv_bias: bool, out_bias: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(kdim, dim, bias=qkv_bias)
        self.v = nn.Linear(kdim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=out_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, D = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, -1, self.heads, D // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)))
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class ModNorm(nn.Module):
    """LayerNorm, optionally modulated adaLN-style by a vector: ``LN(x) * (1 + scale) + shift`` where
    ``shift, scale = Linear(SiLU(mod))``."""

    def __init__(self, dim: int, eps: float, mod_dim: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mod = nn.Linear(mod_dim, 2 * dim) if mod_dim else None

    def forward(self, x: torch.Tensor, mod: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if self.mod is None:
            return x
        shift, scale = self.mod(F.silu(mod)).chunk(2, dim=-1)
        return x * (1 + scale[:, None]) + shift[:, None]


class FeedForward(nn.Module):
    """``gelu``: Linear(D, mD) - GELU - Linear(mD, D); ``geglu``: Linear(D, 2mD) -> a * GELU(gate) -> Linear(mD, D)."""

    def __init__(self, dim: int, mult: int, kind: str):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(dim, (2 if kind == "geglu" else 1) * mult * dim)
        self.fc2 = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "geglu":
            a, gate = h.chunk(2, dim=-1)
            h = a * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.fc2(h)


class TriplaneBlock(nn.Module):
    """Pre-norm residual block of self-attention, cross-attention to image tokens and a feed-forward, in
    ``cfg.block_order``."""

    def __init__(self, cfg: LRMConfig):
        super().__init__()
        self.order = cfg.block_order
        d = cfg.dim
        mod = cfg.camera_embed_dim if cfg.camera_modulates == "transformer" else 0
        eps = cfg.norm_eps if cfg.block_norm_eps is None else cfg.block_norm_eps
        self.norm_self = ModNorm(d, eps, mod)
        self.self_attn = Attention(d, cfg.heads, d, cfg.attn_qkv_bias, cfg.attn_out_bias)
        self.norm_cross = ModNorm(d, eps, mod)
        self.cross_attn = Attention(d, cfg.heads, cfg.enc_dim, cfg.attn_qkv_bias, cfg.attn_out_bias)
        self.norm_ff = ModNorm(d, eps, mod)
        self.ff = FeedForward(d, cfg.ff_mult, cfg.ff_kind)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mod: torch.Tensor | None) -> torch.Tensor:
        for step in self.order:
            if step == "self":
                x = x + self.self_attn(self.norm_self(x, mod))
            elif step == "cross":
                x = x + self.cross_attn(self.norm_cross(x, mod), context)
            else:
                x = x + self.ff(self.norm_ff(x, mod))
        return x


class TriplaneTransformer(nn.Module):
    """Learned tokens ``[1, 3*r*r, D]`` (plane-major, then rows, then columns) -> ``[B, 3*r*r, D]``.

    OpenLRM: tokens -> blocks -> LayerNorm. TripoSR: GroupNorm(32) -> proj_in -> blocks -> proj_out, plus the input
    tokens as a residual.
    """

    def __init__(self, cfg: LRMConfig):
        super().__init__()
        d = cfg.dim
        self.tokens = nn.Parameter(torch.zeros(1, cfg.plane_tokens, d))
        self.in_norm = nn.GroupNorm(32, d, eps=1e-6) if cfg.in_groupnorm else None
        self.proj_in = nn.Linear(d, d) if cfg.in_groupnorm else None
        self.blocks = nn.ModuleList(TriplaneBlock(cfg) for _ in range(cfg.layers))
        self.proj_out = nn.Linear(d, d) if cfg.in_groupnorm else None
        self.out_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.out_layernorm else None

    def forward(self, context: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens.expand(len(context), -1, -1)
        residual = x
        if self.in_norm is not None:
            x = self.proj_in(self.in_norm(x.transpose(1, 2)).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, context, mod)
        if self.proj_out is not None:
            x = self.proj_out(x) + residual
        if self.out_norm is not None:
            x = self.out_norm(x)
        return x
