"""Zero123++ v1.2 (instant3d's image front): reference attention against plain attention math, the sampler's first
inputs and a one-step sample against independent computations (schedule, noising, CFG, v-prediction, latent and
image scaling), the 3x2 split, and ``instant3d --set front=zero123plus`` end to end on tiny published layouts.
(The whole pipeline was also compared with the official custom pipeline class in a scratch folder: see
docs/DESIGN.md "As built".)"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from gen3d.backend.errors import BadInput
from gen3d.backend.guidance.tiny import _unet
from gen3d.backend.models.instant3d.grid import split_grid
from gen3d.backend.models.zero123plus import ReferenceUNet, Zero123Plus
from gen3d.backend.models.zero123plus.model import ReferenceAttention, _ReferenceTokens
from gen3d.backend.models.zero123plus.tiny import write_tiny_instantmesh_unet, write_tiny_zero123plus


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero123plus")
    write_tiny_zero123plus(folder)
    write_tiny_instantmesh_unet(folder)
    return folder


def test_reference_attention_attends_over_own_and_reference_tokens():
    """One attn1 in "read" mode == softmax(q [k; k_ref]^T / sqrt(d)) [v; v_ref] written with plain tensor ops."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, out_bias=True).eval()
    store = _ReferenceTokens()
    proc = ReferenceAttention("a", store)
    h, r = torch.randn(2, 12, 32), torch.randn(2, 7, 32)
    store.mode = "write"
    proc(attn, r)
    store.mode = "read"
    got = proc(attn, h)
    kv = torch.cat([h, r], 1)
    q, k, v = (f(x).reshape(2, -1, 2, 16).transpose(1, 2) for f, x in
               ((attn.to_q, h), (attn.to_k, kv), (attn.to_v, kv)))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), -1)
    expected = attn.to_out[0]((w @ v).transpose(1, 2).reshape(2, 12, 32))
    assert torch.allclose(got, expected, atol=1e-5) and not store.tokens  # read once, then dropped


def test_a_sample_as_its_own_reference_gives_the_plain_unet():
    """Keys duplicated exactly leave every softmax unchanged: ReferenceUNet(x, ref=x) == the untouched UNet(x)."""
    torch.manual_seed(0)
    plain = _unet("sd21").eval()
    ref_unet = ReferenceUNet(copy.deepcopy(plain))
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    t = torch.tensor(500.0)
    with torch.no_grad():
        expected = plain(x, t, encoder_hidden_states=ctx).sample
        got = ref_unet(x, t, ctx, x)
        other = ref_unet(x, t, ctx, torch.randn(2, 4, 6, 6))
    assert torch.allclose(got, expected, atol=2e-5)
    assert (other - expected).abs().max() > 1e-3  # a different reference does change the prediction


def _linear_sigma(t: int) -> float:
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)  # the published "linear" schedule
    abar = torch.cumprod(1 - betas, 0)[t]
    return math.sqrt((1 - abar) / abar)


def test_one_step_sample_is_v_prediction_x0_through_the_latent_and_image_scaling(tiny_folder):
    """Independent of the scheduler classes: first UNet inputs (reference pass, then main pass) are the noised
    reference and the initial noise at t=999 scaled by 1/sqrt(sigma^2 + 1); the one trailing step returns the CFG'd
    v-prediction's x0, decoded as clamp(vae((x0 / 0.75 + 0.22) / sf) * 1.6 / 2 + 0.5)."""
    from PIL import Image

    model = Zero123Plus.from_folder(tiny_folder, tiny_folder / "diffusion_pytorch_model.bin")
    assert model.background == 255  # InstantMesh's fine-tune composites on white
    seen, outs = [], []
    model.unet.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    model.unet.register_forward_hook(lambda m, args, out: outs.append(out.detach().clone()))
    image = Image.fromarray((np.random.default_rng(1).random((80, 80, 3)) * 255).astype(np.uint8), "RGB")
    got = model(image, steps=1, guidance_scale=3.0, generator=torch.Generator().manual_seed(5), view_size=32)
    assert model.scheduler.timesteps.tolist() == [999.0]  # trailing spacing

    gen = torch.Generator().manual_seed(5)  # the draw order: condition sample, negative sample, x_T, reference noise
    vae = model.vae
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(image.resize((64, 64), Image.BILINEAR), np.float32) / 255)
        pixels = ((pixels - 0.5) / 0.8).permute(2, 0, 1)[None]  # the VAE processor: mean 0.5, std 0.8
        post = vae.encode(pixels).latent_dist
        cond = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        zero = vae.encode(torch.zeros_like(pixels)).latent_dist
        neg = zero.mean + zero.std * torch.randn(zero.mean.shape, generator=gen)
    sigma = _linear_sigma(999)
    x_t = torch.randn(1, 4, 12, 8, generator=gen) * sigma  # init_noise_sigma = sigma_max (trailing)
    eps = torch.randn(2, 4, 8, 8, generator=gen)
    scale = 1 / math.sqrt(sigma ** 2 + 1)
    assert torch.allclose(seen[0], (torch.cat([neg, cond]) + sigma * eps) * scale, atol=1e-4)
    assert torch.allclose(seen[1], torch.cat([x_t, x_t]) * scale, atol=1e-4)
    uncond, c = outs[0].chunk(2)
    v = uncond + 3.0 * (c - uncond)
    x0 = x_t / (sigma ** 2 + 1) - v * sigma / math.sqrt(sigma ** 2 + 1)
    with torch.no_grad():
        decoded = vae.decode((x0 / 0.75 + 0.22) / vae.config.scaling_factor).sample * 1.6
    expected = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert got.shape == (96, 64, 3) and np.abs(got - expected).max() < 1e-4
    assert 0.05 < ((expected > 0) & (expected < 1)).mean()  # not a saturated (vacuous) comparison


