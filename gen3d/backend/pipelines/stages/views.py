"""Views shared by the stages: an image method's reference input (and its monocular depth model, and its target
resized per stage), a resized copy of a set of posed views, and a shuffled cycle through them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ...geometry.cameras import Cameras
from ..base import Options


class ReferenceInputOptions(Options):
    """How an image method prepares its input (:func:`reference_input`)."""

    border_ratio: float = Field(0.2, ge=0, lt=0.9, description="empty border around the recentred object")
    recenter: bool = Field(True, description="crop to the mask and recentre the object")
    rembg_model: str = Field("u2net", description="rembg model for opaque inputs (must be on disk)")


def reference_input(path, size: int, border_ratio: float, recenter: bool, rembg_model: str, out_dir) -> tuple:
    """An image method's input, prepared by :func:`~gen3d.backend.geometry.image_prep.prepare_reference` (mask,
    recentre, ``size x size``), written as ``input.png`` on white into ``out_dir``. Returns ``(straight RGBA
    [1,4,S,S] float in [0,1], {"input.png": path})``."""
    import numpy as np

    from ...geometry.image_prep import prepare_reference
    from .export import write_png

    rgba = prepare_reference(path, size, border_ratio, recenter, rembg_model)
    on_white = rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]
    written = write_png(out_dir / "input.png", (np.clip(on_white, 0, 1) * 255 + 0.5).astype(np.uint8))
    return torch.from_numpy(rgba).permute(2, 0, 1)[None].contiguous(), {"input.png": written}


def reference_depth(ctx, rgba: torch.Tensor, path: str | None):
    """Relative depth ``[1,1,S,S]`` of the reference ``rgba [1,4,S,S]`` (composited on white) by the monocular depth
    model (cached in ``ctx.cache``), and its weights info for meta.json; a missing model raises MissingWeights naming
    its download command."""
    from ... import weights
    from ...guidance.depth import MonocularDepth

    name = "depth-anything-v2-small"
    folder = weights.resolve(name, path)
    key = f"depth:{folder.resolve()}:{ctx.device}"
    if key not in ctx.cache:
        ctx.cache[key] = MonocularDepth(folder, ctx.device)
    depth = ctx.cache[key].predict(rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]))
    return depth, [{"name": name, "path": str(folder), "tiny": weights.is_tiny(folder),
                             "license": weights.get_entry(name).license}]


def resized_reference(reference, size: int):
    """The same :class:`~.distill_gaussians.ReferenceView` target at ``size x size`` (each stage's reference render
    size; colour resized premultiplied)."""
    from dataclasses import replace

    def rs(x):
        if x is None or x.shape[-1] == size:
            return x
        return F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)

    rgba = rs(torch.cat([reference.rgba[:, :3] * reference.rgba[:, 3:], reference.rgba[:, 3:]], 1))
    rgba = torch.cat([rgba[:, :3] / rgba[:, 3:].clamp_min(1e-6), rgba[:, 3:]], 1).clamp(0, 1)
    return replace(reference, rgba=rgba, depth=rs(reference.depth))


def resized_views(cameras: Cameras, images: torch.Tensor, fraction: float) -> tuple[Cameras, torch.Tensor]:
    """``cameras`` and ``images [N,H,W,C]`` at ``fraction`` of their size (at least 16 px a side; area filter)."""
    w, h = max(16, round(cameras.width * fraction)), max(16, round(cameras.height * fraction))
    if (w, h) == (cameras.width, cameras.height):
        return cameras, images
    small = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
    return cameras.resized(w, h), small


class ShuffledViews:
    """View indices ``0..n-1`` in random order, reshuffled after each pass: every view is used once before any
    view repeats."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order, self.cursor = torch.randperm(n, generator=generator), 0

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices."""
        ids = []
        for _ in range(k):
            if self.cursor == self.n:
                self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
            ids.append(int(self.order[self.cursor]))
            self.cursor += 1
        return ids
