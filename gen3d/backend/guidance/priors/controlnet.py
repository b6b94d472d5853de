"""ControlNet canny (SD 1.5 and SDXL) through diffusers' pipelines: geometry-controlled images for the dataset method.

``generate(control, prompt)`` renders images whose edges follow ``control`` (a canny edge map, see :func:`canny`);
``refine(images, control, prompt, strength)`` is SDEdit under the same control (diffusers' img2img strength: the
fraction of the trajectory re-run, 1 = from noise). Images are ``[B,3,H,W]`` float in [0,1]; H and W multiples of 8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ... import weights
from .base import default_dtype, fp16_variant

#: base model entry -> its ControlNet canny entry
CANNY_ENTRIES = {"sd15": "controlnet-canny-sd15", "sdxl-base": "controlnet-canny-sdxl"}


def canny(images: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """Canny edges of ``[B,3,H,W]`` in [0,1] -> ``[B,3,H,W]`` in {0,1} (white edges on black, ControlNet's input)."""
    from ...geometry.edges import canny_edges

    out = []
    for img in images.detach().float().clamp(0, 1).cpu():
        rgb = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append(torch.from_numpy(canny_edges(rgb, low, high) > 0).float())
    return torch.stack(out)[:, None].expand(-1, 3, -1, -1).contiguous()


class ControlNetCanny:
    """A canny ControlNet over its base model, SD 1.5 or SDXL (``sdxl`` picks the pipeline classes)."""

    def __init__(self, base_folder: str | os.PathLike, controlnet_folder: str | os.PathLike, sdxl: bool = False,
                 device=None, dtype=None):
        from diffusers import (ControlNetModel, StableDiffusionControlNetImg2ImgPipeline,
                               StableDiffusionControlNetPipeline, StableDiffusionXLControlNetImg2ImgPipeline,
                               StableDiffusionXLControlNetPipeline)

        base_folder, controlnet_folder = Path(base_folder), Path(controlnet_folder)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or default_dtype(self.device)
        controlnet = ControlNetModel.from_pretrained(controlnet_folder, torch_dtype=self.dtype,
                                                     variant=fp16_variant(controlnet_folder))
        text2img, img2img = ((StableDiffusionXLControlNetPipeline, StableDiffusionXLControlNetImg2ImgPipeline) if sdxl
                             else (StableDiffusionControlNetPipeline, StableDiffusionControlNetImg2ImgPipeline))
        extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
        self.pipe = text2img.from_pretrained(base_folder, controlnet=controlnet, torch_dtype=self.dtype,
                                             variant=fp16_variant(base_folder / "unet"), **extra).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.img2img = img2img(**self.pipe.components)
        self.img2img.set_progress_bar_config(disable=True)

    @classmethod
    def from_registry(cls, base: str = "sd15", **kw) -> "ControlNetCanny":
        """``base`` is ``sd15`` or ``sdxl-base``; both its entry and the ControlNet entry must be present."""
        if base not in CANNY_ENTRIES:
            raise ValueError(f"no canny ControlNet for {base!r}; choose one of {', '.join(CANNY_ENTRIES)}")
        return cls(weights.resolve(base), weights.resolve(CANNY_ENTRIES[base]), sdxl=base == "sdxl-base", **kw)

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(seed)

    @torch.no_grad()
    def generate(self, control: torch.Tensor, prompt: str, negative_prompt: str = "", steps: int = 30,
                 guidance_scale: float = 7.5, conditioning_scale: float = 1.0, seed: int = 0) -> torch.Tensor:
        """Images ``[B,3,H,W]`` in [0,1] following ``control [B,3,H,W]`` (H, W of the control image)."""
        b, _, h, w = control.shape
        return self.pipe(prompt=[prompt] * b, negative_prompt=[negative_prompt] * b, image=control.to(self.dtype),
                         height=h, width=w, num_inference_steps=steps, guidance_scale=guidance_scale,
                         controlnet_conditioning_scale=conditioning_scale, generator=self._generator(seed),
                         output_type="pt").images.float()

    @torch.no_grad()
    def refine(self, images: torch.Tensor, control: torch.Tensor, prompt: str, strength: float = 0.5,
               negative_prompt: str = "", steps: int = 30, guidance_scale: float = 7.5,
               conditioning_scale: float = 1.0, seed: int = 0) -> torch.Tensor:
        """SDEdit of ``images`` under ``control`` (diffusers' strength convention)."""
        b, _, h, w = images.shape
        return self.img2img(prompt=[prompt] * b, negative_prompt=[negative_prompt] * b, image=images.to(self.dtype),
                            control_image=control.to(self.dtype), height=h, width=w, strength=strength,
                            num_inference_steps=steps, guidance_scale=guidance_scale,
                            controlnet_conditioning_scale=conditioning_scale, generator=self._generator(seed),
                            output_type="pt").images.float()
