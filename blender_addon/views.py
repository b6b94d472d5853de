"""Posed views for the ``reconstruct`` method: scene renders or camera images plus nerfstudio ``transforms.json``.

The backend's ``views`` input is a zip of a folder holding ``transforms.json`` (per frame: ``file_path``,
``transform_matrix`` = OpenGL camera-to-world in Blender's world, ``fl_x fl_y cx cy w h``; principal point in
continuous pixel coordinates, a centred one is ``w/2``) and RGBA PNGs under ``images/``.
"""

from __future__ import annotations

import json
import os
import zipfile

import bpy

from . import scene_io

OPENCV_TO_OPENGL = (1.0, -1.0, -1.0, 1.0)  # column signs: c2w_gl = c2w_cv @ diag(1, -1, -1, 1)


def transforms_json(cameras: list[dict], file_paths: list[str]) -> dict:
    """nerfstudio ``transforms.json`` for wire cameras (``K`` pixels, ``c2w`` OpenCV) and their image paths."""
    frames = []
    for cam, path in zip(cameras, file_paths, strict=True):
        K, c2w = cam["K"], cam["c2w"]
        frames.append({
            "file_path": path,
            "transform_matrix": [[float(c2w[r][c]) * OPENCV_TO_OPENGL[c] for c in range(4)] for r in range(4)],
            "fl_x": float(K[0][0]), "fl_y": float(K[1][1]), "cx": float(K[0][2]), "cy": float(K[1][2]),
            "w": int(cam["width"]), "h": int(cam["height"]),
            **({"camera_name": cam["name"]} if cam.get("name") else {}),
        })
    return {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}


def render_views(scene, cameras, folder: str) -> list[str]:
    """Render ``scene`` from each camera object with a transparent film into ``folder/images/NNN.png`` (RGBA).

    Render settings and the active camera are restored afterwards. Returns paths relative to ``folder``.
    """
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    r = scene.render
    saved = (scene.camera, r.film_transparent, r.filepath, r.image_settings.file_format,
             r.image_settings.color_mode, r.image_settings.color_depth, r.use_file_extension)
    try:
        r.film_transparent = True
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGBA"
        r.image_settings.color_depth = "8"
        r.use_file_extension = False
        paths = []
        for i, cam in enumerate(cameras):
            rel = f"images/{i:03d}.png"
            scene.camera = cam
            r.filepath = os.path.join(folder, rel)
            bpy.ops.render.render(write_still=True, scene=scene.name)
            if not os.path.isfile(r.filepath):
                raise RuntimeError(f"rendering camera {cam.name!r} wrote no image")
            paths.append(rel)
        return paths
    finally:
        (scene.camera, r.film_transparent, r.filepath, r.image_settings.file_format, r.image_settings.color_mode,
         r.image_settings.color_depth, r.use_file_extension) = saved


def camera_image(cam_obj) -> bpy.types.Image | None:
    """The image a camera was taken with: its first enabled background image (or ``cam["gen3d_image"]``)."""
    name = cam_obj.get("gen3d_image")
    if isinstance(name, str) and bpy.data.images.get(name) is not None:
        return bpy.data.images[name]
    for bg in cam_obj.data.background_images:
        if bg.show_background_image and bg.source == "IMAGE" and bg.image is not None:
            return bg.image
    return None


def camera_images(cameras, folder: str) -> list[str]:
    """Save each camera's own image (see :func:`camera_image`) as ``folder/images/NNN.png``; relative paths."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    paths = []
    for i, cam in enumerate(cameras):
        img = camera_image(cam)
        if img is None:
            raise ValueError(f"camera {cam.name!r} has no image: give it a background image or render the scene")
        rel = f"images/{i:03d}.png"
        scene_io.save_image_png(img, os.path.join(folder, rel))
        paths.append(rel)
    return paths


def write_views_zip(folder: str, cameras: list[dict], file_paths: list[str], zip_path: str) -> str:
    """Write ``transforms.json`` into ``folder`` and zip the folder (transforms.json at the zip root)."""
    with open(os.path.join(folder, "transforms.json"), "w", encoding="utf-8") as f:
        json.dump(transforms_json(cameras, file_paths), f, indent=1)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(os.path.join(folder, "transforms.json"), "transforms.json")
        for rel in file_paths:
            z.write(os.path.join(folder, rel), rel)
    return zip_path
