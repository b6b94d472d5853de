"""Methods ``dreamgaussian`` (one image) and ``dreamgaussian-text`` (a prompt): generative Gaussian splatting.

Stage 1 optimises 3D Gaussians, initialised in a ball, by score distillation from a diffusion prior (Zero123-XL or
Stable Zero123 for an image, optionally mixed with SD 2.1; SD 2.1 or MVDream for a prompt) plus, for an image, the
reference view's colour and mask with a linear warm-up. The shared stages then mesh the Gaussians, unwrap UVs and
bake a texture from renders of the Gaussians around the object; stage 2 refines that texture in UV space against
the prior's SDEdit refinement of renders of the textured mesh. Every default number is DreamGaussian's
(``configs/image.yaml``, ``configs/text.yaml``, ``main.py``, ``main2.py`` at 69a3c70; see
``reference/dreamgaussian.md``) unless an option says otherwise.

Frames: the object sits at the origin of Blender's world (Z up); the input image is the view from azimuth 0
(camera on -Y, the object's front faces -Y) at ``elevation`` (ours: positive = camera above; DreamGaussian's
``elevation`` is the negative).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from ..errors import BadInput
from . import register
from .base import JobRequest, Pipeline, RunContext
from .inputs import IMAGE_INPUT
from .dreamgaussian_guidance import Guide, OrbitSampler, Term, load_prior
from .stages.distill_gaussians import GaussianDistillOptions, ReferenceView, distill_gaussians
from .stages.gaussians_to_asset import AssetOptions, gaussians_to_asset
from .stages.views import ReferenceInputOptions

log = logging.getLogger(__name__)


class _DreamGaussianOptions(AssetOptions, GaussianDistillOptions):
    """Options shared by both modes; the defaults are DreamGaussian's image config unless a subclass overrides."""

    radius: float = Field(2.0, gt=0.5, le=10, description="orbit radius of every camera")
    fovy: float = Field(49.1, gt=5, lt=120, description="vertical field of view in degrees (Zero123's renders)")
    min_ver: int = Field(-30, ge=-90, le=0, description="lowest elevation offset of random views, degrees")
    max_ver: int = Field(30, ge=0, le=90, description="highest elevation offset of random views, degrees")
    # --- guidance
    timestep_schedule: Literal["linear", "dreamtime", "uniform"] = Field(
        "linear", description="diffusion timestep per step: linear anneal 980->20 (DreamGaussian), DreamTime, uniform")
    t_range: tuple[float, float] = Field((0.02, 0.98), description="timestep bounds as fractions of T")
    distillation: Literal["sds", "csd"] = Field("sds", description="score distillation: SDS or Classifier Score")
    guidance_scale: float | None = Field(None, gt=0, description="CFG scale (default: the prior's, 5 / 100)")


class DreamGaussianImageOptions(_DreamGaussianOptions, ReferenceInputOptions):
    prior: Literal["zero123-xl", "stable-zero123"] = Field(
        "zero123-xl", description="image prior: Zero123-XL (MIT) or Stable Zero123 (non-commercial licence)")
    weights_path: str | None = Field(None, description="explicit folder of the image prior (else the registry)")
    sd_weights_path: str | None = Field(None, description="explicit SD 2.1-base folder for the optional text prior")
    elevation: float = Field(0.0, ge=-80, le=80, description=(
        "elevation of the input photo in degrees, positive = taken from above (DreamGaussian's -30 is our 30)"))
    ref_size: int = Field(256, ge=32, le=1024, description="reference-view render size (512 for a sharper front)")
    lambda_rgb: float = Field(10_000.0, ge=0, description="reference-view colour loss weight")
    lambda_mask: float = Field(1_000.0, ge=0, description="reference-view mask loss weight")
    warmup_rgb_loss: bool = Field(True, description="ramp the reference losses up linearly over stage 1")
    lambda_zero123: float = Field(1.0, ge=0, description="weight of the Zero123 score distillation")
    reference_latent: Literal["mode", "sample"] = Field("mode", description=(
        "Zero123's reference latent: the VAE posterior's mode (diffusers, zero123) or one sample seeded by the "
        "job's seed (DreamGaussian)"))
    lambda_sd: float = Field(0.0, ge=0, description="weight of the SD 2.1 text prior (needs a prompt)")

    main = ('prior', 'elevation', 'iters', 'texture_size')
    presets = {
        # a quick draft: a tenth of the steps at a fifth of the resolution, the schedules scaled alike
        "fast": {"iters": 50, "num_pts": 1000, "render_sizes": (64, 64, 96), "ref_size": 96,
                 "position_lr_max_steps": 50, "density_start_iter": 10, "densification_interval": 10,
                 "iters_refine": 8, "mesh_resolution": 64, "target_faces": 20_000, "texture_size": 256,
                 "bake_size": 96, "refine_size": 96, "preview_views": 4, "preview_size": 128},
        "standard": {},
        "high": {"ref_size": 512, "texture_size": 2048, "bake_size": 1024, "mesh_resolution": 256,
                 "target_faces": 200_000, "preview_views": 16, "preview_size": 512},
    }


