"""Generate from the active camera: where a generated object stands in the scene and how it faces.

Every image/text-to-3D method builds its object in a canonical frame: the object at the origin of Blender's world
(Z up), its input view from azimuth 0 of :func:`~backend.geometry.cameras.orbit_cameras` (camera on -Y looking +Y,
so the object's front faces -Y) at the method's canonical elevation, radius and field of view
(:class:`CanonicalView`). When the request carries a scene camera, the object gets an object-to-world transform
``M = T(t) @ S(s) @ Rz(yaw)`` (no pitch, no roll: it stays upright in the Z-up scene):

- **image** (a reference image and a camera, :func:`place_from_image`): the reference image is what the camera
  sees. ``yaw`` turns the object's front (-Y) towards the camera, horizontally along the line of sight through the
  image's object centre; ``s`` and ``t`` make the produced mesh's projection through the camera reproduce the
  reference image's object bounding box: its centre, and its longer side (the side the methods normalise when they
  recentre the input). Without a 3D cursor the object keeps the method's own size (``s = 1``) and stands at the
  distance that reproduces the image size; with one it stands at the cursor's depth on the same line of sight and
  is scaled to keep the image size.

  The fit uses the *produced mesh's* own projection through the camera, not the canonical image's bounding box:
  it holds for any output shape and for any mismatch between the camera's elevation and the method's canonical
  elevation (the upright object is seen from the camera's real pitch). Only the aspect of the two boxes can
  differ, when the mesh's silhouette from the camera differs from the reference's.
- **text** (a camera, no image, :func:`place_facing_camera`): at the camera's look-at point (the point on its
  optical axis at the 3D cursor's depth, else at the method's canonical radius), its front facing the camera.
- **cursor** (no camera): today's behaviour, canonical orientation at the 3D cursor (identity without a cursor).

Pipelines call :func:`record_placement` once at export time; it writes ``placement.json`` and
``meta.json["placement"]`` (``matrix``: 4x4 object-to-world, row-major, in Blender's world; ``mode``; ``camera``:
the wire camera used; ``canonical``; the target box). The add-on sets the imported object's ``matrix_world`` from it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..files import write_json
from .cameras import Cameras

log = logging.getLogger(__name__)

#: alpha above which a reference pixel belongs to the object (the recentring's threshold)
ALPHA_THRESHOLD = 0.5 / 255


@dataclass(frozen=True)
class CanonicalView:
    """A method's input camera in our orbit convention: azimuth 0, ``elevation`` degrees above the object (positive =
    looking down), ``radius`` from the object's origin, vertical field of view ``fov`` degrees."""

    elevation: float
    radius: float
    fov: float


def fov_from_focal(focal: float) -> float:
    """Field of view in degrees of a focal length normalised by the image size (OpenLRM's 0.75 -> 67.4)."""
    return math.degrees(2 * math.atan(0.5 / focal))


def alpha_bbox(alpha: np.ndarray) -> tuple[float, float, float, float]:
    """``alpha [H, W]`` -> the object's box ``(x0, y0, x1, y1)`` as fractions of the image (pixel edges, y down)."""
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if len(ys) == 0:
        raise ValueError("the reference image's mask is empty")
    h, w = alpha.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def yaw_matrix(yaw_rad: float) -> torch.Tensor:
    """``[3,3]`` rotation by ``yaw_rad`` about world +Z (counter-clockwise seen from above)."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def facing_yaw(to_camera: torch.Tensor, camera_down: torch.Tensor) -> float:
    """Yaw (radians) that turns the canonical front direction -Y towards the horizontal part of ``to_camera [3]``.
    A vertical ``to_camera`` (camera straight above or below) uses the camera's image-down axis ``camera_down [3]``,
    so the front faces the bottom of the image, as it does for a camera that looks steeply down."""
    h = to_camera[:2]
    if float(h.norm()) < 1e-3 * float(to_camera.norm()):
        h = camera_down[:2]
    return math.atan2(float(h[0]), -float(h[1]))


def compose(yaw: float, scale: float, translation: Sequence[float]) -> torch.Tensor:
    """``[4,4]`` object-to-world ``T(translation) @ S(scale) @ Rz(yaw)``."""
    m = torch.eye(4)
    m[:3, :3] = scale * yaw_matrix(yaw)
    m[:3, 3] = torch.as_tensor(translation, dtype=torch.float32)
    return m


def viewing_elevation(camera: Cameras, pixel: Sequence[float]) -> float:
    """Elevation in degrees (positive = camera above) at which ``camera`` sees a point imaged at ``pixel (u, v)``:
    the camera-relative elevation to give a method that takes its input's elevation."""
    d = _ray(camera, pixel)
    return math.degrees(math.asin(max(-1.0, min(1.0, -float(d[2]) / float(d.norm())))))


