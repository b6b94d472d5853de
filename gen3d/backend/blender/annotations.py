"""Per-view 3D annotations for rendered datasets (plain numpy, no bpy).

Cameras use the backend's contract: ``K`` in pixels with pixel centres at half-integers, ``c2w`` OpenCV axes in
Blender's Z-up world. Boxes are in continuous pixel coordinates ``[x0, y0, x1, y1]`` (pixel edges).
"""

from __future__ import annotations

import itertools

import numpy as np

#: Blender's camera frame (OpenGL) <-> OpenCV
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def dst_intrinsics(width: int, height: int, lens_mm: float = 35.0, sensor_mm: float = 32.0) -> np.ndarray:
    """``K [3,3]`` of a Blender camera with sensor fit AUTO (the sensor spans the longer image side)."""
    f = lens_mm / sensor_mm * max(width, height)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def pose_to_c2w(azimuth: float, elevation: float, distance: float, roll: float = 0.0) -> np.ndarray:
    """OpenCV camera-to-world ``[4,4]`` looking at the origin from the orbit pose, Z up, rolled by ``roll`` degrees
    about the viewing axis (positive turns the image content clockwise)."""
    from ..geometry.cameras import orbit_cameras

    c2w = orbit_cameras(elevation, azimuth, distance, 49.1, 2, 2).c2w[0].double().numpy()
    r = np.radians(roll)
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    c2w[:3, :3] = c2w[:3, :3] @ rz
    return c2w


def project(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[P,3]`` -> pixels ``[P,2]`` (continuous) and depths ``[P]``."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3], cam[:, 2]


def mask_box(mask: np.ndarray) -> list[float] | None:
    """Tight box ``[x0, y0, x1, y1]`` of a boolean mask ``[H,W]`` in pixel-edge coordinates, None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners ``[8,3]`` of an axis-aligned box, x fastest."""
    return np.array([[x, y, z] for z, y, x in itertools.product((lo[2], hi[2]), (lo[1], hi[1]), (lo[0], hi[0]))])


def view_annotation(*, K: np.ndarray, c2w: np.ndarray, projection_gl: np.ndarray, pose: dict, width: int,
                    height: int, scale: float, offset: np.ndarray, bbox_lo: np.ndarray, bbox_hi: np.ndarray,
                    mask: np.ndarray, model_id: str, category: str, files: dict[str, str]) -> dict:
    """The JSON-able annotation of one rendered view.

    ``scale``/``offset`` are the normalisation (``world = scale * (model + offset)``); ``bbox_lo/hi`` the normalised
    object's box in world space; ``projection_gl`` Blender's ``calc_matrix_camera`` (OpenGL clip space).
    """
    w2c = np.linalg.inv(c2w)
    corners = box_corners(bbox_lo, bbox_hi)
    uv, _ = project(K, c2w, corners)
    return {
        "model_id": model_id,
        "class": category,
        "width": width,
        "height": height,
        "K": K.tolist(),
        "c2w": c2w.tolist(),
        "w2c": w2c.tolist(),
        "c2w_opengl": (c2w @ FLIP_YZ).tolist(),
        "P": (K @ w2c[:3]).tolist(),
        "projection_opengl": np.asarray(projection_gl).tolist(),
        "convention": "opencv camera (x right, y down, z forward), Z-up world; pixel centres at half-integers",
        "azimuth": pose["azimuth"],
        "elevation": pose["elevation"],
        "theta": pose.get("roll", 0.0),
        "distance": pose["distance"],
        "normalization": {"scale": float(scale), "offset": np.asarray(offset).tolist()},
        "bbox_2d": mask_box(mask),
        "bbox_3d": {"min": np.asarray(bbox_lo).tolist(), "max": np.asarray(bbox_hi).tolist()},
        "bbox_3d_projected": uv.tolist(),
        "files": files,
    }