class DreamGaussianTextOptions(_DreamGaussianOptions):
    prior: Literal["sd21-base", "mvdream"] = Field(
        "sd21-base", description="text prior: Stable Diffusion 2.1-base, or MVDream (4 views at once)")
    weights_path: str | None = Field(None, description="explicit folder of the text prior (else the registry)")
    radius: float = Field(2.5, gt=0.5, le=10, description="orbit radius of every camera")
    position_lr_max_steps: int = Field(300, ge=1, description="steps over which the position lr decays")
    density_start_iter: int = Field(0, ge=0, description="first step of densification statistics")
    densification_interval: int = Field(50, ge=1, description="densify and prune every this many steps")
    view_dependent_prompt: bool = Field(False, description=(
        "append ', front/side/back view' to the prompt (DreamGaussian computes but never uses it)"))
    agp_weight: float = Field(0.0, ge=0, description=(
        "weight of SweetDreamer's CCM-SDS from the aligned geometric prior (registry agp; 0 = off)"))
    agp_weights_path: str | None = Field(None, description="explicit folder of the AGP (else the registry)")
    agp_guidance_scale: float | None = Field(None, gt=0, description="AGP CFG (default 21: the official 20)")

    main = ('prior', 'iters', 'guidance_scale', 'texture_size')
    presets = {name: {k: v for k, v in values.items() if k != "ref_size"}
               for name, values in DreamGaussianImageOptions.presets.items()}
    presets["fast"].update(position_lr_max_steps=30, density_start_iter=0, densification_interval=5)


def build_guide(opts: _DreamGaussianOptions, request: JobRequest, ctx: RunContext, generator: torch.Generator,
                reference: torch.Tensor | None) -> Guide:
    """The priors of this run (module docstring) with the chosen schedule and distillation."""
    from ..guidance.distillation import CSD, SDS
    from ..guidance.schedules import make_schedule

    def distillation(prior, kind: str):
        if opts.distillation == "csd":  # the classifier score at the prior's guidance scale
            return CSD(guidance_scale=prior.guidance_scale)
        return SDS(weighting="uniform") if kind == "mvdream" else SDS()  # DreamGaussian's MVDream SDS has no w(t)

    terms, info = [], []
    prompt, negative = request.prompt or "", request.negative_prompt or ""
    if isinstance(opts, DreamGaussianImageOptions):
        prior, w = load_prior(ctx, "zero123", opts.prior, opts.weights_path, opts.guidance_scale)
        ref_rgb = reference[:, :3] * reference[:, 3:] + (1 - reference[:, 3:])   # Zero123 expects white
        prior.set_reference(ref_rgb, elevation=opts.elevation, azimuth=0.0, radius=opts.radius,
                            latent=opts.reference_latent, generator=torch.Generator().manual_seed(request.seed))
        terms.append(Term("zero123", prior, opts.lambda_zero123, distillation(prior, "zero123"), radius=opts.radius))
        info.append(w)
        if opts.lambda_sd > 0:
            if not prompt:
                raise BadInput("lambda_sd > 0 mixes in the SD text prior, which needs a prompt", {"field": "prompt"})
            sd, w = load_prior(ctx, "sd", "sd21-base", opts.sd_weights_path, opts.guidance_scale)
            terms.append(Term("sd", sd, opts.lambda_sd, distillation(sd, "sd"), prompt, negative))
            info.append(w)
    else:
        kind = "mvdream" if opts.prior == "mvdream" else "sd"
        prior, w = load_prior(ctx, kind, opts.prior, opts.weights_path, opts.guidance_scale)
        terms.append(Term(kind, prior, 1.0, distillation(prior, kind), prompt, negative,
                          view_dependent=opts.view_dependent_prompt))
        info.append(w)
    main = terms[0].prior
    kw = {"t_min": opts.t_range[0], "t_max": opts.t_range[1], "num_train_timesteps": main.num_train_timesteps}
    if opts.timestep_schedule == "dreamtime":
        kw["alphas_cumprod"] = main.alphas_cumprod.cpu()
    ctx.cache["_meta_extra"] = {"weights": info}
    return Guide(terms, make_schedule(opts.timestep_schedule, **kw), generator)


