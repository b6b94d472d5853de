"""Generative stage 1: 3D Gaussians optimised by score distillation from diffusion priors.

DreamGaussian's recipe (``main.py`` at 69a3c70), shared by every method that distils a prior into Gaussians:
Gaussians initialised in a ball, per-attribute Adam rates with the 3DGS log-linear position decay, progressive
render resolution, random orbit cameras from a sampler, a random black or white background, the prior's losses from
a :class:`~gen3d.backend.pipelines.dreamgaussian_guidance.Guide`, optional reference-view colour and mask losses
(image methods), an optional method-specific extra loss, 3DGS densification and pruning, and a last prune.

The options live here too (:class:`GaussianDistillOptions`), so every method exposes the same knobs with the same
descriptions and only overrides defaults.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ...errors import NumericalError
from ..base import Options, RunContext

log = logging.getLogger(__name__)

#: ``extra_loss(gaussians, progress) -> (loss, logs)``: a method's own term, added to the guidance loss each step
ExtraLoss = Callable[[object, float], "tuple[torch.Tensor, dict[str, float]]"]


class GaussianDistillOptions(Options):
    """Stage-1 options; the defaults are DreamGaussian's image config (``configs/image.yaml``)."""

    iters: int = Field(500, ge=1, le=20000, description="stage-1 optimisation steps")
    num_pts: int = Field(5000, ge=16, le=200_000, description="initial Gaussians, uniform in a ball")
    init_radius: float = Field(0.5, gt=0, le=2, description="radius of the initial ball (world units)")
    render_sizes: tuple[int, int, int] = Field((128, 256, 512), description=(
        "novel-view render size for the first 30 %, up to 60 % and the rest of stage 1"))
    invert_bg_prob: float = Field(0.5, ge=0, le=1, description="chance of a black instead of white background")
    position_lr: tuple[float, float] = Field((0.01, 0.0002), description=(
        "position learning rate, start and end of its log-linear decay (0.001 x spatial scale 10 -> 0.0002)"))
    position_lr_max_steps: int = Field(500, ge=1, description="steps over which the position lr decays")
    feature_lr: float = Field(0.01, gt=0, description="colour learning rate")
    opacity_lr: float = Field(0.05, gt=0, description="opacity learning rate")
    scaling_lr: float = Field(0.005, gt=0, description="log-scale learning rate")
    rotation_lr: float = Field(0.005, gt=0, description="rotation learning rate")
    density_start_iter: int = Field(100, ge=0, description="first step of densification statistics")
    density_end_iter: int = Field(3000, ge=0, description="last step of densification")
    densification_interval: int = Field(100, ge=1, description="densify and prune every this many steps")
    densify_grad_threshold: float = Field(0.01, gt=0, description="screen-space gradient that triggers densify")
    min_opacity: float = Field(0.01, ge=0, lt=1, description="prune Gaussians below this opacity")
    percent_dense: float = Field(0.01, gt=0, le=1, description="clone below, split above this share of the extent")
    densify_extent: float = Field(4.0, gt=0, description="scene extent for the clone/split and prune thresholds")


@dataclass
class ReferenceView:
    """An image method's input view as a stage-1 target: straight RGBA ``rgba [1,4,S,S]`` seen by the sampler's
    reference camera; colour (on white) and mask losses with weights ``lambda_rgb``/``lambda_mask``, ramped up
    linearly over the stage when ``warmup``."""

    rgba: torch.Tensor
    lambda_rgb: float = 10_000.0
    lambda_mask: float = 1_000.0
    warmup: bool = True
    #: monocular inverse depth ``[1,1,S,S]`` of the reference (larger = nearer) for the Pearson depth loss
    depth: torch.Tensor | None = None
    lambda_depth: float = 0.0
    #: Magic123's schedule: only the reference losses for the first ``known_iters`` steps and then every
    #: ``interval``-th step, only the guidance otherwise; both 0 = both every step (DreamGaussian)
    known_iters: int = 0
    interval: int = 0

    def schedule(self, step: int) -> tuple[bool, bool]:
        """``(reference losses, guidance)`` at 1-based ``step``."""
        if self.known_iters <= 0 and self.interval <= 0:
            return True, True
        only = step <= self.known_iters or (self.interval > 0 and step % self.interval == 0)
        return only, not only

    def loss(self, rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor | None, weight: float = 1.0):
        """Weighted colour (on white) and mask MSE, and the depth correlation when ``lambda_depth > 0``, of a render
        of the reference camera: ``rgb [1,S,S,3]`` over white, ``alpha [1,S,S,1]``, camera ``depth [1,S,S]``."""
        ref = self.rgba.to(rgb.device)
        ref_rgb = ref[:, :3] * ref[:, 3:] + (1 - ref[:, 3:])
        loss = weight * self.lambda_rgb * F.mse_loss(rgb.permute(0, 3, 1, 2), ref_rgb)
        loss = loss + weight * self.lambda_mask * F.mse_loss(alpha.permute(0, 3, 1, 2), ref[:, 3:])
        if self.depth is not None and self.lambda_depth > 0 and depth is not None:
            from ...guidance.depth import depth_correlation_loss

            loss = loss + weight * self.lambda_depth * depth_correlation_loss(
                depth[0], self.depth[0, 0].to(depth.device), ref[0, 3] > 0.5)
        return loss


