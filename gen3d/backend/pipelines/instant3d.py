"""Method ``instant3d``: text -> a 2x2 grid of four views -> a sparse-view reconstructor -> a textured mesh.

Stages: ``grid`` (a diffusers text-to-image model sampled from the Gaussian-blob initialisation; the grid and its
four views are written and streamed as previews before any mesh exists) -> ``triplane`` (the four views with their
cameras, elevation 20 deg and azimuths 0/90/180/270, through :class:`SparseViewLRM`) -> the shared triplane-mesh
stage (marching cubes at the model's level, cleanup, UV unwrap, colour bake) -> export (GLB, OBJ, preview).

Weights: the grid model is a diffusers folder, SD 2.1-base by default (``grid_model=sdxl-base`` is the paper's
base); Adobe released no fine-tune, so without ``grid_weights_path`` pointing at a 2x2-grid fine-tune the four
views are not consistent. The reconstructor is InstantMesh's NeRF model (Apache-2.0), trained on six Zero123++
views but with random training views, so it accepts the four grid views with their own cameras. GRM's
``instant3d.pth`` (its reproduction of the grid model) is not offered: its repository states no licence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from ..errors import NumericalError
from . import register
from .base import JobRequest, Options, Pipeline, RunContext
from .stages.triplane_mesh import autocast, image_grid, textured_mesh_from_field, to_uint8


class Instant3DOptions(Options):
    grid_model: Literal["sd21-base", "sdxl-base"] = Field(
        "sd21-base", description="text-to-image base of the grid generator (SD 2.1-base: light default; SDXL: paper)")
    grid_weights_path: str | None = Field(None, description="a diffusers folder fine-tuned to draw 2x2 view grids "
                                                            "(same layout as grid_model); else the base model")
    reconstructor: Literal["instantmesh-nerf-base", "instantmesh-nerf-large"] = Field(
        "instantmesh-nerf-base", description="sparse-view reconstructor weights (InstantMesh NeRF, Apache-2.0)")
    reconstructor_path: str | None = Field(None, description="explicit reconstructor folder (else the registry)")
    grid_size: int | None = Field(None, ge=64, le=2048, multiple_of=16,
                                  description="grid side in pixels (default 512 for SD 2.1, 1024 for SDXL)")
    steps: int = Field(30, ge=1, le=200, description="Euler sampling steps of the grid model")
    guidance_scale: float = Field(5.0, ge=0, le=30, description="classifier-free guidance scale")
    view_radius: float | None = Field(None, gt=0.5, le=10,
                                      description="camera distance the grid views are posed at (ring: 2.7)")
    view_fov: float | None = Field(None, gt=5, lt=120, description="vertical fov of the grid views (ring: 50 deg)")
    mesh_resolution: int | None = Field(None, ge=32, le=512, description="marching-cubes grid (model default 256)")
    mesh_level: float | None = Field(None, gt=0, description="density iso level (model default 10)")
    target_faces: int = Field(100_000, ge=0, le=2_000_000, description="decimate to this many faces (0 = keep)")
    smooth_iterations: int = Field(2, ge=0, le=50, description="Taubin smoothing iterations after meshing")
    texture_size: int = Field(1024, ge=64, le=4096, description="baked base-colour texture side in pixels")
    preview_views: int = Field(8, ge=1, le=120, description="turntable views rendered for preview.png")
    preview_size: int = Field(256, ge=16, le=1024, description="turntable view size")
    half_precision: bool = Field(True, description="fp16/bf16 on CUDA")

    main = ("grid_model", "steps", "guidance_scale", "texture_size")
    presets = {
        "fast": {"steps": 20, "mesh_resolution": 128, "texture_size": 512, "preview_views": 4, "preview_size": 128,
                 "target_faces": 30_000},
        "standard": {},
        "high": {"steps": 50, "reconstructor": "instantmesh-nerf-large", "texture_size": 2048, "preview_views": 16,
                 "target_faces": 300_000},
    }


@register
class Instant3DPipeline(Pipeline):
    name = "instant3d"
    title = "Instant3D (text to four views to 3D, feed-forward)"
    description = ("A text-to-image model draws a 2x2 grid of four views (from a Gaussian-blob start); a sparse-view "
                   "reconstructor turns them into a triplane NeRF in one pass, then a textured mesh. Grid model: "
                   "SD 2.1-base (CreativeML Open RAIL++-M) or SDXL, fine-tune your own with recipe instant3d-grid; "
                   "reconstructor: InstantMesh NeRF (Apache-2.0). GRM's instant3d.pth is not offered (no licence "
                   "stated).")
    inputs = {"prompt": "what to generate"}
    required_inputs = ("prompt",)
    Options = Instant3DOptions
    weights = ("sd21-base", "instantmesh-nerf-base")

    def _cached(self, ctx: RunContext, key: str, build):
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = build()
        return ctx.cache[key]

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import CanonicalView, record_placement
        from ..models.instant3d.checkpoints import load_instantmesh
        from ..models.instant3d.grid import GRID_RING, GridGenerator, grid_cameras, split_grid
        from ..models.instant3d.reconstructor import encode_cameras, model_views
        from ..weights import is_tiny, resolve
        from .stages.export import export_results, write_png

        opts = Instant3DOptions(**request.options)
        dev = ctx.device
        grid_path = resolve(opts.grid_model, opts.grid_weights_path)
        recon_path = resolve(opts.reconstructor, opts.reconstructor_path)
        generator = self._cached(ctx, f"grid:{grid_path.resolve()}", lambda: GridGenerator.from_folder(
            grid_path, sdxl=opts.grid_model == "sdxl-base", device=dev))
        model = self._cached(ctx, f"instantmesh:{recon_path.resolve()}",
                             lambda: load_instantmesh(recon_path).to(dev))
        ctx.cache["_meta_extra"] = {"weights": {
            "grid": {"name": opts.grid_model, "path": str(grid_path), "tiny": is_tiny(grid_path),
                     "fine_tuned": opts.grid_weights_path is not None},
            "reconstructor": {"name": opts.reconstructor, "path": str(recon_path), "tiny": is_tiny(recon_path),
                              "license": model.cfg.license}}}
        out: dict[str, Path] = {}

        size = opts.grid_size or (1024 if opts.grid_model == "sdxl-base" else 512)
        with ctx.stage("grid"):
            grid = generator(request.prompt, size, opts.steps, opts.guidance_scale, request.seed,
                             request.negative_prompt or "",
                             callback=lambda i, n: (ctx.check_cancelled(), ctx.progress("grid", i, n)))
            views = split_grid(grid)  # [4, s, s, 4] RGBA
            preview = to_uint8(image_grid(list(views), 4))  # the four views, shown before any mesh exists
            out["grid.png"] = write_png(ctx.out_dir / "grid.png", to_uint8(grid))
            out["views.png"] = write_png(ctx.out_dir / "views.png", preview)
            ctx.progress("grid", opts.steps, opts.steps, preview)

        with ctx.stage("triplane"), torch.no_grad(), autocast(dev, opts.half_precision):
            cams = grid_cameras(views.shape[1], opts.view_radius, opts.view_fov)
            images = model_views(torch.from_numpy(views[..., :3]).permute(0, 3, 1, 2), model.cfg)[None].to(dev)
            planes = model.forward_planes(images, encode_cameras(cams, model.cfg.model_yaw_deg)[None].to(dev))
            planes = planes.float()
        if not torch.isfinite(planes).all():
            raise NumericalError("the reconstructor produced NaN/inf triplane features", {"stage": "triplane"})
        field = model.field(planes[0])
        cfg = model.cfg
        mesh = textured_mesh_from_field(field, ctx, opts.mesh_resolution or cfg.mesh_resolution,
                                        opts.mesh_level or cfg.mesh_level, opts.smooth_iterations,
                                        opts.target_faces, opts.texture_size, opts.half_precision)
        ctx.progress("export", 0, 1)
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, preview_views=opts.preview_views,
                                      preview_size=opts.preview_size))
            out.update(record_placement(request, ctx, mesh.vertices, CanonicalView(
                GRID_RING.elevations[0], opts.view_radius or GRID_RING.distance, opts.view_fov or GRID_RING.fov_deg)))
        ctx.cache.setdefault("_metrics", {}).update({"faces": int(len(mesh.faces)),
                                                     "vertices": int(len(mesh.vertices)),
                                                     "grid_size": size, "views": int(len(views))})
        return out

