"""Multi-view training renders: one nerfstudio folder per object (``python -m gen3d dataset multiview``).

``OUT/<class>/<model_id>/``:

- ``transforms.json``: what :func:`~backend.geometry.transforms.load_transforms` (and so ``reconstruct``) reads:
  per frame ``file_path`` (``rgba/NNN.png``), the OpenGL camera-to-world ``transform_matrix`` in Blender's Z-up
  world, shared intrinsics ``fl_x fl_y cx cy w h`` (pixel centres at half-integers); per frame also ``azimuth``,
  ``elevation``, ``distance`` (our orbit convention, :mod:`.poses`) and ``<pass>_file_path`` for every extra pass;
  at the top level ``orbit``, ``normalization`` and ``ccm`` (below).
- ``rgba/NNN.png``: 8-bit RGBA, sRGB (view transform Standard), straight alpha from the transparent film.
- ``depth/NNN.npy``: float32 ``[H,W]``, distance along the optical axis in world units (the normalised object's;
  Blender metres), ``inf`` where the pixel-centre ray misses.
- ``normal/NNN.png``: world-space face normals as RGB ``(n + 1) / 2``; a miss is ``n = 0`` (mid-grey).
- ``ccm/NNN.png``: the canonical coordinate map, see :func:`ccm_image`.

Depth, normals and CCM come from one ray per pixel centre against the normalised triangles (no anti-aliasing: a
pixel is covered when its centre ray hits), whatever the engine; RGBA is the engine's anti-aliased render.

Normalisation (recorded as ``normalization``): the imported model (OBJ/PLY turned Z up by ``up_axis``, glTF by
its importer) is scaled and moved so that ``world = scale * (model + offset)`` has a longest side of 1 centred at
the origin; ``bbox_min``/``bbox_max`` is its world box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_json
from ..geometry.cameras import Cameras
from ..geometry.ccm import CCM_MARGIN, canonical_coordinates, ccm_frame
from ..geometry.transforms import FILENAME, transforms_meta
from .poses import RINGS, Pose, orbit_poses, ring_poses
from .render import LoadedModel, SceneSettings, View, geometry_maps, save_normal, save_npy, save_png

PASSES = ("rgba", "depth", "normal", "ccm")
ORBITS = ("random", *RINGS)
#: Zero123's 35 mm lens on a 32 mm sensor
DEFAULT_FOV = math.degrees(2 * math.atan(16.0 / 35.0))


def ccm_image(position: np.ndarray, centre: np.ndarray, half_extent: np.ndarray) -> np.ndarray:
    """The CCM pass ``[H,W,4] uint8`` of world hit points ``[H,W,3]`` (NaN where no surface).

    RGB = ``round(255 * (c + 1) / 2)`` of the canonical coordinates ``c``, alpha = 255 where the pixel-centre ray
    hits the surface, 0 elsewhere (RGB 0 there). SweetDreamer's 4-channel network input is
    ``[alpha * (2 * rgb - 1), 2 * alpha - 1]`` with rgb and alpha in [0, 1] (its ``comp_cmm``: the opacity-weighted
    coordinates and ``opacity * 2 - 1``); decoding loses at most 1/255 per coordinate.
    """
    hit = np.isfinite(position).all(-1)
    c = canonical_coordinates(np.where(hit[..., None], position, 0.0), centre, half_extent)
    rgb = np.where(hit[..., None], np.round(255 * (np.clip(c, -1, 1) + 1) / 2), 0)
    return np.concatenate([rgb, 255 * hit[..., None]], -1).astype(np.uint8)


@dataclass
class MultiviewSettings(SceneSettings):
    """The multi-view kind: ``orbit`` ``random`` (:func:`~.poses.orbit_poses` within ``elevation`` and
    ``distance``, ``views`` per model) or a ring of :data:`~.poses.RINGS` (its own views, distance and FoV;
    ``ring_elevation`` sets a single-elevation ring's elevation); ``passes`` a subset of :data:`PASSES` with
    ``rgba``; ``fov_deg`` 0 = the orbit's own (49.1° for ``random``), which sets ``lens_mm``."""

    views: int = 32
    orbit: str = "random"
    elevation: tuple[float, float] = (-90.0, 90.0)
    distance: tuple[float, float] = (1.5, 2.2)
    ring_elevation: float | None = None
    passes: tuple[str, ...] = ("rgba",)
    fov_deg: float = 0.0

    def __post_init__(self):
        if self.orbit not in ORBITS:
            raise ValueError(f"orbit must be one of {', '.join(ORBITS)}, got {self.orbit!r}")
        unknown = sorted(set(self.passes) - set(PASSES))
        if unknown or "rgba" not in self.passes:
            raise ValueError(f"passes must include rgba and come from {', '.join(PASSES)}, got {','.join(self.passes)}")
        self.passes = tuple(p for p in PASSES if p in self.passes)
        self.elevation, self.distance = tuple(self.elevation), tuple(self.distance)
        if not (-90 <= self.elevation[0] <= self.elevation[1] <= 90):
            raise ValueError(f"elevation range must satisfy -90 <= low <= high <= 90, got {list(self.elevation)}")
        if not (0 < self.distance[0] <= self.distance[1]):
            raise ValueError(f"distance range must satisfy 0 < low <= high, got {list(self.distance)}")
        fov = self.fov_deg or (RINGS[self.orbit].fov_deg if self.orbit in RINGS else DEFAULT_FOV)
        if not 0 < fov < 180:
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov}")
        self.lens_mm = self.sensor_mm / 2 / math.tan(math.radians(fov) / 2)
        if self.orbit in RINGS:
            ring_poses(self.orbit, elevation=self.ring_elevation)  # raises on an elevation the ring cannot take
            self.views = len(RINGS[self.orbit].azimuths)

    def poses(self, seed: int) -> list[Pose]:
        if self.orbit == "random":
            return orbit_poses(self.views, elevation=self.elevation, distance=self.distance, seed=seed)
        return ring_poses(self.orbit, elevation=self.ring_elevation)

    def write_view(self, out: Path, model: LoadedModel, view: View) -> dict[str, str]:
        files = {p: f"{p}/{view.stem}.{'npy' if p == 'depth' else 'png'}" for p in self.passes}
        save_png(out / files["rgba"], view.rgba)
        if len(self.passes) > 1:
            depth, normal, position = geometry_maps(model.verts, model.tris, view.K, view.c2w, self.size, self.size)
            if "depth" in files:
                save_npy(out / files["depth"], depth)
            if "normal" in files:
                save_normal(out / files["normal"], normal)
            if "ccm" in files:
                save_png(out / files["ccm"], ccm_image(position, *ccm_frame(model.lo, model.hi)))
        return files

    def finish(self, out: Path, model: LoadedModel, views: list[View], files: list[dict[str, str]]) -> None:
        cameras = Cameras(np.stack([v.K for v in views]), np.stack([v.c2w for v in views]), self.size, self.size)
        frames = [{"file_path": f["rgba"], **{f"{p}_file_path": f[p] for p in self.passes if p != "rgba"},
                   "azimuth": v.pose.azimuth, "elevation": v.pose.elevation, "distance": v.pose.distance}
                  for v, f in zip(views, files)]
        centre, half = ccm_frame(model.lo, model.hi)
        meta = transforms_meta(cameras, frames)
        meta.update({
            "orbit": self.orbit,
            "world": "Blender's, Z up, front view (azimuth 0) looking from -Y; transform_matrix OpenGL axes",
            "normalization": {"scale": float(model.scale), "offset": np.asarray(model.offset).tolist(),
                              "bbox_min": np.asarray(model.lo).tolist(), "bbox_max": np.asarray(model.hi).tolist()},
            "ccm": {"centre": centre.tolist(), "half_extent": half.tolist(), "margin": CCM_MARGIN,
                    "encoding": "rgb = (world - centre) / half_extent * 0.5 + 0.5, alpha = pixel-centre ray hits"},
        })
        write_json(out / FILENAME, meta)

    def manifest_lines(self, record: dict, prefix: str) -> list[dict]:
        """One line per object: its folder, ``transforms.json``, number of views and passes."""
        return [{"model_id": record["model_id"], "class": record["category"], "status": "ok", "path": prefix,
                 "transforms": f"{prefix}/{FILENAME}", "views": len(record["views"]), "passes": list(record["settings"]["passes"])}]