def _ray(camera: Cameras, pixel: Sequence[float]) -> torch.Tensor:
    """World direction ``[3]`` (camera depth 1) of the ray through ``pixel``."""
    K = camera.K[0]
    x = torch.tensor([(pixel[0] - K[0, 2]) / K[0, 0], (pixel[1] - K[1, 2]) / K[1, 1], 1.0])
    return camera.c2w[0, :3, :3] @ x


def _box(uv: torch.Tensor) -> torch.Tensor:
    return torch.cat([uv.min(0).values, uv.max(0).values])


def place_from_image(vertices: torch.Tensor, camera: Cameras, box: Sequence[float],
                     cursor: Sequence[float] | None = None, iterations: int = 50) -> torch.Tensor:
    """Object-to-world ``[4,4]`` that makes the projection of ``vertices [N,3]`` (canonical frame) through
    ``camera`` (one camera) cover ``box (x0, y0, x1, y1)`` in that camera's pixels (module docstring).

    The box's centre is matched and its longer side: scaling the object and its distance by the same factor about
    the camera centre leaves the projection unchanged, so the fit solves depth and image position at ``s = 1`` and
    then, with a ``cursor [3]`` in front of the camera, moves to the cursor's depth (camera z) with ``s`` = the ratio.
    """
    box_t = torch.as_tensor(box, dtype=torch.float32)
    centre = (box_t[:2] + box_t[2:]) / 2
    axis = 0 if box_t[2] - box_t[0] >= box_t[3] - box_t[1] else 1
    target = float(box_t[2 + axis] - box_t[axis])
    if target <= 0:
        raise ValueError(f"empty target box {list(box)}")
    R_c, c = camera.c2w[0, :3, :3], camera.c2w[0, :3, 3]
    yaw = facing_yaw(-_ray(camera, centre.tolist()), R_c[:, 1])
    # in camera coordinates the placed vertices are A + depth * ray(pixel), with A the rotated object
    A = (vertices.float().cpu() @ yaw_matrix(yaw).T) @ R_c  # = (R_c^T (R v)) row-wise
    K = camera.K[0]
    f, pp = torch.stack([K[0, 0], K[1, 1]]), torch.stack([K[0, 2], K[1, 2]])
    extent = float(A.norm(dim=-1).max())
    depth = max(extent * float(f[axis]) / target + extent, 2 * extent)
    pixel = centre.clone()
    for _ in range(iterations):
        ray = torch.cat([(pixel - pp) / f, torch.ones(1)])
        P = A + depth * ray
        if float(P[:, 2].min()) <= 1e-6 * depth:
            depth *= 2
            continue
        uv = P[:, :2] / P[:, 2:] * f + pp
        b = _box(uv)
        size = float(b[2 + axis] - b[axis])
        pixel = pixel + (centre - (b[:2] + b[2:]) / 2)
        depth *= size / target
    ray_world = R_c @ torch.cat([(pixel - pp) / f, torch.ones(1)])
    scale = 1.0
    if cursor is not None:
        cursor_depth = float((torch.as_tensor(cursor, dtype=torch.float32) - c) @ R_c[:, 2])
        if cursor_depth > 0:
            scale, depth = cursor_depth / depth, cursor_depth
        else:
            log.warning("the 3D cursor is behind the camera; placing by the image size alone")
    return compose(yaw, scale, c + depth * ray_world)


