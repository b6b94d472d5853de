"""Method ``dreamcraft3d``: an image and its caption to a textured mesh by hierarchical generation with geometry
sculpting and bootstrapped texture boosting (ICLR 2024).

A composition of shared stages; defaults are the official configs (``deepseek-ai/DreamCraft3D:configs/*``, see
``reference/threestudio_and_sds.md`` section 2.4) unless noted. The caption is required (the official configs take
one; no captioner is bundled). Every camera is at distance 3.8 with fovy 20 ("Zero123 has fixed fovy"), elevation
-10..45 degrees (:class:`OpeningOrbitSampler`).

1. *Coarse*: the shared Gaussians (:func:`distill_gaussians`) instead of the paper's NeRF then NeuS: the same priors,
   weights and schedules apply to any differentiable renderer, Gaussians are several times faster per step, and the
   DMTet stage starts from their mesh as Magic123's does. 2D SDS (SD 2.1-base at CFG 20 with a view-dependent
   prompt, in place of DeepFloyd IF with Perp-Neg) and 3D SDS (Zero123-XL by default, Stable Zero123 optionally,
   CFG 5), ``lambda 0.1`` each; t ~ U[min, max] with min 0.7 -> 0.2 and max 0.85 -> 0.5 over the first 200 steps;
   the random views open from the input view to the full range over the same 200 steps; reference RGB / mask /
   relative depth (1000 / 100 / 0.05, depth by Pearson against a monocular model) on every other step
   (``ref_or_guidance: alternate``), guidance on the others.
2. *Geometry*: a DMTet from the coarse mesh (:mod:`stages.dmtet_geometry`) rendered as normal maps except every 4th
   step in colour (``n_rgb 4``), SD at t in [0.02, 0.5] and Zero123 at [0.2, 0.5], reference and guidance every
   step, normal consistency ``[1000, 10, 1, 2000]``, lr 0.005.
3. *Texture*: UV unwrap with the colour volume baked in (:func:`textured_surface`), then Bootstrapped Score
   Distillation on the texture (:mod:`stages.bootstrapped_texture`).
4. Export and ``placement.json``.

Each stage checkpoints to the job folder (:mod:`stages.checkpoints`): a resumed job reloads the Gaussians, the DMTet
with its colour volume, or the textured mesh, with the random state, and continues with the next stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from . import register
from .base import JobRequest, Pipeline, RunContext
from .dreamgaussian_guidance import Guide, OpeningOrbitSampler, Term, load_prior
from .inputs import IMAGE_INPUT
from .stages.bootstrapped_texture import BSDOptions
from .stages.distill_gaussians import GaussianDistillOptions, ReferenceView
from .stages.dmtet_geometry import DMTetOptions
from .stages.views import ReferenceInputOptions


class DreamCraft3DOptions(GaussianDistillOptions, DMTetOptions, BSDOptions, ReferenceInputOptions):
    # --- cameras
    elevation: float = Field(0.0, ge=-80, le=80, description="elevation of the input photo, degrees, positive above")
    radius: float = Field(3.8, gt=0.5, le=10, description="distance of every camera (Zero123's fixed setting)")
    fovy: float = Field(20.0, gt=5, lt=120, description="vertical field of view in degrees")
    elevation_range: tuple[float, float] = Field((-10.0, 45.0), description="random views' elevations, degrees")
    opening_steps: int = Field(200, ge=0, description="coarse steps over which the random views open up")
    # --- priors
    prior_2d: Literal["sd21-base", "sd15"] = Field("sd21-base", description="2D prior (paper: DeepFloyd IF)")
    prior_3d: Literal["zero123-xl", "stable-zero123", "zero123-105000"] = Field(
        "zero123-xl", description="3D prior (the maintainers recommend Zero123-XL over Stable Zero123)")
    sd_weights_path: str | None = Field(None, description="explicit folder of the 2D prior")
    zero123_weights_path: str | None = Field(None, description="explicit folder of the 3D prior")
    lambda_2d: float = Field(0.1, ge=0, description="weight of the 2D score distillation (coarse and geometry)")
    lambda_3d: float = Field(0.1, ge=0, description="weight of the 3D score distillation (coarse and geometry)")
    guidance_scale_2d: float = Field(20.0, gt=0, description="CFG of the 2D prior")
    guidance_scale_3d: float = Field(5.0, gt=0, description="CFG of the 3D prior")
    coarse_t_min: tuple[float, float] = Field((0.7, 0.2), description="coarse lowest t fraction, start and end")
    coarse_t_max: tuple[float, float] = Field((0.85, 0.5), description="coarse highest t fraction, start and end")
    geometry_t_2d: tuple[float, float] = Field((0.02, 0.5), description="geometry stage t range of the 2D prior")
    geometry_t_3d: tuple[float, float] = Field((0.2, 0.5), description="geometry stage t range of the 3D prior")
    # --- reference view
    ref_size: int = Field(128, ge=32, le=1024, description="coarse reference render size")
    lambda_rgb: float = Field(1000.0, ge=0, description="reference colour loss weight")
    lambda_mask: float = Field(100.0, ge=0, description="reference mask loss weight")
    lambda_depth: float = Field(0.05, ge=0, description="reference relative-depth loss weight (0 = off)")
    depth_weights_path: str | None = Field(None, description="explicit folder of the monocular depth model")
    # --- geometry stage (official values over DMTetOptions' Magic123 defaults)
    sdf_lr: float = Field(0.005, gt=0, description="learning rate of the SDF grid values (world units)")
    normal_iter_ratio: float = Field(0.0, ge=0, le=1, description="share of the first steps with normal shading only")
    rgb_interval: int = Field(4, ge=0, description="normal shading except every this-many-th step in colour")
    normal_consistency_ramp: tuple[int, float, float, int] | None = Field((1000, 10.0, 1.0, 2000), description=(
        "threestudio's [start_step, start, end, end_step] for the normal-consistency weight"))
    lambda_laplacian: float = Field(0.0, ge=0, description="weight of the uniform Laplacian smoothness")
    # --- mesh and output
    target_faces: int = Field(200_000, ge=0, le=2_000_000, description="decimate the final mesh (0 = keep)")
    texture_size: int = Field(1024, ge=64, le=4096, description="texture side in pixels")
    preview_views: int = Field(8, ge=1, le=64, description="turntable views in preview.png")
    preview_size: int = Field(256, ge=32, le=1024, description="turntable view size")

    main = ("elevation", "iters", "fine_iters", "texture_iters", "prior_3d")

    # paper-sized "high"; the stage-2/3 defaults are the official ones; DreamGaussian's Gaussian rates throughout
    presets = {
        "fast": {"iters": 100, "num_pts": 1000, "render_sizes": (64, 64, 64), "ref_size": 64, "opening_steps": 20,
                 "position_lr_max_steps": 100, "density_start_iter": 10, "densification_interval": 20,
                 "mesh_resolution": 64, "tet_resolution": 32, "fine_iters": 20, "fine_render_size": 64,
                 "fine_init_steps": 10, "color_resolution": 32, "texture_iters": 20, "texture_render_size": 64,
                 "only_pretrain_step": 10, "per_update_pretrain_step": 2, "augment_steps": 4,
                 "target_faces": 20_000, "texture_size": 256, "preview_views": 4, "preview_size": 128},
        "standard": {"iters": 1500, "position_lr_max_steps": 1500, "render_sizes": (128, 128, 256),
                     "density_end_iter": 1000, "tet_resolution": 128, "fine_iters": 1500, "fine_render_size": 512,
                     "normal_consistency_ramp": (300, 10.0, 1.0, 600), "texture_iters": 1500,
                     "texture_render_size": 512, "only_pretrain_step": 500, "per_update_pretrain_step": 25},
        "high": {"iters": 5000, "position_lr_max_steps": 5000, "render_sizes": (128, 128, 384),
                 "tet_resolution": 128, "fine_iters": 5000, "mesh_resolution": 256, "texture_size": 2048,
                 "preview_views": 16, "preview_size": 512},
    }


def _guide(opts: DreamCraft3DOptions, ctx: RunContext, generator, rgba: torch.Tensor, prompt: str, negative: str):
    """SD (view-dependent prompt; loaded when the 2D SDS or the texture stage is on) + Zero123 on the reference,
    the coarse annealed schedule; ``(guide, text prior or None, info)``."""
    from ..guidance.schedules import Uniform

    z123, w3 = load_prior(ctx, "zero123", opts.prior_3d, opts.zero123_weights_path, opts.guidance_scale_3d)
    z123.set_reference(rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]), elevation=opts.elevation, azimuth=0.0,
                       radius=opts.radius)
    terms, info = [Term("zero123", z123, opts.lambda_3d, radius=opts.radius)], [w3]
    sd = None
    if opts.lambda_2d > 0 or opts.texture_iters > 0:
        sd, w2 = load_prior(ctx, "sd", opts.prior_2d, opts.sd_weights_path, opts.guidance_scale_2d)
        terms.append(Term("sd", sd, opts.lambda_2d, prompt=prompt, negative_prompt=negative, view_dependent=True))
        info.insert(0, w2)
    opening = opts.opening_steps / opts.iters
    schedule = Uniform(opts.coarse_t_min[0], opts.coarse_t_max[0], opts.coarse_t_min[1], opts.coarse_t_max[1],
                       anneal_end=opening, num_train_timesteps=z123.num_train_timesteps)
    return Guide(terms, schedule, generator), sd, info


# --- what each stage's checkpoint keeps
def _gaussians(state: dict):
    from ..representations.gaussians import Gaussians

    return Gaussians(*(state[k] for k in ("means", "quats", "log_scales", "opacity_logits", "sh")))


def _save_gaussians(g) -> dict:
    return {k: getattr(g, k).detach().cpu() for k in ("means", "quats", "log_scales", "opacity_logits", "sh")}


def _save_dmtet(pair) -> dict:
    dmtet, colors = pair
    return {"resolution": dmtet.resolution, "scale": dmtet.scale, "sdf": dmtet.sdf.detach().cpu(),
            "deformation": dmtet.deformation.detach().cpu(), "color_scale": colors.scale,
            "color_logits": colors.logits.detach().cpu()}


def _dmtet(state: dict, device):
    from ..representations.dmtet import ColorVolume, DMTet

    dmtet = DMTet(state["resolution"], state["scale"], state["sdf"])
    dmtet.deformation.data.copy_(state["deformation"])
    colors = ColorVolume(1, state["color_scale"])
    colors.logits = torch.nn.Parameter(state["color_logits"].clone())
    return dmtet.to(device), colors.to(device)


_MESH = ("vertices", "faces", "normals", "uvs", "texture")


def _save_mesh(mesh) -> dict:
    return {k: getattr(mesh, k).detach().cpu() for k in _MESH if getattr(mesh, k) is not None}


def _mesh(state: dict):
    from ..representations.mesh import TexturedMesh

    return TexturedMesh(*(state.get(k) for k in _MESH))


@register
class DreamCraft3D(Pipeline):
    name = "dreamcraft3d"
    title = "DreamCraft3D (image + caption to 3D)"
    description = ("One image and its caption to a textured mesh (ICLR 2024): coarse Gaussians by SD + Zero123 "
                   "score distillation, a DMTet sculpted on normal maps, then a texture boosted by Bootstrapped "
                   "Score Distillation. Resumable from its last finished stage.")
    inputs = {"image": IMAGE_INPUT,
              "prompt": "a caption of the object (required: the 2D prior and the texture stage use it)"}
    required_inputs = ("image", "prompt")
    needs_mask = True
    resumable = True
    Options = DreamCraft3DOptions
    #: the defaults; other priors are resolved when chosen, the depth model when lambda_depth > 0
    weights = ("zero123-xl", "sd21-base", "depth-anything-v2-small")
    #: ``standard``'s step counts times benchmarks/bench_dreamcraft3d.py's CPU per-step costs (no GPU measurement)
    stage_shares = {"preprocess": 0.002, "load": 0.003, "gaussians": 0.26, "dmtet": 0.435, "texture": 0.298,
                    "export": 0.002}

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.placement import CanonicalView, record_placement
        from ..guidance.schedules import Uniform
        from .stages.bootstrapped_texture import bootstrapped_texture
        from .stages.checkpoints import StageCheckpoints
        from .stages.distill_gaussians import distill_gaussians
        from .stages.dmtet_geometry import (
            dmtet_from_gaussians,
            refine_dmtet,
            textured_surface,
        )
        from .stages.export import export_results
        from .stages.views import reference_depth, reference_input, resized_reference

        opts = self.Options(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        stages = StageCheckpoints(ctx, request, gen)
        out: dict[str, Path] = {}
        metrics: dict = {}
        with ctx.stage("preprocess"):
            size = max(opts.ref_size, opts.fine_render_size, opts.texture_render_size)
            rgba, written = reference_input(request.files["image"], size, opts.border_ratio, opts.recenter,
                                            opts.rembg_model, ctx.out_dir)
            out.update(written)
            depth, depth_info = reference_depth(ctx, rgba, opts.depth_weights_path) if opts.lambda_depth > 0 \
                else (None, [])
        reference = ReferenceView(rgba, opts.lambda_rgb, opts.lambda_mask, warmup=False, depth=depth,
                                  lambda_depth=opts.lambda_depth, interval=2)  # ref_or_guidance "alternate"
        with ctx.stage("load"):
            guide, text_prior, info = _guide(opts, ctx, gen, rgba, request.prompt, request.negative_prompt or "")
        ctx.cache["_meta_extra"] = {"weights": info + depth_info}
        torch.manual_seed(request.seed)  # the same draws whether the models were loaded now or cached
        sampler = OpeningOrbitSampler(opts.elevation, opts.radius, opts.fovy, opts.elevation_range,
                                      opts.opening_steps / opts.iters)

        def coarse():
            g, m = distill_gaussians(opts, guide, sampler, gen, ctx, resized_reference(reference, opts.ref_size))
            metrics.update(m)
            return g

        with ctx.stage("gaussians"):
            gaussians = stages.run("gaussians", coarse, _save_gaussians, _gaussians).to(ctx.device)

        def geometry():
            ctx.progress("mesh", 0, 1)
            dmtet, colors = dmtet_from_gaussians(gaussians, opts, ctx.device)
            sampler.opening = 0.0
            for term in guide.terms:
                t_range = opts.geometry_t_2d if term.kind == "sd" else opts.geometry_t_3d
                term.schedule = Uniform(*t_range, num_train_timesteps=term.prior.num_train_timesteps)
            every_step = resized_reference(reference, opts.fine_render_size)
            every_step.interval = 0  # ref_or_guidance "accumulate"
            metrics.update(refine_dmtet(opts, dmtet, colors, guide, sampler, gen, ctx, every_step))
            return dmtet, colors

        with ctx.stage("dmtet"):
            dmtet, colors = stages.run("dmtet", geometry, _save_dmtet, lambda s: _dmtet(s, ctx.device))

        def texture():
            mesh = textured_surface(dmtet, colors, opts.texture_size, opts.target_faces)
            sampler.opening = 0.0
            if opts.texture_iters == 0:
                return mesh
            boosted, m = bootstrapped_texture(mesh, opts, text_prior, request.prompt,
                                              request.negative_prompt or "", sampler, gen, ctx,
                                              resized_reference(reference, opts.texture_render_size))
            metrics.update(m)
            return boosted

        with ctx.stage("texture"):
            mesh = stages.run("texture", texture, _save_mesh, _mesh)
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, gaussians.to("cpu"), opts.preview_views, opts.preview_size))
            out.update(record_placement(request, ctx, mesh.vertices,
                                        CanonicalView(opts.elevation, opts.radius, opts.fovy)))
        ctx.cache.setdefault("_metrics", {}).update(metrics, faces=int(len(mesh.faces)),
                                                    vertices=int(len(mesh.vertices)))
        return out
