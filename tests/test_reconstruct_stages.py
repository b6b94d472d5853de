"""Stages of the reconstruction backbone on analytic scenes (references computed by ray casting, not by our
renderers): Gaussians -> mesh, bake through a known UV map, refinement."""

from __future__ import annotations

import math

import numpy as np
import torch

from gen3d.backend.geometry.cameras import Cameras, orbit_cameras
from gen3d.backend.pipelines.stages.bake_texture import BakeConfig, bake_texture, pull_push_fill
from gen3d.backend.pipelines.stages.extract_mesh import MeshExtractConfig, extract_mesh, ray_max_density
from gen3d.backend.pipelines.stages.refine_texture import (RefineConfig, images_as_targets, photometric_error,
                                                     refine_texture)
from gen3d.backend.pipelines.stages.surfels import quats_from_normals
from gen3d.backend.representations.mesh import TexturedMesh


def _discs_facing(normal: torch.Tensor, center: torch.Tensor, radius: float, scale: float):
    """Flat Gaussian discs tangent to a sphere at the unit ``normal [N,3]`` (local z axis along it): means, quats,
    scales."""
    return (center + radius * normal, quats_from_normals(normal),
            torch.tensor([scale, scale, 0.08 * scale]).expand(len(normal), 3))


def _sphere_discs(center: torch.Tensor, radius: float, n: int):
    """``n`` discs at random points of a sphere."""
    return _discs_facing(torch.nn.functional.normalize(torch.randn(n, 3), dim=-1), center, radius, 0.05)


def test_sphere_of_gaussians_meshes_to_that_sphere_in_place():
    torch.manual_seed(0)
    center, radius, n = torch.tensor([0.3, -0.2, 1.1]), 0.6, 4000
    means, quats, scales = _sphere_discs(center, radius, n)
    mesh = extract_mesh(means, quats, scales, torch.full((n,), 0.9),
                        MeshExtractConfig(resolution=48, target_faces=3000))
    r = np.linalg.norm(mesh.vertices - center.numpy(), axis=1)
    voxel = 2.2 * radius / 48  # the grid spans the discs plus margins; discs thinner than a voxel mesh within one
    assert abs(r.mean() - radius) < voxel and r.std() < 0.04 * radius and r.min() > radius - voxel
    assert 2500 <= len(mesh.faces) <= 3100 and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    np.testing.assert_allclose(mesh.bounds.mean(0), center.numpy(), atol=0.02)


def test_far_outlier_gaussians_are_left_out_of_the_grid():
    """The grid spans the 0.1-99.9 % quantiles of the centres: a few far outliers neither crash nor stretch it."""
    torch.manual_seed(1)
    center, radius, n = torch.tensor([0.0, 0.0, 0.0]), 0.5, 2000
    means, quats, scales = _sphere_discs(center, radius, n)
    means = torch.cat([means, torch.tensor([[8.0, 0.0, 0.0], [0.0, -9.0, 3.0]])])
    quats = torch.cat([quats, torch.tensor([[1.0, 0, 0, 0]] * 2)])
    scales = torch.cat([scales, torch.full((2, 3), 0.05)])
    mesh = extract_mesh(means, quats, scales, torch.full((n + 2,), 0.9),
                        MeshExtractConfig(resolution=32, target_faces=2000))
    assert np.abs(mesh.vertices).max() < 0.7


def test_a_shell_of_sparse_surfels_meshes_to_one_outer_surface_and_wide_openings_stay_open():
    """3000 discs of sigma 0.02 on a sphere of radius 0.6 leave gaps between neighbours where the density is below
    the level: the inside leaks to the outside, and filling only what is enclosed meshed the shell's inner wall too
    (volume ~1 % of the ball). Sealed, the mesh is the one outer sphere, also with three round pinholes ~3 voxels
    across; openings ~12 voxels across stay open (a thin shell, not a ball)."""
    i = torch.arange(3000) + 0.5
    z, phi = 1 - 2 * i / 3000, math.pi * (1 + 5 ** 0.5) * i
    normal = torch.stack([(1 - z * z).sqrt() * torch.cos(phi), (1 - z * z).sqrt() * torch.sin(phi), z], -1)
    holes = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, -1.0, 0.2], [-0.3, 0.4, -1.0]]), dim=-1)
    ball = 4 / 3 * math.pi * 0.6 ** 3
    cfg = MeshExtractConfig(resolution=48, target_faces=0)
    for opening_deg, closed in ((0.0, True), (4.0, True), (15.0, False)):
        keep = ((normal @ holes.T) < math.cos(math.radians(opening_deg))).all(-1)
        means, quats, scales = _discs_facing(normal[keep], torch.zeros(3), 0.6, 0.02)
        mesh = extract_mesh(means, quats, scales, torch.full((len(means),), 0.9), cfg)
        if closed:
            r = np.linalg.norm(mesh.vertices, axis=1)
            assert mesh.is_watertight and 0.95 < mesh.volume / ball < 1.15, opening_deg
            assert r.min() > 0.9 * 0.6, opening_deg  # no inner wall
        else:
            assert abs(mesh.volume) / ball < 0.1


