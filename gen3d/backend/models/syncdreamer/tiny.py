"""A tiny random SyncDreamer checkpoint in the official layout (``weights tiny``; tests and smoke runs).

The file is what the official code would save for these sizes: a dict with ``state_dict`` in the official names
(LDM VAE, OpenAI CLIP visual tower with packed ``in_proj``, the text leftovers) plus ``gen3d_config`` (the sizes).
:func:`official_state_dict` is the inverse of :func:`.checkpoint.convert_state_dict`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, CLIP_NAMES, CLIP_PREFIX, UNUSED, rename
from .model import SyncDreamer, SyncDreamerConfig

TINY_CONFIG = SyncDreamerConfig(image_size=64, model_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=2, num_heads=2,
                                context_dim=32, volume_dims=(16, 16, 32, 32), time_dim=32, encoder_dim=8,
                                frustum_depth=8, volume_size=8, vae_channels=(8, 8, 16, 16), vae_norm_groups=4,
                                clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, patch_size=14, image_size=224))

_VAE_RENAMES = [  # diffusers -> LDM (after encoder./decoder.)
    (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.block.\2."),
    (r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample."),
    (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
    (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
    (r"mid_block\.attentions\.0\.to_(q|k|v)\.", r"mid.attn_1.\1."),
    (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
    (r"conv_norm_out\.", "norm_out."),
    (r"conv_shortcut\.", "nin_shortcut."),
]


def _vae_to_ldm(key: str, value: torch.Tensor, levels: int) -> tuple[str, torch.Tensor]:
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        part = f"block.{m[3]}." if m[2] == "resnets" else "upsample."
        key = f"decoder.up.{levels - 1 - int(m[1])}.{part}{m[4]}"
    for pattern, repl in _VAE_RENAMES:
        key = re.sub(pattern, repl, key)
    if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
        value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
    return key, value


def _clip_to_openai(key: str, value: torch.Tensor, state: dict) -> None:
    if key == "visual_projection.weight":
        state["visual.proj"] = value.t().contiguous()
        return
    m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", key)
    if m:
        packed = state.setdefault(f"visual.transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", [None] * 3)
        packed["qkv".index(m[2])] = value
        return
    state["visual." + rename(key, CLIP_NAMES, reverse=True)] = value


def official_state_dict(model: SyncDreamer) -> dict[str, torch.Tensor]:
    """Our model's tensors under the official checkpoint's names (plus the unused CLIP text leftovers)."""
    out: dict[str, torch.Tensor] = {}
    clip: dict = {}
    levels = len(model.cfg.vae_channels)
    for key, value in model.state_dict().items():
        if key.startswith("first_stage_model."):
            k, v = _vae_to_ldm(key[len("first_stage_model."):], value, levels)
            out["first_stage_model." + k] = v
        elif key.startswith("clip_image_encoder."):
            if not key.endswith("position_ids"):
                _clip_to_openai(key[len("clip_image_encoder."):], value, clip)
        else:
            out[key] = value
    for k, v in clip.items():
        out[CLIP_PREFIX + k] = torch.cat(v) if isinstance(v, list) else v
    width = model.cfg.context_dim
    shapes = {"token_embedding.weight": (64, width), "positional_embedding": (77, width), "ln_final.weight": (width,),
              "ln_final.bias": (width,), "text_projection": (width, width), "logit_scale": ()}
    for key in UNUSED:
        out[key] = torch.zeros(shapes[key[len(CLIP_PREFIX):]])
    return out


def write_tiny(out_dir: Path, entry=None, seed: int = 0) -> Path:
    """Write ``out_dir/syncdreamer-pretrain.ckpt`` with :data:`TINY_CONFIG` and random weights (the depth-wise
    attention's zero-initialised output convolutions are randomised too, so the volume path matters)."""
    torch.manual_seed(seed)
    model = SyncDreamer(TINY_CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conditions" in name and name.endswith("proj_out.5.weight"):
                p.normal_(0, 0.02)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT_NAME
    torch.save({"state_dict": official_state_dict(model), "gen3d_config": TINY_CONFIG.to_dict()}, path)
    return path
