"""SyncDreamer's 3D feature volumes (parameter names of ``ldm/models/diffusion/sync_dreamer_network.py``).

Every denoising step:

1. :class:`NoisyTargetViewEncoder` turns each noisy target latent ``[4, 32, 32]`` (with its time and view embedding)
   into 16 feature channels;
2. :func:`unproject` samples those features at the 32^3 vertices of the box [-0.5, 0.5]^3 (the vertex at index
   ``[d, h, w]`` is the point ``(a_w, a_h, a_d)``, ``a = linspace(-0.5, 0.5, 32)``, grid_sample's order) and stacks
   the views -> ``[B, 16 * 16, 32, 32, 32]``; :class:`SpatialTime3DNet` makes it a 64-channel volume;
3. per target view, :func:`frustum_points` places 48 depths in [1.5 - 0.866, 1.5 + 0.866] behind each of the 32^2
   latent pixels, :func:`sample_volume` reads the volume there (trilinear, zeros outside) and
   :class:`FrustumTV3DNet` returns features at four scales ``{32: [64, 48], 16: [128, 24], 8: [256, 12],
   4: [512, 6]}`` (width -> [channels, depths]), the keys and values of the UNet's depth-wise attention.

Projection convention (the official code's): pixel coordinates ``K' [u v 1]^T = K diag(s, s, 1)`` with
``s = latent size / 256``, and pixel ``u`` maps to grid_sample's ``u / ((size - 1) / 2) - 1`` (align_corners=True).
Depths below 1e-4 are clamped to 1e-4 before the division.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class Image2DResBlockWithTV(nn.Module):
    """``x + conv(x + time_embed(t) + view_embed(v))``; ``t [B, T, 1, 1]``, ``v [B, 4, 1, 1]``."""

    def __init__(self, dim: int, tdim: int, vdim: int):
        super().__init__()
        self.time_embed = nn.Conv2d(tdim, dim, 1)
        self.view_embed = nn.Conv2d(vdim, dim, 1)
        self.conv = nn.Sequential(_gn(dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, 1, 1),
                                  _gn(dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, 1, 1))

    def forward(self, x, t, v):
        return x + self.conv(x + self.time_embed(t) + self.view_embed(v))


class NoisyTargetViewEncoder(nn.Module):
    """``x [B, 4, h, w]``, ``t [B, T]``, ``v [B, 4]`` -> ``[B, output_dim, h, w]``."""

    def __init__(self, time_embed_dim: int, viewpoint_dim: int, run_dim: int = 16, output_dim: int = 8):
        super().__init__()
        self.init_conv = nn.Conv2d(4, run_dim, 3, 1, 1)
        self.out_conv0 = Image2DResBlockWithTV(run_dim, time_embed_dim, viewpoint_dim)
        self.out_conv1 = Image2DResBlockWithTV(run_dim, time_embed_dim, viewpoint_dim)
        self.out_conv2 = Image2DResBlockWithTV(run_dim, time_embed_dim, viewpoint_dim)
        self.final_out = nn.Sequential(_gn(run_dim), nn.SiLU(), nn.Conv2d(run_dim, output_dim, 3, 1, 1))

    def forward(self, x, t, v):
        t, v = t[..., None, None], v[..., None, None]
        x = self.init_conv(x)
        for block in (self.out_conv0, self.out_conv1, self.out_conv2):
            x = block(x, t, v)
        return self.final_out(x)


class _TimeBlock3D(nn.Module):
    """``conv(SiLU(norm(x + t_conv(t) [+ v_conv(v)])))``; ``up`` uses a stride-2 transposed convolution."""

    def __init__(self, x_dim: int, t_dim: int, out_dim: int, stride: int = 1, v_dim: int = 0, up: bool = False,
                 norm_name: str = "bn"):
        super().__init__()
        self.t_conv = nn.Conv3d(t_dim, x_dim, 1)
        if v_dim:
            self.v_conv = nn.Conv3d(v_dim, x_dim, 1)
        self.norm_name = norm_name
        setattr(self, norm_name, _gn(x_dim))
        self.conv = (nn.ConvTranspose3d(x_dim, out_dim, 3, stride=2, padding=1, output_padding=1) if up
                     else nn.Conv3d(x_dim, out_dim, 3, stride=stride, padding=1))

    def forward(self, x, t, v=None):
        x = x + self.t_conv(t)
        if v is not None:
            x = x + self.v_conv(v)
        return self.conv(F.silu(getattr(self, self.norm_name)(x)))


class SpatialTime3DNet(nn.Module):
    """Time-conditioned 3D U-Net on the spatial volume: ``[B, input_dim, V, V, V]``, ``t [B, T]`` ->
    ``[B, dims[0], V, V, V]``."""

    def __init__(self, time_dim: int = 256, input_dim: int = 128, dims=(32, 64, 128, 256)):
        super().__init__()
        d0, d1, d2, d3 = dims
        self.init_conv = nn.Conv3d(input_dim, d0, 3, 1, 1)
        self.conv0 = _TimeBlock3D(d0, time_dim, d0)
        self.conv1 = _TimeBlock3D(d0, time_dim, d1, stride=2)
        self.conv2_0 = _TimeBlock3D(d1, time_dim, d1)
        self.conv2_1 = _TimeBlock3D(d1, time_dim, d1)
        self.conv3 = _TimeBlock3D(d1, time_dim, d2, stride=2)
        self.conv4_0 = _TimeBlock3D(d2, time_dim, d2)
        self.conv4_1 = _TimeBlock3D(d2, time_dim, d2)
        self.conv5 = _TimeBlock3D(d2, time_dim, d3, stride=2)
        self.conv6_0 = _TimeBlock3D(d3, time_dim, d3)
        self.conv6_1 = _TimeBlock3D(d3, time_dim, d3)
        self.conv7 = _TimeBlock3D(d3, time_dim, d2, up=True, norm_name="norm")
        self.conv8 = _TimeBlock3D(d2, time_dim, d1, up=True, norm_name="norm")
        self.conv9 = _TimeBlock3D(d1, time_dim, d0, up=True, norm_name="norm")

    def forward(self, x, t):
        t = t[..., None, None, None]
        conv0 = self.conv0(self.init_conv(x), t)
        conv2 = self.conv2_1(self.conv2_0(self.conv1(conv0, t), t), t)
        conv4 = self.conv4_1(self.conv4_0(self.conv3(conv2, t), t), t)
        x = self.conv6_1(self.conv6_0(self.conv5(conv4, t), t), t)
        x = conv4 + self.conv7(x, t)
        x = conv2 + self.conv8(x, t)
        return conv0 + self.conv9(x, t)


class FrustumTV3DNet(nn.Module):
    """Time- and view-conditioned 3D U-Net on a frustum volume ``[B, in_dim, D, H, W]``; returns ``{W: [B, d0, D,
    H, W], W/2: [B, d1, ...], W/4: ..., W/8: ...}``."""

    def __init__(self, in_dim: int, t_dim: int, v_dim: int, dims=(32, 64, 128, 256)):
        super().__init__()
        self.conv0 = nn.Conv3d(in_dim, dims[0], 3, 1, 1)
        self.conv1 = _TimeBlock3D(dims[0], t_dim, dims[1], 2, v_dim)
        self.conv2 = _TimeBlock3D(dims[1], t_dim, dims[1], 1, v_dim)
        self.conv3 = _TimeBlock3D(dims[1], t_dim, dims[2], 2, v_dim)
        self.conv4 = _TimeBlock3D(dims[2], t_dim, dims[2], 1, v_dim)
        self.conv5 = _TimeBlock3D(dims[2], t_dim, dims[3], 2, v_dim)
        self.conv6 = _TimeBlock3D(dims[3], t_dim, dims[3], 1, v_dim)
        self.up0 = _TimeBlock3D(dims[3], t_dim, dims[2], v_dim=v_dim, up=True, norm_name="norm")
        self.up1 = _TimeBlock3D(dims[2], t_dim, dims[1], v_dim=v_dim, up=True, norm_name="norm")
        self.up2 = _TimeBlock3D(dims[1], t_dim, dims[0], v_dim=v_dim, up=True, norm_name="norm")

    def forward(self, x, t, v) -> dict[int, torch.Tensor]:
        t, v = t[..., None, None, None], v[..., None, None, None]
        w = x.shape[-1]
        x0 = self.conv0(x)
        x1 = self.conv2(self.conv1(x0, t, v), t, v)
        x2 = self.conv4(self.conv3(x1, t, v), t, v)
        x3 = self.conv6(self.conv5(x2, t, v), t, v)
        x2 = self.up0(x3, t, v) + x2
        x1 = self.up1(x2, t, v) + x1
        x0 = self.up2(x1, t, v) + x0
        return {w: x0, w // 2: x1, w // 4: x2, w // 8: x3}


def projection_matrices(Ks: torch.Tensor, poses: torch.Tensor, scale: float) -> torch.Tensor:
    """``[N, 4, 4]``: ``diag(scale, scale, 1) K [R | t]`` padded with ``[0 0 0 1]``; ``Ks [N,3,3]``, ``poses [N,3,4]``."""
    P = torch.diag(torch.tensor([scale, scale, 1.0], dtype=Ks.dtype, device=Ks.device)) @ Ks @ poses
    pad = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=P.dtype, device=P.device).expand(len(P), 1, 4)
    return torch.cat([P, pad], 1)


def volume_vertices(size: int, half_length: float, device=None) -> torch.Tensor:
    """``[3, V, V, V]``: the point ``(a_w, a_h, a_d)`` at index ``[:, d, h, w]``, ``a = linspace(-l, l, V)``."""
    a = torch.linspace(-half_length, half_length, size, device=device)
    d, h, w = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([w, h, d])


def project_to_grid(points: torch.Tensor, P: torch.Tensor, size: int) -> torch.Tensor:
    """World ``points [N, 3, M]`` through ``P [N, 4, 4]`` -> grid_sample coordinates ``[N, M, 2]`` of a
    ``size``-pixel image (align_corners=True; depth clamped to >= 1e-4)."""
    cam = P[:, :3, :3] @ points + P[:, :3, 3:]
    uv = cam[:, :2] / cam[:, 2:].clamp_min(1e-4)
    return (uv / ((size - 1) / 2) - 1).transpose(1, 2)


def unproject(features: torch.Tensor, Ks: torch.Tensor, poses: torch.Tensor, volume_size: int,
              half_length: float, image_size: int) -> torch.Tensor:
    """Per-view feature maps ``[B, N, C, h, w]`` sampled at the volume vertices -> ``[B, N * C, V, V, V]``
    (view-major channels; zero where a vertex projects outside a view)."""
    B, N, C, h, w = features.shape
    V = volume_size
    verts = volume_vertices(V, half_length, features.device).reshape(1, 3, V ** 3).expand(N, -1, -1)
    grid = project_to_grid(verts, projection_matrices(Ks, poses, w / image_size), w)  # [N, V^3, 2]
    grid = grid.reshape(1, N, V, V * V, 2).expand(B, -1, -1, -1, -1).reshape(B * N, V, V * V, 2)
    out = F.grid_sample(features.reshape(B * N, C, h, w), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.reshape(B, N * C, V, V, V)


def frustum_points(Ks: torch.Tensor, poses: torch.Tensor, size: int, depths: int, near: float, far: float,
                   image_size: int) -> torch.Tensor:
    """``[N, 3, D, size, size]`` world points at ``depths`` evenly spaced depths in [near, far] (camera z) behind
    every pixel ``(u, v)`` (integers 0..size-1) of each view's ``size``-pixel image."""
    N = len(Ks)
    z = torch.linspace(0, 1, depths, device=Ks.device, dtype=Ks.dtype) * (far - near) + near  # [D]
    v, u = torch.meshgrid(torch.arange(size, dtype=Ks.dtype, device=Ks.device),
                          torch.arange(size, dtype=Ks.dtype, device=Ks.device), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)]).reshape(1, 3, 1, size * size) * z.reshape(1, 1, depths, 1)
    inv = torch.inverse(projection_matrices(Ks, poses, size / image_size))  # [N, 4, 4]
    pts = inv[:, :3, :3] @ pix.expand(N, -1, -1, -1).reshape(N, 3, -1) + inv[:, :3, 3:]
    return pts.reshape(N, 3, depths, size, size)


