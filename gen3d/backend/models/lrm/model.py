"""The LRM network: image -> triplane, for OpenLRM and TripoSR alike (one module family, configured by LRMConfig).

``LRM.forward_planes(images, cameras)`` gives ``planes [B, 3, C, 2r, 2r]``; ``LRM.field(planes[i])`` wraps one object's
planes with the NeRF MLP as a :class:`~backend.representations.triplane.TriplaneField` for rendering and meshing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...representations.triplane import RenderSettings, TriplaneField
from .config import LRMConfig
from .encoder import ImageEncoder
from .transformer import TriplaneTransformer


class NeRFMLP(nn.Module):
    """Plane features ``[N, 3C]`` -> raw density ``[N]`` and colour ``[N, 3]`` in [0, 1].

    ``net`` is ``Linear, act, (Linear, act) * (mlp_linears - 2), Linear(-> 4)``; output channel 0 is density.
    """

    def __init__(self, cfg: LRMConfig):
        super().__init__()
        act = {"relu": nn.ReLU, "silu": nn.SiLU}[cfg.mlp_activation]
        layers: list[nn.Module] = [nn.Linear(3 * cfg.triplane_dim, cfg.mlp_hidden), act()]
        for _ in range(cfg.mlp_linears - 2):
            layers += [nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), act()]
        layers.append(nn.Linear(cfg.mlp_hidden, 4))
        self.net = nn.Sequential(*layers)
        self.colour_activation = cfg.colour_activation

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(feats)
        rgb = torch.sigmoid(out[:, 1:].float())
        if self.colour_activation == "sigmoid_mip":
            rgb = rgb * (1 + 2 * 0.001) - 0.001
        return out[:, 0], rgb


def density_activation(cfg: LRMConfig):
    """Raw density -> density: ``softplus(x + bias)`` (OpenLRM) or ``exp(x + bias)`` (TripoSR), bias -1."""
    bias = cfg.density_bias
    if cfg.density_activation == "softplus":
        return lambda x: F.softplus(x.float() + bias)
    if cfg.density_activation == "exp":
        return lambda x: torch.exp(x.float() + bias)
    raise ValueError(f"unknown density activation {cfg.density_activation!r}")


def yaw_matrix(deg: float) -> torch.Tensor:
    """Rotation about +Z by ``deg`` degrees, ``[3, 3]``."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return torch.where(m.abs() < 1e-12, torch.zeros_like(m), m)


class LRM(nn.Module):
    """Encoder, optional camera embedder, triplane transformer, 2x ConvTranspose upsampler and NeRF MLP."""

    def __init__(self, cfg: LRMConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg)
        self.camera_embedder = nn.Sequential(nn.Linear(cfg.camera_raw_dim, cfg.camera_embed_dim), nn.SiLU(),
                                             nn.Linear(cfg.camera_embed_dim, cfg.camera_embed_dim)
                                             ) if cfg.camera_embed_dim else None
        self.transformer = TriplaneTransformer(cfg)
        self.upsampler = nn.ConvTranspose2d(cfg.dim, cfg.triplane_dim, kernel_size=2, stride=2)
        self.nerf = NeRFMLP(cfg)

    def source_camera(self, batch: int, device=None) -> torch.Tensor | None:
        """OpenLRM's canonical source camera ``[B, 16]``: the OpenGL camera-to-world 3x4 of a camera on -Y at
        ``source_camera_distance`` looking at the origin (Z up), flattened, then normalised ``fx, fy, cx, cy``.
        ``None`` for models without camera conditioning."""
        if self.camera_embedder is None:
            return None
        dist, f = self.cfg.source_camera_distance, self.cfg.source_focal
        rt = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -dist], [0, 1, 0, 0]])
        cam = torch.cat([rt.reshape(12), torch.tensor([f, f, 0.5, 0.5])])
        return cam.expand(batch, -1).to(device)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """``images [B, 3, S, S]`` float in [0, 1] (preprocessed, S = cfg.image_size), ``cameras [B, 16]`` (OpenLRM;
        default: :meth:`source_camera`) -> ``planes [B, 3, triplane_dim, 2r, 2r]``."""
        mod = None
        if self.camera_embedder is not None:
            cams = self.source_camera(len(images), images.device) if cameras is None else cameras
            mod = self.camera_embedder(cams.to(images.dtype))
        if self.cfg.camera_modulates == "encoder":
            return self.upsample(self.transformer(self.encoder(images, mod)))
        return self.upsample(self.transformer(self.encoder(images), mod))

    def upsample(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 3*r*r, D]`` -> planes ``[B, 3, C, 2r, 2r]``."""
        B, r = tokens.shape[0], self.cfg.triplane_low_res
        x = tokens.reshape(B, 3, r, r, -1).permute(0, 1, 4, 2, 3).reshape(B * 3, -1, r, r)
        x = self.upsampler(x)
        return x.reshape(B, 3, *x.shape[1:])

    def field(self, planes: torch.Tensor) -> TriplaneField:
        """One object's ``planes [3, C, H, W]`` as a density/colour field in Blender's world frame."""
        yaw = self.cfg.model_yaw_deg
        return TriplaneField(planes=planes, decoder=self.nerf, density_activation=density_activation(self.cfg),
                             plane_axes=self.cfg.plane_axes, radius=self.cfg.radius,
                             model_from_world=yaw_matrix(-yaw).to(planes.device) if yaw else None,
                             chunk=1 << 21 if planes.is_cuda else 1 << 18)

    def render_settings(self, jitter: bool = True, ray_chunk: int = 4096) -> RenderSettings:
        c = self.cfg
        return RenderSettings(n_coarse=c.samples_per_ray - c.importance_samples, n_importance=c.importance_samples,
                              delta_units=c.delta_units, midpoint=c.midpoint_composite, jitter=jitter,
                              ray_chunk=ray_chunk)
