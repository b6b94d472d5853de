"""DreamCraft3D: the BSD texture stage's parts on the tiny SD 2.1 (the DreamBooth phase personalises the teacher and
never the frozen model, each update moves only its own parameters), the progressive camera sampler, stage resume
(an interrupted run resumed equals the uninterrupted one, bit for bit, on tiny weights) and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.errors import BadInput, Cancelled
from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.pipelines.stages.bootstrapped_texture import BSDOptions, Personalisation, dreambooth_phase

#: every stage runs, in seconds, on the tiny models
SMALL = {"iters": 6, "num_pts": 300, "render_sizes": [32, 32, 32], "ref_size": 32, "density_start_iter": 1,
         "densification_interval": 3, "opening_steps": 2, "mesh_resolution": 24, "mesh_level": 0.2,
         "tet_resolution": 16, "fine_iters": 4, "fine_render_size": 32, "fine_init_steps": 2, "color_resolution": 8,
         "texture_size": 64, "target_faces": 2000, "texture_iters": 6, "texture_render_size": 32,
         "only_pretrain_step": 5, "per_update_pretrain_step": 1, "augment_steps": 2, "preview_views": 2,
         "preview_size": 32, "lambda_depth": 0.0}


@pytest.fixture(scope="module")
def disc_png(tmp_path_factory):
    yy, xx = np.mgrid[:96, :96]
    img = np.zeros((96, 96, 4), np.uint8)
    img[(yy - 48) ** 2 + (xx - 40) ** 2 <= 28 ** 2] = (40, 160, 220, 255)
    path = tmp_path_factory.mktemp("dc3_input") / "disc.png"
    Image.fromarray(img).save(path)
    return path


def _sd(tiny_weights):
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior

    return StableDiffusionPrior(tiny_weights / "sd21-base")


def _views(n: int, size: int = 32):
    el, az = torch.linspace(0, 30, n), torch.linspace(-90, 90, n)
    return orbit_cameras(el, az, 3.8, 20.0, size, size), el, az


# --- BSD ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("personalise,lr", [("lora", 1e-2), ("full", 1e-3)])
def test_dreambooth_phase_fits_the_cache_and_leaves_the_frozen_model_bit_identical(tiny_weights, personalise, lr):
    prior = _sd(tiny_weights)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=gen)
    t, cond = torch.tensor([500]), prior.condition("a cat")
    fresh = _sd(tiny_weights).predict(z, t, cond, ("cond", "negative"))     # the same weights, never touched
    bsd = Personalisation(prior, BSDOptions(personalise=personalise, teacher_lr=lr, cache_size=3,
                                               augment_steps=4), "a cat", "")
    cams, el, az = _views(4)
    renders = torch.rand(4, 3, 32, 32, generator=gen)
    for i in range(4):
        bsd.augment(renders[i:i + 1], cams.c2w[i:i + 1], el[i:i + 1], az[i:i + 1], 0.5, gen)
    assert len(bsd.cache) == 3                                              # the most recent three
    assert not torch.allclose(bsd.cache[-1][0], prior.resize(renders[3:]))  # augmented, not copied

    def cache_loss() -> float:                                               # fixed t, noise and dropout draws
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(float(bsd.bsd.teacher_loss(prior, im, bsd.condition(e, a), c)["loss_pretrain"])
                       for im, c, e, a in bsd.cache for _ in range(4)) / (4 * len(bsd.cache))

    before = cache_loss()
    for _ in range(20):
        bsd.teacher_step(gen)
    after = cache_loss()
    print("teacher loss on the cache", before, "->", after)
    assert after < 0.9 * before
    bsd.remove()
    for a, b in zip(prior.predict(z, t, cond, ("cond", "negative")), fresh):
        assert torch.equal(a, b)


@pytest.mark.parametrize("personalise", ["lora", "full"])
def test_each_update_moves_only_its_own_parameters(tiny_weights, personalise):
    from gen3d.backend.pipelines.stages.mesh_render import render_mesh
    from gen3d.backend.pipelines.stages.uv_unwrap import UnwrapConfig, uv_unwrap
    import trimesh

    prior = _sd(tiny_weights)
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    mesh = uv_unwrap(np.asarray(box.vertices), np.asarray(box.faces), UnwrapConfig(resolution=32))
    texture = torch.nn.Parameter(torch.zeros(32, 32, 3))
    bsd = Personalisation(prior, BSDOptions(personalise=personalise), "a box", "")
    teacher, estimator = bsd.bsd.teacher_parameters(prior), bsd.bsd.trainable_parameters(prior)
    frozen = [p for p in prior.unet.parameters() if not any(p is q for q in teacher + estimator)]
    assert frozen and not any(p.requires_grad for p in frozen)
    cams, el, az = _views(1)
    render = render_mesh(mesh, cams, torch.ones(1, 3), texture=torch.sigmoid(texture)).rgb.permute(0, 3, 1, 2)
    losses = prior(render, bsd.condition(el, az), torch.tensor([300]), bsd.bsd, cameras=cams.c2w)

    def moved(loss):
        grads = torch.autograd.grad(loss, [texture] + teacher + estimator, allow_unused=True, retain_graph=True)
        nonzero = [g is not None and bool(g.abs().sum() > 0) for g in grads]
        return nonzero[0], any(nonzero[1:1 + len(teacher)]), any(nonzero[1 + len(teacher):])

    assert moved(losses["loss_vsd"]) == (True, False, False)        # the texture update: the texture only
    assert moved(losses["loss_lora"]) == (False, False, True)       # the estimator update: the estimator only
    image, c2w, e, a = render.detach(), cams.c2w, el, az
    pretrain = bsd.bsd.teacher_loss(prior, image, bsd.condition(e, a), c2w)["loss_pretrain"]
    assert moved(pretrain) == (False, True, False)                  # the DreamBooth phase: the teacher only
    bsd.remove()


def test_dreambooth_phase_is_the_first_fifth_of_each_period():
    opts = BSDOptions(only_pretrain_step=1000)
    phases = [dreambooth_phase(s, opts) for s in range(1, 2401)]
    assert sum(phases[:1000]) == 200 and all(phases[:200]) and all(phases[1000:1200]) and not any(phases[1200:2000])


def test_views_open_from_the_input_view():
    from gen3d.backend.pipelines.dreamgaussian_guidance import OpeningOrbitSampler

    sampler, gen = OpeningOrbitSampler(elevation=15.0, opening=0.5), torch.Generator().manual_seed(0)
    first = [sampler.sample(8, gen, 0.0) for _ in range(5)]
    assert all(float(el) == 15.0 and float(az) == 0.0 for _, el, az in first)
    half = torch.stack([torch.cat(sampler.sample(8, gen, 0.25)[1:]) for _ in range(300)])
    assert 15 - 12.5 - 1e-4 <= half[:, 0].min() and half[:, 0].max() <= 15 + 15 + 1e-4
    assert half[:, 1].abs().max() <= 90 and half[:, 1].abs().max() > 80
    full = torch.stack([torch.cat(sampler.sample(8, gen, 0.9)[1:]) for _ in range(300)])
    assert full[:, 0].min() >= -10 and full[:, 0].max() <= 45 and full[:, 1].abs().max() > 170


# --- resume ------------------------------------------------------------------------------------------------------
def _job(disc_png, seed=3, **options):
    from gen3d.backend.pipelines import JobRequest

    return JobRequest(method="dreamcraft3d", prompt="a blue disc", seed=seed, preset="fast",
                      options={**SMALL, **options}, files={"image": str(disc_png)})


def _mesh(out):
    from gen3d.backend.representations.mesh import load_glb

    m = load_glb(out / "mesh.glb")
    return m.vertices, m.texture


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, tiny_weights, disc_png, monkeypatch):
    from gen3d.backend.pipelines import RunContext
    from gen3d.backend.pipelines.runner import run_job

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_rembg"))
    cache: dict = {}
    run_job(_job(disc_png), RunContext(out_dir=tmp_path / "whole", cache=cache))
    assert not (tmp_path / "whole" / "checkpoints").exists()               # removed once finished

    seen: list[tuple[str, int, int]] = []
    stop = lambda: bool(seen) and seen[-1][0] == "texture" and seen[-1][1] >= 2  # noqa: E731
    ctx = RunContext(out_dir=tmp_path / "cut", cache=cache, cancelled_fn=stop,
                     progress_fn=lambda stage, step, total, preview=None: seen.append((stage, step, total)))
    with pytest.raises(Cancelled):
        run_job(_job(disc_png), ctx)
    assert {p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()} == {"request.json", "gaussians.pt",
                                                                              "dmtet.pt"}
    with pytest.raises(BadInput, match="seed"):                            # another request cannot resume it
        run_job(_job(disc_png, seed=4), RunContext(out_dir=tmp_path / "cut", cache=cache, resume=True))
    seen.clear()
    run_job(_job(disc_png), RunContext(out_dir=tmp_path / "cut", cache=cache, resume=True,
                                       progress_fn=lambda stage, step, total, preview=None: seen.append(
                                           (stage, step, total))))
    assert [s for s in seen if s[0] in ("gaussians", "dmtet")] == [("gaussians", 1, 1), ("dmtet", 1, 1)]
    for a, b in zip(_mesh(tmp_path / "whole"), _mesh(tmp_path / "cut")):
        assert torch.equal(a, b)
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["metrics"]["texture_loss_vsd"] >= 0
    with pytest.raises(BadInput, match="finished"):
        run_job(_job(disc_png), RunContext(out_dir=tmp_path / "cut", cache=cache, resume=True))


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_use_exits_2_with_one_line(tmp_path, tiny_weights, disc_png, capsys, monkeypatch):
    from gen3d.backend.__main__ import main

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))
    base = ["run", "dreamcraft3d", "--image", str(disc_png), "--weights-dir", str(tiny_weights), "--device", "cpu",
            "--preset", "fast"]
    for name, extra, words in (("nocaption", [], ["prompt"]),
                               ("nothing", ["--prompt", "x", "--resume"], ["resume", "does not exist"]),
                               ("magic", None, ["magic123", "cannot resume"]),
                               ("empty", ["--prompt", "x", "--resume"], ["nothing to resume"]),
                               ("bad", ["--prompt", "x", "--set", "bsd_t_min=2"], ["bsd_t_min"])):
        out = tmp_path / name
        if name == "empty":
            out.mkdir()
        args = [*base, "--out", str(out), *extra] if extra is not None else [
            "run", "magic123", "--image", str(disc_png), "--out", str(out), "--weights-dir", str(tiny_weights),
            "--resume"]
        if name == "magic":
            out.mkdir()
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and all(w in err for w in words), (name, err)
        assert len(err.strip().splitlines()) == 1 and not (out / "meta.json").exists()
