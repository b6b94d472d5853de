"""Open and thin surfaces (``stages/fuse_surface.py``) against analytic shapes: flat Gaussian discs laid on a unit
hemisphere, a unit sphere and a bent sheet, rendered by the Gaussian rasterizer and fused; the meshes are judged by
distances to the analytic surfaces, boundary/watertightness and normals, never by the code's own output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from gen3d.backend.geometry.cameras import Cameras, orbit_cameras
from gen3d.backend.pipelines.stages.bake_texture import BakeConfig, bake_texture
from gen3d.backend.pipelines.stages.extract_mesh import MeshExtractConfig
from gen3d.backend.pipelines.stages.fuse_surface import FuseConfig, extract_surface
from gen3d.backend.pipelines.stages.uv_unwrap import UnwrapConfig, uv_unwrap
from gen3d.backend.representations.gaussians import Gaussians

CFG = FuseConfig(resolution=48, extra_views=16, target_faces=8000)


def discs(points: torch.Tensor, normals: torch.Tensor, spacing: float) -> Gaussians:
    """Opaque flat Gaussians (thickness 5 % of ``spacing``) at ``points [N,3]`` facing ``normals [N,3]``."""
    n = torch.nn.functional.normalize(normals, dim=-1)
    q = torch.cat([1 + n[:, 2:], torch.cross(torch.tensor([0.0, 0.0, 1.0]).expand_as(n), n, dim=-1)], -1)
    q[n[:, 2] < -1 + 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    scales = torch.tensor([spacing, spacing, 0.05 * spacing]).expand(len(points), 3)
    return Gaussians.from_activated(points, scales, torch.nn.functional.normalize(q, dim=-1),
                                    torch.full((len(points),), 0.95), torch.full((len(points), 3), 0.5))


def fibonacci(n: int, z_min: float) -> torch.Tensor:
    """``n`` nearly uniform points on the unit sphere above ``z = z_min``."""
    i = torch.arange(n) + 0.5
    z = 1 - (1 - z_min) * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z ** 2)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def two_rings(size: int = 96) -> Cameras:
    """8 cameras 30 degrees above and 8 below the origin, 4 units away."""
    el = torch.tensor([30.0] * 8 + [-30.0] * 8)
    az = torch.arange(16) * 45.0 + (torch.arange(16) >= 8) * 22.5
    return orbit_cameras(el, az, 4.0, 40.0, size, size)


def extract(g: Gaussians, surface: str):
    return extract_surface(g, two_rings(), None, surface, MeshExtractConfig(resolution=48), CFG)


def voxel_of(g: Gaussians) -> float:
    from gen3d.backend.pipelines.stages.fuse_surface import grid_for

    return grid_for(g, CFG.resolution)[1]


def test_open_hemisphere_keeps_its_opening_and_is_two_thin_layers():
    p = fibonacci(3000, 0.0)
    g = discs(p, p, math.sqrt(2 * math.pi / len(p)))
    mesh, metrics = extract(g, "auto")
    assert metrics["surface"] == "open"
    voxel = voxel_of(g)
    pts = trimesh.sample.sample_surface(mesh, 20000, seed=0)[0]
    r = np.linalg.norm(pts, axis=1)
    # nothing spans the opening (a closing cap would put points near the z = 0 disc, far inside the sphere)
    assert np.abs(r - 1).max() < 1.5 * voxel
    assert pts[:, 2].min() > -1.5 * voxel
    # Chamfer to the analytic hemisphere, both ways
    truth = fibonacci(20000, 0.0).numpy()
    from scipy.spatial import cKDTree
    chamfer = 0.5 * (cKDTree(truth).query(pts)[0].mean() + cKDTree(pts).query(truth)[0].mean())
    assert chamfer < 0.6 * voxel, (chamfer, voxel)
    # two layers, normals pointing away from the sheet, within a voxel of it on their own side
    v, n = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    radial = (n * v / np.linalg.norm(v, axis=1, keepdims=True)).sum(1)
    outer, inner = radial > 0.9, radial < -0.9
    assert outer.mean() > 0.3 and inner.mean() > 0.3
    rv = np.linalg.norm(v, axis=1) - 1
    assert 0 < np.median(rv[outer]) < voxel and -voxel < np.median(rv[inner]) < 0


def test_closed_sphere_stays_watertight_and_auto_calls_it_closed():
    p = fibonacci(4000, -1.0)
    g = discs(p, p, math.sqrt(4 * math.pi / len(p)))
    mesh, metrics = extract(g, "open")
    assert metrics["thin_share"] < CFG.open_share  # what auto decides on
    assert mesh.is_watertight and mesh.volume > 0
    r = np.linalg.norm(trimesh.sample.sample_surface(mesh, 20000, seed=0)[0], axis=1)
    assert np.abs(r - 1).mean() < voxel_of(g)
    assert 4 / 3 * math.pi * 0.9 < mesh.volume < 4 / 3 * math.pi * 1.15


def test_bent_sheet_is_open_and_each_side_is_baked_from_its_own_views():
    u, v = torch.meshgrid(torch.linspace(-1, 1, 60), torch.linspace(-0.7, 0.7, 42), indexing="ij")
    z = 0.3 * torch.cos(1.5 * u)
    p = torch.stack([u, v, z], -1).reshape(-1, 3)
    normal = torch.stack([0.45 * torch.sin(1.5 * u), torch.zeros_like(u), torch.ones_like(u)], -1).reshape(-1, 3)
    g = discs(p, normal, 2 / 59)
    mesh, metrics = extract(g, "auto")
    assert metrics["surface"] == "open" and metrics["thin_share"] > 0.8
    vox = voxel_of(g)
    verts = np.asarray(mesh.vertices)
    inside = (np.abs(verts[:, 0]) < 0.9) & (np.abs(verts[:, 1]) < 0.6)
    err = verts[inside, 2] - 0.3 * np.cos(1.5 * verts[inside, 0])
    assert np.abs(err).max() < 1.5 * vox  # no slab: every vertex lies on the sheet, within the layer offset
    # bake: red views from above, blue from below -> the upward layer red, the downward one blue
    cams = two_rings(64)
    up = cams.centers[:, 2:] > 0
    colour = torch.where(up, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    images = torch.cat([colour[:, None, None, :].expand(len(cams), 64, 64, 3), torch.ones(len(cams), 64, 64, 1)], -1)
    textured = uv_unwrap(verts, np.asarray(mesh.faces), UnwrapConfig(resolution=256))
    texture, _ = bake_texture(textured, cams, images, BakeConfig(resolution=256))
    tm = trimesh.Trimesh(textured.vertices.numpy(), textured.faces.numpy(), process=False)
    centre_uv = textured.uvs[textured.faces].mean(1)
    px = (centre_uv[:, 0] * 255).long(), ((1 - centre_uv[:, 1]) * 255).long()
    rgb = texture[px[1], px[0]]
    nz = torch.tensor(np.asarray(tm.face_normals)[:, 2]).float()
    top, bottom = nz > 0.8, nz < -0.8
    assert (rgb[top, 0] > 0.8).float().mean() > 0.95 and (rgb[bottom, 2] > 0.8).float().mean() > 0.95


def test_surface_option_is_validated():
    from gen3d.backend.pipelines.reconstruct import ReconstructOptions

    assert ReconstructOptions(surface="open").surface == "open"
    with pytest.raises(ValueError):
        ReconstructOptions(surface="watertight")


def test_auto_meshes_a_ball_closed_and_a_sheet_beside_it_open():
    """A closed ball of discs and a separate flat sheet: per object, one extraction would serve both (a slab for the
    sheet or an open ball); per component, the ball is watertight and the sheet is two layers on its plane."""
    p = fibonacci(3000, -1.0)
    ball = discs(0.6 * p + torch.tensor([-0.9, 0.0, 0.0]), p, 0.6 * math.sqrt(4 * math.pi / len(p)))
    ball.log_scales[:, 2] = math.log(0.02)  # the density of much thinner discs aliases on the grid
    u, v = torch.meshgrid(torch.linspace(0.2, 1.4, 40), torch.linspace(-0.6, 0.6, 40), indexing="ij")
    sheet = discs(torch.stack([u, v, torch.zeros_like(u)], -1).reshape(-1, 3),
                  torch.tensor([[0.0, 0.0, 1.0]]).expand(1600, 3), 1.2 / 39)
    g = Gaussians(**{k: torch.cat([getattr(ball, k), getattr(sheet, k)]) for k in ("means", "quats", "log_scales",
                                                                                   "opacity_logits", "sh")})
    el = torch.tensor([30.0] * 8 + [-30.0] * 8)
    cams = orbit_cameras(el, torch.arange(16) * 45.0 + (torch.arange(16) >= 8) * 22.5, 5.0, 45.0, 96, 96)
    mesh, metrics = extract_surface(g, cams, None, "auto", MeshExtractConfig(resolution=48), CFG)
    assert metrics["surface"] == "mixed", metrics
    vox = voxel_of(g)
    parts = mesh.split(only_watertight=False)
    left = [m for m in parts if m.centroid[0] < -0.3]
    right = [m for m in parts if m.centroid[0] > 0.0]
    assert len(left) == 1 and left[0].is_watertight
    r = np.linalg.norm(left[0].vertices - np.array([-0.9, 0.0, 0.0]), axis=1)
    assert 0.6 - vox < r.min() and r.max() < 0.6 + 2 * vox, (r.min(), r.max(), vox)
    sheet_verts = np.concatenate([m.vertices for m in right])
    assert np.abs(sheet_verts[:, 2]).max() < 1.5 * vox  # two layers on the plane, not a slab
    assert not any(m.is_watertight for m in right)


def test_what_only_extra_cameras_see_lands_on_the_sheet_the_input_views_saw():
    """A floor seen by the input views from below only (the inside of a box's floor), and a patch of stray
    Gaussians hovering above it that no input view can see: the extra cameras above see the patch, but the mesh
    is the floor's two layers, the upper one where the input views' floor is, with nothing near the patch."""
    u, v = torch.meshgrid(torch.linspace(-1, 1, 60), torch.linspace(-1, 1, 60), indexing="ij")
    floor = torch.stack([u, v, torch.zeros_like(u)], -1).reshape(-1, 3)
    r, phi = torch.meshgrid(torch.linspace(0, 0.4, 12), torch.linspace(0, 2 * math.pi, 40), indexing="ij")
    patch = torch.stack([r * torch.cos(phi), r * torch.sin(phi), 0.25 + 0.1 * r], -1).reshape(-1, 3)
    p = torch.cat([floor, patch])
    g = discs(p, torch.tensor([0.0, 0.0, 1.0]).expand_as(p), 2 / 59)
    below = orbit_cameras(torch.full((8,), -35.0), torch.arange(8) * 45.0, 4.0, 40.0, 96, 96)
    mesh, metrics = extract_surface(g, below, None, "open", MeshExtractConfig(resolution=48), CFG)
    vox = voxel_of(g)
    verts = np.asarray(mesh.vertices)
    inner = (np.abs(verts[:, 0]) < 0.9) & (np.abs(verts[:, 1]) < 0.9)
    assert np.abs(verts[inner, 2]).max() < 2 * vox  # the patch lies flat on the floor (before: 6.8 voxels up)
    # both layers cover the floor: upward faces (the side no input view saw) and downward ones
    nz, area = np.asarray(mesh.face_normals)[:, 2], np.asarray(mesh.area_faces)
    assert area[nz > 0.8].sum() > 0.9 * 4 and area[nz < -0.8].sum() > 0.9 * 4
