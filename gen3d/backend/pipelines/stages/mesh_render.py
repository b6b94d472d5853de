"""Render a :class:`TexturedMesh` with ``gen3d.kernels.mesh`` (nvdiffrast's four primitives): colour, alpha, depth.

Used to make views of a mesh (the demo's input), visibility depth maps (bake), differentiable renders (refine)
and previews. The texture follows the mesh convention (row 0 = ``v = 1``), so ``v`` is flipped for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import gen3d.kernels.mesh as km

from ...geometry.cameras import Cameras
from ...representations.mesh import TexturedMesh


@dataclass
class MeshRender:
    rgb: torch.Tensor     #: [C,H,W,3] composited over the background
    alpha: torch.Tensor   #: [C,H,W,1] coverage (antialiased at silhouettes)
    depth: torch.Tensor   #: [C,H,W] camera depth, +inf where empty
    rast: torch.Tensor    #: [C,H,W,4] rasterizer output


def vertex_depths(vertices: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """``[C,V]``: the camera depth of each of ``vertices [V,3]`` in each camera."""
    w2c = cameras.viewmats().to(vertices)
    return (vertices @ w2c[:, 2, :3].T + w2c[:, 2, 3]).T.contiguous()


def depth_range(depths: torch.Tensor) -> tuple[float, float]:
    """``(near, far)`` around vertex camera depths ``[C,V]``: half the nearest depth in front (at least 0.01) and
    1.5x the farthest. The depth test compares ``z/w`` in float32, whose steps grow with ``far / near``: with a
    fixed 0.01 - 100, two layers of a sheet 0.3 % of the diagonal apart z-fought."""
    z = depths.detach()
    front = z[z > 0.01]
    near = max(0.5 * float(front.min()), 0.01) if len(front) else 0.01
    return near, max(1.5 * float(z.max()), 2 * near)


def clip_positions(vertices: torch.Tensor, cameras: Cameras, depths: torch.Tensor | None = None) -> torch.Tensor:
    """World vertices ``[V,3]`` -> clip space ``[C,V,4]``, near and far planes from :func:`depth_range` of their
    camera ``depths [C,V]`` (computed when not given)."""
    depths = vertex_depths(vertices, cameras) if depths is None else depths
    P = cameras.clip_matrices(*depth_range(depths)).to(vertices)
    return torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1) @ P.transpose(1, 2)


def mesh_topology(mesh: TexturedMesh):
    """The faces' edge adjacency that antialiasing needs (``km.antialias_construct_topology_hash``)."""
    return km.antialias_construct_topology_hash(mesh.faces.to(torch.int32))


def _sample(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None, rast: torch.Tensor) -> torch.Tensor:
    """``tex [Ht,Wt,3]`` sampled (trilinear with ``uv_da``, else bilinear; clamped) at ``uv [C,H,W,2]``. Off the
    GPU only the covered pixels are sampled (a mesh often covers a small part of the image); on a GPU every pixel
    is, which needs no host sync. Empty pixels are 0."""
    mode = "linear-mipmap-linear" if uv_da is not None else "linear"
    if tex.is_cuda:
        return km.texture(tex[None], uv, uv_da, filter_mode=mode, boundary_mode="clamp")
    C, H, W = uv.shape[:3]
    pix = (rast[..., 3] > 0).reshape(-1).nonzero().squeeze(1)

    def covered(t):
        return None if t is None else t.reshape(-1, t.shape[-1]).index_select(0, pix)[None, None]
    color = km.texture(tex[None], covered(uv), covered(uv_da), filter_mode=mode, boundary_mode="clamp")
    return tex.new_zeros(C * H * W, tex.shape[-1]).index_put((pix,), color[0, 0]).view(C, H, W, -1)


def render_mesh(mesh: TexturedMesh, cameras: Cameras, background: torch.Tensor | None = None,
                texture: torch.Tensor | None = None, vertices: torch.Tensor | None = None,
                mipmap: bool = True, antialias: bool = True, topology=None) -> MeshRender:
    """Render ``mesh`` into ``cameras``. ``texture [H,W,3]`` and ``vertices [V,3]`` override the mesh's own (for
    optimisation); ``background [C,3]`` or None (black). Without a texture, vertex colours or grey are used.
    ``topology``: :func:`mesh_topology` of the mesh, to reuse over many renders of the same faces."""
    v = mesh.vertices if vertices is None else vertices
    tri = mesh.faces.to(torch.int32)
    z_cam = vertex_depths(v, cameras)
    pos = clip_positions(v, cameras, z_cam)
    rast, rast_db = km.rasterize(pos, tri, (cameras.height, cameras.width))
    tex = mesh.texture if texture is None else texture
    if tex is not None:
        uv = torch.stack([mesh.uvs[:, 0], 1 - mesh.uvs[:, 1]], -1)
        uvi, uv_da = km.interpolate(uv[None], rast, tri, rast_db, diff_attrs="all" if mipmap else None)
        color = _sample(tex, uvi, uv_da if mipmap else None, rast)
    else:
        vc = mesh.vertex_colors if mesh.vertex_colors is not None else torch.full_like(v, 0.7)
        color, _ = km.interpolate(vc[None], rast, tri)
    covered = (rast[..., 3:] > 0).to(color.dtype)
    bg = torch.zeros(len(cameras), 3, dtype=color.dtype, device=color.device) if background is None else background
    rgba = torch.cat([color * covered + bg[:, None, None, :] * (1 - covered), covered], -1)
    if antialias:
        rgba = km.antialias(rgba, rast, pos, tri, topology_hash=topology)
    depth, _ = km.interpolate(z_cam[..., None], rast, tri)
    depth = torch.where(rast[..., 3] > 0, depth[..., 0], torch.full_like(depth[..., 0], float("inf")))
    return MeshRender(rgba[..., :3], rgba[..., 3:], depth, rast)
