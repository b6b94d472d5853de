"""nvdiffrast-compatible differentiable mesh rasterization: ``rasterize``, ``interpolate``, ``texture``,
``antialias``, in torch on any device, or through nvdiffrast's CUDA rasterizer when it is importable.

The four functions keep nvdiffrast's names, argument order, tensor shapes and output semantics, so a call site
written for ``nvdiffrast.torch`` works unchanged, except for one difference: nvdiffrast's ``rasterize`` takes a
context as its first argument; here the module manages it. ``rasterize(pos, tri, resolution, ...)`` creates (once
per CUDA device, then reuses) a ``RasterizeCudaContext`` when the nvdiffrast backend is used.

Backends (``backend=`` on every function):
  * ``'auto'`` (default): nvdiffrast when it imports and every tensor is a float32/int32 CUDA tensor, else torch;
  * ``'torch'``: the plain-torch implementation (CPU, CUDA, MPS; any float dtype), the reference;
  * ``'nvdiffrast'``: nvdiffrast or a clear error. Nothing is ever installed or compiled at import time; nvdiffrast
    is imported on first use.

Conventions (nvdiffrast's): ``pos`` is clip space; pixel ``(row, col)`` has its centre at NDC
``((2 col + 1) / W - 1, (2 row + 1) / H - 1)``, so output row 0 is at NDC y = -1 (``Cameras.clip_matrices`` in the
backend maps the top image row there). ``rast[..., :2]`` are the perspective-correct barycentric weights ``(u, v)``
of vertices 0 and 1 of the covering triangle (vertex 2 gets ``1 - u - v``), ``rast[..., 2]`` is ``z/w`` in
``[-1, 1]`` and ``rast[..., 3]`` is ``triangle_id + 1`` (all four are 0 where no triangle covers the pixel centre).
``rast_db`` holds ``(du/dX, du/dY, dv/dX, dv/dY)`` in pixels. Triangles are clipped at the near and far planes
(``-w <= z <= w``), never wrapped through the camera plane; back faces are drawn; ties on shared edges follow a
top-left rule so every pixel centre is covered once.

Gradients (as nvdiffrast): ``rasterize`` -> ``pos`` through ``u, v`` (and ``rast_db`` when ``grad_db``);
``interpolate`` -> ``attr``, ``rast``, ``rast_db``; ``texture`` -> ``tex`` (including through its mip levels),
``uv``, ``uv_da``, ``mip_level_bias``; ``antialias`` -> ``color`` and ``pos``.
"""

from __future__ import annotations

import logging

import torch

from . import _mesh_antialias, _mesh_raster, _mesh_texture

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "nvdiffrast")

_dr = None  # the imported nvdiffrast.torch module, False once an import failed
_contexts: dict = {}


