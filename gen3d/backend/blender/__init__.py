"""Headless rendering with bpy (Blender as a Python module): datasets and turntables.

The only package of the backend that imports bpy, and only inside functions, so importing it is cheap.
``poses`` and ``annotations`` are plain numpy and run without bpy.
"""

import sys


def import_bpy():
    """Import Blender's module in a process that may have been spawned by one that already had it.

    Importing bpy appends Blender's script folders to ``sys.path``, and spawned children inherit the parent's path;
    one of those folders holds Blender's pure-Python ``bpy`` package, which would shadow the real module there
    ("No module named '_bpy'"). Those entries are dropped before the first import in this process.
    """
    if "bpy" not in sys.modules:
        sys.path[:] = [p for p in sys.path if not _blender_scripts(p)]
    import bpy

    return bpy


def _blender_scripts(path: str) -> bool:
    p = path.replace("\\", "/").lower() + "/"
    return "/scripts/" in p and ("/bpy/" in p or "blender" in p)
