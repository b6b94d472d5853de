"""blender_addon/scene_io.py in real bpy: camera export against Blender's own projection, images, evaluated meshes."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gen3d.backend.geometry.cameras import Cameras
from gen3d.backend.representations.mesh import load_glb
from tests.conftest import REPO

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Euler, Vector  # noqa: E402


def _load_scene_io():
    # loaded from its file alone, so these tests do not depend on the rest of the add-on package
    spec = importlib.util.spec_from_file_location("gen3d_scene_io", REPO / "blender_addon" / "scene_io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scene_io = _load_scene_io()


@pytest.fixture
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


# name: (resolution x, y, percentage, pixel aspect x, y, sensor fit, sensor w, h, lens, shift x, y, object scale)
CAMERAS = {
    "landscape": (640, 480, 100, 1, 1, "AUTO", 36, 24, 50, 0, 0, 1),
    "portrait": (480, 640, 100, 1, 1, "AUTO", 32, 24, 35, 0, 0, 1),
    "shifted": (400, 300, 100, 1, 1, "AUTO", 36, 24, 40, 0.13, -0.21, 1),
    "portrait shifted": (300, 500, 100, 1, 1, "AUTO", 36, 24, 40, -0.1, 0.17, 1),
    "non-square pixels": (320, 240, 100, 2, 1, "AUTO", 36, 24, 30, 0.05, 0.1, 1),
    "non-square pixels portrait": (200, 400, 100, 1, 3, "AUTO", 36, 24, 30, 0.1, -0.05, 1),
    "percentage": (1000, 700, 37, 1, 1, "AUTO", 36, 24, 45, 0.1, 0.1, 1),
    "vertical fit": (640, 360, 100, 1, 1, "VERTICAL", 36, 20, 28, 0.05, 0.02, 1),
    "horizontal fit portrait": (360, 640, 100, 1.5, 1, "HORIZONTAL", 30, 24, 60, -0.02, 0.1, 1),
    "scaled object": (256, 256, 50, 1, 1, "AUTO", 36, 24, 50, 0, 0, 2.5),
}


def make_camera(scene, spec, seed):
    res_x, res_y, pct, pax, pay, fit, sw, sh, lens, sx, sy, scale = spec
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = res_x, res_y, pct
    r.pixel_aspect_x, r.pixel_aspect_y = pax, pay
    data = bpy.data.cameras.new("cam")
    data.sensor_fit, data.sensor_width, data.sensor_height, data.lens = fit, sw, sh, lens
    data.shift_x, data.shift_y = sx, sy
    obj = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(obj)
    rng = np.random.default_rng(seed)
    obj.location = Vector(rng.uniform(-3, 3, 3))
    obj.rotation_euler = Euler(rng.uniform(-math.pi, math.pi, 3))
    obj.scale = (scale, scale, scale)
    bpy.context.view_layer.update()
    return obj, rng


def points_in_view(obj, rng, n=200):
    """World points spread over (and a little beyond) the camera's view, 0.5 to 20 units in front of it."""
    M = np.array(scene_io.rigid_matrix_world(obj))
    depth = rng.uniform(0.5, 20, n)
    local = np.stack([rng.uniform(-1, 1, n) * depth, rng.uniform(-1, 1, n) * depth, -depth], 1)  # Blender: -Z forward
    return local @ M[:3, :3].T + M[:3, 3]


@pytest.mark.parametrize("case", list(CAMERAS))
def test_camera_projection_matches_blender(scene, case):
    obj, rng = make_camera(scene, CAMERAS[case], seed=len(case))
    wire = scene_io.camera_to_wire(obj, scene)
    W, H = wire["width"], wire["height"]
    res_x, res_y, pct = CAMERAS[case][:3]
    assert (W, H) == (res_x * pct // 100, res_y * pct // 100)

    points = points_in_view(obj, rng)
    ref = np.array([world_to_camera_view(scene, obj, Vector(p))[:] for p in points])
    ref_px = np.stack([ref[:, 0] * W, (1 - ref[:, 1]) * H], 1)  # Blender's frame coords (0,0 bottom left) -> pixels

    # our K and OpenCV c2w, projected by hand
    K, c2w = np.array(wire["K"]), np.array(wire["c2w"])
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    uv = cam @ K.T
    np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], ref_px, atol=0.01, rtol=0)
    np.testing.assert_allclose(cam[:, 2], ref[:, 2], atol=1e-4)  # depth along the view axis

    # ... and through the backend's canonical camera
    px, depth = Cameras.from_wire([wire]).project(torch.tensor(points, dtype=torch.float32))
    np.testing.assert_allclose(px[0].numpy(), ref_px, atol=0.02, rtol=0)  # float32
    assert wire["convention"] == "opencv" and wire["name"] == "cam"
    np.testing.assert_allclose(np.array(wire["c2w_opengl"]) @ np.diag([1, -1, -1, 1]), c2w, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(c2w[:3, :3]), 1.0, atol=1e-6)


@pytest.mark.parametrize("case, size", [("landscape", (256, 256)), ("shifted", (300, 500)),
                                        ("vertical fit", (200, 120)), ("non-square pixels", (90, 160))])
