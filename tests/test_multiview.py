"""``dataset multiview`` with real bpy on Spot: folders that ``reconstruct`` reads, cameras against Blender's own
renders, the CCM pass against the OBJ's vertices, resume, a corrupt model, workers, shards, rings, bad options."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

pytest.importorskip("bpy")

from gen3d.backend.blender.dataset import render_dataset  # noqa: E402
from gen3d.backend.blender.multiview import PASSES, MultiviewSettings  # noqa: E402
from gen3d.backend.blender.poses import orbit_poses, ring_poses  # noqa: E402
from gen3d.backend.blender.shards import write_shards  # noqa: E402
from gen3d.backend.geometry.cameras import orbit_angles  # noqa: E402
from gen3d.backend.geometry.transforms import load_transforms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = MultiviewSettings(size=64, engine="WORKBENCH", views=8, elevation=(-20.0, 50.0), passes=PASSES, seed=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory, spot_dir) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "cow").mkdir()
    (root / "cow" / "spot.obj").write_bytes((spot_dir / "spot_triangulated.obj").read_bytes())
    (root / "junk").mkdir()
    (root / "junk" / "broken.obj").write_text("this is not an OBJ file\nf 1 2 3\n")
    return root


@pytest.fixture(scope="module")
def rendered(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiview")
    return out, render_dataset(models, out, SETTINGS)


@pytest.fixture(scope="module")
def spot(rendered, models):
    """The object folder, its transforms.json and Spot's vertices put into the world independently of bpy: the
    OBJ read by trimesh, Y up -> Blender's Z up, then the recorded normalisation."""
    out, _ = rendered
    folder = out / "cow" / "spot"
    meta = json.loads((folder / "transforms.json").read_text())
    v = trimesh.load(models / "cow" / "spot.obj", force="mesh", process=False).vertices
    norm = meta["normalization"]
    world = norm["scale"] * (np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1) + np.array(norm["offset"]))
    return folder, meta, world


def test_manifest_reports_the_corrupt_model_and_the_folder_loads(rendered, spot):
    out, counts = rendered
    assert counts == {"ok": 1, "skipped": 0, "failed": 1, "views": 8}
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines[0] == {"model_id": "spot", "class": "cow", "status": "ok", "path": "cow/spot",
                        "transforms": "cow/spot/transforms.json", "views": 8, "passes": list(PASSES)}
    assert lines[1]["model_id"] == "broken" and lines[1]["status"] == "failed" and lines[1]["error"]
    folder, meta, world = spot
    cams, images = load_transforms(folder)
    assert len(cams) == 8 and images.shape == (8, 64, 64, 4)
    for frame in meta["frames"]:
        for p in PASSES[1:]:
            assert (folder / frame[f"{p}_file_path"]).is_file()
    assert np.allclose(world.min(0), meta["normalization"]["bbox_min"], atol=1e-5)
    assert np.allclose(world.max(0), meta["normalization"]["bbox_max"], atol=1e-5)


def test_cameras_put_the_vertices_inside_blenders_masks(spot):
    """Vertices projected with transforms.json's cameras (as reconstruct reads them) land in the alpha of bpy's
    renders, and the pixel-centre convention holds: the ray-cast coverage (one ray per pixel centre, half-integer
    coordinates) has the centroid of Blender's anti-aliased alpha; a convention off by half a pixel would move it
    by 0.5 px in x and y. (Cycles agrees within 0.07 px; Workbench's anti-aliasing leans about 0.1 px to the top
    left, hence the tolerance.)"""
    import torch

    folder, meta, world = spot
    cams, images = load_transforms(folder)
    uv, _ = cams.project(torch.tensor(world, dtype=torch.float32))
    shifts = []
    for i, frame in enumerate(meta["frames"]):
        alpha = images[i, ..., 3].numpy()
        dilated = ndimage.binary_dilation(alpha > 0.5, structure=np.ones((3, 3), bool))
        px = np.floor(uv[i].numpy()).astype(int)
        inside = (px >= 0).all(1) & (px < 64).all(1)
        hit = np.zeros(len(px), bool)
        hit[inside] = dilated[px[inside, 1], px[inside, 0]]
        assert hit.mean() >= 0.99, f"view {i}: {hit.mean():.3f} of the vertices inside the mask"
        coverage = np.asarray(Image.open(folder / frame["ccm_file_path"]))[..., 3] / 255.0
        ys, xs = np.mgrid[:64, :64]
        shifts.append([(alpha * w).sum() / alpha.sum() - (coverage * w).sum() / coverage.sum() for w in (xs, ys)])
    shifts = np.array(shifts)
    assert np.abs(shifts).max() < 0.3 and np.abs(shifts.mean(0)).max() < 0.2, shifts


