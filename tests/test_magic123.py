"""Magic123: the depth prior and its loss, the reference schedule, textual inversion in diffusers' format, and the
method end to end through the CLI with tiny weights (plus its bad inputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.guidance.depth import depth_correlation_loss, pearson
from gen3d.backend.pipelines.stages.distill_gaussians import ReferenceView

REPO = Path(__file__).resolve().parents[1]

#: every stage runs, in seconds, on the tiny models
SMALL = {"iters": 6, "num_pts": 300, "render_sizes": [32, 32, 32], "ref_size": 32, "density_start_iter": 1,
         "densification_interval": 3, "known_iters": 2, "known_view_interval": 2, "mesh_resolution": 24,
         "mesh_level": 0.2, "tet_resolution": 16, "fine_iters": 3, "fine_render_size": 32, "fine_init_steps": 2,
         "color_resolution": 8, "texture_size": 64, "target_faces": 2000, "preview_views": 2, "preview_size": 32}


@pytest.fixture(scope="module")
def weights_dir(tiny_weights) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def disc_png(tmp_path_factory) -> Path:
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 4), np.uint8)
    img[(yy - 48) ** 2 + (xx - 40) ** 2 <= 28 ** 2] = (40, 160, 220, 255)
    path = tmp_path_factory.mktemp("m123_input") / "disc.png"
    Image.fromarray(img).save(path)
    return path


# --- depth prior -------------------------------------------------------------------------------------------------
def test_pearson_matches_numpy_and_the_depth_loss_is_affine_invariant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(500, generator=g, dtype=torch.float64), torch.rand(500, generator=g, dtype=torch.float64)
    assert abs(float(pearson(a, b)) - np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 1e-12
    depth = 1.0 + torch.rand(16, 16, generator=g)
    mask = torch.rand(16, 16, generator=g) > 0.3
    depth_far = torch.where(mask, depth, torch.inf)          # empty pixels render at infinity
    mono = 3.0 / depth + 7.0                                 # an affine map of the inverse depth
    assert float(depth_correlation_loss(depth_far, mono, mask)) < 1e-6
    assert abs(float(depth_correlation_loss(depth_far, -mono, mask)) - 1.0) < 1e-6
    assert float(depth_correlation_loss(depth_far, torch.rand(16, 16, generator=g), mask)) > 0.2


def test_tiny_depth_model_loads_in_the_hub_layout(weights_dir):
    from gen3d.backend.guidance.depth import MonocularDepth

    folder = weights_dir / "depth-anything-v2-small"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    model = MonocularDepth(folder)
    assert type(model.model).__name__ == "DepthAnythingForDepthEstimation"
    out = model.predict(torch.rand(1, 3, 40, 52))
    assert out.shape == (1, 1, 40, 52) and torch.isfinite(out).all()


def test_reference_schedule_is_magic123s():
    # known_iters 100, then every 4th step the reference only; DreamGaussian's default: both every step
    ref = ReferenceView(torch.zeros(1, 4, 8, 8), known_iters=100, interval=4)
    modes = [ref.schedule(s) for s in range(1, 121)]
    assert all(m == (True, False) for m in modes[:100])
    assert [s for s in range(101, 121) if modes[s - 1] == (True, False)] == [104, 108, 112, 116, 120]
    assert all(modes[s - 1] == (False, True) for s in range(101, 121) if s % 4)
    assert ReferenceView(torch.zeros(1, 4, 8, 8)).schedule(7) == (True, True)


# --- textual inversion ---------------------------------------------------------------------------------------------
def test_opacity_entropy_is_the_binary_entropy_ramped_over_the_first_half():
    from gen3d.backend.pipelines.magic123 import opacity_entropy
    from gen3d.backend.representations.gaussians import Gaussians

    p = np.array([0.001, 0.3, 0.5, 0.9])
    n = len(p)
    logits = torch.tensor(np.log(p / (1 - p)), requires_grad=True)
    g = Gaussians(torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.zeros(n, 3), logits,
                  torch.zeros(n, 1, 3))
    bits = -(p * np.log2(p) + (1 - p) * np.log2(1 - p)).mean()
    for progress, ramp in ((0.25, 0.5), (0.5, 1.0), (0.9, 1.0)):
        loss, logs = opacity_entropy(1e-3)(g, progress)
        assert float(loss.detach()) == pytest.approx(1e-3 * ramp * bits, rel=1e-6)
        assert logs["opacity_entropy"] == pytest.approx(bits, rel=1e-6)
    loss.backward()
    assert logits.grad[1] > 0 and logits.grad[3] < 0 and abs(float(logits.grad[2])) < 1e-9  # away from 0.5


def test_zero123_loss_is_scaled_by_the_angle_from_the_input_view():
    """Magic123's ``zero123_grad_scale: angle``: weight x (great-circle angle between view and input view) / 180."""
    from types import SimpleNamespace

    from gen3d.backend.pipelines.dreamgaussian_guidance import Term

    term = Term("zero123", SimpleNamespace(reference={"elevation": 30.0, "azimuth": 0.0}), 40.0, angle_scaled=True)
    cases = [((30.0, 0.0), 0.0), ((-30.0, 180.0), 180.0), ((-60.0, 0.0), 90.0), ((30.0, 90.0), 75.522488)]
    for (el, az), degrees in cases:   # last: cos = sin²30 + cos²30·cos 90 = 1/4
        assert term.scale(torch.tensor([el]), torch.tensor([az])) == pytest.approx(40.0 * degrees / 180, abs=1e-4)
    term.angle_scaled = False
    assert term.scale(torch.tensor([-30.0]), torch.tensor([180.0])) == 40.0


