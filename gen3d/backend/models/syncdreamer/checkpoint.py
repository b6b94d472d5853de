"""Read the official Lightning checkpoint ``syncdreamer-pretrain.ckpt`` unchanged.

The file is a torch pickle whose ``state_dict`` holds every tensor of ``SyncMultiviewDiffusion`` (the key list is
``tests/data/checkpoint_keys/syncdreamer.json``). It is read tensors-only (``weights_only=True``). Names map to ours:

- ``first_stage_model.*`` (LDM VAE names) -> diffusers ``AutoencoderKL`` with diffusers' own converter
  (``convert_ldm_vae_checkpoint``);
- ``clip_image_encoder.model.visual.*`` (OpenAI CLIP ViT-L/14) -> transformers ``CLIPVisionModelWithProjection``
  (:data:`CLIP_NAMES`, packed ``in_proj`` split into q/k/v, ``proj`` transposed). The checkpoint carries the
  image tower in full (generate.py loads ``ViT-L-14.ckpt`` first, then the strict state-dict load overwrites it
  with these same frozen values), so no second file is needed;
- the text-tower leftovers the official code keeps but never uses (:data:`UNUSED`) are dropped;
- everything else (UNet, volume nets, ``cc_projection``, buffers) keeps its name.

Missing or unexpected tensors, or wrong shapes, are one :class:`~backend.errors.BadInput` naming the first few.
Tiny checkpoints written by :mod:`.tiny` add a ``gen3d_config`` entry with their sizes; the real file has none and
gets the published sizes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ...errors import BadInput
from .model import SyncDreamer, SyncDreamerConfig

CHECKPOINT_NAME = "syncdreamer-pretrain.ckpt"
CLIP_PREFIX = "clip_image_encoder.model."
UNUSED = tuple(CLIP_PREFIX + k for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight",
                                         "ln_final.bias", "text_projection", "logit_scale"))
#: OpenAI visual names (after ``visual.``) <-> transformers CLIPVisionModelWithProjection names; ``{}`` = layer,
#: a trailing dot = a prefix
CLIP_NAMES = [
    ("class_embedding", "vision_model.embeddings.class_embedding"),
    ("conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("ln_pre.", "vision_model.pre_layrnorm."),
    ("ln_post.", "vision_model.post_layernorm."),
    ("transformer.resblocks.{}.attn.out_proj.", "vision_model.encoder.layers.{}.self_attn.out_proj."),
    ("transformer.resblocks.{}.ln_1.", "vision_model.encoder.layers.{}.layer_norm1."),
    ("transformer.resblocks.{}.ln_2.", "vision_model.encoder.layers.{}.layer_norm2."),
    ("transformer.resblocks.{}.mlp.c_fc.", "vision_model.encoder.layers.{}.mlp.fc1."),
    ("transformer.resblocks.{}.mlp.c_proj.", "vision_model.encoder.layers.{}.mlp.fc2."),
]


def rename(key: str, pairs, reverse: bool = False) -> str | None:
    """``key`` renamed by the first matching (source, target) template pair (target -> source with ``reverse``)."""
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        m = re.match("^" + re.escape(src).replace(r"\{\}", r"(\d+)"), key)
        if m and (src.endswith(".") or m.end() == len(key)):
            return dst.format(*m.groups()) + key[m.end():]
    return None


_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _convert_clip(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in visual.items():
        if key == "proj":
            out["visual_projection.weight"] = value.t()
            continue
        m = _IN_PROJ.match(key)
        if m:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, 0)):
                out[f"vision_model.encoder.layers.{m[1]}.self_attn.{name}.{m[2]}"] = part
            continue
        out[rename(key, CLIP_NAMES) or "?" + key] = value  # "?": reported as unexpected
    return out


def convert_state_dict(state: dict[str, torch.Tensor], cfg: SyncDreamerConfig) -> dict[str, torch.Tensor]:
    """Official ``state_dict`` -> ours (module docstring). Works on meta tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    out, vae, visual = {}, {}, {}
    for key, value in state.items():
        if key in UNUSED:
            continue
        if key.startswith("first_stage_model."):
            vae[key] = value
        elif key.startswith(CLIP_PREFIX + "visual."):
            visual[key[len(CLIP_PREFIX + "visual."):]] = value
        elif key.startswith(CLIP_PREFIX):
            out["?" + key] = value
        else:
            out[key] = value
    n = len(cfg.vae_channels)
    vae_cfg = {"down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n}
    out.update({"first_stage_model." + k: v for k, v in convert_ldm_vae_checkpoint(vae, vae_cfg).items()})
    out.update({"clip_image_encoder." + k: v for k, v in _convert_clip(visual).items()})
    return out


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise one :class:`BadInput` when ``state`` (our names) misses, adds or reshapes any of ``model``'s tensors."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(k.lstrip("?") for k in set(state) - set(ours))
    shapes = sorted(f"{k} {list(state[k].shape)} (expected {list(ours[k].shape)})" for k in set(state) & set(ours)
                    if state[k].shape != ours[k].shape)
    problems = [f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"] * bool(
        missing) + [f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                    f"{', ...' if len(unexpected) > 3 else ''})"] * bool(unexpected) + \
        [f"{len(shapes)} of the wrong shape ({', '.join(shapes[:2])})"] * bool(shapes)
    if problems:
        raise BadInput(f"{where} is not a SyncDreamer checkpoint: tensors {'; '.join(problems)}",
                       {"field": "weights", "path": where, "missing": missing[:20], "unexpected": unexpected[:20]})


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The ``.ckpt`` file itself, or :data:`CHECKPOINT_NAME` (or the only ``*.ckpt``) inside a folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / CHECKPOINT_NAME] if (path / CHECKPOINT_NAME).is_file() else sorted(path.glob("*.ckpt"))
        if len(found) != 1:
            raise BadInput(f"{path}: expected {CHECKPOINT_NAME} (or exactly one .ckpt file) in this folder",
                           {"field": "weights", "path": str(path)})
        path = found[0]
    return path


def load_syncdreamer(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncDreamer:
    """Build the model and load ``path`` (file or folder) into it; fp32, eval mode."""
    file = checkpoint_file(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated download, not a torch file, or pickled objects beyond tensors
        raise BadInput(f"{file}: cannot be read as a checkpoint ({e})", {"field": "weights", "path": str(file)}) from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise BadInput(f"{file}: no state_dict inside", {"field": "weights", "path": str(file)})
    cfg = SyncDreamerConfig.from_dict(ckpt["gen3d_config"]) if "gen3d_config" in ckpt else SyncDreamerConfig()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters come from the file; buffers are built
        model = SyncDreamer(cfg)
    converted = convert_state_dict(state, cfg)
    check_state_dict(model, converted, str(file))
    model.load_state_dict({k: v.float() for k, v in converted.items()}, assign=True)
    return model.to(device).eval().requires_grad_(False)
