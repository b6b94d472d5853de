"""Two-sided flat Gaussians (surfels), so that one layer can show both sides of a sheet.

A volumetric Gaussian shows one colour from every side. To explain a sheet that is warm outside and cool inside,
a fit of such Gaussians builds two layers a few Gaussian sizes apart, and the fused depth (:mod:`.fuse_surface`)
then sees a slab, not a sheet. A surfel is a Gaussian whose local z axis is its normal, whose z scale is
``flat_ratio`` times its smaller in-plane scale, and which has two colours: ``sh`` is seen from the side its
normal points to, ``sh_back`` from the other side (as a two-sided material). One layer of surfels then shows both
sides of a sheet at one place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from gen3d.kernels.gaussians import rasterization, spherical_harmonics

from ...geometry.cameras import Cameras
from ...representations.gaussians import Gaussians
from .extract_mesh import quat_to_rotmat


def point_normals(points: torch.Tensor, neighbours: int = 16) -> torch.Tensor:
    """Unit normals ``[P,3]`` of a point cloud ``[P,3]``: the least-spread axis of each point's nearest
    neighbours (sign arbitrary)."""
    k = min(neighbours, len(points))
    _, nn = cKDTree(points.numpy()).query(points.numpy(), k=k)
    local = points[torch.from_numpy(nn).reshape(len(points), k)]                       # [P,k,3]
    local = local - local.mean(1, keepdim=True)
    _, vectors = torch.linalg.eigh(local.transpose(1, 2) @ local)                      # ascending eigenvalues
    return vectors[:, :, 0]


def quats_from_normals(normals: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[P,4]`` (w x y z) of the shortest rotations taking +z to unit ``normals [P,3]``."""
    n = F.normalize(normals, dim=-1)
    q = torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)
    q[n[:, 2] < -1 + 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return F.normalize(q, dim=-1)


def flatten_(log_scales: torch.Tensor, flat_ratio: float) -> None:
    """In place: each z log-scale ``[N,3][:, 2]`` set to ``flat_ratio`` x the smaller in-plane scale."""
    with torch.no_grad():
        log_scales[:, 2] = log_scales[:, :2].min(-1).values + math.log(flat_ratio)


def as_surfels(g: Gaussians, normals: torch.Tensor, flat_ratio: float) -> Gaussians:
    """``g`` turned into surfels facing ``normals [N,3]``, both sides with ``g``'s colour."""
    log_scales = g.log_scales.clone()
    flatten_(log_scales, flat_ratio)
    return Gaussians(g.means, quats_from_normals(normals), log_scales, g.opacity_logits, g.sh, g.sh.clone())


def two_sided_colors(g: Gaussians, cameras: Cameras, degree: int) -> torch.Tensor:
    """Colours ``[C,N,3]`` of surfels ``g`` seen from ``cameras``: SH ``degree`` of ``g.sh`` where the camera is on
    the side the normal (local z) points to, of ``g.sh_back`` elsewhere; ``max(SH + 0.5, 0)`` as the rasterizer."""
    dirs = g.means[None] - cameras.centers.to(g.device)[:, None]                       # camera -> mean [C,N,3]
    front = (dirs * quat_to_rotmat(g.quats)[:, :, 2]).sum(-1, keepdim=True) < 0
    k = (degree + 1) ** 2
    colors = torch.where(front, spherical_harmonics(degree, dirs, g.sh[:, :k]),
                         spherical_harmonics(degree, dirs, g.sh_back[:, :k]))
    return (colors + 0.5).clamp_min(0.0)


def plane_depth(g: Gaussians, cameras: Cameras, flat: float = 0.3, grazing: float = 0.2,
                eps2d: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera depth ``[C,H,W]`` where each pixel's ray meets the Gaussians' planes, and the opacity ``[C,H,W]``.

    A rasteriser's expected depth composites each Gaussian's *centre* depth; where flat Gaussians overlap on a
    surface seen obliquely, the front ones' centres lie nearer the camera than the surface at the pixel, so the
    depth is biased towards the viewer. On the plane through a flat Gaussian's centre ``c`` (camera frame) with
    normal ``n`` (its thinnest axis), the inverse depth is affine in the pixel: ``1/z = n . (x, y, 1) / (n . c)``
    with ``x = (u - cx) / fx``, ``y = (v - cy) / fy``. Its three coefficients are rendered as colours and the
    composited inverse depth evaluated at each pixel centre. A Gaussian thicker than ``flat`` x its middle scale,
    or seen within ``asin(grazing)`` of edge-on, uses its centre's fronto-parallel plane (``1/z = 1/c_z``)."""
    R = quat_to_rotmat(g.quats)                                                         # [N,3,3]
    order = g.scales.argsort(-1)
    normal = R.gather(2, order[:, None, :1].expand(-1, 3, 1))[..., 0]                    # thinnest axis [N,3]
    sorted_scales = g.scales.gather(1, order)
    is_flat = sorted_scales[:, 0] < flat * sorted_scales[:, 1]
    view = cameras.viewmats().to(g.device)                                              # [C,4,4]
    centre = torch.einsum("cij,nj->cni", view[:, :3, :3], g.means) + view[:, None, :3, 3]   # [C,N,3]
    n = torch.einsum("cij,nj->cni", view[:, :3, :3], normal)
    nc = (n * centre).sum(-1)
    planar = is_flat[None] & ((nc / centre.norm(dim=-1).clamp_min(1e-9)).abs() > grazing)
    K = cameras.K.to(g.device)
    fx, fy, cx, cy = (K[:, None, i, j] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    d = torch.where(planar, nc, torch.ones_like(nc))
    coef = torch.stack([(n[..., 2] - n[..., 0] * cx / fx - n[..., 1] * cy / fy) / d,
                        n[..., 0] / (fx * d), n[..., 1] / (fy * d)], -1)                # [C,N,3]
    flat_plane = torch.stack([1 / centre[..., 2].clamp_min(1e-9), torch.zeros_like(nc), torch.zeros_like(nc)], -1)
    coef = torch.where(planar[..., None], coef, flat_plane)
    sums, alpha, _ = rasterization(g.means, g.quats, g.scales, g.opacities, coef, view, K, cameras.width,
                                   cameras.height, eps2d=eps2d)
    alpha = alpha[..., 0]
    v, u = torch.meshgrid(torch.arange(cameras.height, device=g.device) + 0.5,
                          torch.arange(cameras.width, device=g.device) + 0.5, indexing="ij")
    inverse = (sums[..., 0] + sums[..., 1] * u + sums[..., 2] * v) / alpha.clamp_min(1e-6)
    return torch.where(alpha > 1e-6, 1 / inverse.clamp_min(1e-6), torch.zeros_like(inverse)), alpha