def test_textual_inversion_saves_what_diffusers_loads(tmp_path, weights_dir):
    from diffusers import StableDiffusionPipeline

    from gen3d.backend.errors import Cancelled
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior
    from gen3d.backend.pipelines import RunContext
    from gen3d.backend.pipelines.stages.textual_inversion import TextualInversionConfig, learn_token

    prior = StableDiffusionPrior(weights_dir / "sd15")
    rgba = torch.rand(1, 4, 32, 32)
    steps = []
    ctx = RunContext(out_dir=tmp_path, progress_fn=lambda stage, s, n, p: steps.append((stage, s, n)))
    before = prior.text.model.get_input_embeddings().weight.detach().clone()
    token, emb, path = learn_token(prior, rgba, TextualInversionConfig(steps=3, lr=0.05), torch.Generator(), ctx)
    assert steps == [("textual_inversion", i, 3) for i in (1, 2, 3)]
    init = before[prior.text.tokenizer("object", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(emb, init)                     # it trained
    after = prior.text.model.get_input_embeddings().weight.detach()
    assert torch.equal(after[:len(before)], before)          # no other row moved
    # diffusers' own loader reads the file into its tokenizer and text encoder
    pipe = StableDiffusionPipeline.from_pretrained(weights_dir / "sd15", safety_checker=None)
    pipe.load_textual_inversion(str(path))
    tid = pipe.tokenizer.convert_tokens_to_ids(token)
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[tid], emb)
    # the prompt with the token now encodes through the learned row
    assert prior.text.embed([f"a photo of {token}"]).shape[1] == 77
    with pytest.raises(Cancelled):
        learn_token(prior, rgba, TextualInversionConfig(steps=3), torch.Generator(),
                    RunContext(out_dir=tmp_path, cancelled_fn=lambda: True))


# --- end to end ------------------------------------------------------------------------------------------------
def _cli(out: Path, weights_dir: Path, *args: str, options: dict | None = None):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**SMALL, **(options or {})}.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "U2NET_HOME": str(out.parent / "no_rembg")}
    return subprocess.run([sys.executable, "-m", "gen3d", "run", "magic123", "--out", str(out), "--weights-dir",
                           str(weights_dir), "--preset", "fast", "--seed", "3", "--device", "cpu", *args, *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_image_to_mesh_with_a_learned_token_csd_and_dreamtime(tmp_path, weights_dir, disc_png):
    out = tmp_path / "run"
    r = _cli(out, weights_dir, "--image", str(disc_png),
             options={"textual_inversion": True, "ti_steps": 2, "distillation": "csd",
                      "timestep_schedule": "dreamtime", "lambda_2d": 2.0, "lambda_3d": 30.0})
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("mesh.glb", "mesh.obj", "mesh.png", "gaussians.ply", "preview.png", "placement.json",
                 "learned_embeds.safetensors", "input.png", "meta.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "meta.json").read_text())
    for stage in ("preprocess", "load", "textual_inversion", "gaussians", "mesh", "dmtet", "texture", "export"):
        assert stage in meta["timings"], stage
    assert meta["prompt_2d"].startswith("A high-resolution DSLR image of <m123-")
    assert meta["options"]["lambda_2d"] == 2.0 and meta["options"]["lambda_3d"] == 30.0
    assert [w["name"] for w in meta["weights"]] == ["zero123-105000", "sd15", "depth-anything-v2-small"]
    assert meta["tiny_weights"] and meta["metrics"]["dmtet_faces"] > 0
    assert Image.open(out / "mesh.png").size == (64, 64)
    import trimesh

    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.uv is not None


def _main(capsys, monkeypatch, out: Path, weights_dir: Path, image: Path, options: dict | None = None):
    """The CLI in this process: ``(exit code, stderr)``."""
    from gen3d.backend.__main__ import main

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(weights_dir))   # restored after the CLI sets it
    monkeypatch.setenv("U2NET_HOME", str(out.parent / "no_rembg"))
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**SMALL, **(options or {})}.items()]
    code = main(["run", "magic123", "--image", str(image), "--out", str(out), "--weights-dir", str(weights_dir),
                 "--preset", "fast", "--device", "cpu", *sets])
    return code, capsys.readouterr().err


