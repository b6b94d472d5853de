"""Stage 3: UV-unwrap a mesh with xatlas.

Vertices are split along UV seams so every vertex has exactly one UV (what glTF and :class:`TexturedMesh` need).
UVs follow the mesh convention: ``v`` up, in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import xatlas

from ...representations.mesh import TexturedMesh

log = logging.getLogger(__name__)


@dataclass
class UnwrapConfig:
    resolution: int = 1024   #: texture size the charts are packed for
    padding: int = 4         #: texels between charts (room for dilation, so mipmaps do not bleed)
    max_iterations: int = 1  #: xatlas chart-growing iterations (more = fewer, better charts, slower)
    #: a chart covers at most this fraction of the surface: xatlas' time grows steeply with chart size (Spot at
    #: 50k faces: 25 s of CPU uncapped, 4 s at 0.02, ~6 s at 0.04); at 0.02 the bake lost 0.04-0.12 dB, at 0.04 none
    max_chart_area: float = 0.04
    bilinear: bool = True    #: leave a texel around charts for bilinear filtering


def uv_unwrap(vertices: np.ndarray, faces: np.ndarray, cfg: UnwrapConfig = UnwrapConfig()) -> TexturedMesh:
    """Charts and packs ``vertices [V,3]``, ``faces [F,3]``; returns a :class:`TexturedMesh` with ``uvs`` and
    vertex normals (no texture yet)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    chart = xatlas.ChartOptions()
    chart.max_iterations = cfg.max_iterations
    if cfg.max_chart_area > 0:
        v = np.asarray(vertices, np.float64)[np.asarray(faces)]
        area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum()
        chart.max_chart_area = float(cfg.max_chart_area * area)
    pack = xatlas.PackOptions()
    pack.resolution = cfg.resolution
    pack.padding = cfg.padding
    pack.bilinear = cfg.bilinear
    atlas.generate(chart, pack)
    vmap, new_faces, uvs = atlas[0]
    log.info("uv: %d charts, %.0f %% of the atlas used, %d -> %d vertices", atlas.chart_count,
             100 * atlas.utilization, len(vertices), len(vmap))
    # normals from the unsplit mesh, so shading stays smooth across UV seams
    normals = TexturedMesh(vertices, faces).with_vertex_normals().normals[torch.from_numpy(vmap.astype(np.int64))]
    return TexturedMesh(torch.from_numpy(np.asarray(vertices, np.float32)[vmap]),
                        torch.from_numpy(new_faces.astype(np.int64)), normals,
                        torch.from_numpy(uvs.astype(np.float32)))
