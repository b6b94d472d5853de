"""Operators: backend lifecycle, Generate, Reconstruct from cameras, Refine texture, Cancel, import.

Job operators prepare their inputs on the main thread (renders, GLB export), then either follow the job on a
worker thread (UI: results come in through the timer pump, ESC in the modal cancels it on the server) or, in
background mode and with bpy as a module where timers never fire, run it synchronously to the end.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import threading
import time
import urllib.parse
import uuid

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from mathutils import Vector

from . import reimport, scene_io, views
from .backend_process import BackendProcess, backend_argv
from .client import TERMINAL_STATES, BackendError, Client
from .jobs import JobRecord, discard_unused, download_result, manager, method_inputs, method_kind, method_weights
from .jobs import views_only
from .jobs import load_preview as jobs_load_preview
from .preferences import get_prefs, make_client, output_dir, user_dir
from .properties import method_schema, option_overrides
from .tasks import tasks

LOG_TEXT = "Gen3D backend log"
_process: list[BackendProcess] = []  # the one BackendProcess of this session, created on first use


def backend_process() -> BackendProcess:
    if not _process:
        _process.append(BackendProcess(user_dir("backend")))
    return _process[0]


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_for(context) -> Client:
    """A client for the configured backend; a remote one needs Blender's online access to be allowed."""
    client = make_client(get_prefs(context))
    if not is_loopback(client.base) and not bpy.app.online_access:
        raise BackendError("offline", f"{client.base} is not on this computer and Blender's online access is off "
                           "(Preferences > System > Network)")
    return client


def window_override() -> dict:
    """Context members that give a timer callback a window (operators such as the glTF importer want one)."""
    ctx = bpy.context
    wm = ctx.window_manager
    if ctx.window is None and wm is not None and wm.windows:
        return {"window": wm.windows[0]}
    return {}


def import_record(rec: JobRecord) -> list[str]:
    """``manager.importer``: import a downloaded result through the undoable import operator."""
    with bpy.context.temp_override(**window_override()):
        try:
            bpy.ops.gen3d.import_result(key=rec.key)
        except RuntimeError:
            pass  # the operator has put the error on the record
    return rec.objects


def ensure_out_dir(context, rec: JobRecord) -> str:
    """The record's local result folder; a job from the backend's history gets ``<job id>-<kind>`` on first use."""
    if not rec.out_dir:
        rec.out_dir = os.path.join(output_dir(get_prefs(context)), f"{rec.job_id}-{rec.kind}")
        os.makedirs(rec.out_dir, exist_ok=True)
    return rec.out_dir


def sync_mode(mode: str) -> bool:
    return mode == "SYNC" or (mode == "AUTO" and bpy.app.background)


MODE_PROP = EnumProperty(name="Mode", options={"HIDDEN", "SKIP_SAVE"}, default="AUTO", items=[
    ("AUTO", "Auto", "Synchronous in background mode, else on a worker thread"),
    ("SYNC", "Synchronous", "Wait for the job to finish"),
    ("ASYNC", "Asynchronous", "Follow the job on a worker thread; results come in through the timer pump")])


# -- backend lifecycle --------------------------------------------------------------------------------------------


class GEN3D_OT_refresh(bpy.types.Operator):
    bl_idname = "gen3d.refresh"
    bl_label = "Refresh"
    bl_description = "Check the backend (health, version) and reload its method list"

    mode: MODE_PROP

    def execute(self, context):
        try:
            client = client_for(context)
        except BackendError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        manager.refresh_status(client, sync=sync_mode(self.mode))
        if sync_mode(self.mode) and not manager.status.online:
            self.report({"ERROR"}, manager.status.error)
            return {"CANCELLED"}
        return {"FINISHED"}