def test_ccm_equals_the_normalised_vertex_positions(spot):
    """At the pixel where a visible vertex projects, the CCM decodes to that vertex's canonical coordinates
    (computed here from the OBJ: the box scaled by 1.1, per axis), within the pixel's footprint on the surface."""
    folder, meta, world = spot
    lo, hi = world.min(0), world.max(0)
    centre, half = (lo + hi) / 2, 1.1 * (hi - lo) / 2
    assert np.allclose(meta["ccm"]["centre"], centre, atol=1e-5)
    assert np.allclose(meta["ccm"]["half_extent"], half, atol=1e-5)
    fx = meta["fl_x"]
    errors, footprints = [], []
    for frame in meta["frames"]:
        c2w = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV
        w2c = np.linalg.inv(c2w)
        cam = world @ w2c[:3, :3].T + w2c[:3, 3]
        uv = cam[:, :2] / cam[:, 2:] * fx + [meta["cx"], meta["cy"]]
        px = np.floor(uv).astype(int)
        depth = np.load(folder / frame["depth_file_path"])
        ccm = np.asarray(Image.open(folder / frame["ccm_file_path"])).astype(np.float64)
        assert ((ccm[..., 3] == 255) == np.isfinite(depth)).all()
        inside = (px >= 0).all(1) & (px < 64).all(1)
        d = np.full(len(px), np.inf)
        d[inside] = depth[px[inside, 1], px[inside, 0]]
        visible = inside & (np.abs(d - cam[:, 2]) < 0.01)
        assert visible.sum() > 50
        decoded = (ccm[px[visible, 1], px[visible, 0], :3] / 255 * 2 - 1) * half + centre
        errors.append(np.linalg.norm(decoded - world[visible], axis=1))
        footprints.append(cam[visible, 2] / fx)  # one pixel's width on a fronto-parallel surface
    err, foot = np.concatenate(errors), np.concatenate(footprints)
    assert np.median(err / foot) < 0.7 and np.quantile(err / foot, 0.9) < 1.5, (np.median(err / foot),)


def test_second_run_resumes(rendered, models):
    out, _ = rendered
    before = (out / "manifest.jsonl").read_text()
    stamp = (out / "cow" / "spot" / "rgba" / "000.png").stat().st_mtime_ns
    counts = render_dataset(models, out, SETTINGS)
    assert counts == {"ok": 0, "skipped": 1, "failed": 1, "views": 8}
    assert (out / "manifest.jsonl").read_text() == before
    assert (out / "cow" / "spot" / "rgba" / "000.png").stat().st_mtime_ns == stamp


