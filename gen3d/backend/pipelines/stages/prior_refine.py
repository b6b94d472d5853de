"""Stage 5b: refine a mesh's UV texture against a diffusion prior, as DreamGaussian's second stage (``main2.py``).

Each step renders a random orbit view (MVDream: four views 90° apart) and, when there is one, the reference view;
the novel views' targets are the priors' SDEdit refinements of their own renders (:meth:`Guide.targets`, with
DreamGaussian's strength schedule, :func:`dreamgaussian_strength`), the reference view's target is the reference
image. The texture is optimised by the shared loop (:func:`refine_texture`) on a white background, as the priors
expect. Used by ``dreamgaussian`` (stage 2) and ``texture`` (texturing a user's mesh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ...geometry.cameras import Cameras
from ...representations.mesh import TexturedMesh
from ..base import RunContext
from ..dreamgaussian_guidance import Guide, dreamgaussian_strength
from .refine_texture import RefineConfig, refine_texture


class ViewSampler(Protocol):
    def sample(self, size: int, generator: torch.Generator) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        """``(cameras [V], elevations [V], azimuths [V])`` at ``size x size`` (e.g. :class:`OrbitSampler`)."""


@dataclass
class ReferenceView:
    """The view kept fixed to an image: ``camera`` (one, ``size x size``), ``rgba [1,S,S,4]`` straight RGBA in
    [0,1] and optionally ``known [1,S,S,1]``: where False the target is the render itself (no gradient)."""

    camera: Cameras
    rgba: torch.Tensor
    known: torch.Tensor | None = None


@dataclass
class PriorRefineConfig:
    steps: int = 50                                #: DreamGaussian's iters_refine
    size: int = 512                                #: render size of every view
    ddim_steps: int = 50                           #: DDIM steps of the SDEdit trajectory
    strength: tuple[float, float] = (0.8, 0.95)    #: DreamGaussian's convention, start and end of the schedule
    lr: float = 0.2                                #: Adam on the texture's logits (texture_lr)


def refine_with_prior(mesh: TexturedMesh, guide: Guide, sampler: ViewSampler, cfg: PriorRefineConfig,
                      generator: torch.Generator, ctx: RunContext,
                      reference: ReferenceView | None = None) -> tuple[TexturedMesh, dict]:
    """Optimise ``mesh.texture`` (module docstring); returns the refined mesh and the loop's metrics. Progress is
    reported as stage ``refine`` with the first render as preview; cancellation is checked every step."""
    if cfg.steps == 0:
        return mesh, {}
    dev, size = ctx.device, cfg.size
    drawn: dict[int, tuple] = {}

    def cameras(step: int):
        cams, el, az = sampler.sample(size, generator)
        drawn[step] = (cams, el, az)
        ids = [f"novel{i}" for i in range(len(cams))]
        if reference is not None:
            ref = reference.camera
            cams = Cameras(torch.cat([cams.K, ref.K]), torch.cat([cams.c2w, ref.c2w]), size, size)
            ids.append("reference")
        return ids, cams.to(dev)

    def targets(step: int, ids: list, cams, renders: torch.Tensor) -> torch.Tensor:
        novel, el, az = drawn.pop(step)
        n = len(novel)
        strength = dreamgaussian_strength((step + 1) / cfg.steps, cfg.ddim_steps, *cfg.strength)
        refined = guide.targets(renders[:n].permute(0, 3, 1, 2), novel.to(dev), el, az, strength, cfg.ddim_steps)
        target = sum(w * t for w, t in refined) / sum(w for w, _ in refined)
        out = torch.cat([target.permute(0, 2, 3, 1), torch.ones_like(target[:, :1].permute(0, 2, 3, 1))], -1)
        if reference is not None:
            ref = reference.rgba.to(out)
            if reference.known is not None:  # the render (opaque, on its background) where the image says nothing
                own = torch.cat([renders[n:], torch.ones_like(renders[n:, ..., :1])], -1)
                ref = torch.where(reference.known.to(out.device), ref, own)
            out = torch.cat([out, ref])
        preview = (renders[0].clamp(0, 1) * 255).byte().cpu().numpy()
        ctx.progress("refine", step + 1, cfg.steps, preview)
        return out

    loop = RefineConfig(steps=cfg.steps, lr_texture=cfg.lr, background=(1.0, 1.0, 1.0))
    return refine_texture(mesh.to(dev), cameras, targets, loop, generator, check_cancelled=ctx.check_cancelled)
