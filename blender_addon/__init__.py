"""Gen3D for Blender: text, image and multi-view to textured meshes through a local Gen3D backend.

The add-on is a thin client (standard library + bpy): the backend, in its own Python environment, does the work.
``unregister`` removes every class, property, timer and process this add-on added.
"""

from __future__ import annotations

import time

import bpy

from . import jobs, operators, panel, preferences, properties
from .client import BackendError

_CLASSES = (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *panel.CLASSES)
STATUS_EVERY_S = 15.0


def _auto_refresh() -> float:
    """Timer (UI only): keep the panel's backend status fresh while nothing else talks to the backend."""
    status = jobs.manager.status
    if not status.checking and time.time() - status.checked > STATUS_EVERY_S:
        try:
            jobs.manager.refresh_status(operators.client_for(bpy.context))
        except (BackendError, RuntimeError) as e:
            status.error = str(e)
            status.checked = time.time()
    return STATUS_EVERY_S / 3


def _on_status(status) -> None:
    for scene in bpy.data.scenes:
        if hasattr(scene, "gen3d"):
            properties.sync_all(scene)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    operators.register()
    jobs.manager.on_status = _on_status
    jobs.register()
    if not bpy.app.background:
        bpy.app.timers.register(_auto_refresh, first_interval=1.0, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_auto_refresh):
        bpy.app.timers.unregister(_auto_refresh)
    jobs.unregister()
    jobs.manager.on_status = None
    operators.unregister()
    properties.unregister()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
