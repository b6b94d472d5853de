"""DreamGaussian's guidance side: which priors, how their losses combine, where the cameras come from.

- :class:`OrbitSampler` draws the random training cameras of DreamGaussian's ``main.py``: a fixed radius, fovy 49.1,
  an integer elevation offset in ``[min_ver, max_ver)`` around the input elevation with the absolute elevation kept
  within ±80, an integer azimuth in ``[-180, 180)``; with ``views = 4`` (MVDream) each sample is four cameras
  90° apart. Angles are ours (``gen3d/backend/geometry/cameras.py``: Z up, elevation positive above, azimuth 0 = front on
  -Y); DreamGaussian's elevation is the negative of ours.
- :class:`MultiViewSampler` draws MVDream-threestudio's (``uncond_multiview``) instead: 4 views 90° apart from a
  random azimuth offset sharing a random elevation, fovy and relative distance.
- :class:`Guide` holds the active priors with their weights and distillations (Zero123 / Stable Zero123 for an
  image, SD 2.1 or MVDream for a prompt, both mixed when an image run also has a prompt and ``lambda_sd > 0``) and
  the timestep schedule, and turns renders into losses (stage 1) or SDEdit targets (stage 2).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..geometry.cameras import Cameras, orbit_cameras

log = logging.getLogger(__name__)


@dataclass
class OrbitSampler:
    """Random orbit cameras around the origin (module docstring). ``elevation`` is the input view's, ours."""

    elevation: float = 0.0
    radius: float = 2.0
    fovy: float = 49.1
    min_ver: int = -30
    max_ver: int = 30
    views: int = 1
    max_abs_elevation: float = 80.0

    def elevation_range(self) -> tuple[int, int]:
        """``[lo, hi)`` of the integer offset added to the input elevation in DreamGaussian's convention."""
        e = -self.elevation  # DreamGaussian's (negative above)
        lo = max(min(self.min_ver, self.min_ver - e), -self.max_abs_elevation - e)
        hi = min(max(self.max_ver, self.max_ver - e), self.max_abs_elevation - e)
        return int(round(lo)), int(round(hi))

    def sample(self, size: int, generator: torch.Generator, progress: float = 1.0
               ) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        """``(cameras [views], elevations [views], azimuths [views])`` (degrees, ours) at ``size x size`` pixels
        (``progress``, the stage's fraction done, matters to :class:`OpeningOrbitSampler` only)."""
        lo, hi = self.elevation_range()
        ver = int(torch.randint(lo, max(hi, lo + 1), (1,), generator=generator))
        hor = int(torch.randint(-180, 180, (1,), generator=generator))
        el = torch.full((self.views,), -(-self.elevation + ver), dtype=torch.float32)
        az = (hor + 90.0 * torch.arange(self.views, dtype=torch.float32) + 180.0) % 360.0 - 180.0
        return orbit_cameras(el, az, self.radius, self.fovy, size, size), el, az

    def reference(self, size: int) -> Cameras:
        """The input view's camera: the input elevation, azimuth 0 (the object's front faces -Y)."""
        return orbit_cameras(self.elevation, 0.0, self.radius, self.fovy, size, size)


@dataclass
class OpeningOrbitSampler:
    """threestudio's progressive random cameras (DreamCraft3D): one camera at a fixed ``radius``/``fovy``, elevation
    ~ U[``elevation_range``] and azimuth ~ U[-180, 180), both ranges widening linearly from the input view
    (``elevation``, azimuth 0) to their full size by ``progress = opening`` (``progressive_until`` / steps)."""

    elevation: float = 0.0
    radius: float = 3.8
    fovy: float = 20.0
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    opening: float = 0.0

    def sample(self, size: int, generator: torch.Generator, progress: float = 1.0
               ) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        """``(cameras [1], elevations [1], azimuths [1])`` (degrees, ours) at ``size x size`` pixels."""
        r = min(progress / self.opening, 1.0) if self.opening > 0 else 1.0
        lo, hi = ((1 - r) * self.elevation + r * e for e in self.elevation_range)
        u = torch.rand(2, generator=generator)
        el = (lo + (hi - lo) * u[:1]).float()
        az = (r * (360.0 * u[1:] - 180.0)).float()
        return orbit_cameras(el, az, self.radius, self.fovy, size, size), el, az

    def reference(self, size: int) -> Cameras:
        """The input view's camera: the input elevation, azimuth 0."""
        return orbit_cameras(self.elevation, 0.0, self.radius, self.fovy, size, size)


