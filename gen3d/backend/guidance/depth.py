"""Monocular depth prior: a relative (affine-invariant) inverse-depth estimate of the reference image, and the
Pearson-correlation depth loss Magic123 puts on the reference view.

The model is Depth Anything V2 Small (registry ``depth-anything-v2-small``,
``depth-anything/Depth-Anything-V2-Small-hf``, Apache-2.0, 25 M parameters) through transformers'
``AutoModelForDepthEstimation`` in its published layout (``config.json``, ``model.safetensors``,
``preprocessor_config.json``). Magic123 used MiDaS ``dpt_beit_large_512``
(345 M parameters); the loss only correlates depths, so any relative inverse-depth model fits, and this one is 14x
smaller, permissively licensed and at least as accurate on objects. Any other transformers depth model in the same
layout (``Intel/dpt-beit-large-512``) loads through the same code via an explicit path.

Both models predict *disparity-like* values (larger = nearer), so the loss correlates them with the rendered
inverse depth: ``(1 - pearson(1 / depth, mono)) / 2`` over the reference mask (the paper's weight 0.01 x this).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import weights


class MonocularDepth:
    """``predict(rgb [1,3,H,W] in [0,1]) -> [1,1,H,W]`` relative inverse depth (float32, larger = nearer)."""

    def __init__(self, folder: str | os.PathLike, device=None):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.device = torch.device(device or "cpu")
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModelForDepthEstimation.from_pretrained(folder).to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_registry(cls, name: str = "depth-anything-v2-small", path: str | os.PathLike | None = None, **kw):
        """Load a registry entry; raises MissingWeights naming the download command when absent."""
        return cls(weights.resolve(name, path), **kw)

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        h, w = rgb.shape[-2:]
        inputs = self.processor(images=rgb[0].clamp(0, 1).cpu(), return_tensors="pt", do_rescale=False)
        out = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth
        return F.interpolate(out[:, None].float(), (h, w), mode="bicubic", align_corners=False).cpu()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors (a scalar in [-1, 1]; 0 when either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12)


def depth_correlation_loss(depth: torch.Tensor, mono: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1 - pearson(1/depth, mono)) / 2`` over ``mask``: rendered camera depth ``depth [...]`` (inf or <= 0 where
    empty), monocular inverse depth ``mono`` and boolean ``mask`` of the same shape. 0 (no gradient) when fewer
    than 2 pixels are both masked and rendered."""
    valid = mask & torch.isfinite(depth) & (depth > 0)
    if int(valid.sum()) < 2:
        return depth.new_zeros(())
    return (1 - pearson(1.0 / depth[valid], mono[valid].to(depth))) / 2


def write_tiny_depth_anything(out_dir: Path, entry=None) -> None:
    """Depth Anything V2 in the hub layout (DINOv2 backbone, DPT-style neck and head), tiny and random; the
    preprocessor is the published one (keep aspect, multiple of 14, ImageNet mean/std) at 70 px instead of 518."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(out_dir)
    DPTImageProcessor(do_resize=True, size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(out_dir)
