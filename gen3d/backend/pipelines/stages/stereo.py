"""Depth of the input views by plane-sweep stereo inside the visual hull: where the Gaussians start.

The visual hull cannot see into an opening: a dome's hull has a cap across its rim, a shell with windows is a
solid, and Gaussians started on the hull's surface keep the cap painted with the inside colours. Stereo looks
through it: for each view and each of ``planes`` depths, the neighbouring views' colours at the back-projected
point are compared with the view's own (sum of squared RGB differences over a ``window x window`` patch, the
mean of the ``best`` of ``neighbours`` views, so an occluded neighbour does not count), and each pixel takes the
best depth inside the hull. A cap shows its views different parts of the inside, so no depth on it matches; the
inner surface matches. A thin sheet is matched from each side by the views on that side (the neighbours are the
views looking the most alike). A depth is kept when at least ``min_agree`` neighbours' depth maps put the point
within ``agree_voxels`` of their own depth (geometric consistency, as in multi-view stereo pipelines).

:func:`in_free_space` tells which hull points lie in front of kept depths in several views: the cap across an
opening, and concavities the silhouettes could not carve. :class:`StereoDepth` keeps the kept depth for the fit,
which prunes Gaussians in its free space and can pull its rendered depth towards it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...geometry.cameras import Cameras
from .visual_hull import VoxelGrid


@dataclass
class StereoConfig:
    planes: int = 96            #: depth hypotheses per view, spread over the hull's depth range
    neighbours: int = 4         #: views compared with each view (the most alike viewing directions)
    best: int = 2               #: matching cost: mean of the best ones
    window: int = 5             #: pixels: matching patch
    agree_voxels: float = 1.5   #: geometric consistency tolerance
    min_agree: int = 2          #: neighbours that must agree for a depth to be kept
    pixels_per_voxel: float = 2.0  #: the views are resized so a hull voxel spans about this many pixels
    min_points: int = 3         #: initialisation: stereo points a hull voxel needs to count as surface
    min_neighbours: int = 5     #: ... and surface voxels among its 26 neighbours (isolated ones are mismatches)
    free_views: int = 2         #: views whose stereo depth must put a hull point in free space to drop it


def _neighbours(cameras: Cameras, count: int) -> torch.Tensor:
    """``[N,k]``: for each view, the ``k = min(count, N - 1)`` other views with the most alike viewing direction."""
    forward = cameras.c2w[:, :3, 2]
    alike = forward @ forward.T - 3 * torch.eye(len(cameras))
    return torch.argsort(alike, dim=1, descending=True)[:, :min(count, len(cameras) - 1)]


def _camera_rays(cameras: Cameras) -> torch.Tensor:
    """``[N,H,W,3]`` world-space ray directions scaled to unit camera depth."""
    _, dirs = cameras.pixel_rays()
    return dirs / (dirs * cameras.c2w[:, None, None, :3, 2]).sum(-1, keepdim=True)


def plane_sweep(cameras: Cameras, images: torch.Tensor, hull: VoxelGrid, cfg: StereoConfig,
                chunk: int = 16) -> torch.Tensor:
    """Camera depth ``[N,H,W]`` of the best-matching point inside ``hull`` per mask pixel of ``images [N,H,W,4]``
    (+inf where the mask is empty or no depth is inside the hull)."""
    N, H, W = len(cameras), cameras.height, cameras.width
    colors = images[..., :3].permute(0, 3, 1, 2)
    nb = _neighbours(cameras, cfg.neighbours)
    rays = _camera_rays(cameras)
    w2c = cameras.viewmats()
    occupied = hull.centers()[hull.occupied.reshape(-1)]
    depth = torch.full((N, H, W), math.inf)
    for i in range(N):
        z = occupied @ w2c[i, 2, :3] + w2c[i, 2, 3]
        planes = torch.linspace(float(z.min()) - hull.voxel, float(z.max()) + hull.voxel, cfg.planes)
        others = cameras[nb[i]]
        best_cost = torch.full((H, W), math.inf)
        for s in range(0, cfg.planes, chunk):
            d = planes[s:s + chunk]
            X = cameras.centers[i] + rays[i] * d[:, None, None, None]                   # [D,H,W,3]
            uv, _ = others.project(X.reshape(-1, 3))                                   # [K,DHW,2]
            grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1).reshape(-1, len(d) * H, W, 2)
            seen = F.grid_sample(colors[nb[i]], grid, align_corners=False, padding_mode="border")   # [K,3,DH,W]
            seen = seen.reshape(len(nb[i]), 3, len(d), H, W).permute(0, 2, 1, 3, 4)
            err = ((seen - colors[i]) ** 2).sum(2).reshape(-1, 1, H, W)
            err = F.avg_pool2d(err, cfg.window, 1, cfg.window // 2).reshape(len(nb[i]), len(d), H, W)
            cost = err.sort(0).values[:cfg.best].mean(0)                               # [D,H,W]
            cost = torch.where(hull.contains(X), cost, math.inf)
            value, at = cost.min(0)
            better = value < best_cost
            best_cost = torch.where(better, value, best_cost)
            depth[i] = torch.where(better, d[at], depth[i])
    return torch.where(images[..., 3] > 0.5, depth, math.inf)


def consistent_depth(cameras: Cameras, depth: torch.Tensor, voxel: float, cfg: StereoConfig) -> torch.Tensor:
    """``depth [N,H,W]`` with +inf where fewer than ``min_agree`` neighbours' depths agree (module docstring;
    with too few views nothing is kept)."""
    N, H, W = depth.shape
    nb = _neighbours(cameras, cfg.neighbours)
    points = cameras.centers[:, None, None] + _camera_rays(cameras) * depth.clamp_max(1e6)[..., None]
    kept = depth.clone()
    for i in range(N):
        uv, z = cameras[nb[i]].project(points[i].reshape(-1, 3))                       # [K,HW,2], [K,HW]
        grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1)[:, None]
        theirs = F.grid_sample(depth[nb[i], None].clamp_max(1e6), grid, mode="nearest", align_corners=False)
        agree = ((theirs[:, 0, 0] - z).abs() < cfg.agree_voxels * voxel).sum(0).reshape(H, W)
        kept[i] = torch.where(agree >= cfg.min_agree, depth[i], math.inf)
    return kept


def stereo_points(cameras: Cameras, images: torch.Tensor, hull: VoxelGrid,
                  cfg: StereoConfig) -> tuple[torch.Tensor, torch.Tensor, Cameras, torch.Tensor]:
    """Stereo on ``images [N,H,W,4]`` resized to ``cfg.pixels_per_voxel``: the kept points ``[P,3]``, their colours
    ``[P,3]``, and the resized cameras with their kept depth ``[N,h,w]`` (+inf where none)."""
    from .views import resized_views

    span = float(cameras.K[:, 0, 0].mean()) * hull.voxel / float(
        (cameras.centers - hull.centers()[hull.occupied.reshape(-1)].mean(0)).norm(dim=-1).mean())
    frac = min(1.0, cfg.pixels_per_voxel / max(span, 1e-6))
    cams, imgs = resized_views(cameras, images, frac)
    depth = consistent_depth(cams, plane_sweep(cams, imgs, hull, cfg), hull.voxel, cfg)
    ok = torch.isfinite(depth)
    points = (cams.centers[:, None, None] + _camera_rays(cams) * depth.clamp_max(1e6)[..., None])[ok]
    return points, imgs[..., :3][ok], cams, depth


def surface_cells(points: torch.Tensor, colors: torch.Tensor, hull: VoxelGrid,
                  cfg: StereoConfig) -> tuple[torch.Tensor, torch.Tensor, VoxelGrid]:
    """Stereo ``points [P,3]`` and ``colors [P,3]`` merged per voxel of ``hull``'s grid (their means), keeping the
    voxels with ``min_points`` points and ``min_neighbours`` such voxels around them (an isolated voxel is a
    mismatch); returns the means, their colours and the kept voxels."""
    cells, inv = torch.unique(torch.round((points - hull.lo) / hull.voxel).long(), dim=0, return_inverse=True)
    count = torch.zeros(len(cells)).index_add_(0, inv, torch.ones(len(inv)))
    means = torch.zeros(len(cells), 3).index_add_(0, inv, points) / count[:, None]
    colors = torch.zeros(len(cells), 3).index_add_(0, inv, colors) / count[:, None]
    taken = torch.zeros(hull.occupied.shape, dtype=torch.bool)
    taken[tuple(cells.T)] = True
    around = F.avg_pool3d(taken[None, None].float(), 3, 1, 1)[0, 0] * 27 - 1
    keep = (count >= cfg.min_points) & (around[tuple(cells.T)] >= cfg.min_neighbours - 0.5)
    kept = torch.zeros_like(taken)
    kept[tuple(cells[keep].T)] = True
    return means[keep], colors[keep], VoxelGrid(kept, hull.lo, hull.voxel)


@dataclass
class StereoDepth:
    """The kept stereo depth ``depth [N,h,w]`` (+inf where none) of the views as ``cameras`` (resized) see them."""

    cameras: Cameras
    depth: torch.Tensor
    margin: float      #: world units a point must lie in front of a depth to be in free space
    free_views: int

    def free_space(self, points: torch.Tensor) -> torch.Tensor:
        """``[P]``: which ``points [P,3]`` :func:`in_free_space` puts in free space (on their device)."""
        return in_free_space(points.cpu(), self.cameras, self.depth, self.margin, self.free_views).to(points.device)

    def at(self, height: int, width: int) -> torch.Tensor:
        """The depth resized (nearest) to ``height x width``: ``[N,height,width]``, +inf where none."""
        d = self.depth.clamp_max(1e6)[:, None]
        d = F.interpolate(d, size=(height, width), mode="nearest")[:, 0]
        return torch.where(d < 1e6, d, math.inf)


def in_free_space(points: torch.Tensor, cameras: Cameras, depth: torch.Tensor, margin: float,
                  min_views: int = 2) -> torch.Tensor:
    """``[P]``: points that at least ``min_views`` views see more than ``margin`` in front of their kept
    ``depth [N,H,W]``."""
    uv, z = cameras.project(points)
    grid = torch.stack([uv[..., 0] / cameras.width * 2 - 1, uv[..., 1] / cameras.height * 2 - 1], -1)[:, None]
    theirs = F.grid_sample(depth[:, None].clamp_max(1e6), grid, mode="nearest", align_corners=False)[:, 0, 0]
    return ((z < theirs - margin) & (theirs < 1e6)).sum(0) >= min_views
