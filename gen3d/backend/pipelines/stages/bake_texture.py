"""Stage 4: bake a base-colour texture from posed views into a mesh's UV space.

1. Rasterize the mesh in UV space (``gen3d.kernels.mesh``) to get each texel's 3D position and normal.
2. For every view: project the texels, keep those the view sees (texel depth vs the mesh's depth map rendered
   from that view) and that the view's mask covers, and accumulate the view's colour weighted by
   ``cos(normal, direction to the camera) ** sharpness`` (squarer views count more; every view contributes, not
   first-view-wins).
3. Fill texels no view saw, and the gutter around UV islands, by pull-push diffusion from their neighbours (a
   multi-scale average), so there are no black holes and mip-mapping shows no seams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import gen3d.kernels.mesh as km

from ...geometry.cameras import Cameras, sample_pixels
from ...representations.mesh import TexturedMesh
from .mesh_render import render_mesh

log = logging.getLogger(__name__)


@dataclass
class BakeConfig:
    resolution: int = 1024
    sharpness: float = 4.0        #: exponent on the view cosine
    min_cosine: float = 0.1       #: views more grazing than this are ignored
    depth_tolerance: float = 0.01  #: x mesh bounding-box diagonal, for the visibility test
    edge_power: float = 4.0       #: views are weighted by their sampled coverage (alpha) to this power
    views_per_batch: int = 4


@dataclass
class TexelSurface:
    """The surface point behind each texel: ``position``/``normal [R,R,3]`` and ``valid [R,R]`` (covered)."""

    position: torch.Tensor
    normal: torch.Tensor
    valid: torch.Tensor


def uv_space_surface(mesh: TexturedMesh, resolution: int) -> TexelSurface:
    """Rasterize ``mesh`` (with ``uvs`` and ``normals``) in UV space: texel row 0 is ``v = 1``."""
    uv = mesh.uvs
    pos = torch.stack([2 * uv[:, 0] - 1, 1 - 2 * uv[:, 1], torch.zeros_like(uv[:, 0]), torch.ones_like(uv[:, 0])], -1)
    tri = mesh.faces.to(torch.int32)
    rast, _ = km.rasterize(pos[None].contiguous(), tri, (resolution, resolution))
    normals = mesh.normals if mesh.normals is not None else mesh.with_vertex_normals().normals
    attrs, _ = km.interpolate(torch.cat([mesh.vertices, normals], -1)[None], rast, tri)
    return TexelSurface(attrs[0, ..., :3], F.normalize(attrs[0, ..., 3:], dim=-1), rast[0, ..., 3] > 0)


def project_views(mesh: TexturedMesh, surface: TexelSurface, cameras: Cameras, images: torch.Tensor,
                  cfg: BakeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of the views' colours at each covered texel: ``(colour [R,R,3], weight [R,R])``."""
    R = surface.valid.shape[0]
    p, n = surface.position[surface.valid], surface.normal[surface.valid]
    diag = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).norm())
    tol = cfg.depth_tolerance * diag
    acc = torch.zeros(len(p), 3, device=p.device)
    wsum = torch.zeros(len(p), device=p.device)
    for s in range(0, len(cameras), cfg.views_per_batch):
        cams = cameras[s:s + cfg.views_per_batch]
        with torch.no_grad():
            depth = render_mesh(mesh, cams, antialias=False).depth                   # [B,H,W]
        uv, z = cams.project(p)                                                        # [B,P,2], [B,P]
        d_map = sample_pixels(depth.clamp_max(1e6)[..., None], uv, "nearest")[..., 0]
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < cams.width) & (uv[..., 1] >= 0) & (uv[..., 1] < cams.height)
        visible = inside & (z > 0) & (z <= d_map + tol)
        to_cam = F.normalize(cams.centers[:, None, :] - p[None], dim=-1)
        cos = (to_cam * n[None]).sum(-1)
        # premultiplied sampling: a texel near the mask edge must not average in the (black) colour of empty pixels
        img = images[s:s + cfg.views_per_batch]
        alpha = img[..., 3:].clamp(0, 1)
        rgba = sample_pixels(torch.cat([img[..., :3] * alpha, alpha], -1), uv)
        w = torch.where(visible & (cos > cfg.min_cosine), cos.clamp_min(0) ** cfg.sharpness, torch.zeros_like(cos))
        # colour = premultiplied / alpha, weighted by alpha ** edge_power: partly covered pixels count less
        a = rgba[..., 3]
        w = w * a.clamp_min(1e-8) ** (cfg.edge_power - 1)
        acc += (w[..., None] * rgba[..., :3]).sum(0)
        wsum += (w * a).sum(0)
    color = torch.zeros(R, R, 3, device=p.device)
    weight = torch.zeros(R, R, device=p.device)
    color[surface.valid] = acc / wsum.clamp_min(1e-8)[:, None]
    weight[surface.valid] = wsum
    return color, weight


