"""Zero123's camera projection and its relative-pose conditioning.

The projection is one ``Linear(clip_dim + 4, clip_dim)`` applied to ``[CLIP image embedding ++ pose]``. The hub has it
under two names (tests/data/checkpoint_keys/zero123-*-projection.json), both loaded by :func:`load_projection`:

- ``clip_camera_projection/`` (ashawkey/dreamgaussian ``CLIPCameraProjection``): keys ``proj.weight``, ``proj.bias``;
- ``cc_projection/`` (kxhit ``CCProjection``): keys ``projection.weight``, ``projection.bias`` (config without sizes);
- the original zero123 checkpoint calls it ``cc_projection.weight`` / ``cc_projection.bias``.

Pose convention (:func:`relative_pose`), in *our* angles (``gen3d/backend/geometry/cameras.py``: elevation positive above,
azimuth counter-clockwise seen from above): Zero123 conditions on ``[Δpolar (rad), sin Δaz, cos Δaz, Δradius]`` where
polar = 90° − elevation, so ``Δpolar = elevation_ref − elevation_target``; ``Δaz = azimuth_target − azimuth_ref``.
Stable Zero123 replaces Δradius by the reference view's absolute polar angle ``deg2rad(90 − elevation_ref)``
(threestudio's ``stable_zero123_guidance``; DreamGaussian writes it ``deg2rad(90 + elevation_dg)`` with its
negative-above elevation, the same number). DreamGaussian's elevations convert with
:func:`backend.geometry.cameras.elevation_from_dreamgaussian`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: component folder -> the prefix its state dict uses
PROJECTION_LAYOUTS = {"clip_camera_projection": "proj", "cc_projection": "projection"}


class CameraProjection(nn.Module):
    """``[B, clip_dim + 4] -> [B, clip_dim]``; parameters named ``proj.*`` (our one name for both layouts)."""

    def __init__(self, in_features: int = 772, out_features: int = 768):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def normalize_projection_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any of the three published names (``proj``, ``projection``, ``cc_projection``) to ``proj.*``."""
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in ("proj", "projection", "cc_projection") or leaf not in ("weight", "bias"):
            raise KeyError(f"unexpected Zero123 projection key {key!r}")
        out[f"proj.{leaf}"] = value
    return out


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / name).exists():
            from safetensors.torch import load_file

            return load_file(str(folder / name))
    if (folder / "diffusion_pytorch_model.bin").exists():
        return torch.load(folder / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no diffusion_pytorch_model.{{safetensors,bin}} in {folder}")


def projection_layout(folder: str | Path) -> str:
    """Which projection component a Zero123 diffusers folder has (``clip_camera_projection`` or ``cc_projection``)."""
    for layout in PROJECTION_LAYOUTS:
        if (Path(folder) / layout).is_dir():
            return layout
    raise FileNotFoundError(f"{folder} has neither clip_camera_projection/ nor cc_projection/ (not a Zero123 folder)")


def load_projection(folder: str | Path) -> CameraProjection:
    """The camera projection of a Zero123 diffusers folder (either layout); sizes come from the weights."""
    state = normalize_projection_keys(_read_state(Path(folder) / projection_layout(folder)))
    out_f, in_f = state["proj.weight"].shape
    module = CameraProjection(in_f, out_f)
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module


def relative_pose(elevation, azimuth, radius, ref_elevation: float, ref_azimuth: float = 0.0,
                  ref_radius: float = 0.0, stable: bool = False) -> torch.Tensor:
    """Zero123 pose ``[B, 4]`` of target views relative to the reference view (degrees, our convention; see module).

    ``[deg2rad(ref_el − el), sin(deg2rad(az − ref_az)), cos(deg2rad(az − ref_az)), radius − ref_radius]``; with
    ``stable`` the last entry is ``deg2rad(90 − ref_el)``.
    """
    el, az, r = torch.broadcast_tensors(*(torch.as_tensor(x, dtype=torch.float32).reshape(-1)
                                          for x in (elevation, azimuth, radius)))
    d_polar = torch.deg2rad(ref_elevation - el)
    d_az = torch.deg2rad(az - ref_azimuth)
    last = torch.full_like(el, float(torch.deg2rad(torch.tensor(90.0 - ref_elevation)))) if stable else r - ref_radius
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)
