"""3D Gaussians -> screen-space splats: EWA projection, culling, radii, spherical harmonics.

Plain differentiable torch (autograd does the backward); the conventions are gsplat's:
OpenCV world-to-camera ``viewmats`` [C,4,4], pixel intrinsics ``Ks`` [C,3,3], pixel centres at
half-integers, quaternions wxyz (need not be normalised), linear scales, opacities in (0, 1).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _native

ALPHA_THRESHOLD = 1.0 / 255.0  # contributions below this alpha are skipped
GAUSSIAN_EXTEND = 3.33  # radius cap in standard deviations
MIN_COMPENSATION = 0.005  # floor of the antialiasing compensation factor


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances ``R S S^T R^T`` [N,3,3] from quaternions [N,4] (wxyz) and scales [N,3]."""
    lib = _native_library(quats, scales)
    if lib is not None and quats.dim() == 2:
        return _NativeCovariances.apply(quats, scales, lib)
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
    m = rot * scales[..., None, :]
    return (m[..., :, None, :] * m[..., None, :, :]).sum(-1)  # elementwise: batched 3x3 matmuls are slow on CPU


@dataclass
class Projected:
    """Per (camera, Gaussian) screen-space splats, all [C,N,...]; entries with ``radii == 0`` are culled
    (their other fields are finite placeholders: zeros for means2d/depths/conics/opacities)."""

    means2d: torch.Tensor  # [C,N,2] pixels
    depths: torch.Tensor  # [C,N] camera-space z
    conics: torch.Tensor  # [C,N,3] inverse blurred 2D covariance (a, b, c): sigma = a dx^2/2 + b dx dy + c dy^2/2
    opacities: torch.Tensor  # [C,N] opacity times the antialiasing compensation where enabled
    radii: torch.Tensor  # [C,N,2] int32 half extents in pixels (x, y), 0 = culled

    @property
    def visible(self) -> torch.Tensor:
        return (self.radii > 0).all(dim=-1)


