"""Torch implementation of nvdiffrast's ``rasterize`` and ``interpolate`` (public API in :mod:`kernels.mesh`).

Rasterization is split in two:

1. *Visibility* (no gradients): every triangle is set up as three homogeneous edge functions
   ``a_i(X, Y) = det(v_j, v_k, (fx, fy, 1))`` of the pixel coordinates (Olano & Greer's 2D-homogeneous
   rasterization), so triangles that cross the camera plane need no special case: a pixel centre is covered iff
   all three ``a_i`` have the sign of ``det(v0, v1, v2)``, which also rejects the "external" part behind the camera.
   The depth ``z/w = sum(a_i z_i) / sum(a_i w_i)`` is tested against ``[-1, 1]`` per pixel, which clips exactly at
   the near and far planes. Ties on an edge (``a_i == 0``) go to the triangle whose inward edge normal points
   right (or down when vertical), the top-left rule, so a pixel centre on a shared edge is covered exactly once.
   Work is bounded: triangles become (triangle, row) spans whose exact pixel interval comes from the edge roots
   (checked with the float test where a root sits on a pixel centre), spans become pixels in chunks of at most
   ``_PIXEL_BUDGET``, and a running depth buffer of packed ``(depth, triangle)`` int64 keys keeps the nearest.
2. *Barycentrics* (differentiable): each triangle's edge functions are linear forms ``c + a X + b Y`` of the
   pixel coordinates whose coefficients are torch functions of ``pos``; for the covered pixels only, the
   perspective-correct barycentrics ``u = a0 / sum(a)``, ``v = a1 / sum(a)`` and their pixel derivatives are
   evaluated from one gather of those coefficients, so gradients reach vertex positions as with nvdiffrast's
   analytic backward (``z/w`` and the triangle id carry no gradient, as in nvdiffrast).
"""

from __future__ import annotations

import ctypes

import torch

from . import _native

#: (triangle, pixel) pairs depth-tested at once: bounds the working memory (~50 bytes each)
_PIXEL_BUDGET = 1 << 20
#: (triangle, row) spans set up at once
_ROW_BUDGET = 1 << 20
#: pixels added on each side of a triangle's projected bounding box (rounding of x / w is ~1e-7 relative)
_BOX_MARGIN = 1.0 / 64
_NO_HIT = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


def primitives(pos: torch.Tensor, tri: torch.Tensor, ranges) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Flatten instanced / range mode into one list of primitives.

    Returns the minibatch size ``B``, the minibatch index ``[P]`` and the triangle index ``[P]`` (into ``tri``)
    of every primitive to draw.
    """
    dev, F = tri.device, tri.shape[0]
    if pos.ndim == 3:
        B = pos.shape[0]
        return B, torch.arange(B, device=dev).repeat_interleave(F), torch.arange(F, device=dev).repeat(B)
    if ranges is None:
        raise ValueError("rasterize: pos of shape [V, 4] (range mode) needs ranges [B, 2]")
    r = torch.as_tensor(ranges).to("cpu", torch.int64).reshape(-1, 2)
    if len(r) and ((r < 0).any() or (r[:, 0] + r[:, 1] > F).any()):
        raise ValueError(f"rasterize: ranges {r.tolist()} fall outside the {F} triangles")
    counts = r[:, 1]
    batch = torch.arange(len(r)).repeat_interleave(counts)
    first = torch.repeat_interleave(r[:, 0] - (torch.cumsum(counts, 0) - counts), counts)
    return len(r), batch.to(dev), (first + torch.arange(int(counts.sum()))).to(dev)


def prim_vertices(pos: torch.Tensor, tri: torch.Tensor, batch: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Clip-space vertices ``[P, 3, 4]`` of the given primitives (differentiable w.r.t. ``pos``)."""
    vid = tri.index_select(0, face)
    if pos.ndim == 3:
        vid = vid + (batch * pos.shape[1])[:, None]
    return pos.reshape(-1, 4).index_select(0, vid.reshape(-1)).view(-1, 3, 4)


