"""Generate from the active camera: the placement's pure math (backend.geometry.placement), checked with a plain
numpy pinhole projection written here, synthetic objects and cameras at non-trivial poses, focal lengths and
aspects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.geometry.cameras import look_at, orbit_cameras
from gen3d.backend.geometry.placement import (CanonicalView, alpha_bbox, place_facing_camera, place_from_image,
                                        placement_for, record_placement, viewing_elevation)
from gen3d.backend.pipelines.base import JobRequest, RunContext

CANON = CanonicalView(elevation=0.0, radius=2.0, fov=49.1)


def project(points: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Pinhole projection (OpenCV c2w): world ``[N,3]`` -> pixels ``[N,2]``."""
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    return (cam[:, :2] / cam[:, 2:]) * np.diag(K)[:2] + K[:2, 2]


def box(uv: np.ndarray) -> np.ndarray:
    return np.concatenate([uv.min(0), uv.max(0)])


def apply(m: torch.Tensor, v: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return v @ m[:3, :3].T + m[:3, 3]


def user_camera(width=640, height=360, focal=700.0, eye=(2.5, -4.0, 2.2), target=(0.4, 0.3, 0.5), shift=(40, -25)):
    """A camera looking down at ~20 degrees, wide aspect, long lens, principal point off centre."""
    from gen3d.backend.geometry.cameras import Cameras

    K = torch.tensor([[focal, 0, width / 2 + shift[0]], [0, focal, height / 2 + shift[1]], [0, 0, 1.0]])
    return Cameras(K, look_at(torch.tensor([eye]), torch.tensor([target])), width, height)


def spiky_object(seed=0) -> torch.Tensor:
    """An asymmetric point cloud (an elongated box with a spike) around the origin, canonical frame."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(400, 3, generator=g) - 0.5) * torch.tensor([0.9, 0.4, 0.6])
    return torch.cat([pts, torch.tensor([[0.5, -0.3, 0.5]])])


def test_reference_box_is_reproduced_through_the_user_camera():
    """An object placed upright at a known point, facing the camera, gives a box; placing from that box alone
    puts the object back: same box (sub-pixel), same spot, upright, front towards the camera."""
    cam = user_camera()
    K, c2w = cam.K[0].double().numpy(), cam.c2w[0].double().numpy()
    v = spiky_object().double().numpy()
    where = np.array([0.9, 0.1, 0.7])
    to_cam = c2w[:3, 3] - where
    yaw = math.atan2(to_cam[0], -to_cam[1])
    Rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    want = box(project(v @ Rz.T + where, K, c2w))

    m = place_from_image(torch.from_numpy(v).float(), cam, want.tolist())
    got = box(project(apply(m, v), K, c2w))
    assert np.abs(got - want).max() < 0.01 * cam.width
    assert np.linalg.norm(np.asarray(m)[:3, 3] - where) < 0.02 * np.linalg.norm(to_cam)
    R = np.asarray(m)[:3, :3]
    assert abs(np.linalg.det(R) - 1) < 1e-4, "no scale without a cursor: the method's own size"
    up_angle = math.degrees(math.acos(np.clip(R[:, 2] @ [0, 0, 1] / np.linalg.norm(R[:, 2]), -1, 1)))
    assert up_angle < 1e-3
    front = R @ [0, -1, 0]
    horiz = to_cam[:2] / np.linalg.norm(to_cam[:2])
    assert math.degrees(math.acos(np.clip(front[:2] @ horiz, -1, 1))) < 2.0


@pytest.mark.parametrize("aspect_box", [(100, 60, 260, 300), (400, 120, 600, 200)])
def test_any_shape_matches_the_box_centre_and_longer_side(aspect_box):
    """Whatever the object's silhouette, the box's centre and its longer side are matched exactly (within a pixel)
    and the object stays upright."""
    cam = user_camera(width=800, height=450, focal=520.0, eye=(-3.0, -2.0, 3.5), target=(0.0, 0.5, 0.0))
    K, c2w = cam.K[0].double().numpy(), cam.c2w[0].double().numpy()
    v = spiky_object(3)
    m = place_from_image(v, cam, aspect_box)
    got = box(project(apply(m, v.double().numpy()), K, c2w))
    want = np.asarray(aspect_box, dtype=float)
    assert np.abs((got[:2] + got[2:]) / 2 - (want[:2] + want[2:]) / 2).max() < 1.0
    side = 0 if want[2] - want[0] >= want[3] - want[1] else 1
    assert abs((got[2 + side] - got[side]) - (want[2 + side] - want[side])) < 1.0
    assert np.allclose(np.asarray(m)[:3, 2], [0, 0, 1], atol=1e-6)


def test_cursor_keeps_the_line_of_sight_and_the_image_size():
    cam = user_camera()
    K, c2w = cam.K[0].double().numpy(), cam.c2w[0].double().numpy()
    v = spiky_object()
    target = [200.0, 100.0, 330.0, 240.0]
    free = place_from_image(v, cam, target)
    cursor = np.array([3.0, 4.0, -1.0])
    m = place_from_image(v, cam, target, cursor=cursor.tolist())
    vn = v.double().numpy()
    assert np.abs(box(project(apply(m, vn), K, c2w)) - box(project(apply(free, vn), K, c2w))).max() < 0.5
    t, c, z = np.asarray(m)[:3, 3], c2w[:3, 3], c2w[:3, 2]
    assert abs((t - c) @ z - (cursor - c) @ z) < 1e-4, "at the cursor's depth"
    ray_free = np.asarray(free)[:3, 3] - c
    assert np.linalg.norm(np.cross(t - c, ray_free)) / np.linalg.norm(t - c) / np.linalg.norm(ray_free) < 1e-5
    scale = np.cbrt(np.linalg.det(np.asarray(m)[:3, :3]))
    assert scale == pytest.approx(np.linalg.norm(t - c) / np.linalg.norm(ray_free), rel=1e-4)


def test_without_a_camera_the_object_lands_at_the_cursor_unrotated():
    rec = placement_for(spiky_object(), CANON, camera=None, cursor=(1.0, 2.0, 3.0))
    assert rec["mode"] == "cursor" and rec["camera"] is None
    assert np.allclose(rec["matrix"], [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    assert np.allclose(placement_for(spiky_object(), CANON)["matrix"], np.eye(4))


def test_text_to_3d_stands_at_the_look_at_point_facing_the_camera():
    cam = user_camera()
    c, z = cam.c2w[0, :3, 3].numpy(), cam.c2w[0, :3, 2].numpy()
    cursor = np.array([0.0, 1.0, 0.0])
    m = np.asarray(place_facing_camera(cam, cursor.tolist(), default_distance=2.5))
    depth = (cursor - c) @ z
    assert np.allclose(m[:3, 3], c + depth * z, atol=1e-5)
    front, to_cam = m[:3, :3] @ [0, -1, 0], (c - m[:3, 3])[:2]
    assert front[2] == pytest.approx(0, abs=1e-6)
    assert front[:2] @ to_cam / np.linalg.norm(to_cam) == pytest.approx(1, abs=1e-6)
    far = np.asarray(place_facing_camera(cam, None, default_distance=2.5))
    assert np.allclose(far[:3, 3], c + 2.5 * z, atol=1e-5), "no cursor: the method's canonical radius"


def test_camera_straight_down_stays_upright_and_front_faces_the_image_bottom():
    from gen3d.backend.geometry.cameras import Cameras

    c2w = look_at(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[0.0, 0.0, 0.0]]))
    cam = Cameras(torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]]), c2w, 320, 240)
    m = np.asarray(place_from_image(spiky_object(), cam, [120, 80, 200, 160]))
    assert np.isfinite(m).all() and np.allclose(m[:3, 2], [0, 0, 1], atol=1e-6)
    down = c2w[0, :3, 1].numpy()
    assert (m[:3, :3] @ [0, -1, 0])[:2] @ down[:2] > 0.99


def test_viewing_elevation_is_the_orbit_elevation():
    for el in (-20.0, 0.0, 35.0):
        cam = orbit_cameras(el, 70.0, 3.0, 40.0, 200, 100)
        assert viewing_elevation(cam, (100.0, 50.0)) == pytest.approx(el, abs=1e-3)


def test_record_placement_reads_the_reference_mask_and_writes_meta_and_json(tmp_path):
    """A 200x100 reference whose object spans x 50..90, y 20..60 maps onto a 640x360 camera by fractions."""
    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[20:60, 50:90] = 255
    Image.fromarray(rgba).save(tmp_path / "ref.png")
    assert alpha_bbox(rgba[..., 3] / 255.0) == (0.25, 0.2, 0.45, 0.6)
    cam = user_camera()
    wire = {**cam.to_wire()[0], "name": "Camera", "role": "reference"}
    other = {**orbit_cameras(0.0, 0.0, 2.0, 40.0, 640, 360).to_wire()[0], "name": "Other"}
    req = JobRequest(method="lrm", cameras=[other, wire], files={"image": str(tmp_path / "ref.png")},
                     cursor=[0.5, 0.5, 0.5])
    ctx = RunContext(out_dir=tmp_path)
    ctx.cache["_meta_extra"] = {"weights": "kept"}
    out = record_placement(req, ctx, spiky_object(), CANON)
    rec = json.loads(out["placement.json"].read_text())
    assert ctx.cache["_meta_extra"]["weights"] == "kept"
    assert ctx.cache["_meta_extra"]["placement"] == rec
    assert rec["mode"] == "camera-image" and rec["camera"]["name"] == "Camera"
    assert np.allclose(rec["target_box"], [160, 72, 288, 216])
    K, c2w = cam.K[0].double().numpy(), cam.c2w[0].double().numpy()
    got = box(project(apply(torch.tensor(rec["matrix"]), spiky_object().double().numpy()), K, c2w))
    assert np.abs((got[:2] + got[2:]) / 2 - [224, 144]).max() < 1.0
    assert (got[3] - got[1]) == pytest.approx(144, abs=1.0)
    text = record_placement(JobRequest(method="dreamgaussian-text", prompt="x", cameras=[wire]), ctx,
                            spiky_object(), CANON)
    assert json.loads(text["placement.json"].read_text())["mode"] == "camera-text"
