"""Method ``texture``: kept or unwrapped UVs, the reference image's projection against an analytic pinhole camera,
cancellation between steps, bad input through the CLI; tiny priors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.errors import Cancelled
from gen3d.backend.pipelines import JobRequest, RunContext
from gen3d.backend.pipelines.runner import run_job
from gen3d.backend.representations.mesh import TexturedMesh, load_glb, save_glb

#: every stage runs, in seconds, on the tiny priors
SMALL = {"iters_refine": 2, "texture_size": 64, "refine_size": 32, "refine_steps": 10, "preview_views": 2,
         "preview_size": 32}


@pytest.fixture(autouse=True)
def _weights(tiny_weights, monkeypatch):
    monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))


def _box(uvs: bool) -> TexturedMesh:
    """A unit cube off the origin: 24 vertices (4 per side), each side its own UV cell of a 3 x 2 grid, with a
    checker texture; or 8 shared vertices and no UVs."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32) + [2, -1, 0.5]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    if not uvs:
        faces = [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))]
        return TexturedMesh(corners, np.array(faces))
    verts, faces, uv = [], [], []
    for i, q in enumerate(quads):
        u0, v0 = (i % 3) / 3, (i // 3) / 2
        base = len(verts)
        verts += [corners[k] for k in q]
        uv += [(u0 + 0.02, v0 + 0.02), (u0 + 0.31, v0 + 0.02), (u0 + 0.31, v0 + 0.48), (u0 + 0.02, v0 + 0.48)]
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    checker = ((np.indices((32, 32)).sum(0) // 4) % 2).astype(np.float32)
    texture = np.stack([checker, 0.5 * np.ones_like(checker), 1 - checker], -1)
    return TexturedMesh(np.array(verts), np.array(faces), uvs=np.array(uv, np.float32), texture=texture)


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_valid_uvs_come_back_identical_with_a_new_texture(tmp_path):
    src = tmp_path / "box.glb"
    save_glb(_box(uvs=True), src)
    out = tmp_path / "out"
    artifacts = run_job(JobRequest(method="texture", prompt="a wooden crate", seed=3, files={"mesh": str(src)},
                                   options=SMALL), RunContext(out_dir=out))
    assert {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "texture.png", "preview.png", "meta.json"} <= set(artifacts)
    before, after = load_glb(src), load_glb(out / "mesh.glb")
    assert torch.equal(after.vertices, before.vertices) and torch.equal(after.faces, before.faces)
    assert torch.equal(after.uvs, before.uvs)
    assert after.texture.shape == (64, 64, 3)
    initial = torch.nn.functional.interpolate(before.texture.permute(2, 0, 1)[None], (64, 64), mode="bilinear",
                                              align_corners=False, antialias=True)[0].permute(1, 2, 0)
    assert float((after.texture - initial).abs().mean()) > 0.01          # refined, not the old texture
    png = np.asarray(Image.open(out / "texture.png"))
    assert png.shape == (64, 64, 3) and np.array_equal(png, np.round(after.texture.numpy() * 255))
    assert Image.open(out / "preview.png").size == (2 * 32, 2 * 32)      # before and after rows
    meta = _meta(out)
    assert meta["uv_source"] == "input" and meta["vertices_changed"] is False and meta["init"] == "existing"
    assert meta["weights"][0]["name"] == "sd21-base" and meta["weights"][0]["tiny"]
    assert {"load_mesh", "uv_unwrap", "init_texture", "refine", "export"} <= set(meta["timings"])


def test_a_mesh_without_uvs_is_unwrapped_and_mapped_back(tmp_path):
    src = tmp_path / "box.glb"
    save_glb(_box(uvs=False), src)
    out = tmp_path / "out"
    run_job(JobRequest(method="texture", prompt="a crate", files={"mesh": str(src)},
                       options={**SMALL, "prior": "mvdream", "iters_refine": 1}), RunContext(out_dir=out))
    before, after = load_glb(src), load_glb(out / "mesh.glb")
    assert after.uvs is not None and after.texture is not None and len(after.vertices) > len(before.vertices)
    assert float(after.uvs.min()) >= 0 and float(after.uvs.max()) <= 1
    vmap = torch.tensor(json.loads((out / "vertex_map.json").read_text())["source_vertex"])
    assert torch.equal(after.vertices, before.vertices[vmap])          # positions kept, only split at seams
    assert torch.equal(vmap[after.faces], before.faces)                 # faces kept in their order
    meta = _meta(out)
    assert meta["uv_source"] == "xatlas" and meta["vertices_changed"] is True and meta["init"] == "neutral"
    assert meta["weights"][0]["name"] == "mvdream"


def test_a_glb_with_one_primitive_per_material_keeps_every_primitives_uvs(tmp_path):
    import trimesh

    rng = np.random.default_rng(0)
    parts, uvs = [], []
    for i, colour in enumerate(([255, 0, 0, 255], [0, 255, 0, 255])):
        box = trimesh.creation.box()
        box.apply_translation([2.0 * i, 0, 0])
        uv = rng.random((len(box.vertices), 2))
        box.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(
            baseColorFactor=colour))
        parts.append(box)
        uvs.append(uv)
    src = tmp_path / "two.glb"
    src.write_bytes(trimesh.Scene(parts).export(file_type="glb"))
    out = tmp_path / "out"
    run_job(JobRequest(method="texture", prompt="a crate", files={"mesh": str(src)},
                       options={**SMALL, "iters_refine": 0}), RunContext(out_dir=out))
    after = load_glb(out / "mesh.glb")
    # each vertex (found by its position; the boxes are disjoint) has its own primitive's UV, not an atlas's
    from gen3d.backend.geometry.cameras import zup_to_yup

    uv_at = {tuple(np.round(v, 5)): uv for part, uv_part in zip(parts, uvs) for v, uv in zip(part.vertices, uv_part)}
    expected = np.array([uv_at[tuple(np.round(v, 5))] for v in zup_to_yup(after.vertices).numpy()])
    assert len(after.vertices) == 16 and np.abs(after.uvs.numpy() - expected).max() < 1e-6
    assert _meta(out)["uv_source"] == "input" and after.texture.shape == (64, 64, 3)


# --- the reference image's projection against an analytic camera --------------------------------------------------
CENTRE = np.array([3.0, -2.0, 1.0])
OCCLUDER_Y, OCCLUDER_HALF = CENTRE[1] - 0.5, 0.3
EYE = CENTRE + [0.4, -4.0, 0.6]
W, H, F = 320, 240, 300.0


def _plane_scene() -> TexturedMesh:
    """A 2 x 2 plane facing -Y at ``CENTRE`` (UVs u in [0, 0.75] along x, v in [0, 1] along z) and a small square
    in front of it (UVs in the corner [0.8, 1]^2)."""
    n = 8
    s = np.linspace(0, 1, n + 1)
    gx, gz = np.meshgrid(s, s, indexing="xy")
    verts = np.stack([CENTRE[0] - 1 + 2 * gx, np.full_like(gx, CENTRE[1]), CENTRE[2] - 1 + 2 * gz], -1).reshape(-1, 3)
    uvs = np.stack([0.75 * gx, gz], -1).reshape(-1, 2)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            faces += [(a, b, e), (a, e, d)]   # counter-clockwise seen from -Y
    h = OCCLUDER_HALF
    occ = np.array([[CENTRE[0] + x, OCCLUDER_Y, CENTRE[2] + z] for x, z in ((-h, -h), (h, -h), (h, h), (-h, h))])
    o = len(verts)
    faces += [(o, o + 1, o + 2), (o, o + 2, o + 3)]
    uvs = np.concatenate([uvs, [[0.8, 0.8], [1, 0.8], [1, 1], [0.8, 1]]])
    mesh = TexturedMesh(np.concatenate([verts, occ]).astype(np.float32), np.array(faces), uvs=uvs.astype(np.float32))
    assert float(mesh.with_vertex_normals().normals[0, 1]) < -0.99   # faces the camera
    return mesh


def _camera() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV pinhole looking from ``EYE`` at ``CENTRE``: ``(K, c2w)``, built here from its axes."""
    f = (CENTRE - EYE) / np.linalg.norm(CENTRE - EYE)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([r, d, f], 1)
    c2w[:3, 3] = EYE
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])
    return K, c2w


def _project(points: np.ndarray) -> np.ndarray:
    K, c2w = _camera()
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    return (cam @ K.T)[:, :2] / cam[:, 2:]


def _occluder_pixels() -> np.ndarray:
    """``[H, W]`` bool: pixels whose ray hits the occluder (ray-plane intersection)."""
    K, c2w = _camera()
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([(j - K[0, 2]) / F, (i - K[1, 2]) / F, np.ones_like(j)], -1) @ c2w[:3, :3].T
    t = (OCCLUDER_Y - EYE[1]) / rays[..., 1]
    hit = EYE + t[..., None] * rays
    return (np.abs(hit[..., 0] - CENTRE[0]) < OCCLUDER_HALF) & (np.abs(hit[..., 2] - CENTRE[2]) < OCCLUDER_HALF)


def test_the_reference_image_lands_on_the_texels_an_analytic_camera_projects_to(tmp_path):
    src = tmp_path / "plane.glb"
    save_glb(_plane_scene(), src)
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    image = np.stack([j / W, i / H, np.zeros_like(j)], -1)            # colour = pixel position
    occluded = _occluder_pixels()
    image[occluded] = (0, 0, 1)                                          # the occluder is blue
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(tmp_path / "ref.png")
    K, c2w = _camera()
    cam = {"K": K.tolist(), "c2w": c2w.tolist(), "width": W, "height": H, "role": "reference"}
    out = tmp_path / "out"
    R = 128
    run_job(JobRequest(method="texture", files={"mesh": str(src), "image": str(tmp_path / "ref.png")},
                       cameras=[cam], options={**SMALL, "texture_size": R, "iters_refine": 0}),
            RunContext(out_dir=out))
    assert _meta(out)["init"] == "reference"
    tex = np.asarray(Image.open(out / "texture.png"), np.float32) / 255

    # every texel of the plane: its world point, where the camera sees it, and what the image shows there
    row, col = np.meshgrid(np.arange(R), np.arange(R), indexing="ij")
    u, v = (col + 0.5) / R, 1 - (row + 0.5) / R
    on_plane = u < 0.75 - 1.5 / R
    x, z = CENTRE[0] - 1 + 2 * u / 0.75, CENTRE[2] - 1 + 2 * v
    world = np.stack([x, np.full_like(x, CENTRE[1]), z], -1).reshape(-1, 3)
    px = _project(world).reshape(R, R, 2)
    inside = (px[..., 0] > 2) & (px[..., 0] < W - 2) & (px[..., 1] > 2) & (px[..., 1] < H - 2)
    pi = np.clip(px[..., 1].astype(int), 0, H - 1), np.clip(px[..., 0].astype(int), 0, W - 1)
    near_occluder, deep_behind = np.zeros_like(occluded), np.ones_like(occluded)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near_occluder |= np.roll(occluded, (dy, dx), (0, 1))
            deep_behind &= np.roll(occluded, (dy, dx), (0, 1))
    visible = on_plane & inside & ~near_occluder[pi]
    hidden = on_plane & inside & deep_behind[pi]
    assert visible.sum() > 2000 and hidden.sum() > 500
    expected = np.stack([px[..., 0] / W, px[..., 1] / H], -1)
    err = np.abs(tex[..., :2] - expected)[visible]
    assert err.max() < 0.02 and err.mean() < 0.005
    assert np.abs(tex[..., 2][visible]).max() < 0.02
    # the plane behind the occluder did not get the occluder's blue (1 without a depth test); it is filled from its
    # neighbours, multi-scale, so some blue of the occluder's island bleeds in at coarse levels
    assert tex[..., 2][hidden].max() < 0.5 and tex[..., 2][hidden].mean() < 0.1
    # the occluder's own texels are blue
    occ_texels = (u > 0.83) & (v > 0.83) & (u < 0.97) & (v < 0.97)
    assert tex[..., 2][occ_texels].min() > 0.9


def test_a_reference_view_drives_zero123_refinement(tmp_path):
    src = tmp_path / "plane.glb"
    save_glb(_plane_scene(), src)
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(tmp_path / "ref.png")
    K, c2w = _camera()
    cam = {"K": K.tolist(), "c2w": c2w.tolist(), "width": 2 * W, "height": 2 * H}   # same aspect, twice the size
    out = tmp_path / "out"
    run_job(JobRequest(method="texture", files={"mesh": str(src), "image": str(tmp_path / "ref.png")},
                       cameras=[cam], options={**SMALL, "iters_refine": 1}), RunContext(out_dir=out))
    meta = _meta(out)
    assert meta["weights"][0]["name"] == "zero123-xl" and "refine_loss_first" in meta["metrics"]


def test_cancellation_between_refinement_steps(tmp_path):
    src = tmp_path / "box.glb"
    save_glb(_box(uvs=True), src)
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) >= 8          # 6 stage starts, then the second refinement step

    with pytest.raises(Cancelled):
        run_job(JobRequest(method="texture", prompt="a crate", files={"mesh": str(src)},
                           options={**SMALL, "iters_refine": 5}),
                RunContext(out_dir=tmp_path / "out", cancelled_fn=cancelled))
    assert len(calls) == 8
    assert not (tmp_path / "out" / "mesh.glb").exists() and not (tmp_path / "out" / "meta.json").exists()


def _glb_without_triangles(path: Path) -> Path:
    import trimesh

    path.write_bytes(trimesh.Scene(trimesh.PointCloud(np.random.default_rng(0).random((10, 3)))).export(
        file_type="glb"))
    return path


@pytest.mark.parametrize("case", ["empty file", "no triangles", "degenerate", "image without camera"])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_weights, capsys, case):
    from gen3d.backend.__main__ import main

    mesh = tmp_path / "mesh.glb"
    args = ["--prompt", "a crate"]
    if case == "empty file":
        mesh.write_bytes(b"")
    elif case == "no triangles":
        _glb_without_triangles(mesh)
    elif case == "degenerate":
        save_glb(TexturedMesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]])), mesh)
    else:
        save_glb(_box(uvs=True), mesh)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ref.png")
        args = ["--image", str(tmp_path / "ref.png")]
    code = main(["run", "texture", "--mesh", str(mesh), "--out", str(tmp_path / "out"), "--weights-dir",
                 str(tiny_weights), "--device", "cpu", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1
    expected = {"empty file": "mesh.glb", "no triangles": "no triangle", "degenerate": "zero area",
                "image without camera": "camera"}[case]
    assert expected in err[0]
    assert not (tmp_path / "out" / "meta.json").exists()