class GatherCombine(torch.autograd.Function):
    """``out[n] = sum_k w[k, n] * src[idx[k, n]]`` for ``src [S, C]``, tap-major ``idx [K, N]`` int64, ``w [K, N]``.

    The one gather behind interpolation (barycentric weights over 3 vertices) and texture filtering (bilinear or
    trilinear weights over 4 or 8 texels): the backward accumulates into ``src`` with a single ``index_add_`` and
    returns ``dL/dw`` so that gradients reach barycentrics / texture coordinates through ordinary autograd.
    """

    @staticmethod
    def forward(ctx, src, idx, w):
        K, N = idx.shape
        idx = idx.reshape(-1)
        taps = src.index_select(0, idx).view(K, N, src.shape[1])  # explicit C: N may be 0 (nothing covered)
        out = w[0, :, None] * taps[0]
        for k in range(1, K):
            out += w[k, :, None] * taps[k]
        ctx.save_for_backward(src, idx, w, taps if ctx.needs_input_grad[2] else None)
        return out

    @staticmethod
    def backward(ctx, g):
        src, idx, w, taps = ctx.saved_tensors
        g_src = g_w = None
        if ctx.needs_input_grad[0]:
            contrib = (w[:, :, None] * g[None]).reshape(-1, src.shape[1])
            g_src = torch.zeros_like(src).index_add_(0, idx, contrib)
        if ctx.needs_input_grad[2]:
            if taps.shape[-1] <= 4:  # dot over a short channel axis: unrolled beats a strided reduction
                g_w = taps[..., 0] * g[:, 0]
                for c in range(1, taps.shape[-1]):
                    g_w += taps[..., c] * g[:, c]
            else:
                g_w = (taps * g[None]).sum(-1)
        return g_src, None, g_w


