"""SweetDreamer's CCM-SDS on Gaussians: the aligned geometric prior as :func:`distill_gaussians`' ``extra_loss``.

Each call renders the Gaussians' canonical coordinate map (:func:`.ccm_render.gaussian_ccm`) from fresh orbit
cameras of the run's sampler at the AGP's resolution, turns it into the AGP's 4-channel input and applies SDS
(DreamFusion's ``w(t) = 1 - ᾱ_t``, as the official ``compute_cmm_grad_sds``) with the camera-conditioned prior,
times ``weight(progress)``. The CCM box follows the shape: it is re-estimated from the opaque Gaussians every
``box_every`` calls (the official code re-fits it to the isosurface every 200 of 6000 steps), starting from the
initial ball's box. The official code renders the CCM and the appearance image from the same cameras; here the
CCM has its own draw from the same distribution (``extra_loss`` sees only the Gaussians).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ...geometry.ccm import agp_input, box_from_gaussians, ccm_frame
from .ccm_render import gaussian_ccm


@dataclass
class CCMGuidance:
    """Callable ``(gaussians, progress) -> (loss, logs)``; see the module docstring."""

    prior: object                       #: an :class:`~backend.guidance.priors.agp.AGPPrior`
    prompt: str
    negative_prompt: str
    sampler: object                     #: ``sample(size, generator) -> (cameras, el, az)``
    schedule: Callable                  #: ``schedule(progress, batch, generator=...) -> t [B]``
    generator: torch.Generator
    weight: Callable[[float], float] = lambda progress: 1.0
    init_radius: float = 0.5
    box_every: int = 20
    calls: int = field(default=0, init=False)
    box: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False)

    def update_box(self, gaussians) -> None:
        if self.box is None:
            r = self.init_radius
            centre, half = ccm_frame([-r] * 3, [r] * 3)
            self.box = (torch.tensor(centre, dtype=torch.float32, device=gaussians.device),
                        torch.tensor(half, dtype=torch.float32, device=gaussians.device))
        if self.calls % self.box_every == 0:
            self.box = box_from_gaussians(gaussians.means, gaussians.opacities) or self.box

    def __call__(self, gaussians, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        from ...guidance.distillation import SDS

        w = float(self.weight(progress))
        if w == 0:
            return gaussians.means.new_zeros(()), {}
        self.update_box(gaussians)
        self.calls += 1
        cams, _, _ = self.sampler.sample(self.prior.image_size, self.generator)
        premultiplied, alpha = gaussian_ccm(gaussians, cams.to(gaussians.device), *self.box)
        x = agp_input(premultiplied.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2))
        cond = self.prior.condition(self.prompt, self.negative_prompt, cams)
        t = self.schedule(progress, 1, generator=self.generator).expand(len(cams))
        loss = self.prior(x, cond, t, SDS())["loss_sds"]
        return w * loss, {"ccm_loss": float(loss.detach()), "ccm_weight": w, "ccm_t": int(t[0])}


def load_agp(ctx, path: str | None, guidance_scale: float | None):
    """The AGP (cached in ``ctx.cache``) with CFG ``guidance_scale`` (None: 21, the official 20) and its weights
    info for meta.json; a missing checkpoint raises MissingWeights naming the training command."""
    from ... import weights
    from ...guidance.priors.agp import AGPPrior

    folder = weights.resolve("agp", path)
    key = f"prior:agp:{folder.resolve()}:{ctx.device}"
    if key not in ctx.cache:
        ctx.cache[key] = AGPPrior(folder, device=ctx.device)
    prior = ctx.cache[key]
    prior.guidance_scale = guidance_scale or AGPPrior.guidance_scale
    entry = weights.get_entry("agp")
    return prior, {"name": "agp", "path": str(folder), "tiny": weights.is_tiny(folder), "license": entry.license}
