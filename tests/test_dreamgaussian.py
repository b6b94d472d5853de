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

from gen3d.backend.errors import BadInput
from gen3d.backend.geometry import image_prep
from gen3d.backend.pipelines.dreamgaussian_guidance import OrbitSampler, dreamgaussian_strength

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


def test_bake_views_are_dreamgaussians_26():
    from gen3d.backend.geometry.cameras import orbit_angles
    from gen3d.backend.pipelines.stages.bake_texture import orbit_bake_cameras as bake_cameras

    cams = bake_cameras(2.5, 49.1, 64)
    angles = orbit_angles(cams.c2w)                 # [N, 3]: elevation, azimuth, radius
    assert len(cams) == 26 and torch.allclose(angles[:, 2], torch.tensor(2.5), atol=1e-4)
    got = {(round(float(e)), round(float(a)) % 360) for e, a in angles[:24, :2]}
    assert got == {(e, a) for e in (0, 45, -45) for a in range(0, 360, 45)}
    assert torch.allclose(angles[24:, 0], torch.tensor([89.9, -89.9]), atol=1e-3)


# --- end to end through the CLI ----------------------------------------------------------------------------------
#: a tiny configuration: every stage runs, in seconds, on the tiny priors (64 px)
SMALL = {"iters": 3, "iters_refine": 2, "num_pts": 200, "render_sizes": [32, 32, 48], "density_start_iter": 1,
         "densification_interval": 2, "mesh_resolution": 32, "mesh_level": 0.2, "target_faces": 2000,
         "texture_size": 64, "bake_size": 32, "bake_elevations": [0], "bake_azimuths": 4, "refine_size": 32,
         "refine_steps": 10, "preview_views": 2, "preview_size": 32}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    from gen3d.backend import weights

    root = tmp_path_factory.mktemp("dg_weights")
    for name in ("zero123-xl", "sd21-base", "mvdream"):
        weights.write_tiny(name, root)
    return root


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dg_input") / "cat.png"
    Image.fromarray(_disc_rgba((96, 96), (48, 48), 30)).save(path)
    return path


IMAGE_SMALL = {**SMALL, "ref_size": 32}


def _cli(method: str, out: Path, weights_dir: Path, *args: str):
    options = IMAGE_SMALL if method == "dreamgaussian" else SMALL
    sets = [f"--set={k}={json.dumps(v)}" for k, v in options.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "U2NET_HOME": str(out.parent / "no_rembg_models")}
    return subprocess.run([sys.executable, "-m", "gen3d", "run", method, "--out", str(out), "--weights-dir",
                           str(weights_dir), "--preset", "fast", "--seed", "7", "--device", "cpu", *args, *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _check_outputs(out: Path, texture_size: int):
    for name in ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "gaussians.ply", "preview.png", "meta.json"):
        assert (out / name).is_file(), name
    mtl = (out / "mesh.mtl").read_text()
    assert "map_Kd mesh.png" in mtl and "Tr 1" not in mtl and "d 1" in mtl   # opaque in every OBJ viewer
    meta = json.loads((out / "meta.json").read_text())
    for stage in ("preprocess", "load", "gaussians", "mesh", "uv_unwrap", "bake", "refine", "export"):
        assert stage in meta["timings"], stage
    assert Image.open(out / "mesh.png").size == (texture_size, texture_size)
    return meta


def _blender_import(glb: Path):
    """Import ``glb`` into an empty Blender scene; returns (mesh object, base-colour image)."""
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(glb))
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    assert len(obj.data.polygons) > 0 and obj.data.uv_layers.active is not None
    (material,) = obj.data.materials
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return obj, bsdf.inputs["Base Color"].links[0].from_node.image


