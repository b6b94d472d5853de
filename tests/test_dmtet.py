"""DMTet: the generated tetrahedral grid, marching tetrahedra against analytic surfaces, gradients against finite
differences, the mesh inside test against an analytic ball, SDF fitting to Spot (Chamfer), rendering."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gen3d.backend.errors import BadInput
from gen3d.backend.representations.dmtet import (DMTet, VolumeSDF, fit_sdf, marching_tets, mesh_occupancy, tet_grid,
                                                 triangle_table)

SPOT = Path(__file__).resolve().parents[1] / "gen3d" / "backend" / "data" / "spot" / "spot_triangulated.obj"


def _edge_use(faces: np.ndarray) -> np.ndarray:
    """How many faces use each undirected edge."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)[1]


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def test_tet_grid_partitions_the_cube_conformingly():
    verts, tets = tet_grid(4)
    assert verts.shape == (125, 3) and tets.shape == (6 * 64, 4)
    p = verts[tets].double()
    vol = torch.linalg.det(p[:, 1:] - p[:, :1]).abs() / 6
    assert torch.all(vol > 0) and math.isclose(float(vol.sum()), 8.0, rel_tol=1e-9)   # fills [-1, 1]^3 exactly
    # conforming: every triangle is shared by two tetrahedra, except those on the cube's surface (6 * 4^2 * 2)
    faces = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]]).sort(-1).values
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2} and int((counts == 1).sum()) == 6 * 16 * 2


def test_triangle_table_covers_every_sign_pattern():
    table = triangle_table()
    for code in range(16):
        inside = bin(code).count("1")
        n = int((table[code, :, 0] >= 0).sum())
        assert n == {0: 0, 4: 0, 1: 1, 3: 1, 2: 2}[inside]


@pytest.mark.parametrize("resolution", [16, 32])
def test_marching_tets_of_a_sphere_is_the_sphere_and_watertight(resolution):
    radius = 0.6
    d = DMTet(resolution)
    with torch.no_grad():
        d.sdf.copy_(d.lattice().norm(dim=-1) - radius)
    v, f = d.surface()
    v, f = v.detach().numpy(), f.numpy()
    h = 2.0 / resolution
    # linear interpolation along an edge of length <= sqrt(3) h misses a sphere by at most 3 h^2 / (8 r)
    assert np.abs(np.linalg.norm(v, axis=1) - radius).max() < 3 * h * h / (8 * radius) + 1e-6
    assert set(_edge_use(f).tolist()) == {2}                                # closed 2-manifold
    assert math.isclose(_signed_volume(v, f), 4 / 3 * math.pi * radius ** 3, rel_tol=0.03)   # wound outward


def test_marching_tets_gradients_match_finite_differences():
    torch.manual_seed(0)
    pos = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    sdf = torch.tensor([-0.3, 0.4, 0.2, -0.5, 0.7], dtype=torch.float64, requires_grad=True)
    tets = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    weights = torch.rand(6, 3, dtype=torch.float64)

    def f(p, s):
        v, faces = marching_tets(p, s, tets)
        return (v * weights[:len(v)]).sum()

    assert torch.autograd.gradcheck(f, (pos, sdf))
    # and through the module: both the SDF and the deformation get gradients, only near the surface
    d = DMTet(8)
    with torch.no_grad():
        d.sdf.copy_(d.lattice().norm(dim=-1) - 0.5)
    v, _ = d.surface()
    v.square().sum().backward()
    near = (d.sdf.detach().abs() < 2 * d.cell)
    assert d.sdf.grad.abs()[near].sum() > 0 and d.sdf.grad[~near].abs().sum() == 0
    assert d.deformation.grad.abs().sum() > 0


def test_mesh_occupancy_matches_an_analytic_ball():
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.7)
    occ = mesh_occupancy(ball.vertices, ball.faces, 40)
    axis = np.linspace(-1, 1, 41)
    r = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), axis=-1)
    far = np.abs(r - 0.7) > 0.01                       # the icosphere is within 0.3 % of the sphere
    assert np.array_equal(occ[far], (r < 0.7)[far])
    sdf = VolumeSDF.from_occupancy(occ)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.3, 0.0]])
    assert torch.allclose(sdf(pts), torch.tensor([-0.7, 0.2, -0.4]), atol=0.05)


def test_fitting_spots_sdf_converges_to_spot():
    import trimesh
    from scipy.spatial import cKDTree

    from gen3d.backend.pipelines.stages.dmtet_geometry import dmtet_from_mesh

    spot = trimesh.load(SPOT, force="mesh", process=False)
    spot.merge_vertices(merge_tex=True, merge_norm=True)
    assert spot.is_watertight
    v = spot.vertices - spot.bounds.mean(0)
    d = dmtet_from_mesh(v, spot.faces, 32, 0)
    losses = fit_sdf(d, VolumeSDF.from_occupancy(mesh_occupancy(v, spot.faces, 64, d.scale), d.scale), steps=15)
    assert losses[-1] < losses[0]
    sv, sf = d.surface()
    fitted = trimesh.Trimesh(sv.detach().numpy(), sf.numpy(), process=False)
    assert set(_edge_use(sf.numpy()).tolist()) == {2}
    a = trimesh.sample.sample_surface(fitted, 60000, seed=0)[0]
    b = trimesh.sample.sample_surface(trimesh.Trimesh(v, spot.faces), 60000, seed=1)[0]
    chamfer = (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2
    diag = float(np.linalg.norm(spot.bounds[1] - spot.bounds[0]))
    assert chamfer / diag < 0.006                      # measured 0.38 % at 32 cells (note in the issue)


def test_resolution_out_of_range_is_bad_input():
    from gen3d.backend.pipelines.magic123 import Magic123Options

    with pytest.raises(BadInput, match="tet grid resolution"):
        DMTet(4)
    with pytest.raises(BadInput, match="tet_resolution"):
        Magic123Options.resolve("standard", {"tet_resolution": 1024})


def test_render_silhouette_and_normals_of_a_sphere():
    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.pipelines.stages.dmtet_geometry import render_dmtet
    from gen3d.backend.representations.dmtet import ColorVolume

    d = DMTet(24)
    with torch.no_grad():
        d.sdf.copy_(d.lattice().norm(dim=-1) - 0.5)
    cams = orbit_cameras(0.0, 0.0, 2.0, 40.0, 64, 64)
    out, _, _ = render_dmtet(d, ColorVolume(8), cams, torch.ones(1, 3), normal_shading=True)
    # the silhouette of a ball of radius r at distance D is a disc of angular radius asin(r / D)
    f = 32 / math.tan(math.radians(20))
    disc = math.pi * (f * math.tan(math.asin(0.5 / 2.0))) ** 2
    assert abs(float(out.alpha.detach().sum()) - disc) / disc < 0.03
    # normal shading: the centre pixel sees the normal pointing at the camera (-Y), colour (n + 1) / 2
    assert torch.allclose(out.rgb[0, 32, 32], torch.tensor([0.5, 0.0, 0.5]), atol=0.05)
    assert math.isclose(float(out.depth[0, 32, 32]), 1.5, abs_tol=0.01)