def test_two_workers_write_the_same_dataset(rendered, models, tmp_path):
    out, _ = rendered
    counts = render_dataset(models, tmp_path, SETTINGS, workers=2)
    assert counts["ok"] == 1 and counts["failed"] == 1
    assert (tmp_path / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    assert ((tmp_path / "cow/spot/transforms.json").read_text() == (out / "cow/spot/transforms.json").read_text())


def test_webdataset_shards_hold_the_folders(rendered):
    import webdataset as wds

    out, _ = rendered
    paths = write_shards(out, 2)
    samples = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["cow/spot"]
    sample, folder = samples[0], out / "cow" / "spot"
    meta = json.loads(sample["transforms.json"])
    assert meta == json.loads((folder / "transforms.json").read_text())
    for frame in meta["frames"]:
        for key in ("file_path", "depth_file_path", "ccm_file_path"):
            assert sample[frame[key].replace("/", ".")] == (folder / frame[key]).read_bytes()


def test_reconstruct_fits_an_object_folder(spot, tmp_path):
    folder, _, _ = spot
    args = ["--preset", "fast", "--set", "fit_steps=120", "--set", "num_points=1000", "--set", "fit_resolutions=[1.0]",
            "--set", "mesh_resolution=32", "--set", "target_faces=800", "--set", "texture_resolution=64",
            "--set", "refine_steps=2", "--set", "preview_size=64", "--set", "uv_padding=2"]
    proc = subprocess.run([sys.executable, "-m", "gen3d", "run", "reconstruct", "--views", str(folder), "--out",
                           str(tmp_path), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "meta.json").read_text())["metrics"]
    assert metrics["views"] == 8 and metrics["fit_psnr_masked"] > 22.0, metrics


def test_ring_folder_from_the_cli(models, tmp_path):
    """``--orbit zero123pp`` writes Zero123++ v1.2's 6 views (azimuth 30 + 60k, elevations +20/-10, FoV 30°)."""
    from gen3d.backend.__main__ import main

    out = tmp_path / "ring"
    assert main(["dataset", "multiview", "--models", str(models), "--out", str(out), "--orbit", "zero123pp",
                 "--resolution", "32", "--engine", "WORKBENCH"]) == 0
    cams, _ = load_transforms(out / "cow" / "spot")
    el, az, r = orbit_angles(cams.c2w).double().numpy().T
    np.testing.assert_allclose(el, [20, -10] * 3, atol=1e-3)
    np.testing.assert_allclose((az - 30) % 360, np.arange(6) * 60.0, atol=1e-3)
    np.testing.assert_allclose(r, 4.0, atol=1e-4)
    fov = 2 * math.degrees(math.atan(16 / cams.K[0, 1, 1].item()))
    assert abs(fov - 30.0) < 1e-3


@pytest.mark.parametrize("bad,words", [(["--passes", "rgba,albedo"], "passes"), (["--passes", "depth"], "rgba"),
                                       (["--elevation", "50", "10"], "elevation"),
                                       (["--orbit", "zero123pp", "--ring-elevation", "10"], "several elevations"),
                                       (["--views-per-model", "0"], "views-per-model")])
def test_bad_options_exit_2_and_write_nothing(models, tmp_path, capsys, bad, words):
    from gen3d.backend.__main__ import main

    assert main(["dataset", "multiview", "--models", str(models), "--out", str(tmp_path / "o"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0]
    assert not (tmp_path / "o").exists()


def test_pose_samplers():
    poses = orbit_poses(2000, elevation=(-10.0, 40.0), distance=(1.5, 2.2), seed=3)
    el = np.array([p.elevation for p in poses])
    assert el.min() >= -10 and el.max() <= 40 and all(1.5 <= p.distance <= 2.2 for p in poses)
    # uniform on the sphere's band: sin(elevation) is uniform
    s = np.sin(np.radians(el))
    lo, hi = np.sin(np.radians([-10.0, 40.0]))
    assert abs(s.mean() - (lo + hi) / 2) < 0.02 and abs(s.std() - (hi - lo) / math.sqrt(12)) < 0.02
    assert orbit_poses(4, seed=2) == orbit_poses(4, seed=2)
    sync = ring_poses("syncdreamer", elevation=15.0)
    assert len(sync) == 16 and {p.elevation for p in sync} == {15.0}
    assert np.allclose(np.diff(np.unwrap(np.radians([p.azimuth for p in sync]))), np.radians(22.5))
    for name in ("instant3d", "mvdream"):
        ring = ring_poses(name)
        assert len(ring) == 4 and np.allclose(np.diff([p.azimuth % 360 for p in ring]), 90.0)
    assert {p.elevation for p in ring_poses("instant3d")} == {20.0}
