"""Timestep schedules for score distillation: which diffusion timestep each training step uses.

A schedule is called as ``schedule(progress, batch_size, generator=None) -> LongTensor [batch_size]`` with
``progress = step / total_steps`` in [0, 1]. Bounds are fractions of ``num_train_timesteps`` (T, 1000 for SD).

- :class:`Uniform`: ``t ~ U[t_min, t_max]`` per item (DreamFusion); the bounds may anneal linearly with progress
  (ProlificDreamer's max 0.98 -> 0.5, MVDream's min 0.98 -> 0.02 and max 0.98 -> 0.5).
- :class:`LinearAnneal`: deterministic ``t = (1 - p)·T`` clipped to the bounds (DreamGaussian).
- :class:`SqrtAnneal`: deterministic ``t = T·(t_min + (t_max - t_min)·(1 - sqrt(p)))`` (HiFA).
- :class:`DreamTime`: deterministic ``t(p)``, the largest t whose mass ``Σ_{t' >= t} W(t')`` reaches ``p``, where
  ``W(t) = w_d(t)·w_p(t)`` (as in the first author's ``DreamWaltz-G/core/guidance/time_prior.py``);
  ``w_d = sqrt((1 - ᾱ_t)/ᾱ_t)`` and ``w_p`` is the plateau prior (1 on [m2, m1], Gaussian tails with s1 above m1
  and s2 below m2; DreamTime's m1=800, s1=300, m2=500, s2=100).

The deterministic schedules are non-increasing in progress and give the whole batch the same t.
"""

from __future__ import annotations

import math

import torch


def sd_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> torch.Tensor:
    """``ᾱ_t [T]`` of Stable Diffusion's scaled-linear schedule (float64)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class Schedule:
    """Base: bounds ``[t_min, t_max]`` as fractions of ``num_train_timesteps``."""

    deterministic = True

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98, num_train_timesteps: int = 1000):
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min <= t_max <= 1, got {t_min}, {t_max}")
        self.t_min, self.t_max, self.T = t_min, t_max, num_train_timesteps

    def bounds(self, progress: float) -> tuple[int, int]:
        return int(round(self.t_min * self.T)), int(round(self.t_max * self.T))

    def timestep(self, progress: float) -> int:
        raise NotImplementedError

    def __call__(self, progress: float, batch_size: int = 1, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        progress = min(max(float(progress), 0.0), 1.0)
        return torch.full((batch_size,), self.timestep(progress), dtype=torch.long, device=device)


class Uniform(Schedule):
    """``t ~ U[t_min(p), t_max(p)]``; the bounds move linearly to ``*_end`` by ``progress = anneal_end``."""

    deterministic = False

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98, t_min_end: float | None = None,
                 t_max_end: float | None = None, anneal_end: float = 1.0, num_train_timesteps: int = 1000):
        super().__init__(t_min, t_max, num_train_timesteps)
        self.t_min_end = t_min if t_min_end is None else t_min_end
        self.t_max_end = t_max if t_max_end is None else t_max_end
        self.anneal_end = anneal_end

    def bounds(self, progress: float) -> tuple[int, int]:
        a = min(progress / self.anneal_end, 1.0) if self.anneal_end > 0 else 1.0
        lo = self.t_min + a * (self.t_min_end - self.t_min)
        hi = self.t_max + a * (self.t_max_end - self.t_max)
        lo, hi = int(round(lo * self.T)), int(round(hi * self.T))
        return min(lo, hi), max(lo, hi)

    def __call__(self, progress, batch_size=1, generator=None, device="cpu"):
        lo, hi = self.bounds(min(max(float(progress), 0.0), 1.0))
        return torch.randint(lo, hi + 1, (batch_size,), generator=generator).to(device)


class LinearAnneal(Schedule):
    """DreamGaussian: ``t = round((1 - p)·T)`` clipped to ``[t_min·T, t_max·T]``."""

    def timestep(self, progress: float) -> int:
        lo, hi = self.bounds(progress)
        return int(min(max(round((1.0 - progress) * self.T), lo), hi))


class SqrtAnneal(Schedule):
    """HiFA: ``t = T·(t_min + (t_max - t_min)·(1 - sqrt(p)))``."""

    def timestep(self, progress: float) -> int:
        return int(round(self.T * (self.t_min + (self.t_max - self.t_min) * (1.0 - math.sqrt(progress)))))


def plateau_prior(t: torch.Tensor, m1: float = 800, s1: float = 300, m2: float = 500, s2: float = 100) -> torch.Tensor:
    """DreamTime's prior ``w_p(t)``: 1 on [m2, m1], ``exp(-(t-m1)²/2s1²)`` above m1, ``exp(-(t-m2)²/2s2²)`` below m2."""
    t = t.double()
    above = torch.exp(-((t - m1) ** 2) / (2 * s1 ** 2))
    below = torch.exp(-((t - m2) ** 2) / (2 * s2 ** 2))
    return torch.where(t > m1, above, torch.where(t < m2, below, torch.ones_like(t)))


class DreamTime(Schedule):
    """Time-prioritised schedule: ``t(p) = max{t : Σ_{t' >= t} W(t') >= p}`` over ``t in [t_min·T, t_max·T]``.

    ``W(t) = w_d(t)·w_p(t)`` normalised to sum 1 over the range; ``alphas_cumprod`` defaults to SD's schedule.
    """

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98, m1: float = 800, s1: float = 300, m2: float = 500,
                 s2: float = 100, alphas_cumprod: torch.Tensor | None = None, num_train_timesteps: int = 1000):
        super().__init__(t_min, t_max, num_train_timesteps)
        ac = (sd_alphas_cumprod(num_train_timesteps) if alphas_cumprod is None else alphas_cumprod).double().cpu()
        lo, hi = self.bounds(0.0)
        self.ts = torch.arange(lo, hi + 1)
        a = ac[self.ts]
        w = torch.sqrt((1 - a) / a) * plateau_prior(self.ts, m1, s1, m2, s2)
        self.weights = w / w.sum()
        #: ``cumulative[k] = Σ_{t >= t_max - k} W(t)``: the mass above each t, from t_max down to t_min
        self.cumulative = torch.cumsum(torch.flip(self.weights, [0]), 0)

    def timestep(self, progress: float) -> int:
        # the largest t whose mass above reaches the progress (the author's bisect_left), so t falls as p grows
        k = int(torch.searchsorted(self.cumulative, torch.tensor([progress], dtype=torch.float64)))
        return max(int(self.ts[-1]) - k, int(self.ts[0]))


SCHEDULES = {"uniform": Uniform, "linear": LinearAnneal, "sqrt": SqrtAnneal, "dreamtime": DreamTime}


def make_schedule(name: str, **kwargs) -> Schedule:
    """``make_schedule("dreamtime", t_min=0.02)``; names: uniform, linear, sqrt, dreamtime."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown timestep schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