def test_missing_depth_weights_name_the_download(tmp_path, weights_dir, disc_png, capsys, monkeypatch):
    partial = tmp_path / "weights"
    partial.mkdir()
    for name in ("zero123-105000", "sd15"):
        os.symlink(weights_dir / name, partial / name)
    from gen3d.backend import weights

    monkeypatch.setattr(weights, "_hf_cache_path", lambda entry: None)   # a real download elsewhere must not count
    code, err = _main(capsys, monkeypatch, tmp_path / "out", partial, disc_png)
    assert code == 3 and "python -m gen3d weights download depth-anything-v2-small" in err
    assert not (tmp_path / "out" / "meta.json").exists()
    # with the depth loss off the method does not need it (and without a prompt, fast has no 2D prior)
    code, err = _main(capsys, monkeypatch, tmp_path / "out2", partial, disc_png, {"lambda_depth": 0, "fine_iters": 1})
    assert code == 0, err[-3000:]
    meta = json.loads((tmp_path / "out2" / "meta.json").read_text())
    assert meta["prompt_2d"] is None and [w["name"] for w in meta["weights"]] == ["zero123-105000"]


def test_bad_inputs_exit_2_with_one_line(tmp_path, weights_dir, disc_png, capsys, monkeypatch):
    photo = tmp_path / "photo.jpg"
    Image.open(disc_png).convert("RGB").save(photo)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(empty)
    for name, image, options, words in (("o1", disc_png, {"tet_resolution": 4}, ["tet_resolution"]),
                                        ("o2", photo, {}, ["rembg", "photo.jpg"]),
                                        ("o3", empty, {}, ["empty"])):
        code, err = _main(capsys, monkeypatch, tmp_path / name, weights_dir, image, options)
        assert code == 2 and all(w in err for w in words), err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / name / "meta.json").exists()
