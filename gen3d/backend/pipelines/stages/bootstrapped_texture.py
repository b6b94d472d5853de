"""Texture boosting by Bootstrapped Score Distillation (DreamCraft3D stage 3) on a fixed, UV-mapped mesh.

The texture image is optimised directly (logits, rendered through ``gen3d.kernels.mesh``) while a personalised copy of
the 2D prior is bootstrapped from the asset itself (:class:`~gen3d.backend.guidance.distillation.BSD`: the VSD
estimator is a LoRA adapter on the frozen UNet, the teacher another one or, with ``personalise=full``, a full copy;
each has a camera embedding). Every ``only_pretrain_step``
steps (official ``configs/dreamcraft3d-texture.yaml``: 1000) the first fifth is the *DreamBooth phase*: every
``per_update_pretrain_step`` (25) steps a render of a random view is augmented by SDEdit with the frozen prior from
the current ``t_max`` (diffusers' strength ``t_max / T``; DDIM instead of the official 25 DPM-Solver steps, CFG 7.5)
into a cache of the last ``cache_size`` (10) images, and each step the teacher takes one diffusion-loss step on a
cached image with its camera. The other steps update the texture by ``lambda_sd · loss_vsd`` (teacher CFG 2.0,
``t ~ U[0.05, t_max]`` with ``t_max`` 0.5 -> 0.2 over the stage) and the estimator by ``lambda_lora · loss_lora``,
alternating with the reference view's colour loss (``n_ref 2``). Each of the three has its own optimiser, so each
update moves only its own parameters.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import torch
from pydantic import Field

from ...errors import NumericalError
from ...representations.mesh import TexturedMesh
from ..base import Options, RunContext
from .mesh_render import render_mesh


class BSDOptions(Options):
    """Stage-3 options; defaults are the official texture config unless noted."""

    texture_iters: int = Field(5000, ge=0, le=20000, description="texture-boosting steps (0 = keep the baked texture)")
    texture_render_size: int = Field(1024, ge=32, le=2048, description="render size of the texture stage")
    texture_lr: float = Field(0.01, gt=0, description="learning rate of the texture logits")
    bsd_guidance_scale: float = Field(2.0, gt=0, description="CFG of the personalised teacher")
    bsd_t_min: float = Field(0.05, ge=0, lt=1, description="lowest timestep fraction")
    bsd_t_max: tuple[float, float] = Field((0.5, 0.2), description="highest timestep fraction, start and end")
    only_pretrain_step: int = Field(1000, ge=5, description="period whose first fifth is the DreamBooth phase")
    per_update_pretrain_step: int = Field(25, ge=1, description="augment a new cache image every this many steps")
    cache_size: int = Field(10, ge=1, le=100, description="augmented images kept for the DreamBooth phase")
    augment_steps: int = Field(25, ge=1, le=100, description="denoising steps of the augmentation (SDEdit)")
    augment_guidance_scale: float = Field(7.5, gt=0, description="CFG of the augmentation")
    lambda_sd: float = Field(0.01, ge=0, description="weight of the BSD loss on the texture")
    lambda_lora: float = Field(0.1, ge=0, description="weight of the estimator's diffusion loss")
    lambda_pretrain: float = Field(0.1, ge=0, description="weight of the teacher's diffusion loss")
    personalise: Literal["lora", "full"] = Field("lora", description=(
        "how the teacher is fine-tuned: lora (a peft adapter on the frozen UNet, memory-friendly) or full (the "
        "official: every weight of a float32 UNet copy)"))
    teacher_rank: int = Field(16, ge=1, le=256, description="LoRA rank of the personalised teacher")
    estimator_rank: int = Field(4, ge=1, le=256, description="LoRA rank of the VSD estimator")
    teacher_lr: float | None = Field(None, gt=0, description="teacher learning rate (None: 1e-4 LoRA, 1e-5 full)")
    estimator_lr: float = Field(1e-4, gt=0, description="estimator learning rate (official full fine-tune: 1e-5)")


def dreambooth_phase(step: int, opts: BSDOptions) -> bool:
    """Whether 1-based ``step`` falls in the first fifth of its ``only_pretrain_step`` period."""
    return (step - 1) % opts.only_pretrain_step < opts.only_pretrain_step // 5


def t_max(progress: float, opts: BSDOptions) -> float:
    return opts.bsd_t_max[0] + (opts.bsd_t_max[1] - opts.bsd_t_max[0]) * min(max(progress, 0.0), 1.0)


class Personalisation:
    """The BSD pair on ``prior`` (a text prior): the teacher and estimator adapters, their optimisers and the cache of
    augmented renders ``(image [1,3,S,S], c2w [1,4,4], elevation [1], azimuth [1])``."""

    def __init__(self, prior, opts: BSDOptions, prompt: str, negative: str):
        from ...guidance.distillation import BSD

        self.prior, self.opts, self.prompt, self.negative = prior, opts, prompt, negative
        full = opts.personalise == "full"
        self.bsd = BSD(prior, guidance_scale=opts.bsd_guidance_scale, teacher_rank=opts.teacher_rank,
                       full_teacher=full, lora_rank=opts.estimator_rank)
        lr = opts.teacher_lr or (1e-5 if full else 1e-4)
        self.teacher_opt = torch.optim.AdamW(self.bsd.teacher_parameters(prior), lr=lr)
        self.estimator_opt = torch.optim.AdamW(self.bsd.trainable_parameters(prior), lr=opts.estimator_lr)
        self.cache: deque = deque(maxlen=opts.cache_size)

    def condition(self, el: torch.Tensor, az: torch.Tensor):
        return self.prior.condition(self.prompt, self.negative, elevation=el, azimuth=az)

    @torch.no_grad()
    def augment(self, render: torch.Tensor, c2w: torch.Tensor, el, az, strength: float,
                generator: torch.Generator) -> None:
        """SDEdit ``render [1,3,S,S]`` with the frozen prior (adapters off) into the cache."""
        image = self.prior.refine(render, self.condition(el, az), strength=strength, steps=self.opts.augment_steps,
                                  guidance_scale=self.opts.augment_guidance_scale, generator=generator)
        self.cache.append((image.cpu(), c2w.cpu(), el, az))

    def teacher_step(self, generator: torch.Generator) -> float:
        """One diffusion-loss step of the teacher on a random cached image."""
        image, c2w, el, az = self.cache[int(torch.randint(len(self.cache), (1,), generator=generator))]
        dev = self.prior.device
        loss = self.bsd.teacher_loss(self.prior, image.to(dev), self.condition(el, az), c2w.to(dev))["loss_pretrain"]
        self.teacher_opt.zero_grad(set_to_none=True)
        (self.opts.lambda_pretrain * loss).backward()
        self.teacher_opt.step()
        return float(loss.detach())

    def remove(self) -> None:
        self.bsd.remove(self.prior)


def bootstrapped_texture(mesh: TexturedMesh, opts: BSDOptions, prior, prompt: str, negative: str, sampler,
                         generator: torch.Generator, ctx: RunContext, reference=None) -> tuple[TexturedMesh, dict]:
    """Boost ``mesh.texture`` by BSD (module docstring) on ``sampler``'s views (``sample(size, generator,
    progress)``); ``reference`` (a :class:`~.distill_gaussians.ReferenceView` sized ``texture_render_size``) at
    ``sampler.reference``. Progress as stage ``texture``. Returns the mesh with the new texture and metrics."""
    from ...guidance.schedules import Uniform

    dev = ctx.device
    mesh = mesh.to(dev)
    logits = torch.nn.Parameter(torch.logit(mesh.texture.clamp(1e-3, 1 - 1e-3)))
    texture_opt = torch.optim.AdamW([logits], lr=opts.texture_lr, betas=(0.9, 0.99), eps=1e-4)
    size, white = opts.texture_render_size, torch.ones(1, 3, device=dev)
    ref_cam = sampler.reference(size).to(dev) if reference is not None else None
    bsd = Personalisation(prior, opts, prompt, negative)
    logs: dict[str, float] = {}
    try:
        for step in range(1, opts.texture_iters + 1):
            ctx.check_cancelled()
            r = step / opts.texture_iters
            cams, el, az = sampler.sample(size, generator, r)
            cams = cams.to(dev)
            top = t_max(r, opts)
            if dreambooth_phase(step, opts):
                if (step - 1) % opts.per_update_pretrain_step == 0 or not bsd.cache:
                    with torch.no_grad():
                        render = render_mesh(mesh, cams, white, texture=torch.sigmoid(logits)).rgb
                    bsd.augment(render.permute(0, 3, 1, 2), cams.c2w, el, az, top, generator)
                logs["loss_pretrain"] = bsd.teacher_step(generator)
                images = bsd.cache[-1][0].permute(0, 2, 3, 1)
            elif reference is not None and step % 2 == 0:  # ref_or_guidance "alternate", n_ref 2
                out = render_mesh(mesh, ref_cam, white, texture=torch.sigmoid(logits))
                loss = reference.loss(out.rgb, out.alpha, None)
                texture_opt.zero_grad(set_to_none=True)
                loss.backward()
                texture_opt.step()
                images, logs["loss_ref"] = out.rgb, float(loss.detach())
            else:
                out = render_mesh(mesh, cams, white, texture=torch.sigmoid(logits))
                t = Uniform(opts.bsd_t_min, max(top, opts.bsd_t_min), num_train_timesteps=prior.num_train_timesteps)(
                    r, 1, generator=generator).to(prior.device)
                losses = prior(out.rgb.permute(0, 3, 1, 2), bsd.condition(el, az), t, bsd.bsd, progress=r,
                               cameras=cams.c2w.to(prior.device))
                loss = opts.lambda_sd * losses["loss_vsd"] + opts.lambda_lora * losses["loss_lora"]
                if not torch.isfinite(loss):
                    raise NumericalError(f"texture boosting diverged at step {step}", {"stage": "texture",
                                                                                      "step": step})
                texture_opt.zero_grad(set_to_none=True)
                bsd.estimator_opt.zero_grad(set_to_none=True)
                loss.backward()
                texture_opt.step()
                bsd.estimator_opt.step()
                images = out.rgb
                logs.update(loss_vsd=float(losses["loss_vsd"].detach()), loss_lora=float(losses["loss_lora"].detach()),
                            t=int(t[0]))
            preview = None
            if step == opts.texture_iters or step % max(1, opts.texture_iters // 10) == 0:
                preview = (images[0].detach().clamp(0, 1) * 255).byte().cpu().numpy()
            ctx.progress("texture", step, opts.texture_iters, preview)
    finally:
        bsd.remove()
    out = TexturedMesh(mesh.vertices, mesh.faces, mesh.normals, mesh.uvs, torch.sigmoid(logits).detach())
    return out.to("cpu"), {f"texture_{k}": v for k, v in logs.items()}
