"""DreamGaussian: input handling, camera sampling, and both methods end to end through the CLI with tiny priors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.errors import BadInput
from backend.geometry import image_prep
from backend.pipelines.dreamgaussian_guidance import OrbitSampler, dreamgaussian_strength

REPO = Path(__file__).resolve().parents[1]


def _disc_rgba(size=(120, 160), centre=(40, 100), radius=20) -> np.ndarray:
    """An opaque red disc on a transparent canvas ``[H, W, 4]`` uint8."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    img = np.zeros((h, w, 4), np.uint8)
    img[inside] = (220, 40, 30, 255)
    return img


# --- input handling ----------------------------------------------------------------------------------------------
def test_rgba_is_recentred_with_the_border_ratio(tmp_path):
    path = tmp_path / "disc.png"
    Image.fromarray(_disc_rgba()).save(path)
    out = image_prep.prepare_reference(path, 100, border_ratio=0.2)
    assert out.shape == (100, 100, 4)
    ys, xs = np.nonzero(out[..., 3] > 0.5)
    # the disc's 41-pixel diameter becomes 80 % of the side, centred
    assert abs((ys.max() - ys.min() + 1) - 80) <= 2 and abs((xs.max() - xs.min() + 1) - 80) <= 2
    assert abs((ys.max() + ys.min()) / 2 - 49.5) <= 1 and abs((xs.max() + xs.min()) / 2 - 49.5) <= 1
    # colour is straight (not darkened at the edge by premultiplication)
    edge = (out[..., 3] > 0.1) & (out[..., 3] < 0.9)
    assert edge.any() and np.allclose(out[edge, 0], 220 / 255, atol=0.02)


def test_opaque_image_without_rembg_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_models"))
    rgb = tmp_path / "photo.jpg"
    Image.fromarray(_disc_rgba()[..., :3]).save(rgb)
    with pytest.raises(BadInput) as e:
        image_prep.prepare_reference(rgb, 64)
    assert "RGBA" in e.value.message and "rembg" in e.value.message and "photo.jpg" in e.value.message
    # an RGBA file whose alpha is 1 everywhere carries no mask either
    opaque = _disc_rgba()
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    with pytest.raises(BadInput):
        image_prep.prepare_reference(tmp_path / "opaque.png", 64)


def test_empty_mask_is_bad_input(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "e.png")
    with pytest.raises(BadInput, match="empty"):
        image_prep.prepare_reference(tmp_path / "e.png", 16)


# --- cameras and schedules -------------------------------------------------------------------------------------
def test_orbit_sampler_matches_dreamgaussian_ranges():
    # DreamGaussian: min_ver = max(min(-30, -30 - e), -80 - e), max_ver = min(max(30, 30 - e), 80 - e), e its elevation
    for ours in (0.0, 30.0, -60.0, 70.0):
        e = -ours
        expected = (max(min(-30, -30 - e), -80 - e), min(max(30, 30 - e), 80 - e))
        assert OrbitSampler(elevation=ours).elevation_range() == expected
    s = OrbitSampler(elevation=20.0, radius=2.0, views=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        cams, el, az = s.sample(32, g)
        # absolute elevations cover [min(e - 30, -30), max(e + 30, 30)] (ours: e = 20 -> (-30, 50])
        assert len(cams) == 4 and torch.all(el > -30) and torch.all(el <= 50)
        assert torch.allclose(cams.centers.norm(dim=-1), torch.tensor(2.0), atol=1e-5)
        d = (az[1:] - az[:-1]) % 360
        assert torch.allclose(d, torch.tensor(90.0))
        # the camera is where spherical coordinates put it (Z up, az 0 on -Y, az 90 on +X)
        er, ar = torch.deg2rad(el), torch.deg2rad(az)
        pos = 2.0 * torch.stack([er.cos() * ar.sin(), -er.cos() * ar.cos(), er.sin()], -1)
        assert torch.allclose(cams.centers, pos, atol=1e-4)
    ref = s.reference(16)
    assert torch.allclose(ref.centers[0], 2.0 * torch.tensor([0.0, -math.cos(math.radians(20)),
                                                               math.sin(math.radians(20))]), atol=1e-5)


def test_refine_strength_is_dreamgaussians_in_diffusers_convention():
    # DreamGaussian re-runs 50 - int(50 * (0.8 + 0.15 r)) DDIM steps: 10 at the start, 3 at the end
    assert round(dreamgaussian_strength(0.0, 50) * 50) == 10
    assert round(dreamgaussian_strength(1.0, 50) * 50) == 3
    assert round(dreamgaussian_strength(0.5, 50) * 50) == 50 - int(50 * 0.875)