def gather_combine(src: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return GatherCombine.apply(src, idx, w)


def _cumsum_starts(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _chunks(counts: torch.Tensor, budget: int):
    """Split ``range(len(counts))`` into consecutive slices whose summed count stays within ``budget`` (a single
    element over budget gets a slice of its own)."""
    if len(counts) == 0:
        return
    ends = torch.cumsum(counts, 0)
    start, total = 0, len(counts)
    while start < total:
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + budget, right=True))
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def _setup(v: torch.Tensor, H: int, W: int):
    """Edge functions in pixel coordinates for triangles ``v [P, 3, 4]`` (detached).

    Returns ``coef [P, 3, 3]`` (per edge ``i`` opposite vertex ``i``: constant, dX, dY, oriented so that inside is
    positive), ``tl [P, 3]`` (edge owns its exact-zero pixels), ``zplane [P, 3]`` (z/w = c + cx X + cy Y),
    ``ok [P]`` and the conservative pixel bounding box ``(x0, x1, y0, y1)`` of the near-clipped triangle.
    """
    x, y, z, w = v.unbind(-1)
    xj, yj, wj = x.roll(-1, 1), y.roll(-1, 1), w.roll(-1, 1)
    xk, yk, wk = x.roll(-2, 1), y.roll(-2, 1), w.roll(-2, 1)
    # a_i(fx, fy) = C + A fx + B fy = det(v_j, v_k, (fx, fy, 1)), fx = sx X + ox (pixel centre -> NDC)
    C = xj * yk - xk * yj
    A = yj * wk - yk * wj
    Bc = xk * wj - xj * wk
    det = x[:, 0] * A[:, 0] + y[:, 0] * Bc[:, 0] + w[:, 0] * C[:, 0]
    sx, ox, sy, oy = 2.0 / W, 1.0 / W - 1.0, 2.0 / H, 1.0 / H - 1.0
    sign = torch.sign(det)[:, None]
    Cp = (C + A * ox + Bc * oy) * sign
    Ap = (A * sx) * sign
    Bp = (Bc * sy) * sign
    tl = (Ap > 0) | ((Ap == 0) & (Bp > 0))
    inv = 1.0 / det.abs()[:, None]
    zplane = torch.stack([(z * Cp).sum(1), (z * Ap).sum(1), (z * Bp).sum(1)], 1) * inv

    xs, ys, zs, ws = x.unbind(1), y.unbind(1), z.unbind(1), w.unbind(1)

    def all3(f):
        return f(0) & f(1) & f(2)

    outside = all3(lambda i: ws[i] <= 0)
    for cs in (xs, ys, zs):
        outside |= all3(lambda i: cs[i] > ws[i]) | all3(lambda i: -cs[i] > ws[i])
    ok = ~outside & (det != 0) & torch.isfinite(det)

    # pixel bounding box of the part in front of the near plane z = -w: the vertices there, plus (for the few
    # triangles crossing it) the points where edges cross it
    keep = [(zs[i] + ws[i] >= 0) & (ws[i] > 0) for i in range(3)]
    big = float(max(H, W) + 1)

    def proj(px_, py_, pw_, valid):
        pw_ = torch.where(valid, pw_, torch.ones_like(pw_))
        X = ((px_ / pw_ + 1) * (W / 2) - 0.5).clamp(-1, W)
        Y = ((py_ / pw_ + 1) * (H / 2) - 0.5).clamp(-1, H)
        return (torch.where(valid, X, big), torch.where(valid, X, -big),
                torch.where(valid, Y, big), torch.where(valid, Y, -big))

    lo_x = hi_x = lo_y = hi_y = None
    for i in range(3):
        a_, b_, c_, d_ = proj(xs[i], ys[i], ws[i], keep[i])
        lo_x = a_ if lo_x is None else torch.minimum(lo_x, a_)
        hi_x = b_ if hi_x is None else torch.maximum(hi_x, b_)
        lo_y = c_ if lo_y is None else torch.minimum(lo_y, c_)
        hi_y = d_ if hi_y is None else torch.maximum(hi_y, d_)
    any_kept = keep[0] | keep[1] | keep[2]
    full = torch.zeros_like(ok)
    crossing = (ok & ~(keep[0] & keep[1] & keep[2])).nonzero().squeeze(1)
    if len(crossing):
        vc = v.index_select(0, crossing)
        dist = vc[..., 2] + vc[..., 3]
        dist_n = dist.roll(-1, 1)
        cross = (dist >= 0) != (dist_n >= 0)
        t = (dist / torch.where(cross, dist - dist_n, torch.ones_like(dist)))[..., None]
        pts = vc + t * (vc.roll(-1, 1) - vc)
        pw = pts[..., 3]
        full.index_copy_(0, crossing, (cross & (pw <= 0)).any(1))
        a_, b_, c_, d_ = proj(pts[..., 0], pts[..., 1], pw, cross & (pw > 0))
        lo_x.index_copy_(0, crossing, torch.minimum(lo_x.index_select(0, crossing), a_.amin(1)))
        hi_x.index_copy_(0, crossing, torch.maximum(hi_x.index_select(0, crossing), b_.amax(1)))
        lo_y.index_copy_(0, crossing, torch.minimum(lo_y.index_select(0, crossing), c_.amin(1)))
        hi_y.index_copy_(0, crossing, torch.maximum(hi_y.index_select(0, crossing), d_.amax(1)))
        any_kept.index_copy_(0, crossing, any_kept.index_select(0, crossing) | cross.any(1))
    # the pixel centres (integer X, Y) inside the box, widened by _BOX_MARGIN against rounding in the projection
    # (the edge tests decide coverage; the box only has to contain every covered centre): a triangle smaller
    # than a pixel often contains none and is dropped here
    x0 = torch.where(full, 0, (lo_x - _BOX_MARGIN).ceil().clamp(0, W - 1).long())
    y0 = torch.where(full, 0, (lo_y - _BOX_MARGIN).ceil().clamp(0, H - 1).long())
    x1 = torch.where(full, W - 1, (hi_x + _BOX_MARGIN).floor().clamp(-1, W - 1).long())
    y1 = torch.where(full, H - 1, (hi_y + _BOX_MARGIN).floor().clamp(-1, H - 1).long())
    ok &= (x1 >= x0) & (y1 >= y0) & (any_kept | full)
    return torch.stack([Cp, Ap, Bp], 2), tl, zplane, ok, (x0, x1, y0, y1)


