"""Render one model's views (RGBA, Canny edges, depth, normals, mask, annotation) and turntable previews.

:func:`render_model` is the unit of work of the dataset renderer: it takes and returns plain dicts, so it runs the
same in a local worker process and in a Ray task.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_path, write_json
from ..geometry import edges
from . import import_bpy
from . import scene as sc
from .annotations import dst_intrinsics, pose_to_c2w, view_annotation
from .poses import sample_poses, seed_for

log = logging.getLogger(__name__)


@dataclass
class RenderSettings:
    """Dataset render settings; defaults follow 3D-DST (512², 35 mm lens, 32 mm sensor, Cycles 32 samples,
    Canny 100/200/3)."""

    size: int = 512
    engine: str = "CYCLES"
    samples: int = 32
    views: int = 8
    pose_mode: int = 1
    distance: float = 2.5
    random_distance: bool = False
    roll_sd: float = 0.0
    lens_mm: float = 35.0
    sensor_mm: float = 32.0
    canny_low: int = 100
    canny_high: int = 200
    canny_aperture: int = 3
    geometry_passes: bool = True
    up_axis: str = "Y"
    seed: int = 0
    threads: int = 0


def _read_rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def canny_edges(rgba: np.ndarray, low: int = 100, high: int = 200, aperture: int = 3) -> np.ndarray:
    """Canny edge map ``[H,W] uint8`` (0/255) of an RGBA render composited on black, as ControlNet-canny expects."""
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4].astype(np.float32) / 255.0)
    return edges.canny_edges(rgb.round().astype(np.uint8), low, high, aperture)


def geometry_maps(verts: np.ndarray, tris: np.ndarray, K: np.ndarray, c2w: np.ndarray, width: int, height: int):
    """Z-depth ``[H,W] float32`` (inf on background) and world normals ``[H,W,3] float32`` by casting one ray per
    pixel centre against the scene's triangles (``mathutils.bvhtree``)."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    tree = BVHTree.FromPolygons(verts.tolist(), tris.tolist())
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    d_world = d_cam @ c2w[:3, :3].T
    d_world /= np.linalg.norm(d_world, axis=-1, keepdims=True)
    origin = Vector(c2w[:3, 3].tolist())
    forward = c2w[:3, 2]
    depth = np.full((height, width), np.inf, np.float32)
    normal = np.zeros((height, width, 3), np.float32)
    for i in range(height):
        for j in range(width):
            loc, n, _, _ = tree.ray_cast(origin, Vector(d_world[i, j]))
            if loc is not None:
                depth[i, j] = float(np.dot(np.array(loc) - c2w[:3, 3], forward))
                normal[i, j] = n
    return depth, normal


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def render_model(task: dict) -> dict:
    """Render ``task['views']`` views of one model into ``task['out']``.

    ``task``: ``model_path``, ``model_id``, ``category``, ``out`` (the model's folder) and ``settings`` (a
    :class:`RenderSettings` as dict). Returns ``{"model_id", "status": "ok", "views": [annotation file, ...]}`` or
    ``{"status": "failed", "error": ...}``; a model whose ``done.json`` exists is skipped (resumable).
    """
    bpy = import_bpy()

    s = RenderSettings(**task["settings"])
    out = Path(task["out"])
    done = out / "done.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "skipped": True}
    try:
        sc.reset()
        objects = sc.load_model(Path(task["model_path"]), up_axis=s.up_axis)
        scale, offset, lo, hi = sc.normalise(objects)
        verts, tris = sc.world_vertices(objects) if s.geometry_passes else (None, None)
        sc.add_lights()
        sc.configure_render(s.size, s.size, s.engine, s.samples, s.threads)
        poses = sample_poses(s.views, mode=s.pose_mode, distance=s.distance, random_distance=s.random_distance,
                             roll_sd=s.roll_sd, seed=seed_for(task["model_id"], s.seed))
        K = dst_intrinsics(s.size, s.size, s.lens_mm, s.sensor_mm)
        views = []
        for i, pose in enumerate(poses):
            c2w = pose_to_c2w(pose.azimuth, pose.elevation, pose.distance, pose.roll)
            cam = sc.add_camera(c2w, s.lens_mm, s.sensor_mm)
            proj = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=s.size, y=s.size))
            stem = f"{i:03d}"
            files = {"image": f"image_render/{stem}.png", "edges": f"edges/{stem}.png", "mask": f"mask/{stem}.png"}
            with tempfile.TemporaryDirectory() as tmp:
                bpy.context.scene.render.filepath = str(Path(tmp) / "render.png")
                bpy.ops.render.render(write_still=True)
                rgba = _read_rgba(Path(tmp) / "render.png")
            mask = rgba[..., 3] > 127
            _save_png(out / files["image"], rgba)
            _save_png(out / files["edges"], canny_edges(rgba, s.canny_low, s.canny_high, s.canny_aperture))
            _save_png(out / files["mask"], (mask * 255).astype(np.uint8))
            if s.geometry_passes:
                depth, normal = geometry_maps(verts, tris, K, c2w, s.size, s.size)
                files["depth"], files["normal"] = f"depth/{stem}.npy", f"normal/{stem}.png"
                with atomic_path(out / files["depth"]) as tmp_path:
                    with open(tmp_path, "wb") as f:
                        np.save(f, depth)
                _save_png(out / files["normal"], ((normal * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8))
            ann = view_annotation(K=K, c2w=c2w, projection_gl=proj, pose=pose.as_dict(), width=s.size,
                                  height=s.size, scale=scale, offset=offset, bbox_lo=lo, bbox_hi=hi, mask=mask,
                                  model_id=task["model_id"], category=task["category"], files=files)
            files["annotation"] = f"annotation/{stem}.json"
            write_json(out / files["annotation"], ann)
            views.append(files)
            bpy.data.objects.remove(cam, do_unlink=True)
        record = {"model_id": task["model_id"], "category": task["category"], "status": "ok",
                  "model_path": str(task["model_path"]), "settings": asdict(s), "views": views}
        write_json(done, record)
        return record
    except Exception as e:  # one bad model must not stop the batch
        log.warning("skipping %s: %s", task["model_path"], e)
        return {"model_id": task["model_id"], "category": task["category"], "status": "failed",
                "model_path": str(task["model_path"]), "error": f"{type(e).__name__}: {e}"}


def render_turntable(model_path: Path, out_png: Path, views: int = 8, size: int = 256, elevation: float = 20.0,
                     engine: str = "CYCLES", samples: int = 16) -> Path:
    """A one-row grid of ``views`` renders around any GLB/OBJ/PLY (normalised, Z up), written as PNG."""
    bpy = import_bpy()

    sc.reset()
    sc.normalise(sc.load_model(Path(model_path)))
    sc.add_lights()
    sc.configure_render(size, size, engine, samples)
    tiles = []
    for i in range(views):
        sc.add_camera(pose_to_c2w(360.0 * i / views, elevation, 2.2))
        with tempfile.TemporaryDirectory() as tmp:
            bpy.context.scene.render.filepath = str(Path(tmp) / "t.png")
            bpy.ops.render.render(write_still=True)
            tiles.append(_read_rgba(Path(tmp) / "t.png"))
    _save_png(Path(out_png), np.concatenate(tiles, axis=1))
    return Path(out_png)