def _ring_cameras(size: int) -> Cameras:
    return orbit_cameras([10, 40, -20, 70, 25, 0], [0, 60, 130, 200, 260, 320], 3.0, 40, size, size)


def test_ray_maximum_of_a_density_grid_matches_the_analytic_peak():
    """A Gaussian blob on a grid: the maximum along a ray is exp(-d^2 / 2 s^2), d = the ray's distance to its centre."""
    c, s, n = torch.tensor([0.1, -0.05, 0.2]), 0.3, 64
    lo, voxel = torch.full((3,), -1.0), 2.0 / (n - 1)
    x = lo[0] + voxel * torch.arange(n)
    X, Y, Z = torch.meshgrid(x, x, x, indexing="ij")
    grid = torch.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * s * s))
    cams = _ring_cameras(24)
    peaks = ray_max_density(grid, lo, voxel, cams)
    o, d = cams.pixel_rays()
    dist = torch.linalg.cross(c - o, d, dim=-1).norm(dim=-1)
    np.testing.assert_allclose(peaks.numpy(), torch.exp(-dist ** 2 / (2 * s * s)).numpy(), atol=0.02)


def test_the_mesh_level_follows_the_object_masks():
    """Blurry Gaussians on a sphere of radius 0.5 have no single right density level; given masks of a sphere of
    radius R (by ray casting), the extracted mesh takes that radius, also when only a pixel subset is scored."""
    n = 2000
    k = torch.arange(n) + 0.5  # evenly spread (Fibonacci) points
    z, phi = 1 - 2 * k / n, math.pi * (1 + 5 ** 0.5) * k
    means = 0.5 * torch.stack([(1 - z * z).sqrt() * torch.cos(phi), (1 - z * z).sqrt() * torch.sin(phi), z], -1)
    quats, scales = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.04)
    cams = _ring_cameras(64)
    o, d = cams.pixel_rays()
    dist = torch.linalg.cross(-o, d, dim=-1).norm(dim=-1)
    for radius, rays in ((0.545, 600_000), (0.58, 3000)):  # all 24k rays; every 3rd pixel per axis
        mesh = extract_mesh(means, quats, scales, torch.full((n,), 0.5),
                            MeshExtractConfig(resolution=64, silhouette_rays=rays), cams, dist < radius)
        r = np.linalg.norm(mesh.vertices, axis=1)
        assert abs(r.mean() - radius) < 0.008, (radius, r.mean())


