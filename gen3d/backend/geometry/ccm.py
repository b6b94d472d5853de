"""SweetDreamer's canonical coordinate maps (CCM), one convention for the bpy pass and our differentiable renders.

- **Box.** ``centre = (lo + hi) / 2``, ``half_extent = 1.1 * (hi - lo) / 2`` per axis (a flat axis keeps 1e-4), so
  the surface stays inside ``[-1/1.1, 1/1.1]``. The training renders (``dataset multiview --passes ccm``) take the
  normalised object's exact box; the method re-estimates it from the opaque Gaussians during optimisation, as the
  official code re-estimates it from the isosurface every 200 steps.
- **Axes.** SweetDreamer stores ``(c_y, -c_x, c_z)`` of threestudio's frame, which is Blender's world turned by 90°
  about Z (``x_ts = -y``, ``y_ts = x``), so in our world the permutation is the identity: ``c = (p - centre) /
  half_extent`` in Blender's x, y, z. The official camera condition applies the same turn to threestudio's OpenGL
  c2w, so the paper's 12 numbers are our OpenGL c2w ``[:3, :4]`` in Blender's world (``c2w_scale`` 1).
- **Images.** A CCM image is ``rgb = (c + 1) / 2`` with an alpha (bpy: a pixel-centre ray hit). The AGP's
  4-channel input is ``[alpha * (2 rgb - 1), 2 alpha - 1]`` (the official ``comp_cmm`` and ``opacity * 2 - 1``);
  from a premultiplied render ``alpha * rgb`` that is ``[2 premultiplied - alpha, 2 alpha - 1]``.
"""

from __future__ import annotations

import numpy as np
import torch

#: SweetDreamer scales the object's box by this before normalising
CCM_MARGIN = 1.1


def ccm_frame(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """``(centre [3], half_extent [3])`` float64 of the CCM box for the world box ``lo``/``hi`` (module docstring)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return (lo + hi) / 2, np.maximum(CCM_MARGIN * (hi - lo) / 2, 1e-4)


def canonical_coordinates(points, centre, half_extent):
    """World points ``[...,3]`` -> canonical coordinates ``(p - centre) / half_extent`` (numpy or torch)."""
    if isinstance(points, torch.Tensor):
        centre = torch.as_tensor(centre, dtype=points.dtype, device=points.device)
        half_extent = torch.as_tensor(half_extent, dtype=points.dtype, device=points.device)
        return (points - centre) / half_extent
    return (np.asarray(points, np.float64) - centre) / half_extent


def agp_input(premultiplied: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The AGP's 4-channel input ``[B,4,H,W]`` in [-1, 1] from a premultiplied CCM render ``[B,3,H,W]`` (``alpha *
    (c + 1) / 2``) and its ``alpha [B,1,H,W]``."""
    return torch.cat([2 * premultiplied - alpha, 2 * alpha - 1], 1)


def agp_input_from_png(rgba: torch.Tensor) -> torch.Tensor:
    """The AGP's input ``[B,4,H,W]`` from CCM images ``rgba [B,4,H,W]`` in [0,1] (straight, as bpy stores them)."""
    alpha = rgba[:, 3:]
    return agp_input(rgba[:, :3] * alpha, alpha)


def agp_camera(c2w_opencv: torch.Tensor) -> torch.Tensor:
    """The AGP's camera condition ``[B,12]``: the OpenGL c2w's ``[:3, :4]`` in Blender's world, row-major, from our
    OpenCV ``c2w [B,4,4]`` (module docstring: this is the official axis swap with ``c2w_scale`` 1)."""
    from .cameras import opencv_to_opengl

    return opencv_to_opengl(c2w_opencv)[:, :3, :4].reshape(-1, 12)


def box_from_gaussians(means: torch.Tensor, opacities: torch.Tensor, min_opacity: float = 0.5,
                       quantile: float = 0.005) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The CCM box ``(centre [3], half_extent [3])`` of the Gaussians whose opacity is at least ``min_opacity``
    (their centres' ``quantile``/``1 - quantile`` per axis, so a few stray splats do not stretch it), or None when
    fewer than 8 are that opaque. Our stand-in for the official isosurface box."""
    keep = opacities.detach() >= min_opacity
    if int(keep.sum()) < 8:
        return None
    p = means.detach()[keep].float()
    lo, hi = torch.quantile(p, quantile, dim=0), torch.quantile(p, 1 - quantile, dim=0)
    centre, half = ccm_frame(lo.cpu().numpy(), hi.cpu().numpy())
    return (torch.tensor(centre, dtype=torch.float32, device=means.device),
            torch.tensor(half, dtype=torch.float32, device=means.device))
