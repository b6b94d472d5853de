"""The triplane renderer against an analytic scene: a sphere whose density is decoded from a triplane.

The planes store squared coordinate offsets from the sphere's centre, so the decoder can compute the squared
distance |p - c|^2 from the sampled features (bilinear interpolation of a quadratic is exact up to h^2/4). A step
density inside radius R must then give the silhouette and the depth of ray-sphere intersection, in both published
conventions (OpenLRM: stratified + importance, metric deltas, midpoint compositing; TripoSR: uniform midpoints,
normalised deltas), including a model frame rotated against the world (TripoSR's yaw).
"""

from __future__ import annotations

import math

import mcubes
import numpy as np
import pytest
import torch

from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.models.lrm.config import OPENLRM_PLANES, TRIPOSR_PLANES
from gen3d.backend.models.lrm.model import yaw_matrix
from gen3d.backend.representations.triplane import RenderSettings, TriplaneField

RES = 96


def sphere_field(centre_world, radius_sphere, box, plane_axes, yaw_deg, density):
    """A TriplaneField whose density is ``density`` inside the sphere and 0 outside."""
    m2w = yaw_matrix(yaw_deg)
    c = m2w.T @ torch.tensor(centre_world)  # sphere centre in the model frame
    lin = (torch.arange(RES) + 0.5) / RES * 2 * box - box  # texel centres (align_corners=False)
    planes = torch.zeros(3, 3, RES, RES)
    for i, (a, b) in enumerate(plane_axes):
        # grid_sample: x (axis a) runs along W, y (axis b) along H; store (p_a - c_a)^2 in channel a, once per axis
        for axis, coord in ((a, lin[None, :]), (b, lin[:, None])):
            if not any(axis in plane_axes[j] for j in range(i)):
                planes[i, axis] = ((coord - c[axis]) ** 2).expand(RES, RES)

    def decoder(feats):
        f = feats.reshape(-1, 3, 3)
        d2 = f.sum(dim=(1, 2))  # each axis stored exactly once
        return radius_sphere ** 2 - d2, torch.stack([torch.full_like(d2, 0.2), torch.full_like(d2, 0.6),
                                                     torch.full_like(d2, 0.9)], -1)

    act = lambda raw: density * (raw > 0).float()  # noqa: E731
    return TriplaneField(planes, decoder, act, plane_axes, box, model_from_world=m2w.T if yaw_deg else None)


def analytic_hits(origins, dirs, centre, r):
    oc = origins - torch.tensor(centre)
    b = (oc * dirs).sum(-1)
    disc = b ** 2 - ((oc ** 2).sum(-1) - r ** 2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    return hit, t, (disc.clamp_min(0).sqrt())  # half chord length


CASES = {
    "openlrm": dict(box=1.0, axes=OPENLRM_PLANES, yaw=0.0, density=1000.0,
                    settings=RenderSettings(n_coarse=48, n_importance=48, delta_units="metric", midpoint=True)),
    "triposr": dict(box=0.87, axes=TRIPOSR_PLANES, yaw=-90.0, density=4000.0,
                    settings=RenderSettings(n_coarse=128, delta_units="normalised", midpoint=False)),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_sphere_silhouette_and_depth(mode):
    c = CASES[mode]
    centre, r = (0.15, -0.1, 0.05), 0.45
    field = sphere_field(centre, r, c["box"], c["axes"], c["yaw"], c["density"])
    cams = orbit_cameras([20.0, -10.0], [30.0, 200.0], 2.5, 40.0, 40, 40)
    o, d = (x.reshape(-1, 3) for x in cams.pixel_rays())
    out = field.render_rays(o, d, c["settings"], background=1.0, generator=torch.Generator().manual_seed(0))
    hit, t, half_chord = analytic_hits(o, d, centre, r)

    mask = out["opacity"] > 0.5
    clear = half_chord > 0.05  # pixels whose ray crosses the sphere well inside its silhouette
    assert hit.sum() > 300
    assert (mask & ~hit).sum() == 0, "opacity outside the analytic silhouette"
    assert mask[clear].all(), "missing opacity inside the analytic silhouette"
    assert (mask != hit).sum() <= 0.06 * hit.sum()  # only grazing border pixels may disagree
    assert out["opacity"][~hit].max() < 1e-3
    err = (out["depth"][clear] - t[clear]).abs()
    assert err.max() < 0.04 and err.mean() < 0.015
    # background composited where empty, the sphere's colour where opaque
    assert torch.allclose(out["rgb"][~hit], torch.ones(3), atol=1e-3)
    assert torch.allclose(out["rgb"][clear], torch.tensor([0.2, 0.6, 0.9]), atol=2e-2)


def test_density_grid_meshes_to_the_sphere():
    c = CASES["triposr"]
    centre, r = (0.1, 0.0, -0.05), 0.4
    field = sphere_field(centre, r, c["box"], c["axes"], c["yaw"], 30.0)
    n = 48
    grid = field.density_grid(n)
    verts, _ = mcubes.marching_cubes(grid, 15.0)
    verts = torch.from_numpy(verts.astype(np.float32)) / (n - 1) * 2 * c["box"] - c["box"]  # model frame
    world = verts @ field.model_from_world  # model -> world (rows)
    dist = (world - torch.tensor(centre)).norm(dim=-1)
    voxel = 2 * c["box"] / (n - 1)
    assert (dist - r).abs().max() < voxel
    assert math.isclose(float(dist.mean()), r, abs_tol=0.25 * voxel)
