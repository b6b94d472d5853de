"""Torch implementation of nvdiffrast's ``rasterize`` and ``interpolate`` (public API in :mod:`kernels.mesh`).

Rasterization is split in two:

1. *Visibility* (no gradients): every triangle is set up as three homogeneous edge functions
   ``a_i(X, Y) = det(v_j, v_k, (fx, fy, 1))`` of the pixel coordinates (Olano & Greer's 2D-homogeneous
   rasterization), so triangles that cross the camera plane need no special case: a pixel centre is covered iff
   all three ``a_i`` have the sign of ``det(v0, v1, v2)``, which also rejects the "external" part behind the camera.
   The depth ``z/w = sum(a_i z_i) / sum(a_i w_i)`` is tested against ``[-1, 1]`` per pixel, which clips exactly at
   the near and far planes. Ties on an edge (``a_i == 0``) go to the triangle whose inward edge normal points
   right (or down when vertical), the top-left rule, so a pixel centre on a shared edge is covered exactly once.
   Work is bounded: triangles become (triangle, row) spans, spans become candidate pixels in chunks of at most
   ``_PIXEL_BUDGET``, and a running depth buffer of packed ``(depth, triangle)`` int64 keys keeps the nearest.
2. *Barycentrics* (differentiable): for the covered pixels only, the perspective-correct barycentrics
   ``u = a0 / sum(a)``, ``v = a1 / sum(a)`` and their pixel derivatives are evaluated with torch ops from ``pos``,
   so gradients reach vertex positions exactly as nvdiffrast's analytic backward does (``z/w`` and the triangle id
   carry no gradient, as in nvdiffrast).
"""

from __future__ import annotations

import torch

#: candidate (triangle, pixel) pairs evaluated at once: bounds the working memory (~40 bytes each)
_PIXEL_BUDGET = 1 << 20
#: (triangle, row) spans set up at once
_ROW_BUDGET = 1 << 20
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
    vid = tri[face]
    if pos.ndim == 3:
        return pos[batch[:, None], vid]
    return pos[vid]


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

    outside = torch.zeros_like(det, dtype=torch.bool)
    for c in (x, -x, y, -y, z, -z):
        outside |= (c > w).all(1)
    outside |= (w <= 0).all(1)
    ok = ~outside & (det != 0) & torch.isfinite(det)

    # bounding box of the part in front of the near plane z = -w: kept vertices and edge/near-plane crossings
    dist = z + w
    keep = (dist >= 0) & (w > 0)
    dist_n = dist.roll(-1, 1)
    cross = (dist >= 0) != (dist_n >= 0)
    t = (dist / (dist - dist_n)).nan_to_num(0.0)[..., None]
    vc = v + t * (v.roll(-1, 1) - v)
    pts = torch.cat([v, vc], 1)
    valid = torch.cat([keep, cross], 1)
    pw = pts[..., 3]
    full = (valid & (pw <= 0)).any(1)
    valid = valid & (pw > 0)
    pw = torch.where(valid, pw, torch.ones_like(pw))
    px = ((pts[..., 0] / pw + 1) * (W / 2) - 0.5).clamp(-1, W)
    py = ((pts[..., 1] / pw + 1) * (H / 2) - 0.5).clamp(-1, H)
    big = torch.full_like(px, float(max(H, W) + 1))
    x0 = torch.where(valid, px, big).amin(1).floor()
    x1 = torch.where(valid, px, -big).amax(1).ceil()
    y0 = torch.where(valid, py, big).amin(1).floor()
    y1 = torch.where(valid, py, -big).amax(1).ceil()
    x0 = torch.where(full, torch.zeros_like(x0), x0).clamp(0, W - 1).long()
    y0 = torch.where(full, torch.zeros_like(y0), y0).clamp(0, H - 1).long()
    x1 = torch.where(full, torch.full_like(x1, W - 1), x1).clamp(-1, W - 1).long()
    y1 = torch.where(full, torch.full_like(y1, H - 1), y1).clamp(-1, H - 1).long()
    ok &= (x1 >= x0) & (y1 >= y0) & valid.any(1)
    return torch.stack([Cp, Ap, Bp], 2), tl, zplane, ok, (x0, x1, y0, y1)


