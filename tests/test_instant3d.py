"""Instant3D: the sparse-view reconstructor against LRM's own path and independent references, InstantMesh's
published key layout, the grid side (blob initialisation, noising, split, camera ring) against independent
computations, and the method end to end on tiny weights in the published layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gen3d.backend.errors import BadInput, MissingWeights
from gen3d.backend.models.instant3d.checkpoints import (instantmesh_to_ours, load_instantmesh, ours_to_instantmesh,
                                                       save_instantmesh)
from gen3d.backend.models.instant3d.grid import blob_image, blob_latents, grid_cameras, split_grid
from gen3d.backend.models.instant3d.reconstructor import (INSTANTMESH_CONFIGS, SparseViewLRM, encode_cameras,
                                                          from_instantmesh_config, zero123plus_cameras)
from gen3d.backend.models.instant3d.tiny import TINY_OVERRIDES, random_reconstructor, tiny_params
from gen3d.backend.models.lrm.model import LRM
from gen3d.backend.models.lrm.tiny import random_lrm

def _tiny_cfg(**kw):
    return from_instantmesh_config(tiny_params()).replace(**kw)


# --- reconstructor ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["base", "large"])
def test_every_published_instantmesh_key_maps_with_its_shape(size, data_dir):
    published = json.loads((data_dir / "checkpoint_keys" / f"instantmesh-nerf-{size}.json").read_text())["tensors"]
    with torch.device("meta"):
        model = SparseViewLRM(from_instantmesh_config(INSTANTMESH_CONFIGS[size]))
    ours = model.state_dict()
    mapped = instantmesh_to_ours({k: torch.empty(v, device="meta") for k, v in published.items()})
    assert set(mapped) == set(ours)
    assert all(tuple(mapped[k].shape) == tuple(ours[k].shape) for k in ours)
    back = ours_to_instantmesh(ours)
    assert {k: list(v.shape) for k, v in back.items()} == published


def test_one_view_without_camera_is_the_lrm_path():
    cfg = _tiny_cfg(camera_raw_dim=0, camera_embed_dim=0)
    lrm = random_lrm(cfg, seed=3)
    sparse = SparseViewLRM(cfg).eval()
    sparse.load_state_dict(lrm.state_dict(), strict=True)
    image = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        assert torch.equal(sparse.forward_planes(image[:, None]), lrm.forward_planes(image))


def test_zero_camera_modulation_is_the_unmodulated_lrm():
    cfg = _tiny_cfg()
    sparse = random_reconstructor(tiny_params(), seed=1)
    with torch.no_grad():
        for blk in sparse.encoder.blocks:
            blk.modulation.weight.zero_()
            blk.modulation.bias.zero_()
    plain = LRM(cfg.replace(camera_raw_dim=0, camera_embed_dim=0)).eval()
    plain.load_state_dict({k: v for k, v in sparse.state_dict().items()
                           if not k.startswith("camera_embedder") and ".modulation." not in k}, strict=True)
    image, cams = torch.rand(1, 3, cfg.image_size, cfg.image_size), torch.randn(1, 1, 16)
    with torch.no_grad():
        assert torch.allclose(sparse.forward_planes(image[:, None], cams), plain.forward_planes(image), atol=1e-6)


def test_views_are_concatenated_tokens_paired_with_their_cameras():
    model = random_reconstructor(tiny_params(), seed=2)
    S = model.cfg.image_size
    views, cams = torch.rand(1, 3, 3, S, S), torch.randn(1, 3, 16)
    with torch.no_grad():
        planes = model.forward_planes(views, cams)
        perm = torch.tensor([2, 0, 1])
        # no view index: any order of (image, camera) pairs gives the same triplane
        assert torch.allclose(model.forward_planes(views[:, perm], cams[:, perm]), planes, atol=1e-5)
        # attention over a token set repeated twice equals attention over it once
        twice = model.forward_planes(views[:, :1].repeat(1, 2, 1, 1, 1), cams[:, :1].repeat(1, 2, 1))
        assert torch.allclose(twice, model.forward_planes(views[:, :1], cams[:, :1]), atol=1e-5)
        # the camera matters (modulation is live) and pairs with its own image
        assert (model.forward_planes(views, cams[:, perm]) - planes).abs().max() > 1e-3
    with pytest.raises(BadInput, match="cameras"):
        model.forward_planes(views, cams[:, :2])


def test_modulated_encoder_matches_transformers_vit_with_adaln_hooks():
    """InstantMesh's ViT = transformers' ViT with LN(x)(1 + scale) + shift after layernorm_before/after, from
    Linear(SiLU(c)) chunked (shift_msa, scale_msa, shift_mlp, scale_mlp): built here with forward hooks."""
    from transformers import ViTConfig, ViTModel

    from gen3d.backend.models.lrm.checkpoints import triposr_to_ours

    vit = tiny_params()["encoder_vit_config"]
    cfg = _tiny_cfg(image_size=vit["image_size"])
    ref = ViTModel(ViTConfig(**vit, hidden_act="gelu"), add_pooling_layer=False).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    mods = [torch.nn.Linear(vit["hidden_size"], 4 * vit["hidden_size"]) for _ in range(vit["num_hidden_layers"])]
    c = torch.randn(2, vit["hidden_size"])
    for layer, lin in zip(ref.encoder.layer if hasattr(ref, "encoder") else ref.layers, mods):
        s1, sc1, s2, sc2 = lin(torch.nn.functional.silu(c)).detach().chunk(4, dim=1)
        layer.layernorm_before.register_forward_hook(lambda m, i, o, s=s1, k=sc1: o * (1 + k[:, None]) + s[:, None])
        layer.layernorm_after.register_forward_hook(lambda m, i, o, s=s2, k=sc2: o * (1 + k[:, None]) + s[:, None])
    published = {f"image_tokenizer.model.{k}": v for k, v in ref.state_dict().items()}
    published["tokenizer.embeddings"] = torch.zeros(3, 1, 1, 1)
    sd = {k[len("encoder."):]: v for k, v in triposr_to_ours(published).items() if k.startswith("encoder.")}
    for i, lin in enumerate(mods):
        sd[f"blocks.{i}.modulation.weight"], sd[f"blocks.{i}.modulation.bias"] = lin.weight, lin.bias
    from gen3d.backend.models.lrm.encoder import ImageEncoder

    ours = ImageEncoder(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, vit["image_size"], vit["image_size"])
    mean, std = torch.tensor(cfg.image_mean).view(1, 3, 1, 1), torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(pixel_values=(x - mean) / std).last_hidden_state
        assert torch.allclose(ours(x, c), expected, atol=1e-5)


def test_triplane_block_matches_torch_multihead_attention_layers():
    """InstantMesh's block from torch layers: LayerNorm (default eps 1e-5) -> cross-attention (separate q/k/v,
    no bias) -> LayerNorm -> self-attention (packed) -> LayerNorm -> Linear-GELU-Linear, each residual."""
    from gen3d.backend.models.lrm.transformer import TriplaneBlock

    cfg = _tiny_cfg()
    D, K, heads = cfg.dim, cfg.enc_dim, cfg.heads
    ref = torch.nn.ModuleDict({
        "norm1": torch.nn.LayerNorm(D), "norm2": torch.nn.LayerNorm(D), "norm3": torch.nn.LayerNorm(D),
        "cross_attn": torch.nn.MultiheadAttention(D, heads, kdim=K, vdim=K, bias=False, batch_first=True),
        "self_attn": torch.nn.MultiheadAttention(D, heads, bias=False, batch_first=True),
        "mlp": torch.nn.Sequential(torch.nn.Linear(D, 4 * D), torch.nn.GELU(), torch.nn.Dropout(0.0),
                                   torch.nn.Linear(4 * D, D))}).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    published = {f"transformer.layers.0.{k}": v for k, v in ref.state_dict().items()}
    ours = TriplaneBlock(cfg).eval()
    ours.load_state_dict({k[len("transformer.blocks.0."):]: v for k, v in instantmesh_to_ours(published).items()},
                         strict=True)
    x, ctx = torch.randn(2, 12, D) * 3e-3, torch.randn(2, 9, K)  # small: LayerNorm eps matters
    with torch.no_grad():
        h = x + ref["cross_attn"](ref["norm1"](x), ctx, ctx, need_weights=False)[0]
        n = ref["norm2"](h)
        h = h + ref["self_attn"](n, n, n, need_weights=False)[0]
        expected = h + ref["mlp"](ref["norm3"](h))
        assert torch.allclose(ours(x, ctx, None), expected, atol=1e-5)


def test_camera_encoding_reproduces_instantmesh_zero123plus_cameras():
    got = encode_cameras(zero123plus_cameras())
    # view 0 as InstantMesh's get_zero123plus_input_cameras() prints it (checkpoint_keys README)
    view0 = [-0.5, -0.2962, 0.8138, 3.2552, 0.8660, -0.1710, 0.4698, 1.8794, 0, 0.9397, 0.3420, 1.3681,
             1.8660, 1.8660, 0.5, 0.5]
    assert torch.allclose(got[0], torch.tensor(view0), atol=1e-4)
    # all six: position r(cos e cos a, cos e sin a, sin e), z = pos/|pos|, x = up x z, y = z x x (OpenGL), +z up
    for k, (e, a) in enumerate(zip((20, -10) * 3, range(30, 360, 60))):
        e, a = math.radians(e), math.radians(a)
        pos = 4.0 * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        z = pos / np.linalg.norm(pos)
        x = np.cross([0, 0, 1], z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        f = 0.5 / math.tan(math.radians(15))
        ref = np.concatenate([np.stack([x, y, z, pos], 1).reshape(-1), [f, f, 0.5, 0.5]])
        assert np.allclose(got[k].numpy(), ref, atol=1e-5)


def test_tiny_checkpoint_round_trip_and_loader_errors(tmp_path):
    model = random_reconstructor(tiny_params("large"), seed=4)
    save_instantmesh(model, tmp_path / "ok", "large", TINY_OVERRIDES)
    ckpt = torch.load(tmp_path / "ok" / "instant_nerf_large.ckpt", weights_only=True)
    assert all(k.startswith("lrm_generator.") for k in ckpt["state_dict"])
    loaded = load_instantmesh(tmp_path / "ok")
    S = model.cfg.image_size
    views, cams = torch.rand(1, 2, 3, S, S), torch.randn(1, 2, 16)
    with torch.no_grad():
        assert torch.equal(loaded.forward_planes(views, cams), model.forward_planes(views, cams))
    with pytest.raises(MissingWeights, match="instant_nerf_base.ckpt"):
        load_instantmesh(tmp_path)
    (tmp_path / "bad").mkdir()
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "bad" / "instant_nerf_base.ckpt")
    with pytest.raises(BadInput, match="lrm_generator"):
        load_instantmesh(tmp_path / "bad")
    # the tiny tensors under the published base config: one clear error, nothing half-built
    (tmp_path / "ok" / "instantmesh_config.json").unlink()
    with pytest.raises(BadInput, match="does not match"):
        load_instantmesh(tmp_path / "ok")


# --- grid side ----------------------------------------------------------------------------------------------------
def test_blob_image_is_four_centred_gaussians_on_white():
    size = 128
    img = blob_image(size)
    assert img.shape == (3, size, size) and torch.equal(img[0], img[2])
    depth = (1 - (img[0].double() + 1) / 2).numpy()  # 0 on white, 1 at a blob centre
    tile = size // 2
    yy, xx = np.mgrid[:tile, :tile] + 0.5
    for r in range(2):
        for c in range(2):
            d = depth[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
            assert d.max() > 0.95 and d[0, 0] < 1e-3  # dark centre, white corner
            w = d / d.sum()
            cy, cx = (w * yy).sum(), (w * xx).sum()
            assert abs(cy - tile / 2) < 0.75 and abs(cx - tile / 2) < 0.75
            std = math.sqrt((w * (xx - cx) ** 2).sum())
            assert abs(std / tile - 0.1) < 0.005  # std 0.1 of the tile


@pytest.mark.parametrize("kind", ["euler", "ddim"])
def test_blob_latents_are_grm_noising_to_the_first_timestep(kind):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched = (EulerDiscreteScheduler(**cfg, timestep_spacing="linspace") if kind == "euler"
             else DDIMScheduler(**cfg, timestep_spacing="trailing"))
    sched.set_timesteps(30)
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    # independent: the scaled-linear betas, t0 = 999, sigma_max = sqrt((1 - abar) / abar)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[999]
    sigma = math.sqrt((1 - abar) / abar)
    vp = (sigma * eps.double() + z.double()) / math.sqrt(1 + sigma ** 2)  # GRM's fuse_latents
    # what the pipeline's first step sees: latents * init_noise_sigma (Euler works in sigma space: x = z + sigma eps)
    seen = (blob_latents(z, eps, sched) * sched.init_noise_sigma).double()
    expected = vp * math.sqrt(1 + sigma ** 2) if kind == "euler" else vp
    assert torch.allclose(seen, expected, atol=2e-4 * expected.abs().max())


def test_split_grid_row_major_rgba_and_the_camera_ring():
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]], np.float32)
    grid = np.ones((64, 96, 3), np.float32)
    for k, col in enumerate(colours):
        r, c = divmod(k, 2)
        grid[r * 32 + 8:r * 32 + 24, c * 48 + 10:c * 48 + 30] = col
    views = split_grid(grid)
    assert views.shape == (4, 32, 48, 4)
    for k, col in enumerate(colours):
        assert np.allclose(views[k, 16, 20, :3], col) and views[k, 16, 20, 3] == 1.0
        assert views[k, 0, 0, 3] == 0.0 and np.allclose(views[k, 0, 0, :3], 1.0)
    cams = grid_cameras(32, radius=2.0, fov_deg=50.0)
    e = math.radians(20)
    expected = [(0, -1), (1, 0), (0, 1), (-1, 0)]  # azimuth 0 front (-Y), 90 right (+X), 180 back, 270 left
    for k, (sx, sy) in enumerate(expected):
        pos = np.array([2 * math.cos(e) * sx, 2 * math.cos(e) * sy, 2 * math.sin(e)])
        assert np.allclose(cams.centers[k].numpy(), pos, atol=1e-5)
        forward = cams.c2w[k, :3, 2].numpy()  # OpenCV +z looks at the origin
        assert np.allclose(forward, -pos / np.linalg.norm(pos), atol=1e-5)
    assert math.isclose(cams.K[0, 1, 1].item(), 16 / math.tan(math.radians(25)), rel_tol=1e-5)


# --- method -------------------------------------------------------------------------------------------------------
def test_instant3d_method_end_to_end_on_tiny_published_layouts(tmp_path, monkeypatch):
    from gen3d.backend import weights
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job
    from gen3d.backend.representations.mesh import load_glb

    root = tmp_path / "weights"
    for name in ("sd21-base", "instantmesh-nerf-base"):
        weights.write_tiny(name, root)
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(root))
    previews = []
    ctx = RunContext(out_dir=tmp_path / "out", progress_fn=lambda s, i, n, p: previews.append((s, p is not None)))
    opts = {"grid_size": 64, "steps": 2, "mesh_resolution": 32, "texture_size": 64, "preview_views": 1,
            "preview_size": 24, "target_faces": 2000}
    arts = run_job(JobRequest(method="instant3d", prompt="a red chair", preset="fast", options=opts), ctx)
    assert {"grid.png", "views.png", "mesh.glb", "preview.png", "meta.json"} <= set(arts)
    stages = [s for s, _ in previews]
    assert ("grid", True) in previews and stages.index("grid") < stages.index("mesh")  # views shown before the mesh
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["weights"]["reconstructor"]["license"] == "Apache-2.0" and meta["weights"]["grid"]["tiny"]
    mesh = load_glb(tmp_path / "out" / "mesh.glb")
    assert len(mesh.faces) > 0 and mesh.texture is not None
    with pytest.raises(BadInput, match="prompt"):
        run_job(JobRequest(method="instant3d", options=opts), RunContext(out_dir=tmp_path / "noprompt"))


def test_grid_generator_starts_denoising_from_the_noised_blob(tmp_path):
    """The UNet's first input is the blob's VAE latent plus sigma_max noise (Euler's x at t=999), scaled by
    1/sqrt(1 + sigma^2) (Euler's scale_model_input), for both CFG halves."""
    from gen3d.backend.guidance.tiny import write_sd21_base
    from gen3d.backend.models.instant3d.grid import GridGenerator

    write_sd21_base(tmp_path / "sd")
    gen = GridGenerator.from_folder(tmp_path / "sd")
    seen = []
    gen.pipe.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    size = 64
    grid = gen("a chair", size, steps=2, guidance_scale=3.0, seed=7)
    assert grid.shape == (size, size, 3) and 0 <= grid.min() and grid.max() <= 1
    # independent: GRM's blob (full-size blob, tiled 2x2, bilinear back to size), its VAE mode, torch.randn(seed)
    c = torch.arange(size, dtype=torch.float64)
    g = torch.exp(-((c[:, None] - size // 2) ** 2 + (c[None] - size // 2) ** 2) / (2 * (0.1 * size) ** 2))
    tiled = torch.nn.functional.interpolate((1 - g).repeat(2, 2)[None, None], size=(size, size), mode="bilinear")
    blob = (2 * tiled - 1).float().expand(1, 3, -1, -1)
    vae = gen.pipe.vae
    with torch.no_grad():
        z = vae.encode(blob).latent_dist.mean * vae.config.scaling_factor
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[999]
    sigma = math.sqrt((1 - abar) / abar)
    expected = (z + sigma * eps) / math.sqrt(1 + sigma ** 2)
    first = seen[0]
    assert first.shape[0] == 2  # unconditional + conditional
    assert torch.allclose(first[0], expected[0], atol=1e-4) and torch.allclose(first[1], expected[0], atol=1e-4)


# --- recipe -------------------------------------------------------------------------------------------------------
def test_recon_recipe_learns_on_spot_and_exports_the_instantmesh_layout(tmp_path):
    """``train instant3d-recon`` (tiny, 2 input + 2 supervised random views of Spot): the loss falls, held-out views
    beat the same seeded network untrained, and the export loads through the InstantMesh loader."""
    from accelerate.state import AcceleratorState, GradientState

    from gen3d.backend.__main__ import main
    from gen3d.backend.commands.demo import make_spot_views
    from gen3d.backend.training import get_recipe, prepare

    make_spot_views(tmp_path / "data" / "spot", resolution=64, per_ring=4)
    opts = ["--set", "eval_size=24", "--set", "eval_views=2"]
    try:
        assert main(["train", "instant3d-recon", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                     "--preset", "tiny", *opts]) == 0
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = (sum(m["loss"] for m in part) / 5 for part in (lines[:5], lines[-5:]))
    assert last < 0.9 * first, (first, last)
    run = prepare("instant3d-recon", tmp_path / "data", tmp_path / "unused", "tiny", {"eval_size": 24,
                                                                                      "eval_views": 2})
    recipe = get_recipe("instant3d-recon")
    untrained = recipe.evaluate(recipe.model(run.cfg).eval(), run.dataset, run.cfg)[1]["eval_psnr"]
    assert lines[-1]["eval_psnr"] > untrained + 1.0, (untrained, lines[-1])
    folder = tmp_path / "run" / "weights" / "instantmesh-nerf-base"
    assert {"instant_nerf_base.ckpt", "instantmesh_config.json", "GEN3D_TINY.json"} <= {p.name for p in
                                                                                        folder.iterdir()}
    model = load_instantmesh(folder)
    item = run.dataset.views(0, [0, 1], 24, torch.zeros(2, 2, dtype=torch.long), 24, torch.ones(2))
    with torch.no_grad():
        assert torch.isfinite(model.forward_planes(item["source"][None], item["source_camera"][None])).all()


def test_grid_recipe_fine_tunes_on_spot_grids_and_exports_a_grid_model(tmp_path, monkeypatch):
    """``train instant3d-grid`` (tiny SD 2.1 layout, 64-px grids of Spot's first four renders, captioned by
    captions.json): the fixed-noise evaluation loss falls below the untrained model's and the export drives the
    instant3d method's grid sampler."""
    from accelerate.state import AcceleratorState, GradientState

    from gen3d.backend import weights
    from gen3d.backend.__main__ import main
    from gen3d.backend.commands.demo import make_spot_views
    from gen3d.backend.models.instant3d.grid import GridGenerator
    from gen3d.backend.training import get_recipe, prepare

    make_spot_views(tmp_path / "data" / "spot", resolution=64, per_ring=4)
    (tmp_path / "data" / "captions.json").write_text(json.dumps({"spot": "a spotted cow"}))
    weights.write_tiny("sd21-base", tmp_path / "w")
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path / "w"))
    try:
        assert main(["train", "instant3d-grid", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                     "--preset", "tiny"]) == 0
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    run = prepare("instant3d-grid", tmp_path / "data", tmp_path / "unused", "tiny")
    recipe = get_recipe("instant3d-grid")
    untrained = recipe.evaluate(recipe.model(run.cfg), run.dataset, run.cfg)[1]["eval_loss"]
    assert lines[-1]["eval_loss"] < 0.9 * untrained, (untrained, lines[-1]["eval_loss"])
    folder = tmp_path / "run" / "weights" / "instant3d-grid"
    assert (folder / "model_index.json").is_file() and (folder / "GEN3D_TINY.json").is_file()
    assert GridGenerator.from_folder(folder)("a spotted cow", 64, steps=1).shape == (64, 64, 3)
