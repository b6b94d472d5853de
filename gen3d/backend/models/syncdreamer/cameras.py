"""SyncDreamer's 16 target cameras and its viewpoint embedding.

The published views (``meta_info/camera-16.pkl``) are 16 cameras at elevation 30 deg, distance 1.5, azimuths
``22.5 * i`` deg counter-clockwise seen from above, view 0 at the input's azimuth, all looking at the origin;
``K = [[280, 0, 128], [0, 280, 128], [0, 0, 1]]`` at 256 x 256 (about 49.1 deg field of view, Zero123's renders).

SyncDreamer's world is Z up with view 0 on +X. Ours (``backend.geometry.cameras``) puts azimuth 0 on -Y, so
SyncDreamer point ``p`` is ours at ``SYNC_TO_WORLD @ p`` (a -90 deg turn about Z) and the views are simply
``orbit_cameras(30, 22.5 * i, 1.5, ...)``. :func:`official_poses` returns the network's own world-to-camera
``[16, 3, 4]`` (OpenCV axes, SyncDreamer world), which the volume unprojection uses with ``official_intrinsics``.
"""

from __future__ import annotations

import math

import torch

from ...geometry.cameras import Cameras, orbit_cameras
from ...geometry.placement import fov_from_focal

NUM_VIEWS = 16
ELEVATION_DEG = 30.0
DISTANCE = 1.5
IMAGE_SIZE = 256
FOCAL = 280.0
#: the input elevations the released model was trained for (README: "a rough value in [-10, 40] is fine")
ELEVATION_RANGE = (-10.0, 40.0)
#: SyncDreamer world -> ours: (x, y, z) -> (y, -x, z)
SYNC_TO_WORLD = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def azimuths_deg(num_views: int = NUM_VIEWS) -> torch.Tensor:
    return torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)


def fov_deg(size: int = IMAGE_SIZE, focal: float = FOCAL) -> float:
    return fov_from_focal(focal / size)


def target_cameras(size: int = IMAGE_SIZE, num_views: int = NUM_VIEWS) -> Cameras:
    """The 16 views in our world and camera convention (``c2w`` OpenCV, Z up, view 0 at azimuth 0)."""
    return orbit_cameras(ELEVATION_DEG, azimuths_deg(num_views), DISTANCE, fov_deg(), size, size)


def official_poses(num_views: int = NUM_VIEWS) -> torch.Tensor:
    """World-to-camera ``[N, 3, 4]`` (OpenCV axes) in SyncDreamer's world: the ``poses`` buffer of the model."""
    c2w = target_cameras(IMAGE_SIZE, num_views).c2w
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    # x_cam = R^T (p_ours - t) with p_ours = S p_sync  =>  w2c_sync = [R^T S | -R^T t]
    rot = R.transpose(1, 2) @ SYNC_TO_WORLD
    return torch.cat([rot, (-R.transpose(1, 2) @ t[..., None])], -1)


def official_intrinsics(num_views: int = NUM_VIEWS, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``[N, 3, 3]``: the ``Ks`` buffer (pixel units at ``size``; the network's own convention, see volume.py)."""
    r = size / IMAGE_SIZE
    K = torch.tensor([[FOCAL * r, 0.0, 128.0 * r], [0.0, FOCAL * r, 128.0 * r], [0.0, 0.0, 1.0]])
    return K.expand(num_views, 3, 3).clone()


def official_azimuths(num_views: int = NUM_VIEWS) -> torch.Tensor:
    """``[N]`` radians wrapped to [-pi, pi) with view 0 at 0: the ``azimuth`` buffer."""
    az = torch.deg2rad(azimuths_deg(num_views).double())
    return ((az + math.pi) % (2 * math.pi) - math.pi).float()


def viewpoint_embedding(azimuth: torch.Tensor, input_elevation: torch.Tensor) -> torch.Tensor:
    """``[B, N, 4]`` Zero123 pose of every target view relative to the input view.

    ``azimuth [N]`` radians (the buffer), ``input_elevation [B]`` radians (positive = camera above). Zero123 negates
    elevations, so the first entry is ``(-30 deg) - (-input elevation)``; then ``sin, cos`` of the azimuth step
    and 0 for the distance change: ``[d_el, sin d_az, cos d_az, 0]``.
    """
    d_el = (-math.radians(ELEVATION_DEG) + input_elevation)[:, None].expand(-1, len(azimuth))
    d_az = (azimuth - azimuth[0])[None].expand(len(input_elevation), -1)
    return torch.stack([d_el, torch.sin(d_az), torch.cos(d_az), torch.zeros_like(d_az)], -1)
