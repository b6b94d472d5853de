"""Gen3D for Blender: text, image and multi-view to textured meshes through a local Gen3D backend.

The add-on is a thin client (standard library + bpy): the backend, in its own Python environment, does the work.
``unregister`` removes every class, property, timer and process this add-on added.
"""

from __future__ import annotations

import bpy

from . import jobs, operators, panel, preferences, properties

_CLASSES = (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *panel.CLASSES)


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


def unregister() -> None:
    jobs.unregister()
    jobs.manager.on_status = None
    operators.unregister()
    properties.unregister()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
