"""Render one model's views, the unit of work of every dataset kind, plus turntable previews.

:func:`render_model` loads and normalises a model, lights it, renders an RGBA image per pose and hands each view
to the dataset kind's settings (a :class:`SceneSettings` subclass), which chooses the poses, writes the passes
and says what goes into the manifest. It takes and returns plain dicts of picklable values, so it runs the same in
a local worker process and in a Ray task. :class:`RenderSettings` is the 3D-DST kind (RGBA, Canny edges, depth,
normals, mask, annotation); ``multiview.MultiviewSettings`` the nerfstudio-folder kind for training.
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
from . import import_bpy, render_output
from . import scene as sc
from .annotations import dst_intrinsics, pose_to_c2w, view_annotation
from .poses import Pose, sample_poses, seed_for

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model loaded and normalised into the scene: ``world = scale * (model + offset)``, its world box
    ``lo``/``hi`` and its world-space triangles (``verts [V,3]``, ``tris [F,3]``) for the ray-cast passes."""

    model_id: str
    category: str
    scale: float
    offset: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    verts: np.ndarray
    tris: np.ndarray


@dataclass
class View:
    """One rendered view: ``rgba [H,W,4] uint8`` (straight alpha, sRGB), ``K [3,3]`` pixels and ``c2w [4,4]``
    OpenCV camera-to-world (the backend's contract), Blender's OpenGL projection ``projection_gl [4,4]``."""

    index: int
    pose: Pose
    K: np.ndarray
    c2w: np.ndarray
    projection_gl: np.ndarray
    rgba: np.ndarray

    @property
    def stem(self) -> str:
        return f"{self.index:03d}"


@dataclass
class SceneSettings:
    """What every dataset kind shares (image size, engine, lens, axes of OBJ/PLY files, seed, threads), and the
    hooks a kind implements: :meth:`poses`, :meth:`write_view`, :meth:`finish` and :meth:`manifest_lines`."""

    size: int = 512
    engine: str = "CYCLES"
    samples: int = 32
    views: int = 8
    lens_mm: float = 35.0
    sensor_mm: float = 32.0
    up_axis: str = "Y"
    seed: int = 0
    threads: int = 0

    def poses(self, seed: int) -> list[Pose]:
        """The poses of one model, drawn with the model's own ``seed``."""
        raise NotImplementedError

    def write_view(self, out: Path, model: LoadedModel, view: View) -> dict[str, str]:
        """Write one view's files under ``out`` (the model's folder); returns ``{pass: path relative to out}``."""
        raise NotImplementedError

    def finish(self, out: Path, model: LoadedModel, views: list[View], files: list[dict[str, str]]) -> None:
        """Write per-model files after the last view (before ``done.json``)."""

    def manifest_lines(self, record: dict, prefix: str) -> list[dict]:
        """``manifest.jsonl`` lines of one finished model (``prefix``: its folder relative to the dataset)."""
        raise NotImplementedError


@dataclass
class RenderSettings(SceneSettings):
    """The 3D-DST kind; defaults follow 3D-DST (512², 35 mm lens, 32 mm sensor, Cycles 32 samples,
    Canny 100/200/3, its pose modes)."""

    pose_mode: int = 1
    distance: float = 2.5
    random_distance: bool = False
    roll_sd: float = 0.0
    canny_low: int = 100
    canny_high: int = 200
    canny_aperture: int = 3
    geometry_passes: bool = True

    def poses(self, seed: int) -> list[Pose]:
        return sample_poses(self.views, mode=self.pose_mode, distance=self.distance,
                            random_distance=self.random_distance, roll_sd=self.roll_sd, seed=seed)

    def write_view(self, out: Path, model: LoadedModel, view: View) -> dict[str, str]:
        stem, rgba = view.stem, view.rgba
        files = {"image": f"image_render/{stem}.png", "edges": f"edges/{stem}.png", "mask": f"mask/{stem}.png"}
        mask = rgba[..., 3] > 127
        save_png(out / files["image"], rgba)
        save_png(out / files["edges"], canny_edges(rgba, self.canny_low, self.canny_high, self.canny_aperture))
        save_png(out / files["mask"], (mask * 255).astype(np.uint8))
        if self.geometry_passes:
            depth, normal, _ = geometry_maps(model.verts, model.tris, view.K, view.c2w, self.size, self.size)
            files["depth"], files["normal"] = f"depth/{stem}.npy", f"normal/{stem}.png"
            save_npy(out / files["depth"], depth)
            save_normal(out / files["normal"], normal)
        ann = view_annotation(K=view.K, c2w=view.c2w, projection_gl=view.projection_gl, pose=view.pose.as_dict(),
                              width=self.size, height=self.size, scale=model.scale, offset=model.offset,
                              bbox_lo=model.lo, bbox_hi=model.hi, mask=mask, model_id=model.model_id,
                              category=model.category, files=files)
        files["annotation"] = f"annotation/{stem}.json"
        write_json(out / files["annotation"], ann)
        return files

    def manifest_lines(self, record: dict, prefix: str) -> list[dict]:
        """One line per view, with every file's path."""
        return [{"model_id": record["model_id"], "class": record["category"], "status": "ok", "view": i,
                 **{k: f"{prefix}/{v}" for k, v in files.items()}} for i, files in enumerate(record["views"])]


