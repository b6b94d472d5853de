"""The input image exactly as the official ``generate.py`` prepares it (``ldm/util.py: prepare_inputs``).

On the 8-bit RGBA image (PIL): with ``crop_size > 0``, crop to the box of pixels with non-zero alpha (PIL's box, whose
right and bottom edges are exclusive, so the last row and column of the object are cut as in the original), resize
the longer side to ``crop_size`` (bicubic, ``int()`` of the scaled sizes) and paste it centred into a transparent
256^2 square; with ``crop_size = -1``, pad to a centred square and resize it to 256^2 (bicubic). Then composite on
white in float and map to [-1, 1]. The README recommends ``crop_size`` 200 (also 180 or 150).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput


def _paste_centred(im: Image.Image, size: int) -> Image.Image:
    out = Image.new(im.mode, (size, size), 0)
    out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out


def prepare_input(rgba: np.ndarray, crop_size: int = 200, size: int = 256, what: str = "image") -> torch.Tensor:
    """``rgba [H, W, 4]`` uint8 -> ``[3, size, size]`` float32 in [-1, 1], object on white (module docstring)."""
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha)
    if len(ys) == 0:
        raise BadInput(f"{what}: the image is empty (alpha is zero everywhere)", {"field": "image"})
    im = Image.fromarray(rgba, "RGBA")
    if crop_size > 0:
        im = im.crop((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        if min(im.size) == 0:
            raise BadInput(f"{what}: the object is a single row or column of pixels", {"field": "image"})
        scale = crop_size / max(im.height, im.width)
        im = im.resize((max(int(scale * im.width), 1), max(int(scale * im.height), 1)), Image.BICUBIC)
        im = _paste_centred(im, size)
    else:
        im = _paste_centred(im, max(im.height, im.width)).resize((size, size), Image.BICUBIC)
    x = np.asarray(im).astype(np.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:] + 1 - x[..., 3:]
    return torch.from_numpy(rgb * 2.0 - 1.0).permute(2, 0, 1).contiguous()
