"""Timestep schedules: bounds, determinism, monotonicity, and DreamTime's mass against an independent W(t)."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import torch

from gen3d.backend.guidance.schedules import DreamTime, LinearAnneal, SqrtAnneal, Uniform, make_schedule

PROGRESS = np.linspace(0.0, 1.0, 2001)


def _sd_alphas_cumprod_numpy(T=1000, b0=0.00085, b1=0.012):
    betas = np.linspace(math.sqrt(b0), math.sqrt(b1), T) ** 2
    return np.cumprod(1 - betas)


def _dreamtime_weights_numpy(ts, m1=800, s1=300, m2=500, s2=100):
    """W(t) written from the paper's description, independently of the module."""
    a = _sd_alphas_cumprod_numpy()[ts]
    w_d = np.sqrt((1 - a) / a)
    w_p = np.array([math.exp(-(t - m1) ** 2 / (2 * s1 ** 2)) if t > m1 else
                    (math.exp(-(t - m2) ** 2 / (2 * s2 ** 2)) if t < m2 else 1.0) for t in ts])
    w = w_d * w_p
    return w / w.sum()


@pytest.mark.parametrize("schedule", [LinearAnneal(), SqrtAnneal(), DreamTime()])
def test_deterministic_schedules_are_non_increasing_and_within_bounds(schedule):
    ts = [int(schedule(p, 3)[0]) for p in PROGRESS]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert min(ts) >= 20 and max(ts) <= 980
    assert ts[0] > 900 and ts[-1] < 100
    batch = schedule(0.37, 5)
    assert batch.dtype == torch.long and batch.shape == (5,) and len(set(batch.tolist())) == 1
    assert torch.equal(schedule(0.37, 5), batch)


def test_linear_anneal_matches_dreamgaussian_formula():
    s = LinearAnneal()
    for p in (0.0, 0.25, 0.5, 0.999, 1.0):
        assert int(s(p)[0]) == int(np.clip(round((1 - p) * 1000), 20, 980))


def test_sqrt_anneal_matches_hifa_formula():
    s = SqrtAnneal(0.02, 0.98)
    for p in (0.0, 0.16, 0.64, 1.0):
        assert int(s(p)[0]) == round(1000 * ((0.98 - 0.02) * (1 - math.sqrt(p)) + 0.02))


def test_dreamtime_mass_matches_w():
    """The fraction of training spent at t >= t0 equals the mass of W over [t0, t_max]."""
    s = DreamTime()
    ts = np.arange(20, 981)
    w = _dreamtime_weights_numpy(ts)
    schedule_t = np.array([int(s(p)[0]) for p in PROGRESS])
    for t0 in (100, 300, 500, 650, 800, 900):
        expected = w[ts >= t0].sum()
        fraction = (schedule_t >= t0).mean()
        assert abs(fraction - expected) < 2e-3, (t0, fraction, expected)
    # the first author's mapping: t = t_max - bisect_left(cumsum(flip(W)), p)
    cumulative = np.cumsum(w[::-1])
    author = [max(980 - bisect.bisect_left(cumulative.tolist(), p), 20) for p in PROGRESS]
    assert np.abs(schedule_t - np.array(author)).max() <= 1


def test_uniform_bounds_anneal():
    s = Uniform(0.98, 0.98, t_min_end=0.02, t_max_end=0.5, anneal_end=0.8)  # MVDream's annealing
    g = torch.Generator().manual_seed(0)
    assert set(s(0.0, 64, g).tolist()) == {980}
    late = s(0.9, 4096, g)
    assert late.min() >= 20 and late.max() <= 500 and late.float().std() > 100
    mid = s.bounds(0.4)
    assert mid == (round((0.98 - 0.5 * 0.96) * 1000), round((0.98 - 0.5 * 0.48) * 1000))


def test_make_schedule_names():
    assert isinstance(make_schedule("dreamtime"), DreamTime)
    with pytest.raises(ValueError, match="unknown timestep schedule"):
        make_schedule("cosine")
