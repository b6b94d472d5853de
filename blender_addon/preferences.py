"""Add-on preferences: where the backend is, how to launch it, timeouts, and where files go."""

from __future__ import annotations

import os
import tempfile

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .client import Client

ADDON_ID = __package__


class Gen3DPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_url: StringProperty(
        name="Backend URL", default="127.0.0.1:8765",
        description="Address of the Gen3D backend, with or without http:// (e.g. 127.0.0.1:8765)")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="Access token, when the backend was started with --token")
    timeout: FloatProperty(name="Request Timeout", default=10.0, min=0.5, max=600.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for an ordinary API answer")
    transfer_timeout: FloatProperty(name="Transfer Timeout", default=300.0, min=5.0, max=7200.0,
                                    unit="TIME_ABSOLUTE", description="Seconds allowed for an upload or a download")
    job_timeout: FloatProperty(name="Job Timeout", default=3600.0, min=10.0, max=86400.0, unit="TIME_ABSOLUTE",
                               description="Give up following a job after this many seconds (background mode)")
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", default="",
                               description="Where downloaded results go (empty: the add-on's user folder)")

    launch_mode: EnumProperty(
        name="Launch", default="PYTHON",
        items=[("PYTHON", "Python", "Run 'PYTHON -m gen3d serve' with the backend's own Python (its venv)"),
               ("COMMAND", "Command", "Run a command (e.g. 'gen3d' or 'uv run python -m gen3d') plus 'serve ...'")])
    python_path: StringProperty(name="Backend Python", subtype="FILE_PATH", default="",
                                description="Python executable of the environment where Gen3D's backend is installed")
    launch_command: StringProperty(
        name="Launch Command", default="",
        description="Command that runs the backend CLI; 'serve --host ... --port ...' is appended")
    working_dir: StringProperty(name="Working Folder", subtype="DIR_PATH", default="",
                                description="Folder to start the backend in (the Gen3D checkout when not installed)")
    data_dir: StringProperty(name="Data Folder", subtype="DIR_PATH", default="",
                             description="The backend's job store (empty: the add-on's user folder)")
    weights_dir: StringProperty(name="Weights Folder", subtype="DIR_PATH", default="",
                                description="Where a launched backend finds and downloads pretrained weights (one "
                                            "folder per checkpoint; empty: the Hugging Face cache)")
    port: IntProperty(name="Port", default=8765, min=1024, max=65535,
                      description="Preferred port; a free one is picked when it is taken")
    stop_on_exit: BoolProperty(name="Stop at Exit", default=True,
                               description="Stop a backend that Gen3D started when Blender quits")

    def draw(self, context):
        layout = self.layout
        col = layout.column(heading="Connection")
        col.prop(self, "backend_url")
        col.prop(self, "token")
        row = col.row(align=True)
        row.prop(self, "timeout")
        row.prop(self, "transfer_timeout")
        col.prop(self, "job_timeout")
        col.prop(self, "output_dir")
        box = layout.box()
        box.label(text="Launching a local backend", icon="CONSOLE")
        box.prop(self, "launch_mode", expand=True)
        box.prop(self, "python_path" if self.launch_mode == "PYTHON" else "launch_command")
        box.prop(self, "working_dir")
        box.prop(self, "data_dir")
        box.prop(self, "weights_dir")
        row = box.row()
        row.prop(self, "port")
        row.prop(self, "stop_on_exit")
        row = box.row()
        row.operator("gen3d.launch_backend", icon="PLAY")
        row.operator("gen3d.stop_backend", icon="CANCEL")
        row.operator("gen3d.show_log", icon="TEXT")


def get_prefs(context=None) -> Gen3DPreferences:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    if addon is None:
        raise RuntimeError(f"the add-on {ADDON_ID} is not enabled")
    return addon.preferences


def user_dir(*parts: str) -> str:
    """The add-on's user data folder (kept across upgrades), created on demand.

    ``extension_path_user`` works only for an installed extension; a legacy or script install falls back to
    Blender's user config folder, and that failing, to the temp folder.
    """
    try:
        base = bpy.utils.extension_path_user(ADDON_ID, create=True)
    except (ValueError, AttributeError, RuntimeError):
        base = bpy.utils.user_resource("CONFIG", path="gen3d", create=True) or os.path.join(
            tempfile.gettempdir(), "gen3d")
    path = os.path.join(base, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def output_dir(prefs: Gen3DPreferences) -> str:
    path = bpy.path.abspath(prefs.output_dir) if prefs.output_dir else user_dir("results")
    os.makedirs(path, exist_ok=True)
    return path


def make_client(prefs: Gen3DPreferences, url: str | None = None) -> Client:
    """A client for the configured (or given) backend with the preferences' timeouts."""
    return Client(url or prefs.backend_url, prefs.token or None, timeout=prefs.timeout,
                  transfer_timeout=prefs.transfer_timeout)


CLASSES = (Gen3DPreferences,)
