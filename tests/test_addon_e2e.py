"""The installed add-on driving a real backend on loopback, in real bpy (module mode: no timers, so the
operators run synchronously, and the asynchronous path is driven by pumping the job queue by hand).

One bpy subprocess (HOME in a temporary folder) runs the whole story once, because starting bpy and the backend
dominates the time: the add-on launches the backend itself (taken preferred port -> fallback port, pid file,
attach), runs jobs through the operators (options from /v1/methods, errors, cancel on the asynchronous path),
reconstructs a small bpy-rendered scene when the backend has the ``reconstruct`` method, stops the backend
(readable error afterwards) and unregisters. Each test below checks one part of the story.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("bpy")

from test_addon_install import ADDON_MODULE, _error_of, addon_zip, run_scenario  # noqa: E402,F401

pytestmark = pytest.mark.slow

#: the fast preset cut down to seconds of fitting: this checks the add-on's plumbing (views out, textured mesh
#: back in place), not the reconstruction's quality
RECONSTRUCT_OPTIONS = {"fit_steps": 12, "num_points": 400, "max_gaussians": 2000, "sh_degree": 0,
                       "fit_resolutions": [0.25], "densify_every": 20, "mesh_resolution": 32, "target_faces": 600,
                       "texture_resolution": 64, "extra_bake_views": 0, "refine_steps": 0, "preview_size": 64}


@pytest.fixture(scope="module")
def story(addon_zip, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    return run_scenario(Path(__file__), "scenario_story", str(addon_zip), str(tmp), home=tmp / "home", timeout=600,
                        env={"GEN3D_EXTRA_METHODS": "tests.support.methods,tests.test_addon_methods",
                             "PYTHONPATH": str(REPO)})


def test_launch_picks_a_free_port_and_attaches(story):
    s = story["launch"]
    assert s["online"] and s["url"].startswith("http://127.0.0.1:")
    assert s["port"] != s["taken_port"]
    assert s["pid_file"]["url"] == s["url"]
    assert s["attached_url"] == s["url"] and s["attached_same_process"]
    assert "serve" in s["log_text"]
    assert s["no_token"].startswith("unauthorized") and s["unload"] == ["FINISHED"]


def test_methods_and_options_from_the_backend(story):
    s = story["methods"]
    assert "sleepy" in s["methods"]
    assert s["options"]["steps"] == {"kind": "INT", "value": 5}
    assert s["options"]["preview"]["kind"] == "BOOL"
    assert s["options_fast"]["steps"]["value"] == 2  # the preset's value
    assert s["overrides"] == {"steps": 3}
    # sleepy marks 'steps' as its main option: the other three wait behind "Advanced"
    assert s["drawn_closed"] == ["int_value"] and len(s["drawn_open"]) == 4


def test_job_errors_are_readable(story):
    s = story["errors"]
    assert "has no GLB artifact" in s["no_glb"] and s["server_options"]["steps"] == 3
    assert "diverged at step 1" in s["numerical"]
    assert "needs a reference image" in s["no_image"]
    assert s["result_folders"] == []  # failed jobs leave no empty results/<time>-generate-* folders
    for msg in s.values():
        if isinstance(msg, str):
            assert "Traceback" not in msg


def test_cancel_on_the_asynchronous_path(story):
    s = story["cancel"]
    assert s["seen_running"]
    assert s["state"] == "cancelled" and s["server_state"] == "cancelled"
    assert s["steps_done"] < s["steps_total"]


def assert_imported(s: dict, method: str, kind: str) -> None:
    assert s["error"] == ""
    assert s["collection"] == ["Gen3D"] and s["type"] == "MESH"
    assert s["uv_layers"] >= 1 and s["image_nodes"] >= 1 and s["images_packed"]
    p = s["provenance"]
    assert p["gen3d_method"] == method and p["gen3d_kind"] == kind
    assert p["gen3d_job_id"] and p["gen3d_backend_version"] == "0.1.0"


def assert_bbox(got, want, tol):
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        assert abs(g - w) <= tol, (got, want)


def test_resume_continues_a_cancelled_job_from_its_finished_stage(story):
    r = story["resume"]
    assert r["cancelled"] == "cancelled" and r["resumable"] and r["drawn"] and r["op"] == ["FINISHED"]
    assert r["server_state"] == "succeeded" and r["computed"] == ["two"] and not r["resumable_after"]


def test_generate_imports_at_the_cursor(story):
    s = story["generate"]
    assert_imported(s, "box_glb", "generate")
    assert s["provenance"]["gen3d_prompt"] == "a test prompt" and s["provenance"]["gen3d_seed"] == 7
    # the 0.5 m box, scaled about the 3D cursor (1, 2, 3) to the panel's default size of 1 m
    assert_bbox(s["result_bbox"], [[0.5, 1.5, 2.5], [1.5, 2.5, 3.5]], 1e-5)
    assert s["active_collection"] != "Gen3D"  # the user's next objects do not land in the Gen3D collection


def test_inputs_follow_the_method(story):
    """The panel shows and sends only what the method takes (/v1/methods' inputs): an image-only method gets no
    prompt, a text-only method no image; a reference image through the active camera gets that camera fitted to the
    image's size; Refine Texture sends its own prompt and none of Generate's inputs."""
    s = story["inputs"]
    assert "image_source" in s["image_method_props"] and "prompt" not in s["image_method_props"]
    assert "prompt" in s["text_method_props"] and "image_source" not in s["text_method_props"]
    assert s["image_job"]["error"] == "" and s["image_job"]["prompt"] is None and s["image_job"]["files"] == ["image"]
    assert s["image_job"]["camera_size"] == [64, 48]  # the scene renders 1920 x 1080; the image is 64 x 48
    assert s["text_job"]["error"] == "" and s["text_job"]["files"] == [] and s["text_job"]["cameras"] == []
    assert s["refine_job"]["prompt"] == "weathered bronze" and s["refine_job"]["files"] == ["mesh"]
    assert "texture_prompt" in s["texture_props"] and "prompt" not in s["texture_props"]


def test_history_after_reconnect(story):
    """A new session lists the backend's finished jobs (GET /v1/jobs): a result can be imported again, and deleted
    on the backend."""
    s = story["history"]
    assert s["adopted"] == s["finished"] and len(s["finished"]) >= 5
    assert s["state"] == "succeeded" and s["text"] == "succeeded"
    assert s["imported"] and s["objects"] == s["imported"]
    assert s["after_delete"] == "not_found"


def test_history_follows_a_job_still_running_from_an_earlier_session(story):
    """A job left running by a closed Blender session is listed by the next one while it runs, followed on a
    worker thread: its whole-job progress grows through the pump until it succeeds."""
    s = story["running_history"]
    assert s["adopted"] and s["history"] and s["first_state"] in ("queued", "running")
    live = [f for f in s["seen"] if 0.0 < f < 1.0]
    assert len(set(live)) >= 3 and s["seen"] == sorted(s["seen"])  # seen moving, never backwards
    assert s["state"] == "succeeded" == s["server_state"] and s["text"] == "succeeded"


def test_views_only_job_shows_its_views_and_imports_nothing(story):
    """MVDream stopped after its views (``stop_after=views``, smoke-test weights): the job succeeds, views.png is
    the job's image in Blender (one 64² view per column, four columns), no mesh import is attempted, and the
    history's button in a new session shows the views again."""
    s = story["views_only"]
    assert s["error"] == "" and s["state"] == "succeeded" and "views only" in s["text"]
    assert s["objects"] == [] and s["result_path"] == "" and s["new_objects"] == []
    assert s["image_file"] and s["image_size"] == s["views_png_size"] == [4 * 64, 64]
    assert s["drawn"]["errors"] == []  # (bpy as a module makes no icon previews: the UI draws views.png's)
    h = s["history"]
    assert "views only" in h["text"] and h["image"] and h["objects"] == [] and h["new_objects"] == []


def test_weights_manager(story):
    s = story["weights"]
    assert s["lrm"][0]["name"] == "triposr" and s["lrm"][0]["tiny"]  # found in the preference's weights folder
    assert s["needs"][0]["ready"] is False and s["needs"][0]["license"] and s["needs"][0]["size_gb"] > 1
    assert "accept its licence" in s["refused"]
    assert "cannot download sd15" in s["offline"] and "Traceback" not in s["offline"]  # no network in tests
    d = s["download"]  # from a hub on loopback: the Jobs panel follows the command's bytes and percent
    assert d["label"] == "download instantmesh-nerf-base" and d["state"] == "succeeded", d
    assert d["size"] == 12_000_000 and d["ready_after"] is True
    assert d["seen"] == sorted(d["seen"]) and any(0 < f < 1 for f in d["seen"]) and "progress" in d["drawn"]
    assert d["cancelled"] == {"state": "cancelled", "exit": -15, "file": False}  # terminated, nothing half-written


def test_reconstruct_from_cameras(story):
    s = story["reconstruct"]
    assert_imported(s, "reconstruct", "reconstruct")
    # in place (the 3D cursor is at (1, 2, 3), far away): the result surrounds the source's centre
    (lo, hi), (src_lo, src_hi) = s["result_bbox"], s["source_bbox"]
    for a in range(3):
        centre = (src_lo[a] + src_hi[a]) / 2
        assert lo[a] < centre < hi[a], (s["result_bbox"], s["source_bbox"])


def test_reconstruct_bbox_within_2_percent(addon_zip, tmp_path):
    """The whole path at the ``fast`` preset on a smooth textured object (24 Cycles renders at 192 px): the
    reconstructed object's world bounding box matches the source's within 2 % of its size."""
    s = run_scenario(Path(__file__), "scenario_reconstruct_quality", str(addon_zip), str(tmp_path),
                     home=tmp_path / "home", timeout=1800, env={"PYTHONPATH": str(REPO)})
    assert_imported(s, "reconstruct", "reconstruct")
    size = max(b - a for a, b in zip(*s["source_bbox"]))
    assert_bbox(s["result_bbox"], s["source_bbox"], 0.02 * size)


def test_refine_round_trips_the_evaluated_mesh_in_place(story):
    s = story["refine"]
    assert_imported(s, "mesh_echo", "refine")
    # the source box (1 x 0.8 x 0.6 at (0.3, -0.2, 0.4)) with a 2x Array modifier, in world space
    assert_bbox(s["result_bbox"], [[-0.2, -0.6, 0.1], [1.8, 0.2, 0.7]], 1e-4)
    assert s["source_hidden"]


def test_views_upload_matches_blenders_projection(story):
    s = story["views"]
    assert s["n_frames"] == 12 and s["size"] == [128, 128]
    assert "transforms.json" in s["names"] and "images/000.png" in s["names"]
    assert s["max_px_error"] < 0.05  # the cameras in transforms.json project like Blender's own cameras
    assert s["alpha_centre_min"] == 255 and s["alpha_corner_max"] == 0  # RGBA with a transparent film
    assert s["film_restored"]


def test_refine_needs_the_texture_method(story):
    assert "needs the 'texture' method" in story["refine_poll"]


def test_method_with_missing_weights_is_disabled_with_reason(story):
    s = story["missing_weights"]
    assert "poll()" in s["poll"] and "missing weights: sd15" in s["poll"]
    ready, reason, command = s["weights"]
    assert not ready and "sd15" in reason
    assert command == "" or "sd15" in command  # shown next to the method when the registry knows the command


def test_panels_draw(story):
    s = story["draw"]
    assert s["errors"] == []
    assert {"progress", "operator", "prop", "label"} <= set(s["calls"])


def test_stopped_backend_gives_a_readable_error(story):
    s = story["stopped"]
    assert s["stopped"] and not s["health_after"]
    assert "cannot reach the Gen3D backend" in s["error"] and "Traceback" not in s["error"]


def test_unregister_after_use_leaves_nothing(story):
    s = story["unregister"]
    assert s["classes"] == [] and not s["scene_prop"] and not s["timer_registered"]
    assert s["threads"] == []


# -- the story (runs in a subprocess: python tests/test_addon_e2e.py scenario_story ZIP TMP) ------------------------


def _pump_until(manager, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.pump()
        if cond():
            return True
        time.sleep(0.05)
    return False


def _build_scene(bpy, elevations=(-25, 20, 55), per_ring: int = 4, size: int = 128, checker: int = 8,
                 shape: str = "box"):
    """A ``shape`` ("box" or "ellipsoid", 1 x 0.8 x 0.6) with an image texture (a red/blue checker of ``checker``
    squares a side) off the origin, seen by ``per_ring`` cameras on each elevation ring (``size`` px renders)."""
    from mathutils import Vector

    for o in list(bpy.data.objects):  # (reading the factory settings would disable the add-on too)
        bpy.data.objects.remove(o)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    world = bpy.data.worlds.new("World")
    world.color = (1.0, 1.0, 1.0)
    scene.world = world
    if shape == "box":
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.3, -0.2, 0.4))
    else:
        bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, segments=64, ring_count=32, location=(0.3, -0.2, 0.4))
        bpy.ops.object.shade_smooth()
    obj = bpy.context.active_object
    obj.scale = (1.0, 0.8, 0.6)
    mat = bpy.data.materials.new("Checker")
    if not mat.use_nodes:  # 4.x; always on (and deprecated) in 5.x
        mat.use_nodes = True
    nodes = mat.node_tree.nodes
    img = bpy.data.images.new("Checker", checker, checker)  # packed so it travels in GLBs
    img.pixels[:] = [c for i in range(checker * checker)
                     for c in ((0.9, 0.2, 0.1, 1.0) if (i % checker + i // checker) % 2 else (0.1, 0.3, 0.9, 1.0))]
    img.pack()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = img
    tex.interpolation = "Closest"
    mat.node_tree.links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    obj.data.materials.append(mat)
    target = Vector(obj.location)
    for i in range(per_ring * len(elevations)):  # one ring below the box so that its bottom is seen too
        import math

        el = math.radians(elevations[i // per_ring])
        az = 2 * math.pi * (i % per_ring) / per_ring + 0.4 * (i // per_ring)
        pos = target + 3.0 * Vector((math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)))
        cam_data = bpy.data.cameras.new(f"Cam{i:02d}")
        cam_data.lens = 50
        cam = bpy.data.objects.new(f"Cam{i:02d}", cam_data)
        scene.collection.objects.link(cam)
        cam.location = pos
        cam.rotation_euler = (target - pos).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    return obj


def _check_views(bpy, obj, folder: str) -> dict:
    """Render the cameras and write the views zip as the Reconstruct operator does; project the object's corners
    with the written transforms.json and with ``world_to_camera_view``; sample the alpha of the renders."""
    import zipfile

    import numpy as np
    from bpy_extras.object_utils import world_to_camera_view
    from PIL import Image

    views = sys.modules[ADDON_MODULE + ".views"]
    scene_io = sys.modules[ADDON_MODULE + ".scene_io"]
    scene = bpy.context.scene
    cams = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    paths = views.render_views(scene, cams, folder)
    zip_path = views.write_views_zip(folder, [scene_io.camera_to_wire(c, scene) for c in cams], paths,
                                     os.path.join(folder, "..", "views.zip"))
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(z.namelist())
        frames = json.loads(z.read("transforms.json"))["frames"]
        alphas = [np.asarray(Image.open(z.open(f["file_path"])))[..., 3] for f in frames]
    corners = [obj.matrix_world @ v.co for v in obj.data.vertices]
    W, H = scene.render.resolution_x, scene.render.resolution_y
    err, inside, outside = 0.0, [], []
    for cam, f, alpha in zip(cams, frames, alphas):
        c2w = np.array(f["transform_matrix"])  # OpenGL: camera looks down -z, y up
        w2c = np.linalg.inv(c2w)
        for p in corners:
            x, y, z = (w2c @ np.array([*p, 1.0]))[:3]
            u, v = f["cx"] + f["fl_x"] * x / -z, f["cy"] - f["fl_y"] * y / -z
            ref = world_to_camera_view(scene, cam, p)
            err = max(err, abs(u - ref.x * W), abs(v - (1 - ref.y) * H))
        centre = obj.matrix_world.translation
        ref = world_to_camera_view(scene, cam, centre)
        inside.append(int(alpha[int((1 - ref.y) * H), int(ref.x * W)]))
        outside.append(int(max(alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1])))
    return {"names": names, "n_frames": len(frames), "max_px_error": err, "alpha_centre_min": min(inside),
            "alpha_corner_max": max(outside), "size": [frames[0]["w"], frames[0]["h"]],
            "film_restored": not scene.render.film_transparent}


def _draw_panels(bpy, panels) -> dict:
    """Call each panel's ``draw`` with a layout that checks every call against Blender's RNA: UILayout methods
    and attributes, the data's properties, operator ids and their properties, icon names (bpy as a module has no
    UI to draw into, and a typo there only shows up when a user opens the sidebar)."""
    rna = bpy.types.UILayout.bl_rna
    icons = set(rna.functions["prop"].parameters["icon"].enum_items.keys())
    errors, calls, props, operators = [], [], [], []

    class OpProps:
        def __init__(self, idname):
            mod, name = idname.split(".")
            self.__dict__["_props"] = getattr(getattr(bpy.ops, mod), name).get_rna_type().properties.keys()

        def __setattr__(self, key, value):
            if key not in self._props:
                errors.append(f"operator has no property {key!r}")

    class Layout:
        def __setattr__(self, key, value):
            if key not in rna.properties:
                errors.append(f"UILayout has no attribute {key!r}")

        def __getattr__(self, name):
            if name not in rna.functions and not hasattr(bpy.types.UILayout, name):
                errors.append(f"UILayout has no method {name!r}")

            def call(*args, **kw):
                calls.append(name)
                if name in ("prop", "prop_enum", "template_ID"):
                    props.append(args[1])
                if kw.get("icon") and kw["icon"] not in icons:
                    errors.append(f"unknown icon {kw['icon']!r}")
                if name in ("prop", "prop_enum", "template_ID") and args[1] not in args[0].bl_rna.properties:
                    errors.append(f"{type(args[0]).__name__} has no property {args[1]!r}")
                if name == "operator":
                    operators.append(args[0])
                    try:
                        return OpProps(args[0])
                    except AttributeError:
                        errors.append(f"no operator {args[0]!r}")
                return Layout()

            return call

    for panel in panels:
        class Self:
            layout = Layout()

        try:
            panel.draw(Self(), bpy.context)
        except Exception as e:  # report, not crash: the test names the panel
            errors.append(f"{panel.__name__}: {type(e).__name__}: {e}")
    return {"errors": errors, "calls": sorted(set(calls)), "props": props, "operators": operators}


def _describe(bpy, names: list[str]) -> dict:
    """What a test wants to know about an imported result: its mesh object, UVs, textures, provenance, place."""
    meshes = [bpy.data.objects[n] for n in names if n in bpy.data.objects and bpy.data.objects[n].type == "MESH"]
    if not meshes:
        return {"objects": names}
    obj = meshes[0]
    imgs = [n.image for m in obj.data.materials if m and m.node_tree for n in m.node_tree.nodes
            if n.type == "TEX_IMAGE" and n.image is not None]
    return {"objects": names, "type": obj.type, "collection": [c.name for c in obj.users_collection],
            "uv_layers": len(obj.data.uv_layers), "image_nodes": len(imgs),
            "images_packed": bool(imgs) and all(i.packed_file is not None for i in imgs),
            "provenance": {k: obj.get(k) for k in ("gen3d_job_id", "gen3d_method", "gen3d_prompt", "gen3d_seed",
                                                   "gen3d_backend_version", "gen3d_kind")},
            "result_bbox": _world_bbox(obj)}


def _world_bbox(obj):
    pts = [obj.matrix_world @ v.co for v in obj.data.vertices]
    return [[min(p[i] for p in pts) for i in range(3)], [max(p[i] for p in pts) for i in range(3)]]


def scenario_story(zip_path: str, tmp: str) -> dict:
    import addon_utils
    import bpy

    out: dict = {}
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    jobs = sys.modules[ADDON_MODULE + ".jobs"]
    ops_mod = sys.modules[ADDON_MODULE + ".operators"]
    manager = jobs.manager
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_path = sys.executable
    prefs.working_dir = str(REPO)
    prefs.data_dir = os.path.join(tmp, "data")
    prefs.output_dir = os.path.join(tmp, "results")
    prefs.timeout = 30.0
    prefs.token = "t0ken"  # the launched backend then requires it on every route but /v1/health
    from gen3d.backend.weights import write_tiny

    write_tiny("mvdream", os.path.join(tmp, "weights"))  # a views-only job runs MVDream's smoke-test model
    os.makedirs(os.path.join(tmp, "weights", "triposr"))  # a smoke-test checkpoint (the marker makes it one)
    with open(os.path.join(tmp, "weights", "triposr", "GEN3D_TINY.json"), "w") as f:
        f.write("{}")
    prefs.weights_dir = os.path.join(tmp, "weights")  # the launched backend must look there
    out["refine_poll"] = _error_of(bpy.ops.gen3d.refine_texture, mode="SYNC")  # no backend yet: no method

    # -- launch on a taken port: the add-on falls back to a free one, writes a pid file, then attaches ---------
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        prefs.port = taken.getsockname()[1]
        bpy.ops.gen3d.launch_backend(mode="SYNC")
        proc = ops_mod.backend_process()
        url, pid = proc.url, proc.proc.pid
        pid_file = proc.read_pid_file()
        # a second session (new BackendProcess on the same folder) attaches instead of launching
        other = type(proc)(proc.state_dir)
        attached = other.launch(["false"], prefs.data_dir, prefs.port)
        bpy.ops.gen3d.show_log()
        out["launch"] = {"online": manager.status.online, "url": url, "port": int(url.rsplit(":", 1)[1]),
                         "taken_port": taken.getsockname()[1], "pid_file": pid_file, "attached_url": attached,
                         "attached_same_process": other.proc is None and proc.proc.pid == pid,
                         "log_text": bpy.data.texts[ops_mod.LOG_TEXT].as_string()[-2000:]}
    prefs.backend_url = url.removeprefix("http://")  # URLs work without the scheme too
    client_mod = sys.modules[ADDON_MODULE + ".client"]
    try:
        client_mod.Client(url).methods()
        out["launch"]["no_token"] = ""
    except client_mod.BackendError as e:
        out["launch"]["no_token"] = f"{e.code}: {e}"
    out["launch"]["unload"] = sorted(bpy.ops.gen3d.unload())

    # -- methods and their options ----------------------------------------------------------------------------
    bpy.ops.gen3d.refresh(mode="SYNC")
    settings = bpy.context.scene.gen3d
    settings.method = "sleepy"
    settings.prompt = "a test prompt"

    def options():
        return {o.name: {"kind": o.kind, "value": o.value} for o in settings.options if o.method == "sleepy"}

    out["methods"] = {"methods": [m["name"] for m in manager.status.methods], "options": options()}
    panel_mod = sys.modules[ADDON_MODULE + ".panel"]
    value_props = lambda: [p for p in _draw_panels(bpy, [panel_mod.GEN3D_PT_generate])["props"]  # noqa: E731
                           if p.endswith("_value")]
    out["methods"]["drawn_closed"] = value_props()
    settings.show_advanced_generate = True
    out["methods"]["drawn_open"] = value_props()
    settings.show_advanced_generate = False
    settings.preset = "fast"
    out["methods"]["options_fast"] = options()
    settings.preset = "standard"
    next(o for o in settings.options if o.method == "sleepy" and o.name == "steps").int_value = 3
    props = sys.modules[ADDON_MODULE + ".properties"]
    out["methods"]["overrides"] = props.option_overrides(settings, "sleepy")

    # -- errors: a job without a mesh, a job that fails ---------------------------------------------------------
    errors = {"no_glb": _error_of(bpy.ops.gen3d.generate, mode="SYNC")}
    rec = list(manager.records.values())[-1]
    errors["server_options"] = ops_mod.client_for(bpy.context).job(rec.job_id)["request"]["options"]
    errors["numerical"] = _error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps({"fail_at": 1}))
    settings.method = "image_box"
    errors["no_image"] = _error_of(bpy.ops.gen3d.generate, mode="SYNC")
    settings.method = "sleepy"
    errors["result_folders"] = sorted(os.listdir(prefs.output_dir)) if os.path.isdir(prefs.output_dir) else []
    out["errors"] = errors

    # -- cancel on the asynchronous path (worker thread + pump, as the UI does) ---------------------------------
    steps = 400
    bpy.ops.gen3d.generate(mode="ASYNC", options_json=json.dumps({"steps": steps, "step_s": 0.05}))
    rec = list(manager.records.values())[-1]
    seen_running = _pump_until(manager, lambda: rec.state == "running" and rec.step >= 1)
    bpy.ops.gen3d.cancel(key=rec.key)
    _pump_until(manager, lambda: not rec.active)
    out["cancel"] = {"seen_running": seen_running, "state": rec.state, "steps_done": rec.step, "steps_total": steps,
                     "server_state": ops_mod.client_for(bpy.context).job(rec.job_id)["state"]}

    # -- resume: a cancelled staged job continues on the backend from its finished stage (the panel's Resume) ----
    settings.method = "staged"
    bpy.ops.gen3d.generate(mode="ASYNC", options_json=json.dumps({"steps": 40, "step_s": 0.05}))
    rec = list(manager.records.values())[-1]
    _pump_until(manager, lambda: rec.job_id and ops_mod.client_for(bpy.context).job(rec.job_id).get("stage") == "two")
    bpy.ops.gen3d.cancel(key=rec.key)
    _pump_until(manager, lambda: not rec.active)
    resume = {"cancelled": rec.state, "resumable": rec.resumable,
              "drawn": "gen3d.resume_job" in _draw_panels(bpy, [panel_mod.GEN3D_PT_jobs])["operators"]}
    resume["op"] = sorted(bpy.ops.gen3d.resume_job(key=rec.key))
    _pump_until(manager, lambda: not rec.active)
    job = ops_mod.client_for(bpy.context).job(rec.job_id)
    result = {}
    if job["state"] == "succeeded":
        path = ops_mod.client_for(bpy.context).download(rec.job_id, "result.json", os.path.join(tmp, "resumed.json"))
        result = json.load(open(path))
    out["resume"] = {**resume, "server_state": job["state"], "computed": result.get("computed"),
                     "resumable_after": rec.resumable}
    settings.method = "sleepy"

    # -- generate: a textured box comes in at the 3D cursor ---------------------------------------------------------
    settings.method = "box_glb"
    settings.seed = 7
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    error = _error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps({"size": 0.5}))
    out["generate"] = {"error": error, **_describe(bpy, list(manager.records.values())[-1].objects),
                       "active_collection": bpy.context.view_layer.active_layer_collection.name}

    # -- inputs follow the method; Refine Texture keeps its own ----------------------------------------------------
    client = ops_mod.client_for(bpy.context)

    def accepted(error):
        req = client.job(list(manager.records.values())[-1].job_id)["request"]
        return {"error": error, "prompt": req.get("prompt"), "files": sorted(req.get("files") or {}),
                "cameras": req.get("cameras") or []}

    ref = bpy.data.images.new("ref", 64, 48, alpha=True)
    ref.filepath_raw, ref.file_format = os.path.join(tmp, "ref.png"), "PNG"
    ref.save()
    settings.method = "image_box"
    inputs = {"image_method_props": _draw_panels(bpy, [panel_mod.GEN3D_PT_generate])["props"]}
    settings.image_source, settings.image_path = "FILE", os.path.join(tmp, "ref.png")
    settings.placement = "CAMERA"  # the factory scene's camera renders 1920 x 1080
    inputs["image_job"] = accepted(_error_of(bpy.ops.gen3d.generate, mode="SYNC"))
    inputs["image_job"]["camera_size"] = [[c["width"], c["height"]] for c in inputs["image_job"]["cameras"]][0]
    settings.method, settings.placement = "box_glb", "CURSOR"
    inputs["text_method_props"] = _draw_panels(bpy, [panel_mod.GEN3D_PT_generate])["props"]
    inputs["text_job"] = accepted(_error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps({"size": 0.5})))
    box_job = list(manager.records.values())[-1].job_id
    out["inputs"] = inputs

    # -- the views upload: renders + transforms.json, checked against Blender's own projection -------------------
    src = _build_scene(bpy)
    out["views"] = _check_views(bpy, src, os.path.join(tmp, "views"))

    # -- reconstruct from cameras ---------------------------------------------------------------------------------
    settings.preset = "fast"
    error = _error_of(bpy.ops.gen3d.reconstruct, mode="SYNC", options_json=json.dumps(RECONSTRUCT_OPTIONS))
    rec = list(manager.records.values())[-1]
    out["reconstruct"] = {"error": error, **_describe(bpy, rec.objects if rec.kind == "reconstruct" else []),
                          "source_bbox": _world_bbox(src)}

    # -- refine: the evaluated mesh (modifiers applied) goes out in world space and comes back in place ----------
    mod = src.modifiers.new("Array", "ARRAY")
    mod.count = 2  # the evaluated mesh is twice as long in x: (-0.2 .. 1.8) instead of (-0.2 .. 0.8)
    for o in bpy.context.selected_objects:
        o.select_set(False)
    src.hide_set(False)
    src.select_set(True)
    bpy.context.view_layer.objects.active = src
    settings.texture_method = "mesh_echo"
    settings.texture_prompt = "weathered bronze"  # Generate's prompt and reference image (still set) stay out
    out["inputs"]["texture_props"] = _draw_panels(bpy, [panel_mod.GEN3D_PT_scene])["props"]
    error = _error_of(bpy.ops.gen3d.refine_texture, mode="SYNC")
    out["inputs"]["refine_job"] = accepted(error)
    out["refine"] = {"error": error, **_describe(bpy, list(manager.records.values())[-1].objects),
                     "source_hidden": src.hide_get() and src.hide_render}

    # -- history: a new session (no records) lists the backend's finished jobs; re-import one, delete it ---------
    finished = sorted(j["id"] for j in client.jobs() if j["state"] in ("succeeded", "failed", "cancelled"))
    manager.records.clear()
    bpy.ops.gen3d.refresh(mode="SYNC")
    adopted = {r.job_id: r for r in manager.records.values()}
    rec = adopted[box_job]
    before = set(bpy.data.objects)
    bpy.ops.gen3d.fetch_job(key=rec.key)
    history = {"finished": finished, "adopted": sorted(adopted), "state": rec.state, "text": rec.status_text(),
               "imported": [o.name for o in bpy.data.objects if o not in before], "objects": rec.objects}
    bpy.ops.gen3d.remove_job(key=rec.key)
    try:
        client.job(box_job)
        history["after_delete"] = "still there"
    except client_mod.BackendError as e:
        history["after_delete"] = e.code
    out["history"] = history

    # -- a job still running when Blender closed: the next session follows it (live progress), then it is done ----
    settings.method = "sleepy"
    bpy.ops.gen3d.generate(mode="ASYNC", options_json=json.dumps({"steps": 80, "step_s": 0.05}))
    earlier = list(manager.records.values())[-1]
    _pump_until(manager, lambda: earlier.job_id != "" or not earlier.active)
    assert earlier.job_id, earlier.error
    manager.clear()  # the session ends: its records and worker's queue are gone; the backend runs on
    bpy.ops.gen3d.refresh(mode="SYNC")
    rec = next((r for r in manager.records.values() if r.job_id == earlier.job_id), None)
    seen: list[float] = []
    if rec is not None:
        first_state = rec.state
        _pump_until(manager, lambda: seen.append(rec.progress) or not rec.active)
    out["running_history"] = {"adopted": rec is not None, "history": rec is not None and rec.history,
                              "first_state": rec and first_state, "seen": seen, "state": rec and rec.state,
                              "text": rec and rec.status_text(), "server_state": client.job(earlier.job_id)["state"]}

    # -- a views-only job (MVDream stopped after its views): views.png shown as the job's image, nothing imported --
    settings.method = "mvdream"
    settings.prompt = "a wooden chair"
    before = set(bpy.data.objects)
    error = _error_of(bpy.ops.gen3d.generate, mode="SYNC", options_json=json.dumps(
        {"stop_after": "views", "views_steps": 2, "candidates": 1}))
    rec = list(manager.records.values())[-1]
    image = bpy.data.images.get(rec.preview_image) if rec.preview_image else None
    views_png = os.path.join(rec.out_dir, "views.png")
    out["views_only"] = {"error": error, "state": rec.state, "text": rec.status_text(), "objects": rec.objects,
                         "result_path": rec.result_path, "new_objects": [o.name for o in bpy.data.objects
                                                                         if o not in before],
                         "image_size": list(image.size) if image else None,
                         "image_file": image and bpy.path.abspath(image.filepath) == views_png,
                         "views_png_size": list(__import__("PIL.Image").Image.open(views_png).size)
                         if os.path.isfile(views_png) else None,
                         "drawn": _draw_panels(bpy, [panel_mod.GEN3D_PT_jobs])}
    # the same job in a new session's history: "Show Views" loads the views, and imports nothing
    job_id = rec.job_id
    manager.clear()
    bpy.ops.gen3d.refresh(mode="SYNC")
    rec = next(r for r in manager.records.values() if r.job_id == job_id)
    bpy.ops.gen3d.fetch_job(key=rec.key)
    out["views_only"]["history"] = {"text": rec.status_text(), "objects": rec.objects,
                                    "image": bool(rec.preview_image) and rec.preview_path.endswith("views.png"),
                                    "new_objects": [o.name for o in bpy.data.objects if o not in before]}
    settings.method = "box_glb"

    # -- the weights manager: the launched backend uses the preference's folder; downloads show the licence first
    out["weights"] = {"lrm": manager.status.method("lrm")["weights"],
                      "needs": manager.status.method("needs_weights")["weights"],
                      "refused": _error_of(bpy.ops.gen3d.download_weights, name="openlrm-small", license="CC BY-NC",
                                           restrictive=True, mode="SYNC"),
                      "offline": _error_of(bpy.ops.gen3d.download_weights, name="sd15", license="RAIL",
                                           mode="SYNC")}

    # -- a download from a hub on loopback, followed in the panel: bytes and percent as the command prints them ---
    from support.hub_server import HubServer

    served = os.path.join(tmp, "hub", "TencentARC", "InstantMesh")
    os.makedirs(served)
    with open(os.path.join(served, "instant_nerf_base.ckpt"), "wb") as f:
        f.write(bytes(range(256)) * (12_000_000 // 256))
    with HubServer(os.path.join(tmp, "hub"), chunk_s=0.25) as hub:
        os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=os.path.join(tmp, "hf_home"))
        bpy.ops.gen3d.download_weights(name="instantmesh-nerf-base", license="Apache-2.0", mode="ASYNC")
        task = list(sys.modules[ADDON_MODULE + ".tasks"].tasks.tasks.values())[-1]
        seen, drawn = [], []
        while _pump_until(manager, lambda: True, 1.0) and task.active:
            seen.append(task.fraction)
            drawn = drawn or _draw_panels(bpy, [panel_mod.GEN3D_PT_jobs])["calls"]
            time.sleep(0.1)
        _pump_until(manager, lambda: not manager.status.checking, 30)
        # the task's Cancel stops a download on its way
        with open(os.path.join(served, "instant_nerf_large.ckpt"), "wb") as f:  # ~8 s to serve; cancelled at ~3
            f.write(bytes(range(256)) * (30_000_000 // 256))
        bpy.ops.gen3d.download_weights(name="instantmesh-nerf-large", license="Apache-2.0", mode="ASYNC")
        big = list(sys.modules[ADDON_MODULE + ".tasks"].tasks.tasks.values())[-1]
        _pump_until(manager, lambda: big.fraction is not None or not big.active)
        bpy.ops.gen3d.cancel_task(key=big.key)
        big.reader.join(30)
        manager.pump()
        cancelled = {"state": big.state, "exit": big.proc.returncode,
                     "file": os.path.isfile(os.path.join(prefs.weights_dir, "instantmesh-nerf-large",
                                                         "instant_nerf_large.ckpt"))}
    os.environ["HF_HUB_OFFLINE"] = "1"
    downloaded = os.path.join(prefs.weights_dir, "instantmesh-nerf-base", "instant_nerf_base.ckpt")
    out["weights"]["download"] = {
        "seen": [f for f in seen if f is not None], "state": task.state, "error": task.error, "drawn": drawn,
        "label": task.label, "size": os.path.getsize(downloaded) if os.path.isfile(downloaded) else None,
        "ready_after": [w for w in manager.status.method("instant3d")["weights"]
                        if w["name"] == "instantmesh-nerf-base"][0]["ready"], "cancelled": cancelled}

    # -- a method whose weights are missing (the test method needs_weights) is disabled with the reason ----------
    settings.method = "needs_weights"
    out["missing_weights"] = {"poll": _error_of(bpy.ops.gen3d.generate, mode="SYNC"),
                              "weights": jobs.method_weights(manager.status.method("needs_weights"))}
    settings.method = "box_glb"

    # -- the panels draw every job state with real UILayout calls, properties, operators and icons ---------------
    manager.new(kind="generate", method="sleepy", request={}, files={}, out_dir=tmp, state="running", stage="fit",
                step=3, total=10)
    out["draw"] = _draw_panels(bpy, sys.modules[ADDON_MODULE + ".panel"].CLASSES)

    # -- stop: then a readable error ------------------------------------------------------------------------------
    bpy.ops.gen3d.stop_backend()
    stopped = proc.proc is None and not os.path.exists(proc.pid_path)
    try:
        ops_mod.client_for(bpy.context).health()
        health_after = True
    except Exception:
        health_after = False
    out["stopped"] = {"stopped": stopped, "health_after": health_after,
                      "error": _error_of(bpy.ops.gen3d.generate, mode="SYNC")}

    # -- unregister -----------------------------------------------------------------------------------------------
    timer = jobs._timer
    addon_utils.disable(ADDON_MODULE, default_set=True)
    import threading

    time.sleep(0.2)
    out["unregister"] = {"classes": sorted(n for n in dir(bpy.types) if n.upper().startswith("GEN3D")),
                         "scene_prop": "gen3d" in bpy.types.Scene.bl_rna.properties,
                         "timer_registered": bpy.app.timers.is_registered(timer),
                         "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("gen3d"))}
    return out


def scenario_reconstruct_quality(zip_path: str, tmp: str) -> dict:
    import bpy

    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_path, prefs.working_dir = sys.executable, str(REPO)
    prefs.data_dir, prefs.output_dir = os.path.join(tmp, "data"), os.path.join(tmp, "results")
    bpy.ops.gen3d.launch_backend(mode="SYNC")
    src = _build_scene(bpy, elevations=(-40, 0, 25, 55), per_ring=6, size=192, checker=16, shape="ellipsoid")
    bpy.context.scene.gen3d.preset = "fast"
    t0 = time.monotonic()
    error = _error_of(bpy.ops.gen3d.reconstruct, mode="SYNC")
    rec = list(sys.modules[ADDON_MODULE + ".jobs"].manager.records.values())[-1]
    out = {"error": error, "seconds": round(time.monotonic() - t0, 1), **_describe(bpy, rec.objects),
           "source_bbox": _world_bbox(src)}
    bpy.ops.gen3d.stop_backend()
    return out


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