def _read_rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def canny_edges(rgba: np.ndarray, low: int = 100, high: int = 200, aperture: int = 3) -> np.ndarray:
    """Canny edge map ``[H,W] uint8`` (0/255) of an RGBA render composited on black, as ControlNet-canny expects."""
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4].astype(np.float32) / 255.0)
    return edges.canny_edges(rgb.round().astype(np.uint8), low, high, aperture)


def geometry_maps(verts: np.ndarray, tris: np.ndarray, K: np.ndarray, c2w: np.ndarray, width: int, height: int):
    """Z-depth ``[H,W] float32`` (inf on background), world normals ``[H,W,3] float32`` (face normals, 0 on
    background) and world hit points ``[H,W,3] float32`` (NaN on background) by casting one ray per pixel centre
    against the scene's triangles (``mathutils.bvhtree``)."""
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
    position = np.full((height, width, 3), np.nan, np.float32)
    for i in range(height):
        for j in range(width):
            loc, n, _, _ = tree.ray_cast(origin, Vector(d_world[i, j]))
            if loc is not None:
                depth[i, j] = float(np.dot(np.array(loc) - c2w[:3, 3], forward))
                normal[i, j] = n
                position[i, j] = loc
    return depth, normal, position


def save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_normal(path: Path, normal: np.ndarray) -> None:
    """World normals ``[H,W,3]`` in [-1,1] as an RGB PNG ``(n + 1) / 2`` (background, n = 0, is mid-grey)."""
    save_png(path, ((normal * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8))


def render_rgba() -> np.ndarray:
    """Render the current scene's camera to ``[H,W,4] uint8``."""
    bpy = import_bpy()
    with tempfile.TemporaryDirectory() as tmp:
        bpy.context.scene.render.filepath = str(Path(tmp) / "render.png")
        with render_output():
            bpy.ops.render.render(write_still=True)
        return _read_rgba(Path(tmp) / "render.png")


def render_model(task: dict) -> dict:
    """Render one model's views into ``task['out']``.

    ``task``: ``model_path``, ``model_id``, ``category``, ``out`` (the model's folder) and ``settings`` (a
    :class:`SceneSettings` subclass instance). Returns ``{"model_id", "category", "status": "ok", "views": [files
    of each view], ...}`` or ``{"status": "failed", "error": ...}``; a model whose ``done.json`` exists is skipped
    (resumable).
    """
    bpy = import_bpy()

    s: SceneSettings = task["settings"]
    out = Path(task["out"])
    done = out / "done.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "skipped": True}
    try:
        sc.reset()
        objects = sc.load_model(Path(task["model_path"]), up_axis=s.up_axis)
        scale, offset, lo, hi = sc.normalise(objects)
        model = LoadedModel(task["model_id"], task["category"], scale, offset, lo, hi, *sc.world_vertices(objects))
        sc.add_lights()
        sc.configure_render(s.size, s.size, s.engine, s.samples, s.threads)
        K = dst_intrinsics(s.size, s.size, s.lens_mm, s.sensor_mm)
        views, files = [], []
        for i, pose in enumerate(s.poses(seed_for(task["model_id"], s.seed))):
            c2w = pose_to_c2w(pose.azimuth, pose.elevation, pose.distance, pose.roll)
            cam = sc.add_camera(c2w, s.lens_mm, s.sensor_mm)
            proj = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=s.size, y=s.size))
            view = View(i, pose, K, c2w, proj, render_rgba())
            files.append(s.write_view(out, model, view))
            views.append(view)
            bpy.data.objects.remove(cam, do_unlink=True)
        s.finish(out, model, views, files)
        record = {"model_id": task["model_id"], "category": task["category"], "status": "ok",
                  "model_path": str(task["model_path"]), "settings": asdict(s), "views": files}
        write_json(done, record)
        return record
    except Exception as e:  # one bad model must not stop the batch
        log.warning("skipping %s: %s", task["model_path"], e)
        return {"model_id": task["model_id"], "category": task["category"], "status": "failed",
                "model_path": str(task["model_path"]), "error": f"{type(e).__name__}: {e}"}


def render_turntable(model_path: Path, out_png: Path, views: int = 8, size: int = 256, elevation: float = 20.0,
                     engine: str = "CYCLES", samples: int = 16) -> Path:
    """A one-row grid of ``views`` renders around any GLB/OBJ/PLY (normalised, Z up), written as PNG."""
    import_bpy()
    sc.reset()
    sc.normalise(sc.load_model(Path(model_path)))
    sc.add_lights()
    sc.configure_render(size, size, engine, samples)
    tiles = []
    for i in range(views):
        sc.add_camera(pose_to_c2w(360.0 * i / views, elevation, 2.2))
        tiles.append(render_rgba())
    save_png(Path(out_png), np.concatenate(tiles, axis=1))
    return Path(out_png)