def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` imports (it is imported, not built or installed, on the first call)."""
    global _dr
    if _dr is None:
        try:
            import nvdiffrast.torch as dr
            _dr = dr
        except Exception as exc:  # ImportError, or a broken build raising at import
            log.debug("nvdiffrast unavailable: %s", exc)
            _dr = False
    return _dr is not False


def _use_nvdiffrast(backend: str, floats, ints=()) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend == "torch":
        return False
    tensors = [t for t in (*floats, *ints) if isinstance(t, torch.Tensor)]
    cuda = all(t.is_cuda for t in tensors)
    fits = cuda and all(t.dtype == torch.float32 for t in floats if isinstance(t, torch.Tensor)) and \
        all(t.dtype == torch.int32 for t in ints if isinstance(t, torch.Tensor))
    if backend == "nvdiffrast":
        if not nvdiffrast_available():
            raise RuntimeError("backend='nvdiffrast' but nvdiffrast is not importable; install it "
                               "(pip install git+https://github.com/NVlabs/nvdiffrast) or use backend='torch'")
        if not cuda:
            raise ValueError("backend='nvdiffrast' needs CUDA tensors; use backend='torch' on this device")
        return True
    return fits and nvdiffrast_available()


def _context(device: torch.device):
    key = torch.device(device)
    if key not in _contexts:
        _contexts[key] = _dr.RasterizeCudaContext(device=key)
    return _contexts[key]


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, ranges=None, grad_db: bool = True,
              backend: str = "auto"):
    """Rasterize triangles (nvdiffrast's ``rasterize`` without the context argument).

    Args:
        pos: clip-space vertices, ``[B, V, 4]`` (instanced mode) or ``[V, 4]`` with ``ranges`` (range mode).
        tri: ``[F, 3]`` int32 (int64 accepted by the torch backend) vertex indices.
        resolution: ``(height, width)``.
        ranges: range mode only, ``[B, 2]`` int32 ``(first triangle, count)`` per image.
        grad_db: also propagate gradients of ``rast_db`` into ``pos``.

    Returns:
        ``rast [B, H, W, 4]`` = ``(u, v, z/w, triangle_id + 1)``, zero where empty, and
        ``rast_db [B, H, W, 4]`` = ``(du/dX, du/dY, dv/dX, dv/dY)`` per pixel.
    """
    if pos.ndim not in (2, 3) or pos.shape[-1] != 4 or tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"rasterize: expected pos [B, V, 4] or [V, 4] and tri [F, 3], got "
                         f"{tuple(pos.shape)} and {tuple(tri.shape)}")
    if _use_nvdiffrast(backend, [pos], [tri]):
        if ranges is not None:
            ranges = torch.as_tensor(ranges, dtype=torch.int32).cpu()
        return _dr.rasterize(_context(pos.device), pos.contiguous(), tri.contiguous(), tuple(resolution),
                             ranges=ranges, grad_db=grad_db)
    return _mesh_raster.rasterize(pos, tri, resolution, ranges, grad_db)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db: torch.Tensor | None = None,
                diff_attrs=None, backend: str = "auto"):
    """Interpolate vertex attributes over the rasterized image (nvdiffrast's ``interpolate``).

    Args:
        attr: ``[B, V, C]`` (``B`` may be 1 to broadcast) or ``[V, C]`` vertex attributes.
        rast: first output of :func:`rasterize`.
        tri: the triangles given to :func:`rasterize`.
        rast_db: second output of :func:`rasterize`; needed with ``diff_attrs``.
        diff_attrs: attribute indices (or ``'all'``) whose pixel derivatives to return.

    Returns:
        ``out [B, H, W, C]`` (zero where empty) and ``out_da [B, H, W, 2 * len(diff_attrs)]`` ordered
        ``(dA0/dX, dA0/dY, dA1/dX, ...)``, an empty ``[B, H, W, 0]`` tensor when not asked.
    """
    if _use_nvdiffrast(backend, [attr, rast, rast_db], [tri]):
        return _dr.interpolate(attr.contiguous(), rast.contiguous(), tri.contiguous(),
                               rast_db=None if rast_db is None else rast_db.contiguous(), diff_attrs=diff_attrs)
    if diff_attrs is not None and rast_db is None:
        raise ValueError("interpolate: diff_attrs needs rast_db (the second output of rasterize)")
    return _mesh_raster.interpolate(attr, rast, tri, rast_db, diff_attrs)


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
            mip_level_bias: torch.Tensor | None = None, mip=None, filter_mode: str = "auto",
            boundary_mode: str = "wrap", max_mip_level: int | None = None, backend: str = "auto"):
    """Sample a 2D texture (nvdiffrast's ``texture``).

    Args:
        tex: ``[B, Ht, Wt, C]`` texture (``B`` may be 1 to broadcast). Row 0 is ``v = 0``.
        uv: ``[B, H, W, 2]`` texture coordinates, ``(0, 0)`` the outer corner of texel ``[0, 0]``.
        uv_da: ``[B, H, W, 4]`` = ``(du/dX, du/dY, dv/dX, dv/dY)``, selects the mip level.
        mip_level_bias: ``[B, H, W]`` added to the mip level (sets it directly without ``uv_da``).
        mip: optional prebuilt mip stack from :func:`texture_construct_mip` (levels 1.., as a list of tensors).
        filter_mode: 'auto' (trilinear when ``uv_da`` or ``mip_level_bias`` is given, else bilinear), 'nearest',
            'linear', 'linear-mipmap-nearest', 'linear-mipmap-linear'.
        boundary_mode: 'wrap', 'clamp' (to the centres of the border texels) or 'zero' ('cube' only with
            nvdiffrast).
        max_mip_level: limit on the number of mip levels.

    Returns:
        ``[B, H, W, C]`` sampled values.
    """
    if _use_nvdiffrast(backend, [tex, uv, uv_da, mip_level_bias]):
        return _dr.texture(tex.contiguous(), uv.contiguous(), uv_da=None if uv_da is None else uv_da.contiguous(),
                           mip_level_bias=mip_level_bias, mip=mip, filter_mode=filter_mode,
                           boundary_mode=boundary_mode, max_mip_level=max_mip_level)
    if mip is not None and not isinstance(mip, list):
        mip = None  # an nvdiffrast mip wrapper: rebuild the stack here
    return _mesh_texture.texture(tex, uv, uv_da, mip_level_bias, mip, filter_mode, boundary_mode, max_mip_level)


def texture_construct_mip(tex: torch.Tensor, max_mip_level: int | None = None, backend: str = "auto"):
    """Prebuilt mip stack for a texture that stays constant (pass it as ``mip=`` to :func:`texture`).

    The torch backend returns the list of levels 1.. (2x2 box filter); nvdiffrast returns its own wrapper.
    """
    if _use_nvdiffrast(backend, [tex]):
        return _dr.texture_construct_mip(tex.contiguous(), max_mip_level)
    return _mesh_texture.construct_mip(tex, max_mip_level)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor, topology_hash=None,
              pos_gradient_boost: float = 1.0, backend: str = "auto"):
    """Analytic antialiasing of silhouette edges (nvdiffrast's ``antialias``).

    Args:
        color: ``[B, H, W, C]`` image to antialias (e.g. the shaded output of :func:`texture`).
        rast: first output of :func:`rasterize`.
        pos, tri: the clip-space positions and triangles given to :func:`rasterize`.
        topology_hash: optional prebuilt :func:`antialias_construct_topology_hash` of ``tri``.
        pos_gradient_boost: multiplier on the gradients sent to ``pos``.

    Returns:
        ``[B, H, W, C]`` antialiased image; gradients flow to ``color`` and ``pos``.
    """
    if _use_nvdiffrast(backend, [color, rast, pos], [tri]):
        if isinstance(topology_hash, torch.Tensor):
            topology_hash = None  # built by the torch backend: nvdiffrast needs its own
        return _dr.antialias(color.contiguous(), rast.contiguous(), pos.contiguous(), tri.contiguous(),
                             topology_hash=topology_hash, pos_gradient_boost=pos_gradient_boost)
    if topology_hash is not None and not isinstance(topology_hash, torch.Tensor):
        topology_hash = None
    return _mesh_antialias.antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost)


def antialias_construct_topology_hash(tri: torch.Tensor, backend: str = "auto"):
    """Edge adjacency of ``tri`` for :func:`antialias`, to reuse while the triangles stay the same."""
    if _use_nvdiffrast(backend, [], [tri]):
        return _dr.antialias_construct_topology_hash(tri.contiguous())
    return _mesh_antialias.construct_topology_hash(tri)


__all__ = ["rasterize", "interpolate", "texture", "texture_construct_mip", "antialias",
           "antialias_construct_topology_hash", "nvdiffrast_available", "BACKENDS"]
