"""Method ``lrm`` end to end on tiny random models saved in the published layouts and read by the real loaders,
plus the loaders' error paths and the preprocessing geometry."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.errors import BadInput, MissingWeights
from gen3d.backend.models.lrm import load_lrm
from gen3d.backend.models.lrm.checkpoints import resolve_interpolations
from gen3d.backend.models.lrm.config import from_openlrm_config, from_triposr_config
from gen3d.backend.models.lrm.preprocess import preprocess_image
from gen3d.backend.models.lrm.tiny import (TINY_OPENLRM, random_lrm, tiny_factories, tiny_triposr_yaml,
                                     write_tiny_openlrm, write_tiny_triposr)

MODELS = ("openlrm-small", "openlrm-base", "triposr")


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrm_weights")
    for name in MODELS:
        tiny_factories()[name](root / name)
        (root / name / "GEN3D_TINY.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def disc_png(tmp_path_factory):
    """An off-centre orange disc on a transparent 96x128 canvas."""
    im = np.zeros((96, 128, 4), np.uint8)
    yy, xx = np.mgrid[:96, :128]
    im[(yy - 40) ** 2 + (xx - 75) ** 2 < 25 ** 2] = [230, 120, 30, 255]
    path = tmp_path_factory.mktemp("img") / "disc.png"
    Image.fromarray(im).save(path)
    return path


@pytest.mark.parametrize("model", MODELS)
def test_lrm_method_end_to_end_to_a_textured_glb(model, weights_root, disc_png, tmp_path, monkeypatch):
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job
    from gen3d.backend.representations.mesh import load_glb

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(weights_root))
    opts = {"model": model, "preview_views": 2, "preview_size": 24, "mesh_resolution": 40, "texture_size": 128,
            "target_faces": 4000}
    ctx = RunContext(out_dir=tmp_path)
    arts = run_job(JobRequest(method="lrm", preset="fast", options=opts, files={"image": str(disc_png)}), ctx)
    assert {"mesh.glb", "mesh.obj", "preview.png", "triplane.png", "input.png", "meta.json"} <= set(arts)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["weights"]["tiny"] is True and meta["weights"]["name"] == model
    assert {"triplane", "triplane_preview", "mesh", "uv_unwrap", "bake", "export"} <= set(meta["timings"])

    mesh = load_glb(tmp_path / "mesh.glb")
    assert mesh.uvs is not None and mesh.texture is not None and mesh.texture.shape == (128, 128, 3)
    assert len(mesh.faces) > 0
    cfg = load_lrm(weights_root / model).cfg
    assert mesh.vertices.abs().max() <= cfg.radius + 1e-4
    # the baked texture holds the triplane colour at each surface point (independent of the UV layout)
    lrm = load_lrm(weights_root / model)
    image = preprocess_image(np.asarray(Image.open(disc_png), dtype=np.float32) / 255, cfg)
    with torch.no_grad():
        field = lrm.field(lrm.forward_planes(image)[0])
        expected = field.colour(mesh.vertices)
    assert (mesh.sample_texture() - expected).abs().mean() < 0.03
    assert Image.open(tmp_path / "triplane.png").size == (2 * 24, 24)


def test_tiny_checkpoints_round_trip_exactly(tmp_path):
    write_tiny_openlrm(tmp_path / "o", packed=True, seed=3)  # the separate-q/k/v form: see test_lrm_parity
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    expected = random_lrm(from_openlrm_config(cfg), seed=3).state_dict()
    loaded = load_lrm(tmp_path / "o").state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    write_tiny_triposr(tmp_path / "t", seed=4)
    expected = random_lrm(from_triposr_config(resolve_interpolations(tiny_triposr_yaml())), seed=4).state_dict()
    loaded = load_lrm(tmp_path / "t").state_dict()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)


class _NotATensor:
    pass


def test_loaders_refuse_bad_checkpoints(tmp_path):
    with pytest.raises(MissingWeights):
        load_lrm(tmp_path / "nothing")
    # TripoSR: a pickle with a non-tensor object is refused by the tensors-only load
    write_tiny_triposr(tmp_path / "t")
    sd = torch.load(tmp_path / "t" / "model.ckpt", weights_only=True)
    sd["evil"] = _NotATensor()
    with open(tmp_path / "t" / "model.ckpt", "wb") as f:
        pickle.dump(sd, f)
    with pytest.raises(BadInput, match="tensors-only"):
        load_lrm(tmp_path / "t")
    # OpenLRM: a config that does not match the tensors names the offending key
    write_tiny_openlrm(tmp_path / "o")
    (tmp_path / "o" / "config.json").write_text(json.dumps({**TINY_OPENLRM, "triplane_dim": 16}))
    with pytest.raises(BadInput, match="wrong shapes"):
        load_lrm(tmp_path / "o")


def test_preprocessing_recentres_to_the_model_ratio(disc_png):
    cfg = from_triposr_config(resolve_interpolations(tiny_triposr_yaml()))
    rgba = np.asarray(Image.open(disc_png), dtype=np.float32) / 255
    x = preprocess_image(rgba, cfg)[0]
    S = cfg.image_size
    assert x.shape == (3, S, S)
    fg = (x - cfg.background).abs().amax(0) > 0.2
    ys, xs = torch.nonzero(fg, as_tuple=True)
    span = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1).item()
    assert abs(span - cfg.foreground_ratio * S) <= 2
    assert abs((ys.min() + ys.max()).item() / 2 - (S - 1) / 2) <= 1.5
    assert abs((xs.min() + xs.max()).item() / 2 - (S - 1) / 2) <= 1.5
    assert torch.allclose(x[:, 0, 0], torch.full((3,), cfg.background))
    with pytest.raises(BadInput):  # an opaque image without a mask (and no local rembg model)
        preprocess_image(rgba[..., :3], cfg)
