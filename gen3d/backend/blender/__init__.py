"""Headless rendering with bpy (Blender as a Python module): datasets and turntables.

The only package of the backend that imports bpy, and only inside functions, so importing it is cheap.
``poses`` and ``annotations`` are plain numpy and run without bpy.
"""

import os
import sys
import tempfile
from contextlib import contextmanager

#: what Blender's C code prints when a headless machine has no display for an OpenGL/EGL context (it then renders
#: WORKBENCH all the same): noise to whoever reads the log
GPU_NOISE = ("EGL Error (0x3009)",)


@contextmanager
def render_output():
    """Around ``bpy.ops.render.render``: Blender's own stderr lines (written to file descriptor 2 by C code) pass
    through, except :data:`GPU_NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in GPU_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()


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
