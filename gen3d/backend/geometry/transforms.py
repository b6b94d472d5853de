"""Multi-view folders in nerfstudio's ``transforms.json`` layout (also written by BlenderNeRF and instant-ngp).

A folder holds ``transforms.json`` and the images it names. Read here:

- ``frames[i].file_path``: image path relative to the folder (a missing extension means ``.png``, as in the NeRF
  synthetic scenes); an RGBA PNG, or RGB(A) with ``frames[i].mask_path`` (a greyscale mask, white = object);
  an RGB image without a mask is fully opaque;
- ``frames[i].transform_matrix``: 4x4 (or 3x4) OpenGL camera-to-world in the world frame we use (Blender's, Z up);
- intrinsics ``fl_x fl_y cx cy w h`` at the top level or per frame, in pixels with pixel centres at half-integers
  (nerfstudio's convention, and ours); ``camera_angle_x``/``camera_angle_y`` (radians) may stand in for
  ``fl_x``/``fl_y``; ``cx, cy`` default to the image centre and ``w, h`` to the image size.

Anything malformed raises one :class:`~backend.errors.BadInput` whose message names the file, the frame index and
what is wrong (``detail["problems"]`` lists every problem found).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import BadInput
from ..files import write_bytes, write_json
from .cameras import Cameras

log = logging.getLogger(__name__)

FILENAME = "transforms.json"
_RIGID_TOL = 1e-3
_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")


class _Problems:
    """Collects problems of one transforms.json, then raises them as one BadInput."""

    def __init__(self, path: Path):
        self.path, self.items = path, []

    def add(self, frame: int | None, what: str):
        self.items.append({"file": str(self.path), "frame": frame, "problem": what})

    def raise_if_any(self):
        if not self.items:
            return
        first = self.items[0]
        where = f"{first['file']}" + (f", frame {first['frame']}" if first["frame"] is not None else "")
        more = f" (and {len(self.items) - 1} more problems)" if len(self.items) > 1 else ""
        raise BadInput(f"{where}: {first['problem']}{more}", {"file": str(self.path), "problems": self.items})


def _find(path: Path) -> Path:
    path = Path(path)
    json_path = path / FILENAME if path.is_dir() else path
    if not json_path.is_file():
        raise BadInput(f"{json_path}: no {FILENAME} found", {"file": str(json_path)})
    return json_path


def _matrix(value, problems: _Problems, i: int) -> np.ndarray | None:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.add(i, "transform_matrix is not a matrix of numbers")
        return None
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0, 0, 0, 1]]])
    if m.shape != (4, 4):
        problems.add(i, f"transform_matrix must be 4x4 (or 3x4), got shape {list(m.shape)}")
        return None
    if not np.isfinite(m).all():
        problems.add(i, "transform_matrix has non-finite values")
        return None
    R = m[:3, :3]
    if (np.abs(m[3] - [0, 0, 0, 1]).max() > _RIGID_TOL or np.abs(R.T @ R - np.eye(3)).max() > _RIGID_TOL
            or np.linalg.det(R) < 0):
        problems.add(i, "transform_matrix is not rigid (rotation must be orthonormal with det +1, no scale or "
                        "shear, last row 0 0 0 1)")
        return None
    return m


def _intrinsics(meta: dict, frame: dict, size: tuple[int, int], problems: _Problems, i: int):
    """``(fx, fy, cx, cy)`` for a frame: per-frame keys override the top level; None on a problem."""

    def get(key):
        value = frame.get(key, meta.get(key))
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            problems.add(i, f"{key} is not a number: {value!r}")
            return math.nan
        if not math.isfinite(value):
            problems.add(i, f"{key} is not finite")
        return value

    json_w, json_h = get("w"), get("h")
    if (json_w is not None and json_w != size[0]) or (json_h is not None and json_h != size[1]):
        problems.add(i, f"w x h = {json_w} x {json_h} in the json but the image is {size[0]} x {size[1]}")
    w, h = size
    fx, fy = get("fl_x"), get("fl_y")
    angle_x, angle_y = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and angle_x is not None:
        fx = 0.5 * w / math.tan(angle_x / 2)
    if fy is None and angle_y is not None:
        fy = 0.5 * h / math.tan(angle_y / 2)
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    if fx is None:
        problems.add(i, "no focal length (fl_x/fl_y or camera_angle_x/camera_angle_y, per frame or top level)")
        return None
    if not (fx > 0 and fy > 0):
        problems.add(i, f"focal lengths must be positive, got fl_x={fx}, fl_y={fy}")
        return None
    cx, cy = get("cx"), get("cy")
    if any(abs(get(k) or 0.0) > 0 for k in _DISTORTION):
        log.warning("%s frame %d: lens distortion is ignored", problems.path, i)
    return fx, fy, cx if cx is not None else w / 2, cy if cy is not None else h / 2


def _image_path(root: Path, value, key: str, problems: _Problems, i: int) -> Path | None:
    if not isinstance(value, str) or not value:
        problems.add(i, f"{key} must be a non-empty string")
        return None
    path = root / value
    if not path.suffix and not path.exists() and path.with_suffix(".png").is_file():
        path = path.with_suffix(".png")
    if not path.is_file():
        problems.add(i, f"{key} {value!r}: image file not found ({path})")
        return None
    return path


def _image_size(path: Path, mask_path: Path | None, problems: _Problems, i: int) -> tuple[int, int] | None:
    """``(width, height)`` of a frame from the file headers (no decoding); checks the mask's size."""
    try:
        with Image.open(path) as img:
            size = img.size
        if mask_path is not None:
            with Image.open(mask_path) as m:
                if m.size != size:
                    problems.add(i, f"mask {mask_path.name} is {m.size[0]} x {m.size[1]} but the image is "
                                    f"{size[0]} x {size[1]}")
                    return None
    except OSError as e:
        problems.add(i, f"cannot read image: {e}")
        return None
    return size