class GEN3D_OT_launch_backend(bpy.types.Operator):
    bl_idname = "gen3d.launch_backend"
    bl_label = "Launch Backend"
    bl_description = "Start a local backend on 127.0.0.1 (or attach to the one already running) and connect to it"

    mode: MODE_PROP

    def execute(self, context):
        prefs = get_prefs(context)
        try:
            argv = backend_argv(prefs.python_path if prefs.launch_mode == "PYTHON" else "",
                                prefs.launch_command if prefs.launch_mode == "COMMAND" else "")
        except BackendError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        data_dir = bpy.path.abspath(prefs.data_dir) if prefs.data_dir else user_dir("data")
        weights_dir = bpy.path.abspath(prefs.weights_dir) if prefs.weights_dir else None
        cwd = bpy.path.abspath(prefs.working_dir) if prefs.working_dir else None
        token = prefs.token or None
        proc = backend_process()
        proc.stop_at_exit = prefs.stop_on_exit

        def launch():
            url = proc.launch(argv, data_dir, prefs.port, token=token, cwd=cwd, weights_dir=weights_dir)
            return url

        def connected(url):
            prefs.backend_url = url
            manager.refresh_status(make_client(prefs), sync=True)

        if sync_mode(self.mode):
            try:
                connected(launch())
            except BackendError as e:
                self.report({"ERROR"}, str(e))
                return {"CANCELLED"}
            self.report({"INFO"}, f"Gen3D backend running at {prefs.backend_url}")
            return {"FINISHED"}

        def worker():
            try:
                url = launch()
                manager.queue.put(("call", None, lambda: connected(url)))
            except BackendError as e:
                status, message = manager.status, str(e)
                manager.queue.put(("call", None, lambda: setattr(status, "error", message)))

        manager.status.error = "starting the backend..."
        threading.Thread(target=worker, name="gen3d-launch", daemon=True).start()
        return {"FINISHED"}


class GEN3D_OT_stop_backend(bpy.types.Operator):
    bl_idname = "gen3d.stop_backend"
    bl_label = "Stop Backend"
    bl_description = "Stop the backend that Gen3D started"

    def execute(self, context):
        if backend_process().stop(include_recorded=True):
            manager.status.online = False
            manager.status.error = "stopped"
            self.report({"INFO"}, "Gen3D backend stopped")
        else:
            self.report({"WARNING"}, "no backend started by Gen3D is running")
        return {"FINISHED"}


class GEN3D_OT_show_log(bpy.types.Operator):
    bl_idname = "gen3d.show_log"
    bl_label = "Show Log"
    bl_description = f"Copy the backend's log into the text block '{LOG_TEXT}' (open it in a Text Editor)"

    def execute(self, context):
        text = bpy.data.texts.get(LOG_TEXT) or bpy.data.texts.new(LOG_TEXT)
        text.from_string(backend_process().log_tail(200_000) or "(the backend log is empty)")
        for area in getattr(context.screen, "areas", ()):
            if area.type == "TEXT_EDITOR":
                area.spaces.active.text = text
                break
        else:
            self.report({"INFO"}, f"backend log is in the text block '{LOG_TEXT}'")
        return {"FINISHED"}


class GEN3D_OT_unload(bpy.types.Operator):
    bl_idname = "gen3d.unload"
    bl_label = "Free Memory"
    bl_description = "Ask the backend to unload its models (frees GPU memory)"

    def execute(self, context):
        try:
            client_for(context).unload()
        except BackendError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class GEN3D_OT_copy_command(bpy.types.Operator):
    bl_idname = "gen3d.copy_command"
    bl_label = "Copy Command"
    bl_description = "Copy the command that downloads the missing weights"
    bl_options = {"INTERNAL"}

    command: StringProperty()

    def execute(self, context):
        context.window_manager.clipboard = self.command
        self.report({"INFO"}, f"copied: {self.command}")
        return {"FINISHED"}


# -- jobs ---------------------------------------------------------------------------------------------------------


