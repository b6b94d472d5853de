"""Blender <-> wire format: cameras, images and evaluated meshes (standard library and bpy only).

A camera on the wire (the backend's DESIGN.md contract) is ``{"K": 3x3 pixels, "c2w": 4x4 OpenCV camera-to-world
(x right, y down, z forward) in Blender's world, "width", "height"}``, with pixel centres at half-integers: a
centred principal point is ``cx = W/2`` in continuous pixel coordinates (``u`` right from the left edge, ``v``
down from the top edge).

Intrinsics follow Blender's own camera model (BlenderProc's ``get_intrinsics_as_K_matrix`` recipe, shifted by half
a pixel to continuous coordinates): sensor fit AUTO/HORIZONTAL/VERTICAL, shift, pixel aspect and resolution
percentage are honoured.
"""

from __future__ import annotations

import array
import os
import tempfile

import bpy
from mathutils import Matrix

#: camera-to-world with OpenGL axes (Blender's camera: +Y up, looking down -Z) -> OpenCV axes, and back
OPENGL_TO_OPENCV = Matrix(((1, 0, 0, 0), (0, -1, 0, 0), (0, 0, -1, 0), (0, 0, 0, 1)))


def render_size(scene) -> tuple[int, int]:
    """Output image ``(width, height)`` in pixels, resolution percentage applied as Blender does."""
    r = scene.render
    return r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100


def camera_intrinsics(cam_data, scene, size: tuple[int, int] | None = None
                      ) -> tuple[float, float, float, float, int, int]:
    """``(fx, fy, cx, cy, width, height)`` in pixels for a perspective camera datablock rendering ``scene``, or,
    with ``size``, rendering an image of that size with square pixels (what Blender would do at that resolution:
    the same field of view along the sensor-fit axis), so a reference image of another size gets its camera."""
    if cam_data.type != "PERSP":
        raise ValueError(f"camera {cam_data.name!r} is {cam_data.type}; only perspective cameras are supported")
    W, H = render_size(scene) if size is None else (int(size[0]), int(size[1]))
    pax, pay = (scene.render.pixel_aspect_x, scene.render.pixel_aspect_y) if size is None else (1.0, 1.0)
    fit = cam_data.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if pax * W >= pay * H else "VERTICAL"
    # the sensor size used is sensor_height only when the *property* says VERTICAL (AUTO uses sensor_width)
    sensor = cam_data.sensor_height if cam_data.sensor_fit == "VERTICAL" else cam_data.sensor_width
    view = W if fit == "HORIZONTAL" else H * pay / pax
    fx = cam_data.lens / sensor * view
    fy = fx * pax / pay
    cx = W / 2 - cam_data.shift_x * view
    cy = H / 2 + cam_data.shift_y * view * pax / pay
    return fx, fy, cx, cy, W, H


def rigid_matrix_world(obj) -> Matrix:
    """``obj.matrix_world`` without scale (rotation and translation only)."""
    loc, rot, _ = obj.matrix_world.decompose()
    return Matrix.Translation(loc) @ rot.to_matrix().to_4x4()


def _rows(m: Matrix) -> list[list[float]]:
    return [[float(v) for v in row] for row in m]


def camera_to_wire(cam_obj, scene, size: tuple[int, int] | None = None) -> dict:
    """A camera object as a wire camera: ``K``, ``c2w`` (OpenCV), ``width``, ``height``, plus ``c2w_opengl``
    (the scale-free ``matrix_world``), ``convention: "opencv"`` and ``name``; ``size`` fits the intrinsics to an
    image of that size (see :func:`camera_intrinsics`)."""
    if cam_obj.type != "CAMERA":
        raise ValueError(f"{cam_obj.name!r} is not a camera")
    fx, fy, cx, cy, W, H = camera_intrinsics(cam_obj.data, scene, size)
    c2w_gl = rigid_matrix_world(cam_obj)
    return {"K": [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], "c2w": _rows(c2w_gl @ OPENGL_TO_OPENCV),
            "width": W, "height": H, "c2w_opengl": _rows(c2w_gl), "convention": "opencv", "name": cam_obj.name}