def test_text_guides_schedules_distillations_and_mvdream(tmp_path, weights_dir, monkeypatch):
    from gen3d.backend.guidance.distillation import CSD, SDS
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.dreamgaussian import DreamGaussianTextOptions, build_guide

    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(weights_dir))
    ctx, gen = RunContext(out_dir=tmp_path), torch.Generator().manual_seed(0)
    request = JobRequest(method="dreamgaussian-text", prompt="a cup")
    sampler = OrbitSampler(radius=2.5)

    def timesteps(guide, sampler, n_images):
        out = []
        for p in (0.0, 0.6, 1.0):
            cams, el, az = sampler.sample(32, gen)
            images = torch.rand(n_images, 3, 32, 32, requires_grad=True)
            loss, logs = guide.losses(images, cams, el, az, p)
            if p == 0.0:
                loss.backward()
                assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
            out.append(next(v for k, v in logs.items() if k.endswith("_t")))
        return out

    # the default: DreamGaussian's deterministic linear anneal t = round((1 - p) T) within [20, 980]
    guide = build_guide(DreamGaussianTextOptions(), request, ctx, gen, None)
    assert isinstance(guide.terms[0].distillation, SDS) and guide.terms[0].prior.guidance_scale == 100
    assert timesteps(guide, sampler, 1) == [980, 400, 20]
    # DreamTime and CSD: deterministic, non-increasing
    guide = build_guide(DreamGaussianTextOptions(timestep_schedule="dreamtime", distillation="csd"), request, ctx,
                        gen, None)
    assert isinstance(guide.terms[0].distillation, CSD)
    ts = timesteps(guide, sampler, 1)
    assert ts == sorted(ts, reverse=True) and ts[0] > ts[-1]
    # MVDream: four views 90 degrees apart share one timestep; DreamGaussian's SDS without w(t), CFG 100
    guide = build_guide(DreamGaussianTextOptions(prior="mvdream"), request, ctx, gen, None)
    assert guide.terms[0].distillation.weighting == "uniform" and guide.terms[0].prior.guidance_scale == 100
    assert timesteps(guide, OrbitSampler(radius=2.5, views=4), 4) == [980, 400, 20]
    cams, el, az = OrbitSampler(radius=2.5, views=4).sample(32, gen)
    (weight, target), = guide.targets(torch.rand(4, 3, 32, 32), cams, el, az, strength=0.2, steps=5)
    assert weight == 1.0 and target.shape == (4, 3, 32, 32) and 0 <= float(target.min()) <= float(target.max()) <= 1


def test_image_to_3d_end_to_end_and_reproducible(tmp_path, weights_dir, cat_png, monkeypatch):
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job

    out = tmp_path / "cli"
    r = _cli("dreamgaussian", out, weights_dir, "--image", str(cat_png))
    assert r.returncode == 0, r.stderr[-3000:]
    meta = _check_outputs(out, SMALL["texture_size"])
    assert meta["method"] == "dreamgaussian" and meta["seed"] == 7
    assert meta["weights"][0]["name"] == "zero123-xl" and meta["weights"][0]["tiny"]
    obj, image = _blender_import(out / "mesh.glb")
    assert tuple(image.size) == (SMALL["texture_size"],) * 2

    # the same seed and options in another process give the same Gaussians and texture
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(weights_dir))
    again = tmp_path / "again"
    request = JobRequest(method="dreamgaussian", seed=7, preset="fast", options=IMAGE_SMALL,
                         files={"image": str(cat_png)})
    run_job(request, RunContext(out_dir=again))
    assert (again / "gaussians.ply").read_bytes() == (out / "gaussians.ply").read_bytes()
    assert np.array_equal(np.asarray(Image.open(again / "mesh.png")), np.asarray(Image.open(out / "mesh.png")))


def test_text_to_3d_end_to_end(tmp_path, weights_dir):
    out = tmp_path / "text"
    r = _cli("dreamgaussian-text", out, weights_dir, "--prompt", "a red car")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = _check_outputs(out, SMALL["texture_size"])
    assert meta["weights"][0]["name"] == "sd21-base"
    _blender_import(out / "mesh.glb")


def test_rgb_input_without_rembg_exits_2_with_the_instruction(tmp_path, weights_dir, capsys, monkeypatch):
    from gen3d.backend.__main__ import main

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_rembg_models"))
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(weights_dir))  # restored after the CLI sets it
    photo = tmp_path / "photo.jpg"
    Image.fromarray(_disc_rgba()[..., :3]).save(photo)
    code = main(["run", "dreamgaussian", "--image", str(photo), "--out", str(tmp_path / "out"), "--weights-dir",
                 str(weights_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "RGBA" in err and "rembg" in err and "photo.jpg" in err
    assert not (tmp_path / "out" / "meta.json").exists()
