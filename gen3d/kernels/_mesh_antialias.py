"""Torch implementation of nvdiffrast's ``antialias`` (public API in :mod:`kernels.mesh`).

For every pair of horizontally or vertically adjacent pixels whose triangle ids differ, the nearer triangle (or
the only one) is examined from its own pixel centre: among its edges that cross the segment between the two pixel
centres, the one crossing farthest along it is taken, and if it is a silhouette edge (no neighbour across it, or
the neighbouring triangle folds onto the same side in screen space) and steeper than 45 degrees relative to the
segment, the crossing point ``d in [0, 1]`` blends the two colours: the pixel on the far side of the edge moves
towards the other colour by ``|0.5 - d|``. Colours and ``d`` (a function of the edge's two vertex positions) are
torch ops, so gradients reach both the colours and the positions.
"""

from __future__ import annotations

import torch


def construct_topology_hash(tri: torch.Tensor) -> torch.Tensor:
    """Opposite vertex across each edge: ``[F, 3]`` int64, entry ``i`` for the edge opposite vertex ``i``
    (from ``tri[:, i+1]`` to ``tri[:, i+2]``), -1 when the edge has no neighbour. On edges shared by more than two
    triangles the first two (by triangle index) see each other and the rest see none."""
    tri = tri.long()
    F = tri.shape[0]
    a, b = tri.roll(-1, 1), tri.roll(-2, 1)
    lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
    key = lo * (int(tri.max()) + 1 if F else 1) + hi
    order = torch.sort(key, stable=True).indices
    ks = key[order]
    opposite = tri.reshape(-1)[order]
    same_next = torch.zeros_like(ks, dtype=torch.bool)
    same_next[:-1] = ks[:-1] == ks[1:]
    same_prev = torch.zeros_like(same_next)
    same_prev[1:] = same_next[:-1]
    first = ~same_prev  # first half-edge of its group pairs with the second
    out = torch.full_like(ks, -1)
    pair_a = (first & same_next).nonzero().squeeze(1)
    out[order[pair_a]] = opposite[pair_a + 1]
    out[order[pair_a + 1]] = opposite[pair_a]
    return out.view(F, 3)


def _pairs(tid: torch.Tensor):
    """Flat indices ``(p0, p1, down)`` of adjacent pixel pairs with differing triangle ids."""
    B, H, W = tid.shape
    idx = torch.arange(B * H * W, device=tid.device).view(B, H, W)
    right = (tid[:, :, :-1] != tid[:, :, 1:]).nonzero(as_tuple=True)
    down = (tid[:, :-1, :] != tid[:, 1:, :]).nonzero(as_tuple=True)
    p0 = torch.cat([idx[:, :, :-1][right], idx[:, :-1, :][down]])
    p1 = torch.cat([idx[:, :, 1:][right], idx[:, 1:, :][down]])
    d = torch.cat([torch.zeros(len(right[0]), dtype=torch.bool, device=tid.device),
                   torch.ones(len(down[0]), dtype=torch.bool, device=tid.device)])
    return p0, p1, d


def _to_pixels(p, org_x, org_y, W: int, H: int, swap):
    """Clip-space points ``[N, K, 4]`` -> pixel coordinates relative to the origin pixel centre, x/y swapped
    where ``swap`` (vertical pairs), so the pair's segment always runs from (0, 0) to (1, 0)."""
    x = p[..., 0] / p[..., 3] * (W / 2) + (W / 2) - (org_x + 0.5)[:, None]
    y = p[..., 1] / p[..., 3] * (H / 2) + (H / 2) - (org_y + 0.5)[:, None]
    s = swap[:, None]
    return torch.where(s, y, x), torch.where(s, x, y)


def antialias(color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0):
    """Torch silhouette antialiasing; see :func:`kernels.mesh.antialias`."""
    B, H, W, C = color.shape
    tri = tri.long()
    opp = topology_hash if isinstance(topology_hash, torch.Tensor) else construct_topology_hash(tri)
    rflat = rast.detach().reshape(-1, 4)
    tid = rflat[:, 3].long()
    p0, p1, d = _pairs(tid.view(B, H, W))
    t0, t1 = tid[p0], tid[p1]
    z0, z1 = rflat[p0, 2], rflat[p1, 2]
    use1 = (t0 == 0) | ((t1 > 0) & ~(z0 < z1))
    t = torch.where(use1, t1, t0) - 1
    org = torch.where(use1, p1, p0)
    ox, oy = (org % W).to(pos.dtype), ((org // W) % H).to(pos.dtype)
    ds = torch.where(use1, -1.0, 1.0).to(pos.dtype)
    instanced = pos.ndim == 3
    V = pos.shape[-2]
    flat_pos = pos.reshape(-1, 4)
    vbase = (org // (H * W) * V)[:, None] if instanced else 0

    with torch.no_grad():
        vi = tri[t]
        op = opp[t]
        op = torch.where(op < 0, vi, op)
        x, y = _to_pixels(flat_pos.detach()[vi + vbase], ox, oy, W, H, d)
        qx, qy = _to_pixels(flat_pos.detach()[op + vbase], ox, oy, W, H, d)
        xj, yj, xk, yk = x.roll(-1, 1), y.roll(-1, 1), x.roll(-2, 1), y.roll(-2, 1)
        # signed areas: the triangle itself and each edge's "wing" (opposite vertex with that edge);
        # swapping x and y flips both signs, so the comparison is unaffected
        bb = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
        wing = (xj - qx) * (yk - qy) - (xk - qx) * (yj - qy)
        silhouette = torch.signbit(wing) == torch.signbit(bb)[:, None]
        ex, ey = xk - xj, yk - yj  # edge i runs from vertex i+1 to vertex i+2
        num = ds[:, None] * (xj * ey - yj * ex)
        crosses = torch.signbit(yj) != torch.signbit(yk)
        ratio = torch.where(crosses, num / torch.where(crosses, ey, torch.ones_like(ey)),
                            torch.full_like(num, -float("inf")))
        di = ratio.argmax(1)
        pick = lambda a: a.gather(1, di[:, None]).squeeze(1)  # noqa: E731
        dc = pick(ratio)
        eps = 1.0 / 16
        ok = pick(silhouette) & (pick(ey).abs() >= pick(ex).abs()) & (dc > -eps) & (dc < 1 + eps)
        sel = ok.nonzero().squeeze(1)

    p0, p1, d, ds, ox, oy, vbase_s = p0[sel], p1[sel], d[sel], ds[sel], ox[sel], oy[sel], \
        (vbase[sel] if instanced else 0)
    ends = torch.stack([tri[t[sel], (di[sel] + 1) % 3], tri[t[sel], (di[sel] + 2) % 3]], 1) + vbase_s
    src = flat_pos[ends]
    if pos_gradient_boost != 1.0:
        src = _ScaleGrad.apply(src, float(pos_gradient_boost))
    ex_, ey_ = _to_pixels(src, ox, oy, W, H, d)
    dx, dy = ex_[:, 1] - ex_[:, 0], ey_[:, 1] - ey_[:, 0]
    dc = ds * (ex_[:, 0] * dy - ey_[:, 0] * dx) / dy
    alpha = ds * (0.5 - dc.clamp(0, 1))
    cflat = color.reshape(-1, C)
    delta = alpha[:, None] * (cflat[p1] - cflat[p0])
    target = torch.where(alpha.detach() > 0, p0, p1)
    return cflat.index_add(0, target, delta).view(B, H, W, C)


class _ScaleGrad(torch.autograd.Function):
    """Identity whose gradient is multiplied by ``scale`` (nvdiffrast's ``pos_gradient_boost``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None