def test_context_is_the_empty_prompt_plus_the_ramped_image_embedding(tiny_folder):
    from PIL import Image

    model = Zero123Plus.from_folder(tiny_folder)
    assert model.background == 127  # the base UNet composites on grey
    image = Image.new("RGB", (40, 40), (200, 30, 60))
    _, context = model.condition(image, guided=True, generator=torch.Generator().manual_seed(0))
    ids = model.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        empty = model.text_encoder(ids)[0][0]
        clip = model.clip_processor(images=image, return_tensors="pt").pixel_values
        embed = model.vision_encoder(clip).image_embeds[0]
    ramp = torch.tensor(json.loads((tiny_folder / "model_index.json").read_text())["ramping_coefficients"])
    assert torch.allclose(context[0], empty, atol=1e-6)
    assert torch.allclose(context[1], empty + ramp[:, None] * embed[None], atol=1e-5)


def test_published_layout_errors(tiny_folder, tmp_path):
    torch.save({"conv_in.weight": torch.zeros(1)}, tmp_path / "bad.bin")
    with pytest.raises(BadInput, match="bad.bin: not a Zero123\\+\\+ UNet state dict"):
        Zero123Plus.from_folder(tiny_folder, tmp_path / "bad.bin")
    with pytest.raises(BadInput, match="no model_index.json"):
        Zero123Plus.from_folder(tmp_path)


def test_split_three_rows_two_columns_row_major():
    grid = np.ones((96, 64, 3), np.float32)
    for k in range(6):
        r, c = divmod(k, 2)
        grid[r * 32 + 8:r * 32 + 24, c * 32 + 8:c * 32 + 24] = k / 10
    views = split_grid(grid, 3, 2)
    assert views.shape == (6, 32, 32, 4)
    for k in range(6):
        assert np.allclose(views[k, 16, 16, :3], k / 10) and views[k, 0, 0, 3] == 0


def test_instant3d_zero123plus_front_end_to_end(tmp_path, monkeypatch):
    from PIL import Image

    from gen3d.backend import weights
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.instant3d import Instant3DOptions, Instant3DPipeline
    from gen3d.backend.pipelines.runner import run_job
    from gen3d.backend.representations.mesh import load_glb

    root = tmp_path / "weights"
    for name in ("instantmesh-nerf-base", "zero123plus-v1.2", "instantmesh-zero123plus-unet"):
        weights.write_tiny(name, root)
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(root))
    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 50) ** 2 + (xx - 44) ** 2 < 30 ** 2).astype(np.uint8) * 255
    image = tmp_path / "disc.png"
    Image.fromarray(np.dstack([np.full_like(disc, 200), np.full_like(disc, 60), np.full_like(disc, 40), disc]),
                    "RGBA").save(image)
    previews = []
    ctx = RunContext(out_dir=tmp_path / "out", progress_fn=lambda s, i, n, p: previews.append((s, p is not None)))
    opts = {"front": "zero123plus", "view_size": 32, "steps": 2, "mesh_resolution": 32, "texture_size": 64,
            "preview_views": 1, "preview_size": 24, "target_faces": 2000}
    arts = run_job(JobRequest(method="instant3d", files={"image": str(image)}, preset="fast", options=opts), ctx)
    assert {"input.png", "zero123plus.png", "views.png", "mesh.glb", "meta.json"} <= set(arts)
    stages = [s for s, _ in previews]
    assert ("grid", True) in previews and stages.index("grid") < stages.index("mesh")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert "CC BY-NC" in meta["weights"]["zero123plus"]["license"] and meta["metrics"]["views"] == 6
    assert len(load_glb(tmp_path / "out" / "mesh.glb").faces) > 0
    with pytest.raises(BadInput, match="front=zero123plus needs the input 'image'"):
        run_job(JobRequest(method="instant3d", prompt="a chair", options=opts), RunContext(out_dir=tmp_path / "a"))
    with pytest.raises(BadInput, match="grid front is text to 3D and takes no image"):
        run_job(JobRequest(method="instant3d", prompt="a chair", files={"image": str(image)},
                           options={"front": "grid"}), RunContext(out_dir=tmp_path / "b"))
    with pytest.raises(BadInput, match="needs the input 'prompt' .grid front. or 'image'"):
        run_job(JobRequest(method="instant3d"), RunContext(out_dir=tmp_path / "b"))
    assert Instant3DPipeline.front(Instant3DOptions(), JobRequest(method="instant3d", files={"image": str(image)})) == \
        "zero123plus"  # auto: the image decides (the add-on sends an image only when the user set one)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