@dataclass
class MultiViewSampler:
    """MVDream's random views: a group is ``views`` cameras evenly spaced in azimuth (the model's trained order) from
    an offset ~ U[-180, 180), sharing an elevation ~ U[``elevation_range``], a fovy ~ U[``fovy_range``] and a
    distance ``r / tan(fovy / 2)`` with ``r`` ~ U[``relative_radius``] (threestudio's relative radius: the half-width
    seen at the origin). Renders of at most ``low_res`` pixels come in ``low_res_groups`` groups (MVDream: 2 groups
    at 64², 1 at 256²). The reference view (image methods): elevation ``elevation``, azimuth 0, the middle fovy and
    the largest relative radius."""

    elevation_range: tuple[float, float] = (0.0, 30.0)
    fovy_range: tuple[float, float] = (15.0, 60.0)
    relative_radius: tuple[float, float] = (0.8, 1.0)
    views: int = 4
    elevation: float = 0.0
    low_res: int = 64
    low_res_groups: int = 2

    def sample(self, size: int, generator: torch.Generator, progress: float = 1.0
               ) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        """``(cameras [G·views], elevations, azimuths)`` (degrees, ours) at ``size x size`` pixels, groups of
        ``views`` consecutive."""
        groups = self.low_res_groups if size <= self.low_res else 1
        u = torch.rand(groups, 4, generator=generator)
        lerp = lambda r, x: r[0] + x * (r[1] - r[0])  # noqa: E731
        el, fovy, rel = lerp(self.elevation_range, u[:, 0]), lerp(self.fovy_range, u[:, 1]), lerp(
            self.relative_radius, u[:, 2])
        az = (360.0 * u[:, 3:] + 360.0 / self.views * torch.arange(self.views, dtype=torch.float32)) % 360.0 - 180.0
        cams = [orbit_cameras(e, a, self._distance(float(r), float(f)), float(f), size, size)
                for e, a, r, f in zip(el, az, rel, fovy)]
        cams = Cameras(torch.cat([c.K for c in cams]), torch.cat([c.c2w for c in cams]), size, size)
        return cams, el.repeat_interleave(self.views), az.reshape(-1)

    def _distance(self, relative: float, fovy: float) -> float:
        return relative / math.tan(math.radians(fovy) / 2)

    def reference(self, size: int) -> Cameras:
        fovy = sum(self.fovy_range) / 2
        return orbit_cameras(self.elevation, 0.0, self._distance(self.relative_radius[1], fovy), fovy, size, size)


@dataclass
class Term:
    """One prior in the mix: ``kind`` is ``zero123``, ``sd`` or ``mvdream``; ``weight`` multiplies its loss."""

    kind: str
    prior: object
    weight: float
    #: a score-distillation variant from :mod:`backend.guidance.distillation` (None = the prior's default)
    distillation: object | None = None
    prompt: str = ""
    negative_prompt: str = ""
    view_dependent: bool = False
    radius: float = 0.0
    #: this term's own timestep schedule (None = the guide's)
    schedule: object | None = None
    #: Zero123 only: scale the loss by the angle between the view and the prior's reference view over 180°
    #: (Magic123's default ``zero123_grad_scale: angle``; the mean over the batch, which is 1 view there)
    angle_scaled: bool = False

    def scale(self, el: torch.Tensor, az: torch.Tensor) -> float:
        """The term's loss weight for views at ``el``, ``az`` (degrees)."""
        if not self.angle_scaled:
            return self.weight
        ref = self.prior.reference
        e1, a1 = torch.deg2rad(el.float()), torch.deg2rad(az.float())
        e2, a2 = math.radians(ref["elevation"]), math.radians(ref["azimuth"])
        cos = torch.sin(e1) * math.sin(e2) + torch.cos(e1) * math.cos(e2) * torch.cos(a1 - a2)
        return self.weight * float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).mean()) / 180.0


