"""Tile-binned, depth-sorted alpha compositing of 2D Gaussian splats in plain torch.

Image formation (3DGS / gsplat): pixel centres at half-integers; per pixel, splats front to back by
depth; ``alpha = min(0.99, opacity * exp(-sigma))``, splats with alpha under 1/255 are skipped, and a
pixel stops before the splat that would bring its transmittance to 1e-4 or below.

How it runs on a CPU: every (tile, splat) intersection becomes six coefficients ``q`` of a quadratic
polynomial in tile-local pixel coordinates, ``log alpha_raw(p) = q . [1, x, y, x^2, xy, y^2]``, so the
[splats x pixels] exponent of a whole batch of tiles is one matrix product. Tiles are processed in
groups (similar splat counts together) and splats in depth chunks; transmittance is carried from chunk
to chunk, and tiles drop out as soon as their list ends or all their pixels are saturated. The backward
reuses the forward's blend weights while they fit in a memory budget and recomputes the rest chunk by
chunk (so memory stays bounded), walking the chunks front to back with the suffix sums of the blend
obtained from the forward's totals, as gsplat's kernels do.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import _native
from ._gaussians_project import ALPHA_THRESHOLD

MAX_ALPHA = 0.99
TRANSMITTANCE_MIN = 1e-4
_CHUNK_DEPTH = 32  # splats per tile processed at once
_CHUNK_ELEMENTS = 1 << 21  # tiles x depth x pixels per chunk (bounds the working memory)
_PAD_LOG_ALPHA = -1e4  # log alpha of padding entries: exp() underflows to exactly 0
_SAVE_BUDGET = 1 << 30  # bytes of forward blend state kept for the backward (beyond it: recompute)
_LOG2E = 1.4426950408889634  # alphas are evaluated with exp2, cheaper than exp on CPUs


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

    @property
    def n_tiles(self) -> int:
        return self.n_images * self.tiles_y * self.tiles_x

    @property
    def n_isects(self) -> int:
        return int(self.isect_tiles.numel())

    @functools.cached_property
    def groups(self) -> list:
        """(tile ids [B], starts [B], counts [B], max count) groups of the torch compositor, counts descending."""
        return _group_tiles(self.tile_counts, self.tile_offsets, self.tile_size * self.tile_size)


@torch.no_grad()
def bin_splats(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int,
               tile_size: int) -> TilePlan:
    """Intersect splats (means2d [I,N,2], radii [I,N,2] int, depths [I,N]) with ``tile_size`` square tiles."""
    n_img, n = radii.shape[:2]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    dev = means2d.device
    visible = (radii > 0).all(dim=-1).reshape(-1)
    fid = torch.nonzero(visible).squeeze(1)
    fid = fid.index_select(0, torch.argsort(depths.reshape(-1).index_select(0, fid), stable=True))  # front to back
    m = means2d.detach().reshape(-1, 2).index_select(0, fid) / tile_size
    r = radii.reshape(-1, 2).index_select(0, fid).to(m.dtype) / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    span_x = x1 - x0
    per_splat = span_x * (y1 - y0)
    tiles_per_splat = torch.zeros(n_img * n, dtype=torch.long, device=dev)
    tiles_per_splat[fid] = per_splat

    n_tiles = n_img * tiles_x * tiles_y
    lib = _native.load("gaussians") if dev.type == "cpu" else None
    if lib is not None:
        tile, splat, counts = _bin_native(lib, fid, n, x0, x1, y0, y1, n_img, tiles_x, tiles_y)
    else:
        tile, splat = _bin_torch(fid, n, x0, y0, span_x, per_splat, tiles_x, tiles_y)
        counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return TilePlan(tile_size, tiles_x, tiles_y, n_img, tile, splat, counts, offsets, tiles_per_splat)


def _bin_torch(fid, n, x0, y0, span_x, per_splat, tiles_x, tiles_y):
    """(tile ids, splat ids) [M] sorted by tile, depth order kept inside each tile (fid is front to back)."""
    dev = fid.device
    # one entry per (splat, tile), in splat order, enumerating each splat's tile rectangle row by row
    first = torch.div(fid, n, rounding_mode="floor") * (tiles_x * tiles_y) + y0 * tiles_x + x0
    owner = torch.repeat_interleave(torch.arange(fid.numel(), device=dev), per_splat)
    local = torch.arange(owner.numel(), device=dev) - (torch.cumsum(per_splat, 0) - per_splat).index_select(0, owner)
    sx = span_x.index_select(0, owner)
    row = torch.div(local, sx, rounding_mode="floor")
    tile = first.index_select(0, owner) + row * tiles_x + (local - row * sx)
    order = torch.argsort(tile, stable=True)  # stable: keeps the depth order inside each tile
    return tile.index_select(0, order), fid.index_select(0, owner.index_select(0, order))


def _bin_native(lib, fid, n, x0, x1, y0, y1, n_img, tiles_x, tiles_y):
    """As _bin_torch, plus the per-tile counts, by a counting sort: counts from a 2D difference array of the
    rectangles, then the compiled fill walks the splats front to back."""
    img = torch.div(fid, n, rounding_mode="floor")
    grid = torch.zeros(n_img, tiles_y + 1, tiles_x + 1, dtype=torch.long)
    ones = torch.ones_like(fid)
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        grid.index_put_((img, ys, xs), sign * ones, accumulate=True)
    counts = grid.cumsum(1).cumsum(2)[:, :tiles_y, :tiles_x].reshape(-1)
    total = int(counts.sum())
    tile, splat = torch.empty(total, dtype=torch.long), torch.empty(total, dtype=torch.long)
    cursor = torch.cumsum(counts, 0) - counts
    rect = torch.stack([x0, x1, y0, y1], dim=1).contiguous()
    fid = fid.contiguous()
    lib.gen3d_bin_fill(ctypes.c_int64(fid.numel()), *_native.pointers(fid, rect), ctypes.c_int64(n),
                       ctypes.c_int64(tiles_x), ctypes.c_int64(tiles_x * tiles_y),
                       *_native.pointers(cursor, tile, splat))
    return tile, splat, counts


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


class Splats:
    """Flat per-splat inputs of the compositor as one table [S+1, 7+D] (row ``pad`` = padding):
    columns mean x, mean y, conic a, b, c, log opacity, D colour channels, 1 (the alpha channel)."""

    def __init__(self, means2d, conics, log_opacities, colors):
        self.pad = means2d.shape[0]
        rows = torch.cat([means2d, conics, log_opacities[:, None], colors, colors.new_ones(self.pad, 1)], dim=1)
        padding = rows.new_zeros(1, rows.shape[1])
        padding[0, 5] = _PAD_LOG_ALPHA
        self.table = torch.cat([rows, padding])
        self.channels = colors.shape[1] + 1

    def rows(self, sid):
        """[B,K,7+D] table rows of splats sid [B,K] (index_select is the fast gather on CPU)."""
        return self.table.index_select(0, sid.reshape(-1)).view(sid.shape + (self.table.shape[1],))

    def split_grads(self, grads):
        """[S+1, 6+D] accumulated gradients -> (means2d [S,2], conics [S,3], log opacity [S], colours [S,D])."""
        grads = grads[:-1]
        return grads[:, :2], grads[:, 2:5], grads[:, 5], grads[:, 6:]


def _log_alpha_coeffs(rows, centres):
    """q [B,K,6]: log alpha_raw over tile-local pixel monomials for splat rows [B,K,7+D]; centres [B,2].

    Returns q and the intermediates its backward needs (offset from the tile centre, conic, gradient).
    """
    dx = rows[..., 0] - centres[:, None, 0]
    dy = rows[..., 1] - centres[:, None, 1]
    a, b, c = rows[..., 2], rows[..., 3], rows[..., 4]
    gx, gy = a * dx + b * dy, b * dx + c * dy
    q = torch.stack([rows[..., 5] - 0.5 * (dx * gx + dy * gy), gx, gy, -0.5 * a, -b, -0.5 * c], dim=-1)
    return q, (dx, dy, a, b, c, gx, gy)


def _log_alpha_coeffs_vjp(dq, saved):
    """Pull dq [B,K,6] back to [B,K,6] = d (mean x, mean y, conic a, b, c, log opacity)."""
    dx, dy, a, b, c, gx, gy = saved
    d0, dgx, dgy, da, db, dc = dq.unbind(-1)
    return torch.stack([dgx * a + dgy * b - d0 * gx, dgx * b + dgy * c - d0 * gy,
                        dgx * dx - 0.5 * (d0 * dx * dx + da), dgx * dy + dgy * dx - d0 * dx * dy - db,
                        dgy * dy - 0.5 * (d0 * dy * dy + dc), d0], dim=-1)


def _blend_chunk(q, trans, feats2):
    """Alphas, transmittances and blend weights of one chunk.

    q [B,K,6] coefficients, trans [B,P] transmittance entering the chunk, feats2 [P,6] pixel monomials
    times log2(e). Returns alpha [B,K,P] (clamped, zero where skipped), odds alpha / (1 - alpha),
    trans_buf [B,K+1,P] (transmittance before each splat, then after the last; it keeps falling past
    the early stop), weights [B,K,P] (zero from the early stop on) and a 0/1 mask of the splats blended
    before the stop, or None when no pixel stopped in this chunk.
    """
    alpha = torch.matmul(q, feats2.T).exp2_().clamp_(max=MAX_ALPHA)  # [B,K,P]
    F.threshold(alpha, ALPHA_THRESHOLD, 0.0, inplace=True)
    one_minus = torch.rsub(alpha, 1.0)
    b, k, p = alpha.shape
    trans_buf = alpha.new_empty(b, k + 1, p)
    trans_buf[:, 0] = trans
    if b * p >= 4096:
        for i in range(k):
            torch.mul(trans_buf[:, i], one_minus[:, i], out=trans_buf[:, i + 1])
    else:  # few pixels per step: one scan op is cheaper than k small ones
        trans_buf[:, 1:] = torch.cumprod(one_minus, dim=1) * trans[:, None]
    odds = one_minus.reciprocal_().mul_(alpha)
    after = trans_buf[:, 1:]
    kept = None
    if bool(trans_buf[:, k].min() <= TRANSMITTANCE_MIN):
        # a pixel stops before the splat that would take it to 1e-4: zeroing the transmittance after each
        # splat from there on zeroes w = alpha T_before = odds * T_after for that splat and all behind it
        after = F.threshold(after, TRANSMITTANCE_MIN, 0.0)
        kept = torch.sign(after)
    return alpha, odds, trans_buf, odds * after, kept


class _Walk:
    """Depth chunks of one tile group: yields the isect indices [B,K] of each chunk's active tiles.

    Per-tile state (``carry``: transmittance [B,P] first, then whatever the caller keeps per tile) is
    compacted when tiles finish: their list is exhausted or every pixel is under the transmittance floor.
    ``keeps`` records each chunk's compaction (indices into the previous active set, or None).
    """

    def __init__(self, group, carry: list):
        self.tile_ids, self.starts, self.counts, self.max_count = group
        self.carry = carry
        self.keeps = []

    def __iter__(self):
        starts, counts = self.starts, self.counts
        for depth0 in range(0, self.max_count, _CHUNK_DEPTH):
            keep = None
            if depth0:
                alive = (counts > depth0) & (self.carry[0].amax(dim=1) > TRANSMITTANCE_MIN)
                if not bool(alive.all()):
                    if not bool(alive.any()):
                        return
                    keep = torch.nonzero(alive).squeeze(1)
                    starts, counts = starts[keep], counts[keep]
                    self.carry[:] = [c.index_select(0, keep) for c in self.carry]
            self.keeps.append(keep)
            j = torch.arange(depth0, depth0 + _CHUNK_DEPTH, device=starts.device)
            yield torch.where(j < counts[:, None], starts[:, None] + j, -1)


@dataclass
class _Chunk:
    """What the backward needs of one forward chunk: compaction, splat ids and the blend state."""

    keep: Optional[torch.Tensor]  # active-tile compaction before this chunk
    sid: torch.Tensor  # [B,K] splat ids
    odds: torch.Tensor  # [B,K,P] alpha / (1 - alpha), zero after the early stop and where alpha is clamped
    weights: torch.Tensor  # [B,K,P] blend weights
    clamped: Optional[torch.Tensor]  # [B,K,P] alpha hit 0.99 (no gradient through it)


def _tile_centres(plan: TilePlan, tile_ids, dtype):
    local = tile_ids % (plan.tiles_x * plan.tiles_y)
    xy = torch.stack([local % plan.tiles_x, torch.div(local, plan.tiles_x, rounding_mode="floor")], dim=-1)
    return (xy * plan.tile_size).to(dtype) + plan.tile_size / 2


def _splat_ids(plan: TilePlan, sp: Splats, idx):
    """Splat index of each isect index in idx (-1 = padding -> the padding splat)."""
    return torch.where(idx >= 0, plan.isect_splats.index_select(0, idx.clamp_min(0).reshape(-1)).view(idx.shape), sp.pad)


def _grad_state(alpha, odds, kept):
    """Mask odds for the backward in place: zero after the early stop and where alpha is clamped."""
    if kept is not None:
        odds.mul_(kept)
    clamped = None
    if bool(alpha.max() >= MAX_ALPHA):
        clamped = alpha >= MAX_ALPHA
        odds.masked_fill_(clamped, 0.0)
    return odds, clamped


def composite_forward(sp: Splats, plan: TilePlan, save_budget: int = 0):
    """Blend splats into tiles: [n_tiles, D+1, P] = (sum w c, sum w) per pixel (no background).

    Also returns, per tile group, the list of _Chunk records for the backward while their size stays
    within ``save_budget`` bytes (None for the groups the backward has to recompute).
    """
    dtype, dev = sp.table.dtype, sp.table.device
    p = plan.tile_size**2
    feats2 = tile_pixel_features(plan.tile_size, dtype, dev) * _LOG2E
    acc = sp.table.new_zeros(plan.n_tiles, sp.channels, p)
    records, saved_bytes = [], 0
    for group in plan.groups:
        tile_ids = group[0]
        n = tile_ids.numel()
        record = [] if saved_bytes < save_budget else None
        # carry: transmittance, tile centre, position in the group
        walk = _Walk(group, [acc.new_ones(n, p), _tile_centres(plan, tile_ids, dtype), torch.arange(n, device=dev)])
        out = acc.new_zeros(n, acc.shape[1], p)
        for idx in walk:
            trans, centres, pos = walk.carry
            sid = _splat_ids(plan, sp, idx)
            rows = sp.rows(sid)
            q, _ = _log_alpha_coeffs(rows, centres)
            alpha, odds, trans_buf, weights, kept = _blend_chunk(q, trans, feats2)
            out.index_add_(0, pos, torch.bmm(rows[..., 6:].transpose(1, 2), weights))
            walk.carry[0] = trans_buf[:, -1]
            if record is not None:
                odds, clamped = _grad_state(alpha, odds, kept)
                record.append(_Chunk(walk.keeps[-1], sid, odds, weights, clamped))
                saved_bytes += 2 * weights.numel() * weights.element_size()
        acc[tile_ids] = out
        records.append(record)
    return acc, records


def _chunk_grads(sp, sid, centres, weights, odds, clamped, grads, totals, prefix, feats, out):
    """Accumulate one chunk's gradients into ``out`` [S+1, 6+D]; returns the running sum of w * dL/dw
    after the chunk. grads [B,D+1,P] = dL/d(colour sums, alpha)."""
    d = grads.shape[1] - 1
    rows = sp.rows(sid)
    _, saved = _log_alpha_coeffs(rows, centres)
    wv = torch.bmm(rows[..., 6:], grads).mul_(weights)  # w * dL/dw, [B,K,P]
    if clamped is not None:
        wv.masked_fill_(clamped, 0.0)
    b, k, p = wv.shape
    upto = wv.new_empty(b, k + 1, p)  # sum of w v before each splat, then after the last
    upto[:, 0] = prefix
    for i in range(k):
        torch.add(upto[:, i], wv[:, i], out=upto[:, i + 1])
    # d loss / d log alpha_raw = alpha dL/dalpha = w v - alpha / (1 - alpha) * (sum of w v behind)
    dlog = wv.sub_(torch.rsub(upto[:, 1:], totals[:, None]).mul_(odds))
    g_geom = _log_alpha_coeffs_vjp(torch.matmul(dlog, feats), saved)
    g_col = torch.bmm(weights, grads[:, :d].transpose(1, 2))
    out.index_add_(0, sid.reshape(-1), torch.cat([g_geom, g_col], dim=-1).reshape(-1, 6 + d))
    return upto[:, -1]


def composite_backward(sp: Splats, plan: TilePlan, acc, grad_acc, records):
    """Gradients wrt the splats' (means2d, conics, log opacities, colors); groups without forward
    records are recomputed chunk by chunk."""
    dtype, dev = sp.table.dtype, sp.table.device
    p = plan.tile_size**2
    feats = tile_pixel_features(plan.tile_size, dtype, dev)
    feats2 = feats * _LOG2E
    grad_acc = grad_acc.contiguous()
    total = (grad_acc * acc).sum(dim=1)  # [n_tiles, P]: sum over all splats of w * dL/dw
    out = sp.table.new_zeros(sp.table.shape[0], 5 + sp.channels)
    for group, record in zip(plan.groups, records):
        tile_ids = group[0]
        n = tile_ids.numel()
        centres, grads, totals = _tile_centres(plan, tile_ids, dtype), grad_acc[tile_ids], total[tile_ids]
        prefix = grad_acc.new_zeros(n, p)
        if record is not None:
            for ch in record:
                if ch.keep is not None:
                    centres, grads, totals, prefix = (t.index_select(0, ch.keep) for t in (centres, grads, totals, prefix))
                prefix = _chunk_grads(sp, ch.sid, centres, ch.weights, ch.odds, ch.clamped, grads, totals, prefix,
                                      feats, out)
            continue
        walk = _Walk(group, [grad_acc.new_ones(n, p), prefix, centres, grads, totals])
        for idx in walk:
            trans, prefix, centres, grads, totals = walk.carry
            sid = _splat_ids(plan, sp, idx)
            q, _ = _log_alpha_coeffs(sp.rows(sid), centres)
            alpha, odds, trans_buf, weights, kept = _blend_chunk(q, trans, feats2)
            odds, clamped = _grad_state(alpha, odds, kept)
            walk.carry[0] = trans_buf[:, -1]
            walk.carry[1] = _chunk_grads(sp, sid, centres, weights, odds, clamped, grads, totals, prefix, feats, out)
    return sp.split_grads(out)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, log_opacities, colors, plan):
        sp = Splats(means2d, conics, log_opacities, colors)
        acc, ctx.records = composite_forward(sp, plan, _SAVE_BUDGET if any(ctx.needs_input_grad[:4]) else 0)
        ctx.plan = plan
        ctx.save_for_backward(means2d, conics, log_opacities, colors, acc)
        return acc

    @staticmethod
    def backward(ctx, grad_acc):
        means2d, conics, log_opacities, colors, acc = ctx.saved_tensors
        sp = Splats(means2d, conics, log_opacities, colors)
        grads = composite_backward(sp, ctx.plan, acc, grad_acc, ctx.records)
        return (*grads, None)


class _NativeComposite(torch.autograd.Function):
    """The compositor of ``csrc/gaussians_composite.cpp`` (same rules, float32/float64 CPU tensors)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan, lib, width, height):
        args = _native_plan(plan, width, height)
        means2d, conics, opacities, colors = (t.contiguous() for t in (means2d, conics, opacities, colors))
        d = colors.shape[1]
        out = means2d.new_zeros(plan.n_images, height, width, d + 1)
        last = torch.zeros(plan.n_images, height, width, dtype=torch.int32)
        fn = lib.gen3d_composite_forward_f32 if means2d.dtype == torch.float32 else lib.gen3d_composite_forward_f64
        fn(*args, *_native.pointers(means2d, conics, opacities, colors), ctypes.c_int64(d),
           ctypes.c_int64(means2d.shape[0]), *_native.pointers(out, last), ctypes.c_int(torch.get_num_threads()))
        ctx.plan, ctx.lib, ctx.args = plan, lib, args
        ctx.save_for_backward(means2d, conics, opacities, colors, out, last)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        means2d, conics, opacities, colors, out, last = ctx.saved_tensors
        d = colors.shape[1]
        grads = means2d.new_empty(means2d.shape[0], 6 + d)
        lib = ctx.lib
        fn = lib.gen3d_composite_backward_f32 if means2d.dtype == torch.float32 else lib.gen3d_composite_backward_f64
        grad_out = grad_out.contiguous()
        fn(*ctx.args, *_native.pointers(means2d, conics, opacities, colors), ctypes.c_int64(d),
           *_native.pointers(out, last, grad_out), ctypes.c_int64(means2d.shape[0]), *_native.pointers(grads),
           ctypes.c_int(torch.get_num_threads()))
        return grads[:, :2], grads[:, 2:5], grads[:, 5], grads[:, 6:], None, None, None, None


