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

ImageDream (``unet/`` of ``ashawkey/imagedream-ipmv-diffusers``, config ``ip_dim`` 16) adds, with the same names:

- ``image_embed``: the IP-Adapter-plus :class:`Resampler` turning CLIP ViT-H/14 tokens ``ip [B*F, n, 1280]`` into
  ``ip_dim`` tokens of width ``context_dim``, appended after the text tokens;
- ``attn2.to_k_ip`` / ``to_v_ip`` in every cross-attention: ``softmax(q k_txt) v_txt + ip_weight softmax(q k_ip) v_ip``
  (two softmaxes added), the image tokens being the **last** ``ip_dim`` context tokens;
- ``ip_img [B, C, h, w]`` (pixel controller): the reference latent replaces the last frame of every sample. Unlike
  the port, the caller's ``x`` is not written in place.
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
    """Multi-head attention with LDM names ``to_q/to_k/to_v`` (no bias) and ``to_out.0``; SDPA kernel. With
    ``ip_dim > 0`` the last ``ip_dim`` context tokens are image tokens with their own ``to_k_ip``/``to_v_ip``."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.ip_dim, self.ip_weight = heads, ip_dim, ip_weight
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if ip_dim:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]
        if self.ip_dim:
            context, image = context[:, :-self.ip_dim], context[:, -self.ip_dim:]
        q = self._heads(self.to_q(x))
        out = F.scaled_dot_product_attention(q, self._heads(self.to_k(context)), self._heads(self.to_v(context)))
        if self.ip_dim:
            out = out + self.ip_weight * F.scaled_dot_product_attention(
                q, self._heads(self.to_k_ip(image)), self._heads(self.to_v_ip(image)))
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

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, ip_dim: int = 0,
                 ip_weight: float = 1.0):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim, ip_dim, ip_weight)
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

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, linear: bool = True,
                 ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = _norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim, ip_dim, ip_weight) for _ in range(depth))
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


class PerceiverAttention(nn.Module):
    """The Resampler's attention: queries from the (``norm2``) latents, keys/values from the (``norm1``) image tokens
    and the latents together; ``to_kv`` holds keys then values; q and k each scaled by d^-1/4, softmax in float32."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        k, v = self.to_kv(torch.cat([self.norm1(x), latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (self.to_q(latents), k, v))
        scale = self.dim_head ** -0.25
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).type(q.dtype)
        return self.to_out((weight @ v).transpose(1, 2).reshape(b, n, -1))


class Resampler(nn.Module):
    """IP-Adapter-plus resampler (ImageDream's ``image_embed``): ``num_queries`` learned ``latents`` attend to
    ``proj_in(ip)`` ``depth`` times (attention + bias-free GELU MLP, both residual); ``norm_out(proj_out(.))``.
    ``[B, n, embedding_dim] -> [B, num_queries, output_dim]``."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_queries: int, embedding_dim: int,
                 output_dim: int, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, dim_head, heads),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


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
    """The MVDream / ImageDream UNet; config keys are those of the port's ``unet/config.json`` (``ip_dim`` > 0 for
    ImageDream; the ``ip_*`` sizes of the resampler are hard-coded in the port, configurable here for tiny models);
    peft adapters attach (VSD).

    The same LDM layout also builds the SD 1.x / Zero123 UNet (``num_head_channels=-1`` with ``num_heads``,
    ``use_linear_in_transformer=False``, ``camera_dim=None``; views attend separately with ``num_frames=1``)."""

    @register_to_config
    def __init__(self, image_size: int = 32, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 attention_resolutions=(4, 2, 1), num_res_blocks: int = 2, channel_mult=(1, 2, 4, 4),
                 num_head_channels: int = 64, transformer_depth: int = 1, context_dim: int = 1024,
                 camera_dim: int | None = 16, num_heads: int = -1, use_linear_in_transformer: bool = True,
                 ip_dim: int = 0, ip_weight: float = 1.0, ip_embedding_dim: int = 1280, ip_heads: int = 12,
                 ip_dim_head: int = 64, ip_depth: int = 4):
        super().__init__()
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if camera_dim:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        if ip_dim:
            self.image_embed = Resampler(context_dim, ip_depth, ip_dim_head, ip_heads, ip_dim, ip_embedding_dim,
                                         context_dim)

        def attention(ch: int) -> SpatialTransformer3D:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return SpatialTransformer3D(ch, heads, ch // heads, transformer_depth, context_dim,
                                        use_linear_in_transformer, ip_dim, ip_weight)

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
                camera: torch.Tensor | None = None, num_frames: int = 4, ip: torch.Tensor | None = None,
                ip_img: torch.Tensor | None = None) -> torch.Tensor:
        """``ip [B*F, n, ip_embedding_dim]`` CLIP tokens and ``ip_img [B, C, h, w]`` (pixel controller; put in the
        last frame of each sample) are ImageDream's; an ImageDream UNet needs ``ip``."""
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        if self.config.ip_dim:
            if ip is None:  # the port would silently take the last ip_dim text tokens as image tokens
                raise ValueError("this ImageDream UNet needs the image tokens ip")
            if ip_img is not None:
                x = x.clone()
                x[num_frames - 1::num_frames] = ip_img.to(x.dtype)
            context = torch.cat([context, self.image_embed(ip.to(x.dtype))], dim=1)
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
