"""Differentiable canonical coordinate maps (:mod:`backend.geometry.ccm`) of Gaussians and meshes.

Both return the colour ``(c + 1) / 2`` of the canonical coordinates ``c`` of what each pixel sees, with its
coverage; the mesh is rasterised at pixel centres without anti-aliasing, exactly like the bpy pass.
"""

from __future__ import annotations

import torch

import gen3d.kernels.mesh as km

from ...geometry.cameras import Cameras
from ...geometry.ccm import canonical_coordinates


def gaussian_ccm(g, cameras: Cameras, centre: torch.Tensor, half_extent: torch.Tensor):
    """Gaussians ``g`` coloured by their centres' ``(c + 1) / 2`` (clamped to [0, 1]) and splatted over black:
    ``(premultiplied [C,H,W,3], alpha [C,H,W,1])``, differentiable in every Gaussian parameter."""
    from gen3d.kernels.gaussians import rasterization

    colors = ((canonical_coordinates(g.means, centre, half_extent) + 1) / 2).clamp(0, 1)
    black = torch.zeros(len(cameras), 3, device=g.device)
    rgb, alpha, _ = rasterization(g.means, g.quats, g.scales, g.opacities, colors, cameras.viewmats().to(g.device),
                                  cameras.K.to(g.device), cameras.width, cameras.height, sh_degree=None,
                                  backgrounds=black)
    return rgb, alpha


def mesh_ccm(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, centre, half_extent):
    """A mesh's CCM at pixel centres: ``(rgb [C,H,W,3] straight in [0,1], covered [C,H,W,1] in {0, 1})``, RGB 0
    where uncovered (the bpy pass's layout)."""
    from .mesh_render import clip_positions

    tri = faces.to(torch.int32)
    rast, _ = km.rasterize(clip_positions(vertices, cameras), tri, (cameras.height, cameras.width))
    color = (canonical_coordinates(vertices, centre, half_extent) + 1) / 2
    rgb, _ = km.interpolate(color[None].contiguous(), rast, tri)
    covered = (rast[..., 3:] > 0).to(rgb.dtype)
    return rgb.clamp(0, 1) * covered, covered
