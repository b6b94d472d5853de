"""CLIP pixels of a reference image, made exactly as the published image-conditioned pipelines make them.

Zero123 (diffusers ``Zero123Pipeline``, DreamGaussian's ``guidance/zero123_utils.py``), Stable Zero123 and
ImageDream all do the same two steps, which every prior that encodes a reference image with CLIP shares here:

1. the float image ``[B,3,H,W]`` in [0, 1] becomes 8 bits by **truncation**, ``(x·255)`` cast to uint8
   (torchvision's ``to_pil_image`` does ``pic.mul(255).byte()``; ImageDream ``(image·255).astype(np.uint8)``);
2. the hub folder's own ``feature_extractor`` (a ``CLIPImageProcessor``: PIL bicubic resize of the shortest edge,
   centre crop, rescale by 1/255, normalise; ``feature_extractor/preprocessor_config.json``) makes the pixels.

We use transformers' PIL backend of that processor (``CLIPImageProcessorPil``) explicitly: the torchvision backend,
chosen by ``CLIPImageProcessor`` when torchvision is installed, resizes differently from the PIL processor the
published pipelines ran. A folder without ``feature_extractor/`` gets the same processor with OpenAI CLIP's values
(bicubic, mean/std of OpenAI CLIP) at the image encoder's input size, and a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B,3,H,W]`` float in [0, 1] -> ``[B,H,W,3]`` uint8 by truncation (``(x·255)`` cast, as ``to_pil_image``)."""
    x = images.detach().to("cpu", torch.float32).clamp(0, 1).mul(255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_clip_processor(folder: str | Path, image_size: int, subfolder: str = "feature_extractor"):
    """The folder's ``CLIPImageProcessor`` (PIL backend); OpenAI CLIP's at ``image_size`` when it has none."""
    from transformers import CLIPImageProcessorPil

    if (Path(folder) / subfolder / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(Path(folder) / subfolder)
    log.warning("%s has no %s/preprocessor_config.json: using OpenAI CLIP's preprocessing at %d px", folder,
                subfolder, image_size)
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def clip_pixels(images: torch.Tensor, processor) -> torch.Tensor:
    """CLIP input ``[B,3,S,S]`` float32 of ``images [B,3,H,W]`` in [0, 1] (module docstring: 8-bit by truncation,
    then ``processor``, a CLIP image processor from :func:`load_clip_processor`)."""
    from PIL import Image

    pil = [Image.fromarray(a) for a in to_uint8(images)]
    return processor(images=pil, return_tensors="pt").pixel_values.float()
