"""Method ``lrm``: one image -> a textured mesh in one forward pass (OpenLRM small/base/large or TripoSR).

Stages: preprocess (mask, recentre, the model's background and resolution) -> predict the triplane -> volume-render
a turntable of it (``triplane.png``, streamed as progress previews) -> density on a grid and marching cubes at the
model's level (OpenLRM: softplus, 384^3, 3.0; TripoSR: exp, 256^3, 25.0) -> cleanup -> UV unwrap -> bake the
triplane's colour into a texture -> export (the shared stages: GLB, OBJ, and a mesh turntable ``preview.png``).
The mesh lands in Blender's frame (Z up) with the input view looking along +Y (az 0 of ``orbit_cameras``).
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


class LRMOptions(Options):
    model: Literal["openlrm-small", "openlrm-base", "openlrm-large", "triposr"] = Field(
        "triposr", description="which published LRM: TripoSR (MIT weights) or OpenLRM small/base/large (CC BY-NC)")
    weights_path: str | None = Field(None, description="explicit checkpoint folder (else the weights registry)")
    foreground_ratio: float | None = Field(None, gt=0.3, le=1.0,
                                           description="object size / image size after recentring (model default)")
    mesh_resolution: int | None = Field(None, ge=32, le=512,
                                        description="marching-cubes grid per side (model default: 384 / 256)")
    mesh_level: float | None = Field(None, gt=0, description="density iso level (model default: 3.0 / 25.0)")
    target_faces: int = Field(100_000, ge=0, le=2_000_000, description="decimate to this many faces (0 = keep)")
    smooth_iterations: int = Field(2, ge=0, le=50, description="Taubin smoothing iterations after meshing")
    texture_size: int = Field(1024, ge=64, le=4096, description="baked base-colour texture side in pixels")
    preview_views: int = Field(8, ge=1, le=120, description="turntable views rendered for preview.png")
    preview_size: int | None = Field(None, ge=16, le=1024, description="turntable view size (model default)")
    half_precision: bool = Field(True, description="fp16 (bf16 where supported) autocast on CUDA")

    main = ('model', 'mesh_resolution', 'texture_size', 'target_faces')
    presets = {
        "fast": {"mesh_resolution": 128, "texture_size": 512, "preview_views": 4, "preview_size": 128,
                 "target_faces": 30_000},
        "standard": {},
        "high": {"texture_size": 2048, "preview_views": 16, "target_faces": 300_000},
    }


@register
class LRMPipeline(Pipeline):
    name = "lrm"
    title = "LRM (single image to 3D in one pass)"
    description = ("A large reconstruction model predicts a triplane NeRF from one image in a single forward pass; "
                   "the mesh is extracted and its colour baked into a UV texture. TripoSR weights are MIT; "
                   "OpenLRM weights are CC BY-NC (non-commercial).")
    inputs = {"image": "one RGBA image of an object (alpha = its mask; opaque images need rembg installed locally)"}
    required_inputs = ("image",)
    needs_mask = True
    Options = LRMOptions
    #: from meta.json timings of a fast-preset run (CPU, tiny TripoSR: a real model's triplane pass weighs more)
    stage_shares = {"load": 0.01, "preprocess": 0.01, "triplane": 0.03, "triplane_preview": 0.28, "mesh": 0.27,
                    "uv_unwrap": 0.14, "bake": 0.05, "export": 0.21}
    #: the default model's; the API refuses a job when a listed entry is missing, and the other models are optional
    #: (a job asking for a missing one fails with MissingWeights naming its download command)
    weights = ("triposr",)

    def _model(self, opts: LRMOptions, ctx: RunContext):
        from ..models.lrm import load_lrm
        from ..weights import is_tiny, resolve

        path = resolve(opts.model, opts.weights_path)
        key = f"lrm:{path.resolve()}"
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = load_lrm(path).to(ctx.device)
        ctx.cache["_meta_extra"] = {"weights": {"name": opts.model, "path": str(path), "tiny": is_tiny(path),
                                                "license": ctx.cache[key].cfg.license}}
        return ctx.cache[key]

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.cameras import orbit_cameras
        from ..geometry.image_prep import read_image
        from ..geometry.placement import CanonicalView, fov_from_focal, record_placement
        from ..models.lrm.preprocess import preprocess_image
        from .stages.export import export_results, write_png

        opts = LRMOptions(**request.options)
        model = self._model(opts, ctx)
        cfg, dev = model.cfg, ctx.device
        gen = torch.Generator().manual_seed(request.seed)
        out: dict[str, Path] = {}

        with ctx.stage("preprocess"):
            image = preprocess_image(read_image(request.files["image"]), cfg, opts.foreground_ratio,
                                     what=Path(request.files["image"]).name)
            out["input.png"] = write_png(ctx.out_dir / "input.png", to_uint8(image[0].permute(1, 2, 0).numpy()))
        ctx.progress("triplane", 0, 1)
        with ctx.stage("triplane"), torch.no_grad(), autocast(dev, opts.half_precision):
            planes = model.forward_planes(image.to(dev)).float()
        ctx.progress("triplane", 1, 1)
        if not torch.isfinite(planes).all():
            raise NumericalError("the model produced NaN/inf triplane features", {"stage": "triplane"})
        field = model.field(planes[0])

        with ctx.stage("triplane_preview"), torch.no_grad(), autocast(dev, opts.half_precision):
            size = opts.preview_size or min(cfg.render_size, 256)
            n = opts.preview_views
            cams = orbit_cameras(15.0, torch.arange(n) * 360.0 / n, 2.4 * cfg.radius, 40.0, size, size)
            origins, dirs = cams.to(dev).pixel_rays()
            settings = model.render_settings(ray_chunk=32768 if dev.type == "cuda" else 4096)
            frames = []
            for i in range(n):
                ctx.check_cancelled()
                rgb = field.render_rays(origins[i].reshape(-1, 3), dirs[i].reshape(-1, 3),
                                        settings, background=1.0, generator=gen)["rgb"]
                frames.append(rgb.reshape(size, size, 3).cpu().numpy())
                ctx.progress("triplane_preview", i + 1, n, to_uint8(frames[-1]))
            out["triplane.png"] = write_png(ctx.out_dir / "triplane.png", to_uint8(image_grid(frames, min(n, 4))))

        mesh = textured_mesh_from_field(field, ctx, opts.mesh_resolution or cfg.mesh_resolution,
                                        opts.mesh_level or cfg.mesh_level, opts.smooth_iterations, opts.target_faces,
                                        opts.texture_size, opts.half_precision)
        ctx.progress("export", 0, 1)
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, preview_views=opts.preview_views,
                                      preview_size=opts.preview_size or 256))
            out.update(record_placement(request, ctx, mesh.vertices, CanonicalView(
                0.0, cfg.source_camera_distance, fov_from_focal(cfg.source_focal))))
        ctx.cache.setdefault("_metrics", {}).update({"faces": int(len(mesh.faces)),
                                                     "vertices": int(len(mesh.vertices)),
                                                     "triplane_shape": list(planes.shape)})
        return out
