"""Our LRM modules against independent implementations of the same published layers, through our converters.

- OpenLRM's cross-attention is ``torch.nn.MultiheadAttention`` (packed or separate q/k/v by width): its state, under
  the published names, converted by ``openlrm_to_ours``, must give the same output in our ``Attention``.
- TripoSR's backbone block is a port of diffusers' ``BasicTransformerBlock``: diffusers' own block, under the
  published names, converted by ``triposr_to_ours``, must match our ``TriplaneBlock``.
- TripoSR's tokenizer is transformers' ``ViTModel``; OpenLRM's encoder is DINOv2 with registers
  (``Dinov2WithRegistersModel`` in transformers): both must match our ``ImageEncoder`` at their native resolution.
"""

from __future__ import annotations

import re

import pytest
import torch

from gen3d.backend.models.lrm.checkpoints import openlrm_to_ours, resolve_interpolations, triposr_to_ours
from gen3d.backend.models.lrm.config import from_openlrm_config, from_triposr_config
from gen3d.backend.models.lrm.encoder import ImageEncoder
from gen3d.backend.models.lrm.tiny import TINY_OPENLRM, tiny_triposr_yaml
from gen3d.backend.models.lrm.transformer import Attention, TriplaneBlock

torch.manual_seed(0)


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.mark.parametrize("kdim", [24, 32])  # 24: separate q/k/v_proj_weight; 32 (== dim): packed in_proj_weight
def test_openlrm_cross_attention_matches_multihead_attention(kdim):
    dim, heads = 32, 4
    mha = torch.nn.MultiheadAttention(dim, heads, kdim=kdim, vdim=kdim, bias=False, batch_first=True).eval()
    _randomise(mha)
    published = {f"transformer.layers.0.cross_attn.{k}": v for k, v in mha.state_dict().items()}
    assert ("transformer.layers.0.cross_attn.in_proj_weight" in published) == (kdim == dim)
    ours = Attention(dim, heads, kdim, qkv_bias=False, out_bias=False)
    ours.load_state_dict(_sub(openlrm_to_ours(published), "transformer.blocks.0.cross_attn."), strict=True)
    x, ctx = torch.randn(2, 10, dim), torch.randn(2, 7, kdim)
    with torch.no_grad():
        assert torch.allclose(ours(x, ctx), mha(x, ctx, ctx, need_weights=False)[0], atol=1e-5)


def test_triposr_block_matches_diffusers_basic_transformer_block():
    from diffusers.models.attention import BasicTransformerBlock

    cfg = from_triposr_config(resolve_interpolations(tiny_triposr_yaml()))
    ref = BasicTransformerBlock(cfg.dim, cfg.heads, cfg.dim // cfg.heads, cross_attention_dim=cfg.enc_dim,
                                activation_fn="geglu", attention_bias=False).eval()
    _randomise(ref)
    published = {f"backbone.transformer_blocks.0.{k}": v for k, v in ref.state_dict().items()}
    published["tokenizer.embeddings"] = torch.zeros(3, cfg.dim, 1, 1)  # the converter expects the token grid
    ours = TriplaneBlock(cfg).eval()
    ours.load_state_dict(_sub(triposr_to_ours(published), "transformer.blocks.0."), strict=True)
    x, ctx = torch.randn(2, 12, cfg.dim), torch.randn(2, 5, cfg.enc_dim)
    with torch.no_grad():
        assert torch.allclose(ours(x, ctx, None), ref(x, encoder_hidden_states=ctx), atol=1e-4)


def test_triposr_encoder_matches_transformers_vit():
    from transformers import ViTConfig, ViTModel

    cfg = from_triposr_config(resolve_interpolations(tiny_triposr_yaml()))
    vit = tiny_triposr_yaml()["image_tokenizer"]["vit_config"]
    ref = ViTModel(ViTConfig(**vit, hidden_act="gelu")).eval()
    _randomise(ref)
    published = {f"image_tokenizer.model.{k}": v for k, v in ref.state_dict().items()}  # transformers-5 names
    published["tokenizer.embeddings"] = torch.zeros(3, cfg.dim, 1, 1)
    ours = ImageEncoder(cfg.replace(image_size=vit["image_size"])).eval()
    ours.load_state_dict(_sub(triposr_to_ours(published), "encoder."), strict=True)
    x = torch.rand(2, 3, vit["image_size"], vit["image_size"])
    mean, std = torch.tensor(cfg.image_mean).view(1, 3, 1, 1), torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref((x - mean) / std).last_hidden_state, atol=1e-4)


def test_openlrm_encoder_matches_transformers_dinov2_with_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = from_openlrm_config(TINY_OPENLRM)
    side = cfg.enc_pos_grid * cfg.enc_patch
    ref = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=cfg.enc_dim, num_hidden_layers=cfg.enc_layers, num_attention_heads=cfg.enc_heads,
        image_size=side, patch_size=cfg.enc_patch, num_register_tokens=cfg.enc_registers)).eval()
    _randomise(ref)
    rename = [(r"^embeddings\.position_embeddings", "pos_embed"), (r"^embeddings\.patch_embeddings\.projection",
              "patch_embed.proj"), (r"^embeddings\.", ""), (r"^encoder\.layer\.", "blocks."),
              (r"attention\.o_proj", "attn.proj"), (r"layer_scale(\d)\.lambda1", r"ls\1.gamma"),
              (r"^layernorm", "norm")]
    sd = {}
    for k, v in ref.state_dict().items():
        if k == "embeddings.mask_token":
            continue
        for pat, rep in rename:
            k = re.sub(pat, rep, k)
        sd[k] = v
    for layer in range(cfg.enc_layers):
        for kind in ("weight", "bias"):
            sd[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(
                [sd.pop(f"blocks.{layer}.attention.{n}_proj.{kind}") for n in "qkv"])
    ours = ImageEncoder(cfg.replace(image_size=side)).eval()
    ours.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        h = ref(x).last_hidden_state  # [cls, registers, patches], final-normed
    expected = torch.cat([h[:, :1], h[:, 1 + cfg.enc_registers:]], 1)
    with torch.no_grad():
        assert torch.allclose(ours(x), expected, atol=1e-4)
