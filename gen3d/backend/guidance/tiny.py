"""Tiny randomly initialised diffusion models written in the real hub layouts (the weights registry's factories).

Each ``write_*`` function has the registry's factory signature ``(out_dir, entry)`` and writes exactly the folder
structure the published repository has (``model_index.json``, one sub-folder per component with ``config.json``
and ``*.safetensors``, tokenizer files), so the priors load them with the same ``from_pretrained`` code as real
weights. Sizes: latents of 8x8 at 64x64 pixels (the VAE still downsamples by 8), text/image width 32; a folder is
1-4 MB. Seeds are fixed, so the files are reproducible.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

#: width of the tiny text and image encoders (= the UNets' cross-attention width)
WIDTH = 32
#: latent size of the tiny UNets; images are 8x that
LATENT = 8

_SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """A CLIP BPE tokenizer in the hub's file layout (vocab.json, merges.txt, tokenizer_config.json).

    The vocabulary is single characters (with and without the end-of-word mark), so every prompt tokenizes.
    ``model_max_length`` must be 77 (transformers 5 otherwise overflows while padding).
    """
    vocab = ["<|startoftext|>", "<|endoftext|>", "!"]
    for c in string.ascii_lowercase + string.digits + ",.-'":
        vocab += [c, c + "</w>"]
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", {t: i for i, t in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {**special, "tokenizer_class": "CLIPTokenizer",
                                                   "model_max_length": 77, "do_lower_case": True})


def _vocab_size(folder: Path) -> int:
    return len(json.loads((folder / "vocab.json").read_text()))


def _text_config(vocab_size: int, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **kw)


def _text_encoder(vocab_size: int, with_projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if with_projection:
        return CLIPTextModelWithProjection(_text_config(vocab_size, projection_dim=WIDTH))
    return CLIPTextModel(_text_config(vocab_size))


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 16, 16), sample_size=LATENT * 8)


def _unet(layout: str, in_channels: int = 4):
    """SD-shaped UNet: ``sd15`` (conv proj, int head dim), ``sd21`` (linear proj, per-block heads), ``sdxl``."""
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=LATENT, in_channels=in_channels, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)
    if layout == "sd15":
        return UNet2DConditionModel(**common, cross_attention_dim=WIDTH, attention_head_dim=8)
    if layout == "sd21":
        return UNet2DConditionModel(**common, cross_attention_dim=WIDTH, attention_head_dim=(2, 4),
                                    use_linear_projection=True)
    if layout == "sdxl":
        return UNet2DConditionModel(**common, cross_attention_dim=2 * WIDTH, attention_head_dim=(2, 4),
                                    use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + WIDTH)
    raise ValueError(f"unknown UNet layout {layout!r}")


def _write_sd(out_dir: Path, layout: str) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    torch.manual_seed(0)
    write_tokenizer(out_dir / "tokenizer", pad_token="!" if layout == "sd21" else "<|endoftext|>")
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(_vocab_size(out_dir / "tokenizer")),
                                   tokenizer=_load_tokenizer(out_dir / "tokenizer"), unet=_unet(layout),
                                   scheduler=PNDMScheduler(**{k: v for k, v in _SD_SCHEDULER.items()
                                                              if k not in ("clip_sample",)}, skip_prk_steps=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    write_tokenizer(out_dir / "tokenizer", pad_token="!" if layout == "sd21" else "<|endoftext|>")
    _drop_fast_tokenizer(out_dir / "tokenizer")


def _load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def _drop_fast_tokenizer(folder: Path) -> None:
    """``save_pretrained`` in transformers 5 adds tokenizer.json; the hub layout has vocab.json + merges.txt only."""
    (folder / "tokenizer.json").unlink(missing_ok=True)


def write_sd15(out_dir: Path, entry=None) -> None:
    """Stable Diffusion 1.5 layout (conv proj_in/out, int attention_head_dim, CLIP ViT-L-style text encoder)."""
    _write_sd(out_dir, "sd15")


def write_sd21_base(out_dir: Path, entry=None) -> None:
    """Stable Diffusion 2.1-base layout (linear proj_in/out, per-block attention heads, pad token "!")."""
    _write_sd(out_dir, "sd21")


def write_sdxl_base(out_dir: Path, entry=None) -> None:
    """SDXL base layout: two text encoders (the second with projection), text_time added embeddings."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(0)
    for sub in ("tokenizer", "tokenizer_2"):
        write_tokenizer(out_dir / sub, pad_token="<|endoftext|>" if sub == "tokenizer" else "!")
    vocab = _vocab_size(out_dir / "tokenizer")
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(vocab), text_encoder_2=_text_encoder(vocab, with_projection=True),
        tokenizer=_load_tokenizer(out_dir / "tokenizer"), tokenizer_2=_load_tokenizer(out_dir / "tokenizer_2"),
        unet=_unet("sdxl"), scheduler=EulerDiscreteScheduler(**{k: v for k, v in _SD_SCHEDULER.items()
                                                                 if k not in ("clip_sample", "set_alpha_to_one")}))
    pipe.save_pretrained(out_dir)
    for sub in ("tokenizer", "tokenizer_2"):
        _drop_fast_tokenizer(out_dir / sub)


