"""Dataset rendering with real bpy: annotations agree with the renders, edges with the masks, runs resume."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

pytest.importorskip("bpy")

from gen3d.backend.blender.dataset import render_dataset  # noqa: E402
from gen3d.backend.blender.poses import sample_poses  # noqa: E402
from gen3d.backend.blender.render import RenderSettings  # noqa: E402

SETTINGS = RenderSettings(size=80, engine="WORKBENCH", views=2, geometry_passes=False, seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory, spot_dir) -> Path:
    """Spot (Y-up OBJ), an off-centre box and a corrupt file, in class folders."""
    root = tmp_path_factory.mktemp("models")
    (root / "cow").mkdir()
    (root / "cow" / "spot.obj").write_bytes((spot_dir / "spot_triangulated.obj").read_bytes())
    (root / "box").mkdir()
    trimesh.creation.box(extents=(0.4, 1.2, 0.6)).apply_translation((3.0, 1.0, -2.0)).export(root / "box" / "crate.obj")
    (root / "junk").mkdir()
    (root / "junk" / "broken.obj").write_text("this is not an OBJ file\nf 1 2 3\n")
    return root


@pytest.fixture(scope="module")
def rendered(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    counts = render_dataset(models, out, SETTINGS)
    return out, counts


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _source_vertices_world(model: Path) -> np.ndarray:
    """Vertices of an OBJ (Y up) in Blender's Z-up world: (x, y, z) -> (x, -z, y)."""
    v = trimesh.load(model, force="mesh", process=False).vertices
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1)


def test_counts_and_failure_report(rendered):
    out, counts = rendered
    assert counts == {"ok": 2, "skipped": 0, "failed": 1, "views": 4}
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert [x["model_id"] for x in failed] == ["broken"] and failed[0]["error"]
    assert sum(x["status"] == "ok" for x in lines) == 4


@pytest.mark.parametrize("category,model_id", [("cow", "spot"), ("box", "crate")])
def test_projected_vertices_land_in_mask(rendered, models, category, model_id):
    out, _ = rendered
    src = _source_vertices_world(models / category / f"{'spot' if model_id == 'spot' else 'crate'}.obj")
    for ann_path in sorted((out / category / model_id / "annotation").glob("*.json")):
        ann = json.loads(ann_path.read_text())
        norm = ann["normalization"]
        world = norm["scale"] * (src + np.array(norm["offset"]))
        assert np.allclose(world.min(0), ann["bbox_3d"]["min"], atol=1e-5)
        K, c2w = np.array(ann["K"]), np.array(ann["c2w"])
        w2c = np.linalg.inv(c2w)
        cam = world @ w2c[:3, :3].T + w2c[:3, 3]
        uv = (cam @ K.T)[:, :2] / cam[:, 2:3]
        mask = _read(out / category / model_id / ann["files"]["mask"]) > 127
        dilated = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
        px = np.floor(uv).astype(int)
        inside = (px[:, 0] >= 0) & (px[:, 0] < mask.shape[1]) & (px[:, 1] >= 0) & (px[:, 1] < mask.shape[0])
        hit = np.zeros(len(px), bool)
        hit[inside] = dilated[px[inside, 1], px[inside, 0]]
        assert hit.mean() >= 0.99, f"{ann_path.name}: only {hit.mean():.3f} of vertices inside the mask"
        box = np.array(ann["bbox_2d"])
        proj_box = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
        assert np.abs(box - proj_box).max() <= 1.0, (box, proj_box)


def test_edges_follow_the_mask_boundary(rendered):
    out, _ = rendered
    for ann_path in sorted((out / "box" / "crate" / "annotation").glob("*.json")):
        files = json.loads(ann_path.read_text())["files"]
        edges = _read(out / "box" / "crate" / files["edges"]) > 0
        mask = _read(out / "box" / "crate" / files["mask"]) > 127
        boundary = mask & ~ndimage.binary_erosion(mask)
        assert edges.sum() > 20
        near_edge = ndimage.binary_dilation(edges, iterations=2)
        assert (near_edge & boundary).sum() >= 0.8 * boundary.sum()


