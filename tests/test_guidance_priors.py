"""Every prior loads the tiny models (real hub layouts) through the registry and from_pretrained, and runs forward
and backward on the CPU; pose and camera conventions are checked against independent constructions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gen3d.backend.errors import MissingWeights
from gen3d.backend.geometry.cameras import elevation_from_dreamgaussian, orbit_angles, orbit_cameras
from gen3d.backend.guidance.distillation import BSD, CSD, SDS, VSD
from gen3d.backend.guidance.schedules import DreamTime
from gen3d.backend.guidance.priors.text import view_direction
from gen3d.backend.models.zero123 import relative_pose


@pytest.fixture(scope="module")
def weights_env(tiny_weights):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))
        yield tiny_weights


@pytest.fixture(scope="module")
def sd(weights_env):
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior

    return StableDiffusionPrior.from_registry("sd21-base")


def _renders(b=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g).requires_grad_(True)


# ---------------------------------------------------------------- conventions (no models)

def test_view_directions_follow_our_orbit_convention():
    assert view_direction(0, 0) == "front" and view_direction(0, 30) == "front"
    assert view_direction(0, 90) == "side" and view_direction(0, -90) == "side"
    assert view_direction(0, 180) == "back" and view_direction(0, -170) == "back" and view_direction(0, 530) == "back"
    assert view_direction(75, 0) == "overhead"


def _polar_azimuth(cams):
    """Polar angle from +Z and azimuth of camera centres, computed from positions (independent of the formula)."""
    p = cams.c2w[:, :3, 3]
    polar = torch.acos(p[:, 2] / p.norm(dim=-1))
    az = torch.atan2(p[:, 0], -p[:, 1])
    return polar, az


@pytest.mark.parametrize("ref_el,ref_az", [(0.0, 0.0), (20.0, -40.0)])
def test_zero123_pose_is_the_change_of_polar_angle_and_azimuth(ref_el, ref_az):
    el, az, r = torch.tensor([30.0, -15.0, 0.0]), torch.tensor([0.0, 90.0, 200.0]), torch.tensor([2.0, 2.5, 1.5])
    target = orbit_cameras(el, az, r, 40, 64, 64)
    ref = orbit_cameras(ref_el, ref_az, 2.0, 40, 64, 64)
    polar_t, az_t = _polar_azimuth(target)
    polar_r, az_r = _polar_azimuth(ref)
    pose = relative_pose(el, az, r, ref_el, ref_az, 2.0)
    torch.testing.assert_close(pose[:, 0], polar_t - polar_r, atol=1e-5, rtol=0)  # camera above -> negative
    torch.testing.assert_close(pose[:, 1], torch.sin(az_t - az_r), atol=1e-5, rtol=0)
    torch.testing.assert_close(pose[:, 2], torch.cos(az_t - az_r), atol=1e-5, rtol=0)
    torch.testing.assert_close(pose[:, 3], r - 2.0)
    angles = orbit_angles(target.c2w)
    torch.testing.assert_close(angles[:, 0], el, atol=1e-4, rtol=0)


def test_zero123_pose_matches_dreamgaussian_and_stable_zero123():
    # DreamGaussian: polar entry = deg2rad(target_el_dg - ref_el_dg) with its negative-above elevations
    ref_dg, tgt_dg = -10.0, -40.0  # both above the object in DreamGaussian's convention
    pose = relative_pose(elevation_from_dreamgaussian(tgt_dg), 60.0, 0.0, elevation_from_dreamgaussian(ref_dg))
    assert float(pose[0, 0]) == pytest.approx(math.radians(tgt_dg - ref_dg))
    # Stable Zero123: the last entry is the reference view's polar angle, deg2rad(90 + el_dg) in DreamGaussian
    stable = relative_pose(10.0, 0.0, 0.0, elevation_from_dreamgaussian(ref_dg), stable=True)
    assert float(stable[0, 3]) == pytest.approx(math.radians(90 + ref_dg))


def test_mvdream_cameras_match_mvdreams_own_construction():
    from gen3d.backend.guidance.priors.mvdream import mvdream_cameras

    def mvdream_get_camera(elevation, azimuth):  # MVDream camera_utils, re-derived in numpy
        el, az = np.radians(elevation), np.radians(azimuth)
        pos = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        forward = -pos / np.linalg.norm(pos)
        right = np.cross(forward, [0, 1, 0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        m = np.eye(4)
        m[:3, :3] = np.stack([right, up, -forward], 1)
        m[:3, 3] = pos
        flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        return (flip @ m).flatten()

    els, azs = [15.0, 15.0, 0.0, 30.0], [0.0, 90.0, 180.0, 270.0]
    ours = mvdream_cameras(orbit_cameras(torch.tensor(els), torch.tensor(azs), 3.7, 40, 64, 64).c2w)
    ref = np.stack([mvdream_get_camera(e, a) for e, a in zip(els, azs)])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


# ---------------------------------------------------------------- models

def test_missing_weights_name_the_download_command(tmp_path, monkeypatch):
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(MissingWeights) as e:
        StableDiffusionPrior.from_registry("sd15")
    assert "python -m gen3d weights download sd15" in e.value.message
    assert e.value.detail["command"] == "python -m gen3d weights download sd15"


def test_sd_prior_sds_and_csd_forward_backward(sd):
    assert sd.image_size == 64 and sd.dtype == torch.float32
    cond = sd.condition("a red car", "blurry", elevation=[10.0, 70.0], azimuth=[0.0, 180.0])
    assert set(cond.branches) == {"cond", "plain", "negative", "null"}
    assert not torch.equal(cond.branches["cond"]["encoder_hidden_states"][0],
                           cond.branches["cond"]["encoder_hidden_states"][1])  # front vs overhead prompts
    assert "a red car, overhead view" in sd.text._cache
    x = _renders()
    out = sd(x, cond, torch.tensor([300, 700]))
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and x.grad.abs().sum() > 0 and out["grad_norm"] > 0
    x.grad = None
    out = sd(x, cond, torch.tensor([500, 500]), CSD(), progress=0.3)
    out["loss_csd"].backward()
    assert x.grad.abs().sum() > 0
    x.grad = None
    sd(x, cond, DreamTime(), progress=0.5)["loss_sds"].backward()  # a schedule instead of timesteps
    assert x.grad.abs().sum() > 0
    from_cameras = sd.condition("a red car", "blurry", cameras=orbit_cameras(torch.tensor([10.0, 70.0]),
                                                                             torch.tensor([0.0, 180.0]), 2.0, 40, 8, 8))
    torch.testing.assert_close(from_cameras.branches["cond"]["encoder_hidden_states"],
                               cond.branches["cond"]["encoder_hidden_states"])


def test_sd15_layout_loads(weights_env):
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior

    prior = StableDiffusionPrior.from_registry("sd15")
    assert not prior.unet.config.use_linear_projection  # the SD 1.x layout
    x = _renders(1)
    prior(x, prior.condition("a chair"), torch.tensor([400]))["loss_sds"].backward()
    assert x.grad.abs().sum() > 0


def test_sdedit_timesteps_match_diffusers_img2img_and_dreamgaussian():
    from types import SimpleNamespace

    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from gen3d.backend.guidance.priors.base import sdedit_timesteps

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    sched.set_timesteps(50)
    for strength in (0.0, 0.2, 0.35, 0.5, 1.0):
        ref, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=sched), 50, strength, "cpu")
        assert torch.equal(sdedit_timesteps(sched, strength, 50), ref)
    sched.set_timesteps(43)
    for k in range(44):  # exact for every step count: (43 - 12) / 43 * 43 is 30.999999999999996 in floats
        assert len(sdedit_timesteps(sched, (43 - k) / 43, 43)) == 43 - k
    sched.set_timesteps(50)
    for dg_strength in (0.8, 0.9):  # DreamGaussian: timesteps[int(50 * strength):]
        ours = sdedit_timesteps(sched, round(1 - dg_strength, 6), 50)
        assert torch.equal(ours, sched.timesteps[int(50 * dg_strength):])


def test_refine_strength_convention(sd):
    cond = sd.condition("a cup")
    x = torch.rand(1, 3, 64, 64)
    torch.manual_seed(0)
    unchanged = sd.refine(x, cond, strength=0.0, steps=10)
    torch.manual_seed(0)
    roundtrip = sd.decode(sd.encode(x))
    torch.testing.assert_close(unchanged, roundtrip)  # strength 0 = nothing re-run
    refined = sd.refine(x, cond, strength=0.5, steps=10, generator=torch.Generator().manual_seed(1))
    assert refined.shape == (1, 3, 64, 64) and 0 <= refined.min() and refined.max() <= 1
    assert (refined - unchanged).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="strength"):
        sd.refine(x, cond, strength=1.5)


def test_vsd_trains_its_estimator_without_touching_the_pretrained_prior(sd):
    cond = sd.condition("a red car", elevation=[0.0, 0.0], azimuth=[0.0, 90.0])
    cams = orbit_cameras(0.0, torch.tensor([0.0, 90.0]), 2.0, 40, 48, 48).c2w
    z_t, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    before = sd.predict(z_t, t, cond, ("cond",))[0]
    vsd = VSD(sd, guidance_scale_lora=2.0)
    try:
        params = vsd.trainable_parameters(sd)
        opt = torch.optim.Adam(params, lr=1e-2)
        x = _renders()
        out = sd(x, cond, t, vsd, cameras=cams)
        (out["loss_vsd"] + out["loss_lora"]).backward()
        assert x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in params) and len(params) > 2
        opt.step()
        torch.testing.assert_close(sd.predict(z_t, t, cond, ("cond",))[0], before)  # adapters off for the prior
        estimator = vsd._eps_with(sd, vsd.adapter, vsd.camera_embedding, z_t, t, cond, ("cond",), cams.flatten(1))[0]
        assert (estimator - before).abs().max() > 1e-4
    finally:
        vsd.remove(sd)
    torch.testing.assert_close(sd.predict(z_t, t, cond, ("cond",))[0], before)


def test_bsd_teacher_is_fine_tuned_on_augmented_renders(sd):
    cond = sd.condition("a red car")
    cams = orbit_cameras(10.0, 0.0, 2.0, 40, 64, 64).c2w
    bsd = BSD(sd)
    try:
        x = _renders(1, 64)
        augmented = sd.refine(x.detach(), cond, strength=0.3, steps=4)
        loss = bsd.teacher_loss(sd, augmented, cond, cams)["loss_pretrain"]
        loss.backward()
        assert all(p.grad is not None for p in bsd.teacher_parameters(sd))
        out = sd(x, cond, torch.tensor([300]), bsd, cameras=cams)
        (out["loss_vsd"] + out["loss_lora"]).backward()
        assert x.grad.abs().sum() > 0
    finally:
        bsd.remove(sd)


@pytest.mark.parametrize("name", ["zero123-xl", "zero123-105000", "stable-zero123"])
def test_zero123_prior_both_layouts(weights_env, name):
    from gen3d.backend.guidance.priors.zero123 import Zero123Prior

    prior = Zero123Prior.from_registry(name)
    assert prior.stable == (name == "stable-zero123")
    assert prior.unet.config.in_channels == 8
    prior.set_reference(torch.rand(1, 3, 80, 80), elevation=10.0, azimuth=0.0, radius=2.0)
    cond = prior.condition(elevation=[0.0, 30.0], azimuth=[45.0, 180.0], radius=2.0)
    cams = orbit_cameras(torch.tensor([0.0, 30.0]), torch.tensor([45.0, 180.0]), 2.0, 40, 8, 8)
    torch.testing.assert_close(prior.condition(cameras=cams).extra["pose"], cond.extra["pose"], atol=1e-5, rtol=0)
    assert cond.branches["cond"]["encoder_hidden_states"].shape == (2, 1, 32)
    assert torch.count_nonzero(cond.branches["negative"]["concat"]) == 0
    x = _renders()
    out = prior(x, cond, torch.tensor([200, 800]), SDS())
    out["loss_sds"].backward()
    assert x.grad.abs().sum() > 0
    assert prior.refine(x.detach(), cond, strength=0.5, steps=4).shape == (2, 3, 64, 64)


def test_mvdream_prior_forward_backward(weights_env):
    from gen3d.backend.guidance.priors.mvdream import MVDreamPrior

    prior = MVDreamPrior.from_registry()
    cams = orbit_cameras(15.0, torch.tensor([0.0, 90.0, 180.0, 270.0]), 2.0, 40, 48, 48)
    cond = prior.condition("a corgi", "low quality", cams)
    x = _renders(4)
    out = prior(x, cond, torch.tensor([600]))  # one t per group of 4 views
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of 4"):
        prior.condition("a corgi", cameras=cams.c2w[:3])


@pytest.mark.parametrize("base", ["sd15", "sdxl-base"])
def test_controlnet_canny_generates_and_refines(weights_env, base):
    from gen3d.backend.guidance.priors.controlnet import ControlNetCanny, canny

    cn = ControlNetCanny.from_registry(base)
    img = torch.zeros(1, 3, 64, 64)
    img[:, :, 16:48, 16:48] = 1.0
    edges = canny(img)
    assert edges.shape == (1, 3, 64, 64) and edges.max() == 1 and edges[0, 0, 32, 32] == 0
    out = cn.generate(edges, "a box", steps=2)
    assert out.shape == (1, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    assert cn.refine(out, edges, "a box", strength=0.5, steps=2).shape == (1, 3, 64, 64)