def _inside(c, a, tl, X):
    """Edge test of pixel ``X`` on rows with edge values ``c + a X``: positive, or zero on an edge owning ties.
    Always evaluated in this one order, so a shared edge (exactly negated ``c, a``) gives exactly opposite
    answers from its two triangles."""
    e = c + a * X.to(c.dtype)
    return (e > 0) | ((e == 0) & tl)


def _row_spans(c, a, tl, x0, x1, W: int):
    """Exact ``[xs, xe]`` of the pixel centres on each row inside all three edges (empty if ``xe < xs``).

    ``c, a, tl``: three ``[R]`` tensors each (one per edge): value at X = 0, slope, tie ownership. Each edge test
    is monotone in X, so the inside set of a row is an interval whose ends follow from each edge's root, computed
    in float64. The float test itself can disagree with the exact root only within ``|X| * eps`` of it, so where a
    root lies that close to a pixel centre (always so for exact ties) the float test decides.
    """
    tol = 1e-6 * max(W, 64)
    xs, xe, empty = x0, x1, None
    for ci, ai, ti in zip(c, a, tl):
        up, down = ai > 0, ai < 0
        root = (-ci.double() / ai.double()).clamp(-2, W + 1)
        nearest = torch.round(root)
        k = torch.where(up, torch.ceil(root), torch.floor(root)).long()
        close = ((root - nearest).abs() <= tol).nonzero().squeeze(1)
        if len(close):
            n = nearest.index_select(0, close).long()
            ins = _inside(ci.index_select(0, close), ai.index_select(0, close), ti.index_select(0, close), n)
            inward = torch.where(up.index_select(0, close), 1, -1)
            k.index_copy_(0, close, torch.where(ins, n, n + inward))
        xs = torch.where(up, torch.maximum(xs, k), xs)
        xe = torch.where(down, torch.minimum(xe, k), xe)
        flat = ai == 0
        if flat.any():
            out = flat & ~_inside(ci, ai, ti, torch.zeros_like(k))
            empty = out if empty is None else empty | out
    return xs, xe if empty is None else torch.where(empty, xs - 1, xe)