def _native_plan(plan: TilePlan, width: int, height: int):
    """ctypes arguments describing the plan: dims, offsets, counts, splat ids (kept alive by the plan)."""
    dims = torch.tensor([plan.n_tiles, plan.tile_size, plan.tiles_x, plan.tiles_y, width, height], dtype=torch.int64)
    plan._native_dims = dims
    return _native.pointers(dims, plan.tile_offsets, plan.tile_counts, plan.isect_splats)


def native_library(*tensors):
    """The compiled compositor when it applies to these tensors (CPU, float32/float64) and could be built, else None."""
    if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return None
    if len({t.dtype for t in tensors}) != 1:
        return None
    return _native.load("gaussians")


def composite(means2d, conics, opacities, colors, plan: TilePlan, width: int, height: int) -> torch.Tensor:
    """Differentiable blend of flat splats (means2d [S,2], conics [S,3], opacities [S], colors [S,D]) into
    the images of ``plan`` -> [I,H,W,D+1] (colour sums without background, then alpha).

    Runs the compiled compositor where it can (see ``_native``), else the torch one; both follow the same rules."""
    lib = native_library(means2d, conics, opacities, colors)
    if lib is not None:
        return _NativeComposite.apply(means2d, conics, opacities, colors, plan, lib, width, height)
    log_op = torch.log(opacities.clamp_min(torch.finfo(opacities.dtype).tiny))
    acc = _Composite.apply(means2d, conics, log_op, colors, plan)  # [n_tiles, D+1, P]
    ts = plan.tile_size
    img = acc.reshape(plan.n_images, plan.tiles_y, plan.tiles_x, -1, ts, ts).permute(0, 1, 4, 2, 5, 3)
    img = img.reshape(plan.n_images, plan.tiles_y * ts, plan.tiles_x * ts, -1)
    return img[:, :height, :width]
