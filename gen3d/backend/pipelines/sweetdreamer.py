"""Method ``sweetdreamer`` (a prompt): text-to-3D with SweetDreamer's aligned geometric prior against Janus faces.

SweetDreamer (ICLR 2024; ``wyysf-98/SweetDreamer``, ``configs/sweetdreamer-stage{1,2}.yaml``) adds to an appearance
SDS a CCM-SDS from the AGP, a diffusion model of canonical coordinate maps (registry ``agp``, trained with
``python -m gen3d train agp``; the official checkpoint is unreleased). Here it runs on the shared Gaussian stage-1
(:mod:`.stages.distill_gaussians`, DreamGaussian's representation, not the official NeRF) and DreamGaussian's
mesh/UV/bake/refine/export stages, with the official schedule:

- stage 1: CCM-SDS alone at weight 20 for the first quarter of the steps (official 1500 of 6000), then appearance
  SDS (SD 2.1-base; the official uses DeepFloyd IF at CFG 20, not available here) plus CCM-SDS at weight 1; the
  maximum timestep of both falls linearly 0.98 -> 0.5 by 5001/6000 of the steps; the CCM box follows the shape
  (:mod:`.stages.ccm_guidance`);
- stage 2 (``sweetdreamer-stage2.yaml``: the same volume, geometry still free, SD 2.1-base SDS at CFG 100 plus
  CCM-SDS at weight 0.5, maximum timestep 0.98 -> 0.5 by 4001 of 10000 steps): the stage-1 Gaussians continue
  for ``iters_stage2`` steps at the largest render size with exactly those terms (0 skips it);
- then DreamGaussian's mesh, UV bake and UV texture refinement (SD 2.1-base SDEdit; geometry fixed) and export.

Cameras: elevations -10..45° as the official random cameras, at the radius and field of view of the AGP's
training renders (``dataset multiview`` default: distance 1.5–2.2, 49.1°), so the camera condition stays in the
distribution it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field

from . import register
from .dreamgaussian import DreamGaussianText, DreamGaussianTextOptions
from .dreamgaussian_guidance import Guide


class SweetDreamerOptions(DreamGaussianTextOptions):
    main = ("iters", "guidance_scale", "agp_weight_early", "texture_size")
    prior: Literal["sd21-base"] = Field("sd21-base", description="appearance prior: Stable Diffusion 2.1-base")
    radius: float = Field(2.0, gt=0.5, le=10, description="orbit radius (inside the AGP's training distances)")
    min_ver: int = Field(-45, ge=-90, le=0, description="lowest elevation offset (DreamGaussian's sign: -45 = 45° up)")
    max_ver: int = Field(10, ge=0, le=90, description="highest elevation offset (10 = 10° below)")
    view_dependent_prompt: bool = Field(True, description=(
        "append ', front/side/back view' to the appearance prompt (the official prompt processor does)"))
    timestep_schedule: Literal["uniform"] = Field("uniform", description="t ~ U[t_min, t_max(progress)]")
    t_max_end: float = Field(0.5, gt=0, le=1, description="maximum timestep fraction at the end of its anneal")
    t_anneal_end: float = Field(5001 / 6000, gt=0, le=1, description="share of the steps over which t_max falls")
    appearance_start: float = Field(0.25, ge=0, lt=1, description="share of the steps with CCM-SDS alone")
    agp_weight_early: float = Field(20.0, ge=0, description="CCM-SDS weight while it acts alone")
    agp_weight: float = Field(1.0, ge=0, description="CCM-SDS weight once the appearance SDS has started")
    box_every: int = Field(20, ge=1, description="re-estimate the CCM box every this many steps")
    iters_stage2: int = Field(300, ge=0, le=20000, description=(
        "stage-2 steps on the Gaussians (geometry and colour; the official runs 10000 after 6000; 0 = none)"))
    guidance_scale_stage2: float = Field(100.0, gt=0, description="appearance CFG in stage 2 (official 100)")
    agp_weight_stage2: float = Field(0.5, ge=0, description="CCM-SDS weight in stage 2 (official 0.5)")
    t_anneal_end_stage2: float = Field(4001 / 10000, gt=0, le=1, description=(
        "share of the stage-2 steps over which t_max falls to t_max_end"))

    presets = {name: dict(values) for name, values in DreamGaussianTextOptions.presets.items()}
    presets["fast"]["iters_stage2"] = 30


@dataclass
class RampedGuide(Guide):
    """A :class:`Guide` whose losses start at ``progress >= start`` (its SDEdit targets are unchanged)."""

    start: float = 0.0

    def losses(self, images, cams, el, az, progress):
        if progress < self.start:
            return images.new_zeros(()), {}
        return super().losses(images, cams, el, az, progress)


@register
class SweetDreamer(DreamGaussianText):
    name = "sweetdreamer"
    title = "SweetDreamer (text to 3D)"
    description = ("Text-to-3D with aligned geometric priors (ICLR 2024): SD 2.1 score distillation plus CCM-SDS "
                   "from a camera-conditioned diffusion model of canonical coordinate maps (train it with "
                   "python -m gen3d train agp), on Gaussians, then mesh, UV texture and refinement.")
    Options = SweetDreamerOptions
    weights = ("sd21-base", "agp")
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28);
    #: ``gaussians_stage2`` estimated from its steps (30 against stage 1's 50 in ``fast``), the rest rescaled
    stage_shares = {"preprocess": 0.001, "load": 0.032, "gaussians": 0.453, "gaussians_stage2": 0.272,
                    "mesh": 0.089, "uv_unwrap": 0.042, "bake": 0.083, "refine": 0.022, "export": 0.007}

    def _guide(self, opts, request, ctx, gen, reference) -> Guide:
        from ..guidance.schedules import Uniform

        guide = super()._guide(opts, request, ctx, gen, reference)
        schedule = Uniform(opts.t_range[0], opts.t_range[1], t_max_end=opts.t_max_end, anneal_end=opts.t_anneal_end,
                           num_train_timesteps=guide.terms[0].prior.num_train_timesteps)
        return RampedGuide(guide.terms, schedule, gen, start=opts.appearance_start)

    def _refine_gaussians(self, gaussians, opts, ctx, gen, guide, sampler, extra_loss):
        """The official stage 2 on our Gaussians (module docstring)."""
        from ..guidance.schedules import Uniform
        from .stages.distill_gaussians import distill_gaussians

        if opts.iters_stage2 == 0:
            return gaussians, {}
        n, size = opts.iters_stage2, opts.render_sizes[-1]
        stage2 = opts.model_copy(update={"iters": n, "render_sizes": (size,) * 3, "position_lr_max_steps": n,
                                         "position_lr": (opts.position_lr[1],) * 2})
        schedule = Uniform(opts.t_range[0], opts.t_range[1], t_max_end=opts.t_max_end,
                           anneal_end=opts.t_anneal_end_stage2, num_train_timesteps=guide.schedule.T)
        terms = [replace(term, distillation=replace(term.distillation, guidance_scale=opts.guidance_scale_stage2))
                 for term in guide.terms]
        weight = opts.agp_weight_stage2
        ccm = replace(extra_loss, schedule=schedule, weight=lambda progress: weight)
        with ctx.stage("gaussians_stage2"):
            gaussians, metrics = distill_gaussians(stage2, Guide(terms, schedule, gen), sampler, gen, ctx,
                                                   extra_loss=ccm, init=gaussians, stage="gaussians_stage2")
        return gaussians, {f"stage2_{k}": v for k, v in metrics.items()}

    def _extra_loss(self, opts, request, ctx, gen, guide, sampler):
        from .stages.ccm_guidance import CCMGuidance, load_agp

        agp, info = load_agp(ctx, opts.agp_weights_path, opts.agp_guidance_scale)
        ctx.cache["_meta_extra"]["weights"].append(info)
        start, early, late = opts.appearance_start, opts.agp_weight_early, opts.agp_weight
        return CCMGuidance(agp, request.prompt or "", request.negative_prompt or "", sampler, guide.schedule, gen,
                           weight=lambda progress: early if progress < start else late,
                           init_radius=opts.init_radius, box_every=opts.box_every)
