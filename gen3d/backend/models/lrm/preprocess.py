"""Input image -> what an LRM expects: the object masked, recentred to the model's foreground ratio, composited on
the model's background grey and resized to its input resolution.

OpenLRM: border ratio 0.2 (object spans 80 %), white background, bicubic resize (``align_corners=True``, as its
inference code). TripoSR: foreground ratio 0.85, grey 0.5 background, bilinear resize with antialias. Masking and
recentring are the shared ones of :mod:`backend.geometry.image_prep` (alpha, else rembg when installed locally).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...geometry.image_prep import ensure_mask, recentre
from .config import LRMConfig


def preprocess_image(image: np.ndarray, cfg: LRMConfig, foreground_ratio: float | None = None,
                     what: str = "image") -> torch.Tensor:
    """``image [H, W, 3|4]`` float in [0, 1] -> model input ``[1, 3, S, S]`` float32 (S = ``cfg.image_size``)."""
    sq = recentre(ensure_mask(image, what), foreground_ratio or cfg.foreground_ratio, what)
    return model_input(torch.from_numpy(np.ascontiguousarray(sq)).permute(2, 0, 1)[None], cfg)


def model_input(rgba: torch.Tensor, cfg: LRMConfig) -> torch.Tensor:
    """Square ``rgba [B, 4, H, H]`` (straight alpha, in [0, 1]) composited on the model's background and resized to
    its input resolution as its inference code does -> ``[B, 3, S, S]`` float32."""
    x = rgba[:, :3] * rgba[:, 3:] + cfg.background * (1 - rgba[:, 3:])
    S = cfg.image_size
    if cfg.family == "openlrm":
        x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=True)
    else:
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).contiguous()
