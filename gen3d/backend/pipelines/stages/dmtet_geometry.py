"""Fine stage: a DMTet surface and its colour volume optimised by score distillation at high resolution.

Shared by the methods whose second stage sharpens a coarse result into a mesh (Magic123; DreamCraft3D's geometry
stage): the coarse result (a closed mesh, e.g. :func:`extract_mesh` of distilled Gaussians) initialises the DMTet by
fitting its SDF (:meth:`DMTet` + :func:`fit_sdf`) and, when it has colours (points with RGB), the colour volume.
Each step extracts the surface by marching tetrahedra, colours its vertices from the volume (or, for the first
``normal_iter_ratio`` of the steps, with its normals: geometry-only "normal shading"), renders it through
``gen3d.kernels.mesh`` (:func:`render_mesh`: rasterize, interpolate, antialiased silhouettes, depth) and takes
the guide's losses on random views and/or the reference-view losses (with its schedule, as in stage 1), plus the
normal-consistency and Laplacian regularisers of the extracted mesh. :func:`textured_surface` turns the result
into a decimated, UV-unwrapped mesh whose texture is the colour volume sampled at each texel's surface point.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ...errors import NumericalError
from ...representations.dmtet import MAX_RESOLUTION, MIN_RESOLUTION, ColorVolume, DMTet, VolumeSDF, fit_sdf, \
    mesh_occupancy
from ...representations.mesh import TexturedMesh
from ..base import Options, RunContext
from .distill_gaussians import ReferenceView
from .mesh_render import render_mesh

log = logging.getLogger(__name__)


class DMTetOptions(Options):
    """Fine-stage options; the defaults are Magic123's fine stage (``tet_grid_size 256``, 5000 iterations,
    mesh normal and Laplacian losses 0.1) unless a method's preset says otherwise."""

    mesh_resolution: int = Field(128, ge=16, le=512, description="marching-cubes voxels of the coarse mesh")
    mesh_level: float = Field(1.0, gt=0, description="density iso level of the coarse mesh")
    tet_resolution: int = Field(256, ge=MIN_RESOLUTION, le=MAX_RESOLUTION, description=(
        "DMTet cells per side of the object's bounding cube"))
    fine_iters: int = Field(5000, ge=0, le=20000, description="fine-stage steps (0 = mesh the coarse result only)")
    fine_render_size: int = Field(1024, ge=32, le=2048, description="render size of the fine stage's views")
    fine_init_steps: int = Field(100, ge=0, le=2000, description="SDF-fitting steps initialising the DMTet")
    color_resolution: int = Field(128, ge=8, le=512, description="cells per side of the colour volume")
    sdf_lr: float = Field(1e-3, gt=0, description="learning rate of the SDF grid values (world units)")
    deformation_lr: float = Field(5e-3, gt=0, description="learning rate of the vertex deformations (tanh logits)")
    color_lr: float = Field(1e-2, gt=0, description="learning rate of the colour volume (logits)")
    lambda_normal_consistency: float = Field(0.1, ge=0, description="weight of 1 - cos between adjacent faces")
    lambda_laplacian: float = Field(0.1, ge=0, description="weight of the uniform Laplacian smoothness")
    normal_iter_ratio: float = Field(0.0, ge=0, le=1, description=(
        "share of the first fine steps rendered with normal shading (geometry only; Magic123's DMTet stage: 0)"))
    rgb_interval: int = Field(0, ge=0, description=(
        "after those, normal shading except every this-many-th step in colour (DreamCraft3D's n_rgb; 0 = colour)"))
    normal_consistency_ramp: tuple[int, float, float, int] | None = Field(None, description=(
        "threestudio's [start_step, start, end, end_step] for the normal-consistency weight (overrides the constant)"))


