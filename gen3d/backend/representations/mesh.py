"""Textured triangle meshes and their file formats (GLB, OBJ + MTL + PNG, PLY).

In memory a mesh lives in Blender's world frame (Z up, metres). On disk:

- GLB is Y up, as glTF 2.0 requires, so Blender's glTF importer puts it back where it was;
- OBJ is Y up, the convention of Blender's OBJ importer and exporter (forward -Z, up Y);
- PLY stays Z up, the default of Blender's PLY importer (forward Y, up Z).

UVs follow the OBJ/Blender convention: ``v`` grows upwards, so ``v = 1`` is the *top* row of the texture image
(``texture[0]``). glTF stores ``1 - v``; trimesh converts on reading and writing. UV seams are duplicated vertices:
every vertex has exactly one UV.

All files are written atomically (:mod:`backend.files`).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from ..errors import BadInput
from ..files import write_bytes
from ..geometry.cameras import yup_to_zup, zup_to_yup

log = logging.getLogger(__name__)

MATERIAL_NAME = "material0"


@dataclass
class TexturedMesh:
    """A triangle mesh in Blender's Z-up world.

    ``vertices [V,3] float32``; ``faces [F,3] int64`` (counter-clockwise seen from outside);
    ``normals [V,3] float32`` unit vertex normals or None; ``uvs [V,2] float32`` (``v`` up) or None;
    ``texture [H,W,3] float32 in [0,1]`` base colour (sRGB-encoded values, as in an 8-bit PNG), row 0 = top =
    ``v = 1``, or None (a glTF ``baseColorFactor`` is not applied on reading);
    ``vertex_colors [V,3] float32 in [0,1]`` or None.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor | None = None
    uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    vertex_colors: torch.Tensor | None = None

    def __post_init__(self):
        self.vertices = torch.as_tensor(self.vertices, dtype=torch.float32).reshape(-1, 3)
        self.faces = torch.as_tensor(self.faces, dtype=torch.int64).reshape(-1, 3)
        for name, width in (("normals", 3), ("uvs", 2), ("vertex_colors", 3)):
            value = getattr(self, name)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float32).reshape(-1, width)
                if len(value) != len(self.vertices):
                    raise ValueError(f"{len(value)} {name} for {len(self.vertices)} vertices")
                setattr(self, name, value)
        if self.texture is not None:
            self.texture = torch.as_tensor(self.texture, dtype=torch.float32)
            if self.texture.ndim != 3 or self.texture.shape[-1] != 3:
                raise ValueError(f"texture must be [H,W,3], got {tuple(self.texture.shape)}")
            if self.uvs is None:
                raise ValueError("a texture needs uvs")

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device) -> "TexturedMesh":
        return replace(self, **{k: (v.to(device) if v is not None else None) for k, v in vars(self).items()})

    def with_vertex_normals(self) -> "TexturedMesh":
        """A copy with area-weighted vertex normals computed from the faces. Where they cancel (faces folded over
        each other) a vertex takes the normal of its largest face, and +z when it has no face with an area, so
        every normal is of unit length (glTF requires it)."""
        v, f = self.vertices, self.faces
        face_n = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
        corner, area = f.reshape(-1), face_n.norm(dim=-1).repeat_interleave(3)
        n = torch.zeros_like(v).index_add_(0, corner, face_n.repeat_interleave(3, dim=0))
        total = torch.zeros(len(v), dtype=v.dtype, device=v.device).index_add_(0, corner, area)
        largest = torch.zeros_like(total).scatter_reduce(0, corner, area, "amax")
        ids = torch.arange(len(corner), device=v.device)
        first = torch.full((len(v),), len(corner), device=v.device).scatter_reduce(   # len(corner): no such face
            0, corner, torch.where((area == largest[corner]) & (area > 0), ids, len(corner)), "amin")
        fallback = torch.cat([face_n, v.new_tensor([[0.0, 0.0, 1.0]])])[first // 3]
        n = torch.where((n.norm(dim=-1) > 1e-6 * total)[:, None], n, fallback)
        return replace(self, normals=torch.nn.functional.normalize(n, dim=-1))

    def sample_texture(self) -> torch.Tensor:
        """Texture colour at each vertex's UV, bilinear: ``[V,3]`` (for vertex-coloured exports)."""
        if self.texture is None:
            raise ValueError("mesh has no texture")
        H, W = self.texture.shape[:2]
        # continuous texel coordinates, texel centres at integers; v = 1 is row 0
        x = (self.uvs[:, 0] * W - 0.5).clamp(0, W - 1)
        y = ((1 - self.uvs[:, 1]) * H - 0.5).clamp(0, H - 1)
        x0, y0 = x.floor().long(), y.floor().long()
        x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
        wx, wy = (x - x0)[:, None], (y - y0)[:, None]
        t = self.texture
        top = t[y0, x0] * (1 - wx) + t[y0, x1] * wx
        bottom = t[y1, x0] * (1 - wx) + t[y1, x1] * wx
        return top * (1 - wy) + bottom * wy


# --- conversion to and from trimesh ------------------------------------------------------------------------------
def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.detach().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8), "RGB")


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def _to_trimesh(mesh: TexturedMesh, yup: bool) -> trimesh.Trimesh:
    v = mesh.vertices.detach().cpu()
    n = mesh.normals.detach().cpu() if mesh.normals is not None else None
    if yup:
        v = zup_to_yup(v)
        n = zup_to_yup(n) if n is not None else None
    visual = None
    if mesh.uvs is not None:
        material = trimesh.visual.material.PBRMaterial(
            name=MATERIAL_NAME, baseColorTexture=_to_pil(mesh.texture) if mesh.texture is not None else None,
            metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False)
        visual = trimesh.visual.TextureVisuals(uv=mesh.uvs.detach().cpu().numpy(), material=material)
    elif mesh.vertex_colors is not None:
        colors = (mesh.vertex_colors.detach().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        visual = trimesh.visual.ColorVisuals(vertex_colors=colors)
    return trimesh.Trimesh(vertices=v.numpy(), faces=mesh.faces.detach().cpu().numpy(),
                           vertex_normals=n.numpy() if n is not None else None, visual=visual, process=False)


def _from_trimesh(tm: trimesh.Trimesh, yup: bool, path: Path) -> TexturedMesh:
    if not isinstance(tm, trimesh.Trimesh) or len(tm.faces) == 0:
        raise BadInput(f"{path}: no triangle mesh in the file", {"file": str(path)})
    v = torch.from_numpy(np.asarray(tm.vertices, dtype=np.float32))
    normals = None
    if "vertex_normals" in tm._cache:  # normals that came from the file (trimesh caches them on load)
        normals = torch.from_numpy(np.asarray(tm.vertex_normals, dtype=np.float32))
    uvs = texture = colors = None
    visual = tm.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        if visual.uv is not None and len(visual.uv) == len(v):
            uvs = torch.from_numpy(np.asarray(visual.uv, dtype=np.float32))
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None and uvs is not None:
            texture = _from_pil(image)
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        colors = torch.from_numpy(np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0)
    if yup:
        v = yup_to_zup(v)
        normals = yup_to_zup(normals) if normals is not None else None
    return TexturedMesh(v, torch.from_numpy(np.asarray(tm.faces, dtype=np.int64)), normals, uvs, texture, colors)


def _load_trimesh(path: Path, file_type: str, pack_textures: bool = True) -> trimesh.Trimesh:
    if not path.is_file():
        raise BadInput(f"{path}: file not found", {"file": str(path)})
    try:
        loaded = trimesh.load(path, file_type=file_type, process=False)
    except Exception as e:  # trimesh raises many types for malformed files
        raise BadInput(f"{path}: cannot read as {file_type.upper()}: {e}", {"file": str(path)}) from e
    if isinstance(loaded, trimesh.Scene):
        parts = [_transformed(loaded.geometry[name], T) for node in loaded.graph.nodes_geometry
                 for T, name in [loaded.graph[node]] if isinstance(loaded.geometry[name], trimesh.Trimesh)]
        if not parts:
            raise BadInput(f"{path}: no triangle mesh in the file", {"file": str(path)})
        # several parts: trimesh packs their textures into one atlas (vertex normals are then recomputed)
        if len(parts) == 1:
            loaded = parts[0]
        else:
            loaded = trimesh.util.concatenate(parts) if pack_textures else _concatenate_keeping_uvs(parts)
    return loaded


def _concatenate_keeping_uvs(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Parts joined in order with their own UVs (when every part has them) and the files' normals (when every part
    has them); materials and textures are dropped."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    normals = None
    if all("vertex_normals" in p._cache for p in parts):
        normals = np.concatenate([p.vertex_normals for p in parts])
    uvs = [getattr(p.visual, "uv", None) for p in parts]
    visual = None
    if all(uv is not None and len(uv) == len(p.vertices) for uv, p in zip(uvs, parts)):
        visual = trimesh.visual.TextureVisuals(uv=np.concatenate(uvs),
                                               material=trimesh.visual.material.PBRMaterial())
    return trimesh.Trimesh(np.concatenate([p.vertices for p in parts]), faces, vertex_normals=normals,
                           visual=visual, process=False)


def _transformed(tm: trimesh.Trimesh, T: np.ndarray) -> trimesh.Trimesh:
    """``tm`` with a scene node's 4x4 transform applied, keeping the file's vertex normals (which trimesh's own
    ``Scene.dump``/``copy`` drop)."""
    normals = tm.vertex_normals if "vertex_normals" in tm._cache else None
    v = tm.vertices @ T[:3, :3].T + T[:3, 3]
    if normals is not None:
        normals = trimesh.util.unitize(normals @ np.linalg.inv(T[:3, :3]))
    return trimesh.Trimesh(v, tm.faces, vertex_normals=normals, visual=tm.visual, process=False)


# --- GLB ---------------------------------------------------------------------------------------------------------
def save_glb(mesh: TexturedMesh, path: str | os.PathLike) -> Path:
    """Write a binary glTF (Y up) with one opaque PBR material whose baseColorTexture is ``mesh.texture``."""
    data = _to_trimesh(mesh, yup=True).export(file_type="glb")
    return write_bytes(path, data)


def load_glb(path: str | os.PathLike, pack_textures: bool = True) -> TexturedMesh:
    """Read a GLB/glTF (all primitives merged in order, node transforms applied) into the Z-up world.

    Several primitives (one per material) are merged with their textures packed into one atlas, which moves
    their UVs; ``pack_textures=False`` keeps every primitive's own UVs and drops the textures instead.
    """
    path = Path(path)
    tm = _load_trimesh(path, path.suffix.lstrip(".").lower() or "glb", pack_textures)
    return _from_trimesh(tm, yup=True, path=path)


# --- OBJ + MTL + PNG ---------------------------------------------------------------------------------------------
def _mtl_text(texture_name: str | None) -> str:
    lines = [f"newmtl {MATERIAL_NAME}", "Ka 1.000000 1.000000 1.000000", "Kd 1.000000 1.000000 1.000000",
             "Ks 0.000000 0.000000 0.000000", "Ns 0.000000", "d 1.000000", "illum 1"]
    if texture_name:
        lines.append(f"map_Kd {texture_name}")
    return "\n".join(lines) + "\n"


def save_obj(mesh: TexturedMesh, path: str | os.PathLike) -> Path:
    """Write ``NAME.obj`` (Y up), ``NAME.mtl`` (opaque: ``d 1``) and ``NAME.png`` (when textured) side by side.

    The OBJ is written last, so its presence means the set is complete.
    """
    path = Path(path)
    mtl_name, png_name = path.with_suffix(".mtl").name, path.with_suffix(".png").name
    tm = _to_trimesh(mesh, yup=True)
    text, _ = trimesh.exchange.obj.export_obj(
        tm, include_normals=mesh.normals is not None, include_color=mesh.vertex_colors is not None,
        include_texture=mesh.uvs is not None, return_texture=True, mtl_name=mtl_name)
    if mesh.uvs is not None:
        # one material of our own, so the MTL is ours too (trimesh's has no explicit opacity)
        text = "\n".join(f"usemtl {MATERIAL_NAME}" if line.startswith("usemtl ") else line
                         for line in text.splitlines()) + "\n"
        if mesh.texture is not None:
            buf = io.BytesIO()
            _to_pil(mesh.texture).save(buf, format="PNG")
            write_bytes(path.with_suffix(".png"), buf.getvalue())
        write_bytes(path.with_suffix(".mtl"), _mtl_text(png_name if mesh.texture is not None else None).encode())
    return write_bytes(path, text.encode())


def load_obj(path: str | os.PathLike) -> TexturedMesh:
    """Read an OBJ (Y up) with its MTL and texture, if any, into the Z-up world."""
    path = Path(path)
    return _from_trimesh(_load_trimesh(path, "obj"), yup=True, path=path)


# --- PLY ---------------------------------------------------------------------------------------------------------
def save_ply(mesh: TexturedMesh, path: str | os.PathLike, vertex_colors: bool = False) -> Path:
    """Write a binary PLY (Z up): positions, faces, normals when present, and with ``vertex_colors`` the
    mesh's vertex colours (or its texture sampled at each vertex's UV) as 8-bit ``red green blue alpha``."""
    out = replace(mesh, uvs=None, texture=None)
    if vertex_colors and mesh.vertex_colors is None:
        out = replace(out, vertex_colors=mesh.sample_texture())
    elif not vertex_colors:
        out = replace(out, vertex_colors=None)
    data = _to_trimesh(out, yup=False).export(file_type="ply", vertex_normal=out.normals is not None)
    return write_bytes(path, data)


def load_ply(path: str | os.PathLike) -> TexturedMesh:
    """Read a PLY mesh (Z up): positions, faces, normals and vertex colours when present."""
    path = Path(path)
    return _from_trimesh(_load_trimesh(path, "ply"), yup=False, path=path)


_SAVERS = {".glb": save_glb, ".obj": save_obj, ".ply": save_ply}
_LOADERS = {".glb": load_glb, ".gltf": load_glb, ".obj": load_obj, ".ply": load_ply}


def save_mesh(mesh: TexturedMesh, path: str | os.PathLike) -> Path:
    """Write by extension: ``.glb``, ``.obj`` or ``.ply``."""
    saver = _SAVERS.get(Path(path).suffix.lower())
    if saver is None:
        raise BadInput(f"{path}: unsupported mesh format (use .glb, .obj or .ply)", {"file": str(path)})
    return saver(mesh, path)


def load_mesh(path: str | os.PathLike) -> TexturedMesh:
    """Read by extension: ``.glb``/``.gltf``, ``.obj`` or ``.ply``."""
    loader = _LOADERS.get(Path(path).suffix.lower())
    if loader is None:
        raise BadInput(f"{path}: unsupported mesh format (use .glb, .gltf, .obj or .ply)", {"file": str(path)})
    return loader(path)