def sample_volume(volume: torch.Tensor, points: torch.Tensor, half_length: float) -> torch.Tensor:
    """Trilinear read of ``volume [B, C, V, V, V]`` (vertices at [-l, l]^3, see :func:`volume_vertices`) at
    ``points [B, 3, D, H, W]`` -> ``[B, C, D, H, W]``, zeros outside."""
    grid = (points / half_length).permute(0, 2, 3, 4, 1)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class SpatialVolumeNet(nn.Module):
    """The volume part of SyncDreamer (``spatial_volume.*``): see the module docstring."""

    def __init__(self, time_dim: int = 256, view_dim: int = 4, view_num: int = 16, input_image_size: int = 256,
                 frustum_volume_depth: int = 48, spatial_volume_size: int = 32, spatial_volume_length: float = 0.5,
                 frustum_volume_length: float = 0.86603, dims=(64, 128, 256, 512), encoder_dim: int = 16):
        super().__init__()
        self.target_encoder = NoisyTargetViewEncoder(time_dim, view_dim, output_dim=encoder_dim)
        self.spatial_volume_feats = SpatialTime3DNet(time_dim, encoder_dim * view_num, dims)
        self.frustum_volume_feats = FrustumTV3DNet(dims[0], time_dim, view_dim, dims)
        self.input_image_size = input_image_size
        self.volume_size = spatial_volume_size
        self.half_length = spatial_volume_length
        self.depths = frustum_volume_depth
        self.depth_range = (1.5 - frustum_volume_length, 1.5 + frustum_volume_length)

    def spatial(self, x: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor, poses: torch.Tensor,
                Ks: torch.Tensor) -> torch.Tensor:
        """``x [B, N, 4, h, w]`` noisy latents of all views, ``t_embed [B, T]``, ``v_embed [B, N, 4]`` ->
        the spatial volume ``[B, dims[0], V, V, V]``."""
        B, N = x.shape[:2]
        feats = self.target_encoder(x.flatten(0, 1), t_embed.repeat_interleave(N, 0), v_embed.flatten(0, 1))
        volume = unproject(feats.reshape(B, N, *feats.shape[1:]), Ks, poses, self.volume_size, self.half_length,
                           self.input_image_size)
        return self.spatial_volume_feats(volume, t_embed)

    def frustum(self, volume: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor, poses: torch.Tensor,
                Ks: torch.Tensor, views: torch.Tensor, size: int) -> dict[int, torch.Tensor]:
        """Frustum features of the target ``views [TN]`` (indices) for every sample: ``{width: [B * TN, C, D, w,
        w]}`` (sample-major), from ``volume [B, C, V, V, V]``, ``v_embed [B, N, 4]``; ``size`` = latent width."""
        B, TN = volume.shape[0], len(views)
        pts = frustum_points(Ks[views], poses[views], size, self.depths, *self.depth_range, self.input_image_size)
        pts = pts.expand(B, -1, -1, -1, -1, -1).flatten(0, 1)
        vol = volume.repeat_interleave(TN, 0)
        feats = sample_volume(vol, pts, self.half_length)
        return self.frustum_volume_feats(feats, t_embed.repeat_interleave(TN, 0), v_embed[:, views].flatten(0, 1))
