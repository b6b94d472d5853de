"""SyncDreamer's UNet: Zero123-XL's LDM UNet plus depth-wise attention (``sync_dreamer_attention.py`` names).

The UNet is the SD 1.x layout of :class:`~backend.models.mvdream_unet.MultiViewUNetModel` with 8 input channels,
8 heads, 1x1-convolution ``proj_in``/``proj_out``, context width 768 and no camera embedding; each view attends
only to itself. :class:`DepthTransformer` modules follow the middle block (``middle_conditions``) and output
blocks 3..11 (``output_conditions.0..8``): at every pixel the UNet feature queries the frustum features along depth
at that pixel (softmax over depth), and a zero-initialised convolution adds the result back.
"""

from __future__ import annotations

import torch
from torch import nn

from ..mvdream_unet import MultiViewUNetModel


class DepthAttention(nn.Module):
    """``x [B, Cq, H, W]`` attends to ``context [B, Cc, D, H, W]`` along D at each pixel -> ``[B, Cq, H, W]``."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, output_bias: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.scale, self.heads, self.dim_head = dim_head ** -0.5, heads, dim_head
        self.to_q = nn.Conv2d(query_dim, inner, 1, bias=False)
        self.to_k = nn.Conv3d(context_dim, inner, 1, bias=False)
        self.to_v = nn.Conv3d(context_dim, inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, query_dim, 1, bias=output_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = context.shape
        q = self.to_q(x).reshape(b, self.heads, self.dim_head, 1, h, w)
        k = self.to_k(context).reshape(b, self.heads, self.dim_head, d, h, w)
        v = self.to_v(context).reshape(b, self.heads, self.dim_head, d, h, w)
        attn = ((q * k).sum(2) * self.scale).softmax(dim=2)  # [b, heads, d, h, w]
        out = (v * attn[:, :, None]).sum(3)
        return self.to_out(out.reshape(b, -1, h, w))


class DepthTransformer(nn.Module):
    """``x + proj_out(depth_attn(proj_in(x), proj_context(context)))``; ``proj_out`` ends in a zero-initialised
    convolution so that an untrained module is the identity."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int):
        super().__init__()
        inner = n_heads * d_head
        self.proj_in = nn.Sequential(nn.Conv2d(dim, inner, 1), nn.GroupNorm(8, inner), nn.SiLU())
        self.proj_context = nn.Sequential(nn.Conv3d(context_dim, context_dim, 1, bias=False),
                                          nn.GroupNorm(8, context_dim), nn.ReLU())
        self.depth_attn = DepthAttention(inner, context_dim, n_heads, d_head, output_bias=False)
        self.proj_out = nn.Sequential(nn.GroupNorm(8, inner), nn.ReLU(), nn.Conv2d(inner, inner, 3, 1, 1, bias=False),
                                      nn.GroupNorm(8, inner), nn.ReLU(), nn.Conv2d(inner, dim, 3, 1, 1, bias=False))
        nn.init.zeros_(self.proj_out[-1].weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.depth_attn(self.proj_in(x), self.proj_context(context))) + x


class DepthWiseAttentionUNet(MultiViewUNetModel):
    """``forward(x [B, 8, h, w], timesteps [B], context [B, 1, 768], volume {width: [B, C, D, width, width]})``
    -> noise ``[B, 4, h, w]``. ``volume_dims`` are the frustum widths at the four scales (published 64..512)."""

    #: output block index -> output_conditions index
    OUTPUT_CONDITIONS = {i: i - 3 for i in range(3, 12)}

    def __init__(self, volume_dims=(64, 128, 256, 512), image_size: int = 32, in_channels: int = 8,
                 out_channels: int = 4, model_channels: int = 320, attention_resolutions=(4, 2, 1),
                 num_res_blocks: int = 2, channel_mult=(1, 2, 4, 4), num_heads: int = 8, transformer_depth: int = 1,
                 context_dim: int = 768):
        super().__init__(image_size=image_size, in_channels=in_channels, out_channels=out_channels,
                         model_channels=model_channels, attention_resolutions=attention_resolutions,
                         num_res_blocks=num_res_blocks, channel_mult=channel_mult, num_head_channels=-1,
                         num_heads=num_heads, transformer_depth=transformer_depth, context_dim=context_dim,
                         camera_dim=None, use_linear_in_transformer=False)
        d0, d1, d2, d3 = volume_dims
        deep, mid, top = (model_channels * channel_mult[i] for i in (2, 1, 0))

        def block(ch: int, d: int) -> DepthTransformer:
            return DepthTransformer(ch, 4, d // 2, d)

        self.middle_conditions = block(deep, d3)
        self.output_conditions = nn.ModuleList([
            block(deep, d2), block(deep, d2), block(deep, d1),
            block(mid, d1), block(mid, d1), block(mid, d0),
            block(top, d0), block(top, d0), block(top, d0)])

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                volume: dict[int, torch.Tensor]) -> torch.Tensor:
        emb = self.embed_time(timesteps, x)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, context, 1)
            skips.append(h)
        h = self.middle_block(h, emb, context, 1)
        h = self.middle_conditions(h, volume[h.shape[-1]])
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, 1)
            if i in self.OUTPUT_CONDITIONS:
                h = self.output_conditions[self.OUTPUT_CONDITIONS[i]](h, volume[h.shape[-1]])
        return self.out(h)
