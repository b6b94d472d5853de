"""Stage 6: write the results: ``mesh.glb``, ``mesh.obj`` (+ ``.mtl``, ``.png``), ``gaussians.ply`` and
``preview.png`` (a grid of turntable renders of the textured mesh). Every file is written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...files import write_bytes
from ...geometry.cameras import orbit_cameras
from ...representations.gaussians import Gaussians
from ...representations.gaussians import save_ply as save_gaussians_ply
from ...representations.mesh import TexturedMesh, save_glb, save_obj
from .mesh_render import render_mesh


def turntable_preview(mesh: TexturedMesh, views: int = 8, size: int = 256, columns: int = 4,
                      elevation: float = 20.0) -> np.ndarray:
    """``[rows*size, columns*size, 3] uint8``: ``views`` renders on white around the mesh's bounding-box centre."""
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    center, diag = (lo + hi) / 2, float((hi - lo).norm())
    fov = 40.0
    radius = 0.5 * diag / np.sin(np.radians(fov / 2)) / 0.9
    cams = orbit_cameras(elevation, torch.arange(views) * 360.0 / views, radius, fov, size, size,
                         target=tuple(center.tolist()))
    tiles = []
    with torch.no_grad():
        for i in range(views):
            tiles.append(render_mesh(mesh, cams[i], torch.ones(1, 3)).rgb[0])
    rows = (views + columns - 1) // columns
    grid = torch.ones(rows * size, columns * size, 3)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = t
    return (grid.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def export_obj(out_dir: Path, mesh: TexturedMesh) -> dict[str, Path]:
    """``mesh.obj`` with its ``mesh.mtl`` and ``mesh.png`` (when textured); returns artifact name -> path."""
    save_obj(mesh, Path(out_dir) / "mesh.obj")
    return {name: Path(out_dir) / name for name in ("mesh.obj", "mesh.mtl", "mesh.png")
            if (Path(out_dir) / name).exists()}


def export_results(out_dir: Path, mesh: TexturedMesh, gaussians: Gaussians | None = None,
                   preview_views: int = 8, preview_size: int = 256) -> dict[str, Path]:
    """Write every artifact into ``out_dir``; returns artifact name -> path."""
    out_dir = Path(out_dir)
    mesh = mesh.to("cpu")
    artifacts = {"mesh.glb": save_glb(mesh, out_dir / "mesh.glb"), **export_obj(out_dir, mesh)}
    if gaussians is not None:
        artifacts["gaussians.ply"] = save_gaussians_ply(gaussians.to("cpu"), out_dir / "gaussians.ply")
    artifacts["preview.png"] = write_png(out_dir / "preview.png",
                                         turntable_preview(mesh, preview_views, preview_size))
    return artifacts