def read_rgba(path: Path, mask_path: Path | None = None) -> np.ndarray:
    """One frame as ``[H,W,4] float32 in [0,1]``: alpha from the mask when given, else from the image, else opaque."""
    try:
        with Image.open(path) as img:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        if mask_path is not None:
            with Image.open(mask_path) as m:
                rgba[..., 3] = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: cannot read image: {e}", {"file": str(path)}) from e
    return rgba


@dataclass
class TransformsFolder:
    """A scanned ``transforms.json`` folder: its cameras and the image (and mask) file of each frame."""

    cameras: Cameras
    image_paths: list[Path]
    mask_paths: list[Path | None]


def scan_transforms(path: str | os.PathLike) -> TransformsFolder:
    """Read and check a ``transforms.json`` folder (or the json file itself) without decoding its images: cameras
    (OpenCV, Z-up world, one image size) and the files of each frame. Problems raise one :class:`BadInput`."""
    json_path = _find(Path(path))
    root = json_path.parent
    problems = _Problems(json_path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{json_path}: not valid JSON: {e}", {"file": str(json_path)}) from e
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        problems.add(None, "missing or empty 'frames' list")
        problems.raise_if_any()

    Ks, c2ws, image_paths, mask_paths, sizes = [], [], [], [], {}
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            problems.add(i, "frame is not an object")
            continue
        missing = [k for k in ("file_path", "transform_matrix") if k not in frame]
        if missing:
            problems.add(i, f"missing key(s) {', '.join(missing)}")
            continue
        c2w = _matrix(frame["transform_matrix"], problems, i)
        image_path = _image_path(root, frame["file_path"], "file_path", problems, i)
        mask_path = _image_path(root, frame["mask_path"], "mask_path", problems, i) if "mask_path" in frame else None
        if image_path is None or ("mask_path" in frame and mask_path is None):
            continue
        size = _image_size(image_path, mask_path, problems, i)
        if size is None:
            continue
        sizes.setdefault(size, i)
        if len(sizes) > 1 and size != next(iter(sizes)):
            first_size, first_frame = next(iter(sizes.items()))
            problems.add(i, f"image {image_path.name} is {size[0]} x {size[1]} but frame {first_frame} is "
                            f"{first_size[0]} x {first_size[1]} (all images must share one size)")
            continue
        intrinsics = _intrinsics(meta, frame, size, problems, i)
        if c2w is None or intrinsics is None:
            continue
        fx, fy, cx, cy = intrinsics
        Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        c2ws.append(c2w)
        image_paths.append(image_path)
        mask_paths.append(mask_path)
    problems.raise_if_any()
    (w, h) = next(iter(sizes))
    cameras = Cameras.from_opengl(torch.tensor(Ks, dtype=torch.float32), torch.tensor(np.stack(c2ws), dtype=torch.float32),
                                  w, h)
    return TransformsFolder(cameras, image_paths, mask_paths)


def load_transforms(path: str | os.PathLike) -> tuple[Cameras, torch.Tensor]:
    """Read a ``transforms.json`` folder (or the json file itself).

    Returns ``(cameras, images)``: OpenCV cameras in the Z-up world (one image size) and
    ``images [N,H,W,4] float32 in [0,1]`` (RGBA, straight alpha).
    """
    folder = scan_transforms(path)
    images = [read_rgba(p, m) for p, m in zip(folder.image_paths, folder.mask_paths)]
    return folder.cameras, torch.from_numpy(np.stack(images))


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def transforms_meta(cameras: Cameras, frames: list[dict]) -> dict:
    """The ``transforms.json`` content for ``cameras`` and one dict per frame (``file_path`` and any other keys):
    each frame gets its OpenGL ``transform_matrix``; intrinsics go to the top level when all cameras share them,
    to each frame otherwise."""
    if len(frames) != len(cameras):
        raise ValueError(f"{len(frames)} frames for {len(cameras)} cameras")
    K, c2w_gl = cameras.K.detach().cpu(), cameras.opengl_c2w().detach().cpu()

    def intrinsics(k):
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}

    shared = bool((K == K[:1]).all())
    meta = {"camera_model": "OPENCV", "w": cameras.width, "h": cameras.height, **(intrinsics(K[0]) if shared else {})}
    meta["frames"] = [{**frame, "transform_matrix": c2w_gl[i].tolist(), **({} if shared else intrinsics(K[i]))}
                      for i, frame in enumerate(frames)]
    return meta