def ball_gaussians(num_pts: int, radius: float, generator: torch.Generator):
    """DreamGaussian's initialisation: centres uniform in a ball, grey colour, opacity 0.1, identity rotation and
    isotropic scale ``sqrt(mean squared distance to the 3 nearest neighbours)``."""
    from scipy.spatial import cKDTree

    from ...representations.gaussians import Gaussians

    dirs = F.normalize(torch.randn(num_pts, 3, generator=generator), dim=-1)
    r = radius * torch.rand(num_pts, generator=generator) ** (1.0 / 3.0)
    means = dirs * r[:, None]
    dist, _ = cKDTree(means.numpy()).query(means.numpy(), k=4)
    scale = torch.from_numpy(np.sqrt(np.maximum((dist[:, 1:] ** 2).mean(1), 1e-7))).float()
    colors = 0.5 + 0.28209479177387814 * torch.rand(num_pts, 3, generator=generator) / 255.0
    quats = torch.zeros(num_pts, 4)
    quats[:, 0] = 1
    return Gaussians.from_activated(means, scale[:, None].expand(-1, 3), quats, torch.full((num_pts,), 0.1), colors)


def render_size(progress: float, sizes: tuple[int, int, int]) -> int:
    """DreamGaussian's progressive resolution: sizes[0] below 30 % of the steps, sizes[1] below 60 %, then sizes[2]."""
    return sizes[0] if progress < 0.3 else sizes[1] if progress < 0.6 else sizes[2]


def position_lr(step: int, lr: tuple[float, float], max_steps: int) -> float:
    """3DGS/DreamGaussian position learning rate: log-linear from ``lr[0]`` to ``lr[1]`` over ``max_steps``."""
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr[0]) + t * math.log(lr[1]))


