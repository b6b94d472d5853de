"""Render a mesh with bpy from an OpenCV camera, unlit: run as ``python bpy_render_spot.py spec.json``.

Used by tests/test_mesh_kernel.py as an independent reference (Blender's Workbench rasterizer). The spec holds
``obj`` (Y-up OBJ, imported with Blender's default axes so that world = Blender's Z-up frame), optional ``texture``
(shown flat through an emission material, view transform Standard so texel values come out unchanged), the
camera ``K`` / ``c2w`` (OpenCV, Z-up world), ``width``, ``height`` and ``out`` (RGBA PNG, alpha = coverage).
"""

import json
import sys

import bpy
import numpy as np
from mathutils import Matrix

spec = json.load(open(sys.argv[-1]))
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.obj_import(filepath=spec["obj"], forward_axis="NEGATIVE_Z", up_axis="Y")
obj = [o for o in bpy.context.scene.objects if o.type == "MESH"][0]
if spec.get("texture"):
    mat = bpy.data.materials.new("tex")
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
K = np.array(spec["K"])
cam_data = bpy.data.cameras.new("cam")
cam_data.sensor_fit = "HORIZONTAL"
cam_data.sensor_width = 36.0
cam_data.lens = K[0, 0] * 36.0 / W
cam_data.shift_x = -(K[0, 2] - W / 2) / W
cam_data.shift_y = (K[1, 2] - H / 2) / W
cam_data.clip_start, cam_data.clip_end = 0.01, 100.0
cam = bpy.data.objects.new("cam", cam_data)
scene = bpy.context.scene
scene.collection.objects.link(cam)
cam.matrix_world = Matrix((np.array(spec["c2w"]) @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist())  # OpenCV -> OpenGL
scene.camera = cam

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
r.filepath = spec["out"]
bpy.ops.render.render(write_still=True)