class _JobOperator:
    """Shared by the operators that submit a job: preparation, submission, sync/async/modal follow-up."""

    mode: MODE_PROP
    options_json: StringProperty(name="Options", options={"HIDDEN", "SKIP_SAVE"}, default="",
                                 description="JSON object of option overrides on top of the panel's")

    _rec: JobRecord | None = None
    _timer = None
    _out_dir = ""

    def find_method(self, context, kind: str, preferred: str = "") -> dict:
        """The backend's method of ``kind`` (``preferred`` first), refreshing the status when needed."""
        status = manager.status
        client = client_for(context)
        if not status.online or status.url != client.base or sync_mode(self.mode):
            manager.refresh_status(client, sync=True)
            status = manager.status
            if not status.online:
                raise BackendError("unreachable", status.error or f"the backend at {client.base} does not answer")
        cands = [m for m in status.methods if method_kind(m) == kind]
        method = next((m for m in cands if m["name"] == preferred), cands[0] if cands else None)
        if method is None:
            raise BackendError("no_method", f"the backend has no {kind} method (it offers: "
                               f"{', '.join(m['name'] for m in status.methods) or 'none'})")
        ready, reason, command = method_weights(method)
        if not ready:
            raise BackendError("missing_weights", f"method {method['name']!r}: {reason}",
                               {"command": command} if command else {})
        return method

    def request(self, context, method: dict, prefix: str = "") -> dict:
        """The JSON part of the job: the panel's seed, preset, changed options (plus ``options_json``) and, for
        methods that take one, the prompt of the section (``prefix``: "" Generate, "texture_" Refine Texture)."""
        settings, name = context.scene.gen3d, method["name"]
        options = option_overrides(settings, name)
        if self.options_json:
            options.update(json.loads(self.options_json))
        req = {"method": name, "seed": settings.seed, "preset": settings.preset, "options": options}
        if "prompt" in method_inputs(method):
            for key in ("prompt", "negative_prompt"):
                if getattr(settings, prefix + key):
                    req[key] = getattr(settings, prefix + key)
        return req

    def new_out_dir(self, context, kind: str) -> str:
        path = os.path.join(output_dir(get_prefs(context)), f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-"
                                                            f"{uuid.uuid4().hex[:6]}")
        os.makedirs(os.path.join(path, "inputs"), exist_ok=True)
        self._out_dir = path
        return path

    def launch(self, context, **record) -> set[str]:
        """Create the job record and follow it (synchronously or on a worker thread)."""
        prefs = get_prefs(context)
        client = client_for(context)
        rec = manager.new(cursor=tuple(context.scene.cursor.location), backend_version=manager.status.version,
                          **record)
        self._rec = rec
        if not sync_mode(self.mode):
            manager.start(rec, client)
            self.report({"INFO"}, f"Gen3D: {rec.method} job started")
            return {"FINISHED"}
        manager.run_sync(rec, client, prefs.job_timeout)
        if rec.state == "failed":
            self.report({"ERROR"}, f"Gen3D {rec.method}: {rec.error}" + (
                f" (run: {rec.error_hint})" if rec.error_hint else ""))
            return {"CANCELLED"}
        if rec.state == "cancelled":
            self.report({"WARNING"}, f"Gen3D {rec.method}: cancelled")
            return {"CANCELLED"}
        if rec.state not in TERMINAL_STATES:
            self.report({"ERROR"}, f"Gen3D {rec.method}: the job ended in state {rec.state!r}")
            return {"CANCELLED"}
        try:
            bpy.ops.ed.undo_push(message=f"Gen3D: import {rec.method} result")
        except RuntimeError:
            pass  # no undo stack (bpy as a module)
        self.report({"INFO"}, f"Gen3D {rec.method}: imported {', '.join(rec.objects)}")
        return {"FINISHED"}

    def run(self, context, prepare) -> set[str]:
        """``prepare(context) -> record kwargs``; readable errors instead of tracebacks, and no result folder left
        behind by a job that did not start."""
        self._out_dir = ""
        try:
            return self.launch(context, **prepare(context))
        except BackendError as e:
            self.report({"ERROR"}, f"Gen3D: {e}")
        except (ValueError, OSError, RuntimeError) as e:
            self.report({"ERROR"}, f"Gen3D: {e}")
        discard_unused(self._out_dir)
        return {"CANCELLED"}

    # -- UI: a modal that watches the job so ESC cancels it on the server ---------------------------------------

    def invoke(self, context, event):
        result = self.execute(context)
        if "FINISHED" not in result or self._rec is None or not self._rec.active or sync_mode(self.mode):
            return result
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        rec = self._rec
        if rec is None or rec.key not in manager.records or not rec.active:
            context.window_manager.event_timer_remove(self._timer)
            return {"FINISHED"}
        if event.type == "ESC" and event.value == "PRESS":
            manager.cancel(rec)
            self.report({"WARNING"}, f"Gen3D: cancelling {rec.method} job")
        return {"PASS_THROUGH"}


