"""Tiny random Zero123++ v1.2 folders in the published layout (the weights registry's factories).

``write_tiny_zero123plus``: ``model_index.json`` (``Zero123PlusPipeline`` with 77 ramp weights) and the eight
component folders with the published configs' values where they are not sizes (Euler ancestral, linear betas,
v-prediction; the VAE processor's mean 0.5 / std 0.8 and bilinear resize), widths 32, a 64-pixel VAE crop and a
32-pixel CLIP crop. ``write_tiny_instantmesh_unet``: InstantMesh's ``diffusion_pytorch_model.bin`` for it (the same
UNet, other random weights, fp16 as published)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...guidance.tiny import WIDTH, _text_encoder, _unet, _vae, _vocab_size, write_clip_preprocessor_config, \
    write_tokenizer
from .model import PIPELINE_CLASS

#: the VAE processor's crop in the tiny folder (published: 512)
TINY_VAE_CROP = 64
TINY_CLIP_CROP = 32


def _index(ramp: list[float]) -> dict:
    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": "0.42.1",
            "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
            "feature_extractor_vae": ["transformers", "CLIPImageProcessor"], "ramping_coefficients": ramp,
            "safety_checker": [None, None], "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"]}


def write_tiny_zero123plus(out_dir: Path, entry=None) -> None:
    from diffusers import EulerAncestralDiscreteScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    out_dir = Path(out_dir)
    torch.manual_seed(0)
    write_tokenizer(out_dir / "tokenizer", pad_token="!")
    _text_encoder(_vocab_size(out_dir / "tokenizer")).save_pretrained(out_dir / "text_encoder")
    _vae().save_pretrained(out_dir / "vae")
    _unet("sd21").save_pretrained(out_dir / "unet")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TINY_CLIP_CROP,
        patch_size=8, projection_dim=WIDTH)).save_pretrained(out_dir / "vision_encoder")
    EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="linear", prediction_type="v_prediction",
                                    timestep_spacing="linspace", steps_offset=1).save_pretrained(out_dir / "scheduler")
    write_clip_preprocessor_config(out_dir / "feature_extractor_clip", TINY_CLIP_CROP)
    (out_dir / "feature_extractor_vae").mkdir(parents=True, exist_ok=True)
    (out_dir / "feature_extractor_vae" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": TINY_VAE_CROP, "width": TINY_VAE_CROP}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": 0.5,
        "image_processor_type": "CLIPImageProcessor", "image_std": 0.8, "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": TINY_VAE_CROP}}, indent=2) + "\n")
    ramp = torch.linspace(0.0, 1.2, 77) + 0.05 * torch.rand(77)
    (out_dir / "model_index.json").write_text(json.dumps(_index([round(float(r), 6) for r in ramp]), indent=2) + "\n")


def write_tiny_instantmesh_unet(out_dir: Path, entry=None) -> None:
    torch.manual_seed(1)
    state = {k: v.half() for k, v in _unet("sd21").state_dict().items()}
    torch.save(state, Path(out_dir) / "diffusion_pytorch_model.bin")
