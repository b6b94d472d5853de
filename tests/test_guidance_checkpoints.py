"""Our modules accept the full official parameter names and shapes of the published checkpoints, and the MVDream
UNet's self-attention spans the views (invariant to view order up to the same permutation)."""

from __future__ import annotations

import json

import pytest
import torch

from gen3d.backend.models.mvdream_unet import MultiViewUNetModel
from gen3d.backend.models.zero123 import CameraProjection, normalize_projection_keys


def _keys(data_dir, name):
    return json.loads((data_dir / "checkpoint_keys" / f"{name}.json").read_text())


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_mvdream_unet_has_the_ports_names_and_shapes(data_dir):
    ref = _keys(data_dir, "mvdream-sd21-4view-unet")
    config = {k: v for k, v in ref["config"].items() if k != "use_checkpoint"}
    with torch.device("meta"):
        unet = MultiViewUNetModel(**config)
    assert _shapes(unet) == ref["tensors"]


def test_zero123_unet_config_gives_the_official_keys(data_dir):
    from diffusers import UNet2DConditionModel

    ref = _keys(data_dir, "zero123-unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ref["config"])
    assert _shapes(unet) == ref["tensors"]


@pytest.mark.parametrize("name", ["zero123-clip-camera-projection", "zero123-cc-projection"])
def test_both_zero123_projection_layouts_load(data_dir, name):
    ref = _keys(data_dir, name)
    state = {k: torch.randn(shape) for k, shape in ref["tensors"].items()}
    module = CameraProjection(772, 768)
    module.load_state_dict(normalize_projection_keys(state))  # strict: every key used, none missing
    x = torch.randn(2, 772)
    weight = next(v for k, v in state.items() if k.endswith("weight"))
    bias = next(v for k, v in state.items() if k.endswith("bias"))
    torch.testing.assert_close(module(x), x @ weight.T + bias)


def test_original_zero123_checkpoint_name_loads():
    state = normalize_projection_keys({"cc_projection.weight": torch.zeros(768, 772),
                                       "cc_projection.bias": torch.zeros(768)})
    assert set(state) == {"proj.weight", "proj.bias"}
    with pytest.raises(KeyError, match="unexpected Zero123 projection key"):
        normalize_projection_keys({"cc_projection.scale": torch.zeros(1)})


def _tiny_mv_unet():
    torch.manual_seed(0)
    return MultiViewUNetModel(image_size=8, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
                              channel_mult=[1, 2], num_head_channels=16, context_dim=16).eval()


def _inputs(views=4, batch=2):
    g = torch.Generator().manual_seed(1)
    n = views * batch
    return (torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), 500), torch.randn(n, 5, 16, generator=g),
            torch.randn(n, 16, generator=g))


@torch.no_grad()
def test_multiview_attention_is_equivariant_to_view_order():
    unet = _tiny_mv_unet()
    x, t, ctx, cam = _inputs()
    out = unet(x, t, ctx, cam, num_frames=4)
    perm = torch.tensor([2, 0, 3, 1, 5, 7, 4, 6])  # permutes views within each of the two objects
    out_perm = unet(x[perm], t[perm], ctx[perm], cam[perm], num_frames=4)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_multiview_attention_spans_views_of_one_object_only():
    unet = _tiny_mv_unet()
    x, t, ctx, cam = _inputs()
    out = unet(x, t, ctx, cam, num_frames=4)
    x2 = x.clone()
    x2[1] += 1.0  # change view 1 of object 0
    out2 = unet(x2, t, ctx, cam, num_frames=4)
    assert (out2[0] - out[0]).abs().max() > 1e-3  # another view of the same object sees it
    torch.testing.assert_close(out2[4:], out[4:])  # the other object does not
    single = unet(x2, t, ctx, cam, num_frames=1)  # views treated separately: view 0 unchanged
    torch.testing.assert_close(single[0], unet(x, t, ctx, cam, num_frames=1)[0])


@torch.no_grad()
def test_camera_embedding_is_added_to_the_timestep_embedding():
    unet = _tiny_mv_unet()
    x, t, ctx, cam = _inputs(batch=1)
    captured = {}
    unet.time_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("t", o))
    unet.camera_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("c", o))
    emb = {}
    unet.input_blocks[1][0].emb_layers.register_forward_hook(lambda m, i, o: emb.__setitem__("in", i[0]))
    unet(x, t, ctx, cam, num_frames=4)
    torch.testing.assert_close(emb["in"], captured["t"] + captured["c"])
    assert not torch.allclose(unet(x, t, ctx, cam), unet(x, t, ctx, cam * 0))


@torch.no_grad()
def test_blocks_match_diffusers_equivalents_on_a_single_view():
    """With one view the LDM blocks are standard SD blocks: compare with diffusers' own modules, same weights."""
    from diffusers.models.embeddings import get_timestep_embedding
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from gen3d.backend.models.mvdream_unet import ResBlock, SpatialTransformer3D, timestep_embedding

    torch.manual_seed(0)
    ours = SpatialTransformer3D(64, heads=4, dim_head=16, depth=1, context_dim=24).eval()
    ref = Transformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=64, cross_attention_dim=24,
                             use_linear_projection=True, norm_num_groups=32).eval()
    ref.load_state_dict(ours.state_dict())  # identical names: norm, proj_in, transformer_blocks.0.*, proj_out
    x, ctx = torch.randn(3, 64, 6, 6), torch.randn(3, 7, 24)
    torch.testing.assert_close(ours(x, ctx, num_frames=1), ref(x, encoder_hidden_states=ctx).sample,
                               rtol=1e-4, atol=1e-5)

    res = ResBlock(64, 128, 96).eval()
    ref_res = ResnetBlock2D(in_channels=64, out_channels=96, temb_channels=128, groups=32, eps=1e-5).eval()
    rename = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    ref_res.load_state_dict({rename[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v
                             for k, v in res.state_dict().items()})
    emb = torch.randn(3, 128)
    torch.testing.assert_close(res(x, emb), ref_res(x, emb), rtol=1e-4, atol=1e-5)

    t = torch.tensor([0, 17, 999])
    torch.testing.assert_close(timestep_embedding(t, 320),
                               get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0))


@torch.no_grad()
def test_single_view_unet_equals_diffusers_unet_after_diffusers_ldm_converter():
    """Our LDM-named UNet, converted by diffusers' own LDM->diffusers checkpoint converter, gives the same output as
    diffusers' UNet2DConditionModel (camera embedding zeroed, one view): block order, skips and upsampling agree."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = _tiny_mv_unet()
    for p in ours.camera_embed.parameters():
        p.zero_()
    ref = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                               down_block_types=("CrossAttnDownBlock2D",) * 2,
                               up_block_types=("CrossAttnUpBlock2D",) * 2,
                               cross_attention_dim=16, attention_head_dim=(2, 4), use_linear_projection=True).eval()
    ldm = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items() if not k.startswith("camera_embed")}
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dict(ref.config)), strict=True)
    x, t, ctx = torch.randn(4, 4, 8, 8), torch.tensor([10, 200, 500, 999]), torch.randn(4, 5, 16)
    torch.testing.assert_close(ours(x, t, ctx, torch.zeros(4, 16), num_frames=1),
                               ref(x, t, encoder_hidden_states=ctx).sample, rtol=1e-4, atol=1e-5)