def _reference_image(context, folder: str, method: dict, prefix: str = "") -> dict[str, str]:
    """The section's reference image as ``{"image": path}`` (a datablock is saved as PNG), or ``{}`` when there
    is none or the method takes no image."""
    s = context.scene.gen3d
    if "image" not in method_inputs(method):
        return {}
    source, path, image = (getattr(s, prefix + k) for k in ("image_source", "image_path", "image"))
    if source == "FILE" and path:
        path = bpy.path.abspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"the reference image {path} does not exist")
        return {"image": path}
    if source == "IMAGE" and image is not None:
        return {"image": scene_io.save_image_png(image, os.path.join(folder, "reference.png"))}
    return {}


def _image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file, read by Blender (the datablock is removed again)."""
    img = bpy.data.images.load(path, check_existing=False)
    try:
        return tuple(img.size)
    finally:
        bpy.data.images.remove(img)


def _with_camera(scene, method: dict, request: dict, image: str = "") -> dict:
    """Adds the 3D ``cursor`` and, when the panel says "Through Active Camera", that camera with role ``reference``
    (its intrinsics fitted to the reference ``image``'s size: the backend places the object as the camera sees the
    image); a method with an ``elevation`` option not set in the request gets the camera's pitch (positive = looking
    down)."""
    request["cursor"] = list(scene.cursor.location)
    if scene.gen3d.placement != "CAMERA":
        return request
    cam = scene.camera
    if cam is None or cam.type != "CAMERA" or cam.data.type != "PERSP":
        raise ValueError("placing through the active camera needs a perspective scene camera (or choose 3D Cursor)")
    size = _image_size(image) if image else None
    request["cameras"] = [{**scene_io.camera_to_wire(cam, scene, size), "role": "reference"}]
    if "elevation" in (method_schema(method).get("properties") or {}):
        forward = cam.matrix_world.to_3x3() @ Vector((0.0, 0.0, -1.0))
        pitch = math.degrees(math.asin(max(-1.0, min(1.0, -forward.normalized().z))))
        request.setdefault("options", {}).setdefault("elevation", round(max(-80.0, min(80.0, pitch)), 3))
    return request


class GEN3D_OT_generate(_JobOperator, bpy.types.Operator):
    bl_idname = "gen3d.generate"
    bl_label = "Generate"
    bl_description = ("Generate a textured mesh from the method's inputs; it lands at the 3D cursor at the chosen "
                      "size, or where the active camera sees the reference image")

    @classmethod
    def poll(cls, context):
        m = manager.status.method(context.scene.gen3d.method)
        if m is None:
            cls.poll_message_set("choose a method (refresh the backend status first)")
            return False
        ready, reason, _ = method_weights(m)
        if not ready:
            cls.poll_message_set(reason)
        return ready

    def execute(self, context):
        def prepare(context):
            s = context.scene.gen3d
            method = self.find_method(context, "generate", s.method)
            out = self.new_out_dir(context, "generate")
            files = _reference_image(context, os.path.join(out, "inputs"), method)
            inputs = set(method.get("required_inputs") or ())
            if "image" in inputs and "image" not in files:
                raise ValueError(f"method {method['name']!r} needs a reference image")
            if "prompt" in inputs and not s.prompt:
                raise ValueError(f"method {method['name']!r} needs a prompt")
            request = _with_camera(context.scene, method, self.request(context, method), files.get("image", ""))
            size = s.result_size if s.placement == "CURSOR" else 0.0
            return dict(kind="generate", method=method["name"], request=request, files=files, out_dir=out,
                        placement="cursor", size=size)

        return self.run(context, prepare)


class GEN3D_OT_reconstruct(_JobOperator, bpy.types.Operator):
    bl_idname = "gen3d.reconstruct"
    bl_label = "Reconstruct from Cameras"
    bl_description = ("Reconstruct a textured mesh from the selected cameras (all cameras when none is selected): "
                      "renders of the scene or the cameras' own images; the result lands in place")

    @classmethod
    def poll(cls, context):
        if context.scene is None or not any(o.type == "CAMERA" for o in context.scene.objects):
            cls.poll_message_set("the scene has no cameras")
            return False
        return True

    def execute(self, context):
        def prepare(context):
            scene, s = context.scene, context.scene.gen3d
            method = self.find_method(context, "reconstruct", "reconstruct")
            cams = [o for o in context.selected_objects if o.type == "CAMERA"] or sorted(
                (o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
            if len(cams) < 2:
                raise ValueError(f"reconstruction needs at least 2 cameras, found {len(cams)}")
            out = self.new_out_dir(context, "reconstruct")
            folder = os.path.join(out, "inputs", "views")
            if s.views_source == "RENDER":
                paths = views.render_views(scene, cams, folder)
            else:
                paths = views.camera_images(cams, folder)
            wires = [scene_io.camera_to_wire(c, scene) for c in cams]
            zip_path = views.write_views_zip(folder, wires, paths, os.path.join(out, "inputs", "views.zip"))
            return dict(kind="reconstruct", method=method["name"], request=self.request(context, method),
                        files={"views": zip_path}, out_dir=out, placement="in_place")

        return self.run(context, prepare)


class GEN3D_OT_refine_texture(_JobOperator, bpy.types.Operator):
    bl_idname = "gen3d.refine_texture"
    bl_label = "Refine Texture"
    bl_description = ("Send the selected mesh (modifiers applied, world space) with the prompt or reference image "
                      "and import the re-textured mesh in place")

    @classmethod
    def poll(cls, context):
        if not any(method_kind(m) == "texture" for m in manager.status.methods):
            cls.poll_message_set("the backend has no texture method (needs the 'texture' method)")
            return False
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            cls.poll_message_set("select a mesh")
            return False
        return True

    def execute(self, context):
        def prepare(context):
            s, obj = context.scene.gen3d, context.active_object
            if obj is None or obj.type != "MESH":
                raise ValueError("select a mesh object to refine")
            method = self.find_method(context, "texture", s.texture_method)
            out = self.new_out_dir(context, "refine")
            mesh_path = os.path.join(out, "inputs", "mesh.glb")
            scene_io.export_evaluated_mesh_glb(obj, context.evaluated_depsgraph_get(), mesh_path)
            files = {"mesh": mesh_path, **_reference_image(context, os.path.join(out, "inputs"), method, "texture_")}
            request = self.request(context, method, "texture_")
            if "image" in files:  # taken through the active camera: its intrinsics fitted to the image's size
                cam = context.scene.camera
                if cam is None or cam.type != "CAMERA":
                    raise ValueError("a reference image needs the camera it was taken from: set an active camera")
                request["cameras"] = [{**scene_io.camera_to_wire(cam, context.scene, _image_size(files["image"])),
                                       "role": "reference"}]
            return dict(kind="refine", method=method["name"], request=request,
                        files=files, out_dir=out, placement="in_place", source_object=obj.name,
                        hide_source=s.hide_source)

        return self.run(context, prepare)


def _backend_cli(prefs) -> list[str]:
    """The backend's command line (``... -m gen3d``) from the launch preferences; raises BackendError if unset."""
    return backend_argv(prefs.python_path if prefs.launch_mode == "PYTHON" else "",
                        prefs.launch_command if prefs.launch_mode == "COMMAND" else "")


