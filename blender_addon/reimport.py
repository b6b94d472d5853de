"""Bring a finished job's GLB into the scene (main thread only).

The glTF importer converts glTF's Y-up back to Blender's Z-up, so a backend result written in the scene's world
frame lands in place. New objects go to the "Gen3D" collection; generated objects get the backend's placement
(``placement.json``: generate from the active camera, gen3d/backend/geometry/placement.py) or are moved to the 3D cursor,
reconstructions and refinements stay where they are. Images are packed into the .blend and provenance is stored
as custom properties.
"""

from __future__ import annotations

import json
import os

import bpy
from mathutils import Matrix, Vector

COLLECTION = "Gen3D"
PROVENANCE = ("gen3d_job_id", "gen3d_method", "gen3d_prompt", "gen3d_seed", "gen3d_backend_version", "gen3d_kind")


def gen3d_collection(scene: bpy.types.Scene) -> bpy.types.Collection:
    """The scene's "Gen3D" collection, created and linked on first use."""
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    if scene.collection.children.get(coll.name) is None and coll not in scene.collection.children_recursive:
        scene.collection.children.link(coll)
    return coll


def import_glb(context, path: str, *, name: str = "Gen3D", placement: str = "in_place", cursor=(0.0, 0.0, 0.0),
               provenance: dict | None = None, hide: str = "", matrix=None) -> list[bpy.types.Object]:
    """Import ``path`` into the Gen3D collection; returns the new objects.

    ``name``: name for the new objects (the glTF node names mean nothing to the user).
    ``placement``: ``"cursor"`` moves the imported roots by ``cursor``; ``"in_place"`` keeps world coordinates.
    ``matrix``: a 4x4 object-to-world (rows) applied to the imported roots instead of ``placement``.
    ``provenance``: custom properties set on every new object. ``hide``: name of an object to hide (refinements).
    """
    scene = context.scene
    coll = gen3d_collection(scene)
    view_layer = context.view_layer
    layer_coll = _find_layer_collection(view_layer.layer_collection, coll)
    previous_active = view_layer.active_layer_collection
    if layer_coll is not None:
        layer_coll.exclude = False
        view_layer.active_layer_collection = layer_coll
    before_objects = set(bpy.data.objects)
    before_images = set(bpy.data.images)
    try:
        result = bpy.ops.import_scene.gltf(filepath=path)
    finally:  # the user's next new objects must not land in the Gen3D collection
        view_layer.active_layer_collection = previous_active
    if "FINISHED" not in result:
        raise RuntimeError(f"the glTF importer could not read {path}")
    new = [o for o in bpy.data.objects if o not in before_objects]
    for i, obj in enumerate(new):
        obj.name = name if len(new) == 1 else f"{name}.{i:02d}"
        for c in list(obj.users_collection):
            if c is not coll:
                c.objects.unlink(obj)
        if obj.name not in coll.objects:
            coll.objects.link(obj)
        if matrix is not None and obj.parent is None:
            obj.matrix_world = Matrix(matrix) @ obj.matrix_world
        elif placement == "cursor" and obj.parent is None:
            obj.location = tuple(a + b for a, b in zip(obj.location, cursor))
        for k, v in (provenance or {}).items():
            obj[k] = v
    for img in bpy.data.images:
        if img not in before_images and img.packed_file is None and img.has_data:
            img.pack()
    if hide and (src := bpy.data.objects.get(hide)) is not None:
        src.hide_set(True)
        src.hide_render = True
    for obj in context.selected_objects:
        obj.select_set(False)
    for obj in new:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    meshes = [o for o in new if o.type == "MESH"]
    if meshes and meshes[0].name in view_layer.objects:
        view_layer.objects.active = meshes[0]
    return new


def scale_to_size(objects, size: float, pivot) -> None:
    """Scale the root ``objects`` about ``pivot`` (world) so that their meshes' world bounding box has ``size``
    as its largest dimension."""
    bpy.context.view_layer.update()
    corners = [o.matrix_world @ Vector(c) for o in objects if o.type == "MESH" for c in o.bound_box]
    if not corners:
        return
    extent = max(max(c[i] for c in corners) - min(c[i] for c in corners) for i in range(3))
    if extent <= 0:
        return
    k = size / extent
    about = Matrix.Translation(Vector(pivot)) @ Matrix.Scale(k, 4) @ Matrix.Translation(-Vector(pivot))
    for obj in objects:
        if obj.parent is None:
            obj.matrix_world = about @ obj.matrix_world


def _find_layer_collection(layer_coll, coll):
    if layer_coll.collection == coll:
        return layer_coll
    for child in layer_coll.children:
        found = _find_layer_collection(child, coll)
        if found is not None:
            return found
    return None


def same_mesh_result(folder: str) -> bool:
    """True when a refinement in ``folder`` kept the input's vertices and UVs (its meta.json says so) and wrote
    ``texture.png``: the new image can then go straight onto the source object's material."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("vertices_changed") is False and os.path.isfile(os.path.join(folder, "texture.png"))


def apply_texture(obj: bpy.types.Object, path: str, provenance: dict | None = None) -> bpy.types.Image:
    """Put the image at ``path`` (packed) into the base colour of every material of ``obj``.

    The previous base-colour input is kept: its nodes stay in the material, only unlinked from the BSDF, so the
    user can switch back. An object without a material gets a new one. Call inside one undoable operator.
    """
    image = bpy.data.images.load(path)
    image.name = f"{obj.name} (Gen3D texture)"
    image.pack()
    if not obj.data.materials:
        obj.data.materials.append(bpy.data.materials.new(f"{obj.name} Gen3D"))
    for mat in {m for m in obj.data.materials if m is not None}:
        if mat.node_tree is None:
            mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is None:
            bsdf = nodes.new("ShaderNodeBsdfPrincipled")
            out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
            links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
        tex = nodes.new("ShaderNodeTexImage")
        tex.image, tex.label = image, "Gen3D texture"
        tex.location = (bsdf.location.x - 320, bsdf.location.y + 40)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    for k, v in (provenance or {}).items():
        obj[k] = v
    return image
