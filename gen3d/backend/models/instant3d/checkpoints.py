"""InstantMesh's NeRF reconstructor checkpoints (``TencentARC/InstantMesh``, Apache-2.0) <-> :class:`SparseViewLRM`.

Published layout: ``instant_nerf_{base,large}.ckpt``, a PyTorch Lightning checkpoint whose ``state_dict`` holds the
generator under ``lrm_generator.`` (other prefixes, e.g. the training LPIPS net, and ``source_camera`` keys are
ignored exactly as InstantMesh's run.py/app.py ignore them). No config ships with the weights: the size comes from
the file name and :data:`INSTANTMESH_CONFIGS`; an optional ``instantmesh_config.json`` beside the file (written only
by our tiny factory) overrides it. Names: the encoder is transformers-4.x ViT (``encoder.model.encoder.layer.N...``,
separate query/key/value joined into our ``qkv``) plus ``adaLN_modulation.1``; the triplane blocks are
``nn.MultiheadAttention`` (cross q/k/v separate since 768 != 1024, self packed) under OpenLRM-like names with plain
LayerNorms ``norm{1,2,3}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import BadInput, MissingWeights
from ...files import atomic_path, write_json
from ..lrm.checkpoints import (StateDict, build_from_state, compile_renames, join_vit_qkv,
                               pack_multihead_attention, read_torch_checkpoint, rename_keys,
                               split_multihead_attention, split_vit_qkv)
from .reconstructor import INSTANTMESH_CONFIGS, SparseViewLRM, from_instantmesh_config

PREFIX = "lrm_generator."
CONFIG_OVERRIDE = "instantmesh_config.json"
_VIT = "encoder.model.encoder.layer.{}."
_LAYER = "transformer.layers.{}."
RENAMES: list[tuple[str, str]] = [
    ("encoder.model.embeddings.cls_token", "encoder.cls_token"),
    ("encoder.model.embeddings.position_embeddings", "encoder.pos_embed"),
    ("encoder.model.embeddings.patch_embeddings.projection.", "encoder.patch_embed.proj."),
    (_VIT + "attention.output.dense.", "encoder.blocks.{}.attn.proj."),
    (_VIT + "intermediate.dense.", "encoder.blocks.{}.mlp.fc1."),
    (_VIT + "output.dense.", "encoder.blocks.{}.mlp.fc2."),
    (_VIT + "layernorm_before.", "encoder.blocks.{}.norm1."),
    (_VIT + "layernorm_after.", "encoder.blocks.{}.norm2."),
    (_VIT + "adaLN_modulation.1.", "encoder.blocks.{}.modulation."),
    ("encoder.model.layernorm.", "encoder.norm."),
    ("encoder.camera_embedder.", "camera_embedder."),
    ("transformer.pos_embed", "transformer.tokens"),
    (_LAYER + "norm1.", "transformer.blocks.{}.norm_cross.norm."),
    (_LAYER + "norm2.", "transformer.blocks.{}.norm_self.norm."),
    (_LAYER + "norm3.", "transformer.blocks.{}.norm_ff.norm."),
    (_LAYER + "cross_attn.out_proj.", "transformer.blocks.{}.cross_attn.out."),
    (_LAYER + "self_attn.out_proj.", "transformer.blocks.{}.self_attn.out."),
    (_LAYER + "cross_attn.", "transformer.blocks.{}.cross_attn."),  # {q,k,v}_proj_weight, split below
    (_LAYER + "self_attn.", "transformer.blocks.{}.self_attn."),  # in_proj_weight, split below
    (_LAYER + "mlp.0.", "transformer.blocks.{}.ff.fc1."),
    (_LAYER + "mlp.3.", "transformer.blocks.{}.ff.fc2."),
    ("transformer.norm.", "transformer.out_norm."),
    ("transformer.deconv.", "upsampler."),
    ("synthesizer.decoder.net.", "nerf.net."),
]
_VIT_QKV = re.compile(r"^encoder\.model\.encoder\.layer\.(\d+)\.attention\.attention\."
                      r"(query|key|value)\.(weight|bias)$")


def instantmesh_to_ours(sd: StateDict) -> StateDict:
    """InstantNeRF ``state_dict`` names (without ``lrm_generator.``) -> ours."""
    rest, qkv = join_vit_qkv(sd, _VIT_QKV, "InstantMesh checkpoint")
    return {**split_multihead_attention(rename_keys(rest, compile_renames(RENAMES, False), "InstantMesh checkpoint")), **qkv}


def ours_to_instantmesh(sd: StateDict) -> StateDict:
    """Inverse of :func:`instantmesh_to_ours` (InstantNeRF's own names)."""
    sd = dict(sd)
    vit = split_vit_qkv(sd, "encoder.model.")
    return {**rename_keys(pack_multihead_attention(sd), compile_renames(RENAMES, True), "SparseViewLRM state_dict"), **vit}


def generator_state(ckpt: StateDict) -> StateDict:
    """A Lightning ``state_dict`` -> the generator's tensors, as run.py takes them (``source_camera`` dropped)."""
    return {k[len(PREFIX):]: v for k, v in ckpt.items() if k.startswith(PREFIX) and "source_camera" not in k}


def find_checkpoint(folder: Path) -> tuple[Path, str]:
    """``folder``'s ``instant_nerf_{base,large}.ckpt`` and its size name."""
    found = [(folder / f"instant_nerf_{size}.ckpt", size) for size in INSTANTMESH_CONFIGS
             if (folder / f"instant_nerf_{size}.ckpt").is_file()]
    if len(found) != 1:
        raise MissingWeights(f"{folder}: expected one InstantMesh NeRF checkpoint (instant_nerf_base.ckpt or "
                             f"instant_nerf_large.ckpt), found {len(found)}", {"path": str(folder)})
    return found[0]


def instantmesh_params(folder: Path, size: str) -> dict[str, Any]:
    params = dict(INSTANTMESH_CONFIGS[size])
    override = folder / CONFIG_OVERRIDE
    if override.is_file():
        params.update(json.loads(override.read_text()))
    return params


def load_instantmesh(folder: str | Path) -> SparseViewLRM:
    """A folder holding ``instant_nerf_base.ckpt`` or ``instant_nerf_large.ckpt`` -> SparseViewLRM (eval, CPU)."""
    folder = Path(folder)
    ckpt, size = find_checkpoint(folder)
    cfg = from_instantmesh_config(instantmesh_params(folder, size))
    sd = generator_state(read_torch_checkpoint(ckpt))
    if not sd:
        raise BadInput(f"{ckpt}: no 'lrm_generator.' tensors (not an InstantMesh reconstructor checkpoint)",
                       {"path": str(ckpt)})
    return build_from_state(cfg, instantmesh_to_ours(sd), folder, SparseViewLRM)


def save_instantmesh(model: SparseViewLRM, folder: str | Path, size: str,
                     params: dict[str, Any] | None = None) -> Path:
    """Write ``instant_nerf_{size}.ckpt`` as a Lightning-style ``{"state_dict": {"lrm_generator.<name>": ...}}``
    (and ``params``, our tiny overrides, as ``instantmesh_config.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {PREFIX + k: v.detach().contiguous() for k, v in ours_to_instantmesh(model.state_dict()).items()}
    with atomic_path(folder / f"instant_nerf_{size}.ckpt") as tmp:
        torch.save({"state_dict": sd, "global_step": 0, "pytorch-lightning_version": "2.1.2"}, tmp)
    if params:
        write_json(folder / CONFIG_OVERRIDE, params)
    return folder
