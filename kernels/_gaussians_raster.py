"""Tile-binned, depth-sorted alpha compositing of 2D Gaussian splats in plain torch.

Image formation (3DGS / gsplat): pixel centres at half-integers; per pixel, splats front to back by
depth; ``alpha = min(0.99, opacity * exp(-sigma))``, splats with alpha under 1/255 are skipped, and a
pixel stops before the splat that would bring its transmittance to 1e-4 or below.

How it runs on a CPU: every (tile, splat) intersection becomes six coefficients ``q`` of a quadratic
polynomial in tile-local pixel coordinates, ``log alpha_raw(p) = q . [1, x, y, x^2, xy, y^2]``, so the
[splats x pixels] exponent of a whole batch of tiles is one matrix product. Tiles are processed in
groups (similar splat counts together) and splats in depth chunks; transmittance is carried from chunk
to chunk, and tiles drop out as soon as their list ends or all their pixels are saturated. The backward
recomputes each chunk (memory stays bounded by the chunk size) and walks the chunks front to back with
the suffix sums of the blend obtained from the forward's totals, as gsplat's kernels do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._gaussians_project import ALPHA_THRESHOLD

MAX_ALPHA = 0.99
TRANSMITTANCE_MIN = 1e-4
_CHUNK_DEPTH = 32  # splats per tile processed at once
_CHUNK_ELEMENTS = 1 << 21  # tiles x depth x pixels per chunk (bounds the working memory)
_PAD_LOG_ALPHA = -1e4  # log alpha of padding entries: exp() underflows to exactly 0


@dataclass
class TilePlan:
    """Which splats touch which tiles, sorted by (image, tile, depth); built without gradients."""

    tile_size: int
    tiles_x: int
    tiles_y: int
    n_images: int
    isect_tiles: torch.Tensor  # [M] int64 global tile id (image * tiles_y * tiles_x + ty * tiles_x + tx)
    isect_splats: torch.Tensor  # [M] int64 flat splat id (image * N + gaussian)
    tile_counts: torch.Tensor  # [n_tiles] int64
    tile_offsets: torch.Tensor  # [n_tiles] int64 start of each tile's run in the isect arrays
    tiles_per_splat: torch.Tensor  # [n_images * N] int64
    groups: list  # of (tile ids [B], starts [B], counts [B], max count) with counts descending

    @property
    def n_tiles(self) -> int:
        return self.n_images * self.tiles_y * self.tiles_x

    @property
    def n_isects(self) -> int:
        return int(self.isect_tiles.numel())


@torch.no_grad()
def bin_splats(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int,
               tile_size: int) -> TilePlan:
    """Intersect splats (means2d [I,N,2], radii [I,N,2] int, depths [I,N]) with ``tile_size`` square tiles."""
    n_img, n = radii.shape[:2]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    dev = means2d.device
    visible = (radii > 0).all(dim=-1).reshape(-1)
    fid = torch.nonzero(visible).squeeze(1)
    fid = fid[torch.argsort(depths.reshape(-1)[fid], stable=True)]  # front to back (ties: lower index first)
    m = means2d.detach().reshape(-1, 2)[fid] / tile_size
    r = radii.reshape(-1, 2)[fid].to(m.dtype) / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    span_x = x1 - x0
    per_splat = span_x * (y1 - y0)
    tiles_per_splat = torch.zeros(n_img * n, dtype=torch.long, device=dev)
    tiles_per_splat[fid] = per_splat

    owner = torch.repeat_interleave(torch.arange(fid.numel(), device=dev), per_splat)
    local = torch.arange(owner.numel(), device=dev) - (torch.cumsum(per_splat, 0) - per_splat)[owner]
    sx = span_x[owner]
    tx = x0[owner] + local % sx
    ty = y0[owner] + torch.div(local, sx, rounding_mode="floor")
    splat = fid[owner]
    tile = torch.div(splat, n, rounding_mode="floor") * (tiles_x * tiles_y) + ty * tiles_x + tx
    order = torch.argsort(tile, stable=True)  # stable: keeps the depth order inside each tile
    tile, splat = tile[order], splat[order]

    n_tiles = n_img * tiles_x * tiles_y
    counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return TilePlan(tile_size, tiles_x, tiles_y, n_img, tile, splat, counts, offsets, tiles_per_splat,
                    _group_tiles(counts, offsets, tile_size * tile_size))


def _group_tiles(counts: torch.Tensor, offsets: torch.Tensor, pixels: int) -> list:
    """Non-empty tiles sorted by count (descending) and cut into groups of bounded chunk size."""
    nonempty = torch.nonzero(counts).squeeze(1)
    nonempty = nonempty[torch.argsort(counts[nonempty], descending=True, stable=True)]
    groups = []
    per_group = max(1, _CHUNK_ELEMENTS // (_CHUNK_DEPTH * pixels))
    for s in range(0, nonempty.numel(), per_group):
        ids = nonempty[s:s + per_group]
        c = counts[ids]
        groups.append((ids, offsets[ids], c, int(c[0])))
    return groups


def tile_pixel_features(tile_size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[P,6] monomials [1, x, y, x^2, xy, y^2] of pixel centres relative to the tile centre, row-major."""
    c = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], dim=-1)


