"""A tiny analytic scene for end-to-end jobs: a two-coloured sphere ray-traced from orbit cameras (not rendered
by the code under test), written as a ``transforms.json`` folder and zipped for upload."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from gen3d.backend.geometry.cameras import orbit_cameras
from gen3d.backend.geometry.transforms import save_transforms

RADIUS = 0.5


def sphere_views(n: int = 6, size: int = 64) -> tuple[object, torch.Tensor]:
    """``n`` cameras on two rings and ``[n, size, size, 4]`` RGBA renders of a sphere of radius 0.5 at the origin:
    red above z = 0, blue below, lit by its normal's z, transparent background."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    el = torch.where(torch.arange(n) % 2 == 0, torch.tensor(20.0), torch.tensor(-10.0))
    cams = orbit_cameras(el, az, 2.2, 40.0, size, size)
    o, d = cams.pixel_rays()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    p = o + t[..., None] * d
    normal = p / RADIUS
    shade = 0.6 + 0.4 * normal[..., 2:3].clamp(-1, 1)
    colour = torch.where(p[..., 2:3] > 0, torch.tensor([0.9, 0.2, 0.2]), torch.tensor([0.2, 0.3, 0.9])) * shade
    rgba = torch.cat([colour * hit[..., None], hit[..., None].float()], -1)
    return cams, rgba


def sphere_views_zip(tmp: Path, n: int = 6, size: int = 64) -> bytes:
    cams, rgba = sphere_views(n, size)
    folder = tmp / "sphere"
    save_transforms(folder, cams, rgba)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp).as_posix())
    return buf.getvalue()
