"""The one canonical camera of the backend, and every conversion to and from it.

World: Blender's frame, right-handed, Z up, metres.
Camera: ``K [N,3,3]`` in pixels (pixel centres at half-integers, so a centred principal point is ``cx = W/2``),
``c2w [N,4,4]`` camera-to-world with OpenCV axes (x right, y down, z forward), and one ``width``/``height``
for the batch.

Conversions live here and only here: OpenGL c2w (Blender, nerfstudio), world-to-camera view matrices
(gsplat's ``viewmats``), nvdiffrast clip space, orbit cameras and pixel rays.

Orbit convention (:func:`orbit_cameras`): azimuth 0 puts the camera on -Y looking towards +Y (Blender's front
view), azimuth grows counter-clockwise seen from above (90 = on +X, Blender's right view); elevation is positive
above the target (looking down). DreamGaussian/Zero123/MVDream world frames are Y up with the front camera on +Z
and *negative* elevation above: see :func:`yup_to_zup` and :func:`elevation_from_dreamgaussian`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

#: diag(1, -1, -1, 1): flips camera y and z, turning OpenCV axes into OpenGL axes and back
_FLIP_YZ = torch.tensor([1.0, -1.0, -1.0, 1.0])

#: Y-up (glTF, DreamGaussian, Zero123) -> Z-up (Blender): (x, y, z) -> (x, -z, y)
YUP_TO_ZUP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 4, 4]`` with OpenCV axes -> OpenGL axes (x right, y up, z backward). Self-inverse."""
    return c2w * _FLIP_YZ.to(c2w)


opengl_to_opencv = opencv_to_opengl


def yup_to_zup(points: torch.Tensor) -> torch.Tensor:
    """Points ``[..., 3]`` in a Y-up frame (front camera on +Z) -> Blender's Z-up frame (front camera on -Y)."""
    return points @ YUP_TO_ZUP.to(points).T