class GEN3D_OT_download_weights(bpy.types.Operator):
    bl_idname = "gen3d.download_weights"
    bl_label = "Download Weights"
    bl_description = ("Download a method's missing checkpoint with the backend's Python ('weights download'), into "
                      "the weights folder of the preferences; its licence is shown first")
    bl_options = {"INTERNAL"}

    name: StringProperty()
    license: StringProperty(options={"SKIP_SAVE"})
    restrictive: BoolProperty(options={"SKIP_SAVE"})
    accept: BoolProperty(name="I accept this licence", default=False, options={"SKIP_SAVE"})
    mode: MODE_PROP

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=420)

    def draw(self, context):
        col = self.layout.column()
        col.label(text=f"{self.name}: licence", icon="INFO")
        for line in wrap_text(self.license or "unknown", 60):
            col.label(text=line)
        if self.restrictive:
            col.prop(self, "accept")

    def execute(self, context):
        if self.restrictive and not self.accept:
            self.report({"ERROR"}, f"{self.name}: accept its licence to download it")
            return {"CANCELLED"}
        prefs = get_prefs(context)
        try:
            argv = _backend_cli(prefs) + ["weights", "download", self.name]
        except BackendError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        argv += ["--accept-license"] if self.restrictive else []
        if prefs.weights_dir:
            argv += ["--dir", os.path.join(bpy.path.abspath(prefs.weights_dir), self.name)]
        client, sync = client_for(context), sync_mode(self.mode)  # (the operator is gone when the task ends)
        log_path = os.path.join(user_dir("downloads"), f"{self.name}.log")
        # when it ends, the backend's method list says whether the method is ready now
        task = tasks.start(f"download {self.name}", argv, log_path,
                           on_done=lambda task: manager.refresh_status(client, sync=sync))
        if sync:
            tasks.wait(task)
            if task.state != "succeeded":
                self.report({"ERROR"}, f"Gen3D: {task.error}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"Gen3D: {self.name} downloaded")
            return {"FINISHED"}
        self.report({"INFO"}, f"Gen3D: downloading {self.name} (progress in the Jobs panel)")
        return {"FINISHED"}


def wrap_text(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line] if line else lines


class GEN3D_OT_render_dataset(bpy.types.Operator):
    bl_idname = "gen3d.render_dataset"
    bl_label = "Render Edge-Map Dataset"
    bl_description = ("Render the selected meshes (or the active collection's) into a geometry-controlled dataset: "
                      "RGBA, Canny edges, depth, normals, masks and 3D annotations per view (the backend's "
                      "'dataset render', run with its Python)")

    # the options of 'python -m gen3d dataset render' (see its --help)
    views_per_model: IntProperty(name="Views per Model", default=8, min=1, max=1000)
    size: IntProperty(name="Resolution", default=512, min=32, max=4096, description="Square image side in pixels")
    engine: EnumProperty(name="Engine", default="CYCLES", items=[
        ("CYCLES", "Cycles", "Cycles on the CPU (what 3D-DST uses)"), ("WORKBENCH", "Workbench", "fast")])
    samples: IntProperty(name="Samples", default=32, min=1, max=4096, description="Cycles samples")
    pose_mode: EnumProperty(name="Poses", default="1", items=[
        ("1", "All Around", "Azimuth 0-360, elevation ~ N(0, 30) degrees"),
        ("2", "Front", "Azimuth -195-15, elevation ~ N(0, 30)"),
        ("3", "All Around, Above", "Azimuth 0-360, elevation ~ N(30, 20)"),
        ("4", "Front, Above", "Azimuth -195-15, elevation ~ N(30, 20)"),
        ("5", "Uniform Sphere", "Uniform on the sphere")], description="3D-DST's pose sampling mode")
    distance: FloatProperty(name="Distance", default=2.5, min=0.5, max=50.0,
                            description="Camera distance in units of the object's longest side")
    random_distance: BoolProperty(name="Random Distance", default=False,
                                  description="Draw each distance from N(d, 0.5) within [d - 0.5, d + 1.5]")
    roll_sd: FloatProperty(name="Roll SD", default=0.0, min=0.0, max=90.0,
                           description="In-plane rotation standard deviation in degrees (0: none)")
    geometry_passes: BoolProperty(name="Depth and Normals", default=True, description="Also write depth and normals")
    seed: IntProperty(name="Seed", default=0, min=0)
    mode: MODE_PROP

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    @staticmethod
    def _objects(context):
        objs = [o for o in context.selected_objects if o.type == "MESH"]
        if not objs and context.collection is not None:
            objs = [o for o in context.collection.all_objects if o.type == "MESH"]
        return objs

    @classmethod
    def poll(cls, context):
        try:
            _backend_cli(get_prefs(context))
        except BackendError as e:
            cls.poll_message_set(e.message)
            return False
        if not cls._objects(context):
            cls.poll_message_set("select mesh objects (or make a collection with meshes active)")
            return False
        return True

    def execute(self, context):
        out = os.path.join(output_dir(get_prefs(context)), f"{time.strftime('%Y%m%d-%H%M%S')}-dataset")
        models = os.path.join(out, "models", bpy.path.clean_name(context.collection.name if context.collection
                                                                   else "objects"))
        depsgraph = context.evaluated_depsgraph_get()
        for obj in self._objects(context):
            scene_io.export_evaluated_mesh_glb(obj, depsgraph, os.path.join(models, bpy.path.clean_name(obj.name)
                                                                            + ".glb"))
        argv = _backend_cli(get_prefs(context)) + [
            "dataset", "render", "--models", os.path.dirname(models), "--out", os.path.join(out, "data"),
            "--views-per-model", str(self.views_per_model), "--size", str(self.size), "--engine", self.engine,
            "--samples", str(self.samples), "--pose-mode", self.pose_mode, "--distance", str(self.distance),
            "--roll-sd", str(self.roll_sd), "--seed", str(self.seed)]
        argv += ["--random-distance"] if self.random_distance else []
        argv += [] if self.geometry_passes else ["--no-geometry-passes"]
        task = tasks.start("dataset render", argv, os.path.join(out, "dataset.log"))
        if not sync_mode(self.mode):
            self.report({"INFO"}, f"rendering the dataset into {out} (progress in the Jobs panel)")
            return {"FINISHED"}
        tasks.wait(task)
        if task.state != "succeeded":
            self.report({"ERROR"}, f"dataset rendering failed: {task.error} (log: {task.log_path})")
            return {"CANCELLED"}
        self.report({"INFO"}, task.line)
        return {"FINISHED"}


class GEN3D_OT_cancel(bpy.types.Operator):
    bl_idname = "gen3d.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the job on the backend (0: every running job)"

    key: IntProperty(default=0, options={"SKIP_SAVE"})
    mode: MODE_PROP

    def execute(self, context):
        recs = [manager.records[self.key]] if self.key in manager.records else (
            [r for r in manager.records.values() if r.active] if self.key == 0 else [])
        if not recs:
            self.report({"WARNING"}, "no such running job")
            return {"CANCELLED"}
        for rec in recs:
            manager.cancel(rec, sync=sync_mode(self.mode))
        return {"FINISHED"}


class GEN3D_OT_cancel_task(bpy.types.Operator):
    bl_idname = "gen3d.cancel_task"
    bl_label = "Cancel Task"
    bl_description = "Stop the backend command (a weights download resumes where it stopped next time)"
    bl_options = {"INTERNAL"}

    key: IntProperty()

    def execute(self, context):
        task = tasks.tasks.get(self.key)
        if task is None or not task.active:
            return {"CANCELLED"}
        tasks.cancel(task)
        return {"FINISHED"}


class GEN3D_OT_remove_task(bpy.types.Operator):
    bl_idname = "gen3d.remove_task"
    bl_label = "Remove Task"
    bl_description = "Remove the finished task from the list (its log file stays)"
    bl_options = {"INTERNAL"}

    key: IntProperty()

    def execute(self, context):
        task = tasks.tasks.get(self.key)
        if task is None or task.active:
            return {"CANCELLED"}
        tasks.remove(task)
        return {"FINISHED"}


class GEN3D_OT_resume_job(bpy.types.Operator):
    bl_idname = "gen3d.resume_job"
    bl_label = "Resume"
    bl_description = "Continue the failed or cancelled job on the backend from its last finished stage"
    bl_options = {"INTERNAL"}

    key: IntProperty()

    def execute(self, context):
        rec = manager.records.get(self.key)
        if rec is None or not rec.resumable or not rec.job_id:
            self.report({"WARNING"}, "only a failed or cancelled job with stage checkpoints can resume")
            return {"CANCELLED"}
        ensure_out_dir(context, rec)
        manager.resume(rec, client_for(context))
        return {"FINISHED"}


class GEN3D_OT_remove_job(bpy.types.Operator):
    bl_idname = "gen3d.remove_job"
    bl_label = "Remove Job"
    bl_description = "Remove the job from the list (and delete it and its files on the backend)"
    bl_options = {"INTERNAL"}

    key: IntProperty()
    delete_remote: BoolProperty(default=True)

    def execute(self, context):
        rec = manager.records.get(self.key)
        if rec is None:
            return {"CANCELLED"}
        if rec.active:
            self.report({"WARNING"}, "cancel the job first")
            return {"CANCELLED"}
        if self.delete_remote and rec.job_id:
            try:
                client_for(context).delete(rec.job_id)
            except BackendError as e:
                self.report({"WARNING"}, f"could not delete the job on the backend: {e}")
        manager.remove(rec)
        return {"FINISHED"}


class GEN3D_OT_fetch_job(bpy.types.Operator):
    bl_idname = "gen3d.fetch_job"
    bl_label = "Import Result"
    bl_description = "Download a finished job's result (and its preview) from the backend and import it"
    bl_options = {"INTERNAL"}

    key: IntProperty()
    preview_only: BoolProperty(default=False, options={"SKIP_SAVE"},
                               description="Only download and show the preview")

    def execute(self, context):
        rec = manager.records.get(self.key)
        if rec is None or rec.state != "succeeded" or not rec.job_id:
            self.report({"ERROR"}, "only a finished, succeeded job has a result")
            return {"CANCELLED"}
        client = client_for(context)
        ensure_out_dir(context, rec)
        only_views = views_only(rec.artifacts)  # nothing to import: its views are what it made
        try:
            job = client.job(rec.job_id)
            if self.preview_only or only_views:
                image = "views.png" if only_views else "preview.png"
                path = client.download(rec.job_id, image, os.path.join(rec.out_dir, image))
            else:
                rec.result_path, path = download_result(client, job, rec.out_dir, rec.kind)
        except BackendError as e:
            self.report({"ERROR"}, f"Gen3D: {e}")
            return {"CANCELLED"}
        if path:
            rec.preview_image = jobs_load_preview(path, rec.preview_image or f"Gen3D preview {rec.key}")
            rec.preview_path = path
        if not (self.preview_only or only_views):
            bpy.ops.gen3d.import_result(key=rec.key)
        return {"FINISHED"}


def result_name(rec: JobRecord) -> str:
    """``"Suzanne (refined)"``, ``"Gen3D reconstruct"``, ``"Gen3D a red chair"``."""
    if rec.kind == "refine" and rec.source_object:
        return f"{rec.source_object} (refined)"
    prompt = (rec.request.get("prompt") or "").strip() if rec.kind == "generate" else ""
    return f"Gen3D {prompt[:40] if prompt else rec.method}"


class GEN3D_OT_import_result(bpy.types.Operator):
    """Import a finished job's GLB: one undo step."""

    bl_idname = "gen3d.import_result"
    bl_label = "Import Gen3D Result"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    key: IntProperty()

    def execute(self, context):
        rec = manager.records.get(self.key)
        if rec is None or not rec.result_path:
            self.report({"ERROR"}, "no downloaded result for this job")
            return {"CANCELLED"}
        provenance = {"gen3d_job_id": rec.job_id, "gen3d_method": rec.method,
                      "gen3d_prompt": rec.request.get("prompt") or "", "gen3d_seed": int(rec.request.get("seed", 0)),
                      "gen3d_backend_version": rec.backend_version, "gen3d_kind": rec.kind}
        placed = os.path.join(os.path.dirname(rec.result_path), "placement.json")
        matrix = None
        if rec.kind == "generate" and os.path.isfile(placed):
            with open(placed, encoding="utf-8") as f:
                placement = json.load(f)
            matrix, camera = placement["matrix"], placement.get("camera") or {}
            provenance.update(gen3d_placement=placement.get("mode", ""), gen3d_camera=camera.get("name") or "",
                              gen3d_camera_json=json.dumps(camera))
        folder = os.path.dirname(rec.result_path)
        source = bpy.data.objects.get(rec.source_object) if rec.kind == "refine" else None
        if source is not None and reimport.same_mesh_result(folder):
            reimport.apply_texture(source, os.path.join(folder, "texture.png"), provenance)
            rec.objects = [source.name]
            return {"FINISHED"}
        try:
            objs = reimport.import_glb(context, rec.result_path, name=result_name(rec), placement=rec.placement,
                                       cursor=rec.cursor, provenance=provenance,
                                       hide=rec.source_object if rec.hide_source else "", matrix=matrix)
            if rec.size > 0:
                reimport.scale_to_size(objs, rec.size, rec.cursor)
        except (RuntimeError, OSError) as e:
            rec.state, rec.error, rec.error_code = "failed", f"import failed: {e}", "import_failed"
            self.report({"ERROR"}, rec.error)
            return {"CANCELLED"}
        rec.objects = [o.name for o in objs]
        return {"FINISHED"}


CLASSES = (GEN3D_OT_refresh, GEN3D_OT_launch_backend, GEN3D_OT_stop_backend, GEN3D_OT_show_log, GEN3D_OT_unload,
           GEN3D_OT_copy_command, GEN3D_OT_generate, GEN3D_OT_reconstruct, GEN3D_OT_refine_texture,
           GEN3D_OT_download_weights, GEN3D_OT_render_dataset, GEN3D_OT_cancel, GEN3D_OT_remove_job, GEN3D_OT_fetch_job,
           GEN3D_OT_import_result, GEN3D_OT_cancel_task, GEN3D_OT_remove_task, GEN3D_OT_resume_job)


def register() -> None:
    manager.importer = import_record


def unregister() -> None:
    manager.importer = None
    tasks.clear()
    if _process:
        _process[0].close()
        _process.clear()
