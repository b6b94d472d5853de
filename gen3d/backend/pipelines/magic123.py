"""Method ``magic123``: one image to a high-resolution textured mesh with joint 2D and 3D priors (ICLR 2024).

A composition of shared stages; the defaults are the official code's (``guochengqian/Magic123``,
``scripts/magic123/run_both_priors.sh``; see ``reference/threestudio_and_sds.md`` section 2.3) unless noted:

1. *Preprocess*: the reference RGBA (recentred) and its monocular inverse depth (:mod:`backend.guidance.depth`).
2. *Textual inversion* (optional): a token for the object (:mod:`stages.textual_inversion`); the 2D prior's prompt is
   then "A high-resolution DSLR image of <token>" unless a prompt is given. Without either, the 2D prior is off.
3. *Coarse*: Gaussians (the shared :func:`distill_gaussians`) instead of the paper's Instant-NGP NeRF: the same
   priors, weights and schedules apply to any differentiable renderer, the Gaussians stage is shared with the other
   generative methods and is several times faster per step. SD 1.5 SDS (CFG 100, view-dependent prompt) and
   Zero-1-to-3 SDS (CFG 5) at ``lambda_2d : lambda_3d = 1 : 40``, t in [0.2, 0.6], the Zero123 loss scaled by the
   view's angle from the input view over 180° (the official ``zero123_grad_scale: angle``); reference RGB/mask/depth
   losses (5 / 0.5 / 0.01, the depth one Pearson-correlated) on the official schedule, mapped onto the shared loop as a
   :class:`ReferenceView` schedule: reference-only steps for the first ``known_iters`` (100), then every
   ``known_view_interval``-th (4th) step, guidance-only steps otherwise. Magic123's entropy regulariser (1e-3,
   ramped in over the first half) on the Gaussians' opacities (:func:`opacity_entropy`); its other NeRF
   regularisers (orientation, 2D normal smoothness) need a normal field, which Gaussians do not have.
4. *Fine*: a DMTet (:mod:`stages.dmtet_geometry`) initialised from the coarse mesh and the Gaussians' colours, with
   the same priors at ``1e-3 : 1e-2``, the same reference schedule, normal-consistency and Laplacian regularisers
   (0.1 each). No normal-shaded steps: the official code's ``normal_iter_ratio 0.2`` is the coarse NeRF's (its
   ``main.py`` sets it to 0 for ``--dmtet``); the Gaussians have no normals to shade, so neither stage uses it.
5. UV unwrap, texture from the colour volume, export, ``placement.json``.

Frames and angles: as DreamGaussian (``pipelines/dreamgaussian.py``): Blender's world, Z up, the input view at
azimuth 0 from ``elevation`` degrees (positive above). Magic123's cameras: radius 1.8, fovy 40, polar 45-135 degrees
(elevation offsets within ±45).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from . import register
from .base import JobRequest, Pipeline, RunContext
from .inputs import IMAGE_INPUT
from .dreamgaussian_guidance import Guide, OrbitSampler, Term, load_prior
from .stages.distill_gaussians import GaussianDistillOptions, ReferenceView, distill_gaussians
from .stages.dmtet_geometry import DMTetOptions
from .stages.views import ReferenceInputOptions

log = logging.getLogger(__name__)


class Magic123Options(GaussianDistillOptions, DMTetOptions, ReferenceInputOptions):
    # --- cameras
    elevation: float = Field(0.0, ge=-80, le=80, description="elevation of the input photo, degrees, positive above")
    radius: float = Field(1.8, gt=0.5, le=10, description="orbit radius of every camera")
    fovy: float = Field(40.0, gt=5, lt=120, description="vertical field of view in degrees")
    min_ver: int = Field(-45, ge=-90, le=0, description="lowest elevation offset of random views, degrees")
    max_ver: int = Field(45, ge=0, le=90, description="highest elevation offset of random views, degrees")
    # --- priors and their trade-off (the paper's main knob)
    prior_2d: Literal["sd15", "sd21-base"] = Field("sd15", description="2D prior (Magic123: SD 1.5)")
    prior_3d: Literal["zero123-105000", "zero123-xl", "stable-zero123"] = Field(
        "zero123-105000", description="3D prior (Magic123: Zero-1-to-3 105000.ckpt)")
    sd_weights_path: str | None = Field(None, description="explicit folder of the 2D prior")
    zero123_weights_path: str | None = Field(None, description="explicit folder of the 3D prior")
    lambda_2d: float = Field(1.0, ge=0, description="coarse weight of the 2D (SD) score distillation")
    lambda_3d: float = Field(40.0, ge=0, description="coarse weight of the 3D (Zero123) score distillation")
    lambda_2d_fine: float = Field(1e-3, ge=0, description="fine weight of the 2D score distillation")
    lambda_3d_fine: float = Field(1e-2, ge=0, description="fine weight of the 3D score distillation")
    guidance_scale_2d: float = Field(100.0, gt=0, description="CFG scale of the 2D prior")
    guidance_scale_3d: float = Field(5.0, gt=0, description="CFG scale of the 3D prior")
    t_range: tuple[float, float] = Field((0.2, 0.6), description="timestep bounds as fractions of T")
    zero123_angle_scale: bool = Field(True, description=(
        "scale the 3D prior's loss by the view's angle from the input view / 180 (Magic123's zero123_grad_scale)"))
    timestep_schedule: Literal["uniform", "dreamtime", "linear"] = Field(
        "uniform", description="timestep per step: uniform in t_range (Magic123), DreamTime, linear anneal")
    distillation: Literal["sds", "csd"] = Field("sds", description="score distillation: SDS or Classifier Score")
    # --- reference view
    ref_size: int = Field(192, ge=32, le=1024, description="coarse reference render size (1.5 x 128, Magic123)")
    lambda_rgb: float = Field(5.0, ge=0, description="reference colour loss weight")
    lambda_mask: float = Field(0.5, ge=0, description="reference mask loss weight")
    lambda_depth: float = Field(0.01, ge=0, description="reference depth (1 - Pearson) / 2 loss weight (0 = off)")
    depth_weights_path: str | None = Field(None, description="explicit folder of the monocular depth model")
    known_iters: int = Field(100, ge=0, description="first steps with only the reference losses")
    known_view_interval: int = Field(4, ge=0, description="then every this-many-th step is reference-only")
    lambda_entropy: float = Field(1e-3, ge=0, description=(
        "coarse binary-entropy loss of the Gaussians' opacities, ramped in over the first half (Magic123's entropy)"))
    # --- textual inversion
    textual_inversion: bool = Field(True, description="learn a token for the object when no prompt is given")
    ti_steps: int = Field(3000, ge=1, le=20000, description="textual-inversion steps")
    ti_lr: float = Field(5e-4, gt=0, description="textual-inversion learning rate")
    # --- mesh, texture, output
    target_faces: int = Field(200_000, ge=0, le=2_000_000, description="decimate the final mesh (0 = keep)")
    texture_size: int = Field(1024, ge=64, le=4096, description="texture side in pixels")
    preview_views: int = Field(8, ge=1, le=64, description="turntable views in preview.png")
    preview_size: int = Field(256, ge=32, le=1024, description="turntable view size")

    main = ("elevation", "iters", "textual_inversion", "texture_size")

    # coarse Gaussians at DreamGaussian's rates over Magic123's camera, no warm-up; presets scale the step counts
    presets = {
        "fast": {"iters": 100, "num_pts": 1000, "render_sizes": (64, 64, 64), "ref_size": 64,
                 "position_lr_max_steps": 100, "density_start_iter": 10, "densification_interval": 20,
                 "known_iters": 10, "textual_inversion": False, "mesh_resolution": 64, "tet_resolution": 32,
                 "fine_iters": 20, "fine_render_size": 64, "fine_init_steps": 10, "color_resolution": 32,
                 "target_faces": 20_000, "texture_size": 256, "preview_views": 4, "preview_size": 128},
        "standard": {"iters": 1000, "position_lr_max_steps": 1000, "render_sizes": (128, 128, 128),
                     "tet_resolution": 128, "fine_iters": 1000, "fine_render_size": 512, "ti_steps": 1000},
        "high": {"iters": 5000, "position_lr_max_steps": 5000, "render_sizes": (128, 128, 128),
                 "mesh_resolution": 256, "texture_size": 2048, "preview_views": 16, "preview_size": 512},
    }


def _build_guide(opts: Magic123Options, ctx: RunContext, generator: torch.Generator, rgba: torch.Tensor,
                 prompt: str | None, negative: str) -> tuple[Guide, list]:
    """The 3D prior on the reference and, with a prompt or textual inversion, the 2D prior (its term's prompt is
    empty until a token is learned)."""
    from ..guidance.distillation import CSD, SDS
    from ..guidance.schedules import make_schedule

    def distillation(prior):
        return CSD(guidance_scale=prior.guidance_scale) if opts.distillation == "csd" else SDS()

    z123, w3 = load_prior(ctx, "zero123", opts.prior_3d, opts.zero123_weights_path, opts.guidance_scale_3d)
    z123.set_reference(rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]), elevation=opts.elevation, azimuth=0.0,
                       radius=opts.radius)
    terms = [Term("zero123", z123, opts.lambda_3d, distillation(z123), radius=opts.radius,
                  angle_scaled=opts.zero123_angle_scale)]
    info = [w3]
    if opts.lambda_2d > 0 and (prompt or opts.textual_inversion):
        sd, w2 = load_prior(ctx, "sd", opts.prior_2d, opts.sd_weights_path, opts.guidance_scale_2d)
        terms.insert(0, Term("sd", sd, opts.lambda_2d, distillation(sd), prompt or "", negative, view_dependent=True))
        info.append(w2)
    else:
        log.info("magic123: no prompt and no textual inversion, so the 2D prior is off")
    kw = {"t_min": opts.t_range[0], "t_max": opts.t_range[1], "num_train_timesteps": z123.num_train_timesteps}
    if opts.timestep_schedule == "dreamtime":
        kw["alphas_cumprod"] = z123.alphas_cumprod.cpu()
    return Guide(terms, make_schedule(opts.timestep_schedule, **kw), generator), info


def opacity_entropy(weight: float):
    """Magic123's coarse entropy regulariser on Gaussians: ``weight·min(1, 2·progress)`` times the mean binary
    entropy (bits) of the opacities, which pushes each Gaussian to be empty or opaque (the official code applies it
    to the NeRF's per-sample alphas, whose counterpart here is a Gaussian's opacity). An ``extra_loss`` of
    :func:`distill_gaussians`."""

    def loss(gaussians, progress: float):
        a = gaussians.opacities.clamp(1e-5, 1 - 1e-5)
        h = -(a * torch.log2(a) + (1 - a) * torch.log2(1 - a)).mean()
        return weight * min(1.0, 2 * progress) * h, {"opacity_entropy": float(h.detach())}

    return loss


@register
class Magic123(Pipeline):
    name = "magic123"
    title = "Magic123 (image to 3D)"
    description = ("One image to a high-resolution textured mesh with joint 2D (SD 1.5, optionally a learned "
                   "token) and 3D (Zero-1-to-3) priors (ICLR 2024): coarse Gaussians, then a DMTet mesh.")
    inputs = {"image": IMAGE_INPUT,
              "prompt": "optional: the 2D prior's prompt (else one is learned by textual inversion)"}
    required_inputs = ("image",)
    needs_mask = True
    Options = Magic123Options
    #: the defaults; other priors are resolved when chosen, the depth model when lambda_depth > 0
    weights = ("zero123-105000", "sd15", "depth-anything-v2-small")
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28)
    #: (``fast`` skips textual inversion: a run with it holds its fraction while the token is learned)
    stage_shares = {"preprocess": 0.024, "load": 0.028, "gaussians": 0.649, "mesh": 0.12, "dmtet": 0.108,
                    "texture": 0.059, "export": 0.012}

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import CanonicalView, record_placement
        from .stages.dmtet_geometry import dmtet_from_gaussians, refine_dmtet, textured_surface
        from .stages.export import export_results
        from .stages.textual_inversion import PROMPT, TextualInversionConfig, learn_token
        from .stages.views import reference_depth, reference_input, resized_reference

        opts = self.Options(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        out: dict[str, Path] = {}
        with ctx.stage("preprocess"):
            rgba, written = reference_input(request.files["image"], max(opts.ref_size, opts.fine_render_size),
                                            opts.border_ratio, opts.recenter, opts.rembg_model, ctx.out_dir)
            out.update(written)
            depth, depth_info = reference_depth(ctx, rgba, opts.depth_weights_path) if opts.lambda_depth > 0 \
                else (None, [])
        reference = ReferenceView(rgba, opts.lambda_rgb, opts.lambda_mask, False, depth, opts.lambda_depth,
                                  opts.known_iters, opts.known_view_interval)

        with ctx.stage("load"):
            guide, info = _build_guide(opts, ctx, gen, rgba, request.prompt, request.negative_prompt or "")
        sd_term = next((t for t in guide.terms if t.kind == "sd"), None)
        if sd_term is not None and not sd_term.prompt:
            with ctx.stage("textual_inversion"):
                token, _, path = learn_token(sd_term.prior, rgba, TextualInversionConfig(opts.ti_steps, opts.ti_lr),
                                             gen, ctx)
            out["learned_embeds.safetensors"] = path
            sd_term.prompt = PROMPT.format(token)
        ctx.cache["_meta_extra"] = {"weights": info + depth_info, "prompt_2d": sd_term.prompt if sd_term else None}
        sampler = OrbitSampler(opts.elevation, opts.radius, opts.fovy, opts.min_ver, opts.max_ver)
        with ctx.stage("gaussians"):
            entropy = opacity_entropy(opts.lambda_entropy) if opts.lambda_entropy else None
            gaussians, metrics = distill_gaussians(opts, guide, sampler, gen, ctx,
                                                   resized_reference(reference, opts.ref_size), entropy)
        with ctx.stage("mesh"):
            ctx.progress("mesh", 0, 1)
            dmtet, colors = dmtet_from_gaussians(gaussians, opts, ctx.device)
            ctx.progress("mesh", 1, 1)
        with ctx.stage("dmtet"):
            for term in guide.terms:
                term.weight = opts.lambda_2d_fine if term.kind == "sd" else opts.lambda_3d_fine
            metrics.update(refine_dmtet(opts, dmtet, colors, guide, sampler, gen, ctx,
                                        resized_reference(reference, opts.fine_render_size)))
        with ctx.stage("texture"):
            mesh = textured_surface(dmtet, colors, opts.texture_size, opts.target_faces)
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, gaussians, opts.preview_views, opts.preview_size))
            out.update(record_placement(request, ctx, mesh.vertices,
                                        CanonicalView(opts.elevation, opts.radius, opts.fovy)))
        ctx.cache.setdefault("_metrics", {}).update(metrics, faces=int(len(mesh.faces)),
                                                    vertices=int(len(mesh.vertices)))
        return out
