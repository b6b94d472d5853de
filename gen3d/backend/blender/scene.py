"""Scene set-up with bpy: reset, load and normalise a model, place a camera, configure the render engine.

All functions import bpy lazily; call them in a process that owns its bpy module (one per worker).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .annotations import FLIP_YZ

MODEL_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")


def reset() -> None:
    """An empty factory scene (no cube, light or camera); releases everything a previous model loaded."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)


def find_model_file(path: Path) -> Path:
    """The mesh file of a model: the file itself, or inside a ShapeNet-style folder (``models/model_normalized.obj``)
    or a folder holding exactly one mesh file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "models" / "model_normalized.obj").is_file():
        return path / "models" / "model_normalized.obj"
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES)
    if len(found) != 1:
        raise ValueError(f"{path}: expected one mesh file ({', '.join(MODEL_SUFFIXES)}), found {len(found)}")
    return found[0]


def load_model(path: Path, up_axis: str = "Y") -> list:
    """Import a model into the current scene; returns its mesh objects.

    OBJ and PLY are read with ``up_axis`` (ShapeNet and most OBJ files are Y up) and mapped to Blender's Z up;
    glTF is Y up by specification and Blender's importer converts it.
    """
    import bpy

    path = find_model_file(path)
    before = set(bpy.data.objects)
    suffix = path.suffix.lower()
    axes = dict(forward_axis="NEGATIVE_Z" if up_axis == "Y" else "Y", up_axis=up_axis)
    if suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path), **axes)
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path), **axes)
    elif suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        raise ValueError(f"{path}: unsupported model format {suffix!r}")
    meshes = [o for o in set(bpy.data.objects) - before if o.type == "MESH" and len(o.data.polygons) > 0]
    if not meshes:
        raise ValueError(f"{path}: no mesh faces found")
    return sorted(meshes, key=lambda o: o.name)


def world_vertices(objects) -> tuple[np.ndarray, np.ndarray]:
    """Evaluated world-space vertices ``[V,3]`` and triangles ``[F,3]`` (indices into V) of mesh objects."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    verts, tris, base = [], [], 0
    for obj in objects:
        ev = obj.evaluated_get(depsgraph)
        me = ev.to_mesh()
        me.calc_loop_triangles()
        v = np.empty(len(me.vertices) * 3, np.float64)
        me.vertices.foreach_get("co", v)
        v = v.reshape(-1, 3)
        m = np.array(ev.matrix_world)
        verts.append(v @ m[:3, :3].T + m[:3, 3])
        t = np.empty(len(me.loop_triangles) * 3, np.int64)
        me.loop_triangles.foreach_get("vertices", t)
        tris.append(t.reshape(-1, 3) + base)
        base += len(v)
        ev.to_mesh_clear()
    return np.concatenate(verts), np.concatenate(tris)


def normalise(objects) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Scale and move the objects so that their world box has a longest side of 1 and is centred at the origin.

    Returns ``(scale, offset, box_min, box_max)`` with ``normalised = scale * (original + offset)``.
    """
    import mathutils

    verts, _ = world_vertices(objects)
    lo, hi = verts.min(0), verts.max(0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("model has a degenerate bounding box")
    scale, offset = 1.0 / extent, -(lo + hi) / 2
    m = mathutils.Matrix.Diagonal((scale, scale, scale, 1.0)) @ mathutils.Matrix.Translation(offset.tolist())
    for obj in objects:
        if obj.parent is None or obj.parent not in objects:
            obj.matrix_world = m @ obj.matrix_world
    import bpy

    bpy.context.view_layer.update()
    return scale, offset, scale * (lo + offset), scale * (hi + offset)


def add_lights(energy: float = 1000.0) -> None:
    """One large area light above and in front of the object, plus a dim grey world for fill."""
    import bpy

    scene = bpy.context.scene
    light = bpy.data.lights.new("gen3d_key", type="AREA")
    light.energy, light.size = energy, 4.0
    obj = bpy.data.objects.new("gen3d_key", light)
    scene.collection.objects.link(obj)
    obj.location = (2.0, -3.0, 4.0)
    obj.rotation_euler = (np.radians(40.0), 0.0, np.radians(35.0))
    world = bpy.data.worlds.new("gen3d_world")
    if world.node_tree is None:  # Blender < 5 creates worlds without nodes
        world.use_nodes = True
    bg = world.node_tree.nodes.get("Background")
    bg.inputs["Color"].default_value = (0.6, 0.6, 0.6, 1.0)
    bg.inputs["Strength"].default_value = 0.6
    scene.world = world


def add_camera(c2w: np.ndarray, lens_mm: float = 35.0, sensor_mm: float = 32.0):
    """A camera with ``lens_mm`` on a ``sensor_mm`` sensor (fit AUTO) at an OpenCV camera-to-world pose."""
    import bpy
    import mathutils

    scene = bpy.context.scene
    cam = bpy.data.cameras.new("gen3d_camera")
    cam.lens, cam.sensor_width, cam.sensor_fit = lens_mm, sensor_mm, "AUTO"
    cam.clip_start, cam.clip_end = 0.01, 100.0
    obj = bpy.data.objects.new("gen3d_camera", cam)
    scene.collection.objects.link(obj)
    obj.matrix_world = mathutils.Matrix((c2w @ FLIP_YZ).tolist())
    scene.camera = obj
    bpy.context.view_layer.update()
    return obj


def configure_render(width: int, height: int, engine: str = "CYCLES", samples: int = 32, threads: int = 0,
                     denoise: bool = False) -> None:
    """RGBA PNG output with a transparent film. ``CYCLES`` renders on the CPU unless a GPU device is configured;
    ``WORKBENCH`` is the fast option; ``EEVEE`` rasterises with OpenGL (on a CPU-only machine through a software
    fallback that compiles its shaders for about a minute)."""
    import bpy

    scene = bpy.context.scene
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    if threads:
        r.threads_mode, r.threads = "FIXED", threads
    scene.view_settings.view_transform = "Standard"
    if engine.upper() == "CYCLES":
        r.engine = "CYCLES"
        scene.cycles.device = "CPU"
        scene.cycles.samples = samples
        scene.cycles.use_denoising = denoise
        scene.cycles.use_adaptive_sampling = True
    elif engine.upper() in ("WORKBENCH", "BLENDER_WORKBENCH"):
        r.engine = "BLENDER_WORKBENCH"
        scene.display.shading.light = "STUDIO"
        scene.display.shading.color_type = "TEXTURE"
        scene.display.shading.use_world_space_lighting = True  # the same shading from every view
    elif engine.upper() in ("EEVEE", "BLENDER_EEVEE"):  # needs a GPU in practice (OpenGL/Vulkan)
        r.engine = "BLENDER_EEVEE"
        scene.eevee.taa_render_samples = samples
    else:
        raise ValueError(f"unknown render engine {engine!r}: use CYCLES, WORKBENCH or EEVEE")
