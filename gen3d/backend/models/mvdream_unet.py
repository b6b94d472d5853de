"""MVDream's multi-view UNet, with the original LDM parameter names of the published weights.

Loads ``unet/`` of ``ashawkey/mvdream-sd2.1-diffusers`` (config.json + diffusion_pytorch_model.safetensors) with
``MultiViewUNetModel.from_pretrained(folder, subfolder="unet")``: the key names (``input_blocks.N.M.*``,
``middle_block.*``, ``output_blocks.N.M.*``, ``time_embed.{0,2}``, ``camera_embed.{0,2}``, ``out.{0,2}``) and shapes
are exactly those of the port (tests/data/checkpoint_keys/mvdream-sd21-4view-unet.json).

Architecture (bytedance/MVDream ``openaimodel.py`` / ``attention.py``), written here from the published description:

- timestep embedding ``[cos, sin]`` (cos first) of width ``model_channels`` -> ``time_embed`` MLP;
  the camera (flattened 4x4 c2w, 16 numbers, see :func:`backend.guidance.priors.mvdream.mvdream_cameras`) goes
  through ``camera_embed`` (Linear, SiLU, Linear) and is **added** to the timestep embedding;
- every transformer block's self-attention (``attn1``) spans all ``num_frames`` views of a sample: tokens
  ``[(B F), HW, C]`` are regrouped to ``[B, F*HW, C]``; the text cross-attention (``attn2``) stays per view;
- attention is :func:`torch.nn.functional.scaled_dot_product_attention` (the port used xformers);
- GroupNorm eps 1e-5 in ResBlocks and the output, 1e-6 in the spatial transformers; GroupNorms compute in float32.

Inputs: ``x [B*F, C, h, w]`` latents with the F views of a sample consecutive, ``timesteps [B*F]``,
``context [B*F, L, context_dim]``, ``camera [B*F, camera_dim]``, ``num_frames = F``. Output ``[B*F, C, h, w]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` in LDM order: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (LDM's ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return GroupNorm32(32, channels, eps=eps)


class ResBlock(nn.Module):
    """``in_layers`` (norm, SiLU, conv), ``emb_layers`` (SiLU, Linear), ``out_layers`` (norm, SiLU, dropout, conv),
    ``skip_connection`` (1x1 conv when the width changes)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention with LDM names ``to_q/to_k/to_v`` (no bias) and ``to_out.0``; SDPA kernel."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Self-attention across all views of a sample, then per-view text cross-attention, then GEGLU MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, length, c = x.shape
        joint = x.reshape(bf // num_frames, num_frames * length, c)
        joint = self.attn1(self.norm1(joint)) + joint
        x = joint.reshape(bf, length, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm (eps 1e-6), ``proj_in``, transformer blocks, ``proj_out``, residual. The projections are Linear
    (SD 2.x, MVDream) or 1x1 convolutions (SD 1.x, Zero123: ``linear=False``), the same map with other shapes."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, linear: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.norm = _norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, c, h, w = x.shape
        if isinstance(self.proj_in, nn.Linear):
            y = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        else:
            y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        if isinstance(self.proj_out, nn.Linear):
            y = self.proj_out(y).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        else:
            y = self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w))
        return y + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.ModuleList):
    """Applies its layers in order, giving each what it needs (LDM's container; keys ``N.0``, ``N.1``, ...)."""

    def forward(self, x, emb, context, num_frames):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class MultiViewUNetModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The MVDream UNet; config keys are those of the port's ``unet/config.json``; peft adapters attach (VSD).

    The same LDM layout also builds the SD 1.x / Zero123 UNet (``num_head_channels=-1`` with ``num_heads``,
    ``use_linear_in_transformer=False``, ``camera_dim=None``; views attend separately with ``num_frames=1``)."""

    @register_to_config
    def __init__(self, image_size: int = 32, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 attention_resolutions=(4, 2, 1), num_res_blocks: int = 2, channel_mult=(1, 2, 4, 4),
                 num_head_channels: int = 64, transformer_depth: int = 1, context_dim: int = 1024,
                 camera_dim: int | None = 16, num_heads: int = -1, use_linear_in_transformer: bool = True):
        super().__init__()
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if camera_dim:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb), nn.SiLU(), nn.Linear(emb, emb))

        def attention(ch: int) -> SpatialTransformer3D:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return SpatialTransformer3D(ch, heads, ch // heads, transformer_depth, context_dim,
                                        linear=use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([nn.Conv2d(in_channels, model_channels, 3,
                                                                              padding=1)])])
        skip_channels, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential([ResBlock(ch, emb, ch), attention(ch), ResBlock(ch, emb, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                camera: torch.Tensor | None = None, num_frames: int = 4) -> torch.Tensor:
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        emb = self.embed_time(timesteps, x)
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(x.dtype))
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h)

    def embed_time(self, timesteps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The timestep embedding ``[B, 4 * model_channels]`` for the batch of ``x``."""
        t_emb = timestep_embedding(timesteps.reshape(-1).expand(x.shape[0]), self.config.model_channels)
        return self.time_embed(t_emb.to(x.dtype))
