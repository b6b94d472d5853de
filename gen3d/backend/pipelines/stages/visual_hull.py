"""The views' visual hull on a voxel grid (silhouette carving): the region inside every mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...geometry.cameras import Cameras, sample_pixels


@dataclass
class VoxelGrid:
    """Occupancy ``occupied [R,R,R]`` of voxels centred at ``lo + voxel * (i, j, k)``."""

    occupied: torch.Tensor
    lo: torch.Tensor
    voxel: float

    def centers(self) -> torch.Tensor:
        """Centres ``[R^3,3]`` of all voxels, in ``occupied.reshape(-1)`` order."""
        axes = [self.lo[i] + self.voxel * torch.arange(n, dtype=torch.float32)
                for i, n in enumerate(self.occupied.shape)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """``[...]`` bool: whether world ``points [...,3]`` fall in an occupied voxel."""
        dims = torch.tensor(self.occupied.shape, device=points.device)
        ijk = torch.round((points - self.lo.to(points)) / self.voxel).long()
        inside = ((ijk >= 0) & (ijk < dims)).all(-1)
        return inside & self.occupied.to(points.device)[tuple(ijk.clamp_min(0).minimum(dims - 1).unbind(-1))]

    def surface(self) -> torch.Tensor:
        """``[R,R,R]``: occupied voxels with an empty 6-neighbour."""
        padded = F.pad(self.occupied[None, None].float(), (1, 1, 1, 1, 1, 1))
        interior = -F.max_pool3d(-padded, 3, 1, 0)[0, 0] > 0.5
        return self.occupied & ~interior


def scene_box(cameras: Cameras) -> tuple[torch.Tensor, float]:
    """Centre and half-size of a cube that the views can all see: the point nearest to every optical axis, and
    a half-size from the narrowest field of view at the nearest camera."""
    o, d = cameras.centers, cameras.c2w[:, :3, 2]
    A = torch.eye(3) * len(o) - torch.einsum("ni,nj->ij", d, d)
    b = (o - (o * d).sum(-1, keepdim=True) * d).sum(0)
    center = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    dist = (o - center).norm(dim=-1)
    half_fov = torch.atan(0.5 * min(cameras.width, cameras.height) / cameras.K[:, 0, 0].clamp_min(1e-6))
    return center, float((dist * torch.tan(half_fov)).min())


def visual_hull(cameras: Cameras, masks: torch.Tensor, resolution: int = 64) -> VoxelGrid:
    """Voxels of the scene box whose centres fall inside every mask ``masks [N,H,W]`` (in [0,1]).

    The object is assumed to be inside every view (object-centric captures): a point outside a view's image is
    carved like a point outside its mask."""
    center, half = scene_box(cameras)
    voxel = 2 * half / resolution
    grid = VoxelGrid(torch.zeros((resolution,) * 3, dtype=torch.bool), center - half + voxel / 2, voxel)
    pts = grid.centers()
    keep = torch.ones(len(pts), dtype=torch.bool)
    for i in range(len(cameras)):
        uv, z = cameras[i].project(pts)
        m = sample_pixels(masks[i][None, ..., None], uv)[0, :, 0]
        uv, z = uv[0], z[0]
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cameras.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cameras.height)
        keep &= inside & (m > 0.5)
    grid.occupied = keep.reshape((resolution,) * 3)
    return grid