def isect_log_alpha_coeffs(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                           plan: TilePlan) -> torch.Tensor:
    """Per intersection, the coefficients q [M,6] of log alpha_raw over the tile's pixel monomials.

    means2d [I*N,2], conics [I*N,3], opacities [I*N] (flat splat index); differentiable by autograd.
    """
    ts = plan.tile_size
    local_tile = plan.isect_tiles % (plan.tiles_x * plan.tiles_y)
    centre = torch.stack([(local_tile % plan.tiles_x) * ts, torch.div(local_tile, plan.tiles_x, rounding_mode="floor") * ts],
                         dim=-1).to(means2d.dtype) + ts / 2
    d = means2d[plan.isect_splats] - centre
    a, b, c = conics[plan.isect_splats].unbind(-1)
    dx, dy = d.unbind(-1)
    gx, gy = a * dx + b * dy, b * dx + c * dy
    log_op = torch.log(opacities[plan.isect_splats])
    return torch.stack([log_op - 0.5 * (dx * gx + dy * gy), gx, gy, -0.5 * a, -b, -0.5 * c], dim=-1)


def _padded(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, fill.to(x).expand(1, x.shape[1])], dim=0)


def _chunk_index(starts, counts, depth0: int, depth: int, pad: int) -> torch.Tensor:
    """[B,depth] isect indices of the depth slice [depth0, depth0+depth) of each tile (``pad`` past its end)."""
    j = torch.arange(depth0, depth0 + depth, device=starts.device)
    return torch.where(j < counts[:, None], starts[:, None] + j, pad)


def _blend_chunk(q_pad, idx, trans, feats):
    """Alphas, transmittances and blend weights of one chunk.

    Returns alpha [B,K,P] (clamped, zero where skipped), trans_buf [B,K+1,P] (transmittance before each
    splat, then after the last), weights [B,K,P] (zero after the early stop), stopped mask or None.
    """
    alpha = torch.matmul(q_pad[idx], feats.T).exp_().clamp_(max=MAX_ALPHA)  # [B,K,P]
    F.threshold(alpha, ALPHA_THRESHOLD, 0.0, inplace=True)
    one_minus = torch.rsub(alpha, 1.0)
    b, k, p = alpha.shape
    trans_buf = alpha.new_empty(b, k + 1, p)
    trans_buf[:, 0] = trans
    if b * p >= 8192:
        for i in range(k):
            torch.mul(trans_buf[:, i], one_minus[:, i], out=trans_buf[:, i + 1])
    else:  # few pixels per step: one scan op is cheaper than k small ones
        trans_buf[:, 1:] = torch.cumprod(one_minus, dim=1) * trans[:, None]
    weights = alpha * trans_buf[:, :k]
    stopped = None
    if bool(trans_buf[:, k].min() <= TRANSMITTANCE_MIN):
        stopped = trans_buf[:, 1:] <= TRANSMITTANCE_MIN
        weights.masked_fill_(stopped, 0.0)
    return alpha, one_minus, trans_buf, weights, stopped


def _still_active(counts, depth_end: int, trans) -> torch.Tensor:
    return (counts > depth_end) & (trans.amax(dim=1) > TRANSMITTANCE_MIN)