class _DreamGaussian(Pipeline):
    """The two methods share everything but the inputs, the options' defaults and the priors."""

    def _reference(self, request: JobRequest, opts, ctx: RunContext, out: dict) -> torch.Tensor | None:
        return None

    def _guide(self, opts, request: JobRequest, ctx: RunContext, gen: torch.Generator, reference) -> Guide:
        return build_guide(opts, request, ctx, gen, reference)

    def _extra_loss(self, opts, request: JobRequest, ctx: RunContext, gen: torch.Generator, guide: Guide,
                    sampler: OrbitSampler):
        """Stage 1's extra term: SweetDreamer's CCM-SDS at ``agp_weight`` when set (text mode), else None."""
        weight = getattr(opts, "agp_weight", 0.0)
        if not weight:
            return None
        from .stages.ccm_guidance import CCMGuidance, load_agp

        agp, info = load_agp(ctx, opts.agp_weights_path, opts.agp_guidance_scale)
        ctx.cache["_meta_extra"]["weights"].append(info)
        return CCMGuidance(agp, request.prompt or "", request.negative_prompt or "", sampler, guide.schedule, gen,
                           weight=lambda progress: weight, init_radius=opts.init_radius)

    def _refine_gaussians(self, gaussians, opts, ctx: RunContext, gen: torch.Generator, guide: Guide,
                          sampler: OrbitSampler, extra_loss) -> tuple[object, dict]:
        """A further stage on the Gaussians before they are meshed (SweetDreamer's stage 2); none here."""
        return gaussians, {}

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import CanonicalView

        opts = self.Options(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        out: dict[str, Path] = {}
        with ctx.stage("preprocess"):
            reference = self._reference(request, opts, ctx, out)
        with ctx.stage("load"):
            guide = self._guide(opts, request, ctx, gen, reference)
            sampler = OrbitSampler(getattr(opts, "elevation", 0.0), opts.radius, opts.fovy, opts.min_ver,
                                   opts.max_ver, views=guide.terms[0].prior.num_frames)
            extra_loss = self._extra_loss(opts, request, ctx, gen, guide, sampler)
        with ctx.stage("gaussians"):
            target = None if reference is None else ReferenceView(reference, opts.lambda_rgb, opts.lambda_mask,
                                                                  opts.warmup_rgb_loss)
            gaussians, metrics = distill_gaussians(opts, guide, sampler, gen, ctx, target, extra_loss)
        gaussians, refine_metrics = self._refine_gaussians(gaussians, opts, ctx, gen, guide, sampler, extra_loss)
        metrics.update(refine_metrics)
        artifacts, asset_metrics = gaussians_to_asset(
            gaussians, opts, guide, sampler, gen, ctx, request,
            CanonicalView(getattr(opts, "elevation", 0.0), opts.radius, opts.fovy),
            reference)
        out.update(artifacts)
        ctx.cache.setdefault("_metrics", {}).update(metrics, **asset_metrics)
        return out


@register
class DreamGaussianImage(_DreamGaussian):
    name = "dreamgaussian"
    title = "DreamGaussian (image to 3D)"
    description = ("Generative Gaussian splatting from one image (ICLR 2024): Gaussians optimised by Zero123 score "
                   "distillation and the reference view, meshed, textured and refined in UV space. Zero123-XL is "
                   "MIT; Stable Zero123 is non-commercial.")
    inputs = {"image": IMAGE_INPUT,
              "prompt": "optional: mixes in the SD 2.1 text prior when lambda_sd > 0"}
    required_inputs = ("image",)
    needs_mask = True
    Options = DreamGaussianImageOptions
    #: the default prior; Stable Zero123 and SD 2.1 (``prior``, ``lambda_sd``) are resolved when chosen
    weights = ("zero123-xl",)
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28)
    stage_shares = {"preprocess": 0.01, "load": 0.11, "gaussians": 0.45, "mesh": 0.06, "uv_unwrap": 0.10,
                    "bake": 0.13, "refine": 0.11, "export": 0.03}

    def _reference(self, request, opts, ctx, out):
        from .stages.views import reference_input

        rgba, written = reference_input(request.files["image"], opts.ref_size, opts.border_ratio, opts.recenter,
                                        opts.rembg_model, ctx.out_dir)
        out.update(written)
        return rgba


@register
class DreamGaussianText(_DreamGaussian):
    name = "dreamgaussian-text"
    title = "DreamGaussian (text to 3D)"
    description = ("Generative Gaussian splatting from a prompt (ICLR 2024): Gaussians optimised by SD 2.1 or "
                   "MVDream score distillation, meshed, textured and refined in UV space.")
    inputs = {"prompt": "what to generate"}
    required_inputs = ("prompt",)
    Options = DreamGaussianTextOptions
    #: the default prior; MVDream (``prior``) is resolved when chosen
    weights = ("sd21-base",)
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28)
    stage_shares = {"preprocess": 0.001, "load": 0.07, "gaussians": 0.61, "mesh": 0.10, "uv_unwrap": 0.025,
                    "bake": 0.095, "refine": 0.074, "export": 0.025}
