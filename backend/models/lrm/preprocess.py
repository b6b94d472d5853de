"""Input image -> what an LRM expects: the object masked, recentred to the model's foreground ratio, composited on
the model's background grey and resized to its input resolution.

OpenLRM: border ratio 0.2 (object spans 80 %), white background, bicubic resize. TripoSR: foreground ratio 0.85,
grey 0.5 background, bilinear resize with antialias. The mask comes from the alpha channel; an opaque image gets
one from its border colour (a plain backdrop), since we ship no background-removal network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...errors import BadInput
from .config import LRMConfig


def mask_from_backdrop(rgb: np.ndarray, tolerance: float = 0.08) -> np.ndarray:
    """Foreground alpha ``[H, W]`` in {0, 1} for an opaque ``rgb [H, W, 3]`` on a plain backdrop: pixels farther
    than ``tolerance`` from the median border colour, holes filled, largest component kept."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    fg = np.abs(rgb - np.median(border, axis=0)).max(-1) > tolerance
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(fg, iterations=1))
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg.astype(np.float32)
    sizes = ndimage.sum(fg, labels, range(1, n + 1))
    return (labels == 1 + int(np.argmax(sizes))).astype(np.float32)


def recentre(rgba: np.ndarray, ratio: float, what: str = "image") -> np.ndarray:
    """Crop ``rgba [H, W, 4]`` (float in [0, 1]) to the alpha's bounding box and pad it to a square in which the
    box's longer side is ``ratio`` of the side, centred. Returns ``[S, S, 4]`` at the input's pixel scale."""
    ys, xs = np.nonzero(rgba[..., 3] > 0.5 / 255)
    if len(ys) == 0:
        raise BadInput(f"{what}: the foreground mask is empty (fully transparent image, or no object found on the "
                       f"backdrop)", {"field": "image"})
    crop = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape[:2]
    side = max(int(round(max(h, w) / ratio)), max(h, w))
    out = np.zeros((side, side, 4), dtype=np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = crop
    return out


def preprocess_image(image: np.ndarray, cfg: LRMConfig, foreground_ratio: float | None = None,
                     what: str = "image") -> torch.Tensor:
    """``image [H, W, 3|4]`` float in [0, 1] -> model input ``[1, 3, S, S]`` float32 (S = ``cfg.image_size``)."""
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise BadInput(f"{what}: expected an RGB or RGBA image, got shape {image.shape}", {"field": "image"})
    image = image.astype(np.float32)
    if image.shape[-1] == 3 or image[..., 3].min() > 0.99:
        image = np.concatenate([image[..., :3], mask_from_backdrop(image[..., :3])[..., None]], -1)
    sq = recentre(image, foreground_ratio or cfg.foreground_ratio, what)
    rgb = sq[..., :3] * sq[..., 3:] + cfg.background * (1 - sq[..., 3:])
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    S = cfg.image_size
    if cfg.family == "openlrm":
        x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=True)
    else:
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).contiguous()
