"""Triplane NeRF: feature sampling, a density/colour field, a volume renderer and grid queries for meshing.

A triplane is ``planes [3, C, H, W]`` spanning the cube ``[-radius, radius]^3`` of its *model* frame; plane ``i`` is
indexed by the model coordinates ``plane_axes[i] = (a, b)`` as grid_sample's ``(x, y)`` (``a`` along W, ``b`` along
H), ``align_corners=False``, zero outside. Features of the three planes are concatenated plane-major (``[N, 3C]``) and
decoded by a small MLP into a raw density and an RGB colour.

The renderer implements the two published conventions:

- OpenLRM (EG3D's ImportanceRenderer + MipRayMarcher2): ``n_coarse`` stratified samples between the ray's box
  entry and exit, ``n_importance`` more drawn from the coarse weights, metric deltas, neighbouring samples averaged
  (raw density averaged before the activation), samples outside the box masked.
- TripoSR: ``n_coarse`` uniform midpoints inside the (slightly tightened) box, ``delta_units="normalised"``: alpha
  uses ``1/n`` rather than the metric step, per-sample colours.

Points and rays given to :class:`TriplaneField` are in the *world* frame (Blender's, Z up); ``model_from_world``
(a 3x3 rotation) maps them into the model frame. Everything runs in chunks so that 384^3 grids fit in CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: raw density given to samples outside the box (finite so that fp16 and neighbour averaging stay NaN-free)
OUTSIDE_DENSITY = -1.0e4


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, plane_axes, radius: float) -> torch.Tensor:
    """Bilinear features of model-frame ``points [N, 3]`` from ``planes [3, C, H, W]`` -> ``[N, 3*C]`` (plane-major)."""
    coords = points / radius
    grid = torch.stack([coords[:, list(ab)] for ab in plane_axes])[:, None]  # [3, 1, N, 2]
    feats = F.grid_sample(planes, grid.to(planes.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return feats[:, :, 0].permute(2, 0, 1).reshape(points.shape[0], -1)  # [3, C, N] -> [N, 3C]


Decoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RenderSettings:
    """How rays are sampled and composited (see the module docstring)."""

    n_coarse: int = 64
    n_importance: int = 0
    delta_units: str = "metric"  # "metric" | "normalised"
    midpoint: bool = False
    jitter: bool = True  # stratified jitter of the coarse samples (OpenLRM); False: bin midpoints
    ray_chunk: int = 4096


@dataclass
class TriplaneField:
    """A decoded triplane: density and colour at world points.

    ``decoder(features [N, 3C]) -> (raw_density [N], rgb [N, 3] in [0, 1])``;
    ``density_activation(raw) -> density >= 0`` (OpenLRM ``softplus(x - 1)``, TripoSR ``exp(x - 1)``).
    """

    planes: torch.Tensor
    decoder: Decoder
    density_activation: Callable[[torch.Tensor], torch.Tensor]
    plane_axes: tuple
    radius: float
    model_from_world: torch.Tensor | None = None
    chunk: int = 1 << 18

    def to_model(self, points: torch.Tensor) -> torch.Tensor:
        if self.model_from_world is None:
            return points
        return points @ self.model_from_world.to(points).T

    def raw(self, points_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw density ``[N]`` and colour ``[N, 3]`` at model-frame points, chunked; outside the box: no density."""
        dens, rgbs = [], []
        for p in points_model.split(self.chunk):
            d, c = self.decoder(sample_triplane(self.planes, p, self.plane_axes, self.radius))
            inside = (p.abs() <= self.radius).all(-1)
            dens.append(torch.where(inside, d.float(), torch.full_like(d.float(), OUTSIDE_DENSITY)))
            rgbs.append(c.float() * inside[:, None])
        return torch.cat(dens), torch.cat(rgbs)

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World ``points [..., 3]`` -> activated density ``[...]`` and colour ``[..., 3]``."""
        shape = points.shape[:-1]
        raw, rgb = self.raw(self.to_model(points.reshape(-1, 3).to(self.planes.device, torch.float32)))
        return self.density_activation(raw).reshape(shape), rgb.reshape(*shape, 3)

    def colour(self, points: torch.Tensor) -> torch.Tensor:
        """World ``points [..., 3]`` -> colour ``[..., 3]`` (a colour field for texture baking)."""
        return self.query(points)[1]

    def density_grid(self, resolution: int) -> np.ndarray:
        """Activated density on the ``resolution^3`` lattice ``linspace(-radius, radius)`` of the model frame, indexed
        ``[ix, iy, iz]``; float32 numpy. Queried slab by slab (never materialises all coordinates)."""
        lin = torch.linspace(-self.radius, self.radius, resolution, device=self.planes.device)
        yy, zz = torch.meshgrid(lin, lin, indexing="ij")
        out = np.empty((resolution,) * 3, dtype=np.float32)
        slabs = max(1, self.chunk // (resolution * resolution))
        for i0 in range(0, resolution, slabs):
            xs = lin[i0:i0 + slabs]
            pts = torch.stack([xs[:, None, None].expand(-1, resolution, resolution),
                               yy.expand(len(xs), -1, -1), zz.expand(len(xs), -1, -1)], -1).reshape(-1, 3)
            raw, _ = self.raw(pts)
            out[i0:i0 + len(xs)] = self.density_activation(raw).reshape(len(xs), resolution, resolution).cpu().numpy()
        return out

    # --- volume rendering -------------------------------------------------------------------------------------
    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings,
                    background: torch.Tensor | float = 1.0, generator: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
        """World rays ``origins, dirs [R, 3]`` (unit directions) -> ``rgb [R, 3]`` composited over ``background``,
        ``depth [R]`` (expected ray distance of the visible mass; 0 where nothing is hit) and ``opacity [R]``."""
        o = self.to_model(origins.reshape(-1, 3).to(self.planes.device, torch.float32))
        d = self.to_model(dirs.reshape(-1, 3).to(self.planes.device, torch.float32))
        outs = [self._render_chunk(o[i:i + settings.ray_chunk], d[i:i + settings.ray_chunk], settings, generator)
                for i in range(0, len(o), settings.ray_chunk)]
        rgb, depth, opacity = (torch.cat([x[k] for x in outs]) for k in range(3))
        bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
        return {"rgb": rgb + bg * (1 - opacity[:, None]), "depth": depth, "opacity": opacity}

    def _render_chunk(self, o, d, s: RenderSettings, generator):
        shrink = 1.0 - 1e-3 if s.delta_units == "normalised" else 1.0  # TripoSR tightens the box
        t0, t1, valid = ray_box(o, d, self.radius * shrink)
        n = s.n_coarse
        if s.delta_units == "normalised":
            u = (torch.arange(n, device=o.device, dtype=o.dtype) + 0.5) / n
            z = t0[:, None] + (t1 - t0)[:, None] * u
        else:
            z = t0[:, None] + (t1 - t0)[:, None] * torch.linspace(0, 1, n, device=o.device)
            if s.jitter:
                step = (t1 - t0)[:, None] / max(n - 1, 1)
                z = z + torch.rand(z.shape, generator=generator, device="cpu").to(z) * step
        raw, rgb = self._samples(o, d, z)
        if s.n_importance > 0:
            w = self._march(raw, rgb, z, s)[3]
            z_fine = importance_samples(z, w, s.n_importance, generator)
            raw_f, rgb_f = self._samples(o, d, z_fine)
            z, order = torch.sort(torch.cat([z, z_fine], 1), dim=1)
            raw = torch.gather(torch.cat([raw, raw_f], 1), 1, order)
            rgb = torch.gather(torch.cat([rgb, rgb_f], 1), 1, order[..., None].expand(-1, -1, 3))
        colour, depth, opacity, _ = self._march(raw, rgb, z, s)
        valid_f = valid.to(colour.dtype)
        return colour * valid_f[:, None], depth * valid_f, opacity * valid_f

    def _samples(self, o, d, z):
        pts = o[:, None] + z[..., None] * d[:, None]
        raw, rgb = self.raw(pts.reshape(-1, 3))
        return raw.reshape(z.shape), rgb.reshape(*z.shape, 3)

    def _march(self, raw, rgb, z, s: RenderSettings):
        """Composite samples along rays -> (rgb [R,3] without background, depth [R], opacity [R], weights)."""
        if s.midpoint:
            delta = z[:, 1:] - z[:, :-1]
            raw, rgb, zc = (raw[:, 1:] + raw[:, :-1]) / 2, (rgb[:, 1:] + rgb[:, :-1]) / 2, (z[:, 1:] + z[:, :-1]) / 2
        else:
            zc = z
            delta = torch.full_like(z, 1.0 / z.shape[1]) if s.delta_units == "normalised" else \
                torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], 1e10)], 1)
        alpha = 1 - torch.exp(-self.density_activation(raw) * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], 1), 1)[:, :-1]
        w = alpha * trans
        opacity = w.sum(1)
        depth = (w * zc).sum(1) / opacity.clamp_min(1e-8)
        return (w[..., None] * rgb).sum(1), depth, opacity, w


def ray_box(o: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab intersection of rays ``[R, 3]`` with ``[-radius, radius]^3`` -> ``t_near, t_far [R]`` (near clamped to
    0) and ``valid [R]`` (the ray crosses the box over more than 1e-3 of its length units)."""
    safe = torch.where(d.abs() < 1e-6, torch.full_like(d, 1e-6), d)
    a, b = (radius - o) / safe, (-radius - o) / safe
    t0 = torch.minimum(a, b).amax(-1).clamp_min(0.0)
    t1 = torch.maximum(a, b).amin(-1)
    valid = t1 - t0 > 1e-3
    return torch.where(valid, t0, 0.0), torch.where(valid, t1, 0.0), valid


def importance_samples(z: torch.Tensor, weights: torch.Tensor, n: int, generator: torch.Generator | None
                       ) -> torch.Tensor:
    """EG3D's importance pass: ``n`` depths per ray drawn from the coarse ``weights [R, S-1]`` (midpoint weights of
    ``z [R, S]``), smoothed by max- then average-pooling plus 0.01, over the bins between coarse midpoints."""
    w = F.max_pool1d(weights[:, None].float(), 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1)[:, 0] + 0.01
    bins = 0.5 * (z[:, :-1] + z[:, 1:])
    w = w[:, 1:-1] + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.rand((z.shape[0], n), generator=generator, device="cpu").to(z)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    below, above = (idx - 1).clamp_min(0), idx.clamp_max(cdf.shape[1] - 1)
    cdf_lo, cdf_hi = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bin_lo, bin_hi = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return (bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)).detach()
