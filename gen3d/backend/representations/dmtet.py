"""DMTet: a deformable tetrahedral grid with a signed distance per vertex, meshed by differentiable marching
tetrahedra (Shen et al. 2021; the geometry of Magic123's and DreamCraft3D's fine stages).

The grid is generated here at any resolution ``R``: the cube ``[-scale, scale]^3`` is cut into ``R^3`` cells and
each cell into the 6 tetrahedra around its main diagonal (the Kuhn/Freudenthal split, conforming across cells, so
the extracted surface is watertight). Nothing is stored per tetrahedron: a tetrahedron is its cell's index plus one
of 6 fixed corner patterns (:func:`cell_tets`), and marching only visits cells whose 8 corners change sign, so a
256 grid costs what its ``257^3`` vertex values cost.

Parameters are grid values (threestudio's ``tetrahedra-sdf-grid`` does the same; no MLP or hash encoding):
``sdf [R+1,R+1,R+1]`` (negative inside, world units) and ``deformation [R+1,R+1,R+1,3]``, mapped to a vertex offset
of at most one cell by ``tanh`` (threestudio's ``normalize_grid_deformation``). Colour is a separate field
(:class:`ColorVolume`: a dense RGB grid sampled trilinearly at surface points).

Initialisation from a coarse result: a target SDF (a callable on world points: analytic, or
:class:`VolumeSDF` made from an occupancy volume of Gaussians' density or a closed mesh) is sampled at the vertices,
then :func:`fit_sdf` optimises sdf and deformation so the vertices match it and the extracted surface lies on its
zero set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: the resolutions a DMTet may have (cells per side)
MIN_RESOLUTION, MAX_RESOLUTION = 8, 512
#: local edge ``(a, b)`` of a tetrahedron, by edge id
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


@functools.lru_cache(maxsize=None)
def _kuhn_corners() -> torch.Tensor:
    """``[6,4,3]`` corner offsets of the 6 tetrahedra of a unit cell: paths 000 -> 111 along each axis order."""
    from itertools import permutations

    tets = []
    for order in permutations(range(3)):
        c = [0, 0, 0]
        path = [tuple(c)]
        for axis in order:
            c[axis] = 1
            path.append(tuple(c))
        tets.append(path)
    return torch.tensor(tets, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def triangle_table() -> torch.Tensor:
    """``[16,2,3]`` local edge ids of the (up to two) triangles for each inside pattern (bit i = vertex i inside),
    -1 where absent. Winding is fixed afterwards (:func:`marching_tets`), so the table only says which edges."""
    def e(a, b):
        return TET_EDGES.index((min(a, b), max(a, b)))

    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    for code in range(16):
        inside = [i for i in range(4) if code >> i & 1]
        outside = [i for i in range(4) if not code >> i & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, 0] = torch.tensor([e(lone, o) for o in others])
        elif len(inside) == 2:
            (i, j), (k, l) = inside, outside
            quad = [e(i, k), e(i, l), e(j, l), e(j, k)]          # cyclic: consecutive edges share a vertex
            table[code, 0] = torch.tensor(quad[:3])
            table[code, 1] = torch.tensor([quad[0], quad[2], quad[3]])
    return table


def cell_tets(cells: torch.Tensor, resolution: int) -> torch.Tensor:
    """Tetrahedra ``[6K,4]`` (flat vertex ids into the ``(R+1)^3`` lattice, x-major) of cells ``[K,3]`` (i,j,k)."""
    n = resolution + 1
    corners = cells[:, None, None, :] + _kuhn_corners().to(cells.device)        # [K,6,4,3]
    return ((corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]).reshape(-1, 4)


@functools.lru_cache(maxsize=4)
def tet_grid(resolution: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole grid, cached: vertices ``[(R+1)^3,3]`` in ``[-scale, scale]^3`` and tetrahedra ``[6R^3,4]``
    (for inspection and small grids; marching never builds it)."""
    axis = torch.linspace(-scale, scale, resolution + 1)
    verts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    cells = torch.stack(torch.meshgrid(*[torch.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return verts, cell_tets(cells, resolution)


def check_resolution(resolution: int) -> None:
    from ..errors import BadInput

    if not (isinstance(resolution, int) and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION):
        raise BadInput(f"tet grid resolution {resolution!r} is out of range [{MIN_RESOLUTION}, {MAX_RESOLUTION}]",
                       {"field": "tet_resolution", "value": resolution})


def marching_tets(positions: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable marching tetrahedra. ``positions [V,3]``, ``sdf [V]`` (negative inside), ``tets [T,4]``
    (long) -> ``(vertices [M,3], faces [F,3] long)``: one vertex on each sign-changing edge at the linear zero
    crossing (shared by every tetrahedron with that edge, hence watertight), faces wound counter-clockwise seen
    from outside. Gradients flow to ``positions`` and ``sdf`` through the crossings."""
    dev = positions.device
    inside = sdf[tets] < 0                                                          # [T,4]
    count = inside.sum(-1)
    keep = (count > 0) & (count < 4)
    tets, inside = tets[keep], inside[keep]
    if len(tets) == 0:
        return positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev)
    pairs = tets[:, torch.tensor(TET_EDGES, device=dev)]                            # [T,6,2]
    a, b = pairs.min(-1).values, pairs.max(-1).values
    key = a * sdf.numel() + b
    uniq, inverse = torch.unique(key.reshape(-1), return_inverse=True)
    ea, eb = uniq // sdf.numel(), uniq % sdf.numel()
    crossing = (sdf[ea] < 0) != (sdf[eb] < 0)
    vid = torch.cumsum(crossing.long(), 0) - 1                                      # unique edge -> output vertex
    ea, eb = ea[crossing], eb[crossing]
    sa, sb = sdf[ea, None], sdf[eb, None]
    verts = (positions[ea] * sb - positions[eb] * sa) / (sb - sa)
    code = (inside.long() << torch.arange(4, device=dev)).sum(-1)
    local = triangle_table().to(dev)[code]                                          # [T,2,3]
    edge_vertex = vid[inverse.reshape(-1, 6)]                                       # [T,6]
    valid = local[..., 0] >= 0
    faces = torch.gather(edge_vertex[:, None, :].expand(-1, 2, -1), 2, local.clamp_min(0))[valid]   # [F,3]
    # wind each triangle so its normal points from the tetrahedron's inside vertices to its outside ones
    with torch.no_grad():
        p = positions[tets]
        w = inside.float()
        towards_out = ((p * (1 - w)[..., None]).sum(1) / (1 - w).sum(1, keepdim=True)
                       - (p * w[..., None]).sum(1) / w.sum(1, keepdim=True))
        towards_out = towards_out[:, None].expand(-1, 2, -1)[valid]
        v = verts.detach()[faces]
        normal = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        flip = (normal * towards_out).sum(-1) < 0
    faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return verts, faces


class DMTet(torch.nn.Module):
    """Deformable tetrahedral grid of ``resolution`` cells per side over ``[-scale, scale]^3`` (module docstring)."""

    def __init__(self, resolution: int, scale: float = 1.0, sdf: torch.Tensor | None = None):
        super().__init__()
        check_resolution(resolution)
        self.resolution, self.scale = resolution, float(scale)
        n = resolution + 1
        self.sdf = torch.nn.Parameter(torch.ones(n, n, n) if sdf is None else sdf.reshape(n, n, n).clone())
        self.deformation = torch.nn.Parameter(torch.zeros(n, n, n, 3))

    @property
    def cell(self) -> float:
        return 2 * self.scale / self.resolution

    def lattice(self) -> torch.Tensor:
        """Undeformed vertex positions ``[R+1,R+1,R+1,3]``."""
        axis = torch.linspace(-self.scale, self.scale, self.resolution + 1, device=self.sdf.device)
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)

    def positions(self) -> torch.Tensor:
        """Deformed vertex positions ``[R+1,R+1,R+1,3]`` (each within one cell of its lattice point)."""
        return self.lattice() + self.cell * torch.tanh(self.deformation)

    def crossing_cells(self) -> torch.Tensor:
        """``[K,3]`` cells whose corners have both signs (the only ones marching visits)."""
        s = self.sdf.detach()[None, None]
        hi = F.max_pool3d(s, 2, stride=1)[0, 0]
        lo = -F.max_pool3d(-s, 2, stride=1)[0, 0]
        return torch.nonzero((lo < 0) & (hi >= 0))

    def vertex_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Deformed positions ``[N,3]`` of flat vertex ids ``[N]`` (x-major), without building the whole lattice."""
        n = self.resolution + 1
        ijk = torch.stack([ids // (n * n), (ids // n) % n, ids % n], -1).to(self.sdf.dtype)
        return -self.scale + self.cell * ijk + self.cell * torch.tanh(self.deformation.reshape(-1, 3)[ids])

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The extracted mesh ``(vertices [M,3], faces [F,3])``, differentiable w.r.t. ``sdf`` and ``deformation``;
        only the vertices of sign-changing cells are gathered."""
        tets = cell_tets(self.crossing_cells(), self.resolution)
        used, local = torch.unique(tets, return_inverse=True)
        return marching_tets(self.vertex_positions(used), self.sdf.reshape(-1)[used], local.reshape(tets.shape))


class ColorVolume(torch.nn.Module):
    """A texture field: RGB logits on a dense ``resolution^3`` grid over ``[-scale, scale]^3``, sampled
    trilinearly; ``forward(points [N,3]) -> [N,3]`` in [0,1]."""

    def __init__(self, resolution: int = 128, scale: float = 1.0, rgb: torch.Tensor | None = None):
        super().__init__()
        self.scale = float(scale)
        init = torch.full((resolution,) * 3 + (3,), 0.5) if rgb is None else rgb
        self.logits = torch.nn.Parameter(torch.logit(init.clamp(1e-3, 1 - 1e-3)).permute(3, 0, 1, 2)[None].clone())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(sample_volume(self.logits, points, self.scale).T)

    @classmethod
    def from_points(cls, points: torch.Tensor, rgb: torch.Tensor, resolution: int, scale: float) -> "ColorVolume":
        """Each cell takes the colour of the nearest of ``points [N,3]`` (colours ``rgb [N,3]`` in [0,1]), e.g.
        the centres of distilled Gaussians."""
        from scipy.spatial import cKDTree

        axis = torch.linspace(-scale, scale, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        _, idx = cKDTree(points.detach().cpu().numpy()).query(grid.numpy(), k=1)
        init = rgb.detach().cpu().float()[torch.from_numpy(idx)].reshape(resolution, resolution, resolution, 3)
        return cls(resolution, scale, init)


def sample_volume(volume: torch.Tensor, points: torch.Tensor, scale: float) -> torch.Tensor:
    """Trilinear samples ``[C,N]`` of ``volume [1,C,X,Y,Z]`` (indexed x, y, z; corners at ``±scale``) at world
    ``points [N,3]``; clamped at the border."""
    g = (points / scale).flip(-1).reshape(1, -1, 1, 1, 3).to(volume.dtype)          # grid_sample wants (z, y, x)
    return F.grid_sample(volume, g, mode="bilinear", padding_mode="border", align_corners=True)[0, :, :, 0, 0]


@dataclass
class VolumeSDF:
    """A signed distance sampled on a lattice: ``values [N,N,N]`` over ``[-scale, scale]^3``; callable on world
    points ``[P,3] -> [P]`` (trilinear)."""

    values: torch.Tensor
    scale: float = 1.0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return sample_volume(self.values.to(points)[None, None], points, self.scale)[0]

    @classmethod
    def from_occupancy(cls, inside: np.ndarray | torch.Tensor, scale: float = 1.0) -> "VolumeSDF":
        """Signed Euclidean distance transform of a boolean lattice ``[N,N,N]`` (the boundary is half a spacing
        from the last inside point), in world units."""
        from scipy.ndimage import distance_transform_edt

        occ = np.asarray(inside.cpu() if isinstance(inside, torch.Tensor) else inside, bool)
        h = 2 * scale / (occ.shape[0] - 1)
        outside_d = distance_transform_edt(~occ) if occ.any() else np.full(occ.shape, occ.shape[0], float)
        inside_d = distance_transform_edt(occ) if (~occ).any() else np.full(occ.shape, occ.shape[0], float)
        sdf = np.where(occ, -(inside_d - 0.5), outside_d - 0.5) * h
        return cls(torch.from_numpy(sdf).float(), scale)


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, resolution: int, scale: float = 1.0) -> np.ndarray:
    """Inside test of a closed mesh at the ``(N+1)^3`` lattice over ``[-scale, scale]^3``, ``N = resolution``: the
    parity of surface crossings above each lattice point along +z (columns nudged off the lattice so no ray grazes
    an edge). Returns bool ``[N+1,N+1,N+1]``."""
    n = resolution + 1
    h = 2 * scale / resolution
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]                       # [F,3,3]
    nudge = np.array([0.317e-4, 0.713e-4]) * h
    lo_ij = np.clip(np.ceil((tri[..., :2].min(1) - nudge + scale) / h), 0, n).astype(np.int64)
    hi_ij = np.clip(np.floor((tri[..., :2].max(1) - nudge + scale) / h), -1, n - 1).astype(np.int64)
    span = np.maximum(hi_ij - lo_ij + 1, 0)
    count = span[:, 0] * span[:, 1]
    fid = np.repeat(np.arange(len(tri)), count)
    local = np.arange(len(fid)) - np.repeat(np.cumsum(count) - count, count)
    ij = lo_ij[fid] + np.stack([local // np.maximum(span[fid, 1], 1), local % np.maximum(span[fid, 1], 1)], -1)
    xy = ij * h - scale + nudge
    a, b, c = tri[fid, 0], tri[fid, 1], tri[fid, 2]
    d = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    d = np.where(np.abs(d) < 1e-300, 1e-300, d)
    wb = ((xy[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (xy[:, 1] - a[:, 1])) / d
    wc = ((b[:, 0] - a[:, 0]) * (xy[:, 1] - a[:, 1]) - (xy[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / d
    hit = (wb >= 0) & (wc >= 0) & (wb + wc <= 1)
    z = (1 - wb - wc) * a[:, 2] + wb * b[:, 2] + wc * c[:, 2]
    column = ij[hit, 0] * n + ij[hit, 1]
    z = z[hit]
    key = np.sort(column + np.clip((z + scale) / (2 * scale + h), 0, 1 - 1e-9))    # column-major, then by z
    zq = np.clip((np.arange(n) * h) / (2 * scale + h), 0, 1 - 1e-9)
    query = np.arange(n * n)[:, None] + zq[None, :]                                 # [columns, k]
    above = np.searchsorted(key, np.arange(n * n) + 1.0)[:, None] - np.searchsorted(key, query)
    return (above % 2 == 1).reshape(n, n, n)


def fit_sdf(dmtet: DMTet, target: Callable[[torch.Tensor], torch.Tensor], steps: int = 100, lr: float = 1e-3,
            surface_weight: float = 1.0, generator: torch.Generator | None = None) -> list[float]:
    """Initialise ``dmtet`` from a target SDF (world points ``[P,3] -> [P]``): set the vertex values to it, then
    ``steps`` Adam steps on ``mean((sdf - target(vertices))^2) + surface_weight * mean(target(surface)^2)`` over
    sdf and deformation (vertices where the target is within two cells of zero). Returns the loss per step."""
    with torch.no_grad():
        dmtet.sdf.copy_(target(dmtet.positions().reshape(-1, 3)).reshape(dmtet.sdf.shape))
    opt = torch.optim.Adam([dmtet.sdf, dmtet.deformation], lr=lr)
    band = 2 * dmtet.cell
    losses = []
    for _ in range(steps):
        pos = dmtet.positions().reshape(-1, 3)
        near = dmtet.sdf.detach().reshape(-1).abs() < band
        loss = ((dmtet.sdf.reshape(-1)[near] - target(pos[near])) ** 2).mean() / dmtet.cell ** 2
        verts, _ = dmtet.surface()
        if len(verts):
            loss = loss + surface_weight * (target(verts) ** 2).mean() / dmtet.cell ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
