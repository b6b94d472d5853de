"""``python -m gen3d demo [--out DIR]``: the README's main job on an embedded sample.

Spot (Keenan Crane, public domain; ``gen3d/backend/data/spot``) is rendered with ``gen3d.kernels.mesh`` from 16 cameras on
two rings at 256 x 256 into a ``transforms.json`` folder, then reconstructed with ``reconstruct --preset fast``
through the same :func:`~backend.pipelines.runner.run_job` as the server, with its progress. Prints where the
GLB and the preview are.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..geometry.cameras import Cameras, orbit_cameras
from ..representations.mesh import TexturedMesh, load_obj


#: Spot's files: ``spot_triangulated.obj`` (Y up) and ``spot_texture.png``
SPOT_DIR = Path(str(resources.files("gen3d.backend") / "data" / "spot"))


def spot_mesh() -> TexturedMesh:
    """Spot in the Z-up world (its OBJ is Y up), with its texture."""
    mesh = load_obj(SPOT_DIR / "spot_triangulated.obj")
    texture = np.asarray(Image.open(SPOT_DIR / "spot_texture.png").convert("RGB"), dtype=np.float32) / 255.0
    return TexturedMesh(mesh.vertices, mesh.faces, None, mesh.uvs, torch.from_numpy(texture))


def ring_cameras(center, size: float, resolution: int, elevations=(15.0, 45.0), per_ring: int = 8,
                 fov_deg: float = 40.0, offset_deg: float = 0.0) -> Cameras:
    """``per_ring`` cameras on each elevation ring (second ring rotated half a step) looking at ``center``,
    far enough that a sphere of diameter ``size`` fills ~80 % of the view."""
    radius = 0.5 * size / np.sin(np.radians(fov_deg / 2)) / 0.8
    el, az = [], []
    for r, e in enumerate(elevations):
        for k in range(per_ring):
            el.append(e)
            az.append(offset_deg + 360.0 * k / per_ring + (180.0 / per_ring) * r)
    return orbit_cameras(el, az, radius, fov_deg, resolution, resolution, target=tuple(float(c) for c in center))


def render_views(mesh: TexturedMesh, cameras: Cameras) -> torch.Tensor:
    """Straight RGBA renders ``[N,H,W,4]`` of ``mesh`` (colour is un-premultiplied at antialiased edges)."""
    from ..pipelines.stages.mesh_render import render_mesh

    out = []
    with torch.no_grad():
        for i in range(len(cameras)):
            r = render_mesh(mesh, cameras[i])
            a = r.alpha.clamp(0, 1)
            out.append(torch.cat([(r.rgb / a.clamp_min(1e-6)).clamp(0, 1) * (a > 0), a], -1))
    return torch.cat(out)


def make_spot_views(folder: Path, resolution: int = 256, per_ring: int = 8) -> Path:
    """Render Spot into ``folder`` as a transforms.json folder; returns the folder."""
    from ..geometry.transforms import save_transforms

    mesh = spot_mesh()
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    cams = ring_cameras((lo + hi) / 2, float((hi - lo).norm()), resolution, per_ring=per_ring)
    save_transforms(folder, cams, render_views(mesh, cams))
    return folder


def _demo(args) -> int:
    from ..device import pick_device
    from ..pipelines import JobRequest, RunContext
    from .run import run_with_progress

    out = Path(args.out)
    views = out / "input_views"
    print(f"rendering Spot from 16 cameras into {views} ...")
    make_spot_views(views)
    request = JobRequest(method="reconstruct", preset=args.preset, seed=args.seed, files={"views": str(views)})
    artifacts = run_with_progress(request, RunContext(out_dir=out, device=pick_device(args.device)))
    print(f"textured mesh: {artifacts['mesh.glb']}")
    print(f"preview:       {artifacts['preview.png']}")
    print(f"all artifacts and meta.json in {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="render a sample object (Spot) and reconstruct it into a textured GLB")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--preset", default="fast", choices=["fast", "standard", "high"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.set_defaults(func=_demo)