def test_camera_fitted_to_an_image_size_projects_as_blender_renders_that_size(scene, case, size):
    """A reference image of another size than the render: the camera fitted to it is the camera Blender renders at
    that resolution (square pixels), same field of view by its sensor fit, checked against Blender's projection."""
    obj, rng = make_camera(scene, CAMERAS[case], seed=len(case))
    wire = scene_io.camera_to_wire(obj, scene, size)
    assert (wire["width"], wire["height"]) == size
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = *size, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1
    points = points_in_view(obj, rng)
    ref = np.array([world_to_camera_view(scene, obj, Vector(p))[:] for p in points])
    ref_px = np.stack([ref[:, 0] * size[0], (1 - ref[:, 1]) * size[1]], 1)
    px, _ = Cameras.from_wire([wire]).project(torch.tensor(points, dtype=torch.float32))
    np.testing.assert_allclose(px[0].numpy(), ref_px, atol=0.02, rtol=0)


def test_centred_camera_has_principal_point_at_half_size(scene):
    obj, _ = make_camera(scene, CAMERAS["landscape"], seed=0)
    K = scene_io.camera_to_wire(obj, scene)["K"]
    assert (K[0][2], K[1][2]) == (320.0, 240.0)  # continuous coordinates: W/2, not (W-1)/2
    assert K[0][0] == pytest.approx(50 / 36 * 640)


def test_scene_cameras_to_wire_skips_other_objects(scene):
    make_camera(scene, CAMERAS["landscape"], seed=0)
    empty = bpy.data.objects.new("empty", None)
    scene.collection.objects.link(empty)
    wires = scene_io.scene_cameras_to_wire(scene)
    assert [w["name"] for w in wires] == ["cam"]
    ortho = bpy.data.cameras.new("ortho")
    ortho.type = "ORTHO"
    with pytest.raises(ValueError, match="only perspective"):
        scene_io.camera_to_wire(bpy.data.objects.new("o", ortho), scene)


def test_save_image_png_keeps_pixels_and_leaves_the_datablock_alone(scene, tmp_path):
    rng = np.random.default_rng(0)
    byte_px = rng.random((3, 5, 4)).astype(np.float32)
    image = bpy.data.images.new("painted", 5, 3, alpha=True)
    image.pixels.foreach_set(byte_px.ravel())
    before = np.array(image.pixels[:])  # a byte image: already quantised
    path = scene_io.save_image_png(image, str(tmp_path / "painted.png"))
    png = np.asarray(Image.open(path)) / 255.0
    np.testing.assert_allclose(png[::-1], byte_px, atol=0.5 / 255 + 1e-6)  # Blender stores the bottom row first
    assert image.source == "GENERATED" and image.filepath == ""
    np.testing.assert_array_equal(np.array(image.pixels[:]), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["painted.png"]

    linear = np.full((2, 2, 4), 1.0, np.float32)
    linear[..., :3] = [0.0, 0.18, 1.0]
    float_image = bpy.data.images.new("hdr", 2, 2, alpha=True, float_buffer=True)
    float_image.pixels.foreach_set(linear.ravel())
    png = np.asarray(Image.open(scene_io.save_image_png(float_image, str(tmp_path / "hdr.png"))))
    srgb_018 = 1.055 * 0.18 ** (1 / 2.4) - 0.055
    np.testing.assert_allclose(png[0, 0] / 255.0, [0.0, srgb_018, 1.0, 1.0], atol=0.5 / 255 + 1e-6)
    assert scene_io.image_to_png_bytes(image)[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_evaluated_mesh_glb_applies_modifiers_world_space_uvs_and_texture(scene, tmp_path):
    bpy.ops.mesh.primitive_plane_add(size=2.0)
    plane = bpy.context.active_object
    plane.location, plane.rotation_euler, plane.scale = (1.0, -2.0, 3.0), (0.3, 0.0, 0.5), (2.0, 1.0, 1.0)
    plane.modifiers.new("subdivide", "SUBSURF").levels = 1  # 1 quad -> 4 quads
    texture = bpy.data.images.new("tex", 4, 2, alpha=True)
    tex_px = np.random.default_rng(1).random((2, 4, 4)).astype(np.float32)
    tex_px[..., 3] = 1
    texture.pixels.foreach_set(tex_px.ravel())
    texture.pack()
    material = bpy.data.materials.new("mat")
    if bpy.app.version < (5, 0, 0):  # node trees are always on from 5.0
        material.use_nodes = True
    bsdf = material.node_tree.nodes["Principled BSDF"]
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = texture
    material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    plane.data.materials.append(material)
    other = bpy.data.objects.new("other", None)
    scene.collection.objects.link(other)
    other.select_set(True)
    bpy.context.view_layer.update()
    objects_before = {o.name for o in bpy.data.objects}

    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = plane.evaluated_get(depsgraph).to_mesh()
    M = np.array(plane.matrix_world)
    expected = np.array([M[:3, :3] @ v.co[:] + M[:3, 3] for v in evaluated.vertices])
    plane.evaluated_get(depsgraph).to_mesh_clear()

    path = scene_io.export_evaluated_mesh_glb(plane, depsgraph, str(tmp_path / "plane.glb"))
    mesh = load_glb(path)  # the backend's reader: Y up on disk -> Z up
    assert len(mesh.faces) == 8 and mesh.uvs is not None and mesh.texture is not None
    dist = np.linalg.norm(mesh.vertices.numpy()[:, None] - expected[None], axis=-1).min(1)
    assert dist.max() < 1e-5 and len(np.unique(mesh.vertices.numpy().round(5), axis=0)) == len(expected)
    np.testing.assert_allclose(mesh.texture.numpy(), tex_px[::-1, :, :3], atol=0.5 / 255 + 1e-6)
    assert {o.name for o in bpy.data.objects} == objects_before
    assert other.select_get() and bpy.context.view_layer.objects.active == plane
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plane.glb"]
