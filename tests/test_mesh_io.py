"""Textured mesh files: GLB / OBJ+MTL+PNG / PLY round trips, the on-disk axes, and Blender's own importers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from gen3d.backend.errors import BadInput
from gen3d.backend.representations.mesh import TexturedMesh, load_mesh, load_obj, save_glb, save_mesh, save_obj, save_ply

EIGHT_BIT = 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def spot(spot_dir) -> TexturedMesh:
    """Spot (real UV seams), moved off-centre so a lost Y-up/Z-up swap is visible, with a small
    asymmetric texture (a flipped row or column order changes it)."""
    mesh = load_obj(spot_dir / "spot_triangulated.obj")
    texture = torch.rand(12, 20, 3, generator=torch.Generator().manual_seed(1))
    return TexturedMesh(mesh.vertices + torch.tensor([0.5, -0.25, 2.0]), mesh.faces, uvs=mesh.uvs,
                        texture=texture).with_vertex_normals()


def assert_same_mesh(a: TexturedMesh, b: TexturedMesh, texture=True):
    torch.testing.assert_close(a.vertices, b.vertices, atol=1e-6, rtol=0)
    assert torch.equal(a.faces, b.faces)
    torch.testing.assert_close(a.normals, b.normals, atol=1e-5, rtol=0)
    if texture:
        torch.testing.assert_close(a.uvs, b.uvs, atol=1e-6, rtol=0)
        assert a.texture.shape == b.texture.shape
        assert (a.texture - b.texture).abs().max() <= EIGHT_BIT


def read_glb(path):
    """Independent GLB reader: the JSON chunk and the binary chunk."""
    raw = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", raw, 0)
    assert magic == b"glTF" and version == 2
    json_len, _ = struct.unpack_from("<I4s", raw, 12)
    doc = json.loads(raw[20:20 + json_len])
    return doc, raw[20 + json_len + 8:]


def accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {"VEC2": 2, "VEC3": 3, "SCALAR": 1}[acc["type"]]
    assert acc["componentType"] == 5126  # float
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, "<f4", acc["count"] * width, start).reshape(-1, width)


def test_glb_round_trip(tmp_path, spot):
    assert_same_mesh(load_mesh(save_glb(spot, tmp_path / "spot.glb")), spot)


def test_glb_on_disk_is_y_up_with_an_opaque_textured_pbr_material(tmp_path, spot):
    doc, binary = read_glb(save_glb(spot, tmp_path / "spot.glb"))
    prim = doc["meshes"][0]["primitives"][0]
    pos = accessor(doc, binary, prim["attributes"]["POSITION"])
    v = spot.vertices.numpy()
    np.testing.assert_allclose(pos, np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1), atol=1e-6)  # Z up -> Y up
    uv = accessor(doc, binary, prim["attributes"]["TEXCOORD_0"])
    np.testing.assert_allclose(uv, np.stack([spot.uvs[:, 0], 1 - spot.uvs[:, 1]], 1), atol=1e-6)  # glTF v down
    material = doc["materials"][prim["material"]]
    assert material.get("alphaMode", "OPAQUE") == "OPAQUE"
    assert "baseColorTexture" in material["pbrMetallicRoughness"]


def test_obj_round_trip_and_files(tmp_path, spot):
    path = save_obj(spot, tmp_path / "spot.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spot.mtl", "spot.obj", "spot.png"]
    assert_same_mesh(load_mesh(path), spot)
    mtl = (tmp_path / "spot.mtl").read_text().split("\n")
    assert "d 1.000000" in mtl and not any(line.startswith("Tr") for line in mtl)
    assert "map_Kd spot.png" in mtl
    obj = path.read_text().splitlines()
    assert "mtllib spot.mtl" in obj
    first = next(np.array(line.split()[1:], float) for line in obj if line.startswith("v "))
    x, y, z = spot.vertices[0].tolist()
    np.testing.assert_allclose(first, [x, z, -y], atol=1e-6)  # OBJ is Y up


def test_ply_round_trip_with_vertex_colours(tmp_path):
    # two triangles, one in the texture's top half (v > 0.5: red), one in the bottom half (blue)
    texture = torch.zeros(8, 8, 3)
    texture[:4, :, 0] = 1.0
    texture[4:, :, 2] = 1.0
    v = torch.tensor([[0, 0, 1.0], [1, 0, 1], [0, 1, 1], [0, 0, 2], [1, 0, 2], [0, 1, 2]])
    uvs = torch.tensor([[0.2, 0.9], [0.8, 0.9], [0.5, 0.8], [0.2, 0.1], [0.8, 0.1], [0.5, 0.2]])
    mesh = TexturedMesh(v, [[0, 1, 2], [3, 4, 5]], uvs=uvs, texture=texture).with_vertex_normals()
    path = save_ply(mesh, tmp_path / "m.ply", vertex_colors=True)
    back = load_mesh(path)
    assert_same_mesh(back, mesh, texture=False)
    expected = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]] * 3)
    torch.testing.assert_close(back.vertex_colors, expected)
    np.testing.assert_allclose(trimesh.load(path, process=False).vertices, v.numpy())  # PLY stays Z up
    assert load_mesh(save_ply(mesh, tmp_path / "plain.ply")).vertex_colors is None


def test_vertex_normals_are_unit_where_faces_fold_or_vanish():
    """Area-weighted normals against hand-computed ones; where they cancel (a face folded back over two others, as
    a collapsed patch of an open mesh leaves) the largest face's normal; +z without any face of non-zero area."""
    v = torch.tensor([[0.0, 0, 0], [0, 2, 0], [0, 0, 2], [0, 1, 0], [0, 0, 2], [3, 0, 0], [3, 0, 0], [4, 4, 4]])
    # vertex 0: face (0,1,2) faces +x with area 2, each (0,4,3) faces -x with area 1: the sum cancels
    f = [[0, 1, 2], [0, 4, 3], [0, 4, 3], [5, 6, 6]]
    n = TexturedMesh(v, f).with_vertex_normals().normals
    assert torch.allclose(n[0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(n[1], torch.tensor([1.0, 0, 0])) and torch.allclose(n[3], torch.tensor([-1.0, 0, 0]))
    assert torch.allclose(n[5], torch.tensor([0.0, 0, 1])) and torch.allclose(n[7], torch.tensor([0.0, 0, 1]))
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(v)))


