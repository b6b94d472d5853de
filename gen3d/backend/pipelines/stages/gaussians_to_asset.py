"""Everything after a Gaussian stage 1, shared by the methods that distil a prior into Gaussians (DreamGaussian,
MVDream, ImageDream): the surface (:mod:`.fuse_surface`: marching cubes on the Gaussians' density, or their fused
depth for open and thin objects), UV unwrap, a bake from renders of the Gaussians
around the object, the UV-space refinement against the run's priors, the export and the placement record.

The options live here too (:class:`AssetOptions`, defaults DreamGaussian's), so every such method exposes the same
knobs; a method's presets override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ...geometry.placement import CanonicalView
from ..base import Options, RunContext
from .fuse_surface import SURFACES


class AssetOptions(Options):
    """Mesh, texture and output options (DreamGaussian's ``main.py``/``main2.py`` defaults)."""

    mesh_resolution: int = Field(128, ge=16, le=512, description="marching-cubes voxels along the longest side")
    mesh_level: float = Field(1.0, gt=0, description="density iso level of the mesh")
    surface: Literal[SURFACES] = Field("closed", description=(
        "closed: density iso-surface (watertight); open: fused depth of the Gaussians (holes stay holes, a sheet "
        "is two coincident layers textured per side); auto: open when the object is thin. Fitted Gaussians still "
        "cover openings, so open/auto help only where they do not (issue 30)"))
    target_faces: int = Field(100_000, ge=0, le=2_000_000, description="decimate to this many faces (0 = keep)")
    texture_size: int = Field(1024, ge=64, le=4096, description="texture side in pixels")
    bake_size: int = Field(512, ge=32, le=2048, description="render size of the bake views")
    bake_elevations: tuple[float, ...] = Field((0.0, 45.0, -45.0), min_length=1, max_length=8, description=(
        "elevations of the bake rings (each ring has bake_azimuths views; the top and bottom views are added)"))
    bake_azimuths: int = Field(8, ge=1, le=64, description="views per bake ring, evenly spaced")
    # --- UV refinement
    iters_refine: int = Field(50, ge=0, le=2000, description="stage-2 texture refinement steps (0 = skip)")
    texture_lr: float = Field(0.2, gt=0, description="learning rate of the raw (pre-sigmoid) texture")
    refine_size: int = Field(512, ge=32, le=2048, description="render size of stage-2 novel views")
    refine_steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the SDEdit trajectory")
    refine_strength: tuple[float, float] = Field((0.8, 0.95), description=(
        "DreamGaussian's SDEdit strength at the start and end of stage 2 (its convention: the share of the "
        "trajectory skipped, so 0.8 re-runs 10 of 50 steps)"))
    # --- output
    preview_views: int = Field(8, ge=1, le=64, description="turntable views in preview.png")
    preview_size: int = Field(256, ge=32, le=1024, description="turntable view size")


def gaussians_to_asset(gaussians, opts: AssetOptions, guide, sampler, generator, ctx: RunContext, request,
                       view: CanonicalView, reference: torch.Tensor | None = None) -> tuple[dict[str, Path], dict]:
    """Stages ``mesh``, ``uv_unwrap``, ``bake`` (rings at ``view.radius``/``view.fov``), ``refine`` (``guide`` on
    ``sampler``'s views, plus the input image ``reference [1,4,S,S]`` straight RGBA at ``sampler.reference``) and
    ``export`` (placement from ``view``). Returns ``(artifacts, metrics)``."""
    from ...geometry.placement import record_placement
    from .bake_texture import bake_from_gaussians, orbit_bake_cameras
    from .export import export_results
    from .extract_mesh import MeshExtractConfig
    from .fuse_surface import FuseConfig, extract_surface
    from .prior_refine import PriorRefineConfig, ReferenceView, refine_with_prior
    from .uv_unwrap import UnwrapConfig, uv_unwrap

    with ctx.stage("mesh"):
        ctx.progress("mesh", 0, 1)
        cams = orbit_bake_cameras(view.radius, view.fov, opts.bake_size, opts.bake_elevations, opts.bake_azimuths)
        tm, surface_metrics = extract_surface(
            gaussians, cams, None, opts.surface,
            MeshExtractConfig(resolution=opts.mesh_resolution, level=opts.mesh_level, target_faces=opts.target_faces),
            FuseConfig(resolution=opts.mesh_resolution, target_faces=opts.target_faces))
        ctx.progress("mesh", 1, 1)
    with ctx.stage("uv_unwrap"):
        mesh = uv_unwrap(np.asarray(tm.vertices), np.asarray(tm.faces), UnwrapConfig(resolution=opts.texture_size))
    with ctx.stage("bake"):
        mesh, bake_metrics = bake_from_gaussians(gaussians, mesh, cams, opts.texture_size, ctx)
    with ctx.stage("refine"):
        size, fixed = opts.refine_size, None
        if reference is not None:
            rgba = F.interpolate(reference, (size, size), mode="bilinear", align_corners=False)
            fixed = ReferenceView(sampler.reference(size), rgba.permute(0, 2, 3, 1))
        mesh, refine_metrics = refine_with_prior(
            mesh, guide, sampler, PriorRefineConfig(opts.iters_refine, size, opts.refine_steps, opts.refine_strength,
                                                    opts.texture_lr), generator, ctx, fixed)
    with ctx.stage("export"):
        out = export_results(ctx.out_dir, mesh, gaussians, opts.preview_views, opts.preview_size)
        out.update(record_placement(request, ctx, mesh.vertices, view))
    return out, {**surface_metrics, **bake_metrics, **refine_metrics, "faces": int(len(mesh.faces)),
                 "vertices": int(len(mesh.vertices))}
