"""Unlit reference renders with bpy: a Y-up OBJ, optionally textured through an emission material, seen by
OpenCV cameras (``K`` pixels, ``c2w`` in the Z-up world), with Workbench's flat shading.

The independent reference that kernel tests and quality benchmarks compare against. Run it in its own process:
``python -m gen3d.backend.blender.unlit spec.json`` where the spec holds ``obj``, optional ``texture`` (and
``colorspace``, default sRGB), ``K`` and ``c2w`` lists (one entry per camera), ``width``, ``height``, ``out`` (a
folder; views are written as ``NNN.png``, RGBA, alpha = coverage), and optional ``view_transform`` (Standard) and
``aa`` (Workbench anti-aliasing samples, "8").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from . import import_bpy, render_output
from .annotations import FLIP_YZ


def render_unlit(spec: dict) -> list[Path]:
    """Render every camera of ``spec`` (module docstring); returns the written PNG paths."""
    bpy = import_bpy()
    from mathutils import Matrix

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.obj_import(filepath=spec["obj"], forward_axis="NEGATIVE_Z", up_axis="Y")
    obj = [o for o in bpy.context.scene.objects if o.type == "MESH"][0]
    scene = bpy.context.scene
    if spec.get("texture"):
        mat = bpy.data.materials.new("unlit")
        nt = mat.node_tree
        nt.nodes.clear()
        img = nt.nodes.new("ShaderNodeTexImage")
        img.image = bpy.data.images.load(spec["texture"])
        img.interpolation = "Linear"
        img.image.colorspace_settings.name = spec.get("colorspace", "sRGB")
        emit = nt.nodes.new("ShaderNodeEmission")
        out = nt.nodes.new("ShaderNodeOutputMaterial")
        nt.links.new(img.outputs["Color"], emit.inputs["Color"])
        nt.links.new(emit.outputs["Emission"], out.inputs["Surface"])
        nt.nodes.active = img
        obj.data.materials.clear()
        obj.data.materials.append(mat)
    W, H = spec["width"], spec["height"]
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = W, H, 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = spec.get("view_transform", "Standard")
    scene.view_settings.look = "None"
    r.engine = "BLENDER_WORKBENCH"
    scene.display.render_aa = spec.get("aa", "8")
    shading = scene.display.shading
    shading.light = "FLAT"
    shading.color_type = "TEXTURE" if spec.get("texture") else "SINGLE"
    shading.single_color = (1.0, 1.0, 1.0)
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    written = []
    for i, (K, c2w) in enumerate(zip(spec["K"], spec["c2w"])):
        K = np.array(K)  # a horizontal sensor of 36 mm: lens and shift reproduce fx and the principal point
        cam_data.sensor_fit, cam_data.sensor_width = "HORIZONTAL", 36.0
        cam_data.lens = K[0, 0] * 36.0 / W
        cam_data.shift_x = -(K[0, 2] - W / 2) / W
        cam_data.shift_y = (K[1, 2] - H / 2) / W
        cam_data.clip_start, cam_data.clip_end = 0.01, 100.0
        cam.matrix_world = Matrix((np.array(c2w) @ FLIP_YZ).tolist())
        r.filepath = str(Path(spec["out"]) / f"{i:03d}.png")
        with render_output():
            bpy.ops.render.render(write_still=True)
        written.append(Path(r.filepath))
    return written


if __name__ == "__main__":
    render_unlit(json.loads(Path(sys.argv[-1]).read_text()))