@torch.no_grad()
def visibility(v: torch.Tensor, batch: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """Nearest primitive per pixel: ``[B*H*W]`` int64 primitive index, -1 where empty. Float32 CPU triangles go
    through the compiled kernel (``csrc/mesh.cpp``, the same operations) where it builds."""
    lib = _native.load("mesh") if v.device.type == "cpu" and v.dtype == torch.float32 else None
    if lib is not None:
        v, batch = v.contiguous(), batch.contiguous()
        out = torch.empty(B * H * W, dtype=torch.int64)
        lib.gen3d_mesh_visibility(*_native.pointers(v, batch), ctypes.c_int64(len(v)), ctypes.c_int64(B),
                                  ctypes.c_int64(H), ctypes.c_int64(W), *_native.pointers(out),
                                  ctypes.c_int(torch.get_num_threads()))
        return out
    dev = v.device
    coef, tl, zplane, ok, (x0, x1, y0, y1) = _setup(v, H, W)
    live = ok.nonzero().squeeze(1)
    zbuf = torch.full((B * H * W,), _NO_HIT, dtype=torch.int64, device=dev)
    nrows = (y1 - y0 + 1).index_select(0, live)
    for a, b in _chunks(nrows, _ROW_BUDGET):
        nr = nrows[a:b]
        rprim = live[a:b].repeat_interleave(nr)
        ry = torch.arange(len(rprim), device=dev) + (y0.index_select(0, live[a:b]) - _cumsum_starts(nr)) \
            .repeat_interleave(nr)
        rcoef = coef.index_select(0, rprim)
        rY = ry.to(v.dtype)
        rc = rcoef[:, :, 0] + rcoef[:, :, 2] * rY[:, None]  # edge values at X = 0 on this row
        xs, xe = _row_spans(rc.unbind(1), rcoef[:, :, 1].unbind(1), tl.index_select(0, rprim).unbind(1),
                            x0.index_select(0, rprim), x1.index_select(0, rprim), W)
        npx = (xe - xs + 1).clamp_min(0)
        rows = (npx > 0).nonzero().squeeze(1)
        rprim, ry, rY, xs, npx = (t.index_select(0, rows) for t in (rprim, ry, rY, xs, npx))
        zp = zplane.index_select(0, rprim)
        rz0, rzx = zp[:, 0] + zp[:, 2] * rY, zp[:, 1]  # depth at X = 0 and its slope on this row
        rbase = (batch.index_select(0, rprim) * H + ry) * W
        for c0, c1 in _chunks(npx, _PIXEL_BUDGET):
            cnt = npx[c0:c1]
            X = torch.arange(int(cnt.sum()), device=dev) + (xs[c0:c1] - _cumsum_starts(cnt)).repeat_interleave(cnt)
            depth = rz0[c0:c1].repeat_interleave(cnt) + rzx[c0:c1].repeat_interleave(cnt) * X.to(v.dtype)
            key = ((depth.float() + 1).view(torch.int32).long() << 32) | rprim[c0:c1].repeat_interleave(cnt)
            target = rbase[c0:c1].repeat_interleave(cnt) + X
            clip = (depth < -1) | (depth > 1)  # beyond the near or far plane
            if clip.any():
                keep = (~clip).nonzero().squeeze(1)
                key, target = key.index_select(0, keep), target.index_select(0, keep)
            zbuf.scatter_reduce_(0, target, key, "amin")
    return torch.where(zbuf == _NO_HIT, -1, zbuf & _LOW32)


def plane_coefficients(v: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Per-triangle linear forms in pixel coordinates, ``[P, 12]`` for ``v [P, 3, 4]``.

    Columns ``0:3, 3:6, 6:9`` are ``(c_i, a_i, b_i)`` with the homogeneous edge function
    ``e_i(X, Y) = det(v_j, v_k, (fx, fy, 1)) = c_i + a_i X + b_i Y`` at pixel centre ``(X, Y)``, so the
    perspective-correct barycentrics are ``e_i / sum(e)``; differentiable w.r.t. ``v``. Columns ``9:12`` (no
    gradient) give ``z/w = z_c + z_x X + z_y Y``.
    """
    x, y, z, w = (t.unbind(1) for t in v.unbind(-1))
    sx, ox, sy, oy = 2.0 / W, 1.0 / W - 1.0, 2.0 / H, 1.0 / H - 1.0
    c, a, b = [], [], []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        C = x[j] * y[k] - x[k] * y[j]
        A = y[j] * w[k] - y[k] * w[j]
        Bc = x[k] * w[j] - x[j] * w[k]
        c.append(C + A * ox + Bc * oy)
        a.append(A * sx)
        b.append(Bc * sy)
    with torch.no_grad():
        det = sum(w[i] * c[i] for i in range(3))  # sum_i w_i e_i(X, Y) is the constant det(v0, v1, v2)
        zp = [sum(z[i] * t[i] for i in range(3)) / det for t in (c, a, b)]
    return torch.stack(c + a + b + zp, 1)


def barycentrics(k: torch.Tensor, pix: torch.Tensor, H: int, W: int, grad_db: bool):
    """Perspective-correct ``(u, v)``, ``z/w`` ``[N, 3]`` and ``(du/dX, du/dY, dv/dX, dv/dY)`` ``[N, 4]`` at
    pixel centres, from the :func:`plane_coefficients` ``k [N, 12]`` of the triangle covering each flat pixel
    index ``pix = (b * H + row) * W + col``. Differentiable w.r.t. ``k[:, :9]`` (the derivatives only when
    ``grad_db``)."""
    dt = k.dtype
    X = (pix % W).to(dt)
    Y = (pix // W % H).to(dt)
    e = k[:, 0:3] + k[:, 3:6] * X[:, None] + k[:, 6:9] * Y[:, None]
    inv = 1 / (e[:, 0] + e[:, 1] + e[:, 2])
    u, v = e[:, 0] * inv, e[:, 1] * inv
    depth = (k[:, 9] + k[:, 10] * X + k[:, 11] * Y).detach()
    kd, bu, bv = (k, u, v) if grad_db else (k.detach(), u.detach(), v.detach())
    invd = inv if grad_db else inv.detach()
    sa = kd[:, 3] + kd[:, 4] + kd[:, 5]
    sb = kd[:, 6] + kd[:, 7] + kd[:, 8]
    db = torch.stack([(kd[:, 3] - bu * sa) * invd, (kd[:, 6] - bu * sb) * invd,
                      (kd[:, 4] - bv * sa) * invd, (kd[:, 7] - bv * sb) * invd], 1)
    return torch.stack([u, v, depth], 1), db


def rasterize(pos, tri, resolution, ranges=None, grad_db=True):
    """Torch rasterizer; see :func:`kernels.mesh.rasterize`."""
    H, W = (int(r) for r in resolution)
    tri = tri.long()
    B, batch, face = primitives(pos, tri, ranges)
    with torch.no_grad():
        prim = visibility(prim_vertices(pos.detach(), tri, batch, face), batch, B, H, W)
    pix = (prim >= 0).nonzero().squeeze(1)
    p = prim.index_select(0, pix)
    if len(p) < len(face):  # fewer covered pixels than triangles: the coefficients per pixel
        k = plane_coefficients(prim_vertices(pos, tri, batch.index_select(0, p), face.index_select(0, p)), H, W)
    else:  # per triangle, then one gather per pixel
        k = plane_coefficients(prim_vertices(pos, tri, batch, face), H, W).index_select(0, p)
    uvz, db = barycentrics(k, pix, H, W, grad_db)
    tid = (face.index_select(0, p) + 1).to(pos.dtype)
    out = pos.new_zeros(B * H * W, 4).index_put((pix,), torch.cat([uvz, tid[:, None]], 1))
    out_db = pos.new_zeros(B * H * W, 4).index_put((pix,), db)
    return out.view(B, H, W, 4), out_db.view(B, H, W, 4)


def _covered(rast: torch.Tensor, tri: torch.Tensor):
    """Flat indices of covered pixels and the vertex ids ``[N, 3]`` of their triangles."""
    tid = rast[..., 3].detach().reshape(-1)
    pix = (tid > 0).nonzero().squeeze(1)
    return pix, tri.long().index_select(0, tid.index_select(0, pix).long() - 1)


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    """Torch attribute interpolation; see :func:`kernels.mesh.interpolate`."""
    B, H, W, _ = rast.shape
    attr3 = attr[None] if attr.ndim == 2 else attr
    if attr3.shape[0] not in (1, B):
        raise ValueError(f"interpolate: attr minibatch {attr3.shape[0]} does not match rast minibatch {B}")
    Vn, C = attr3.shape[1], attr3.shape[2]
    pix, vid = _covered(rast, tri)
    if attr3.shape[0] > 1:
        vid = vid + (pix // (H * W) * Vn)[:, None]
    flat = attr3.reshape(-1, C)
    r = rast.reshape(-1, 4).index_select(0, pix)
    u, v = r[:, 0], r[:, 1]
    vid = vid.t()
    val = gather_combine(flat, vid, torch.stack([u, v, 1 - u - v]))
    out = rast.new_zeros(B * H * W, C, dtype=val.dtype).index_put((pix,), val).view(B, H, W, C)

    if diff_attrs is None or rast_db is None:
        return out, rast.new_zeros(B, H, W, 0)
    idx = list(range(C)) if diff_attrs == "all" else [int(i) % C for i in diff_attrs]
    sel = flat[:, idx] if idx != list(range(C)) else flat
    db = rast_db.reshape(-1, 4).index_select(0, pix)
    dX = gather_combine(sel, vid, torch.stack([db[:, 0], db[:, 2], -db[:, 0] - db[:, 2]]))
    dY = gather_combine(sel, vid, torch.stack([db[:, 1], db[:, 3], -db[:, 1] - db[:, 3]]))
    val_da = torch.stack([dX, dY], 2).reshape(len(pix), 2 * len(idx))
    out_da = rast.new_zeros(B * H * W, 2 * len(idx), dtype=val_da.dtype).index_put((pix,), val_da)
    return out, out_da.view(B, H, W, 2 * len(idx))