def pull_push_fill(color: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill texels where ``known [R,R]`` is False from their neighbours, multi-scale (pull: average known texels
    into coarser levels; push: fill each level's unknown texels from the next coarser one). ``color [R,R,C]``."""
    c = color.permute(2, 0, 1)[None] * known[None, None]
    w = known[None, None].float()
    levels = [(c, w)]
    while min(c.shape[-2:]) > 1:
        c, w = F.avg_pool2d(c, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
        levels.append((c, w))
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-8)
    for c, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=c.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(w > 0, c / w.clamp_min(1e-8), up)
    return filled[0].permute(1, 2, 0)


def bake_texture(mesh: TexturedMesh, cameras: Cameras, images: torch.Tensor, cfg: BakeConfig = BakeConfig(),
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, dict]:
    """Texture ``[R,R,3]`` in [0,1] (on the CPU) for ``mesh`` (needs ``uvs``) from ``images [N,H,W,4]`` (straight
    RGBA) seen by ``cameras``, computed on ``device``; metrics: the share of covered texels that some view saw."""
    mesh = mesh.to(device)
    if mesh.normals is None:
        mesh = mesh.with_vertex_normals()
    surface = uv_space_surface(mesh, cfg.resolution)
    color, weight = project_views(mesh, surface, cameras.to(device), images.to(device), cfg)
    seen = weight > 1e-6
    texture = pull_push_fill(color, seen).clamp(0, 1)
    coverage = float(seen.sum()) / max(int(surface.valid.sum()), 1)
    log.info("bake: %d x %d, %.1f %% of the surface seen by some view", cfg.resolution, cfg.resolution,
             100 * coverage)
    return texture.cpu(), {"bake_coverage": round(coverage, 4)}


def orbit_bake_cameras(radius: float, fovy: float, size: int, elevations=(0.0, 45.0, -45.0), azimuths: int = 8):
    """Rings of ``azimuths`` views at each of ``elevations`` plus straight above and below (DreamGaussian's 26:
    elevations 0 and ±45, 8 azimuths 45° apart), looking at the origin."""
    from ...geometry.cameras import orbit_cameras

    ring = torch.arange(azimuths) * 360.0 / azimuths
    el = torch.tensor([e for e in elevations for _ in range(azimuths)] + [89.9, -89.9])
    az = torch.cat([ring] * len(elevations) + [torch.zeros(2)])
    return orbit_cameras(el, az, radius, fovy, size, size)


def bake_from_gaussians(gaussians, mesh: TexturedMesh, cameras: Cameras, texture_size: int, ctx, chunk: int = 4):
    """:func:`bake_texture` fed with straight-RGBA renders of ``gaussians`` from ``cameras`` (e.g.
    :func:`orbit_bake_cameras`); reports progress as stage ``bake``. Returns ``(mesh with texture, metrics)``."""
    from dataclasses import replace

    from .fit_gaussians import render_gaussians

    views = []
    with torch.no_grad():
        for s in range(0, len(cameras), chunk):
            sub = cameras[s:s + chunk].to(ctx.device)
            rgb, alpha, _ = render_gaussians(gaussians, sub, torch.zeros(len(sub), 3, device=ctx.device))
            straight = torch.where(alpha > 1e-4, rgb / alpha.clamp_min(1e-4), torch.zeros_like(rgb)).clamp(0, 1)
            views.append(torch.cat([straight, alpha], -1).cpu())
            ctx.progress("bake", min(s + chunk, len(cameras)), len(cameras))
    texture, metrics = bake_texture(mesh, cameras, torch.cat(views), BakeConfig(resolution=texture_size), ctx.device)
    return replace(mesh, texture=texture), metrics
