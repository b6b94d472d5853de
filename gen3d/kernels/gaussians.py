"""Differentiable 3D Gaussian splatting with gsplat's ``rasterization`` signature, on any torch device.

``rasterization`` renders N Gaussians into C cameras. ``backend="auto"`` hands over to gsplat's CUDA
kernels when gsplat is importable and the tensors are on CUDA, and otherwise runs the torch
implementation (CPU, MPS, CUDA), which is the reference the fast path is tested against. The torch
implementation follows gsplat's current kernels: EWA projection with the ``eps2d`` low-pass (and the
antialiased mode's compensation), opacity-aware radii, tile binning, depth-sorted front to back
compositing with alpha clamped at 0.99, contributions under 1/255 skipped and early stop at
transmittance 1e-4 (see ``_gaussians_raster`` for how it is made fast on a CPU).

Differences from gsplat, all in the torch backend: no leading batch dimensions (means [N,3], cameras [C,...]);
``packed`` defaults to False here and the torch backend always returns the unpacked layout (meta tensors
[C,N,...]); ``absgrad``, ``sparse_grad``, ``distributed`` and non-pinhole cameras are gsplat-only;
gsplat's kernels also skip a splat where its exponent rounds below zero (conics are positive definite,
so only at rounding level), which the torch backend does not.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Optional

import torch

from ._gaussians_project import project_gaussians, quat_scale_to_covar, sh_basis, spherical_harmonics
from ._gaussians_raster import bin_splats, composite, native_library

__all__ = ["rasterization", "rasterize_projected", "spherical_harmonics", "sh_basis", "gsplat_available",
           "RENDER_MODES"]

log = logging.getLogger(__name__)

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
GSPLAT_TILE_SIZE = 16
TORCH_TILE_SIZE = 8  # same images; smaller tiles waste fewer pixel x splat pairs in the dense CPU batches
NATIVE_TILE_SIZE = 4  # the compiled compositor pays little per (tile, splat) pair: smaller tiles waste less


def gsplat_available() -> bool:
    """True when the gsplat package can be imported (its CUDA kernels are then used for CUDA tensors)."""
    return importlib.util.find_spec("gsplat") is not None


def rasterization(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: Optional[torch.Tensor],
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: Optional[int] = None,
    backgrounds: Optional[torch.Tensor] = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    segmented: bool = False,
    covars: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
):
    """Render Gaussians into C cameras; same arguments, conventions and returns as ``gsplat.rasterization``.

    Args:
        means: [N,3] world centres. quats: [N,4] rotations, wxyz, need not be normalised.
        scales: [N,3] linear scales (standard deviations). opacities: [N] in (0, 1).
        colors: [N,D] or [C,N,D] values, or [N,K,3] SH coefficients when ``sh_degree`` (0..3) is set
            (evaluated per view along the camera-to-mean direction; colour = max(SH + 0.5, 0)).
            May be None for the depth-only modes.
        viewmats: [C,4,4] world-to-camera, OpenCV axes (x right, y down, z forward). Ks: [C,3,3] pixels.
        width, height: image size in pixels (pixel centres at half-integers).
        near_plane, far_plane: camera-z culling range. radius_clip: cull splats whose radii are both <= this.
        eps2d: added to the 2D covariance (0.3 = the standard low-pass filter).
        tile_size: tile edge in pixels (default: 16 on gsplat, 4 with the compiled CPU kernels, else 8; the images
            do not depend on it).
        backgrounds: [C,D] colours composited behind (colour channels only; depth gets 0).
        render_mode: "RGB", "D" (accumulated depth sum w z), "ED" (D / alpha), "RGB+D", "RGB+ED".
        rasterize_mode: "classic" or "antialiased" (opacity times sqrt(det cov / det(cov + eps2d I))).
        covars: optional [N,3,3] world covariances used instead of quats and scales.
        backend: "auto" (gsplat for CUDA tensors when importable, else torch), "torch" or "gsplat".

    Returns:
        render_colors [C,H,W,X] (X = D, 1 or D+1 by mode), render_alphas [C,H,W,1], meta dict with
        ``means2d`` [C,N,2] (a non-leaf tensor: call ``meta["means2d"].retain_grad()`` before backward to
        read the screen-space positional gradient used by densification), ``radii`` [C,N,2] int32,
        ``depths``, ``conics``, ``opacities``, ``tiles_per_gauss``, ``flatten_ids``, ``isect_offsets``,
        ``tile_width``, ``tile_height``, ``tile_size``, ``width``, ``height``, ``n_cameras``.
    """
    if backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda and gsplat_available())
    log.debug("rasterization: %d Gaussians, %d cameras, %dx%d, backend %s", means.shape[-2], viewmats.shape[-3],
              width, height, "gsplat" if use_gsplat else "torch")
    if use_gsplat:
        if not gsplat_available():
            raise ImportError("backend='gsplat' needs the gsplat package (pip install gsplat) and a CUDA device")
        if not means.is_cuda:
            raise ValueError(f"backend='gsplat' needs CUDA tensors, got tensors on {means.device}")
        import gsplat

        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
            sh_degree=sh_degree, packed=packed, tile_size=tile_size or GSPLAT_TILE_SIZE,
            backgrounds=backgrounds, render_mode=render_mode, sparse_grad=sparse_grad, absgrad=absgrad,
            rasterize_mode=rasterize_mode, channel_chunk=channel_chunk, distributed=distributed,
            camera_model=camera_model, segmented=segmented, covars=covars,
        )
    for name, value in (("absgrad", absgrad), ("sparse_grad", sparse_grad), ("distributed", distributed),
                        ("segmented", segmented)):
        if value:
            raise NotImplementedError(f"rasterization: {name}=True needs backend='gsplat' (CUDA)")
    if camera_model != "pinhole":
        raise NotImplementedError(f"rasterization: camera_model={camera_model!r} needs backend='gsplat'; torch has 'pinhole'")
    return _rasterization_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height), near_plane, far_plane,
        radius_clip, eps2d, sh_degree, tile_size or _default_tile_size(means), backgrounds, render_mode, rasterize_mode,
        covars,
    )


def _default_tile_size(means: torch.Tensor) -> int:
    return NATIVE_TILE_SIZE if native_library(means) is not None else TORCH_TILE_SIZE


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars, has_color):
    n = means.shape[0]
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3] (no batch dimensions on the torch backend), got {tuple(means.shape)}")
    if covars is None and (tuple(quats.shape) != (n, 4) or tuple(scales.shape) != (n, 3)):
        raise ValueError(f"quats must be [N,4] and scales [N,3] for N={n}, got {tuple(quats.shape)}, {tuple(scales.shape)}")
    if covars is not None and tuple(covars.shape) != (n, 3, 3):
        raise ValueError(f"covars must be [N,3,3], got {tuple(covars.shape)}")
    if tuple(opacities.shape) != (n,):
        raise ValueError(f"opacities must be [N]={n}, got {tuple(opacities.shape)}")
    c = viewmats.shape[0]
    if viewmats.shape != (c, 4, 4) or Ks.shape != (c, 3, 3):
        raise ValueError(f"viewmats must be [C,4,4] and Ks [C,3,3], got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if not has_color:
        return
    if colors is None:
        raise ValueError("colors are required for the RGB render modes")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == n) and not (colors.dim() == 3 and colors.shape[:2] == (c, n)):
            raise ValueError(f"colors must be [N,D] or [C,N,D] with N={n}, C={c}, got {tuple(colors.shape)}")
    elif colors.dim() != 3 or colors.shape[0] != n or colors.shape[1] < (sh_degree + 1) ** 2:
        raise ValueError(f"SH colors must be [N,K>={(sh_degree + 1) ** 2},D] for sh_degree={sh_degree}, got {tuple(colors.shape)}")


def _rasterization_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                         far_plane, radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode,
                         rasterize_mode, covars):
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    has_color = render_mode.startswith("RGB")
    has_depth = render_mode != "RGB"
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, covars, has_color)
    n, c = means.shape[0], viewmats.shape[0]
    if covars is None:
        covars = quat_scale_to_covar(quats, scales)
    proj = project_gaussians(means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                             radius_clip, antialiased=rasterize_mode == "antialiased")

    channels = []
    if has_color:
        if sh_degree is not None:
            campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # -R^T t
            values = spherical_harmonics(sh_degree, means[None] - campos[:, None], colors)  # [C,N,D]
            values = torch.clamp_min(values + 0.5, 0.0)
        else:
            values = colors.expand(c, n, colors.shape[-1]) if colors.dim() == 2 else colors
        channels.append(values)
    if has_depth:
        channels.append(proj.depths[..., None])
    features = torch.cat(channels, dim=-1) if len(channels) > 1 else channels[0]

    render, alphas, plan = rasterize_projected(
        proj.means2d, proj.conics, features, proj.opacities, proj.depths, proj.radii, width, height, tile_size)
    if has_color and backgrounds is not None:
        d = colors.shape[-1]
        bg = backgrounds.reshape(c, 1, 1, d)
        render = torch.cat([render[..., :d] + (1 - alphas) * bg, render[..., d:]], dim=-1) if has_depth \
            else render + (1 - alphas) * bg
    if render_mode.endswith("ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp_min(1e-10)], dim=-1)

    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "tile_width": plan.tiles_x,
        "tile_height": plan.tiles_y,
        "tiles_per_gauss": plan.tiles_per_splat.reshape(c, n).to(torch.int32),
        "isect_ids": None,
        "flatten_ids": plan.isect_splats.to(torch.int32),
        "isect_offsets": plan.tile_offsets.reshape(c, plan.tiles_y, plan.tiles_x).to(torch.int32),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": c,
    }
    return render, alphas, meta


def rasterize_projected(means2d, conics, colors, opacities, depths, radii, width: int, height: int,
                        tile_size: Optional[int] = None):
    """Composite already projected splats (torch backend's 2D stage, differentiable in its first four inputs).

    means2d [I,N,2] pixels, conics [I,N,3] (a, b, c of the inverse 2D covariance), colors [I,N,D],
    opacities [I,N]; depths [I,N] (sort key) and radii [I,N,2] int (0 = skip) are not differentiated.
    Returns colours [I,H,W,D] (no background), alphas [I,H,W,1] and the tile plan.
    """
    n_img, n = means2d.shape[:2]
    plan = bin_splats(means2d, radii, depths, width, height, tile_size or _default_tile_size(means2d))
    d = colors.shape[-1]
    image = composite(means2d.reshape(n_img * n, 2), conics.reshape(n_img * n, 3), opacities.reshape(n_img * n),
                      colors.reshape(n_img * n, d), plan, width, height)
    return image[..., :d], image[..., d:], plan
