"""Stage 2 for open and thin surfaces: fuse the Gaussians' rendered depth and opacity into a distance field.

The density iso-surface of :mod:`.extract_mesh` is watertight: it closes holes and turns a sheet into a slab. Here
the Gaussians are rendered (the depth where each pixel's ray meets their planes, :func:`.surfels.plane_depth`, and
opacity) from the input cameras and from extra cameras spread over a sphere, and every voxel gets, per view, its
signed distance to the observed surface along the view ray, scaled to a point-to-plane distance by the depth map's
normal (``(D - z) |cos|``): ``+T`` where the pixel is empty (free space, from the input masks where there are any),
nothing where the voxel is outside the view, the pixel is ambiguous (opacity between ``empty_alpha`` and
``surface_alpha``) or the voxel is more than ``T`` behind the surface. The fused value is the ``free_votes``-th
largest over the views (space carving that needs two witnesses), so a sheet seen from both sides is carved down to
it from both sides, holes seen through stay empty, and the inside of a closed object (no view carves it) stays
solid.

Marching cubes at ``level`` voxels gives a closed surface around everything not carved: for a sheet, a thin slab of
two layers about ``level`` off the surface. Each vertex then moves along its normal onto the first observed surface
on its normal line, plus ``layer_offset`` voxels: a sheet becomes two nearly coincident layers with outward normals
(each baked from the views on its side), a closed surface lands on the observations. Only observed points that a
``witnesses`` share of the input views confirm (their depth agrees) count: the extra cameras also see what no input
view constrained (the fit's guesses inside a box whose floor the views see only from below), and a face there moves
up to ``reach`` voxels inwards onto what the input views saw, so the unseen side of a sheet becomes its second
layer. Vertices with nothing on their normal line take the mean position of their neighbours (ring by ring); faces
farther than ``reach`` from every confirmed point, or left without a position, are cut.

``surface="auto"`` measures how thin the carved solid is (share of observed boundary voxels whose local thickness
is at most ``thin_voxels``) and uses this extraction when the share exceeds ``open_share``, else the density
iso-surface (unchanged for closed objects). Where the solid falls into several large components that disagree (a
closed body beside a sheet), each component's faces come from its own extraction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mcubes
import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from ...errors import NumericalError
from ...geometry.cameras import Cameras, orbit_cameras
from .extract_mesh import MeshExtractConfig, cleanup_mesh, extract_mesh
from .surfels import plane_depth

log = logging.getLogger(__name__)

SURFACES = ("auto", "closed", "open")


@dataclass
class FuseConfig:
    resolution: int = 128          #: voxels along the longest side of the opaque Gaussians' bounding box
    extra_views: int = 48          #: cameras on a Fibonacci sphere added to the given ones
    max_view_size: int = 256       #: fusion renders are at most this many pixels wide
    level: float = 1.0             #: voxels: marching-cubes level of the fused distance
    truncation: float = 4.0        #: voxels
    layer_offset: float = 0.5      #: voxels: each layer of a sheet lies this far off the observed surface
    surface_alpha: float = 0.5     #: rendered opacity above which a pixel observes a surface
    empty_alpha: float = 0.05      #: opacity below which a pixel observes free space
    free_votes: int = 2            #: a voxel is as free as the ``free_votes``-th most convinced view says
    support: float = 1.5           #: voxels beyond ``level``: how thick an observed surface counts (snap, thin share)
    neighbours: int = 128          #: nearest observed points searched when moving a vertex onto the surface
    thin_voxels: float = 2.5       #: local half-thickness (voxels) of the carved solid counted as thin
    open_share: float = 0.05       #: auto: open extraction when more of the observed boundary is thin
    component_share: float = 0.1   #: auto: components with this share of the observed boundary decide alone
    target_faces: int = 50_000
    smooth_iterations: int = 3
    min_component_ratio: float = 0.02
    witnesses: float = 1 / 3       #: share of the input views whose depth must agree for a point to place the mesh
    agree: float = 1.5             #: voxels: depth agreement of a witness
    reach: float = 24.0            #: voxels: how far an unconfirmed vertex looks inwards for the sheet's other side
    fill_rings: int = 8            #: vertices with nothing on their normal line: neighbours' mean, this many rings


@dataclass
class Observations:
    """Depth maps of the Gaussians: camera ``depth``, ``surface`` and ``empty`` masks and ``cos`` (|normal . ray|,
    from the depth map) per pixel, all ``[N,H,W]``, seen by ``cameras``, of which the first ``given`` are the views
    the Gaussians were fitted to (the rest: extra cameras, which also see what no input view constrained)."""

    cameras: Cameras
    depth: torch.Tensor
    surface: torch.Tensor
    empty: torch.Tensor
    cos: torch.Tensor
    given: int

    def points(self) -> torch.Tensor:
        """World positions ``[P,3]`` of the surface pixels."""
        origins, dirs = self.cameras.pixel_rays()
        forward = self.cameras.c2w[:, None, None, :3, 2]
        t = self.depth / (dirs * forward).sum(-1).clamp_min(1e-6)    # z-depth -> distance along the unit ray
        return (origins + dirs * t[..., None])[self.surface]

    def witnesses(self, pts: torch.Tensor, tolerance: float) -> torch.Tensor:
        """``[P]``: how many of the given views see a surface within ``tolerance`` (world units, along the view
        axis) of each of ``pts [P,3]``."""
        count = torch.zeros(len(pts), dtype=torch.long)
        for i in range(self.given):
            z, lin, inside = _project(pts, self.cameras[i])
            hit = self.surface[i].flatten()[lin] & ((self.depth[i].flatten()[lin] - z).abs() < tolerance)
            count += (inside & hit).long()
        return count


def _project(pts: torch.Tensor, camera: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points ``[P,3]`` in one camera: camera depth ``z``, flat pixel index ``lin`` (clamped into the
    image) and whether the point projects ``inside`` the image, in front."""
    uv, z = camera.project(pts)
    u, v, z = uv[0, :, 0], uv[0, :, 1], z[0]
    W, H = camera.width, camera.height
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
    return z, v.clamp(0, H - 1).long() * W + u.clamp(0, W - 1).long(), inside