def test_sample_texture_is_bilinear_with_v_up():
    texture = torch.tensor([[[0.0, 0, 0], [1, 1, 1]], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]])  # 2x2, top row black/white
    uvs = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.5, 0.75], [0.25, 0.25], [0.5, 0.5], [0.0, 1.0]])
    mesh = TexturedMesh(torch.zeros(6, 3), [[0, 1, 2]], uvs=uvs, texture=texture)
    torch.testing.assert_close(mesh.sample_texture()[:, 0], torch.tensor([0.0, 1, 0.5, 0.5, 0.5, 0]))


def test_mesh_without_texture_round_trips(tmp_path):
    box = trimesh.creation.box()
    mesh = TexturedMesh(box.vertices, box.faces).with_vertex_normals()
    for ext in ("glb", "obj", "ply"):
        back = load_mesh(save_mesh(mesh, tmp_path / f"box.{ext}"))
        torch.testing.assert_close(back.vertices, mesh.vertices)
        assert torch.equal(back.faces, mesh.faces) and back.texture is None


def test_bad_mesh_files(tmp_path):
    with pytest.raises(BadInput, match="missing.glb: file not found"):
        load_mesh(tmp_path / "missing.glb")
    with pytest.raises(BadInput, match="unsupported"):
        load_mesh(tmp_path / "mesh.stl")
    (tmp_path / "junk.glb").write_bytes(b"not a gltf at all")
    with pytest.raises(BadInput, match="junk.glb"):
        load_mesh(tmp_path / "junk.glb")
    with pytest.raises(ValueError, match="texture needs uvs"):
        TexturedMesh(torch.zeros(3, 3), [[0, 1, 2]], texture=torch.zeros(2, 2, 3))


# --- Blender's importers -----------------------------------------------------------------------------------------
@pytest.fixture
def bpy():
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


def blender_mesh(bpy):
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    M = np.array(obj.matrix_world)
    co = np.array([v.co[:] for v in obj.data.vertices])
    world = co @ M[:3, :3].T + M[:3, 3]
    return obj, world


def test_blender_imports_our_glb_in_place_with_uvs_and_texture(tmp_path, bpy, spot):
    bpy.ops.import_scene.gltf(filepath=str(save_glb(spot, tmp_path / "spot.glb")))
    obj, world = blender_mesh(bpy)
    # every corner (world position, uv) of Blender's mesh is a (vertex, uv) pair of ours
    loop_vertex = np.array([loop.vertex_index for loop in obj.data.loops])
    loop_uv = np.array([d.uv[:] for d in obj.data.uv_layers.active.data])
    ours = cKDTree(np.concatenate([spot.vertices.numpy(), spot.uvs.numpy()], 1))
    dist, _ = ours.query(np.concatenate([world[loop_vertex], loop_uv], 1))
    assert len(loop_vertex) == 3 * len(spot.faces) and dist.max() < 1e-5
    np.testing.assert_allclose(world.max(0), spot.vertices.numpy().max(0), atol=1e-5)  # Z up preserved

    (material,) = obj.data.materials
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE" and not bsdf.inputs["Alpha"].is_linked
    image = link.from_node.image
    w, h = image.size
    pixels = np.array(image.pixels[:]).reshape(h, w, 4)[::-1, :, :3]  # Blender stores the bottom row first
    assert (w, h) == (20, 12) and np.abs(pixels - spot.texture.numpy()).max() <= EIGHT_BIT


def test_blender_imports_our_obj_in_place_opaque(tmp_path, bpy, spot):
    bpy.ops.wm.obj_import(filepath=str(save_obj(spot, tmp_path / "spot.obj")))
    obj, world = blender_mesh(bpy)
    dist, _ = cKDTree(spot.vertices.numpy()).query(world)
    assert dist.max() < 1e-5 and len(obj.data.polygons) == len(spot.faces)
    (material,) = obj.data.materials
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Alpha"].default_value == 1.0 and not bsdf.inputs["Alpha"].is_linked
    assert bsdf.inputs["Base Color"].links[0].from_node.image.size[:] == (20, 12)
