"""Torch implementation of nvdiffrast's ``texture`` (public API in :mod:`kernels.mesh`).

Conventions follow nvdiffrast: ``uv = (0, 0)`` is the outer corner of texel ``[0, 0]`` (row 0 of ``tex``, no
vertical flip), texel centres sit at ``(i + 0.5) / size``; 'wrap' takes the fractional part of ``uv``, 'clamp'
clamps to the centres of the border texels, 'zero' reads zeros outside. Mip levels halve each extent (a 1-wide
extent stays 1) by 2x2 box filtering; the level is ``0.5 * log2`` of the squared major axis of the pixel footprint
in texels (``uv_da`` scaled by the texture size), plus ``mip_level_bias``, clamped to the stack.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from ._mesh_raster import gather_combine

FILTER_MODES = ("auto", "nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp", "zero")


def _mip_sizes(h: int, w: int, max_mip_level: int | None) -> list[tuple[int, int]]:
    """Extents of the mip levels 0.. of an ``h x w`` texture: each halves (a 1-wide extent stays 1) down to 1x1 or
    ``max_mip_level``."""
    sizes = [(h, w)]
    limit = -1 if max_mip_level is None else int(max_mip_level)
    while (h > 1 or w > 1) and len(sizes) - 1 != limit:
        if (h > 1 and h % 2) or (w > 1 and w % 2):
            raise ValueError(
                f"texture: cannot build mip level {len(sizes)} from an odd extent {h}x{w} (base "
                f"{sizes[0][0]}x{sizes[0][1]}); use power-of-two texture sizes or limit max_mip_level")
        h, w = max(h // 2, 1), max(w // 2, 1)
        sizes.append((h, w))
    return sizes


def _box_down(src: torch.Tensor, h: int, w: int, out: torch.Tensor) -> torch.Tensor:
    """2x2 box filter of ``src [B, H, W, C]`` down to ``out [B, h, w, C]`` (a 1-wide extent is kept): rows are
    summed first as whole contiguous rows, then column pairs (fast on a short channel axis)."""
    B, C = src.shape[0], src.shape[-1]
    fh, fw = src.shape[1] // h, src.shape[2] // w
    rows = src.reshape(B, h, fh, src.shape[2] * C)
    r = rows[:, :, 0] + rows[:, :, 1] if fh == 2 else rows[:, :, 0]
    r = r.view(B, h, w, fw * C)
    if fw == 2:
        torch.add(r[..., :C], r[..., C:], out=out)
    else:
        out.copy_(r)
    return out.mul_(1.0 / (fh * fw))


def construct_mip(tex: torch.Tensor, max_mip_level: int | None = None) -> list[torch.Tensor]:
    """Mip levels 1.. of ``tex [B, H, W, C]`` (differentiable; the base level is not included)."""
    sizes = _mip_sizes(tex.shape[1], tex.shape[2], max_mip_level)
    return MipStack.views(MipStack.apply(tex, sizes), sizes)[1:]


class MipStack(torch.autograd.Function):
    """``tex [B, H, W, C]`` -> every mip level of it (level 0 first) in one flat ``[B, sum(h * w), C]`` array, the
    layout :func:`texture` gathers from. Built in place level by level; the backward pushes each level's gradient
    down to the level below (a quarter to each of its 2x2 texels), top first, so no per-level copies or
    concatenation are made."""

    @staticmethod
    def forward(ctx, tex, sizes):
        B, C = tex.shape[0], tex.shape[-1]
        flat = tex.new_empty(B, sum(h * w for h, w in sizes), C)
        levels = MipStack.views(flat, sizes)
        levels[0].copy_(tex)
        for i in range(1, len(sizes)):
            _box_down(levels[i - 1], *sizes[i], out=levels[i])
        ctx.sizes = sizes
        return flat

    @staticmethod
    def backward(ctx, g):
        sizes = ctx.sizes
        levels = MipStack.views(g.contiguous(), sizes)
        B, C = g.shape[0], g.shape[-1]
        acc = levels[-1]  # the total gradient of a level: its own plus its share of every level above
        for i in range(len(sizes) - 1, 0, -1):
            (H, W), (h, w) = sizes[i - 1], sizes[i]
            fh, fw = H // h, W // w
            up = acc.unsqueeze(3).expand(B, h, w, fw, C).reshape(B, h, 1, W * C)  # each texel's column pair
            acc = torch.add(levels[i - 1].view(B, h, fh, W * C), up, alpha=1.0 / (fh * fw)).view(B, H, W, C)
        return acc, None

    @staticmethod
    def views(flat: torch.Tensor, sizes) -> list[torch.Tensor]:
        """The levels of a flat stack as ``[B, h, w, C]`` views."""
        out, start = [], 0
        for h, w in sizes:
            out.append(flat[:, start:start + h * w].view(flat.shape[0], h, w, flat.shape[-1]))
            start += h * w
        return out


def _mip_level(tex_hw, uv_da, bias, max_level: int):
    """Continuous mip level per pixel ``[B, H, W]`` clamped to ``[0, max_level]``."""
    level = None
    if uv_da is not None:
        th, tw = tex_hw
        dsdx, dsdy = uv_da[..., 0] * tw, uv_da[..., 1] * tw
        dtdx, dtdy = uv_da[..., 2] * th, uv_da[..., 3] * th
        A = dsdx * dsdx + dtdx * dtdx
        Bq = dsdy * dsdy + dtdy * dtdy
        Cq = dsdx * dsdy + dtdx * dtdy
        l2b = 0.5 * (A + Bq)
        l2n = 0.25 * (A - Bq) ** 2 + Cq * Cq
        major = l2b + torch.sqrt(l2n.clamp_min(1e-30))
        level = 0.5 * torch.log2(major.clamp_min(1e-30))
    if bias is not None:
        level = bias if level is None else level + bias
    return level.clamp(0, max_level)


def _clip(i: torch.Tensor, n) -> torch.Tensor:
    """``i`` clamped to ``[0, n - 1]``; ``n`` an int or a tensor broadcasting with ``i``."""
    return torch.minimum(i.clamp_min(0), torch.as_tensor(n - 1, dtype=i.dtype, device=i.device))


def _bilinear_taps(u, v, w, h, base, boundary: str):
    """Texel indices ``[4, N]`` (into the flat texel array, starting at ``base``) and bilinear weights ``[4, N]``
    (differentiable w.r.t. ``u, v``) for flat ``u, v [N]`` in [0, 1] units of a ``w x h`` level. ``w``, ``h``,
    ``base`` may be per-pixel tensors (mip levels) or ints."""
    if boundary == "wrap":
        u, v = u - torch.floor(u), v - torch.floor(v)
    x, y = u * w - 0.5, v * h - 0.5
    if boundary == "clamp":
        x, y = _clip(x, w), _clip(y, h)
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = x0 + 1, y0 + 1
    gx, gy = 1 - fx, 1 - fy
    weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy])
    if boundary == "wrap":
        x0, x1, y0, y1 = x0 % w, x1 % w, y0 % h, y1 % h
    else:  # clamp (x0, y0 are already inside) or zero
        if boundary == "zero":
            ok = torch.stack([(xx >= 0) & (xx < w) & (yy >= 0) & (yy < h) for yy in (y0, y1) for xx in (x0, x1)])
            weights = weights * ok
        x0, x1, y0, y1 = _clip(x0, w), _clip(x1, w), _clip(y0, h), _clip(y1, h)
    r0, r1 = base + y0 * w, base + y1 * w
    return torch.stack([r0 + x0, r0 + x1, r1 + x0, r1 + x1]), weights


def _nearest(flat, base, u, v, w: int, h: int, boundary: str):
    if boundary == "wrap":
        u, v = u - torch.floor(u), v - torch.floor(v)
    x, y = torch.floor(u * w).long(), torch.floor(v * h).long()
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    out = flat.index_select(0, base + y * w + x)
    return out * ok[:, None] if boundary == "zero" else out


def texture(tex, uv, uv_da=None, mip_level_bias=None, mip=None, filter_mode="auto", boundary_mode="wrap",
            max_mip_level=None):
    """Torch texture sampling; see :func:`kernels.mesh.texture`."""
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"texture: filter_mode {filter_mode!r} not in {FILTER_MODES}")
    if boundary_mode not in BOUNDARY_MODES:
        raise ValueError(f"texture: boundary_mode {boundary_mode!r} not supported by the torch backend "
                         f"(one of {BOUNDARY_MODES}; cube maps need nvdiffrast)")
    if tex.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture: expected tex [B, H, W, C] and uv [B, H, W, 2], got {tuple(tex.shape)} "
                         f"and {tuple(uv.shape)}")
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if (uv_da is not None or mip_level_bias is not None) else "linear"
    if "mipmap" in filter_mode and uv_da is None and mip_level_bias is None:
        raise ValueError(f"texture: filter_mode {filter_mode!r} needs uv_da or mip_level_bias")
    if max_mip_level == 0 and "mipmap" in filter_mode:
        filter_mode = "linear"

    B, H, W = uv.shape[:3]
    Bt, C = tex.shape[0], tex.shape[-1]
    if Bt not in (1, B):
        raise ValueError(f"texture: tex minibatch {Bt} does not match uv minibatch {B}")
    th, tw = tex.shape[1], tex.shape[2]
    uvf = uv.reshape(-1, 2)
    u, v = uvf[:, 0], uvf[:, 1]
    dev = uv.device

    def batch_base(per_image: int):
        if Bt == 1:
            return 0
        return (torch.arange(B, device=dev) * per_image).repeat_interleave(H * W)

    if filter_mode in ("nearest", "linear"):
        flat = tex.reshape(-1, C)
        base = batch_base(th * tw)
        if filter_mode == "nearest":
            return _nearest(flat, base, u, v, tw, th, boundary_mode).view(B, H, W, C)
        idx, wts = _bilinear_taps(u, v, tw, th, base, boundary_mode)
        return gather_combine(flat, idx, wts).view(B, H, W, C)

    if mip is not None:  # prebuilt levels 1..
        levels = [tex] + list(mip)
        if max_mip_level is not None:
            levels = levels[:int(max_mip_level) + 1]
        sizes = [(lv.shape[1], lv.shape[2]) for lv in levels]
        flat = torch.cat([lv.reshape(Bt, -1, C) for lv in levels], 1).reshape(-1, C)
    else:
        sizes = _mip_sizes(th, tw, max_mip_level)
        flat = MipStack.apply(tex, sizes).reshape(-1, C)
    counts = [h * w for h, w in sizes]
    offs = torch.tensor([0] + list(accumulate(counts))[:-1], device=dev)
    hs = torch.tensor([s[0] for s in sizes], device=dev)
    ws = torch.tensor([s[1] for s in sizes], device=dev)
    base = batch_base(sum(counts))

    da = None if uv_da is None else uv_da.reshape(-1, 4)
    bias = None if mip_level_bias is None else mip_level_bias.reshape(-1)
    flevel = _mip_level((th, tw), da, bias, len(sizes) - 1)
    level0 = torch.floor(flevel.detach()).long()
    idx0, w0 = _bilinear_taps(u, v, ws[level0], hs[level0], base + offs[level0], boundary_mode)
    if filter_mode == "linear-mipmap-nearest":
        return gather_combine(flat, idx0, w0).view(B, H, W, C)
    level1 = (level0 + 1).clamp_max(len(sizes) - 1)
    idx1, w1 = _bilinear_taps(u, v, ws[level1], hs[level1], base + offs[level1], boundary_mode)
    frac = flevel - level0
    return gather_combine(flat, torch.cat([idx0, idx1]), torch.cat([w0 * (1 - frac), w1 * frac])).view(B, H, W, C)
