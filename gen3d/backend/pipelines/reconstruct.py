"""Method ``reconstruct``: posed RGBA views (a ``transforms.json`` folder) -> textured, UV-mapped mesh.

Composes the shared stages: fit Gaussians -> extract mesh -> UV unwrap -> bake -> refine -> export.
When there are few views, renders of the fitted Gaussians from extra orbit cameras join the bake.
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import Literal

import torch
from pydantic import Field

from ..geometry.cameras import Cameras, orbit_angles, orbit_cameras
from ..geometry.transforms import load_transforms
from . import register
from .base import JobRequest, Options, Pipeline, RunContext
from .stages.bake_texture import BakeConfig, bake_texture
from .stages.export import export_results
from .stages.fuse_surface import SURFACES, FuseConfig, extract_surface
from .stages.extract_mesh import MeshExtractConfig
from .stages.fit_gaussians import FitConfig, check_views, fit_gaussians, render_gaussians
from .stages.refine_texture import RefineConfig, images_as_targets, photometric_error, refine_texture
from .stages.uv_unwrap import UnwrapConfig, uv_unwrap
from .stages.views import resized_views

log = logging.getLogger(__name__)


class ReconstructOptions(Options):
    # stage 1: Gaussians
    fit_steps: int = Field(600, ge=0, le=30000, description="Gaussian optimisation steps")
    num_points: int = Field(5000, ge=100, le=1_000_000,
                            description="initial Gaussians (on the visual hull, or the stereo depth)")
    max_gaussians: int = Field(100_000, ge=100, le=5_000_000, description="densification budget")
    sh_degree: int = Field(1, ge=0, le=3, description="final spherical-harmonics degree of the Gaussians")
    fit_resolutions: list[float] = Field([0.25, 0.5, 1.0], min_length=1, max_length=6,
                                         description="progressive resolution: fractions of the input size")
    views_per_step: int = Field(1, ge=1, le=16, description="views rendered per optimisation step")
    fit_supersample: int = Field(1, ge=1, le=4, description=(
        "the fit's last level renders k x k samples a pixel with its low-pass in sample pixels: sharper "
        "silhouettes, less shrinkage of curved thin shells (2 with surface auto: hemisphere +1.1 dB, sheet +0.9, "
        "ball beside a sheet +0.4; closed objects 0.3-0.6 dB worse, so off by default; the fit 10-35 % longer)"))
    densify_every: int = Field(100, ge=10, le=10000, description="steps between densify/prune passes")
    stereo_init: bool = Field(False, description=(
        "start the Gaussians on the views' stereo depth inside the visual hull, which sees into openings the hull "
        "closes (domes, shells with windows: better geometry there, ~12 s more per standard fit); off: on the "
        "hull's surface (closed objects score ~0.15 dB higher without it). Always on with surface auto or open"))
    # stage 2: mesh
    mesh_resolution: int = Field(128, ge=32, le=512, description="density grid voxels along the longest side")
    mesh_level: float | None = Field(None, gt=0, le=10, description="density iso level of the surface (default: "
                                     "the level whose silhouettes best match the input masks)")
    target_faces: int = Field(50_000, ge=500, le=2_000_000, description="decimate to this many faces")
    smooth_iterations: int = Field(5, ge=0, le=100, description="Taubin smoothing iterations")
    surface: Literal[SURFACES] = Field("closed", description=(
        "closed: density iso-surface (watertight); open: fused depth of the Gaussians (holes stay holes, a sheet "
        "is two coincident layers textured per side); auto: open where the object is thin (per part). Except for "
        "closed, the fit uses two-sided flat Gaussians, so a sheet's two sides need not be two layers, and prunes "
        "Gaussians in the stereo depth's free space"))
    # stages 3-5: UV, bake, refine
    texture_resolution: int = Field(1024, ge=64, le=8192, description="texture size in texels")
    uv_padding: int = Field(4, ge=0, le=64, description="texels between UV charts")
    extra_bake_views: int = Field(8, ge=0, le=64,
                                  description="renders of the Gaussians added to the bake when there are < 8 views")
    refine_steps: int = Field(100, ge=0, le=10000, description="texture refinement steps (0 = bake only)")
    refine_vertices: bool = Field(True, description="also optimise small vertex offsets (silhouettes, thin parts)")
    refine_resolution: float = Field(1.0, gt=0, le=1, description="refinement render size, fraction of the input")
    refine_supersample: int = Field(2, ge=1, le=4, description=(
        "refinement renders k x k samples a pixel and averages them, as the input views' pixels are antialiased "
        "(2: Spot +0.8 dB, the open sheet +1.6 dB in Blender's held-out renders; refinement ~2x slower)"))
    preview_size: int = Field(256, ge=64, le=1024, description="size of each preview tile")

    main = ('fit_steps', 'mesh_resolution', 'texture_resolution', 'target_faces')
    presets = {
        "fast": {"fit_steps": 100, "num_points": 3000, "max_gaussians": 20_000, "sh_degree": 0,
                 "fit_resolutions": [0.25, 0.5], "densify_every": 50, "mesh_resolution": 96,
                 "target_faces": 10_000, "texture_resolution": 512, "refine_steps": 20, "refine_resolution": 0.5,
                 "refine_supersample": 1,
                 "preview_size": 192},
        "standard": {},
        "high": {"fit_steps": 2000, "num_points": 10_000, "max_gaussians": 300_000, "sh_degree": 2,
                 "densify_every": 100, "mesh_resolution": 256, "target_faces": 100_000,
                 "texture_resolution": 2048, "refine_steps": 300},
    }


def _fit_config(o: ReconstructOptions) -> FitConfig:
    shells = o.surface != "closed"
    return FitConfig(steps=o.fit_steps, num_points=o.num_points, max_gaussians=o.max_gaussians,
                     sh_degree=o.sh_degree, sh_every=max(o.fit_steps // (o.sh_degree + 2), 1),
                     resolutions=tuple(o.fit_resolutions), views_per_step=o.views_per_step,
                     densify_from=min(o.densify_every, o.fit_steps // 4), densify_every=o.densify_every,
                     stereo=shells or o.stereo_init, two_sided=shells, carve=shells,
                     stereo_depth_weight=0.1 if shells else 0.0,  # 0.5: sheet better, hemisphere -6.7 dB
                     supersample=o.fit_supersample)


def _extra_views(gaussians, cameras: Cameras, count: int) -> tuple[Cameras, torch.Tensor]:
    """Renders (straight RGBA) of the Gaussians from ``count`` cameras on a ring between the input views."""
    angles = orbit_angles(cameras.c2w)
    center = torch.zeros(3)
    el = float(angles[:, 0].mean())
    az = torch.arange(count) * 360.0 / count + 180.0 / count
    fov = float(torch.rad2deg(2 * torch.atan(0.5 * cameras.height / cameras.K[0, 1, 1])))
    cams = orbit_cameras(el, az, float(angles[:, 2].mean()), fov, cameras.width, cameras.height,
                         target=tuple(center.tolist()))
    with torch.no_grad():
        rgb, alpha, _ = render_gaussians(gaussians, cams.to(gaussians.device))
    a = alpha.clamp(0, 1)
    return cams, torch.cat([(rgb / a.clamp_min(1e-6)).clamp(0, 1), a], -1).cpu()


def reconstruct_views(cameras: Cameras, images: torch.Tensor, o: ReconstructOptions, ctx: RunContext,
                      gen: torch.Generator):
    """The shared stages on posed straight-RGBA views ``images [N, H, W, 4]``: fit Gaussians -> mesh -> UV unwrap
    -> bake -> refine. Returns ``(TexturedMesh, Gaussians)``; metrics go to ``ctx.cache["_metrics"]``."""
    metrics = ctx.cache.setdefault("_metrics", {})
    metrics["views"] = len(cameras)

    with ctx.stage("fit"):
        gaussians, m = fit_gaussians(cameras, images, _fit_config(o), gen,
                                     progress=lambda s, n, p: ctx.progress("fit", s, n, p),
                                     check_cancelled=ctx.check_cancelled, device=ctx.device)
        metrics.update(m)
    return mesh_from_gaussians(gaussians, cameras, images, o, ctx, gen), gaussians


def mesh_from_gaussians(gaussians, cameras: Cameras, images: torch.Tensor, o: ReconstructOptions, ctx: RunContext,
                        gen: torch.Generator):
    """Stages mesh -> UV unwrap -> bake -> refine on Gaussians fitted to ``images [N,H,W,4]`` seen by ``cameras``;
    returns the TexturedMesh (metrics to ``ctx.cache["_metrics"]``)."""
    metrics = ctx.cache.setdefault("_metrics", {})
    with ctx.stage("mesh"):
        ctx.progress("mesh", 0, 1)
        closed = MeshExtractConfig(resolution=o.mesh_resolution, level=o.mesh_level or 0.5,
                                   target_faces=o.target_faces, smooth_iterations=o.smooth_iterations)
        tm, m = extract_surface(gaussians, cameras, images, o.surface, closed,
                                FuseConfig(resolution=o.mesh_resolution, target_faces=o.target_faces),
                                match_level=o.mesh_level is None)
        metrics.update(m)
        metrics["mesh_faces"], metrics["mesh_vertices"] = len(tm.faces), len(tm.vertices)
        metrics["mesh_watertight"] = bool(tm.is_watertight)
        ctx.progress("mesh", 1, 1)
    with ctx.stage("uv"):
        ctx.progress("uv", 0, 1)
        mesh = uv_unwrap(tm.vertices, tm.faces, UnwrapConfig(resolution=o.texture_resolution,
                                                             padding=o.uv_padding))
        ctx.progress("uv", 1, 1)
    with ctx.stage("bake"):
        ctx.progress("bake", 0, 1)
        bake_cams, bake_imgs = cameras, images
        if len(cameras) < 8 and o.extra_bake_views:
            extra_cams, extra_imgs = _extra_views(gaussians, cameras, o.extra_bake_views)
            bake_cams = Cameras(torch.cat([cameras.K, extra_cams.K]), torch.cat([cameras.c2w, extra_cams.c2w]),
                                cameras.width, cameras.height)
            bake_imgs = torch.cat([images, extra_imgs])
        texture, m = bake_texture(mesh, bake_cams, bake_imgs, BakeConfig(resolution=o.texture_resolution),
                                  ctx.device)
        metrics.update(m)
        mesh.texture = texture
        ctx.progress("bake", 1, 1)
    with ctx.stage("refine"):
        if o.refine_steps > 0:
            r_cams, r_imgs = resized_views(cameras, images, o.refine_resolution)
            before = photometric_error(mesh, r_cams, r_imgs)
            mesh, m = refine_texture(mesh, r_cams, images_as_targets(r_imgs),
                                     RefineConfig(steps=o.refine_steps, train_vertices=o.refine_vertices,
                                                  supersample=o.refine_supersample),
                                     gen, progress=lambda s, n, p: ctx.progress("refine", s, n, p),
                                     check_cancelled=ctx.check_cancelled)
            metrics.update(m)
            metrics["refine_mse_before"] = round(before, 6)
            metrics["refine_mse_after"] = round(photometric_error(mesh, r_cams, r_imgs), 6)
    return mesh


@register
class Reconstruct(Pipeline):
    name = "reconstruct"
    title = "Reconstruct from views"
    description = ("Posed RGBA views (transforms.json) to a UV-mapped, textured mesh: fit 3D Gaussians, mesh "
                   "their density, unwrap, bake and refine the texture.")
    inputs = {"views": "folder with transforms.json and RGBA images (or RGB + masks)"}
    required_inputs = ("views",)
    Options = ReconstructOptions
    #: from meta.json timings of ``demo`` (the fast preset on Spot, CPU)
    stage_shares = {"load": 0.01, "fit": 0.62, "mesh": 0.13, "uv": 0.04, "bake": 0.03, "refine": 0.13, "export": 0.04}

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        o = ReconstructOptions(**request.options)
        stale = ctx.out_dir / "meta.json"
        if stale.exists():  # a previous result in this folder must not look like this run's
            stale.unlink()
        with ctx.stage("load"):
            cameras, images = load_transforms(request.files["views"])
            check_views(cameras, images)
        gen = torch.Generator().manual_seed(request.seed)
        mesh, gaussians = reconstruct_views(cameras, images, o, ctx, gen)
        with ctx.stage("export"):
            ctx.progress("export", 0, 1)
            artifacts = export_results(ctx.out_dir, mesh, gaussians, preview_size=o.preview_size)
            ctx.progress("export", 1, 1)
        return artifacts

