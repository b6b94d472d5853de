"""MVDream and ImageDream (issue 21): the sampler's cameras against MVDream's own ``get_camera`` formulas, the
sampler against a hand-written DDIM loop over diffusers' UNet, every published ImageDream key, the image-prompt
cross-attention by brute force, and the two methods through the CLI on tiny weights (views only; the full 3D run
of both is in test_methods_smoke) with bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.__main__ import main
from gen3d.backend.guidance.priors.mvdream import MVDreamPrior, mvdream_cameras
from gen3d.backend.guidance.multiview_sampling import sample_views, view_cameras
from gen3d.backend.models.mvdream_unet import Attention, MultiViewUNetModel
from gen3d.backend.pipelines.dreamgaussian_guidance import MultiViewSampler


def official_get_camera(elevation: float, azimuths) -> np.ndarray:
    """bytedance/MVDream ``camera_utils.get_camera``, written out: a Y-up OpenGL camera-to-world at
    (cos e sin a, sin e, cos e cos a) looking at the origin (columns right, up, -forward with up +Y), left-multiplied
    by the OpenGL -> Blender flip, translation normalised (already unit here). ``[F, 16]``."""
    rows = []
    for az in azimuths:
        e, a = np.radians(elevation), np.radians(az)
        pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
        forward = -pos / np.linalg.norm(pos)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, up / np.linalg.norm(up), -forward], 1)
        c2w[:3, 3] = pos
        flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
        c2w = flip @ c2w
        c2w[:3, 3] /= np.linalg.norm(c2w[:3, 3])
        rows.append(c2w.reshape(-1))
    return np.stack(rows)


def port_get_camera(elevation: float, azimuths) -> np.ndarray:
    """The diffusers port's ``get_camera``: kiui 0.2.0 ``orbit_camera(-elevation, az)`` (Y up, its elevation positive
    below), then ``pose[2] *= -1`` and rows 1 and 2 swapped."""
    rows = []
    for az in azimuths:
        e, a = np.radians(-elevation), np.radians(az)
        pos = np.array([np.cos(e) * np.sin(a), -np.sin(e), np.cos(e) * np.cos(a)])
        forward = pos / np.linalg.norm(pos)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        up = np.cross(forward, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, up / np.linalg.norm(up), forward], 1)
        pose[:3, 3] = pos
        pose[2] *= -1
        pose[[1, 2]] = pose[[2, 1]]
        rows.append(pose.reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("elevation", [0.0, 5.0, 15.0, 30.0])
def test_sampler_cameras_are_get_camera_in_the_trained_azimuth_order(elevation):
    ours = mvdream_cameras(view_cameras(elevation, 4).c2w).double().numpy()
    for reference in (official_get_camera, port_get_camera):
        np.testing.assert_allclose(ours, reference(elevation, [0, 90, 180, 270]), atol=1e-6)
    # the front view by hand: camera on -Y (Blender's front) at unit distance, looking along +Y, Z up
    if elevation == 0:
        np.testing.assert_allclose(ours[0], [1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1], atol=1e-6)


def test_training_views_are_groups_of_four_get_cameras_from_a_random_azimuth():
    sampler = MultiViewSampler()
    gen = torch.Generator().manual_seed(3)
    for size, groups in ((64, 2), (256, 1), (64, 2)):
        cams, el, az = sampler.sample(size, gen)
        assert len(cams) == len(el) == len(az) == 4 * groups  # MVDream: 2 groups at 64², 1 at 256²
        for g in range(groups):
            group = slice(4 * g, 4 * g + 4)
            assert torch.all(el[group] == el[4 * g]) and 0 <= el[4 * g] <= 30
            fovy = float(np.degrees(2 * np.arctan(size / 2 / cams.K[4 * g, 1, 1])))
            assert 15 <= fovy <= 60 and torch.allclose(cams.K[group], cams.K[4 * g])
            distance = float(cams.c2w[4 * g, :3, 3].norm())
            assert 0.8 - 1e-4 <= distance * np.tan(np.radians(fovy) / 2) <= 1.0 + 1e-4
            np.testing.assert_allclose(mvdream_cameras(cams.c2w[group]).double().numpy(),
                                       official_get_camera(float(el[4 * g]), float(az[4 * g]) + np.arange(4) * 90.0),
                                       atol=1e-5)


@torch.no_grad()
def test_sampler_equals_a_hand_written_ddim_loop_over_diffusers_unet_on_one_view(tiny_weights):
    """With one view per object the multi-view attention is plain self-attention: our sampler over our UNet must
    equal textbook DDIM (eta 0, SD's scaled-linear betas, "leading" spacing with offset 1, final alpha = alpha_0)
    with CFG over diffusers' UNet2DConditionModel holding the same weights (diffusers' own LDM converter)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    prior = MVDreamPrior(tiny_weights / "mvdream")
    prior.num_frames = 1
    for p in prior.unet.camera_embed.parameters():
        p.zero_()
    ref = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                               down_block_types=("CrossAttnDownBlock2D",) * 2,
                               up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32,
                               attention_head_dim=(2, 4), use_linear_projection=True).eval()
    ldm = {"model.diffusion_model." + k: v for k, v in prior.unet.state_dict().items()
           if not k.startswith("camera_embed")}
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dict(ref.config)), strict=True)

    prompt, steps, scale = "a red teapot, 3d asset", 6, 7.5
    ours = sample_views(prior, prompt, "", 0.0, steps, scale, 2, torch.Generator().manual_seed(5))

    tok, enc = prior.text.tokenizer, prior.text.model
    ids = tok([prompt, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    text, empty = enc(ids)[0].chunk(2)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0).float()
    gap = 1000 // steps
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for t in range(gap * (steps - 1) + 1, 0, -gap):
        eps_c = ref(x, t, encoder_hidden_states=text.expand(2, -1, -1)).sample
        eps_u = ref(x, t, encoder_hidden_states=empty.expand(2, -1, -1)).sample
        eps = eps_u + scale * (eps_c - eps_u)
        a, a_prev = alpha_bar[t], alpha_bar[t - gap] if t - gap >= 0 else alpha_bar[0]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    images = (prior.vae.decode(x / prior.vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours[:, 0], images, rtol=0, atol=2e-5)


def _keys(data_dir, name):
    return json.loads((data_dir / "checkpoint_keys" / f"{name}.json").read_text())


def test_every_published_imagedream_unet_key_maps(data_dir):
    ref = _keys(data_dir, "imagedream-ipmv-unet")
    config = {k: v for k, v in ref["config"].items() if k != "use_checkpoint"}
    with torch.device("meta"):
        unet = MultiViewUNetModel(**config)
    assert {k: list(v.shape) for k, v in unet.state_dict().items()} == ref["tensors"]


def test_every_published_imagedream_image_encoder_key_maps(data_dir, tmp_path):
    """The hub file carries transformers-4 names (``vision_model.`` prefix); transformers 5's CLIPVisionModel has the
    same names without it and loads such a file with every tensor used (checked on a small config)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    ref = _keys(data_dir, "imagedream-ipmv-image-encoder")
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**ref["config"]))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    published = {k.removeprefix("vision_model."): v for k, v in ref["tensors"].items()}
    assert all(k.startswith("vision_model.") for k in ref["tensors"]) and ours == published

    small = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=8))
    small.config.save_pretrained(tmp_path)
    state = {"vision_model." + k: v.contiguous() for k, v in small.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded, info = CLIPVisionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, small.state_dict()[k], rtol=0, atol=0)


@torch.no_grad()
def test_image_prompt_cross_attention_adds_a_second_softmax_over_the_last_tokens():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8, context_dim=12, ip_dim=3, ip_weight=0.7)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7 + 3, 12)

    def brute(k_proj, v_proj, tokens):
        q, k, v = (t.reshape(2, -1, 2, 8).transpose(1, 2) for t in (attn.to_q(x), k_proj(tokens), v_proj(tokens)))
        return torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v

    out = brute(attn.to_k, attn.to_v, ctx[:, :7]) + 0.7 * brute(attn.to_k_ip, attn.to_v_ip, ctx[:, 7:])
    expected = attn.to_out(out.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, ctx), expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_reference_latent_fills_the_last_frame_without_touching_the_callers_latents():
    torch.manual_seed(0)
    unet = MultiViewUNetModel(image_size=8, model_channels=32, attention_resolutions=[1], num_res_blocks=1,
                              channel_mult=[1], num_head_channels=16, context_dim=16, ip_dim=2,
                              ip_embedding_dim=16, ip_heads=2, ip_dim_head=8, ip_depth=1).eval()
    x, ip_img = torch.randn(10, 4, 8, 8), torch.randn(2, 4, 8, 8)
    kw = dict(timesteps=torch.full((10,), 300), context=torch.randn(10, 5, 16), camera=torch.randn(10, 16),
              num_frames=5, ip=torch.randn(10, 6, 16))
    before = x.clone()
    out = unet(x, ip_img=ip_img, **kw)
    assert torch.equal(x, before)
    placed = x.clone()
    placed[4::5] = ip_img
    torch.testing.assert_close(out, unet(placed, **kw), rtol=0, atol=0)
    with pytest.raises(ValueError, match="image tokens"):
        unet(x, kw["timesteps"], kw["context"], kw["camera"], 5)


@pytest.fixture()
def object_png(tmp_path):
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[24:72, 30:66] = (210, 120, 40, 255)
    Image.fromarray(rgba).save(tmp_path / "object.png")
    return tmp_path / "object.png"


@pytest.mark.parametrize("method", ["mvdream", "imagedream"])
def test_cli_stops_after_the_views(method, tiny_weights, object_png, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", method, "--out", str(out), "--preset", "fast", "--weights-dir", str(tiny_weights),
            "--set", "stop_after=views", "--set", "views_steps=3", "--set", "candidates=2"]
    args += ["--image", str(object_png)] if method == "imagedream" else ["--prompt", "a wooden chair"]
    assert main(args) == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tiny_weights"] and "mesh.glb" not in meta["artifacts"] and "views.png" in meta["artifacts"]
    views = np.asarray(Image.open(out / "views.png"))
    assert views.shape == (2 * 64, 4 * 64, 3)  # a row per candidate, four 64² views (the tiny model's size)
    assert views[:3].reshape(-1, 3).mean(0)[0] > 150  # stamped as smoke-test output


def test_the_views_are_previewed_before_the_3d_stage(tiny_weights, monkeypatch, tmp_path):
    from gen3d.backend.pipelines.base import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))
    events = []

    def progress(stage, step, total, preview):
        events.append((stage, None if preview is None else preview.shape))
        if stage == "gaussians":
            raise KeyboardInterrupt  # stop here: only the order of the events matters

    request = JobRequest(method="mvdream", prompt="a chair", preset="fast", options={"views_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        run_job(request, RunContext(out_dir=tmp_path, progress_fn=progress))
    previews = [e for e in events if e[1] is not None]
    assert previews[0] == ("views", (64, 256, 3)) and events[-1][0] == "gaussians"


@pytest.mark.parametrize("args, message", [
    (["run", "imagedream", "--prompt", "a chair"], "needs the input 'image'"),
    (["run", "mvdream", "--prompt", "a chair", "--set", "candidates=0"], "candidates"),
    (["run", "mvdream", "--prompt", "a chair", "--set", "t_end=[0.6,0.3]"], "t_end"),
    (["run", "mvdream", "--prompt", "a chair", "--set", "fovy_range=[60,15]"], "fovy_range"),
    (["run", "mvdream", "--prompt", "a chair", "--set", "stop_after=mesh"], "stop_after"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_unreadable_image_is_refused(tiny_weights, tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a png")
    code = main(["run", "imagedream", "--image", str(bad), "--out", str(tmp_path / "out"), "--preset", "fast",
                 "--weights-dir", str(tiny_weights)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not_an_image.png" in err and "\n" not in err
    assert not (tmp_path / "out" / "views.png").exists()