def _row_spans(coef, Y, x0, x1, W):
    """Conservative ``[xa, xb]`` of pixel centres on row ``Y`` inside each triangle (empty if ``xb < xa``)."""
    c = coef[:, :, 0] + coef[:, :, 2] * Y[:, None]  # a_i on this row at X = 0
    a = coef[:, :, 1]
    root = -c / torch.where(a == 0, torch.ones_like(a), a)
    inf = torch.full_like(root, float("inf"))
    lo = torch.where(a > 0, root, -inf).amax(1)
    hi = torch.where(a < 0, root, inf).amin(1)
    never = ((a == 0) & (c < 0)).any(1)
    xa = torch.maximum(lo.clamp(-1, W).floor().long(), x0)
    xb = torch.minimum(hi.clamp(-1, W).ceil().long(), x1)
    return xa, torch.where(never, xa - 1, xb)


@torch.no_grad()
def visibility(v: torch.Tensor, batch: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    """Nearest primitive per pixel: ``[B*H*W]`` int64 primitive index, -1 where empty."""
    dev = v.device
    coef, tl, zplane, ok, (x0, x1, y0, y1) = _setup(v, H, W)
    live = ok.nonzero().squeeze(1)
    zbuf = torch.full((B * H * W,), _NO_HIT, dtype=torch.int64, device=dev)
    nrows = (y1 - y0 + 1)[live]
    for a, b in _chunks(nrows, _ROW_BUDGET):
        prim_c, nr = live[a:b], nrows[a:b]
        which = torch.repeat_interleave(torch.arange(b - a, device=dev), nr)
        rprim = prim_c[which]
        ry = y0[rprim] + torch.arange(len(which), device=dev) - _cumsum_starts(nr)[which]
        rcoef = coef[rprim]
        rY = ry.to(v.dtype)
        xa, xb = _row_spans(rcoef, rY, x0[rprim], x1[rprim], W)
        npx = (xb - xa + 1).clamp_min(0)
        rows = (npx > 0).nonzero().squeeze(1)
        rprim, ry, rY, xa, npx, rcoef = rprim[rows], ry[rows], rY[rows], xa[rows], npx[rows], rcoef[rows]
        # per row: edge values at X = 0 and their X slopes, depth at X = 0 and its slope, tie ownership
        rowc = rcoef[:, :, 0] + rcoef[:, :, 2] * rY[:, None]
        rowa = rcoef[:, :, 1]
        zp = zplane[rprim]
        rowz = torch.stack([zp[:, 0] + zp[:, 2] * rY, zp[:, 1]], 1)
        rtl = tl[rprim]
        rbase = (batch[rprim] * H + ry) * W
        for c0, c1 in _chunks(npx, _PIXEL_BUDGET):
            cnt = npx[c0:c1]
            r = torch.repeat_interleave(torch.arange(c0, c1, device=dev), cnt)
            X = xa[r] + torch.arange(len(r), device=dev) - _cumsum_starts(cnt)[r - c0]
            Xf = X.to(v.dtype)[:, None]
            e = rowc[r] + rowa[r] * Xf
            inside = torch.where(rtl[r], e >= 0, e > 0).all(1)
            hit = inside.nonzero().squeeze(1)
            r, X = r[hit], X[hit]
            zr = rowz[r]
            depth = zr[:, 0] + zr[:, 1] * X.to(v.dtype)
            inz = (depth >= -1) & (depth <= 1)
            r, X, depth = r[inz], X[inz], depth[inz]
            key = ((depth.float() + 1).view(torch.int32).long() << 32) | rprim[r]
            zbuf.scatter_reduce_(0, rbase[r] + X, key, "amin")
    return torch.where(zbuf == _NO_HIT, -1, zbuf & _LOW32)


def barycentrics(v: torch.Tensor, pix: torch.Tensor, H: int, W: int, grad_db: bool):
    """Perspective-correct ``(u, v)``, ``z/w`` and ``(du/dX, du/dY, dv/dX, dv/dY)`` at pixel centres.

    ``v [N, 3, 4]`` clip-space vertices of the triangle covering each pixel, ``pix [N]`` flat pixel index
    ``(b * H + row) * W + col``. Differentiable w.r.t. ``v`` (the derivatives only when ``grad_db``).
    """
    dt = v.dtype
    X = (pix % W).to(dt)
    Y = ((pix // W) % H).to(dt)
    fx = (2 * X + 1) / W - 1
    fy = (2 * Y + 1) / H - 1

    def bary(v):
        x, y, w = v[..., 0], v[..., 1], v[..., 3]
        px, py = x - fx[:, None] * w, y - fy[:, None] * w
        pxj, pyj, wj = px.roll(-1, 1), py.roll(-1, 1), w.roll(-1, 1)
        pxk, pyk, wk = px.roll(-2, 1), py.roll(-2, 1), w.roll(-2, 1)
        a = pxj * pyk - pyj * pxk  # [N, 3]
        at = a.sum(1, keepdim=True)
        b = a / at
        return b, a, at, (pyj * wk - wj * pyk), (wj * pxk - pxj * wk)

    b, a, at, dadx, dady = bary(v)
    with torch.no_grad():
        depth = (a * v[..., 2]).sum(1) / (a * v[..., 3]).sum(1)
    if not grad_db:
        b_d, _, at, dadx, dady = bary(v.detach())
    else:
        b_d = b
    # d b_i / d f = (da_i/df - b_i * d at/df) / at ; f -> pixel: d fx / dX = 2 / W
    dbx = (dadx - b_d * dadx.sum(1, keepdim=True)) / at * (2.0 / W)
    dby = (dady - b_d * dady.sum(1, keepdim=True)) / at * (2.0 / H)
    db = torch.stack([dbx[:, 0], dby[:, 0], dbx[:, 1], dby[:, 1]], 1)
    return b[:, 0], b[:, 1], depth, db


def rasterize(pos, tri, resolution, ranges=None, grad_db=True):
    """Torch rasterizer; see :func:`kernels.mesh.rasterize`."""
    H, W = (int(r) for r in resolution)
    tri = tri.long()
    B, batch, face = primitives(pos, tri, ranges)
    v = prim_vertices(pos, tri, batch, face)
    prim = visibility(v.detach(), batch, B, H, W)
    pix = (prim >= 0).nonzero().squeeze(1)
    p = prim[pix]
    u, vv, depth, db = barycentrics(v[p], pix, H, W, grad_db)
    tid = (face[p] + 1).to(pos.dtype)
    out = pos.new_zeros(B * H * W, 4).index_put((pix,), torch.stack([u, vv, depth, tid], 1))
    out_db = pos.new_zeros(B * H * W, 4).index_put((pix,), db)
    return out.view(B, H, W, 4), out_db.view(B, H, W, 4)


def _covered(rast: torch.Tensor, tri: torch.Tensor):
    """Flat indices of covered pixels and the vertex ids ``[N, 3]`` of their triangles."""
    tid = rast[..., 3].detach().reshape(-1)
    pix = (tid > 0).nonzero().squeeze(1)
    return pix, tri.long()[tid[pix].long() - 1]


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
    a0, a1, a2 = flat[vid[:, 0]], flat[vid[:, 1]], flat[vid[:, 2]]
    r = rast.reshape(-1, 4)[pix]
    u, v = r[:, 0:1], r[:, 1:2]
    val = u * a0 + v * a1 + (1 - u - v) * a2
    out = rast.new_zeros(B * H * W, C, dtype=val.dtype).index_put((pix,), val).view(B, H, W, C)

    if diff_attrs is None or rast_db is None:
        return out, rast.new_zeros(B, H, W, 0)
    idx = list(range(C)) if diff_attrs == "all" else [int(i) % C for i in diff_attrs]
    db = rast_db.reshape(-1, 4)[pix]
    sel = torch.tensor(idx, dtype=torch.long, device=rast.device)
    dsdu = (a0 - a2)[:, sel]
    dsdv = (a1 - a2)[:, sel]
    dX = db[:, 0:1] * dsdu + db[:, 2:3] * dsdv
    dY = db[:, 1:2] * dsdu + db[:, 3:4] * dsdv
    val_da = torch.stack([dX, dY], 2).reshape(len(pix), 2 * len(idx))
    out_da = rast.new_zeros(B * H * W, 2 * len(idx), dtype=val_da.dtype).index_put((pix,), val_da)
    return out, out_da.view(B, H, W, 2 * len(idx))