def composite_forward(q: torch.Tensor, colors: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Blend splats into tiles: [n_tiles, P, D+1] = (sum w c, sum w) per pixel (no background)."""
    p = plan.tile_size**2
    d1 = colors.shape[1] + 1
    feats = tile_pixel_features(plan.tile_size, q.dtype, q.device)
    q_pad = _padded(q, torch.tensor([[_PAD_LOG_ALPHA, 0, 0, 0, 0, 0]]))
    col_pad = _padded(torch.cat([colors, colors.new_ones(colors.shape[0], 1)], dim=1), torch.zeros(1, 1))
    acc = q.new_zeros(plan.n_tiles, p, d1)
    for tile_ids, starts, counts, max_count in plan.groups:
        act = torch.arange(tile_ids.numel(), device=q.device)
        trans = q.new_ones(act.numel(), p)
        out = q.new_zeros(act.numel(), p, d1)
        for depth0 in range(0, max_count, _CHUNK_DEPTH):
            if depth0:
                keep = _still_active(counts[act], depth0, trans)
                if not bool(keep.all()):
                    act, trans = act[keep], trans[keep]
                    if act.numel() == 0:
                        break
            idx = _chunk_index(starts[act], counts[act], depth0, _CHUNK_DEPTH, plan.n_isects)
            _, _, trans_buf, weights, _ = _blend_chunk(q_pad, idx, trans, feats)
            out.index_add_(0, act, torch.bmm(weights.transpose(1, 2), col_pad[idx]))
            trans = trans_buf[:, -1]
        acc[tile_ids] = out
    return acc


def composite_backward(q, colors, acc, grad_acc, plan: TilePlan):
    """Gradients (dq [M,6], dcolors [M,D]) of the blend, recomputing the forward chunk by chunk."""
    p = plan.tile_size**2
    d = colors.shape[1]
    feats = tile_pixel_features(plan.tile_size, q.dtype, q.device)
    q_pad = _padded(q, torch.tensor([[_PAD_LOG_ALPHA, 0, 0, 0, 0, 0]]))
    col_pad = _padded(torch.cat([colors, colors.new_ones(colors.shape[0], 1)], dim=1), torch.zeros(1, 1))
    grad_acc = grad_acc.contiguous()
    total = (grad_acc * acc).sum(dim=-1)  # [n_tiles, P]: sum over all splats of w * dL/dw
    dq = q.new_zeros(q.shape[0] + 1, 6)
    dcol = q.new_zeros(q.shape[0] + 1, d)
    for tile_ids, starts, counts, max_count in plan.groups:
        act = torch.arange(tile_ids.numel(), device=q.device)
        trans = q.new_ones(act.numel(), p)
        prefix = q.new_zeros(act.numel(), p)
        grads, totals = grad_acc[tile_ids], total[tile_ids]
        for depth0 in range(0, max_count, _CHUNK_DEPTH):
            if depth0:
                keep = _still_active(counts[act], depth0, trans)
                if not bool(keep.all()):
                    act, trans, prefix = act[keep], trans[keep], prefix[keep]
                    if act.numel() == 0:
                        break
            idx = _chunk_index(starts[act], counts[act], depth0, _CHUNK_DEPTH, plan.n_isects)
            alpha, one_minus, trans_buf, weights, stopped = _blend_chunk(q_pad, idx, trans, feats)
            g = grads[act]  # [B,P,D+1]
            dl_dw = torch.bmm(col_pad[idx], g.transpose(1, 2))  # [B,K,P]
            wv = weights * dl_dw
            upto = torch.cumsum(wv, dim=1).add_(prefix[:, None])  # sum of w v up to and including each splat
            # d loss / d log alpha_raw = alpha * dL/dalpha = w v - alpha / (1 - alpha) * (sum of w v behind)
            behind = torch.sub(totals[act][:, None], upto)
            clamped = alpha >= MAX_ALPHA if bool(alpha.max() >= MAX_ALPHA) else None
            dlog = wv.sub_(alpha.div_(one_minus).mul_(behind))
            if clamped is not None:
                dlog.masked_fill_(clamped, 0.0)
            if stopped is not None:
                dlog.masked_fill_(stopped, 0.0)
            flat = idx.reshape(-1)
            dq[flat] = torch.matmul(dlog, feats).reshape(-1, 6)
            dcol[flat] = torch.bmm(weights, g[..., :d]).reshape(-1, d)
            trans, prefix = trans_buf[:, -1], upto[:, -1]
    return dq[:-1], dcol[:-1]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, colors, plan):
        acc = composite_forward(q, colors, plan)
        ctx.plan = plan
        ctx.save_for_backward(q, colors, acc)
        return acc

    @staticmethod
    def backward(ctx, grad_acc):
        q, colors, acc = ctx.saved_tensors
        dq, dcol = composite_backward(q, colors, acc, grad_acc, ctx.plan)
        return dq, dcol, None


def composite(q: torch.Tensor, colors: torch.Tensor, plan: TilePlan, width: int, height: int) -> torch.Tensor:
    """Differentiable blend of intersections (q [M,6], colors [M,D]) -> [I,H,W,D+1] (colour sums, alpha)."""
    acc = _Composite.apply(q, colors, plan)
    ts = plan.tile_size
    img = acc.reshape(plan.n_images, plan.tiles_y, plan.tiles_x, ts, ts, -1).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(plan.n_images, plan.tiles_y * ts, plan.tiles_x * ts, -1)
    return img[:, :height, :width]