@dataclass
class Guide:
    """Priors + schedule + distillation for one run (module docstring)."""

    terms: list[Term]
    schedule: object
    generator: torch.Generator | None = field(default=None, repr=False)

    def _condition(self, term: Term, cams: Cameras, el: torch.Tensor, az: torch.Tensor):
        if term.kind == "zero123":
            return term.prior.condition(el, az, term.radius)
        if term.kind == "mvdream":
            return term.prior.condition(term.prompt, term.negative_prompt, cameras=cams)
        angles = {"elevation": el, "azimuth": az} if term.view_dependent else {}
        return term.prior.condition(term.prompt, term.negative_prompt, batch_size=len(el), **angles)

    def losses(self, images: torch.Tensor, cams: Cameras, el: torch.Tensor, az: torch.Tensor,
               progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of every term's ``loss_*`` for renders ``images [B,3,H,W]`` in [0,1] of ``cams``."""
        total = images.new_zeros(())
        logs: dict[str, float] = {}
        for term in self.terms:
            if term.weight == 0:
                continue
            cond = self._condition(term, cams, el, az)
            # one timestep for the whole batch (DreamGaussian); MVDream repeats it over each group of views
            t = (term.schedule or self.schedule)(progress, 1, generator=self.generator)
            t = t if term.kind == "mvdream" else t.expand(len(el))
            out = term.prior(images, cond, t, term.distillation, progress=progress)
            loss = sum(v for k, v in out.items() if k.startswith("loss_"))
            total = total + term.scale(el, az) * loss
            logs[f"{term.kind}_loss"] = float(loss.detach())
            logs[f"{term.kind}_t"] = int(t[0])
        return total, logs

    @torch.no_grad()
    def targets(self, images: torch.Tensor, cams: Cameras, el: torch.Tensor, az: torch.Tensor,
                strength: float, steps: int) -> list[tuple[float, torch.Tensor]]:
        """SDEdit targets ``[(weight, image [B,3,H,W])]``: each prior's ``refine`` of ``images`` (diffusers'
        strength convention), resized back to the renders' size."""
        out = []
        for term in self.terms:
            if term.weight == 0:
                continue
            cond = self._condition(term, cams, el, az)
            refined = term.prior.refine(images, cond, strength=strength, steps=steps, generator=self.generator)
            out.append((term.weight, F.interpolate(refined, images.shape[-2:], mode="bilinear", align_corners=False)))
        return out


def dreamgaussian_strength(progress: float, steps: int, start: float = 0.8, end: float = 0.95) -> float:
    """DreamGaussian's stage-2 SDEdit strength ``start + (end - start)·progress`` (its convention: the DDIM step
    index it starts from, so 0.8 keeps 10 of 50 steps) as diffusers' strength (the fraction of steps re-run)."""
    s_dg = start + (end - start) * min(max(progress, 0.0), 1.0)
    return (steps - int(steps * s_dg)) / steps


def load_prior(ctx, kind: str, name: str, path: str | None, guidance_scale: float | None):
    """Load (or reuse from ``ctx.cache``) the prior registry entry ``name`` of ``kind`` (``zero123``, ``mvdream``,
    ``imagedream`` or ``sd``) with CFG ``guidance_scale`` (None: the prior's default; 100 for MVDream as
    DreamGaussian). Returns ``(prior, weights info for meta.json)``."""
    from .. import weights

    folder = weights.resolve(name, path)
    key = f"prior:{name}:{folder.resolve()}:{ctx.device}"
    if key not in ctx.cache:
        if kind == "zero123":
            from ..guidance.priors.zero123 import Zero123Prior as cls
        elif kind == "mvdream":
            from ..guidance.priors.mvdream import MVDreamPrior as cls
        elif kind == "imagedream":
            from ..guidance.priors.mvdream import ImageDreamPrior as cls
        else:
            from ..guidance.priors.sd import StableDiffusionPrior as cls
        extra = {"stable": weights.get_entry(name).extra.get("stable", False)} if kind == "zero123" else {}
        ctx.cache[key] = cls(folder, device=ctx.device, **extra)
    prior = ctx.cache[key]
    default = {"mvdream": 100.0}.get(kind, type(prior).guidance_scale)  # DreamGaussian's MVDream CFG is 100
    prior.guidance_scale = guidance_scale or default
    entry = weights.get_entry(name)
    return prior, {"name": name, "path": str(folder), "tiny": weights.is_tiny(folder), "license": entry.license}