def scene_cameras_to_wire(scene, objects=None) -> list[dict]:
    """Wire cameras for the camera objects among ``objects`` (default: the scene's, sorted by name), in order."""
    if objects is None:
        objects = sorted(scene.objects, key=lambda o: o.name)
    return [camera_to_wire(o, scene) for o in objects if o.type == "CAMERA"]


# --- images ------------------------------------------------------------------------------------------------------
def _linear_to_srgb(x: float) -> float:
    if x <= 0.0031308:
        return max(0.0, 12.92 * x)
    return min(1.0, 1.055 * x ** (1 / 2.4) - 0.055)


def save_image_png(image, path: str) -> str:
    """Write an image datablock to ``path`` as an 8-bit sRGB RGBA PNG, atomically; returns ``path``.

    The datablock is left untouched (its file path, format and in-memory pixels, painted or generated ones
    included). Float images hold scene-linear pixels and are converted to sRGB; byte images are written as they
    are. A Render Result is saved as the image editor shows it (with the scene's colour management).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gen3d.", suffix=".png", dir=folder)
    os.close(fd)
    try:
        if image.type in {"RENDER_RESULT", "COMPOSITING"}:
            image.save_render(tmp)
        else:
            _save_pixels_png(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _save_pixels_png(image, path: str) -> None:
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixels (is its file missing?)")
    pixels = array.array("f", bytes(4 * 4 * w * h))
    image.pixels.foreach_get(pixels)
    if image.channels != 4:  # pixels are always RGBA; kept for clarity of the assumption
        raise ValueError(f"image {image.name!r} has {image.channels} channels")
    if image.is_float:
        for i in range(len(pixels)):
            if i % 4 != 3:
                pixels[i] = _linear_to_srgb(pixels[i])
    out = bpy.data.images.new(".gen3d_export", w, h, alpha=True)
    try:
        out.pixels.foreach_set(pixels)
        out.filepath_raw = path
        out.file_format = "PNG"
        out.save()
    finally:
        bpy.data.images.remove(out)


def image_to_png_bytes(image) -> bytes:
    """An image datablock as PNG file bytes (see :func:`save_image_png`)."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_image_png(image, os.path.join(folder, "image.png"))
        with open(path, "rb") as f:
            return f.read()


# --- meshes ------------------------------------------------------------------------------------------------------
def export_evaluated_mesh_glb(obj, depsgraph, path: str) -> str:
    """Write ``obj`` as it is evaluated (modifiers, shape keys) in world space to a GLB (Y up, as glTF says),
    with its UVs and materials (base-colour images included), atomically; returns ``path``.

    A temporary object holding the evaluated mesh is exported alone through Blender's glTF exporter; the user's
    selection, active object and data are restored and left unchanged.
    """
    mesh = bpy.data.meshes.new_from_object(obj.evaluated_get(depsgraph), preserve_all_data_layers=True,
                                           depsgraph=depsgraph)
    mesh.transform(obj.matrix_world)
    if obj.matrix_world.is_negative:  # a mirroring transform turns faces inside out
        mesh.flip_normals()
    for i, slot in enumerate(obj.material_slots):  # object-linked materials too
        if i < len(mesh.materials):
            mesh.materials[i] = slot.material
    tmp_obj = bpy.data.objects.new(obj.name, mesh)
    scene = bpy.context.scene
    view_layer = bpy.context.view_layer
    scene.collection.objects.link(tmp_obj)
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gen3d.", suffix=".glb", dir=folder)
    os.close(fd)
    try:
        for o in selected:
            o.select_set(False)
        tmp_obj.select_set(True)
        view_layer.objects.active = tmp_obj
        bpy.ops.export_scene.gltf(filepath=tmp, export_format="GLB", use_selection=True, export_yup=True,
                                  export_apply=False, export_animations=False, export_cameras=False,
                                  export_lights=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        bpy.data.objects.remove(tmp_obj)
        bpy.data.meshes.remove(mesh)
        for o in selected:
            o.select_set(True)
        view_layer.objects.active = active
    return path