# --- a textured square in the z = 0 plane, seen by pinhole cameras (images by ray casting) ------------------------
def _pattern(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A smooth colour field over the unit square ``[..., 3]``."""
    return torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * u), 0.5 + 0.4 * torch.cos(2 * math.pi * v),
                        0.2 + 0.6 * u * v], -1)


def _square_mesh(texture=None) -> TexturedMesh:
    v = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
    uv = (v[:, :2] + 1) / 2
    return TexturedMesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), torch.tensor([[0.0, 0, 1]]).expand(4, 3), uv,
                        texture)


def _square_views(size: int = 64) -> tuple[Cameras, torch.Tensor]:
    cams = orbit_cameras([60, 70, 80, 50], [0, 90, 200, 300], 3.0, 50, size, size)
    o, d = cams.pixel_rays()
    t = -o[..., 2] / d[..., 2]
    p = o + t[..., None] * d
    hit = ((p[..., 0].abs() <= 1) & (p[..., 1].abs() <= 1) & (t > 0)).float()
    rgb = _pattern((p[..., 0] + 1) / 2, (p[..., 1] + 1) / 2) * hit[..., None]
    return cams, torch.cat([rgb, hit[..., None]], -1)


def _texel_truth(res: int) -> torch.Tensor:
    c = (torch.arange(res) + 0.5) / res
    v, u = torch.meshgrid(1 - c, c, indexing="ij")  # row 0 = v = 1
    return _pattern(u, v)


def test_bake_reproduces_a_known_texture_through_a_known_uv_map():
    cams, images = _square_views()
    texture, metrics = bake_texture(_square_mesh(), cams, images, BakeConfig(resolution=32))
    err = (texture - _texel_truth(32)).abs()
    assert metrics["bake_coverage"] > 0.99
    assert err[2:-2, 2:-2].mean() < 0.02 and err.max() < 0.15


def test_bake_does_not_darken_texels_at_the_mask_edge():
    """Empty pixels are black in straight-alpha images; texels projecting between an edge pixel and an empty one
    must keep the object's colour (premultiplied sampling), even where the mask is smaller than the mesh."""
    cams, images = _square_views()
    o, d = cams.pixel_rays()
    p = o + (-o[..., 2] / d[..., 2])[..., None] * d
    inner = (p[..., 0].abs() <= 0.8) & (p[..., 1].abs() <= 0.8)   # the masks cover less than the square
    images = torch.cat([torch.full_like(images[..., :3], 0.9) * inner[..., None], inner[..., None].float()], -1)
    texture, _ = bake_texture(_square_mesh(), cams, images, BakeConfig(resolution=32))
    np.testing.assert_allclose(texture.numpy(), 0.9, atol=1e-4)


def test_pull_push_fills_holes_from_neighbours():
    color = torch.zeros(16, 16, 3)
    known = torch.zeros(16, 16, dtype=torch.bool)
    color[:, :8], known[:, :8] = 0.2, True
    color[:, 8:12], known[:, 8:12] = 0.8, True
    filled = pull_push_fill(color, known)
    assert torch.equal(filled[known], color[known])
    assert filled[:, 12:].min() > 0.7  # the hole takes its nearest neighbours' colour


def test_refinement_lowers_the_photometric_error():
    cams, images = _square_views(48)
    noisy = (_texel_truth(32) + 0.3 * torch.randn(32, 32, 3, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    mesh = _square_mesh(noisy)
    before = photometric_error(mesh, cams, images)
    refined, metrics = refine_texture(mesh, cams, images_as_targets(images),
                                      RefineConfig(steps=30, views_per_step=2, lr_texture=0.05),
                                      torch.Generator().manual_seed(0))
    after = photometric_error(refined, cams, images)
    assert after < 0.5 * before
    assert metrics["refine_loss_last"] < metrics["refine_loss_first"]


def _stripes(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Colour stripes about two pixels wide in :func:`_square_views`' images at 48 px ``[..., 3]``."""
    s = 0.5 + 0.4 * torch.sin(2 * math.pi * 12 * u)
    return torch.stack([s, 1 - s, 0.5 + 0.4 * torch.cos(2 * math.pi * 3 * v)], -1)


def test_supersampled_refinement_recovers_detail_of_antialiased_views():
    """Targets as a camera integrates a pixel: each pixel the mean of 4 x 4 ray-cast samples of the striped square.
    Refined from grey, the texture gets closer to the true texels with 2 x 2 samples a pixel than with one (the
    one-sample render sees the stripes through a coarser mip level and at its pixel centres only)."""
    size, sub = 48, 4
    cams = orbit_cameras([60, 70, 80, 50], [0, 90, 200, 300], 3.0, 50, size, size)
    o, d = cams.resized(size * sub, size * sub).pixel_rays()
    p = o + (-o[..., 2] / d[..., 2])[..., None] * d
    hit = ((p[..., 0].abs() <= 1) & (p[..., 1].abs() <= 1)).float()[..., None]
    fine = torch.cat([_stripes((p[..., 0] + 1) / 2, (p[..., 1] + 1) / 2) * hit, hit], -1)
    images = torch.nn.functional.avg_pool2d(fine.permute(0, 3, 1, 2), sub).permute(0, 2, 3, 1)
    rgb = images[..., :3] / images[..., 3:].clamp_min(1e-6)          # straight colour
    images = torch.cat([rgb.clamp(0, 1), images[..., 3:]], -1)
    c = (torch.arange(64) + 0.5) / 64
    truth = _stripes(*reversed(torch.meshgrid(1 - c, c, indexing="ij")))  # row 0 = v = 1
    errors = {}
    for k in (1, 2):
        refined, _ = refine_texture(_square_mesh(torch.full((64, 64, 3), 0.5)), cams, images_as_targets(images),
                                    RefineConfig(steps=80, views_per_step=2, lr_texture=0.05, supersample=k),
                                    torch.Generator().manual_seed(0))
        errors[k] = float((refined.texture - truth).abs()[4:-4, 4:-4].mean())
    assert errors[2] < 0.8 * errors[1], errors
