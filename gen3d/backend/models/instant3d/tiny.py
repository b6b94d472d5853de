"""Tiny random InstantMesh NeRF reconstructors in the published layout (``instant_nerf_{base,large}.ckpt``, a
Lightning-style ``state_dict`` under ``lrm_generator.``), plus ``instantmesh_config.json`` with the tiny sizes (the
published folder has no such file; the loader then uses the published configs). Random weights, density offset so
that the meshing level cuts the field (see ``models/lrm/tiny.py``): the shapes they predict are noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..lrm.tiny import random_lrm
from .checkpoints import save_instantmesh
from .reconstructor import INSTANTMESH_CONFIGS, SparseViewLRM, encode_cameras, from_instantmesh_config, \
    zero123plus_cameras

#: a 2-layer 32-wide DINO ViT (16-pixel patches, 4x4 position grid, 80-pixel input: 5x5, so the resize runs),
#: a 2-layer 64-wide triplane transformer on 4x4 planes of 8 channels, 24 samples per ray
TINY_OVERRIDES: dict[str, Any] = {
    "encoder_feat_dim": 32, "transformer_dim": 64, "transformer_layers": 2, "transformer_heads": 4,
    "triplane_low_res": 4, "triplane_high_res": 8, "triplane_dim": 8, "rendering_samples_per_ray": 24,
    "encoder_vit_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 128, "patch_size": 16, "image_size": 64, "layer_norm_eps": 1e-12,
                           "qkv_bias": True},
    "input_size": 80, "render_size": 64,
}


def tiny_params(size: str = "base") -> dict[str, Any]:
    return {**INSTANTMESH_CONFIGS[size], **TINY_OVERRIDES}


def random_reconstructor(params: dict[str, Any], seed: int = 0) -> SparseViewLRM:
    """Seeded random SparseViewLRM (camera modulation non-zero), density calibrated on the six Zero123++ views."""
    cfg = from_instantmesh_config(params)
    gen = torch.Generator().manual_seed(seed + 1)
    views = torch.rand(1, 6, 3, cfg.image_size, cfg.image_size, generator=gen)
    cams = encode_cameras(zero123plus_cameras(cfg.image_size))[None]
    return random_lrm(cfg, seed, SparseViewLRM, (views, cams))


def write_tiny_instantmesh(folder: str | Path, size: str = "base", seed: int = 0) -> Path:
    params = tiny_params(size)
    return save_instantmesh(random_reconstructor(params, seed), folder, size, TINY_OVERRIDES)


def write_tiny(out_dir: Path, entry) -> None:
    """The weights registry's ``tiny_factory`` hook for ``instantmesh-nerf-{base,large}``."""
    write_tiny_instantmesh(Path(out_dir), entry.name.rsplit("-", 1)[1])
