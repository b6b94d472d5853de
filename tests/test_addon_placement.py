"""Generate from the active camera, end to end: the installed add-on in real bpy, a live backend it launches, the
``lrm`` method on a tiny TripoSR (GEN3D_WEIGHTS_DIR), a scene camera at a non-trivial pose, focal length, shift and
aspect.

The reference image is the silhouette of a cube as Blender projects it through that camera
(``bpy_extras.object_utils.world_to_camera_view``): the tiny model's noise fills its triplane box, so its mesh's
silhouette is box-like too and the full bounding box, not only the matched side, is comparable. The placement
itself never sees that cube; it fits the produced mesh's own projection to the reference's box (see
backend/geometry/placement.py), so the checks below hold for the shape the model returns.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("bpy")

from test_addon_install import ADDON_MODULE, _error_of, addon_zip, run_scenario  # noqa: E402,F401

pytestmark = pytest.mark.slow

#: lrm cut down to seconds: coarse marching cubes, small texture, one preview view
LRM_OPTIONS = {"model": "triposr", "mesh_resolution": 32, "texture_size": 64, "preview_views": 1, "preview_size": 32,
               "smooth_iterations": 0, "target_faces": 0}


@pytest.fixture(scope="module")
def story(addon_zip, tmp_path_factory):
    from gen3d.backend import weights

    tmp = tmp_path_factory.mktemp("placement")
    root = tmp / "weights"
    weights.write_tiny("triposr", root)  # only the entry this test uses (the whole tiny set takes a minute)
    return run_scenario(Path(__file__), "scenario_placement", str(addon_zip), str(tmp), home=tmp / "home",
                        timeout=400, env={"GEN3D_WEIGHTS_DIR": str(root), "PYTHONPATH": str(REPO)})


def test_object_seen_through_the_camera_covers_the_reference_box(story):
    s = story["camera"]
    assert s["error"] == ""
    want, got = s["reference_box"], s["projected_box"]  # fractions of the image, (x0, y0, x1, y1), y down
    assert 0 < want[0] < want[2] < 1 and 0 < want[1] < want[3] < 1, "the reference must lie inside the frame"
    assert max(abs(a - b) for a, b in zip(got, want)) < 0.05, (got, want)
    centre = lambda b: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)  # noqa: E731
    assert max(abs(a - b) for a, b in zip(centre(got), centre(want))) < 0.03, (got, want)
    assert s["up_angle_deg"] < 5.0
    assert s["in_front"]


def test_provenance_records_the_camera_used(story):
    s = story["camera"]
    assert s["provenance"]["gen3d_placement"] == "camera-image"
    assert s["provenance"]["gen3d_camera"] == "RefCam"
    cam = json.loads(s["provenance"]["gen3d_camera_json"])
    assert cam["name"] == "RefCam" and cam["role"] == "reference"
    assert (cam["width"], cam["height"]) == (320, 180)


def test_without_a_camera_the_object_lands_at_the_cursor(story):
    s = story["no_camera"]
    assert s["error"] == ""
    assert s["provenance"]["gen3d_placement"] == "cursor"
    assert s["location"] == pytest.approx(s["cursor"], abs=1e-5)
    assert sum(s["rotation_scale"], []) == pytest.approx([1, 0, 0, 0, 1, 0, 0, 0, 1], abs=1e-5)


# -- the scenario (a subprocess: python tests/test_addon_placement.py scenario_placement ZIP TMP) ------------------


def _reference_png(bpy, scene, cam, path: str, centre, half: float) -> list[float]:
    """Write an RGBA PNG at the camera's resolution whose alpha is the box around a cube's 8 corners as Blender
    projects them through ``cam``; returns that box as fractions ``(x0, y0, x1, y1)``, y down."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    corners = [Vector(centre) + Vector((sx, sy, sz)) * half for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    ndc = [world_to_camera_view(scene, cam, p) for p in corners]  # x right, y up, in [0, 1]
    box = [min(p.x for p in ndc), 1 - max(p.y for p in ndc), max(p.x for p in ndc), 1 - min(p.y for p in ndc)]
    W, H = scene.render.resolution_x, scene.render.resolution_y
    x0, y0, x1, y1 = (round(box[0] * W), round(box[1] * H), round(box[2] * W), round(box[3] * H))
    img = bpy.data.images.new("Reference", W, H, alpha=True)
    px = [0.0] * (W * H * 4)
    for y in range(H):  # Blender's pixel rows run bottom-up
        row = H - 1 - y
        if y0 <= y < y1:
            for x in range(x0, x1):
                px[(row * W + x) * 4:(row * W + x) * 4 + 4] = (0.8, 0.3, 0.2, 1.0)
    img.pixels[:] = px
    img.filepath_raw = path
    img.file_format = "PNG"
    img.save()
    return [x0 / W, y0 / H, x1 / W, y1 / H]


