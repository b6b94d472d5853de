"""DMV3D model and diffusion against independent references (hand-computed rays, the LRM block, diffusers' DDIM)."""

from __future__ import annotations

import numpy as np
import torch

from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.models.dmv3d import (CONFIGS, DMV3D, Schedule, fresh_dmv3d, load_dmv3d, plucker_rays,
                                        sample_triplane, save_dmv3d)
from gen3d.backend.models.lrm.transformer import TriplaneBlock


def test_plucker_rays_match_a_hand_computed_pinhole():
    cams = orbit_cameras(torch.tensor([15.0, -30.0]), torch.tensor([40.0, 200.0]), 2.3, 50.0, 6, 4)
    origins, dirs = cams.pixel_rays()
    got = plucker_rays(origins, dirs).numpy()  # [2, 6, 4, 6]
    for n in range(2):
        K, c2w = cams.K[n].double().numpy(), cams.c2w[n].double().numpy()
        o = c2w[:3, 3]
        for v in range(4):
            for u in range(6):
                d = c2w[:3, :3] @ np.linalg.solve(K, [u + 0.5, v + 0.5, 1.0])
                d /= np.linalg.norm(d)
                assert np.abs(got[n, :3, v, u] - np.cross(o, d)).max() < 1e-5
                assert np.abs(got[n, 3:, v, u] - d).max() < 1e-6
    # the moment does not depend on which point of the ray is the origin
    shifted = plucker_rays(origins + 0.7 * dirs, dirs)
    assert torch.allclose(shifted, plucker_rays(origins, dirs), atol=1e-5)


def test_block_with_zero_modulation_is_the_lrm_block():
    cfg = CONFIGS["tiny"].lrm
    torch.manual_seed(0)
    dmv3d_block = TriplaneBlock(cfg)
    lrm_block = TriplaneBlock(cfg.replace(camera_embed_dim=0))
    with torch.no_grad():
        for name, p in dmv3d_block.named_parameters():
            if ".mod." in name:
                p.zero_()
    missing = lrm_block.load_state_dict({k: v for k, v in dmv3d_block.state_dict().items() if ".mod." not in k})
    assert not missing.missing_keys
    x, ctx, t_emb = torch.randn(2, 48, cfg.dim), torch.randn(2, 80, cfg.enc_dim), torch.randn(2, cfg.camera_embed_dim)
    assert torch.allclose(dmv3d_block(x, ctx, t_emb), lrm_block(x, ctx, None), atol=1e-6)
    with torch.no_grad():  # and the timestep does act once the modulation is not zero
        dmv3d_block.norm_self.mod.weight.normal_()
    assert (dmv3d_block(x, ctx, t_emb) - lrm_block(x, ctx, None)).abs().max() > 1e-2


def test_ddim_step_matches_diffusers():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        prediction_type="sample", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                        timestep_spacing="leading")
    ref.set_timesteps(20)
    ours = Schedule.linear(1000, 1e-4, 0.02)
    steps = ours.sampling_steps(20)
    assert steps == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 3, 8, 8, generator=g,
                                                                                     dtype=torch.float64)
    for i, t in enumerate(steps):
        prev = steps[i + 1] if i + 1 < len(steps) else -1
        want = ref.step(x0, t, x_t, eta=0.0).prev_sample
        assert torch.allclose(ours.ddim_step(x_t, x0, t, prev), want, atol=1e-5), t
    # the forward process: abar from the closed form prod(1 - beta)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert abs(float(ours.abar(torch.tensor(499))) - np.prod(1 - betas[:500])) < 1e-6


def test_parameter_counts_and_checkpoint_round_trip(tmp_path):
    counts = {}
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in DMV3D(cfg).parameters()) / 1e6
    assert 0.1 < counts["tiny"] < 0.3 and 1.3 < counts["bench"] < 1.45, counts
    assert 85 < counts["small"] < 95 and 520 < counts["base"] < 535, counts
    model = fresh_dmv3d(CONFIGS["tiny"], seed=3)
    loaded = load_dmv3d(save_dmv3d(model, tmp_path / "w"))
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_sampler_returns_planes_and_one_preview_per_step():
    model = fresh_dmv3d(CONFIGS["tiny"]).eval()
    frames = []
    planes = sample_triplane(model, torch.rand(1, 3, 32, 32), 4, torch.Generator().manual_seed(0),
                             on_step=lambda i, t, x0: frames.append((i, t, tuple(x0.shape))))
    assert planes.shape == (1, 3, 8, 8, 8)
    assert frames == [(i, t, (4, 32, 32, 3)) for i, t in enumerate([750, 500, 250, 0])]


def test_guidance_mixes_the_conditional_and_unconditional_triplanes():
    """One DDIM step from the same noise: the guided triplane is ``u + w (c - u)`` of the conditional run (input
    view) and the unconditional one (blank input, ``source=None``); ``w = 0`` is the unconditional sample."""
    model = fresh_dmv3d(CONFIGS["tiny"], 0)
    with torch.no_grad():  # a nonzero adaLN so that t matters too
        for name, p in model.transformer.named_parameters():
            if ".mod." in name:
                p.normal_(0.0, 0.05)
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    run = lambda src, w: sample_triplane(model, src, 1, torch.Generator().manual_seed(0), guidance=w)  # noqa: E731
    c, u = run(source, 1.0), run(None, 1.0)
    assert (c - u).abs().max() > 1e-3
    torch.testing.assert_close(run(source, 3.0), u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(source, 0.0), u, atol=1e-5, rtol=1e-5)


def test_text_variant_reads_the_text_tokens_and_guides_against_the_empty_prompt():
    """The text variant (blank input view) cross-attends to the projected text tokens; guidance mixes the prompt's
    triplane with the empty prompt's as for the image variant."""
    import dataclasses

    model = fresh_dmv3d(dataclasses.replace(CONFIGS["tiny"], text_dim=16), 0)
    text, null = torch.randn(2, 1, 7, 16, generator=torch.Generator().manual_seed(2))
    run = lambda tokens, w: sample_triplane(model, None, 1, torch.Generator().manual_seed(0),  # noqa: E731
                                            guidance=w, text=tokens, null_text=null)
    c, u = run(text, 1.0), run(null, 1.0)
    assert (c - u).abs().max() > 1e-3
    torch.testing.assert_close(run(text, 3.0), u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)
