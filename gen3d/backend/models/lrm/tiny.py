"""Tiny random LRMs written in the published layouts, for tests and offline smoke runs.

Each factory writes a folder that the real loaders read unchanged: OpenLRM ``config.json`` + ``model.safetensors``
(one variant with separate cross-attention q/k/v like small/large, one packed like base) and TripoSR
``config.yaml`` + ``model.ckpt``. Weights are random; the density of the last NeRF layer is offset so that the
model's own meshing level cuts through the predicted field (random weights would otherwise give empty space), so
every stage of the ``lrm`` method has something to work on. The shapes they predict are noise.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import resolve_interpolations, save_openlrm, save_triposr
from .config import TRIPOSR_HUB_CONFIG, LRMConfig, from_openlrm_config, from_triposr_config
from .model import LRM

TINY_OPENLRM: dict[str, Any] = {
    "camera_embed_dim": 32, "rendering_samples_per_ray": 24, "transformer_dim": 64, "transformer_layers": 2,
    "transformer_heads": 4, "triplane_low_res": 4, "triplane_high_res": 8, "triplane_dim": 8,
    "encoder_type": "dinov2", "encoder_model_name": "dinov2_vits14_reg", "encoder_feat_dim": 32,
    "encoder_freeze": False,
    # our extras (a 2-layer, 32-wide DINOv2 on a 4x4 position grid, 84-pixel input, 64-pixel renders)
    "encoder_dim": 32, "encoder_layers": 2, "encoder_heads": 2, "encoder_pos_grid": 4, "source_size": 84,
    "render_size": 64,
}
#: the packed cross-attention form (encoder width == transformer width, like openlrm-base)
TINY_OPENLRM_PACKED: dict[str, Any] = {**TINY_OPENLRM, "transformer_dim": 32, "transformer_heads": 2}


def tiny_triposr_yaml() -> dict[str, Any]:
    cfg = copy.deepcopy(TRIPOSR_HUB_CONFIG)
    cfg["cond_image_size"] = 96
    cfg["image_tokenizer"]["vit_config"] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                            "intermediate_size": 128, "patch_size": 16, "image_size": 64,
                                            "layer_norm_eps": 1e-12, "qkv_bias": True}
    cfg["tokenizer"] = {"plane_size": 4, "num_channels": 64}
    cfg["backbone"] = {"in_channels": "${tokenizer.num_channels}", "num_attention_heads": 2,
                       "attention_head_dim": 32, "num_layers": 2, "cross_attention_dim": 32}
    cfg["post_processor"] = {"in_channels": 64, "out_channels": 8}
    cfg["decoder"] = {"in_channels": 24, "n_neurons": 16, "n_hidden_layers": 3, "activation": "silu"}
    cfg["renderer"] = {**cfg["renderer"], "num_samples_per_ray": 24}
    return cfg


def random_lrm(cfg: LRMConfig, seed: int = 0, model_class: type[LRM] = LRM, example: tuple = ()) -> LRM:
    """An LRM with seeded random weights (LayerNorms at identity, small linear weights), meshable at its level.
    ``example``: ``forward_planes`` arguments for the density calibration (default: one random image)."""
    gen = torch.Generator().manual_seed(seed)
    model = model_class(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".norm.weight", "norm1.weight", "norm2.weight", "in_norm.weight", "out_norm.weight")):
                p.fill_(1.0)
            elif name.endswith("gamma"):
                p.fill_(0.1)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / max(p.shape[1] * p[0, 0].numel(), 1) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for name, p in model.named_parameters():
            if name.endswith("tokens") or name.endswith("pos_embed"):
                p.mul_(20.0)  # make the planes vary strongly with position
        _calibrate_density(model, gen, example)
    return model.eval()


def _calibrate_density(model: LRM, gen: torch.Generator, example: tuple) -> None:
    """Shift the density output so that ~15 % of a coarse grid lies above the model's meshing level."""
    cfg = model.cfg
    image = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=gen)
    planes = model.forward_planes(*(example or (image,)))
    field = model.field(planes[0])
    lin = torch.linspace(-cfg.radius * 0.6, cfg.radius * 0.6, 16)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    raw, _ = field.raw(pts)
    target = {"softplus": lambda y: y + torch.log(-torch.expm1(torch.tensor(-y))).item(),
              "exp": lambda y: torch.log(torch.tensor(y)).item()}[cfg.density_activation](cfg.mesh_level)
    shift = target - cfg.density_bias - torch.quantile(raw, 0.85).item()
    model.nerf.net[-1].bias[0] += shift


def write_tiny_openlrm(folder: str | Path, packed: bool = False, seed: int = 0) -> Path:
    """Tiny OpenLRM in the hub layout; ``packed`` selects the ``in_proj_weight`` cross-attention form."""
    config = TINY_OPENLRM_PACKED if packed else TINY_OPENLRM
    return save_openlrm(random_lrm(from_openlrm_config(config), seed), folder, config)


def write_tiny_triposr(folder: str | Path, seed: int = 0) -> Path:
    """Tiny TripoSR in the hub layout (``config.yaml`` + pickled ``model.ckpt``)."""
    yaml_cfg = tiny_triposr_yaml()
    cfg = from_triposr_config(resolve_interpolations(yaml_cfg))
    return save_triposr(random_lrm(cfg, seed), folder, yaml_cfg)


def tiny_factories() -> dict[str, Callable[[Path], Path]]:
    """Weights-registry name -> ``factory(folder) -> folder`` writing that entry's tiny stand-in (base is packed
    like the real base, small and large use separate cross-attention q/k/v like theirs)."""
    return {
        "openlrm-small": lambda d: write_tiny_openlrm(d, packed=False),
        "openlrm-base": lambda d: write_tiny_openlrm(d, packed=True),
        "openlrm-large": lambda d: write_tiny_openlrm(d, packed=False),
        "triposr": write_tiny_triposr,
    }


def write_tiny(out_dir: Path, entry) -> None:
    """The weights registry's ``tiny_factory`` hook (``gen3d.backend.models.lrm.tiny:write_tiny``)."""
    tiny_factories()[entry.name](Path(out_dir))