def sphere_cameras(count: int, center: torch.Tensor, radius: float, fov_deg: float, width: int,
                   height: int) -> Cameras:
    """``count`` cameras on a Fibonacci sphere (elevations within +-80 degrees) looking at ``center``."""
    i = torch.arange(count, dtype=torch.float32) + 0.5
    el = torch.rad2deg(torch.asin(1 - 2 * i / count)).clamp(-80, 80)
    az = (i * 180.0 * (3 - math.sqrt(5))) % 360.0
    return orbit_cameras(el, az, radius, fov_deg, width, height, target=tuple(center.tolist()))


def _depth_cosine(cameras: Cameras, depth: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """|cos| between each surface pixel's ray and the normal of the back-projected depth map ``[N,H,W]`` (1 where a
    neighbour is not a surface pixel)."""
    H, W = depth.shape[1:]
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    K = cameras.K
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    p = torch.stack([x, y, torch.ones_like(x)], -1) * depth[..., None]                   # camera frame [N,H,W,3]
    du = F.pad((p[:, :, 2:] - p[:, :, :-2]).permute(0, 3, 1, 2), (1, 1)).permute(0, 2, 3, 1)
    dv = F.pad((p[:, 2:] - p[:, :-2]).permute(0, 3, 1, 2), (0, 0, 1, 1)).permute(0, 2, 3, 1)
    n = F.normalize(torch.cross(du, dv, dim=-1), dim=-1)
    cos = (n * F.normalize(p, dim=-1)).sum(-1).abs()
    ok = surface & F.max_pool2d((~surface).float()[:, None], 3, 1, 1)[:, 0].eq(0)
    return torch.where(ok, cos, torch.ones_like(cos))


def observe(gaussians, cameras: Cameras, cfg: FuseConfig, images: torch.Tensor | None = None,
            chunk: int = 4) -> Observations:
    """Render ``gaussians`` from ``cameras`` (with ``images [N,H,W,4]``: their masks also mark free space) and
    ``cfg.extra_views`` sphere cameras at the same distance and field of view."""
    opaque = gaussians.opacities > 0.5
    center = gaussians.means[opaque if opaque.any() else slice(None)].detach().median(0).values.cpu()
    radius = float((cameras.centers.cpu() - center).norm(dim=-1).mean())
    fov = float(torch.rad2deg(2 * torch.atan(0.5 * cameras.height / cameras.K[0, 1, 1])))
    if cameras.width > cfg.max_view_size:
        size = cfg.max_view_size
        height = round(cameras.height * size / cameras.width)
        cameras = cameras.resized(size, height)
        if images is not None:
            images = F.interpolate(images.permute(0, 3, 1, 2), (height, size), mode="area").permute(0, 2, 3, 1)
    given_empty = images[..., 3].cpu() < cfg.empty_alpha if images is not None else None
    all_cams = [cameras.to("cpu")]
    if cfg.extra_views:
        all_cams.append(sphere_cameras(cfg.extra_views, center, radius, fov, cameras.width, cameras.height))
    out = []
    for cams in all_cams:
        depth, alpha = [], []
        with torch.no_grad():
            for s in range(0, len(cams), chunk):
                sub = cams[s:s + chunk].to(gaussians.device)
                d, a = plane_depth(gaussians, sub)
                depth.append(d.cpu()), alpha.append(a.cpu())
        depth, alpha = torch.cat(depth), torch.cat(alpha)
        surface = alpha > cfg.surface_alpha
        empty = alpha < cfg.empty_alpha
        if given_empty is not None and cams is all_cams[0]:
            empty, surface = given_empty, surface & ~given_empty
        out.append(Observations(cams, depth, surface, empty, _depth_cosine(cams, depth, surface), len(cameras)))
    if len(out) == 1:
        return out[0]
    a, b = out
    return Observations(Cameras(torch.cat([a.cameras.K, b.cameras.K]), torch.cat([a.cameras.c2w, b.cameras.c2w]),
                                a.cameras.width, a.cameras.height),
                        *(torch.cat([getattr(a, k), getattr(b, k)]) for k in ("depth", "surface", "empty", "cos")),
                        len(cameras))


@dataclass
class FusedField:
    """The fused distance ``field [X,Y,Z]`` (voxels, clamped to +-truncation) at ``lo + voxel * (i, j, k)`` and the
    observed surface: ``points [P,3]``, the mean of the surface pixels in each half-voxel cell, their ``counts [P]``
    and whether enough input views agree with each (``confirmed [P]``, :func:`fuse`)."""

    field: np.ndarray
    lo: np.ndarray
    voxel: float
    points: np.ndarray
    counts: np.ndarray
    confirmed: np.ndarray


def fused_values(obs: Observations, pts: torch.Tensor, voxel: float, cfg: FuseConfig) -> torch.Tensor:
    """The fused distance (voxels, module docstring) at world points ``pts [P,3]``."""
    T = cfg.truncation
    # per pixel: depth x cos (+inf where empty, NaN where ambiguous) and cos, so one gather each per view
    cos = obs.cos.clamp_min(0.1)
    scaled = torch.where(obs.surface, obs.depth * cos, torch.where(obs.empty, math.inf, math.nan)).flatten(1)
    cos = cos.flatten(1)
    # running k largest values per point (k = free_votes), largest first
    top = [torch.full((len(pts),), -math.inf) for _ in range(cfg.free_votes)]
    for i in range(len(obs.cameras)):
        z, lin, inside = _project(pts, obs.cameras[i])
        c = cos[i][lin]
        d = (scaled[i][lin] - z * c) / voxel
        val = torch.where(inside & (d > -T), d.clamp_max(T), -math.inf)   # NaN (ambiguous) compares False
        for k in range(cfg.free_votes):
            top[k], val = torch.maximum(top[k], val), torch.minimum(top[k], val)
    return torch.where(torch.isfinite(top[-1]), top[-1].clamp(-T, T), -T)  # too few views: solid (-T)


def fuse(obs: Observations, lo: torch.Tensor, voxel: float, dims: tuple[int, int, int], cfg: FuseConfig,
         coarse: int = 4) -> FusedField:
    """Fuse ``obs`` on the grid (module docstring): exactly within ``truncation + 1`` voxels of the observed
    points, elsewhere (farther than the truncation from any surface, so only the side matters) from a grid
    ``coarse`` times coarser."""
    cloud = obs.points().double()
    key = torch.floor((cloud - lo) / (0.5 * voxel)).long()
    _, inv = torch.unique(key, dim=0, return_inverse=True)
    counts = torch.bincount(inv).double()
    means = torch.zeros(int(inv.max()) + 1 if len(inv) else 0, 3, dtype=torch.float64).index_add_(0, inv, cloud)
    points = (means / counts[:, None]).float()

    def grid(stride):
        axes = [lo[i] + voxel * torch.arange(0, dims[i], stride, dtype=torch.float32) for i in range(3)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)

    rough = fused_values(obs, grid(coarse).reshape(-1, 3), voxel, cfg).reshape(grid(coarse).shape[:3])
    field = rough.repeat_interleave(coarse, 0).repeat_interleave(coarse, 1).repeat_interleave(coarse, 2)
    field = field[:dims[0], :dims[1], :dims[2]].contiguous()
    band = np.zeros(dims, dtype=bool)
    idx = torch.round((points - lo) / voxel).long()
    idx = idx[((idx >= 0) & (idx < torch.tensor(dims))).all(1)]
    band[tuple(idx.T.numpy())] = True
    band = torch.from_numpy(ndimage.binary_dilation(band, iterations=int(math.ceil(cfg.truncation)) + 1))
    field[band] = fused_values(obs, grid(1)[band], voxel, cfg)
    need = max(1, round(cfg.witnesses * obs.given))
    confirmed = obs.witnesses(points, cfg.agree * voxel) >= need
    return FusedField(field.numpy(), lo.numpy(), voxel, points.numpy(), counts.float().numpy(), confirmed.numpy())


def thin_shares(fused: FusedField, cfg: FuseConfig) -> tuple[float, np.ndarray, dict[int, tuple[float, int]]]:
    """How thin the carved solid is: the share of its boundary voxels near observed points whose local
    half-thickness (largest distance to free space within ``thin_voxels + 1`` voxels) is at most ``thin_voxels``;
    over the whole solid, and per connected component. Returns ``(share, labels [X,Y,Z] (0 outside the solid),
    {label: (share, boundary voxels)})``."""
    solid = fused.field < cfg.level
    labels, _ = ndimage.label(solid, ndimage.generate_binary_structure(3, 3))
    boundary = solid & ~ndimage.binary_erosion(solid)
    observed = np.zeros_like(solid)
    idx = np.round((fused.points - fused.lo) / fused.voxel).astype(np.int64)
    idx = idx[((idx >= 0) & (idx < solid.shape)).all(1)]
    observed[tuple(idx.T)] = True
    observed = ndimage.binary_dilation(observed, iterations=int(math.ceil(cfg.level + cfg.support)))
    boundary &= observed
    if not boundary.any():
        return 0.0, labels, {}
    radius = int(math.ceil(cfg.thin_voxels)) + 1
    local = ndimage.maximum_filter(ndimage.distance_transform_edt(solid), size=2 * radius + 1)
    thin, owner = local[boundary] <= cfg.thin_voxels, labels[boundary]
    count = np.bincount(owner)
    share = np.bincount(owner, weights=thin) / np.maximum(count, 1)
    return float(thin.mean()), labels, {int(k): (float(share[k]), int(count[k])) for k in np.flatnonzero(count)}


def _faces_in(mesh: trimesh.Trimesh, owner: np.ndarray, fused: FusedField, keep: set[int]) -> trimesh.Trimesh:
    """The faces of ``mesh`` whose centre's voxel is owned by a component in ``keep`` (``owner [X,Y,Z]``: the label
    of each voxel's nearest solid voxel)."""
    idx = np.clip(np.round((mesh.triangles_center - fused.lo) / fused.voxel).astype(np.int64), 0,
                  np.array(owner.shape) - 1)
    mesh = mesh.copy()
    mesh.update_faces(np.isin(owner[idx[:, 0], idx[:, 1], idx[:, 2]], list(keep)))
    mesh.remove_unreferenced_vertices()
    return mesh


def grid_for(gaussians, resolution: int) -> tuple[torch.Tensor, float, tuple[int, int, int]]:
    """Grid origin, voxel size and dims covering the opaque Gaussians (0.1 % outliers left out) with a margin."""
    keep = gaussians.opacities > 0.05
    means, scales = gaussians.means[keep].detach().cpu(), gaussians.scales[keep].detach().cpu()
    if len(means) == 0:
        raise NumericalError("no Gaussian is opaque enough to mesh", {"min_opacity": 0.05})
    q = (lambda p: torch.quantile(means, p, dim=0)) if len(means) > 1000 else None
    pmin = q(0.001) if q else means.min(0).values
    pmax = q(0.999) if q else means.max(0).values
    margin = 3.0 * float(scales.max(-1).values.median())
    voxel = float((pmax - pmin).max() + 2 * margin) / resolution
    lo = pmin - margin - 4 * voxel
    dims = tuple(int(x) for x in torch.ceil((pmax - pmin + 2 * margin) / voxel).long() + 9)
    return lo, voxel, dims


def open_surface_mesh(fused: FusedField, cfg: FuseConfig) -> trimesh.Trimesh:
    """Marching cubes of the carved solid, its vertices moved onto the confirmed observations (module docstring)."""
    verts, faces = mcubes.marching_cubes(-fused.field, -cfg.level)   # solid (field < level) is "inside"
    if len(faces) == 0:
        raise NumericalError("the fused depth has no surface", {"level": cfg.level})
    vox = fused.voxel
    points, counts = fused.points[fused.confirmed], fused.counts[fused.confirmed]
    if len(points) == 0:
        raise NumericalError("no observed surface point is confirmed by the input views",
                             {"witnesses": cfg.witnesses})
    mesh = trimesh.Trimesh(verts * vox + fused.lo, faces.astype(np.int64), process=False)
    tree = cKDTree(points)
    far = tree.query(mesh.triangles_center, distance_upper_bound=cfg.reach * vox)[0]
    mesh.update_faces(np.isfinite(far))
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise NumericalError("no fused surface lies near the observed depth", {"level": cfg.level})
    mesh = cleanup_mesh(mesh, 0.01 * vox, cfg.min_component_ratio, cfg.smooth_iterations, cfg.target_faces,
                        close_holes=False)
    normals = np.asarray(mesh.vertex_normals)
    step = snap_steps(mesh.vertices, normals, points, counts, tree, vox, cfg)
    moved = _fill(mesh.vertices + step[:, None] * normals, mesh.edges_unique, cfg.fill_rings)
    placed = np.isfinite(moved[:, 0])
    mesh = trimesh.Trimesh(np.where(placed[:, None], moved, mesh.vertices), mesh.faces, process=False)
    mesh.update_faces(placed[mesh.faces].all(1))
    mesh.remove_unreferenced_vertices()
    return mesh


def _fill(values: np.ndarray, edges: np.ndarray, rings: int) -> np.ndarray:
    """``values [V,C]`` with NaN rows filled ring by ring, up to ``rings`` edges away, with the mean of their filled
    neighbours (vertex positions: a membrane over the unplaced patch); rows still NaN stay NaN."""
    values = values.copy()
    for _ in range(rings):
        missing = np.isnan(values[:, 0])
        if not missing.any():
            break
        total, count = np.zeros_like(values), np.zeros(len(values))
        for a, b in ((edges[:, 0], edges[:, 1]), (edges[:, 1], edges[:, 0])):
            ok = missing[a] & ~missing[b]
            np.add.at(total, a[ok], values[b[ok]])
            np.add.at(count, a[ok], 1)
        got = count > 0
        values[got] = total[got] / count[got, None]
    return values


def snap_steps(vertices: np.ndarray, normals: np.ndarray, points: np.ndarray, counts: np.ndarray, tree: cKDTree,
               vox: float, cfg: FuseConfig) -> np.ndarray:
    """``[V]``: how far each vertex moves along its normal: onto the observed points on its normal line (within a
    voxel of it; the nearest points alone would be biased towards the vertex's side of the noisy observations): the
    first surface met from one voxel outside down to ``reach`` voxels inside, then ``layer_offset`` outwards; NaN
    where there is none. A face that no input view saw (the inside of a box's floor seen only from below, of a
    dome's top seen only from outside) so lands on the seen side of the sheet, as its second layer."""
    near = (cfg.level + cfg.support) * vox
    _, nn = tree.query(vertices, k=min(cfg.neighbours, len(points)))
    nn = nn.reshape(len(vertices), -1)
    rel = points[nn] - vertices[:, None]
    along = (rel * normals[:, None]).sum(-1)
    across = np.linalg.norm(rel - along[..., None] * normals[:, None], axis=-1)
    line = (across < vox) & (along <= vox) & (along >= -cfg.reach * vox)
    first = np.where(line, along, -np.inf).max(1, keepdims=True)      # the nearest observed surface inwards
    w = counts[nn] * line * (along >= first - near)
    step = np.where(w.sum(1) > 0, (along * w).sum(1) / np.maximum(w.sum(1), 1e-9), np.nan)
    return step + cfg.layer_offset * vox


def extract_surface(gaussians, cameras: Cameras, images: torch.Tensor | None, surface: str,
                    closed_cfg: MeshExtractConfig, cfg: FuseConfig,
                    match_level: bool = True) -> tuple[trimesh.Trimesh, dict]:
    """The mesh of ``gaussians``: ``surface="closed"`` the density iso-surface (:func:`extract_mesh`; its level
    matched to the masks of ``images [N,H,W,4]`` when given and ``match_level``), ``"open"`` the fused one,
    ``"auto"`` the fused one where the object is thin (module docstring): per component of the carved solid when
    components holding at least ``component_share`` of its observed boundary disagree (``surface`` "mixed" in the
    metrics: thin ones fused, thick ones from the density), else for the whole. ``cameras`` (with ``images``, the
    views the Gaussians were fitted to) set the fusion views. Returns ``(mesh, metrics)``."""
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {SURFACES}, got {surface!r}")

    def closed() -> trimesh.Trimesh:
        masks = images[..., 3] > 0.5 if images is not None and match_level else None
        return extract_mesh(gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities, closed_cfg,
                            cameras if masks is not None else None, masks)

    if surface == "closed":
        return closed(), {"surface": "closed"}
    lo, voxel, dims = grid_for(gaussians, cfg.resolution)
    fused = fuse(observe(gaussians, cameras, cfg, images), lo, voxel, dims, cfg)
    share, labels, parts = thin_shares(fused, cfg)
    metrics: dict = {"thin_share": round(share, 4)}
    total = sum(n for _, n in parts.values())
    big = {k: s > cfg.open_share for k, (s, n) in parts.items() if n >= cfg.component_share * total}
    mixed = surface == "auto" and len(set(big.values())) == 2
    if surface == "open" or share > cfg.open_share or mixed:
        try:
            mesh = open_surface_mesh(fused, cfg)
        except NumericalError:
            if surface == "open":
                raise
            log.warning("surface: the fused depth has no usable surface; using the closed one")
        else:
            if not mixed:
                log.info("surface: open (thin share %.2f), %d faces", share, len(mesh.faces))
                return mesh, {**metrics, "surface": "open"}
            # small components go with the largest one
            default = big[max(big, key=lambda k: parts[k][1])]
            thin = {k for k in parts if big.get(k, default)}
            owner = labels[tuple(ndimage.distance_transform_edt(labels == 0, return_indices=True)[1])]
            mesh = trimesh.util.concatenate([_faces_in(mesh, owner, fused, thin),
                                             _faces_in(closed(), owner, fused, set(parts) - thin)])
            metrics["component_thin_shares"] = [round(parts[k][0], 4) for k in sorted(big)]
            log.info("surface: mixed (%d of %d components open), %d faces", sum(big.values()), len(big),
                     len(mesh.faces))
            return mesh, {**metrics, "surface": "mixed"}
    log.info("surface: closed (thin share %.2f)", share)
    return closed(), {**metrics, "surface": "closed"}
