"""Method ``instant3d``: text -> a 2x2 grid of four views (or, given an image: ``front=zero123plus``, the default
``auto`` choosing it, one image -> six Zero123++ views) -> a sparse-view reconstructor -> a textured mesh.

Stages: ``grid`` (a diffusers text-to-image model sampled from the Gaussian-blob initialisation; or Zero123++ v1.2
on the prepared input image; the views are written and streamed as previews before any mesh exists) -> ``triplane``
(the views with their cameras -- the grid's ring: elevation 20 deg, azimuths 0/90/180/270; Zero123++'s: azimuths
30..330, elevations +20/-10 -- through :class:`SparseViewLRM`) -> the shared triplane-mesh stage (marching cubes at
the model's level, cleanup, UV unwrap, colour bake) -> export (GLB, OBJ, preview).

Weights: the grid model is a diffusers folder, SD 2.1-base by default (``grid_model=sdxl-base`` is the paper's
base); Adobe released no fine-tune, so without ``grid_weights_path`` pointing at a 2x2-grid fine-tune the four
views are not consistent. The reconstructor is InstantMesh's NeRF model (Apache-2.0), trained on six Zero123++
views but with random training views, so it accepts the four grid views with their own cameras. GRM's
``instant3d.pth`` (its reproduction of the grid model) is not offered: its repository states no licence. The image
front is InstantMesh's: Zero123++ v1.2 (CC BY-NC 4.0 weights) with InstantMesh's white-background UNet fine-tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from ..errors import BadInput, NumericalError
from . import register
from .base import JobRequest, Options, Pipeline, RunContext
from .stages.triplane_mesh import autocast, image_grid, textured_mesh_from_field, to_uint8


class Instant3DOptions(Options):
    front: Literal["auto", "grid", "zero123plus"] = Field(
        "auto", description="grid: text -> 2x2 grid (Instant3D); zero123plus: image -> six Zero123++ v1.2 views "
                            "(InstantMesh's front; CC BY-NC 4.0 weights); auto: zero123plus when an image is given")
    grid_model: Literal["sd21-base", "sdxl-base"] = Field(
        "sd21-base", description="text-to-image base of the grid generator (SD 2.1-base: light default; SDXL: paper)")
    grid_weights_path: str | None = Field(None, description="a diffusers folder fine-tuned to draw 2x2 view grids "
                                                            "(same layout as grid_model); else the base model")
    reconstructor: Literal["instantmesh-nerf-base", "instantmesh-nerf-large"] = Field(
        "instantmesh-nerf-base", description="sparse-view reconstructor weights (InstantMesh NeRF, Apache-2.0)")
    reconstructor_path: str | None = Field(None, description="explicit reconstructor folder (else the registry)")
    grid_size: int | None = Field(None, ge=64, le=2048, multiple_of=16,
                                  description="grid side in pixels (default 512 for SD 2.1, 1024 for SDXL)")
    steps: int = Field(30, ge=1, le=200, description="sampling steps (grid: Euler; Zero123++: Euler ancestral, "
                                                       "InstantMesh uses 75)")
    guidance_scale: float | None = Field(None, ge=0, le=30,
                                         description="classifier-free guidance scale (default grid 5, Zero123++ 4)")
    zero123plus_unet: Literal["instantmesh", "base"] = Field(
        "instantmesh", description="Zero123++ UNet: InstantMesh's white-background fine-tune (what its "
                                   "reconstructor expects) or the base v1.2 (grey background)")
    zero123plus_path: str | None = Field(None, description="explicit Zero123++ v1.2 folder (else the registry)")
    zero123plus_unet_path: str | None = Field(None, description="explicit diffusion_pytorch_model.bin of the "
                                                                "InstantMesh UNet (else the registry)")
    view_size: int = Field(320, ge=32, le=1024, multiple_of=8, description="Zero123++ view side (published: 320)")
    foreground_ratio: float = Field(0.85, gt=0.3, le=1.0,
                                    description="Zero123++ input: object size / image size after recentring")
    rembg_model: str = Field("u2net", description="rembg model for inputs without alpha (Zero123++ front)")
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
    inputs = {"prompt": "what to generate (grid front)",
              "image": "one image of an object, RGBA or RGB with rembg (selects the Zero123++ front)"}
    needs_mask = True
    Options = Instant3DOptions
    weights = ("sd21-base", "instantmesh-nerf-base")
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28), the
    #: grid front; the image front (preprocess) spends more in ``grid`` (0.75 of its stage time), so it lags there
    stage_shares = {"load": 0.096, "preprocess": 0.001, "grid": 0.464, "triplane": 0.001, "mesh": 0.309,
                    "uv_unwrap": 0.10, "bake": 0.003, "export": 0.026}

    @staticmethod
    def front(opts: Instant3DOptions, request: JobRequest) -> str:
        """The front that runs: the option, or for ``auto`` the image front exactly when an image is given."""
        if opts.front != "auto":
            return opts.front
        return "zero123plus" if "image" in request.files else "grid"

    def validate(self, request: JobRequest) -> Instant3DOptions:
        opts = super().validate(request)
        front = self.front(opts, request)
        if front == "grid" and "image" in request.files:
            raise BadInput("instant3d's grid front is text to 3D and takes no image: remove the image, or set the "
                           "option front=zero123plus (or auto) for image to 3D", {"field": "image"})
        if front == "grid" and not request.prompt:
            raise BadInput("method 'instant3d' needs the input 'prompt' (grid front) or 'image' (Zero123++ front)",
                           {"field": "prompt"})
        if front == "zero123plus" and "image" not in request.files:
            raise BadInput("instant3d with front=zero123plus needs the input 'image'", {"field": "image"})
        return opts

    def _cached(self, ctx: RunContext, key: str, build):
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = build()
        return ctx.cache[key]

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import record_placement
        from ..models.instant3d.checkpoints import load_instantmesh
        from ..models.instant3d.reconstructor import encode_cameras, model_views
        from ..weights import is_tiny, resolve
        from .stages.export import export_results, write_png

        opts = Instant3DOptions(**request.options)
        dev = ctx.device
        recon_path = resolve(opts.reconstructor, opts.reconstructor_path)
        model = self._cached(ctx, f"instantmesh:{recon_path.resolve()}",
                             lambda: load_instantmesh(recon_path).to(dev))
        ctx.cache["_meta_extra"] = {"weights": {"reconstructor": {
            "name": opts.reconstructor, "path": str(recon_path), "tiny": is_tiny(recon_path),
            "license": model.cfg.license}}}
        out: dict[str, Path] = {}

        front = self._zero123plus_views if self.front(opts, request) == "zero123plus" else self._grid_views
        views, cams, view, images = front(request, opts, ctx, out)  # views [V, s, s, 4] RGBA
        preview = to_uint8(image_grid(list(views), -(-len(views) // 2)))  # two rows, shown before any mesh exists
        out.update({name: write_png(ctx.out_dir / name, to_uint8(image)) for name, image in images.items()})
        out["views.png"] = write_png(ctx.out_dir / "views.png", preview)
        ctx.progress("grid", opts.steps, opts.steps, preview)

        with ctx.stage("triplane"), torch.no_grad(), autocast(dev, opts.half_precision):
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
            out.update(record_placement(request, ctx, mesh.vertices, view))
        ctx.cache.setdefault("_metrics", {}).update({"faces": int(len(mesh.faces)),
                                                     "vertices": int(len(mesh.vertices)),
                                                     "front": self.front(opts, request), "views": int(len(views))})
        return out

    def _grid_views(self, request: JobRequest, opts: Instant3DOptions, ctx: RunContext, out: dict):
        """Text -> the 2x2 grid -> ``(views [4, s, s, 4] RGBA, cameras, the canonical view, images to write)``."""
        from ..geometry.placement import CanonicalView
        from ..models.instant3d.grid import GRID_RING, GridGenerator, grid_cameras, split_grid
        from ..weights import is_tiny, resolve

        grid_path = resolve(opts.grid_model, opts.grid_weights_path)
        generator = self._cached(ctx, f"grid:{grid_path.resolve()}", lambda: GridGenerator.from_folder(
            grid_path, sdxl=opts.grid_model == "sdxl-base", device=ctx.device))
        ctx.cache["_meta_extra"]["weights"]["grid"] = {"name": opts.grid_model, "path": str(grid_path),
                                                       "tiny": is_tiny(grid_path),
                                                       "fine_tuned": opts.grid_weights_path is not None}
        size = opts.grid_size or (1024 if opts.grid_model == "sdxl-base" else 512)
        guidance = 5.0 if opts.guidance_scale is None else opts.guidance_scale
        with ctx.stage("grid"):
            grid = generator(request.prompt, size, opts.steps, guidance, request.seed, request.negative_prompt or "",
                             callback=lambda i, n: (ctx.check_cancelled(), ctx.progress("grid", i, n)))
        views = split_grid(grid)
        cams = grid_cameras(views.shape[1], opts.view_radius, opts.view_fov)
        view = CanonicalView(GRID_RING.elevations[0], opts.view_radius or GRID_RING.distance,
                             opts.view_fov or GRID_RING.fov_deg)
        return views, cams, view, {"grid.png": grid}

    def _zero123plus_views(self, request: JobRequest, opts: Instant3DOptions, ctx: RunContext, out: dict):
        """Image -> Zero123++'s 3x2 image -> ``(views [6, s, s, 4] RGBA, cameras, the input view, images)``."""
        from ..geometry.placement import CanonicalView
        from ..models.instant3d.grid import split_grid
        from ..models.instant3d.reconstructor import ZERO123PLUS_RING, zero123plus_cameras
        from ..models.zero123plus import Zero123Plus
        from ..models.zero123plus.model import VIEW_COLS, VIEW_ROWS
        from ..weights import get_entry, is_tiny, resolve
        from .stages.views import reference_input

        folder = resolve("zero123plus-v1.2", opts.zero123plus_path)
        unet_file = None
        if opts.zero123plus_unet == "instantmesh":
            unet_file = resolve("instantmesh-zero123plus-unet", opts.zero123plus_unet_path)
            unet_file = unet_file / "diffusion_pytorch_model.bin" if unet_file.is_dir() else unet_file
        sampler = self._cached(ctx, f"zero123plus:{folder.resolve()}:{unet_file}", lambda: Zero123Plus.from_folder(
            folder, unet_file, device=ctx.device))
        ctx.cache["_meta_extra"]["weights"]["zero123plus"] = {
            "path": str(folder), "unet": str(unet_file or "base"), "tiny": is_tiny(folder),
            "license": get_entry("zero123plus-v1.2").license}
        crop = sampler.vae_processor.crop_size["height"]
        with ctx.stage("preprocess"):
            rgba, written = reference_input(request.files["image"], crop, 1.0 - opts.foreground_ratio, True,
                                            opts.rembg_model, ctx.out_dir)
        out.update(written)
        guidance = 4.0 if opts.guidance_scale is None else opts.guidance_scale
        with ctx.stage("grid"):
            image = sampler(rgba[0].permute(1, 2, 0).numpy(), opts.steps, guidance,
                            torch.Generator().manual_seed(request.seed), opts.view_size,
                            callback=lambda i, n: (ctx.check_cancelled(), ctx.progress("grid", i, n)))
        views = split_grid(image, VIEW_ROWS, VIEW_COLS)
        ring = ZERO123PLUS_RING  # the input view: azimuth 0 of the six, taken as elevation 0 (v1.2 fixes the views')
        return views, zero123plus_cameras(opts.view_size), CanonicalView(0.0, ring.distance, ring.fov_deg), \
            {"zero123plus.png": image}

