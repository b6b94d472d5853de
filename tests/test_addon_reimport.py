"""Refine-texture results land on the user's own object: a new image on its material, the old one kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

REIMPORT = Path(__file__).resolve().parents[1] / "blender_addon" / "reimport.py"


@pytest.fixture()
def reimport():
    spec = importlib.util.spec_from_file_location("gen3d_reimport_under_test", REIMPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return mod


def _base_colour_image(mat):
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    return link.from_node.image


def test_apply_texture_keeps_the_old_image_and_the_mesh(reimport, tmp_path):
    bpy.ops.mesh.primitive_cube_add()
    obj = bpy.context.active_object
    old = bpy.data.images.new("old", 4, 4)
    mat = bpy.data.materials.new("paint")
    if mat.node_tree is None:
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    old_node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    old_node.image = old
    mat.node_tree.links.new(old_node.outputs["Color"], bsdf.inputs["Base Color"])
    obj.data.materials.append(mat)
    verts = [tuple(v.co) for v in obj.data.vertices]

    png = tmp_path / "texture.png"
    Image.fromarray(np.full((8, 8, 3), (10, 200, 30), np.uint8)).save(png)
    (tmp_path / "meta.json").write_text(json.dumps({"vertices_changed": False}))
    assert reimport.same_mesh_result(str(tmp_path))
    reimport.apply_texture(obj, str(png), {"gen3d_job_id": "j1"})

    new = _base_colour_image(mat)
    assert new is not old and new.packed_file is not None
    assert np.allclose(np.array(new.pixels[:4]), [10 / 255, 200 / 255, 30 / 255, 1], atol=0.01)
    assert any(n.type == "TEX_IMAGE" and n.image is old for n in mat.node_tree.nodes)  # kept, unlinked
    assert [tuple(v.co) for v in obj.data.vertices] == verts
    assert obj["gen3d_job_id"] == "j1"


def test_changed_vertices_are_not_applied_in_place(reimport, tmp_path):
    (tmp_path / "texture.png").write_bytes(b"")
    (tmp_path / "meta.json").write_text(json.dumps({"vertices_changed": True}))
    assert not reimport.same_mesh_result(str(tmp_path))
    (tmp_path / "meta.json").write_text("{not json")
    assert not reimport.same_mesh_result(str(tmp_path))


def test_an_object_without_material_gets_one(reimport, tmp_path):
    bpy.ops.mesh.primitive_plane_add()
    obj = bpy.context.active_object
    png = tmp_path / "texture.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    image = reimport.apply_texture(obj, str(png))
    assert len(obj.data.materials) == 1 and _base_colour_image(obj.data.materials[0]) is image
