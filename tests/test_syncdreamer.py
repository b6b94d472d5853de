"""SyncDreamer (issue 20): checkpoint names, cameras, volume geometry and attention against independent references,
the tiny checkpoint through the real loader and sampler, and bad input.

References: the published key list (tests/data/checkpoint_keys/syncdreamer.json), the published
``meta_info/camera-16.pkl`` values (tests/data/syncdreamer_camera16.json), pinhole projection written out here,
a brute-force trilinear lookup and a dense softmax attention. The whole-forward comparison against the official
classes is a scratch run (see the issue note), not a test: the official code needs packages we do not ship.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gen3d.backend.errors import BadInput
from gen3d.backend.models.syncdreamer import SyncDreamer, SyncDreamerConfig, load_syncdreamer, target_cameras
from gen3d.backend.models.syncdreamer.cameras import (SYNC_TO_WORLD, official_azimuths, official_intrinsics,
                                                      official_poses, viewpoint_embedding)
from gen3d.backend.models.syncdreamer.checkpoint import convert_state_dict
from gen3d.backend.models.syncdreamer.model import ddpm_schedule
from gen3d.backend.models.syncdreamer.preprocess import prepare_input
from gen3d.backend.models.syncdreamer.sampler import ddim_schedule
from gen3d.backend.models.syncdreamer.unet import DepthAttention
from gen3d.backend.models.syncdreamer.volume import frustum_points, sample_volume, unproject

DATA = Path(__file__).parent / "data"
CAMERAS = json.loads((DATA / "syncdreamer_camera16.json").read_text())


def test_every_published_tensor_maps_to_ours_with_its_shape():
    keys = json.loads((DATA / "checkpoint_keys" / "syncdreamer.json").read_text())["tensors"]
    official = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    converted = {k: tuple(v.shape) for k, v in convert_state_dict(official, SyncDreamerConfig()).items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in SyncDreamer().state_dict().items()}
    assert len(keys) == 1618 and converted == ours


def test_cameras_are_the_published_ones():
    poses = torch.tensor(CAMERAS["poses"], dtype=torch.float32)
    assert torch.allclose(official_poses(), poses, atol=2e-6)
    assert torch.allclose(official_intrinsics(), torch.tensor(CAMERAS["K"], dtype=torch.float32).expand(16, 3, 3))
    published_az = torch.tensor(CAMERAS["azimuths"], dtype=torch.float64)
    assert torch.allclose(official_azimuths().double(), (published_az + math.pi) % (2 * math.pi) - math.pi, atol=1e-6)
    # our cameras (Z up, view 0 at azimuth 0 = -Y) are the published ones in our frame: centre = S @ (-R^T t)
    centres = -(poses[:, :, :3].transpose(1, 2) @ poses[:, :, 3:])[..., 0] @ SYNC_TO_WORLD.T
    cams = target_cameras()
    assert torch.allclose(cams.c2w[:, :3, 3], centres, atol=2e-6)
    assert torch.allclose(cams.K[0], torch.tensor([[280.0, 0, 128], [0, 280, 128], [0, 0, 1]]), atol=1e-4)
    assert np.allclose(CAMERAS["elevations"], math.radians(30)) and np.allclose(CAMERAS["distances"], 1.5)


def test_viewpoint_embedding_is_zero123s_negated_elevation_delta():
    emb = viewpoint_embedding(official_azimuths(), torch.tensor([math.radians(10.0)]))
    assert emb.shape == (1, 16, 4)
    assert torch.allclose(emb[0, :, 0], torch.full((16,), math.radians(10.0 - 30.0)))
    az = torch.deg2rad(torch.arange(16) * 22.5)
    assert torch.allclose(emb[0, :, 1], torch.sin(az), atol=1e-6) and torch.allclose(emb[0, :, 2], torch.cos(az),
                                                                                       atol=1e-6)
    assert (emb[0, :, 3] == 0).all()


def _project(points: np.ndarray, pose: np.ndarray, K: np.ndarray, scale: float) -> np.ndarray:
    """Pinhole projection of ``points [M, 3]`` to pixel (u, v) of the ``scale``-resized image (plain numpy)."""
    cam = points @ pose[:, :3].T + pose[:, 3]
    return (cam[:, :2] / cam[:, 2:]) * np.array([K[0, 0], K[1, 1]]) * scale + np.array([K[0, 2], K[1, 2]]) * scale


def test_unprojection_reads_each_view_at_the_analytic_projection():
    V, size = 8, 32
    Ks, poses = official_intrinsics(), official_poses()
    u, v = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="xy")
    feats = torch.stack([u, v]).expand(1, 16, 2, size, size)  # bilinear sampling of a linear map is exact
    vol = unproject(feats, Ks, poses, V, 0.5, 256).reshape(16, 2, V, V, V)
    a = np.linspace(-0.5, 0.5, V)
    checked = 0
    for n in (0, 5, 11):
        for d, h, w in itertools.product(range(0, V, 3), repeat=3):
            uv = _project(np.array([[a[w], a[h], a[d]]]), poses[n].double().numpy(), Ks[n].double().numpy(),
                          size / 256)[0]
            if (uv >= 0).all() and (uv <= size - 1).all():
                assert np.allclose(vol[n, :, d, h, w].numpy(), uv, atol=2e-4), (n, d, h, w)
                checked += 1
    assert checked > 50


def test_frustum_points_lie_on_their_pixel_rays_at_their_depths():
    Ks, poses = official_intrinsics()[:3], official_poses()[:3]
    pts = frustum_points(Ks, poses, 32, 6, 0.634, 2.366, 256)  # [3, 3, D, 32, 32]
    for n in range(3):
        p = pts[n].permute(1, 2, 3, 0).reshape(-1, 3).double().numpy()
        cam = p @ poses[n, :, :3].double().numpy().T + poses[n, :, 3].double().numpy()
        depth = cam[:, 2].reshape(6, 32, 32)
        assert np.allclose(depth, np.linspace(0.634, 2.366, 6)[:, None, None], atol=1e-5)
        uv = _project(p, poses[n].double().numpy(), Ks[n].double().numpy(), 32 / 256).reshape(6, 32, 32, 2)
        grid_u, grid_v = np.meshgrid(np.arange(32), np.arange(32), indexing="xy")
        assert np.allclose(uv[..., 0], grid_u, atol=1e-4) and np.allclose(uv[..., 1], grid_v, atol=1e-4)


def _trilinear(volume: np.ndarray, p: np.ndarray, half: float) -> np.ndarray:
    """Brute-force trilinear read of ``volume [C, V, V, V]`` (index [d, h, w] <-> point (x_w, y_h, z_d)) at
    ``p [3]``; corners outside the grid count as zero."""
    V = volume.shape[-1]
    idx = (p / half + 1) / 2 * (V - 1)  # continuous (w, h, d)
    lo = np.floor(idx).astype(int)
    out = np.zeros(volume.shape[0])
    for corner in itertools.product((0, 1), repeat=3):
        c = lo + np.array(corner)
        weight = np.prod(1 - np.abs(idx - c))
        if (c >= 0).all() and (c < V).all():
            out += weight * volume[:, c[2], c[1], c[0]]
    return out


def test_frustum_sampling_is_a_trilinear_lookup_with_zeros_outside():
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(1, 3, 6, 6, 6, generator=g)
    points = (torch.rand(1, 3, 4, 5, 5, generator=g) * 1.6 - 0.8)  # some outside [-0.5, 0.5]^3
    got = sample_volume(volume, points, 0.5)[0]
    vol, pts = volume[0].double().numpy(), points[0].double().numpy()
    for i in np.ndindex(4, 5, 5):
        assert np.allclose(got[(slice(None),) + i].numpy(), _trilinear(vol, pts[(slice(None),) + i], 0.5), atol=1e-5)


def test_depth_attention_is_softmax_attention_over_depth_at_each_pixel():
    torch.manual_seed(0)
    att = DepthAttention(query_dim=8, context_dim=6, heads=2, dim_head=4, output_bias=True)
    x, ctx = torch.randn(2, 8, 3, 5), torch.randn(2, 6, 7, 3, 5)
    got = att(x, ctx)
    ref = torch.empty_like(got)
    Wq, Wk, Wv = att.to_q.weight[:, :, 0, 0], att.to_k.weight[:, :, 0, 0, 0], att.to_v.weight[:, :, 0, 0, 0]
    for b, i, j in itertools.product(range(2), range(3), range(5)):
        q = (Wq @ x[b, :, i, j]).reshape(2, 1, 4)  # heads, 1 token, dim
        k = (ctx[b, :, :, i, j].T @ Wk.T).reshape(7, 2, 4).transpose(0, 1)  # heads, depth tokens, dim
        v = (ctx[b, :, :, i, j].T @ Wv.T).reshape(7, 2, 4).transpose(0, 1)
        o = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1) @ v  # scale 1/sqrt(4)
        ref[b, :, i, j] = att.to_out.weight[:, :, 0, 0] @ o.reshape(8) + att.to_out.bias
    assert torch.allclose(got, ref, atol=1e-5)


def test_ddim_schedule_is_ldm_uniform_with_eta():
    ac = ddpm_schedule()["alphas_cumprod"]
    s = ddim_schedule(ac, 50, 1.0)
    assert s.timesteps.tolist() == list(range(1, 1000, 20))
    assert s.alphas_prev[0] == ac[0] and torch.equal(s.alphas_prev[1:], ac[s.timesteps[:-1]])
    a, ap = s.alphas.double(), s.alphas_prev.double()
    assert torch.allclose(s.sigmas.double(), torch.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rtol=1e-5)
    assert (ddim_schedule(ac, 50, 0.0).sigmas == 0).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gen3d.backend.models.syncdreamer.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("syncdreamer") / "syncdreamer")


def test_tiny_checkpoint_loads_and_the_sampler_runs(tiny):
    from gen3d.backend.models.syncdreamer import sample_views

    model = load_syncdreamer(tiny.parent)
    S = model.cfg.image_size
    image = torch.rand(1, 3, S, S) * 2 - 1
    a = sample_views(model, image, torch.tensor([0.3]), steps=2, generator=torch.Generator().manual_seed(3))
    b = sample_views(model, image, torch.tensor([0.3]), steps=2, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, 16, 3, S, S) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    # views batched 3 at a time predict the same noise as all 16 at once (the volume is shared)
    inputs = model.encode_input(image, torch.Generator().manual_seed(0))
    x, t = torch.randn(1, 16, 4, S // 8, S // 8), torch.tensor([501])
    e16 = model.predict_noise(x, t, inputs, torch.tensor([0.3]), 2.0, 16)
    e3 = model.predict_noise(x, t, inputs, torch.tensor([0.3]), 2.0, 3)
    assert torch.allclose(e16, e3, atol=1e-4)
    # classifier-free guidance: eps = u + s (c - u), with u the zeroed-condition branch
    e1 = model.predict_noise(x, t, inputs, torch.tensor([0.3]), 1.0, 16)
    zero = {"clip": inputs["clip"], "latent": torch.zeros_like(inputs["latent"])}
    assert not torch.allclose(e1, e16, atol=1e-4) and not torch.allclose(e1, model.predict_noise(
        x, t, zero, torch.tensor([0.3]), 1.0, 16), atol=1e-4)


def test_checkpoint_with_missing_or_unexpected_tensors_is_one_bad_input(tiny, tmp_path):
    ckpt = torch.load(tiny, weights_only=True)
    state = ckpt["state_dict"]
    state.pop("model.diffusion_model.out.2.weight")
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(BadInput, match=r"1 missing \(model.diffusion_model.out.2.weight\); 1 unexpected "
                                       r"\(model.diffusion_model.extra.weight\)"):
        load_syncdreamer(bad)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot be read as a checkpoint"):
        load_syncdreamer(bad)


def test_input_is_cropped_to_crop_size_centred_on_white():
    rgba = np.zeros((120, 90, 4), np.uint8)
    rgba[20:100, 30:70] = (200, 40, 40, 255)  # 80 x 40 object
    x = prepare_input(rgba, crop_size=200)
    fg = (x < 0.99).any(0).numpy()
    ys, xs = np.nonzero(fg)
    assert ys.max() - ys.min() + 1 in (199, 200) and xs.max() - xs.min() + 1 in (98, 99, 100)
    assert abs((ys.min() + ys.max()) / 2 - 127.5) <= 1.5 and abs((xs.min() + xs.max()) / 2 - 127.5) <= 1.5
    assert torch.allclose(x[:, 0, 0], torch.ones(3))  # white background
    with pytest.raises(BadInput, match="empty"):
        prepare_input(np.zeros((32, 32, 4), np.uint8))


def test_elevation_outside_the_trained_range_is_a_warning():
    from gen3d.backend.pipelines.syncdreamer import elevation_warning

    assert elevation_warning(30.0, "option") is None and elevation_warning(-10.0, "default") is None
    msg = elevation_warning(55.0, "reference camera")
    assert "55.0 deg (reference camera)" in msg and "[-10, 40]" in msg


def _opaque(path):
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)


def _transparent(path):
    from PIL import Image

    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(path)


@pytest.mark.parametrize("make, words", [(_opaque, "has no transparency"), (_transparent, "is empty")])
def test_bad_image_exits_2_with_one_line_and_writes_nothing(make, words, tiny, tmp_path, capsys, monkeypatch):
    from gen3d.backend.__main__ import main

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_rembg_models"))
    make(tmp_path / "in.png")
    out = tmp_path / "out"
    code = main(["run", "syncdreamer", "--image", str(tmp_path / "in.png"), "--out", str(out),
                 "--weights-dir", str(tiny.parent.parent)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (out / "meta.json").exists() and not (out / "mesh.glb").exists()


def test_v1_methods_lists_syncdreamer_for_the_addon():
    from gen3d.backend.api.catalog import all_methods

    info = {m["name"]: m for m in all_methods()}["syncdreamer"]
    assert info["required_inputs"] == ["image"] and set(info["presets"]) == {"fast", "standard", "high"}
    assert {"elevation", "samples", "sample_steps", "cfg_scale", "batch_view_num"} <= set(
        info["options_schema"]["properties"])
    assert info["weights"][0]["name"] == "syncdreamer"