def place_facing_camera(camera: Cameras, cursor: Sequence[float] | None, default_distance: float) -> torch.Tensor:
    """Object-to-world ``[4,4]``: the object's origin at ``camera``'s look-at point (on its optical axis at the
    cursor's depth, else at ``default_distance``), its front (-Y) turned towards the camera, upright, scale 1."""
    R_c, c = camera.c2w[0, :3, :3], camera.c2w[0, :3, 3]
    depth = default_distance
    if cursor is not None:
        d = float((torch.as_tensor(cursor, dtype=torch.float32) - c) @ R_c[:, 2])
        depth = d if d > 0 else default_distance
    return compose(facing_yaw(-R_c[:, 2], R_c[:, 1]), 1.0, c + depth * R_c[:, 2])


def reference_camera(cameras) -> dict | None:
    """The wire camera (dict) a request's object is placed for: the one with role ``reference``, else the first."""
    cams = [c if isinstance(c, dict) else c.model_dump() for c in cameras]
    return next((c for c in cams if c.get("role") == "reference"), cams[0] if cams else None)


def placement_for(vertices: torch.Tensor, canonical: CanonicalView, camera: dict | None = None,
                  image_alpha: np.ndarray | None = None, cursor: Sequence[float] | None = None) -> dict:
    """The placement record (module docstring) of an object with canonical-frame ``vertices [N,3]``.

    ``camera``: a wire camera dict or None; ``image_alpha [H, W]``: the reference image's mask (its box, as
    fractions of the image, maps onto the camera's image: a reference of another aspect is stretched, as Blender's
    default camera background image is); ``cursor [3]``: the 3D cursor in world metres.
    """
    record: dict = {"canonical": asdict(canonical), "cursor": list(map(float, cursor)) if cursor is not None else None}
    if camera is None:
        m = compose(0.0, 1.0, cursor if cursor is not None else (0.0, 0.0, 0.0))
        record.update(mode="cursor", camera=None)
    else:
        cam = Cameras.from_wire([camera])
        record["camera"] = {k: camera[k] for k in ("K", "c2w", "width", "height", "name", "role") if k in camera}
        if image_alpha is not None:
            fx0, fy0, fx1, fy1 = alpha_bbox(image_alpha)
            box = [fx0 * cam.width, fy0 * cam.height, fx1 * cam.width, fy1 * cam.height]
            m = place_from_image(vertices, cam, box, cursor)
            centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
            record.update(mode="camera-image", target_box=box,
                          camera_elevation=viewing_elevation(cam, centre))
        else:
            m = place_facing_camera(cam, cursor, canonical.radius)
            record.update(mode="camera-text")
    record["matrix"] = m.tolist()
    return record


def record_placement(request, ctx, vertices: torch.Tensor, canonical: CanonicalView) -> dict[str, Path]:
    """The pipelines' one call at export time: compute the placement of ``request`` (a ``JobRequest``; its reference
    camera, ``files["image"]`` and ``cursor``) for the mesh ``vertices [N,3]`` (canonical frame), put it in
    ``ctx.cache["_meta_extra"]["placement"]`` (meta.json) and write ``placement.json``. Returns the artifact."""
    from .image_prep import ensure_mask, read_image

    alpha = None
    camera = reference_camera(request.cameras)
    if camera is not None and request.files.get("image"):
        path = request.files["image"]
        alpha = ensure_mask(read_image(path), Path(path).name)[..., 3]
    record = placement_for(vertices.detach().float().cpu(), canonical, camera, alpha, request.cursor)
    log.info("placement %s: %s", record["mode"], record["matrix"])
    ctx.cache.setdefault("_meta_extra", {})["placement"] = record
    return {"placement.json": write_json(Path(ctx.out_dir) / "placement.json", record)}