def save_transforms(folder: str | os.PathLike, cameras: Cameras, images: torch.Tensor,
                    separate_masks: bool = False) -> Path:
    """Write ``folder/transforms.json`` and 8-bit PNGs ``images/frame_00000.png`` ...

    ``images [N,H,W,4]`` (or ``[N,H,W,3]``, then opaque) float in [0,1]. With ``separate_masks`` the images are
    RGB and the alpha goes to ``masks/frame_00000.png`` referenced by ``mask_path``. Intrinsics are written at the
    top level when all cameras share them, per frame otherwise. Every file is written atomically, the json last.
    """
    folder = Path(folder)
    images = torch.as_tensor(images, dtype=torch.float32).detach().cpu().numpy()
    if images.ndim != 4 or images.shape[-1] not in (3, 4) or len(images) != len(cameras):
        raise ValueError(f"images must be [N={len(cameras)},H,W,3|4], got {list(images.shape)}")
    if images.shape[1:3] != (cameras.height, cameras.width):
        raise ValueError(f"images are {images.shape[2]}x{images.shape[1]}, cameras {cameras.width}x{cameras.height}")
    frames = []
    for i, image in enumerate(images):
        name = f"frame_{i:05d}.png"
        frame = {"file_path": f"images/{name}"}
        if separate_masks:
            write_bytes(folder / "images" / name, _png_bytes(image[..., :3]))
            alpha = image[..., 3] if image.shape[-1] == 4 else np.ones(image.shape[:2], np.float32)
            write_bytes(folder / "masks" / name, _png_bytes(alpha))
            frame["mask_path"] = f"masks/{name}"
        else:
            write_bytes(folder / "images" / name, _png_bytes(image))
        frames.append(frame)
    return write_json(folder / FILENAME, transforms_meta(cameras, frames))