def _write_controlnet(out_dir: Path, layout: str) -> None:
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(_unet(layout), conditioning_embedding_out_channels=(8, 8, 16, 16))
    controlnet.save_pretrained(out_dir)


def write_controlnet_sd15(out_dir: Path, entry=None) -> None:
    """ControlNet for the tiny SD 1.5 (a bare model folder: config.json + safetensors, as on the hub)."""
    _write_controlnet(out_dir, "sd15")


def write_controlnet_sdxl(out_dir: Path, entry=None) -> None:
    """ControlNet for the tiny SDXL base."""
    _write_controlnet(out_dir, "sdxl")


def write_clip_preprocessor_config(folder: Path, size: int = 224) -> None:
    """``preprocessor_config.json`` of a hub ``feature_extractor/`` (OpenAI CLIP's, as in the Zero123 diffusers
    folders), every key as published; ``size`` replaces 224 for the tiny image encoders."""
    _write_json(folder / "preprocessor_config.json", {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size}})


def _write_zero123(out_dir: Path, projection_layout: str) -> None:
    """Zero123 diffusers folder. ``projection_layout``: ``clip_camera_projection`` (ashawkey/dreamgaussian,
    key ``proj.*``) or ``cc_projection`` (kxhit, key ``projection.*``, config without sizes)."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    _vae().save_pretrained(out_dir / "vae")
    _unet("sd15", in_channels=8).save_pretrained(out_dir / "unet")
    DDIMScheduler(**_SD_SCHEDULER).save_pretrained(out_dir / "scheduler")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=WIDTH)).save_pretrained(out_dir / "image_encoder")
    write_clip_preprocessor_config(out_dir / "feature_extractor", 32)
    linear = torch.nn.Linear(WIDTH + 4, WIDTH)
    if projection_layout == "clip_camera_projection":
        key, cls, module = "proj", "CLIPCameraProjection", "zero123"
        config = {"_class_name": cls, "embedding_dim": WIDTH, "additional_embeddings": 4}
        pipeline_class = "Zero123Pipeline"
    else:
        key, cls, module = "projection", "CCProjection", "pipeline_zero1to3"
        config = {"_class_name": cls}
        pipeline_class = "Zero1to3StableDiffusionPipeline"
    folder = out_dir / projection_layout
    _write_json(folder / "config.json", {**config, "_diffusers_version": "0.42.1"})
    save_file({f"{key}.weight": linear.weight.detach().contiguous(), f"{key}.bias": linear.bias.detach().contiguous()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    _write_json(out_dir / "model_index.json", {
        "_class_name": pipeline_class, "_diffusers_version": "0.42.1",
        projection_layout: [module, cls], "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})


def write_zero123_clip_camera_projection(out_dir: Path, entry=None) -> None:
    """Zero123-XL in the ashawkey/dreamgaussian layout (``clip_camera_projection/``, key ``proj``)."""
    _write_zero123(out_dir, "clip_camera_projection")


def write_zero123_cc_projection(out_dir: Path, entry=None) -> None:
    """Zero123 in the kxhit layout (``cc_projection/``, key ``projection``)."""
    _write_zero123(out_dir, "cc_projection")


def write_stable_zero123(out_dir: Path, entry=None) -> None:
    """Stable Zero123 (same layout as Zero123-XL ashawkey; differs only in the pose's 4th entry)."""
    _write_zero123(out_dir, "clip_camera_projection")


def _write_mvdream(out_dir: Path, image_prompt: bool) -> None:
    from diffusers import DDIMScheduler

    from ..models.mvdream_unet import MultiViewUNetModel

    torch.manual_seed(0)
    write_tokenizer(out_dir / "tokenizer", pad_token="!")
    _text_encoder(_vocab_size(out_dir / "tokenizer")).save_pretrained(out_dir / "text_encoder")
    _vae().save_pretrained(out_dir / "vae")
    ip = dict(ip_dim=4, ip_embedding_dim=WIDTH, ip_heads=2, ip_dim_head=8, ip_depth=1) if image_prompt else {}
    MultiViewUNetModel(image_size=LATENT, in_channels=4, out_channels=4, model_channels=32,
                       attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=[1, 2], num_head_channels=16,
                       transformer_depth=1, context_dim=WIDTH, camera_dim=16, **ip).save_pretrained(out_dir / "unet")
    DDIMScheduler(**_SD_SCHEDULER).save_pretrained(out_dir / "scheduler")
    image = [None, None], [None, None]
    if image_prompt:  # CLIPVisionModel (no projection) and its processor, as the port's converter saves them
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        CLIPVisionModel(CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(
            out_dir / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            out_dir / "feature_extractor")
        image = ["transformers", "CLIPImageProcessor"], ["transformers", "CLIPVisionModel"]
    _write_json(out_dir / "model_index.json", {
        "_class_name": "MVDreamPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": image[0], "image_encoder": image[1], "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["mv_unet", "MultiViewUNetModel"],
        "vae": ["diffusers", "AutoencoderKL"]})


def write_mvdream(out_dir: Path, entry=None) -> None:
    """MVDream diffusers port: ``unet/`` is the multi-view UNet with LDM parameter names; SD-2.1-style rest."""
    _write_mvdream(out_dir, image_prompt=False)


def write_imagedream(out_dir: Path, entry=None) -> None:
    """ImageDream diffusers port: MVDream's layout, the UNet with ``ip_dim`` (resampler, ``to_k_ip``/``to_v_ip``),
    plus ``image_encoder/`` (CLIPVisionModel) and ``feature_extractor/`` (CLIPImageProcessor)."""
    _write_mvdream(out_dir, image_prompt=True)


def agp_unet(sample_size: int = 16, cross_attention_dim: int = WIDTH):
    """A tiny :class:`~backend.models.agp.AGPUNet` in SD 2.1's layout (linear projections, per-block heads)."""
    from ..models.agp import AGPUNet

    return AGPUNet(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32,
                   cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), use_linear_projection=True)


def write_agp(out_dir: Path, entry=None) -> None:
    """SweetDreamer's AGP (random weights): the CCM UNet at 16x16 with a camera embedding, SD 2.1's text side."""
    from diffusers import DDIMScheduler

    from ..models.agp import save_agp

    torch.manual_seed(0)
    write_tokenizer(out_dir / "tokenizer", pad_token="!")
    _text_encoder(_vocab_size(out_dir / "tokenizer")).save_pretrained(out_dir / "text_encoder")
    save_agp(out_dir, agp_unet(), DDIMScheduler(**_SD_SCHEDULER))
