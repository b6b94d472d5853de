"""Method ``syncdreamer``: one image -> 16 synchronised views (SyncDreamer) -> a UV-textured mesh.

Stages: preprocess (as the official ``generate.py``: RGBA, crop to ``crop_size``, white, 256^2) -> sample the 16
views with the published sampler (DDIM, eta 1, 50 steps, CFG 2) -> ``views.png`` (4x4 grid, view 0 top left) and
``views/transforms.json`` (the 16 known cameras, so ``reconstruct`` can be re-run on them) -> masks of the generated
views -> the shared reconstruction stages (:func:`~.reconstruct.reconstruct_views`) -> GLB, OBJ, preview and
``placement.json``.

The input view is the canonical view: azimuth 0, the input elevation, distance 1.5, 49.1 deg field of view; the
16 views orbit it at elevation 30 deg from azimuth 0 in steps of 22.5 deg. The input elevation is the
``elevation`` option, else the reference camera's viewing elevation (the Blender camera the image was taken from,
when the request has one), else 30 deg (33 of the 47 official examples); outside [-10, 40] deg (the range the
released model was trained for) it is a warning. ``samples=N`` draws N candidates with seeds ``seed, seed+1, ...``;
all their views are kept (``views_k.png``, ``views_k/``) and the first is reconstructed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from . import register
from .base import JobRequest, Pipeline, RunContext
from .inputs import IMAGE_INPUT
from .reconstruct import ReconstructOptions, reconstruct_views

log = logging.getLogger(__name__)

DEFAULT_ELEVATION = 30.0
#: a generated-view pixel this far below white (any channel) is foreground when rembg is not available
WHITE_TOLERANCE = 10.0 / 255.0


class SyncDreamerOptions(ReconstructOptions):
    weights_path: str | None = Field(None, description="explicit syncdreamer-pretrain.ckpt (else the registry)")
    elevation: float | None = Field(None, ge=-90.0, le=90.0, description=(
        "the input view's elevation in degrees (positive = looking down); default: the reference camera's, else 30; "
        "the model was trained for -10..40"))
    crop_size: int = Field(200, ge=-1, le=256, description="object size in the 256 px input (-1: keep the "
                           "image's framing); the authors recommend 200, also 180 or 150")
    sample_steps: int = Field(50, ge=1, le=1000, description="DDIM steps (published: 50)")
    cfg_scale: float = Field(2.0, ge=0.0, le=20.0, description="classifier-free guidance (published: 2.0)")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta (published: 1.0)")
    batch_view_num: int = Field(8, ge=1, le=16, description="views per UNet batch: lower saves memory, costs time")
    samples: int = Field(1, ge=1, le=16, description="candidates to generate (seeds seed, seed+1, ...); all are "
                         "kept, the first is reconstructed")
    half_precision: bool = Field(True, description="fp16 autocast for the denoiser on CUDA")

    @field_validator("crop_size")
    @classmethod
    def _crop(cls, v: int) -> int:
        if v != -1 and v < 16:
            raise ValueError("crop_size is -1 or at least 16")
        return v

    main = ("elevation", "crop_size", "samples", "sample_steps")
    presets = {
        "fast": {**ReconstructOptions.presets["fast"], "sample_steps": 20},
        "standard": {},
        "high": {**ReconstructOptions.presets["high"]},
    }


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16)


def view_masks(views: np.ndarray) -> np.ndarray:
    """Object masks ``[N, H, W]`` float in [0, 1] of generated views ``[N, H, W, 3]`` (float, on white): rembg when
    it and its model are installed, else pixels visibly darker than white with their holes filled."""
    from scipy import ndimage

    from ..geometry.image_prep import rembg_available, rembg_mask

    if rembg_available():
        return np.stack([rembg_mask(v) for v in views])
    fg = (1.0 - views).max(-1) > WHITE_TOLERANCE
    return np.stack([ndimage.binary_fill_holes(ndimage.binary_opening(m, iterations=1)) for m in fg]).astype(
        np.float32)


def views_grid(views: np.ndarray, columns: int = 4) -> np.ndarray:
    """``[N, S, S, 3]`` -> ``[rows*S, columns*S, 3]`` uint8, row-major in view order."""
    n, s = views.shape[:2]
    rows = -(-n // columns)
    grid = np.ones((rows * s, columns * s, 3), np.float32)
    for i, v in enumerate(views):
        grid[(i // columns) * s:(i // columns + 1) * s, (i % columns) * s:(i % columns + 1) * s] = v
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def elevation_warning(elevation: float, source: str) -> str | None:
    """The warning for an input elevation outside the range the released model was trained for, or None."""
    from ..models.syncdreamer import ELEVATION_RANGE

    lo, hi = ELEVATION_RANGE
    if lo <= elevation <= hi:
        return None
    return (f"input elevation {elevation:.1f} deg ({source}) is outside [{lo:g}, {hi:g}] deg, the range SyncDreamer "
            f"was trained for; the views may be distorted")


@torch.no_grad()
def generate_views(model, image: torch.Tensor, elevation: float, opts: SyncDreamerOptions, seed: int,
                   ctx: RunContext, stage: str) -> np.ndarray:
    """One candidate: ``image [3, S, S]`` in [-1, 1] -> the 16 views ``[16, S, S, 3]`` float in [0, 1]."""
    from ..models.syncdreamer.sampler import denoise

    def progress(step: int, total: int) -> None:
        ctx.check_cancelled()
        ctx.progress(stage, step, total)

    gen = torch.Generator().manual_seed(seed)
    inputs = model.encode_input(image[None].to(ctx.device), gen)
    with _autocast(ctx.device, opts.half_precision):
        latents = denoise(model, inputs, torch.tensor([math.radians(elevation)]), opts.sample_steps, opts.cfg_scale,
                          opts.eta, opts.batch_view_num, gen, progress)
    views = torch.stack([model.decode(latents[0, [n]].float())[0] for n in range(latents.shape[1])])
    return ((views.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()


def input_elevation(request: JobRequest, opts: SyncDreamerOptions, alpha: np.ndarray) -> tuple[float, str]:
    """(degrees, where it came from): the option, else the reference camera's, else the default."""
    from ..geometry.cameras import Cameras
    from ..geometry.placement import alpha_bbox, reference_camera, viewing_elevation

    if opts.elevation is not None:
        return opts.elevation, "option"
    camera = reference_camera(request.cameras)
    if camera is not None:
        cam = Cameras.from_wire([camera])
        x0, y0, x1, y1 = alpha_bbox(alpha)
        return viewing_elevation(cam, ((x0 + x1) / 2 * cam.width, (y0 + y1) / 2 * cam.height)), "reference camera"
    return DEFAULT_ELEVATION, "default"


