"""``python -m gen3d run reconstruct`` end to end on a tiny analytic scene (a ray-cast sphere), the GLB in
Blender, and bad inputs (exit 2, one line, nothing that looks finished)."""

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

from gen3d.backend.__main__ import main
from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.geometry.transforms import save_transforms

REPO = Path(__file__).resolve().parents[1]
CENTER, RADIUS = np.array([0.2, -0.1, 0.5]), 0.5


def sphere_views(folder: Path, n: int = 8, size: int = 32) -> Path:
    """RGBA views of a sphere coloured by its normal, by ray casting with 2x2 supersampling."""
    cams = orbit_cameras([-25.0, 35.0] * (n // 2), np.arange(n) * 360.0 / n, 2.0, 45, 2 * size,
                         2 * size, target=tuple(CENTER))
    o, d = cams.pixel_rays()
    oc = o - torch.tensor(CENTER, dtype=torch.float32)
    b = (oc * d).sum(-1)
    disc = b ** 2 - ((oc ** 2).sum(-1) - RADIUS ** 2)
    hit = (disc > 0).float()
    t = -b - disc.clamp_min(0).sqrt()
    normal = torch.nn.functional.normalize(oc + t[..., None] * d, dim=-1)
    rgba = torch.cat([(0.5 + 0.4 * normal) * hit[..., None], hit[..., None]], -1)
    rgba = torch.nn.functional.avg_pool2d(rgba.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    rgba[..., :3] = rgba[..., :3] / rgba[..., 3:].clamp_min(1e-6)
    save_transforms(folder, cams.resized(size, size), rgba)
    return folder


TINY = ["--preset", "fast", "--set", "fit_steps=12", "--set", "num_points=1000", "--set", "fit_resolutions=[1.0]",
        "--set", "mesh_resolution=32", "--set", "target_faces=800", "--set", "texture_resolution=64",
        "--set", "refine_steps=2", "--set", "preview_size=64", "--set", "uv_padding=2"]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rec")
    views = sphere_views(root / "views")
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "gen3d", "run", "reconstruct", "--views", str(views), "--out",
                           str(out), *TINY], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_cli_writes_every_artifact_and_meta(result):
    for name in ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "gaussians.ply", "preview.png", "meta.json"):
        assert (result / name).stat().st_size > 0, name
    assert not list(result.glob("*.part"))
    meta = json.loads((result / "meta.json").read_text())
    assert meta["method"] == "reconstruct" and meta["options"]["fit_steps"] == 12
    assert {"fit", "mesh", "uv", "bake", "refine", "export", "total"} <= set(meta["timings"])
    m = meta["metrics"]
    assert m["views"] == 8 and m["mesh_faces"] > 100 and m["gaussians"] > 0 and m["bake_coverage"] > 0.5


def test_glb_imports_in_blender_in_place_with_its_texture(result):
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(result / "mesh.glb"))
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    M = np.array(obj.matrix_world)
    co = np.array([v.co[:] for v in obj.data.vertices]) @ M[:3, :3].T + M[:3, 3]
    # the sphere's bounding box, in Blender's world (Z up), within a coarse voxel
    np.testing.assert_allclose(co.min(0), CENTER - RADIUS, atol=0.15)
    np.testing.assert_allclose(co.max(0), CENTER + RADIUS, atol=0.15)
    bsdf = next(n for n in obj.data.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    image = bsdf.inputs["Base Color"].links[0].from_node.image
    assert tuple(image.size) == (64, 64)
    pixels = np.array(image.pixels[:]).reshape(64, 64, 4)[..., :3]
    assert pixels.std() > 0.02 and pixels.mean() > 0.2  # a coloured texture, not black or flat


# --- bad input -------------------------------------------------------------------------------------------------
def _valid(folder: Path, n: int = 2) -> Path:
    cams = orbit_cameras(20.0, np.arange(n) * 90.0, 2.0, 45, 16, 16)
    img = torch.zeros(n, 16, 16, 4)
    img[:, 4:12, 4:12] = 1.0
    return save_transforms(folder, cams, img) and folder


def _no_transforms(d):
    d.mkdir()


def _missing_image(d):
    _valid(d)
    (d / "images" / "frame_00001.png").unlink()


def _different_sizes(d):
    _valid(d)
    Image.new("RGBA", (20, 16)).save(d / "images" / "frame_00001.png")


def _non_finite_camera(d):
    _valid(d)
    meta = json.loads((d / "transforms.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = "NaN"
    (d / "transforms.json").write_text(json.dumps(meta).replace('"NaN"', "NaN"))


def _no_alpha(d):
    _valid(d)
    for p in (d / "images").iterdir():
        Image.open(p).convert("RGB").save(p)


def _one_view(d):
    _valid(d)
    meta = json.loads((d / "transforms.json").read_text())
    meta["frames"] = meta["frames"][:1]
    (d / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("make, words", [
    (_no_transforms, "transforms.json"), (_missing_image, "frame 1"), (_different_sizes, "frame 1"),
    (_non_finite_camera, "frame 1"), (_no_alpha, "frame 0"), (_one_view, "at least 2 views")])
def test_bad_views_exit_2_with_one_line_and_leave_nothing_finished(tmp_path, capsys, make, words):
    views, out = tmp_path / "views", tmp_path / "out"
    make(views)
    code = main(["run", "reconstruct", "--views", str(views), "--out", str(out), "--preset", "fast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (out / "meta.json").exists() and not (out / "mesh.glb").exists()
