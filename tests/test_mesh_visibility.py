"""The mesh renderer's depth test separates the two layers of a sheet (issue 30)."""

import math

import torch

from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.pipelines.stages.mesh_render import render_mesh
from gen3d.backend.representations.mesh import TexturedMesh


def _grid(n: int, half: float, z: float, colour) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An ``n x n`` grid of quads over [-half, half]^2 at height ``z`` with one vertex colour."""
    s = torch.linspace(-half, half, n + 1)
    y, x = torch.meshgrid(s, s, indexing="ij")
    v = torch.stack([x, y, torch.full_like(x, z)], -1).reshape(-1, 3)
    i = torch.arange(n)[:, None] * (n + 1) + torch.arange(n)[None]
    a, b, c, d = i, i + 1, i + n + 1, i + n + 2
    f = torch.cat([torch.stack([a, b, d], -1), torch.stack([a, d, c], -1)]).reshape(-1, 3)
    return v, f, torch.tensor(colour).expand(len(v), 3)


def test_two_layers_a_thousandth_apart_render_only_the_nearer_one():
    """A red sheet 0.002 above a blue one (0.07 % of the 2.8 diagonal), seen from above at grazing to steep angles
    from 3 units: every covered pixel is the red layer's. The blue one is smaller, so every ray from above that
    reaches it crosses the red one first; the grids' triangles do not line up."""
    v1, f1, c1 = _grid(24, 1.0, 0.002, (1.0, 0.0, 0.0))
    v2, f2, c2 = _grid(17, 0.95, 0.0, (0.0, 0.0, 1.0))
    mesh = TexturedMesh(torch.cat([v1, v2]), torch.cat([f1, f2 + len(v1)]), None, None, None,
                        vertex_colors=torch.cat([c1, c2]))
    cams = orbit_cameras(torch.tensor([10.0, 25.0, 50.0, 80.0]), torch.tensor([0.0, 33.0, 71.0, 140.0]), 3.0, 40.0,
                         128, 128)
    r = render_mesh(mesh, cams, antialias=False)
    covered = r.alpha[..., 0] > 0
    assert covered.sum(dim=(1, 2)).min() > 500
    blue = r.rgb[..., 2][covered]
    assert int((blue > 0.5).sum()) == 0, f"{int((blue > 0.5).sum())} of {len(blue)} pixels show the far layer"
    assert math.isfinite(float(r.depth[covered].max()))

