"""Two-sided flat Gaussians (issue 30): normals of a point cloud against a sphere's, the rotation that faces a
surfel along a normal, and a two-sided disc rendered from both sides against one-sided renders of the same disc
in each colour."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.pipelines.stages.extract_mesh import quat_to_rotmat
from gen3d.backend.pipelines.stages.fit_gaussians import render_gaussians
from gen3d.backend.pipelines.stages.surfels import point_normals, quats_from_normals
from gen3d.backend.representations.gaussians import Gaussians
from gen3d.kernels.gaussians import rasterization


def test_point_normals_of_a_sphere_are_radial():
    points = F.normalize(torch.randn(4000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    cos = (point_normals(points) * points).sum(-1).abs()
    assert float(cos.min()) > 0.97, float(cos.min())


def test_quats_from_normals_turn_z_onto_the_normal():
    normals = torch.cat([F.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)), dim=-1),
                         torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])])
    z = quat_to_rotmat(quats_from_normals(normals))[:, :, 2]
    assert torch.allclose(z, normals, atol=1e-5)


def test_a_two_sided_disc_shows_each_side_its_own_colour():
    red, blue = torch.tensor([[0.9, 0.1, 0.1]]), torch.tensor([[0.1, 0.2, 0.9]])
    tilt = F.normalize(torch.tensor([[0.3, -0.2, 1.0]]), dim=-1)          # the disc's normal
    quats, scales = quats_from_normals(tilt), torch.tensor([[0.4, 0.3, 0.01]])
    disc = Gaussians.from_activated(torch.zeros(1, 3), scales, quats, torch.tensor([0.9]), red)
    disc.sh_back = Gaussians.from_activated(torch.zeros(1, 3), scales, quats, torch.tensor([0.9]), blue).sh
    cams = orbit_cameras(torch.tensor([50.0, -50.0, 20.0, -20.0]), torch.tensor([0.0, 90.0, 200.0, 300.0]), 3.0,
                         40.0, 48, 48)
    rgb, alpha, _ = render_gaussians(disc, cams, torch.zeros(4, 3))
    # the side each camera is on, from its centre and the normal (independent of the renderer's choice)
    above = (cams.centers @ tilt[0]) > 0
    assert above.tolist() == [True, False, True, False]
    for i in range(4):
        colour = red if above[i] else blue
        ref, ref_alpha, _ = rasterization(disc.means, disc.quats, disc.scales, disc.opacities, colour,
                                          cams[i].viewmats(), cams[i].K, 48, 48, backgrounds=torch.zeros(1, 3))
        assert float(ref_alpha.max()) > 0.5
        assert torch.allclose(rgb[i], ref[0], atol=1e-5)
        assert torch.allclose(alpha[i], ref_alpha[0], atol=1e-6)
