"""Stage 2: Gaussians -> a clean triangle mesh in the Gaussians' own world frame.

The Gaussian density ``d(x) = sum_i o_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` is evaluated on a voxel grid
without a dense Gaussians x voxels product: the grid is cut into blocks of ``block`` voxels per side, each
Gaussian is paired only with the blocks its 3-sigma bounding box touches, and each (Gaussian, block) pair adds its
contribution to that block's voxels. Marching cubes (PyMCubes) at ``level`` gives the surface; hollow shells are
filled first (pinholes between surfels sealed) so the inside of an object fitted by surface Gaussians does not
produce a second, inner surface.
When the input views' masks are known, the level is the one whose mesh silhouettes best match them (mask IoU):
the density of a fit has no fixed value at the object's boundary. Cleanup uses trimesh (and fast-simplification
for decimation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mcubes
import numpy as np
import torch
import trimesh
from scipy import ndimage

from ...errors import NumericalError
from ...geometry.cameras import Cameras

log = logging.getLogger(__name__)


@dataclass
class MeshExtractConfig:
    resolution: int = 128          #: voxels along the longest side of the Gaussians' bounding box
    level: float = 0.5             #: iso level of the density (lowered for sparse Gaussians, see extract_mesh)
    silhouette_views: int = 8      #: masks used to choose the level (evenly spread over the given ones)
    silhouette_rays: int = 600_000  #: at most this many pixel rays score the levels (a strided subset)
    min_opacity: float = 0.005     #: Gaussians below this opacity are ignored
    block: int = 8                 #: voxels per block side for the Gaussian/block pairing
    seal: int = 2                  #: pinholes up to twice this many voxels wide do not open a cavity to the outside
    min_component_ratio: float = 0.02  #: components with fewer faces than this share of the largest are dropped
    merge_ratio: float = 0.01      #: vertices closer than this fraction of a voxel are merged
    smooth_iterations: int = 5     #: Taubin smoothing iterations (0 = none)
    target_faces: int = 50_000     #: decimate to this many faces (0 = keep all)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Unit-normalised quaternions ``[N,4]`` (w, x, y, z; gsplat order) -> rotation matrices ``[N,3,3]``."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def density_grid(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                 lo: torch.Tensor, voxel: float, dims: tuple[int, int, int], block: int = 4,
                 chunk: int = 8192) -> torch.Tensor:
    """Density of Gaussians at voxel centres ``lo + voxel * (i, j, k)``.

    means ``[N,3]``, quats ``[N,4]`` (w, x, y, z), scales ``[N,3]`` (standard deviations, activated),
    opacities ``[N]`` in [0, 1]; returns ``[dims]`` float32. Contributions beyond each Gaussian's 3-sigma
    bounding box are dropped.
    """
    dev = means.device
    nb = [(d + block - 1) // block for d in dims]
    nb_t = torch.tensor(nb, device=dev)
    R = quat_to_rotmat(quats)
    s2 = scales.clamp_min(1e-8) ** 2
    prec = (R / s2[:, None, :]) @ R.transpose(1, 2)
    radius = 3.0 * ((R ** 2) @ s2[:, :, None]).squeeze(-1).sqrt()
    b_lo = torch.floor((means - radius - lo) / (voxel * block)).long().clamp_min(0)
    b_hi = torch.minimum(torch.floor((means + radius - lo) / (voxel * block)).long(), nb_t - 1)
    span = (b_hi - b_lo + 1).clamp_min(0)
    count = span.prod(-1)
    gid = torch.repeat_interleave(torch.arange(len(means), device=dev), count)
    # each pair's offset inside its Gaussian's block range, unravelled over (x, y, z)
    local = torch.arange(len(gid), device=dev) - (torch.cumsum(count, 0) - count)[gid]
    sy, sz = span[gid, 1], span[gid, 2]
    blk = b_lo[gid] + torch.stack([local // (sy * sz), (local // sz) % sy, local % sz], -1)
    blk_lin = (blk[:, 0] * nb[1] + blk[:, 1]) * nb[2] + blk[:, 2]

    # the grid is stored block-major ([blocks, block^3]) so a pair's voxels are one contiguous row
    grid = torch.zeros(nb[0] * nb[1] * nb[2], block ** 3, device=dev)
    offs = torch.stack(torch.meshgrid(*[torch.arange(block, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offs = (offs.float() * voxel).T.contiguous()                                     # [3, B^3]
    # upper triangle of each precision matrix: xx, yy, zz, 2xy, 2xz, 2yz
    pq = torch.stack([prec[:, 0, 0], prec[:, 1, 1], prec[:, 2, 2],
                      2 * prec[:, 0, 1], 2 * prec[:, 0, 2], 2 * prec[:, 1, 2]], -1)
    for s in range(0, len(gid), chunk):
        g = gid[s:s + chunk]
        origin = lo + blk[s:s + chunk].float() * (voxel * block) - means[g]          # [P, 3]
        dx, dy, dz = (origin[:, i:i + 1] + offs[i] for i in range(3))                 # [P, B^3] each
        c = pq[g]
        q = (c[:, 0:1] * dx * dx + c[:, 1:2] * dy * dy + c[:, 2:3] * dz * dz
             + c[:, 3:4] * dx * dy + c[:, 4:5] * dx * dz + c[:, 5:6] * dy * dz)
        grid.index_add_(0, blk_lin[s:s + chunk], opacities[g][:, None] * torch.exp(-0.5 * q))
    grid = grid.reshape(*nb, block, block, block).permute(0, 3, 1, 4, 2, 5)
    grid = grid.reshape(nb[0] * block, nb[1] * block, nb[2] * block)
    return grid[:dims[0], :dims[1], :dims[2]].contiguous()


def _fill_hollow(density: np.ndarray, level: float, seal: int) -> np.ndarray:
    """Raise enclosed cavities above ``level`` so a shell of Gaussians gives one outer surface.

    A shell of sharp surfels leaks through pinholes between them, which would leave the cavity connected to the
    outside and mesh its inner wall too. So what is enclosed is decided on the occupancy dilated by ``seal``
    voxels (gaps up to ``2 * seal`` wide closed); the outside then grows back ``seal`` voxels through free space,
    so concave slots keep their mouths and openings wider than the seal stay open."""
    occupied = density > level
    cross = ndimage.generate_binary_structure(3, 1)
    sealed = ndimage.binary_dilation(occupied, cross, iterations=seal) if seal > 0 else occupied
    outside = ~ndimage.binary_fill_holes(sealed)
    if seal > 0:
        outside = ndimage.binary_dilation(outside, cross, iterations=seal, mask=~occupied)
    out = density.copy()
    out[~occupied & ~outside] = 2.0 * level
    return out


def _drop_nonmanifold_faces(mesh: trimesh.Trimesh) -> None:
    """Remove faces on edges shared by more than two faces."""
    edges = mesh.edges_sorted
    _, inv, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    bad_edge = counts[inv.reshape(-1)] > 2
    bad_face = bad_edge.reshape(-1, 3).any(1)
    if bad_face.any():
        log.debug("dropping %d faces on non-manifold edges", int(bad_face.sum()))
        mesh.update_faces(~bad_face)
        mesh.remove_unreferenced_vertices()


def cleanup_mesh(mesh: trimesh.Trimesh, merge_distance: float, min_component_ratio: float,
                 smooth_iterations: int, target_faces: int, close_holes: bool = True) -> trimesh.Trimesh:
    """Merge close vertices, drop small components and non-manifold faces, smooth (Taubin), decimate (closing the
    small holes decimation leaves when ``close_holes``; an open surface keeps its boundary)."""
    if merge_distance > 0:
        key = np.round(mesh.vertices / merge_distance).astype(np.int64)
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        mesh = trimesh.Trimesh(mesh.vertices[first], inv.reshape(-1)[mesh.faces], process=False)
        mesh.update_faces(mesh.nondegenerate_faces())
        mesh.update_faces(mesh.unique_faces())
        mesh.remove_unreferenced_vertices()
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    keep = sizes[labels] >= min_component_ratio * sizes.max()
    if not keep.all():
        log.debug("dropping %d small components", int((sizes < min_component_ratio * sizes.max()).sum()))
        mesh.update_faces(keep)
        mesh.remove_unreferenced_vertices()
    _drop_nonmanifold_faces(mesh)
    if smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=smooth_iterations)
    if target_faces and len(mesh.faces) > target_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=target_faces)
        # quadric collapse can fold a few faces onto non-manifold edges: drop them and close the small holes
        _drop_nonmanifold_faces(mesh)
        if close_holes:
            trimesh.repair.fill_holes(mesh)
    mesh.fix_normals()
    return mesh


def ray_max_density(density: torch.Tensor, lo: torch.Tensor, voxel: float, cameras: Cameras, stride: int = 1,
                    chunk: int = 8192) -> torch.Tensor:
    """Maximum of the trilinearly interpolated ``density [X,Y,Z]`` (voxel ``(i,j,k)`` at ``lo + voxel*(i,j,k)``)
    along the pixel rays of ``cameras`` (every ``stride``-th pixel per axis from ``stride // 2``), sampled every
    voxel: ``[N,H',W']``. The silhouette of the level set ``density > L`` is exactly ``ray_max > L``, for every
    ``L`` at once."""
    dims = torch.tensor(density.shape, dtype=torch.float32)
    box_lo, box_hi = lo, lo + voxel * (dims - 1)
    grid = density[None, None].permute(0, 1, 4, 3, 2)  # grid_sample's (x, y, z) index (W, H, D) = (Z, Y, X) dims
    origins, dirs = (r[:, stride // 2::stride, stride // 2::stride] for r in cameras.pixel_rays())
    shape = origins.shape[:3]
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (box_lo - origins) * inv, (box_hi - origins) * inv
    near = torch.minimum(t0, t1).max(-1).values.clamp_min(0)
    far = torch.maximum(t0, t1).min(-1).values
    samples = int(torch.ceil((box_hi - box_lo).norm() / voxel)) + 1
    steps = torch.linspace(0, 1, samples)
    out = torch.zeros(len(origins))
    for s in range(0, len(origins), chunk):
        n, f = near[s:s + chunk], far[s:s + chunk]
        hit = f > n
        if not hit.any():
            continue
        t = n[hit, None] + (f - n)[hit, None] * steps                                        # [R, S]
        p = origins[s:s + chunk][hit, None] + dirs[s:s + chunk][hit, None] * t[..., None]     # [R, S, 3]
        g = 2 * (p - box_lo) / (box_hi - box_lo) - 1
        val = torch.nn.functional.grid_sample(grid, g[None, None], align_corners=True)[0, 0, 0]  # [R, S]
        out[torch.arange(s, s + len(n))[hit]] = val.max(-1).values
    return out.reshape(shape)


def choose_level(density: np.ndarray, lo: torch.Tensor, voxel: float, reference: float, cameras: Cameras,
                 masks: torch.Tensor, cfg: MeshExtractConfig) -> tuple[float, float]:
    """The iso level whose silhouettes best match the object ``masks [N,H,W]`` (bool) seen by ``cameras``:
    mean mask IoU over up to ``cfg.silhouette_views`` views, maximised over levels log-spaced in
    ``reference * [0.01, 2]`` (4 % apart). Returns ``(level, IoU)``."""
    pick = torch.linspace(0, len(cameras) - 1, min(cfg.silhouette_views, len(cameras))).round().long()
    # a pixel subset at full resolution (downsampled masks would lose thin parts and bias the level upwards)
    stride = max(1, math.ceil(math.sqrt(len(pick) * cameras.width * cameras.height / cfg.silhouette_rays)))
    peaks = ray_max_density(torch.from_numpy(density), lo, voxel, cameras[pick], stride)
    masks = masks[pick, stride // 2::stride, stride // 2::stride]
    levels = torch.from_numpy(reference * np.geomspace(0.01, 2.0, 129)).float()
    iou = torch.stack([((peaks > level) & masks).flatten(1).sum(1).div(
        ((peaks > level) | masks).flatten(1).sum(1).clamp_min(1)).mean() for level in levels])
    best = int(iou.argmax())
    log.info("mesh level %.4g (silhouette IoU %.4f over %d views)", float(levels[best]), float(iou[best]), len(pick))
    return float(levels[best]), float(iou[best])


def extract_mesh(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                 cfg: MeshExtractConfig = MeshExtractConfig(), cameras: Cameras | None = None,
                 masks: torch.Tensor | None = None) -> trimesh.Trimesh:
    """Mesh the density of Gaussians (activated parameters, world frame; shapes as in :func:`density_grid`).

    With ``cameras`` and their object ``masks [N,H,W]`` (bool), the level is chosen to match the masks
    (:func:`choose_level`) instead of ``cfg.level``. Returns a trimesh with outward normals in the same world
    frame. Raises :class:`NumericalError` when no surface is found.
    """
    keep = opacities > cfg.min_opacity
    means, quats, scales, opacities = means[keep], quats[keep], scales[keep], opacities[keep]
    if len(means) == 0:
        raise NumericalError("no Gaussian is opaque enough to mesh", {"min_opacity": cfg.min_opacity})
    with torch.no_grad():
        pmin = torch.quantile(means, 0.001, dim=0) if len(means) > 1000 else means.min(0).values
        pmax = torch.quantile(means, 0.999, dim=0) if len(means) > 1000 else means.max(0).values
        margin = 3.0 * scales.max(-1).values.median()
        pmin, pmax = pmin - margin, pmax + margin
        voxel = float((pmax - pmin).max()) / cfg.resolution
        lo = pmin - 2 * voxel
        dims = tuple(int(x) for x in torch.ceil((pmax - pmin) / voxel).long() + 5)
        density = density_grid(means, quats, scales, opacities, lo, voxel, dims, cfg.block).cpu().numpy()
    # sparse Gaussians (short fits) leave the density between them below the level: lower it to a quarter of
    # the typical density at the Gaussians' centres so the surface stays connected
    idx = torch.round((means - lo) / voxel).long().cpu()
    inside = ((idx >= 0) & (idx < torch.tensor(dims))).all(-1)  # the grid leaves out the 0.1 % outliers
    idx = idx[inside]
    centre_density = float(np.median(density[idx[:, 0], idx[:, 1], idx[:, 2]])) if len(idx) else 0.0
    level = min(cfg.level, 0.25 * centre_density)
    if cameras is not None and masks is not None:
        level, _ = choose_level(density, lo.cpu(), voxel, centre_density, cameras.to("cpu"), masks.cpu(), cfg)
    density = _fill_hollow(density, level, cfg.seal)
    verts, faces = mcubes.marching_cubes(density, level)
    if len(faces) == 0:
        raise NumericalError(f"the Gaussians' density never reaches the level {level}",
                             {"max_density": float(density.max())})
    verts = verts * voxel + lo.cpu().numpy()
    mesh = trimesh.Trimesh(verts, faces.astype(np.int64), process=False)
    n_raw = len(mesh.faces)
    mesh = cleanup_mesh(mesh, cfg.merge_ratio * voxel, cfg.min_component_ratio, cfg.smooth_iterations,
                        cfg.target_faces)
    log.info("mesh: %d faces from marching cubes on %s, %d after cleanup", n_raw, dims, len(mesh.faces))
    return mesh
