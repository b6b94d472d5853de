"""Uploaded input files: saved under the job's ``inputs/`` folder after checks that hostile files cannot pass.

- ``image``: a PNG/JPEG/WebP/BMP/TIFF whose pixel count is checked from its header *before* decoding
  (decompression bombs), then decoded once to prove it is whole.
- ``mesh``: GLB, glTF, OBJ, PLY, STL or OFF, by extension, non-empty.
- ``views``: a zip of a nerfstudio ``transforms.json`` folder. Members are extracted one by one to normalised
  relative paths: absolute paths, ``..``, symlinks, too many members or too many bytes are refused, and every
  image inside gets the same pixel check. ``transforms.json`` may sit at the root or in one top-level folder.

Each function returns the saved path; errors are :class:`BadInput` (422) or :class:`TooLarge` (413).
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from ..errors import BadInput, TooLarge
from .settings import Settings

IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr"}
MESH_SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl", ".off"}
COPY_CHUNK = 1 << 20


def check_image(path: Path, max_pixels: int, role: str = "image", decode: bool = True) -> str:
    """Check an image file's format and pixel count (from the header); returns the PIL format name."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            w, h = im.size
            if w * h > max_pixels:
                raise TooLarge(f"{role}: {w}x{h} pixels is more than the limit of {max_pixels}",
                               {"field": role, "width": w, "height": h, "max_pixels": max_pixels})
            if decode:
                im.load()
    except Image.DecompressionBombError:  # PIL's own, larger limit: say ours, which is the one that counts
        raise TooLarge(f"{role}: the image has more pixels than the limit of {max_pixels}",
                       {"field": role, "max_pixels": max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # PIL's messages carry the server path
        raise BadInput(f"{role}: not a readable image (PNG, JPEG, WebP, BMP or TIFF)", {"field": role}) from None
    return fmt or ""


def _copy(src: BinaryIO, dest: Path, role: str, allow_empty: bool = False) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        shutil.copyfileobj(src, f, COPY_CHUNK)
        size = f.tell()
    if size == 0 and not allow_empty:
        raise BadInput(f"{role}: the uploaded file is empty", {"field": role})
    return size


def save_image(src: BinaryIO, dest_dir: Path, settings: Settings) -> Path:
    tmp = dest_dir / "image.upload"
    _copy(src, tmp, "image")
    fmt = check_image(tmp, settings.max_image_pixels)
    if fmt not in IMAGE_FORMATS:
        raise BadInput(f"image: format {fmt} is not accepted; use {', '.join(IMAGE_FORMATS)}",
                       {"field": "image", "format": fmt})
    return tmp.rename(dest_dir / f"image{IMAGE_FORMATS[fmt]}")


def save_mesh(src: BinaryIO, filename: str | None, dest_dir: Path) -> Path:
    suffix = PurePosixPath(filename or "").suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise BadInput(f"mesh: file name {filename!r} must end with one of {', '.join(sorted(MESH_SUFFIXES))}",
                       {"field": "mesh", "filename": filename})
    dest = dest_dir / f"mesh{suffix}"
    _copy(src, dest, "mesh")
    return dest


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's normalised relative path, or BadInput for anything that could land outside the folder."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    parts = path.parts
    if not parts or path.is_absolute() or ".." in parts or ":" in parts[0]:
        raise BadInput(f"views: zip member {info.filename!r} has an unsafe path", {"field": "views",
                                                                                    "member": info.filename})
    if stat.S_ISLNK(mode):
        raise BadInput(f"views: zip member {info.filename!r} is a symbolic link", {"field": "views",
                                                                                   "member": info.filename})
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def extract_views(src: BinaryIO, dest_dir: Path, settings: Settings) -> Path:
    """Extract a views zip into ``dest_dir/views``; returns the folder holding ``transforms.json``."""
    root = dest_dir / "views"
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BadInput(f"views: not a zip file ({e})", {"field": "views"}) from None
    with zf:
        # folders are implied by their files; a nameless member is kept so that it is refused below
        members = [i for i in zf.infolist() if not (i.filename.endswith("/") and i.filename.strip("/"))]
        if len(members) > settings.max_views_files:
            raise TooLarge(f"views: {len(members)} files is more than the limit of {settings.max_views_files}",
                           {"field": "views", "files": len(members), "max_files": settings.max_views_files})
        total = sum(i.file_size for i in members)
        if total > settings.max_views_bytes:
            raise TooLarge(f"views: {total} bytes uncompressed is more than the limit of {settings.max_views_bytes}",
                           {"field": "views", "bytes": total, "max_bytes": settings.max_views_bytes})
        saved = []
        for info in members:
            rel = _member_path(info)
            dest = root.joinpath(*rel.parts)
            if not dest.resolve().is_relative_to(root.resolve()):
                raise BadInput(f"views: zip member {info.filename!r} has an unsafe path",
                               {"field": "views", "member": info.filename})
            try:
                with zf.open(info) as f:
                    _copy(f, dest, "views", allow_empty=True)
            except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError, NotImplementedError) as e:
                raise BadInput(f"views: cannot extract {info.filename!r} ({e})", {"field": "views"}) from None
            saved.append(rel)
    for rel in saved:
        if rel.suffix.lower() in IMAGE_SUFFIXES - {".exr"}:
            check_image(root.joinpath(*rel.parts), settings.max_image_pixels, role=f"views/{rel}", decode=False)
    return _transforms_folder(root, saved)


def _transforms_folder(root: Path, saved: list[PurePosixPath]) -> Path:
    found = [rel for rel in saved if rel.name == "transforms.json" and len(rel.parts) <= 2]
    if len(found) != 1:
        raise BadInput("views: the zip must hold exactly one transforms.json at its root or in one top-level folder",
                       {"field": "views", "found": [str(f) for f in found]})
    folder = root.joinpath(*found[0].parts[:-1])
    try:
        data = json.loads((folder / "transforms.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"views: transforms.json is not valid JSON ({e})", {"field": "views"}) from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise BadInput("views: transforms.json needs a non-empty 'frames' list", {"field": "views"})
    return folder


def upload_names(files: dict[str, str | Path], job_dir: Path) -> dict[str | Path, str]:
    """What :meth:`Gen3DError.naming` shows instead of a job's server paths: each upload's field, the job folder
    as ``job``."""
    names: dict[str | Path, str] = {}
    for role, path in files.items():
        names[path] = role
        if Path(path).suffix:  # a file: its server-chosen name (image.png, mesh.glb) too
            names[Path(path).name] = role
    names[job_dir] = "job"
    return names