@register
class SyncDreamerPipeline(Pipeline):
    name = "syncdreamer"
    title = "SyncDreamer (image to 16 views to 3D)"
    description = ("SyncDreamer (ICLR 2024) denoises 16 views of the object jointly through a 3D feature volume; "
                   "the views are reconstructed into a UV-textured mesh. Code MIT; the checkpoint states no "
                   "licence and derives from Zero123-XL.")
    inputs = {"image": IMAGE_INPUT}
    required_inputs = ("image",)
    needs_mask = True
    Options = SyncDreamerOptions
    weights = ("syncdreamer",)
    #: estimated for a CUDA run of the standard preset (not measured: no GPU was available)
    stage_shares = {"load": 0.03, "preprocess": 0.001, "sample": 0.3, "masks": 0.001, "fit": 0.3, "mesh": 0.1,
                    "uv": 0.05, "bake": 0.03, "refine": 0.15, "export": 0.04}

    def _model(self, opts: SyncDreamerOptions, ctx: RunContext):
        from ..models.syncdreamer import load_syncdreamer
        from ..weights import get_entry, is_tiny, resolve

        path = resolve("syncdreamer", opts.weights_path)
        key = f"syncdreamer:{path.resolve()}"
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = load_syncdreamer(path, ctx.device)
        ctx.cache.setdefault("_meta_extra", {})["weights"] = {
            "name": "syncdreamer", "path": str(path), "tiny": is_tiny(path), "license": get_entry("syncdreamer").license}
        return ctx.cache[key]

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.image_prep import ensure_mask, read_image
        from ..geometry.placement import CanonicalView, record_placement
        from ..geometry.transforms import save_transforms
        from ..models.syncdreamer import target_cameras
        from ..models.syncdreamer.cameras import DISTANCE, fov_deg
        from ..models.syncdreamer.preprocess import prepare_input
        from .stages.export import export_results, write_png

        opts = SyncDreamerOptions(**request.options)
        extra = ctx.cache.setdefault("_meta_extra", {})
        out: dict[str, Path] = {}
        with ctx.stage("preprocess"):
            name = Path(request.files["image"]).name
            rgba = ensure_mask(read_image(request.files["image"]), name)
            rgba8 = (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)
            image = prepare_input(rgba8, opts.crop_size, what=name)
            out["input.png"] = write_png(ctx.out_dir / "input.png", views_grid(
                (image.permute(1, 2, 0).numpy()[None] + 1) / 2, 1))
            elevation, source = input_elevation(request, opts, rgba[..., 3])
            extra["elevation"] = {"degrees": round(elevation, 3), "source": source}
            warning = elevation_warning(elevation, source)
            if warning:
                log.warning(warning)
                extra.setdefault("warnings", []).append(warning)
        model = self._model(opts, ctx)
        size = model.cfg.image_size
        if size != image.shape[-1]:  # tiny smoke-test models work at a smaller size
            image = prepare_input(rgba8, opts.crop_size * size // 256 if opts.crop_size > 0 else -1, size, name)
        cameras = target_cameras(size)
        seeds = [request.seed + k for k in range(opts.samples)]
        extra["seeds"] = seeds
        first = None
        for k, seed in enumerate(seeds):
            stage = "sample" if opts.samples == 1 else f"sample_{k}"
            with ctx.stage("sample"):  # one timed stage (its share) for every candidate; steps say which one
                views = generate_views(model, image, elevation, opts, seed, ctx, stage)
            with ctx.stage("masks"):
                masks = view_masks(views)
                empty = [i for i, m in enumerate(masks) if m.mean() < 1e-3]
                if empty:
                    extra.setdefault("warnings", []).append(f"sample {k}: no object found in views {empty}")
            suffix = "" if k == 0 else f"_{k}"
            out[f"views{suffix}.png"] = write_png(ctx.out_dir / f"views{suffix}.png", views_grid(views))
            rgba_views = torch.from_numpy(np.concatenate([views, masks[..., None]], -1))
            out[f"views{suffix}/transforms.json"] = save_transforms(ctx.out_dir / f"views{suffix}", cameras,
                                                                    rgba_views)
            ctx.progress(stage, opts.sample_steps, opts.sample_steps, views_grid(views))
            if first is None:
                first = rgba_views
        mesh, gaussians = reconstruct_views(cameras, first, opts, ctx, torch.Generator().manual_seed(request.seed))
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, gaussians, preview_size=opts.preview_size))
            out.update(record_placement(request, ctx, mesh.vertices, CanonicalView(elevation, DISTANCE, fov_deg())))
        return out
