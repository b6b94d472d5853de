"""The Gaussian fit keeps an opening open (issue 30): an open hemispherical shell, textured with a different
checker inside and outside, rendered by the mesh rasterizer from two rings of views; its visual hull has a cap
across the opening. Judged against the analytic shape: where the stereo initialisation puts its points, and the
fitted Gaussians' rendered depth through the opening from below vs the true inner surface's depth (ray-sphere
intersection) and the cap's (ray-plane)."""

from __future__ import annotations

import math

import torch

from gen3d.backend.geometry.cameras import Cameras, orbit_cameras
from gen3d.backend.pipelines.stages.fit_gaussians import FitConfig, fit_gaussians, init_gaussians, render_gaussians
from gen3d.backend.pipelines.stages.mesh_render import render_mesh
from gen3d.backend.pipelines.stages.stereo import StereoConfig
from gen3d.backend.pipelines.stages.visual_hull import visual_hull
from gen3d.backend.representations.mesh import TexturedMesh


def open_shell(n: int = 40, thickness: float = 0.01, theta_max: float = 0.5 * math.pi) -> TexturedMesh:
    """A unit hemisphere (z >= 0, opening down; the whole sphere with ``theta_max`` pi) as two layers ``thickness``
    apart: the outer one textured with a warm checker (left half of the texture), the inner one with a cool checker
    (right half)."""
    u, v = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    phi, theta = 2 * math.pi * u, theta_max * v
    unit = torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)
    ij = torch.arange(n * n).reshape(n, n)
    quads = torch.stack([ij[:-1, :-1], ij[1:, :-1], ij[1:, 1:], ij[:-1, 1:]], -1).reshape(-1, 4)
    tri = torch.cat([quads[:, [0, 2, 1]], quads[:, [0, 3, 2]]])           # counter-clockwise from outside
    uv = torch.stack([u, v], -1).reshape(-1, 2) * 0.48 + 0.01
    vertices = torch.cat([unit.reshape(-1, 3), (1 - thickness) * unit.reshape(-1, 3)])
    faces = torch.cat([tri, tri[:, [0, 2, 1]] + n * n])
    uvs = torch.cat([uv, uv + torch.tensor([0.5, 0.0])])
    ty, tx = torch.meshgrid(torch.arange(64), torch.arange(128), indexing="ij")
    check = (((tx % 64) // 8 + ty // 8) % 2).float()[..., None]
    warm = torch.tensor([0.9, 0.35, 0.2]) + check * torch.tensor([0.05, 0.5, 0.1])
    cool = torch.tensor([0.2, 0.4, 0.9]) + check * torch.tensor([0.1, 0.45, -0.3])
    texture = torch.where(tx[..., None] < 64, warm, cool)
    return TexturedMesh(vertices, faces, None, uvs, texture)


def views(mesh: TexturedMesh, size: int = 64) -> tuple[Cameras, torch.Tensor]:
    """Two rings of 8 cameras 35 degrees above and below the shell's middle, straight RGBA renders."""
    el = torch.tensor([35.0] * 8 + [-35.0] * 8)
    az = torch.arange(16) * 45.0 + (torch.arange(16) >= 8) * 22.5
    cams = orbit_cameras(el, az, 4.5, 40.0, size, size, target=(0.0, 0.0, 0.5))
    r = render_mesh(mesh, cams)
    a = r.alpha.clamp(0, 1)
    return cams, torch.cat([(r.rgb / a.clamp_min(1e-6)).clamp(0, 1), a], -1)


def through_opening(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel of ``cams``: whether the ray passes the opening (crosses z = 0 inside the unit circle before
    reaching the sphere), the camera depth of the inner surface it then meets and of the cap (z = 0)."""
    o, d = cams.pixel_rays()
    forward = cams.c2w[:, None, None, :3, 2]
    t_cap = -o[..., 2] / d[..., 2]
    cap_hit = o + d * t_cap[..., None]
    b = (o * d).sum(-1)
    t_far = -b + (b ** 2 - (o * o).sum(-1) + 1).clamp_min(0).sqrt()
    far = o + d * t_far[..., None]
    through = (t_cap > 0) & (cap_hit[..., :2].norm(dim=-1) < 0.95) & (far[..., 2] > 0.05)
    cos = (d * forward).sum(-1)
    return through, t_far * cos, t_cap * cos


def test_stereo_initialisation_leaves_the_cap_out():
    mesh = open_shell()
    cams, imgs = views(mesh)
    g, _, metrics, _ = init_gaussians(cams, imgs, 3000, 48, 0, torch.Generator().manual_seed(0), StereoConfig())
    r, z = g.means.norm(dim=-1), g.means[:, 2]
    voxel = visual_hull(cams, imgs[..., 3], 48).voxel
    on_cap = (z < 0.15) & (r < 0.8)
    assert metrics["init_stereo_points"] > 500
    assert on_cap.float().mean() < 0.05, float(on_cap.float().mean())
    assert ((r - 1).abs() < 2 * voxel).float().mean() > 0.9
    # the hull alone (no stereo) starts a fifth of the Gaussians on the cap: the scene does have one
    g0, _, _, _ = init_gaussians(cams, imgs, 3000, 48, 0, torch.Generator().manual_seed(0), None)
    assert ((g0.means[:, 2] < 0.15) & (g0.means.norm(dim=-1) < 0.8)).float().mean() > 0.15


def test_fitted_depth_through_the_opening_is_nearer_the_inner_surface_than_the_cap():
    mesh = open_shell()
    cams, imgs = views(mesh)
    cfg = FitConfig(steps=150, num_points=3000, max_gaussians=20_000, sh_degree=0, resolutions=(0.5, 1.0),
                    densify_from=50, densify_every=50, hull_resolution=48, stereo=True)
    g, _ = fit_gaussians(cams, imgs, cfg, torch.Generator().manual_seed(0))
    below = cams[8:]
    with torch.no_grad():
        rgbd, alpha, _ = render_gaussians(g, below, render_mode="RGB+ED")
    through, inner, cap = through_opening(below)
    seen = through & (alpha[..., 0] > 0.5)
    assert seen.sum() > 500
    err = (rgbd[..., 3] - inner)[seen]
    gap = (inner - cap)[seen]                       # how far in front the cap would be
    assert float(gap.median()) > 0.5
    # the depth through the opening is nearer the inner surface than the cap (a hull-surface start leaves it on
    # the cap: error = gap). Not on it: the two sides of the sheet need separate Gaussians, and the fit moves the
    # inside ones a few Gaussian sizes inwards, under the outside ones
    assert float(err.abs().median()) < 0.5 * float(gap.median()), (float(err.median()), float(gap.median()))


def test_stereo_depth_pulls_the_inside_onto_the_inner_surface():
    """With two-sided surfels the fit still puts the inside colours a few Gaussian sizes in front of the inner
    surface; an L1 term between the rendered depth and the kept stereo depth pulls them back (measured: median
    depth error through the opening 0.24 -> 0.17 at weight 1; the cap is 0.91 in front). ``reconstruct`` uses 0.1,
    whose effect at this coarse scale (64 px, stereo mismatches beyond two hull voxels left out) is small (0.22)."""
    mesh = open_shell()
    cams, imgs = views(mesh)
    errors = []
    for weight in (0.0, 1.0):
        cfg = FitConfig(steps=150, num_points=3000, max_gaussians=20_000, sh_degree=0, resolutions=(0.5, 1.0),
                        densify_from=50, densify_every=50, hull_resolution=48, stereo=True, two_sided=True,
                        carve=True, stereo_depth_weight=weight)
        g, _ = fit_gaussians(cams, imgs, cfg, torch.Generator().manual_seed(0))
        with torch.no_grad():
            rgbd, alpha, _ = render_gaussians(g, cams[8:], render_mode="RGB+ED")
        through, inner, _ = through_opening(cams[8:])
        seen = through & (alpha[..., 0] > 0.5)
        assert seen.sum() > 500
        errors.append(float((rgbd[..., 3] - inner)[seen].abs().median()))
    assert errors[1] < 0.8 * errors[0], errors


def test_a_supersampled_fit_shrinks_a_sphere_less():
    """Fitted surfels sit inside a convex surface: the low-pass widens overlapping splats, their silhouette grows and
    the fit pulls them in (a two-layer unit sphere at 128 px: median -1.03 px with one sample a pixel). With the last
    level supersampled 2 x 2, its low-pass in sample pixels, -0.62 px."""
    cams, imgs = views(open_shell(80, theta_max=math.pi), 128)
    cfg = FitConfig(steps=300, num_points=3000, max_gaussians=20_000, sh_degree=0, resolutions=(0.5, 1.0),
                    densify_from=50, densify_every=50, hull_resolution=48, stereo=True, two_sided=True, carve=True,
                    stereo_depth_weight=0.1, supersample=2)
    g, _ = fit_gaussians(cams, imgs, cfg, torch.Generator().manual_seed(0))
    px = 4.5 * 2 * math.tan(math.radians(20)) / 128                  # world units per pixel at the sphere
    radial = g.means.norm(dim=-1) - 0.995                              # from the middle of the two layers
    bias = float(radial[g.opacities > 0.5].median()) / px
    assert -0.8 < bias < 0, bias