def zup_to_yup(points: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`yup_to_zup`."""
    return points @ YUP_TO_ZUP.to(points)


def elevation_from_dreamgaussian(elevation_deg: float) -> float:
    """DreamGaussian/kiui elevation (negative = camera above) -> ours (positive = above)."""
    return -elevation_deg


def intrinsics_from_fov(fov_deg: float, width: int, height: int, axis: str = "y") -> torch.Tensor:
    """``K [3,3]`` for square pixels with a centred principal point; ``fov_deg`` spans the image along ``axis``."""
    span = height if axis == "y" else width
    f = 0.5 * span / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: torch.Tensor, target: torch.Tensor, up: Sequence[float] = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world ``[N,4,4]`` for cameras at ``eye [N,3]`` looking at ``target [N,3]`` with world
    ``up`` appearing upwards in the image. A camera looking straight along ``up`` uses +Y as its image-up."""
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    eye, target = torch.broadcast_tensors(eye.reshape(-1, 3), target.reshape(-1, 3).to(eye))
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(z)
    x = torch.linalg.cross(z, up_t, dim=-1)
    degenerate = x.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(z)
    x = torch.where(degenerate, torch.linalg.cross(z, alt * torch.sign(z[..., 2:3]), dim=-1), x)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(len(eye), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one image size.

    ``K [N,3,3]`` float32 pixels; ``c2w [N,4,4]`` float32 OpenCV camera-to-world in the Z-up world.
    """

    K: torch.Tensor
    c2w: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        self.K = torch.as_tensor(self.K, dtype=torch.float32).reshape(-1, 3, 3)
        self.c2w = torch.as_tensor(self.c2w, dtype=torch.float32).reshape(-1, 4, 4)
        if len(self.K) == 1 and len(self.c2w) > 1:
            self.K = self.K.expand(len(self.c2w), 3, 3).clone()
        if len(self.K) != len(self.c2w):
            raise ValueError(f"{len(self.K)} intrinsics for {len(self.c2w)} poses")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return len(self.c2w)

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(self.K[idx], self.c2w[idx], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device) -> "Cameras":
        return Cameras(self.K.to(device), self.c2w.to(device), self.width, self.height)

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres ``[N,3]`` in world space."""
        return self.c2w[:, :3, 3]

    def viewmats(self) -> torch.Tensor:
        """World-to-camera ``[N,4,4]`` with OpenCV axes (gsplat's ``viewmats``)."""
        return rigid_inverse(self.c2w)

    def opengl_c2w(self) -> torch.Tensor:
        """Camera-to-world ``[N,4,4]`` with OpenGL axes (Blender's ``matrix_world``, nerfstudio)."""
        return opencv_to_opengl(self.c2w)

    @classmethod
    def from_opengl(cls, K, c2w_gl, width: int, height: int) -> "Cameras":
        return cls(K, opengl_to_opencv(torch.as_tensor(c2w_gl, dtype=torch.float32)), width, height)

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras rendering ``width x height`` images (intrinsics scaled, half-pixel convention kept)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[:, 0] *= sx
        K[:, 1] *= sy
        return Cameras(K, self.c2w, width, height)

    def clip_matrices(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """``[N,4,4]`` world -> nvdiffrast clip space.

        Clip ``x, y`` map pixel coordinates ``u in [0, W]``, ``v in [0, H]`` (OpenCV, y down) to ``[-1, 1]``, so
        row 0 of nvdiffrast's output is the image's top row; ``w`` is the camera depth and ``z/w`` runs from -1 at
        ``near`` to 1 at ``far`` (OpenGL depth).
        """
        W, H = self.width, self.height
        fx, fy, cx, cy = self.K[:, 0, 0], self.K[:, 1, 1], self.K[:, 0, 2], self.K[:, 1, 2]
        P = torch.zeros(len(self), 4, 4, dtype=self.K.dtype, device=self.K.device)
        P[:, 0, 0], P[:, 0, 2] = 2 * fx / W, 2 * cx / W - 1
        P[:, 1, 1], P[:, 1, 2] = 2 * fy / H, 2 * cy / H - 1
        P[:, 2, 2], P[:, 2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
        P[:, 3, 2] = 1.0
        return P @ self.viewmats()

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points ``[P,3]`` -> pixel coordinates ``[N,P,2]`` (continuous, pixel centres at +0.5) and
        camera depths ``[N,P]``."""
        w2c = self.viewmats().to(points)
        cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        uv = (cam @ self.K.to(points).transpose(1, 2))[..., :2] / z[..., None]
        return uv, z

    def pixel_rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through pixel centres: origins ``[N,H,W,3]`` and unit directions ``[N,H,W,3]`` in world space."""
        dev = self.device
        v, u = torch.meshgrid(torch.arange(self.height, device=dev, dtype=torch.float32) + 0.5,
                              torch.arange(self.width, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
        fx, fy = self.K[:, 0, 0, None, None], self.K[:, 1, 1, None, None]
        cx, cy = self.K[:, 0, 2, None, None], self.K[:, 1, 2, None, None]
        d = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as(fx * u)], -1)
        d = torch.einsum("nij,nhwj->nhwi", self.c2w[:, :3, :3], d)
        d = torch.nn.functional.normalize(d, dim=-1)
        return self.centers[:, None, None, :].expand_as(d), d

    # --- wire format (DESIGN.md) -------------------------------------------------------------------------------
    @classmethod
    def from_wire(cls, cams: Iterable[dict]) -> "Cameras":
        """Cameras from wire dicts ``{"K", "c2w", "width", "height"}``; all must share one image size."""
        cams = [c if isinstance(c, dict) else c.model_dump() for c in cams]
        if not cams:
            raise ValueError("no cameras")
        sizes = {(int(c["width"]), int(c["height"])) for c in cams}
        if len(sizes) != 1:
            raise ValueError(f"cameras of different image sizes {sorted(sizes)}")
        (w, h), = sizes
        return cls(torch.tensor([c["K"] for c in cams]), torch.tensor([c["c2w"] for c in cams]), w, h)

    def to_wire(self) -> list[dict]:
        return [{"K": self.K[i].tolist(), "c2w": self.c2w[i].tolist(), "width": self.width, "height": self.height}
                for i in range(len(self))]


def sample_pixels(images: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``images [B,H,W,C]`` at continuous pixel coordinates ``uv [B,P,2]`` (as :meth:`Cameras.project` gives them:
    pixel centres at +0.5) -> ``[B,P,C]``; outside the image the border pixels are repeated."""
    H, W = images.shape[1:3]
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1)[:, None]
    out = torch.nn.functional.grid_sample(images.permute(0, 3, 1, 2), grid, mode=mode, align_corners=False,
                                          padding_mode="border")
    return out[:, :, 0].permute(0, 2, 1)


def rigid_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]`` (rotation + translation)."""
    R, t = m[..., :3, :3], m[..., :3, 3:]
    out = torch.zeros_like(m)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def orbit_cameras(elevation_deg, azimuth_deg, radius, fov_deg: float, width: int, height: int,
                  target: Sequence[float] = (0.0, 0.0, 0.0)) -> Cameras:
    """Cameras on a sphere around ``target`` looking at it, Z up (convention in the module docstring).

    ``elevation_deg``, ``azimuth_deg`` and ``radius`` broadcast to ``[N]``; ``fov_deg`` is the vertical field of view.
    """
    el, az, r = torch.broadcast_tensors(*(torch.as_tensor(x, dtype=torch.float32).reshape(-1)
                                          for x in (elevation_deg, azimuth_deg, radius)))
    el, az = torch.deg2rad(el), torch.deg2rad(az)
    tgt = torch.as_tensor(target, dtype=torch.float32)
    eye = tgt + torch.stack([r * torch.cos(el) * torch.sin(az), -r * torch.cos(el) * torch.cos(az),
                             r * torch.sin(el)], -1)
    return Cameras(intrinsics_from_fov(fov_deg, width, height), look_at(eye, tgt.expand_as(eye)), width, height)


def orbit_angles(c2w: torch.Tensor, target: Sequence[float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Inverse of the orbit parametrisation: ``[N,3]`` (elevation_deg, azimuth_deg, radius) of camera centres."""
    p = c2w[..., :3, 3] - torch.as_tensor(target, dtype=c2w.dtype, device=c2w.device)
    r = p.norm(dim=-1)
    el = torch.rad2deg(torch.asin((p[..., 2] / r).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(p[..., 0], -p[..., 1]))
    return torch.stack([el, az, r], -1)