def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projected:
    """EWA-project Gaussians (means [N,3], covars [N,3,3], opacities [N]) into C pinhole cameras.

    As gsplat: the Jacobian is evaluated at the mean with x/z, y/z clamped to 1.3x the field of view,
    ``eps2d`` is added to the 2D covariance, ``antialiased`` scales opacity by
    sqrt(det(cov) / det(cov + eps2d I)) (floored at 0.005), and Gaussians are culled when their depth is
    outside [near, far], their opacity is under 1/255, both radii are <= ``radius_clip``, or their
    opacity-aware box (extent min(3.33, sqrt(2 ln(255 opacity))) standard deviations per axis) misses
    the image.
    """
    lib = _native_library(means, covars, opacities, cameras=(viewmats, Ks))
    if lib is not None:
        return _project_native(lib, means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane,
                               far_plane, radius_clip, antialiased)
    rot = viewmats[:, :3, :3]  # [C,3,3]
    # camera-space means [C,N,3], written elementwise (batched 3x3 products are slow on CPU)
    means_c = (means[None, :, None, :] * rot[:, None]).sum(-1) + viewmats[:, None, :3, 3]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite (and their gradients zero)

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.minimum(torch.maximum(x / z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    v = torch.minimum(torch.maximum(y / z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    # rows of J @ R_view [C,N,3] with the EWA Jacobian J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]]
    r0, r1, r2 = rot[:, None, 0], rot[:, None, 1], rot[:, None, 2]  # [C,1,3]
    t0 = (fx / z)[..., None] * (r0 - u[..., None] * r2)
    t1 = (fy / z)[..., None] * (r1 - v[..., None] * r2)
    s0 = (covars[None] * t0[..., None, :]).sum(-1)  # covars @ t0, [C,N,3]
    s1 = (covars[None] * t1[..., None, :]).sum(-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    c00, c01, c11 = (t0 * s0).sum(-1), (t0 * s1).sum(-1), (t1 * s1).sum(-1)  # J R Sigma R^T J^T
    det_orig = c00 * c11 - c01 * c01
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = (c00 * c11 - c01 * c01).clamp_min(1e-10)
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)
    opac = opacities.expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp_min(det_orig / det, MIN_COMPENSATION**2))

    with torch.no_grad():
        op = opac.detach()
        keep = in_depth & (op >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(GAUSSIAN_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(c00.detach()))
        ry = torch.ceil(extend * torch.sqrt(c11.detach()))
        keep &= (rx > radius_clip) | (ry > radius_clip)
        m2 = means2d.detach()
        keep &= (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        radii = (torch.stack([rx, ry], dim=-1) * keep[..., None]).to(torch.int32)

    def masked(t: torch.Tensor) -> torch.Tensor:
        k = keep.reshape(keep.shape + (1,) * (t.dim() - keep.dim()))
        return torch.where(k, t, torch.zeros((), dtype=t.dtype, device=t.device))

    return Projected(masked(means2d), masked(means_c[..., 2]), masked(conics), masked(opac), radii)


def _native_library(*tensors, cameras=()):
    """The compiled kernels when they apply: CPU float32/float64 tensors of one dtype, cameras without gradients."""
    if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) for t in tensors + cameras):
        return None
    if len({t.dtype for t in tensors}) != 1 or any(t.requires_grad for t in cameras):
        return None
    return _native.load("gaussians")


class _NativeCovariances(torch.autograd.Function):
    """quat_scale_to_covar by ``csrc/gaussians.cpp``."""

    @staticmethod
    def forward(ctx, quats, scales, lib):
        quats, scales = quats.contiguous(), scales.contiguous()
        covars = quats.new_empty(quats.shape[0], 3, 3)
        fn = lib.gen3d_covariances_f32 if quats.dtype == torch.float32 else lib.gen3d_covariances_f64
        fn(ctypes.c_int64(quats.shape[0]), *_native.pointers(quats, scales, covars))
        ctx.lib = lib
        ctx.save_for_backward(quats, scales)
        return covars

    @staticmethod
    def backward(ctx, g_cov):
        quats, scales = ctx.saved_tensors
        d_quats, d_scales = torch.empty_like(quats), torch.empty_like(scales)
        fn = ctx.lib.gen3d_covariances_backward_f32 if quats.dtype == torch.float32 else \
            ctx.lib.gen3d_covariances_backward_f64
        g_cov = g_cov.contiguous()
        fn(ctypes.c_int64(quats.shape[0]), *_native.pointers(quats, scales, g_cov, d_quats, d_scales))
        return d_quats, d_scales, None


class _NativeProject(torch.autograd.Function):
    """project_gaussians by ``csrc/gaussians.cpp`` (same rules; no gradient to the cameras)."""

    @staticmethod
    def forward(ctx, means, covars, opacities, lib, sizes, params, settings):
        means, covars, opacities = (t.contiguous() for t in (means, covars, opacities))
        c, n = int(sizes[0]), int(sizes[1])
        means2d, conics = means.new_empty(c, n, 2), means.new_empty(c, n, 3)
        depths, opac = means.new_empty(c, n), means.new_empty(c, n)
        radii = torch.empty(c, n, 2, dtype=torch.int32)
        fn = lib.gen3d_project_f32 if means.dtype == torch.float32 else lib.gen3d_project_f64
        fn(*_native.pointers(sizes, params, settings, means, covars, opacities, means2d, depths, conics, opac, radii))
        ctx.lib, ctx.consts = lib, (sizes, params, settings)
        ctx.save_for_backward(means, covars, opacities)
        ctx.mark_non_differentiable(radii)
        return means2d, depths, conics, opac, radii

    @staticmethod
    def backward(ctx, g_means2d, g_depths, g_conics, g_opac, _):
        means, covars, opacities = ctx.saved_tensors
        c, n = int(ctx.consts[0][0]), int(ctx.consts[0][1])
        grads = [g.contiguous() if g is not None else means.new_zeros(shape)
                 for g, shape in zip((g_means2d, g_depths, g_conics, g_opac), ((c, n, 2), (c, n), (c, n, 3), (c, n)))]
        d_means, d_covars, d_opac = torch.empty_like(means), torch.empty_like(covars), torch.empty_like(opacities)
        fn = ctx.lib.gen3d_project_backward_f32 if means.dtype == torch.float32 else ctx.lib.gen3d_project_backward_f64
        fn(*_native.pointers(*ctx.consts, means, covars, opacities, *grads, d_means, d_covars, d_opac))
        return d_means, d_covars, d_opac, None, None, None, None


def _project_native(lib, means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                    radius_clip, antialiased) -> Projected:
    c, n = viewmats.shape[0], means.shape[0]
    vm, K = viewmats.detach().to(torch.float64), Ks.detach().to(torch.float64)
    params = torch.cat([vm[:, :3, :3].reshape(c, 9), vm[:, :3, 3], K[:, 0, 0, None], K[:, 1, 1, None],
                        K[:, 0, 2, None], K[:, 1, 2, None]], dim=1).contiguous()
    sizes = torch.tensor([c, n, width, height], dtype=torch.int64)
    settings = torch.tensor([eps2d, near_plane, far_plane, radius_clip, float(antialiased)], dtype=torch.float64)
    means2d, depths, conics, opac, radii = _NativeProject.apply(means, covars.reshape(n, 9), opacities, lib, sizes,
                                                                params, settings)
    return Projected(means2d, depths, conics, opac, radii)


# Real spherical harmonics in the 3DGS / gsplat order and sign convention (Cartesian closed forms).
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The (degree+1)^2 real SH basis functions [...,K] at unit directions [...,3] (gsplat's order and signs)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], _SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _SH_C2[0] * x * y, _SH_C2[1] * y * z, _SH_C2[2] * (2 * zz - xx - yy),
            _SH_C2[3] * x * z, _SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * x * y * z, _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH coefficients [N,K,D] (K >= (degree+1)^2) along directions [...,N,3] -> [...,N,D].

    Directions need not be normalised (as gsplat, they are normalised here).
    """
    n_bases = (degree + 1) ** 2
    if coeffs.dim() != 3 or coeffs.shape[1] < n_bases:
        raise ValueError(f"SH coefficients must be [N,K>={n_bases},D] for degree {degree}, got {tuple(coeffs.shape)}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))  # [...,N,n_bases]
    return torch.einsum("...nk,nkd->...nd", basis, coeffs[:, :n_bases])