def screen_grad_stats(meta: dict, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-Gaussian sum over views of the screen-space mean gradient norm in NDC units (3DGS's densification
    statistic) and the number of views that saw it: ``([N], [N])`` from a render's ``meta`` after backward."""
    grad = meta["means2d"].grad
    radii = meta["radii"]
    seen = (radii > 0).all(-1) if radii.ndim == 3 else radii > 0
    if grad is None:
        return torch.zeros(seen.shape[1], device=seen.device), torch.zeros(seen.shape[1], device=seen.device)
    norm = (grad * torch.tensor([width / 2, height / 2], device=grad.device)).norm(dim=-1)
    return (norm * seen).sum(0), seen.sum(0).float()


def distill_gaussians(opts: GaussianDistillOptions, guide, sampler, generator: torch.Generator, ctx: RunContext,
                      reference: ReferenceView | None = None, extra_loss: ExtraLoss | None = None,
                      init=None, stage: str = "gaussians"):
    """Optimise Gaussians from a ball (or from the Gaussians ``init``, a later stage's start) by ``guide.losses``
    on renders of ``sampler.sample(size, generator)`` (``(cameras, elevations, azimuths)``), plus the
    reference-view losses and ``extra_loss``. Reports progress as ``stage`` with a preview every tenth of the
    steps. Returns ``(Gaussians, metrics)``."""
    from ...representations.gaussians import Gaussians
    from .fit_gaussians import FitConfig, GaussianOptimizer, densify_and_prune, render_gaussians

    dev = ctx.device
    g = (ball_gaussians(opts.num_pts, opts.init_radius, generator) if init is None else init).to(dev)
    opt = GaussianOptimizer(g, {"means": opts.position_lr[0], "quats": opts.rotation_lr,
                                "log_scales": opts.scaling_lr, "opacity_logits": opts.opacity_lr,
                                "sh": opts.feature_lr})
    # DreamGaussian's densify_and_prune with extent E: clone below / split above percent_dense·E, prune opacity
    # below min_opacity or world size above 0.1·E
    dens = FitConfig(grad_threshold=opts.densify_grad_threshold, percent_dense=opts.percent_dense,
                     min_opacity=opts.min_opacity, max_scale_frac=0.1, max_gaussians=10 * opts.num_pts + 100_000)
    grad_sum = torch.zeros(len(g), device=dev)
    grad_cnt = torch.zeros(len(g), device=dev)
    if reference is not None:
        ref_cam = sampler.reference(reference.rgba.shape[-1]).to(dev)
        with_depth = reference.depth is not None and reference.lambda_depth > 0
    white = torch.ones(1, 3, device=dev)
    logs: dict[str, float] = {}
    for step in range(1, opts.iters + 1):
        ctx.check_cancelled()
        r = step / opts.iters
        opt.set_lr("means", position_lr(step, opts.position_lr, opts.position_lr_max_steps))
        gs = opt.gaussians()
        loss = torch.zeros((), device=dev)
        use_ref, use_guide = reference.schedule(step) if reference is not None else (False, True)
        if use_ref:
            rgbd, alpha, ref_meta = render_gaussians(gs, ref_cam, white, render_mode="RGB+ED" if with_depth else "RGB")
            depth = torch.where(alpha[..., 0] > 0.5, rgbd[..., 3], torch.inf) if with_depth else None
            loss = loss + reference.loss(rgbd[..., :3], alpha, depth, r if reference.warmup else 1.0)
            if not use_guide:
                meta, images = ref_meta, rgbd[..., :3].detach().permute(0, 3, 1, 2)
                meta["means2d"].retain_grad()
                cams = ref_cam
        if use_guide:
            size = render_size(r, opts.render_sizes)
            cams, el, az = sampler.sample(size, generator, r)
            cams = cams.to(dev)
            black = float(torch.rand((), generator=generator)) < opts.invert_bg_prob
            bg = (torch.zeros if black else torch.ones)(len(cams), 3, device=dev)
            rgb, alpha, meta = render_gaussians(gs, cams, bg)
            meta["means2d"].retain_grad()
            images = rgb.permute(0, 3, 1, 2)
            guidance, logs = guide.losses(images, cams, el, az, r)
            loss = loss + guidance
        if extra_loss is not None:
            extra, extra_logs = extra_loss(gs, r)
            loss = loss + extra
            logs.update(extra_logs)
        if not torch.isfinite(loss):
            raise NumericalError(f"{stage} diverged at step {step} (loss {float(loss)})", {"stage": stage,
                                                                                      "step": step})
        opt.opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.opt.step()
        if opts.density_start_iter <= step <= opts.density_end_iter:
            s, c = screen_grad_stats(meta, cams.width, cams.height)
            grad_sum += s
            grad_cnt += c
            if step % opts.densification_interval == 0:
                with torch.no_grad():
                    cl, sp, pr = densify_and_prune(opt, grad_sum / grad_cnt.clamp_min(1), dens,
                                                    opts.densify_extent, generator)
                log.debug("step %d: cloned %d, split %d, pruned %d -> %d Gaussians", step, cl, sp, pr,
                          len(opt.params["means"]))
                grad_sum = torch.zeros(len(opt.params["means"]), device=dev)
                grad_cnt = torch.zeros_like(grad_sum)
        preview = None
        if step == opts.iters or step % max(1, opts.iters // 10) == 0:
            preview = (images[0].detach().permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        ctx.progress(stage, step, opts.iters, preview)
    with torch.no_grad():  # DreamGaussian's last prune: opacity < 0.01 or world size > 0.1
        g = opt.gaussians()
        keep = (g.opacities >= opts.min_opacity) & (g.scales.max(-1).values <= 0.1)
        if not keep.any():
            raise NumericalError(f"{stage} left no Gaussian opaque enough to keep", {"stage": stage})
        g = Gaussians(*(getattr(g, k)[keep].detach() for k in ("means", "quats", "log_scales", "opacity_logits",
                                                              "sh")))
    return g, {"gaussians": len(g), **{f"final_{k}": v for k, v in logs.items()}}
