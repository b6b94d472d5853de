"""SweetDreamer's aligned geometric prior (AGP) network: an SD-2.1-shaped UNet on 4-channel CCMs with a camera.

As the official ``my_unet_2d_condition.py`` (``wyysf-98/SweetDreamer``, ``addition_embed_type='camera'``): diffusers'
``UNet2DConditionModel`` with 4 input and output channels that denoises the CCM itself (no VAE, 64x64 for the real
model), CLIP text cross-attention, and a camera embedding ``camera_embedding.models`` = Linear(12 -> 640),
BatchNorm1d(640), Linear(640 -> 1280) of the 12-number camera (:func:`backend.geometry.ccm.agp_camera`) **added**
to the timestep embedding. The hidden width is twice the first block's (640 for SD's 320), so tiny models scale.

Call: ``unet(sample [B,4,h,w], t [B], encoder_hidden_states [B,77,D], class_labels=camera [B,12]).sample``; the
camera rides diffusers' class-embedding slot (added to the timestep embedding, exactly where the official code adds
its ``aug_emb``). Saved and loaded with ``save_pretrained``/``from_pretrained`` (``config.json`` + safetensors); the
parameter names are the official ones.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

#: numbers in the camera condition (a 3x4 camera-to-world)
CAMERA_DIM = 12


class CameraEmbedding(nn.Module):
    """``models``: Linear(12, hidden), BatchNorm1d(hidden), Linear(hidden, out) (the official module)."""

    def __init__(self, hidden: int, out: int, in_dim: int = CAMERA_DIM):
        super().__init__()
        self.models = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, out))

    def forward(self, camera: torch.Tensor) -> torch.Tensor:
        return self.models(camera)


class AGPUNet(UNet2DConditionModel):
    """UNet2DConditionModel plus :class:`CameraEmbedding` (module docstring); same config as the parent's."""

    @functools.wraps(UNet2DConditionModel.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        width = self.config.block_out_channels[0]
        self.camera_embedding = CameraEmbedding(2 * width, self.time_embedding.linear_2.out_features)

    def get_class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if class_labels is None:
            return None
        return self.camera_embedding(class_labels.to(sample.dtype)).to(sample.dtype)


def agp_unet_from_sd(sd_unet: UNet2DConditionModel, sample_size: int = 64) -> tuple[AGPUNet, list[str]]:
    """An :class:`AGPUNet` initialised from an SD UNet where shapes allow: every parameter of the SD UNet (all of
    them: SD's latents also have 4 channels, so ``conv_in``/``conv_out`` keep their shapes) is copied; the camera
    embedding is new (the official fine-tuning starts it from PyTorch's default init). Returns ``(unet, names of
    the re-initialised parameters)``."""
    config = dict(sd_unet.config)
    config.update(sample_size=sample_size, in_channels=4, out_channels=4)
    unet = AGPUNet.from_config(config)
    own = unet.state_dict()
    copied = {k: v for k, v in sd_unet.state_dict().items() if k in own and own[k].shape == v.shape}
    unet.load_state_dict(copied, strict=False)
    unet = unet if sd_unet.dtype == torch.float32 else unet.to(sd_unet.dtype)
    return unet, sorted(k for k in own if k not in copied)


def save_agp(out_dir: Path, unet: AGPUNet, scheduler, text_folder: Path | None = None) -> Path:
    """Write an AGP folder (registry ``agp``): ``unet/``, ``scheduler/`` (a diffusers scheduler; SD 2.1-base's
    DDIM), ``model_index.json`` and, from the diffusers folder ``text_folder``, ``tokenizer/`` and
    ``text_encoder/`` (None: already in ``out_dir``)."""
    out_dir = Path(out_dir)
    unet.save_pretrained(out_dir / "unet")
    scheduler.save_pretrained(out_dir / "scheduler")
    if text_folder is not None:
        for sub in ("tokenizer", "text_encoder"):
            shutil.copytree(Path(text_folder) / sub, out_dir / sub, dirs_exist_ok=True)
    index = {"_class_name": "SweetDreamerAGP", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", type(scheduler).__name__], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["gen3d", "AGPUNet"]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