def dmtet_from_mesh(vertices: np.ndarray, faces: np.ndarray, resolution: int, steps: int,
                    device: torch.device | str = "cpu") -> DMTet:
    """A DMTet over the origin-centred cube that holds the closed mesh ``vertices [V,3]``, ``faces [F,3]`` with a
    margin (5 % and three cells), its SDF fitted to the mesh's (the signed distance transform of its inside test on
    a lattice twice as fine)."""
    scale = 1.05 * float(np.abs(np.asarray(vertices)).max()) / (1 - 6 / resolution)
    fine = min(2 * resolution, MAX_RESOLUTION)
    target = VolumeSDF.from_occupancy(mesh_occupancy(vertices, faces, fine, scale), scale)
    target.values = target.values.to(device)
    dmtet = DMTet(resolution, scale).to(device)
    fit_sdf(dmtet, target, steps)
    return dmtet


def dmtet_from_gaussians(gaussians, opts: DMTetOptions,
                         device: torch.device | str = "cpu") -> tuple[DMTet, ColorVolume]:
    """The fine stage's start from coarse Gaussians: their density iso-surface (``opts.mesh_resolution``,
    ``opts.mesh_level``, not decimated) fitted as the DMTet's SDF, and the colour volume of their centres' colours."""
    from .extract_mesh import MeshExtractConfig, extract_mesh

    mesh = extract_mesh(gaussians.means, gaussians.rotations, gaussians.scales, gaussians.opacities,
                        MeshExtractConfig(resolution=opts.mesh_resolution, level=opts.mesh_level, target_faces=0))
    dmtet = dmtet_from_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), opts.tet_resolution,
                            opts.fine_init_steps, device)
    colors = ColorVolume.from_points(gaussians.means, gaussians.colors, opts.color_resolution, dmtet.scale)
    return dmtet, colors.to(device)