def _projected_box(scene, cam, obj) -> list[float]:
    from bpy_extras.object_utils import world_to_camera_view

    ndc = [world_to_camera_view(scene, cam, obj.matrix_world @ v.co) for v in obj.data.vertices]
    return [min(p.x for p in ndc), 1 - max(p.y for p in ndc), max(p.x for p in ndc), 1 - min(p.y for p in ndc)]


def _result(bpy, manager, error: str) -> dict:
    rec = list(manager.records.values())[-1]
    meshes = [bpy.data.objects[n] for n in rec.objects if bpy.data.objects[n].type == "MESH"]
    if error or not meshes:
        return {"error": error or f"no mesh imported ({rec.state}: {rec.error})"}
    obj = meshes[0]
    keys = ("gen3d_placement", "gen3d_camera", "gen3d_camera_json")
    return {"error": "", "obj": obj, "provenance": {k: obj.get(k) for k in keys}}


def scenario_placement(zip_path: str, tmp: str) -> dict:
    import bpy
    from mathutils import Vector

    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    manager = sys.modules[ADDON_MODULE + ".jobs"].manager
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_path, prefs.working_dir = sys.executable, str(REPO)
    prefs.data_dir, prefs.output_dir = os.path.join(tmp, "data"), os.path.join(tmp, "results")
    prefs.timeout = 120.0
    bpy.ops.gen3d.launch_backend(mode="SYNC")
    bpy.ops.gen3d.refresh(mode="SYNC")

    scene = bpy.context.scene
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 180, 100
    cam_data = bpy.data.cameras.new("RefCam")
    cam_data.lens, cam_data.shift_x, cam_data.shift_y = 35.0, 0.08, -0.05
    cam = bpy.data.objects.new("RefCam", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (4.2, -5.8, 3.4)
    aim = Vector((0.5, 0.5, 0.4))
    cam.rotation_euler = (aim - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    bpy.context.view_layer.update()
    # the reference: a cube (the tiny model's box, 2 x 0.87) standing off the camera's axis
    ref = os.path.join(tmp, "reference.png")
    reference_box = _reference_png(bpy, scene, cam, ref, (0.9, 0.6, 0.3), 0.87)

    settings = scene.gen3d
    settings.method, settings.preset, settings.seed = "lrm", "fast", 3
    settings.image_source, settings.image_path = "FILE", ref
    settings.placement = "CAMERA"  # an explicit choice in the panel
    scene.cursor.location = (0.0, 0.0, 0.0)
    out: dict = {}
    error = _error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps(LRM_OPTIONS))
    res = _result(bpy, manager, error)
    if (obj := res.pop("obj", None)) is not None:
        up = obj.matrix_world.to_3x3() @ Vector((0, 0, 1))
        res.update(reference_box=reference_box, projected_box=_projected_box(scene, cam, obj),
                   up_angle_deg=math.degrees(up.angle(Vector((0, 0, 1)))),
                   in_front=all((cam.matrix_world.inverted() @ (obj.matrix_world @ v.co)).z < 0
                                for v in obj.data.vertices))
    out["camera"] = res

    scene.camera = None
    bpy.data.objects.remove(cam)
    settings.placement, settings.result_size = "CURSOR", 0.0  # at the cursor, the method's own size
    scene.cursor.location = (1.0, -2.0, 0.5)
    error = _error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps(LRM_OPTIONS))
    res = _result(bpy, manager, error)
    if (obj := res.pop("obj", None)) is not None:
        res.update(location=list(obj.matrix_world.translation), cursor=list(scene.cursor.location),
                   rotation_scale=[list(r) for r in obj.matrix_world.to_3x3()])
    out["no_camera"] = res
    bpy.ops.gen3d.stop_backend()
    return out


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
