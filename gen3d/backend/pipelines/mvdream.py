"""Methods ``mvdream`` (a prompt) and ``imagedream`` (an image, optionally a prompt): four consistent views, then a
3D asset by multi-view score distillation.

1. ``views``: the 4-view sampler (:func:`~gen3d.backend.guidance.multiview_sampling.sample_views`: the diffusers
   port's ``MVDreamPipeline``; 50 DDIM steps, CFG 7.5, prompt + ", 3d asset") draws ``candidates`` sets of views,
   shown at once as the job's preview and saved as ``views.png`` (a row per candidate, azimuth 0/90/180/270 left to
   right). ``--set stop_after=views`` ends the job there.
2. ``3d``: MVDream-threestudio's recipe (``configs/mvdream-sd21.yaml``, ``mvdream_guidance.py``) on the shared
   Gaussians (:func:`~.stages.distill_gaussians.distill_gaussians`): 4-view batches with a random azimuth offset,
   elevation 0–30°, fovy 15–60°, relative distance 0.8–1.0 (:class:`~.dreamgaussian_guidance.MultiViewSampler`);
   one t for the 4 views, annealed from 0.98 to U[0.02, 0.5] over the first 80 % of the steps; CFG 50 with the x0
   reconstruction loss std-rescaled 0.5 (SDS, CSD and DreamTime as options); renders at 64² (two groups of 4 views
   sharing the t) then 256² (one group). ImageDream:
   CFG 5, rescale 0.2, elevation 0–5°, fovy 45–50° (``imagedream-sd21-shading.yaml``) plus the input's colour and
   mask losses at the reference view. Then the shared mesh, UV, bake, UV refinement and export stages.

Steps: the paper's 10,000 NeRF steps (ImageDream 12,500) become DreamGaussian's 500 Gaussian steps for ``standard``
(DreamGaussian's own factor for SDS on Gaussians); every schedule is a fraction of the steps, so the anneal ends at
80 % as in the paper (8,000 of 10,000) and the resolution rises at 60 % (the shared stage's step; the paper's 50 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from . import register
from .base import JobRequest, Pipeline, RunContext
from .inputs import IMAGE_INPUT
from .dreamgaussian_guidance import Guide, MultiViewSampler, Term, load_prior
from .stages.distill_gaussians import GaussianDistillOptions, ReferenceView, distill_gaussians
from .stages.gaussians_to_asset import AssetOptions, gaussians_to_asset
from .stages.views import ReferenceInputOptions

#: MVDream-threestudio's negative prompt for the 3D stage (used when the request has none)
NEGATIVE_3D = ("ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
               "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
               "dehydrated, bad proportions")


class MVDreamOptions(AssetOptions, GaussianDistillOptions):
    main = ("stop_after", "candidates", "views_elevation", "iters", "texture_size")
    weights_path: str | None = Field(None, description="explicit folder of the multi-view model (else the registry)")
    stop_after: Literal["views"] | None = Field(None, description="'views' ends the job after the 4-view preview")
    # --- views
    views_elevation: float = Field(0.0, ge=-30, le=60, description=(
        "elevation of the sampled views in degrees (the port's default 0; MVDream's t2i script uses 15)"))
    views_steps: int = Field(50, ge=1, le=500, description="DDIM steps of the 4-view sampler")
    views_guidance_scale: float = Field(7.5, ge=1, le=50, description="CFG scale of the 4-view sampler")
    asset_suffix: bool = Field(True, description="append ', 3d asset' to the prompt of the 4-view sampler")
    candidates: int = Field(1, ge=1, le=8, description="sets of 4 views to sample (rows of views.png)")
    # --- 3D: multi-view score distillation
    distillation: Literal["x0", "sds", "csd"] = Field("x0", description=(
        "x0 reconstruction (MVDream), SDS with w = 1 - alpha_bar, or Classifier Score Distillation"))
    guidance_scale: float = Field(50.0, gt=0, description="CFG scale of the 3D stage")
    std_rescale: float = Field(0.5, ge=0, le=1, description="x0 std rescale toward the unguided x0 (paper 0.7)")
    timestep_schedule: Literal["anneal", "dreamtime"] = Field("anneal", description=(
        "t ~ U[min, max] with both bounds annealed from t_start (MVDream), or DreamTime's deterministic t"))
    t_start: float = Field(0.98, gt=0, le=1, description="both timestep bounds at the start, fraction of T")
    t_end: tuple[float, float] = Field((0.02, 0.5), description="timestep bounds after the anneal, fraction of T")
    anneal_end: float = Field(0.8, gt=0, le=1, description="share of the steps over which the bounds anneal")
    elevation_range: tuple[float, float] = Field((0.0, 30.0), description="elevation of the training views, degrees")
    fovy_range: tuple[float, float] = Field((15.0, 60.0), description="vertical field of view of the training views")
    relative_radius: tuple[float, float] = Field((0.8, 1.0), description=(
        "camera distance as the half-width seen at the object's centre (distance = r / tan(fovy / 2))"))
    radius: float = Field(2.5, gt=0.5, le=10, description="orbit radius of the bake and preview cameras")
    fovy: float = Field(49.1, gt=5, lt=120, description="field of view of the bake and preview cameras")
    # DreamGaussian's text-mode Gaussian schedule; MVDream renders at 64² then 256²
    render_sizes: tuple[int, int, int] = Field((64, 64, 256), description=(
        "render size for the first 30 %, up to 60 % and the rest of the 3D stage (MVDream: 64 then 256)"))
    position_lr_max_steps: int = Field(300, ge=1, description="steps over which the position lr decays")
    density_start_iter: int = Field(0, ge=0, description="first step of densification statistics")
    densification_interval: int = Field(50, ge=1, description="densify and prune every this many steps")

    @field_validator("elevation_range", "fovy_range", "relative_radius")
    @classmethod
    def _low_high(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low = 1e-3 if info.field_name == "relative_radius" else 0.0
        if not low <= v[0] <= v[1] < 180:
            raise ValueError(f"expected (low, high) with {low:g} <= low <= high < 180, got {tuple(v)}")
        return v

    @model_validator(mode="after")
    def _timesteps(self):
        if not 0 < self.t_end[0] <= self.t_end[1] <= self.t_start:
            raise ValueError(f"need 0 < t_end[0] <= t_end[1] <= t_start, got t_end={tuple(self.t_end)} and "
                             f"t_start={self.t_start}")
        return self

    presets = {
        "fast": {"iters": 50, "num_pts": 1000, "render_sizes": (64, 64, 96), "position_lr_max_steps": 30,
                 "densification_interval": 5, "views_steps": 20, "iters_refine": 8, "mesh_resolution": 64,
                 "target_faces": 20_000, "texture_size": 256, "bake_size": 96, "refine_size": 96,
                 "preview_views": 4, "preview_size": 128},
        "standard": {},
        "high": {"iters": 1000, "position_lr_max_steps": 600, "candidates": 2, "texture_size": 2048,
                 "bake_size": 1024, "mesh_resolution": 256, "target_faces": 200_000, "preview_views": 16,
                 "preview_size": 512},
    }


class ImageDreamOptions(MVDreamOptions, ReferenceInputOptions):
    ip_mode: Literal["pixel", "local"] = Field("pixel", description=(
        "pixel: the reference latent as a 5th frame plus image tokens (the published diffusers checkpoint); "
        "local: image tokens only (the -local checkpoint, registry entry imagedream-local)"))
    views_elevation: float = Field(5.0, ge=0, le=30, description=(
        "elevation of the input view, of the sampled views and of the reference view in the 3D stage (ImageDream: 5)"))
    ref_size: int = Field(256, ge=32, le=1024, description="reference image size (the model encodes it at 256)")
    lambda_rgb: float = Field(10_000.0, ge=0, description="reference-view colour loss weight")
    lambda_mask: float = Field(1_000.0, ge=0, description="reference-view mask loss weight")
    warmup_rgb_loss: bool = Field(True, description="ramp the reference losses up linearly over the 3D stage")
    asset_suffix: bool = Field(False, description="append ', 3d asset' to the prompt of the 4-view sampler")
    views_guidance_scale: float = Field(5.0, ge=1, le=50, description="CFG scale of the 4-view sampler")
    guidance_scale: float = Field(5.0, gt=0, description="CFG scale of the 3D stage")
    std_rescale: float = Field(0.2, ge=0, le=1, description="x0 std rescale toward the unguided x0")
    elevation_range: tuple[float, float] = Field((0.0, 5.0), description="elevation of the training views, degrees")
    fovy_range: tuple[float, float] = Field((45.0, 50.0), description="vertical field of view of the training views")

    presets = MVDreamOptions.presets


def build_guide(opts: MVDreamOptions, prior, prompt: str, negative: str, generator: torch.Generator) -> Guide:
    """One multi-view term with the chosen distillation and timestep schedule (module docstring)."""
    from ..guidance.distillation import CSD, SDS, X0Reconstruction
    from ..guidance.schedules import DreamTime, Uniform

    distillation = {"x0": lambda: X0Reconstruction(opts.guidance_scale, opts.std_rescale),
                    "sds": lambda: SDS(opts.guidance_scale),
                    "csd": lambda: CSD(guidance_scale=opts.guidance_scale)}[opts.distillation]()
    lo, hi = opts.t_end
    T = prior.num_train_timesteps
    schedule = (DreamTime(lo, opts.t_start, alphas_cumprod=prior.alphas_cumprod.cpu(), num_train_timesteps=T)
                if opts.timestep_schedule == "dreamtime" else
                Uniform(opts.t_start, opts.t_start, lo, hi, opts.anneal_end, num_train_timesteps=T))
    return Guide([Term("mvdream", prior, 1.0, distillation, prompt, negative)], schedule, generator)


class MVDream(Pipeline):
    name = "mvdream"
    title = "MVDream (text to 4 views to 3D)"
    description = ("Multi-view diffusion (ICLR 2024): four consistent views of the prompt to look at first, then a "
                   "3D asset by multi-view score distillation into Gaussians, meshed, textured and refined. Weights "
                   "OpenRAIL.")
    inputs = {"prompt": "what to generate"}
    required_inputs = ("prompt",)
    Options = MVDreamOptions
    weights = ("mvdream",)
    prior_kind = "mvdream"
    #: from the stage timings of a ``fast`` run on smoke-test weights (this CPU)
    stage_shares = {"preprocess": 0.01, "load": 0.1, "views": 0.02, "gaussians": 0.6, "mesh": 0.07,
                    "uv_unwrap": 0.03, "bake": 0.08, "refine": 0.07, "export": 0.02}

    def weights_entry(self, opts) -> str:
        """The registry entry of the multi-view model these options run."""
        return self.weights[0]

    def _reference(self, request: JobRequest, opts, ctx: RunContext, out: dict) -> torch.Tensor | None:
        """Image methods: the input as straight RGBA ``[1,4,S,S]``; None here."""
        return None

    def _condition_prior(self, prior, reference: torch.Tensor | None, opts, request: JobRequest) -> None:
        """Image methods: give the prior its image prompt."""

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import CanonicalView
        from ..guidance.multiview_sampling import sample_views, views_grid
        from .stages.export import write_png

        opts = self.Options(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        prompt, negative = request.prompt or "", request.negative_prompt or ""
        out: dict[str, Path] = {}
        with ctx.stage("preprocess"):
            reference = self._reference(request, opts, ctx, out)
        with ctx.stage("load"):
            prior, info = load_prior(ctx, self.prior_kind, self.weights_entry(opts), opts.weights_path,
                                     opts.guidance_scale)
            ctx.cache["_meta_extra"] = {"weights": [info]}
            self._condition_prior(prior, reference, opts, request)
        with ctx.stage("views"):
            ctx.progress("views", 0, opts.views_steps)

            def step(i: int, total: int) -> None:
                ctx.check_cancelled()
                if i < total:
                    ctx.progress("views", i, total)

            views = sample_views(prior, prompt + (", 3d asset" if opts.asset_suffix else ""), negative,
                                 opts.views_elevation, opts.views_steps,
                                 opts.views_guidance_scale, opts.candidates, gen, step)
            grid = (views_grid(views).clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
            ctx.progress("views", opts.views_steps, opts.views_steps, grid)
            out["views.png"] = write_png(ctx.out_dir / "views.png", grid)
        if opts.stop_after == "views":
            return out
        sampler = MultiViewSampler(opts.elevation_range, opts.fovy_range, opts.relative_radius, prior.num_frames,
                                   opts.views_elevation)
        guide = build_guide(opts, prior, prompt, negative or NEGATIVE_3D, gen)
        with ctx.stage("gaussians"):
            target = None if reference is None else ReferenceView(reference, opts.lambda_rgb, opts.lambda_mask,
                                                                  opts.warmup_rgb_loss)
            gaussians, metrics = distill_gaussians(opts, guide, sampler, gen, ctx, target)
        view = CanonicalView(0.0, opts.radius, opts.fovy)
        if reference is not None:  # the bake and the placement look from the reference camera
            distance = float(sampler.reference(opts.ref_size).c2w[0, :3, 3].norm())
            view = CanonicalView(sampler.elevation, distance, sum(opts.fovy_range) / 2)
        artifacts, asset_metrics = gaussians_to_asset(gaussians, opts, guide, sampler, gen, ctx, request, view,
                                                      reference)
        out.update(artifacts)
        ctx.cache.setdefault("_metrics", {}).update(metrics, **asset_metrics)
        return out


class ImageDream(MVDream):
    name = "imagedream"
    title = "ImageDream (image to 4 views to 3D)"
    description = ("Image-prompt multi-view diffusion: four views consistent with the input image, then a 3D asset "
                   "by multi-view score distillation with the input as the reference view. Code Apache-2.0; "
                   "weights OpenRAIL.")
    inputs = {"image": IMAGE_INPUT,
              "prompt": "optional: a short description of the object"}
    required_inputs = ("image",)
    Options = ImageDreamOptions
    weights = ("imagedream",)
    prior_kind = "imagedream"
    needs_mask = True

    def weights_entry(self, opts) -> str:
        return "imagedream-local" if opts.ip_mode == "local" else "imagedream"

    def validate(self, request: JobRequest):
        """As every method's, and the ``local`` checkpoint present (it is converted, never downloaded here)."""
        from .. import weights

        opts = super().validate(request)
        if opts.ip_mode == "local" and opts.weights_path is None:
            weights.resolve("imagedream-local")
        return opts

    def _reference(self, request, opts, ctx, out):
        from .stages.views import reference_input

        rgba, written = reference_input(request.files["image"], opts.ref_size, opts.border_ratio, opts.recenter,
                                        opts.rembg_model, ctx.out_dir)
        out.update(written)
        return rgba

    def _condition_prior(self, prior, reference, opts, request):
        prior.ip_mode = opts.ip_mode
        on_white = reference[:, :3] * reference[:, 3:] + 1 - reference[:, 3:]
        prior.set_reference(on_white, torch.Generator().manual_seed(request.seed))


register(MVDream)
register(ImageDream)