def test_second_run_resumes(rendered, models):
    out, _ = rendered
    before = (out / "manifest.jsonl").read_text()
    counts = render_dataset(models, out, SETTINGS)
    assert counts["skipped"] == 2 and counts["ok"] == 0 and counts["failed"] == 1
    assert (out / "manifest.jsonl").read_text() == before


def test_poses_follow_the_mode():
    poses = sample_poses(400, mode=2, seed=1)
    az = np.array([p.azimuth for p in poses])
    el = np.array([p.elevation for p in poses])
    assert not np.any((az > 15) & (az < 165))  # [-195, 15] wrapped to [-180, 180)
    assert abs(np.mean(el)) < 6 and 20 < np.std(el) < 32  # polar N(90, 30) truncated to [0, 180]
    assert sample_poses(5, seed=4) == sample_poses(5, seed=4)


def test_cli_bad_models_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gen3d", "dataset", "render", "--models", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --models:")


def test_cli_render_with_workbench_prints_no_gpu_noise(tmp_path):
    """A fresh process (Blender's first GPU context) renders with WORKBENCH: its log carries no EGL errors."""
    (tmp_path / "m" / "box").mkdir(parents=True)
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(tmp_path / "m" / "box" / "crate.obj")
    r = subprocess.run([sys.executable, "-m", "gen3d", "dataset", "render", "--models", str(tmp_path / "m"), "--out",
                        str(tmp_path / "o"), "--engine", "WORKBENCH", "--size", "32", "--views-per-model", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "EGL Error" not in r.stderr + r.stdout and "rendered 1 models" in r.stdout


def test_ray_path_matches_local(rendered, models, tmp_path):
    pytest.importorskip("ray")
    out, _ = rendered
    counts = render_dataset(models, tmp_path, SETTINGS, ray_address="local")
    assert counts["ok"] == 2 and counts["failed"] == 1
    assert (tmp_path / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    for ann in sorted((out / "cow" / "spot" / "annotation").glob("*.json")):
        a, b = json.loads(ann.read_text()), json.loads((tmp_path / "cow" / "spot" / "annotation" / ann.name).read_text())
        assert np.allclose(a["c2w"], b["c2w"]) and a["bbox_2d"] == b["bbox_2d"]


def test_generate_with_tiny_controlnet(rendered, tiny_weights, monkeypatch, tmp_path):
    import shutil

    out, _ = rendered
    data = tmp_path / "data"
    shutil.copytree(out, data)
    (tmp_path / "prompts.json").write_text(json.dumps({"spot": ["a cow statue on grass"]}))
    args = ["dataset", "generate", "--data", str(data), "--weights-dir", str(tiny_weights), "--steps", "2",
            "--images-per-view", "2", "--prompts", str(tmp_path / "prompts.json")]
    from gen3d.backend.__main__ import main

    assert main(args) == 0
    lines = [json.loads(x) for x in (data / "generated.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 4  # 2 models x 2 views x 2 images
    for line in lines:
        img = Image.open(data / line["image"])
        edges = Image.open(data / json.loads((data / line["meta"]).read_text())["edges"])
        assert img.size == (edges.size[0] // 8 * 8, edges.size[1] // 8 * 8)
        meta = json.loads((data / line["meta"]).read_text())
        assert (data / meta["annotation"]).is_file()
        assert meta["prompt"] == ("a cow statue on grass" if line["model_id"] == "spot"
                                  else "An image of box, best quality, extremely detailed")
        assert meta["tiny_weights"] and line["tiny_weights"] and "smoke-test" in meta["notice"]  # not real data
    first = (data / lines[0]["image"]).read_bytes()
    assert main(args) == 0  # resumes: nothing regenerated
    assert (data / lines[0]["image"]).read_bytes() == first


def test_generate_without_weights_names_the_download(rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out, _ = rendered
    r = subprocess.run([sys.executable, "-m", "gen3d", "dataset", "generate", "--data", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 3
    assert "python -m gen3d weights download sd15" in r.stderr.strip().splitlines()[-1]


def test_two_worker_processes_match_the_single_process_run(rendered, models, tmp_path):
    """Spawned workers each import their own bpy, even though this process already has one (its Blender script
    folders on sys.path must not shadow the module in the children)."""
    out, _ = rendered
    counts = render_dataset(models, tmp_path, SETTINGS, workers=2)
    assert counts["ok"] == 2 and counts["failed"] == 1
    assert (tmp_path / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