def normal_consistency(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the normals of the two faces on each edge shared by exactly two faces."""
    v = vertices[faces]
    n = F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1)
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(-1).values
    key = e[:, 0] * len(vertices) + e[:, 1]
    order = key.argsort()
    key, fid = key[order], torch.arange(len(faces), device=faces.device).repeat(3)[order]
    pair = key[1:] == key[:-1]
    if not pair.any():
        return vertices.new_zeros(())
    return (1 - (n[fid[:-1][pair]] * n[fid[1:][pair]]).sum(-1)).mean()


def laplacian_smoothness(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean norm of the uniform Laplacian ``v - mean(neighbours of v)`` over the vertices."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.cat([e, e.flip(1)])
    total = torch.zeros_like(vertices).index_add(0, e[:, 0], vertices[e[:, 1]])
    degree = torch.bincount(e[:, 0], minlength=len(vertices)).clamp_min(1)[:, None]
    return (vertices - total / degree).norm(dim=-1).mean()


def ramp(value: float, schedule: tuple[int, float, float, int] | None, step: int) -> float:
    """threestudio's ``C(value)``: ``value``, or with ``schedule = [s0, v0, v1, s1]`` ``v0`` before ``s0``, ``v1``
    from ``s1``, linear between."""
    if schedule is None:
        return value
    s0, v0, v1, s1 = schedule
    return v0 + (v1 - v0) * min(max((step - s0) / max(s1 - s0, 1), 0.0), 1.0)


def render_dmtet(dmtet: DMTet, colors: ColorVolume, cameras, background: torch.Tensor, normal_shading: bool = False):
    """Extract the surface and render it into ``cameras`` (:class:`MeshRender`: rgb, alpha, depth), coloured by
    the volume or, with ``normal_shading``, by its world normals ``(n + 1) / 2``. Returns ``(render, vertices,
    faces)``."""
    verts, faces = dmtet.surface()
    if len(faces) == 0:
        raise NumericalError("the DMTet surface vanished (no sign change in the SDF)", {"stage": "dmtet"})
    mesh = TexturedMesh(verts, faces)
    shade = (mesh.with_vertex_normals().normals + 1) / 2 if normal_shading else colors(verts)
    mesh = TexturedMesh(verts, faces, vertex_colors=shade)
    return render_mesh(mesh, cameras, background, vertices=verts), verts, faces


def refine_dmtet(opts: DMTetOptions, dmtet: DMTet, colors: ColorVolume, guide, sampler, generator: torch.Generator,
                 ctx: RunContext, reference: ReferenceView | None = None) -> dict:
    """Optimise ``dmtet`` and ``colors`` in place for ``opts.fine_iters`` steps (module docstring); progress as
    stage ``dmtet``. ``reference.rgba`` is sized for the reference camera ``sampler.reference(size)``. Returns
    metrics."""
    dev = ctx.device
    opt = torch.optim.Adam([{"params": [dmtet.sdf], "lr": opts.sdf_lr},
                            {"params": [dmtet.deformation], "lr": opts.deformation_lr},
                            {"params": colors.parameters(), "lr": opts.color_lr}])
    white = torch.ones(1, 3, device=dev)
    ref_cam = sampler.reference(reference.rgba.shape[-1]).to(dev) if reference is not None else None
    logs: dict[str, float] = {}
    for step in range(1, opts.fine_iters + 1):
        ctx.check_cancelled()
        r = step / opts.fine_iters
        normal_shading = r <= opts.normal_iter_ratio or (opts.rgb_interval > 0 and step % opts.rgb_interval != 0)
        use_ref, use_guide = reference.schedule(step) if reference is not None else (False, True)
        loss = torch.zeros((), device=dev)
        if use_ref:
            out, verts, faces = render_dmtet(dmtet, colors, ref_cam, white)
            loss = loss + reference.loss(out.rgb, out.alpha, out.depth)
            images = out.rgb
        if use_guide:
            cams, el, az = sampler.sample(opts.fine_render_size, generator, r)
            cams = cams.to(dev)
            out, verts, faces = render_dmtet(dmtet, colors, cams, white.expand(len(cams), 3), normal_shading)
            images = out.rgb
            guidance, logs = guide.losses(images.permute(0, 3, 1, 2), cams, el, az, r)
            loss = loss + guidance
        loss = loss + ramp(opts.lambda_normal_consistency, opts.normal_consistency_ramp, step) * normal_consistency(
            verts, faces)
        loss = loss + opts.lambda_laplacian * laplacian_smoothness(verts, faces)
        if not torch.isfinite(loss):
            raise NumericalError(f"the DMTet stage diverged at step {step} (loss {float(loss)})",
                                 {"stage": "dmtet", "step": step})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        preview = None
        if step == opts.fine_iters or step % max(1, opts.fine_iters // 10) == 0:
            preview = (images[0].detach().clamp(0, 1) * 255).byte().cpu().numpy()
        ctx.progress("dmtet", step, opts.fine_iters, preview)
    verts, faces = dmtet.surface()
    return {"dmtet_vertices": int(len(verts)), "dmtet_faces": int(len(faces)),
            **{f"fine_{k}": v for k, v in logs.items()}}


@torch.no_grad()
def textured_surface(dmtet: DMTet, colors: ColorVolume, texture_size: int, target_faces: int) -> TexturedMesh:
    """The DMTet's surface, cleaned and decimated to ``target_faces`` (0 = keep), UV-unwrapped, its texture the
    colour volume at each texel's surface point (gutters filled by pull-push)."""
    import trimesh

    from .bake_texture import pull_push_fill, uv_space_surface
    from .extract_mesh import cleanup_mesh
    from .uv_unwrap import UnwrapConfig, uv_unwrap

    verts, faces = dmtet.surface()
    tm = trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False)
    tm = cleanup_mesh(tm, 1e-3 * dmtet.cell, 0.05, 0, target_faces)
    mesh = uv_unwrap(np.asarray(tm.vertices), np.asarray(tm.faces), UnwrapConfig(resolution=texture_size))
    mesh = mesh.to(dmtet.sdf.device)
    surface = uv_space_surface(mesh, texture_size)
    rgb = colors(surface.position.reshape(-1, 3)).reshape(texture_size, texture_size, 3)
    mesh.texture = pull_push_fill(rgb, surface.valid).clamp(0, 1)
    return mesh.to("cpu")
