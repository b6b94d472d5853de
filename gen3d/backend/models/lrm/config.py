"""One configuration for both LRM families: OpenLRM (3DTopia, CC BY-NC weights) and TripoSR (VAST/Stability, MIT).

Both are "image tokens -> transformer over 3x32x32 triplane tokens -> ConvTranspose x2 -> triplane NeRF". They differ
in the image encoder (DINOv2-with-registers vs DINO ViT-B/16), camera conditioning (adaLN on every decoder norm vs
none), block order (cross->self->MLP vs self->cross->GEGLU), the NeRF MLP, the renderer and the meshing settings.
Every such difference is a field here, so one module family (``model.py``) builds either.

The published configs are read by :func:`from_openlrm_config` (hub ``config.json``) and :func:`from_triposr_config`
(hub ``config.yaml``). Facts: ../shared/reference/feedforward_and_multiview.md sections 1, 2 and 10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...errors import BadInput

#: triplane plane axes: which two world coordinates index (grid_sample's x, y) of each of the three planes
OPENLRM_PLANES = ((0, 1), (0, 2), (2, 1))  # EG3D's generate_planes() after the inverse projection: xy, xz, zy
TRIPOSR_PLANES = ((0, 1), (0, 2), (1, 2))  # TripoSR's query_triplane: xy, xz, yz

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: OpenLRM encoder names -> (width, depth) of the DINOv2-with-registers ViT (14-pixel patches, 518-pixel layout)
DINOV2_REG = {"dinov2_vits14_reg": (384, 12), "dinov2_vitb14_reg": (768, 12), "dinov2_vitl14_reg": (1024, 24)}

#: facebook/dino-vitb16 config.json values that TripoSR's tokenizer needs (shipped, never downloaded)
DINO_VITB16: dict[str, Any] = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                               "intermediate_size": 3072, "patch_size": 16, "image_size": 224,
                               "layer_norm_eps": 1e-12, "qkv_bias": True}


@dataclass(frozen=True)
class LRMConfig:
    """Every hyper-parameter and convention of an LRM; tensor shapes follow from it."""

    family: str  # "openlrm" | "triposr"
    # --- image encoder (a ViT; see encoder.py) ---
    enc_dim: int
    enc_layers: int
    enc_heads: int
    enc_patch: int
    enc_pos_grid: int  # side of the stored position-embedding grid (518/14 = 37, 224/16 = 14)
    enc_registers: int
    enc_layerscale: bool
    enc_eps: float
    enc_pos_antialias: bool  # position-embedding resize: bicubic with antialias (DINOv2-reg) or without (HF ViT 4.x)
    enc_pos_offset: float  # 0.0 (DINOv2-reg) or 0.1 (DINO / transformers 4.x)
    image_size: int  # encoder input resolution
    image_mean: tuple[float, float, float] | None  # ImageNet normalisation (TripoSR) or none (OpenLRM)
    image_std: tuple[float, float, float] | None
    # --- camera (OpenLRM only; 0 disables) ---
    camera_raw_dim: int
    camera_embed_dim: int
    # --- triplane transformer ---
    dim: int
    layers: int
    heads: int
    block_order: tuple[str, ...]  # ("cross", "self", "ff") for OpenLRM, ("self", "cross", "ff") for TripoSR
    ff_kind: str  # "gelu" (Linear-GELU-Linear) or "geglu"
    ff_mult: int
    attn_qkv_bias: bool
    attn_out_bias: bool
    norm_eps: float
    in_groupnorm: bool  # TripoSR: GroupNorm(32) + proj_in ... proj_out + residual
    out_layernorm: bool  # OpenLRM: a final LayerNorm
    triplane_low_res: int
    triplane_dim: int  # channels per plane after the 2x upsampler
    # --- NeRF MLP on concatenated plane features ---
    mlp_hidden: int
    mlp_linears: int  # number of Linear layers (OpenLRM 4, TripoSR 10)
    mlp_activation: str  # "relu" | "silu"
    density_activation: str  # "softplus" | "exp" (applied to raw + density_bias)
    density_bias: float
    colour_activation: str  # "sigmoid_mip" (sigmoid*1.002-0.001) | "sigmoid"
    # --- renderer and meshing ---
    radius: float  # the triplane spans [-radius, radius]^3 in model space
    plane_axes: tuple[tuple[int, int], ...]
    samples_per_ray: int
    importance_samples: int  # of samples_per_ray, how many come from the importance pass (0: uniform only)
    delta_units: str  # "metric" (OpenLRM) or "normalised" (TripoSR: alpha uses deltas of t in [0,1] per ray)
    midpoint_composite: bool  # OpenLRM's MipRayMarcher averages neighbouring samples
    mesh_resolution: int
    mesh_level: float
    # --- preprocessing and conventions ---
    background: float  # grey level the foreground is composited onto
    foreground_ratio: float  # object's bounding-box side / image side after recentring
    source_camera_distance: float = 2.0
    source_focal: float = 0.75  # normalised by image size
    render_size: int = 256
    #: rotation about +Z (degrees) taking the model frame into Blender's (input view on -Y looking +Y)
    model_yaw_deg: float = 0.0
    license: str = ""
    #: where the camera embedding enters: "transformer" (OpenLRM: adaLN on every triplane-block norm) or "encoder"
    #: (InstantMesh / Instant3D: adaLN shift/scale on both norms of every ViT layer, one camera per view)
    camera_modulates: str = "transformer"
    #: LayerNorm eps inside the triplane blocks when it differs from the final norm's (InstantMesh: 1e-5 vs 1e-6)
    block_norm_eps: float | None = None

    @property
    def plane_tokens(self) -> int:
        return 3 * self.triplane_low_res ** 2

    def replace(self, **kw: Any) -> "LRMConfig":
        return dataclasses.replace(self, **kw)


def from_openlrm_config(cfg: dict[str, Any]) -> LRMConfig:
    """The hub ``config.json`` of ``zxhezexin/openlrm-*`` (exactly ModelLRM's constructor kwargs) -> LRMConfig.

    Optional extra keys (written only by our tiny factory; the published files never have them): ``encoder_dim``,
    ``encoder_layers``, ``encoder_heads``, ``encoder_pos_grid``, ``source_size``, ``render_size``.
    """
    try:
        name = cfg["encoder_model_name"]
        dim = int(cfg["transformer_dim"])
        feat = int(cfg["encoder_feat_dim"])
        if cfg.get("encoder_type", "dinov2") != "dinov2":
            raise BadInput(f"OpenLRM encoder_type {cfg.get('encoder_type')!r} is not supported (only dinov2)",
                           {"field": "encoder_type"})
        if name not in DINOV2_REG:
            raise BadInput(f"OpenLRM encoder_model_name {name!r} is not one of {sorted(DINOV2_REG)}",
                           {"field": "encoder_model_name"})
        enc_dim, enc_layers = DINOV2_REG[name]
        enc_dim = int(cfg.get("encoder_dim", enc_dim))
        if enc_dim != feat:
            raise BadInput(f"encoder_feat_dim {feat} does not match {name} ({enc_dim})", {"field": "encoder_feat_dim"})
        samples = int(cfg["rendering_samples_per_ray"])
        # model card: source / render resolution per size (configs/infer-{s,b,l}.yaml)
        source, render = {512: (224, 192), 768: (336, 288), 1024: (448, 384)}.get(dim, (224, 192))
        return LRMConfig(
            family="openlrm",
            enc_dim=enc_dim, enc_layers=int(cfg.get("encoder_layers", enc_layers)),
            enc_heads=int(cfg.get("encoder_heads", enc_dim // 64)),
            enc_patch=14, enc_pos_grid=int(cfg.get("encoder_pos_grid", 37)),
            enc_registers=4, enc_layerscale=True, enc_eps=1e-6, enc_pos_antialias=True, enc_pos_offset=0.0,
            image_size=int(cfg.get("source_size", source)), image_mean=None, image_std=None,
            camera_raw_dim=16, camera_embed_dim=int(cfg["camera_embed_dim"]),
            dim=dim, layers=int(cfg["transformer_layers"]), heads=int(cfg["transformer_heads"]),
            block_order=("cross", "self", "ff"), ff_kind="gelu", ff_mult=4, attn_qkv_bias=False,
            attn_out_bias=False, norm_eps=1e-6, in_groupnorm=False, out_layernorm=True,
            triplane_low_res=int(cfg["triplane_low_res"]), triplane_dim=int(cfg["triplane_dim"]),
            mlp_hidden=64, mlp_linears=4, mlp_activation="relu", density_activation="softplus", density_bias=-1.0,
            colour_activation="sigmoid_mip",
            radius=1.0, plane_axes=OPENLRM_PLANES, samples_per_ray=samples, importance_samples=samples // 2,
            delta_units="metric", midpoint_composite=True, mesh_resolution=384, mesh_level=3.0,
            background=1.0, foreground_ratio=0.8, render_size=int(cfg.get("render_size", render)),
            license="CC BY-NC 4.0 (weights)",
        )
    except KeyError as e:
        raise BadInput(f"OpenLRM config.json lacks the key {e.args[0]!r}", {"field": e.args[0]}) from None


def from_triposr_config(cfg: dict[str, Any], vit: dict[str, Any] | None = None) -> LRMConfig:
    """TripoSR's hub ``config.yaml`` (already parsed, ``${...}`` interpolations allowed) -> LRMConfig.

    ``vit`` is the image tokenizer's ViT config (facebook/dino-vitb16 ``config.json``); the published TripoSR
    downloads it at construction, we ship its values as the default and accept an override
    (``image_tokenizer.vit_config`` in the YAML, written by our tiny factory).
    """
    vit = {**DINO_VITB16, **(vit or cfg.get("image_tokenizer", {}).get("vit_config") or {})}
    try:
        tok, bb, post, dec, ren = (cfg[k] for k in ("tokenizer", "backbone", "post_processor", "decoder", "renderer"))
        channels = int(tok["num_channels"])
        heads, head_dim = int(bb["num_attention_heads"]), int(bb["attention_head_dim"])
        if int(post["in_channels"]) != channels or heads * head_dim != channels:
            raise BadInput("TripoSR config: backbone width, tokenizer channels and upsampler input differ",
                           {"field": "backbone"})
        if int(dec["in_channels"]) != 3 * int(post["out_channels"]) or ren.get("feature_reduction",
                                                                            "concat") != "concat":
            raise BadInput("TripoSR config: decoder.in_channels must be 3 x post_processor.out_channels (concat)",
                           {"field": "decoder.in_channels"})
        image_size, patch = int(vit["image_size"]), int(vit["patch_size"])
        return LRMConfig(
            family="triposr",
            enc_dim=int(vit["hidden_size"]), enc_layers=int(vit["num_hidden_layers"]),
            enc_heads=int(vit["num_attention_heads"]), enc_patch=patch, enc_pos_grid=image_size // patch,
            enc_registers=0, enc_layerscale=False, enc_eps=float(vit.get("layer_norm_eps", 1e-12)),
            enc_pos_antialias=False, enc_pos_offset=0.1,
            image_size=int(cfg["cond_image_size"]), image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
            camera_raw_dim=0, camera_embed_dim=0,
            dim=channels, layers=int(bb["num_layers"]), heads=heads,
            block_order=("self", "cross", "ff"), ff_kind="geglu", ff_mult=4,
            attn_qkv_bias=bool(bb.get("attention_bias", False)), attn_out_bias=True, norm_eps=1e-5,
            in_groupnorm=True, out_layernorm=False,
            triplane_low_res=int(tok["plane_size"]), triplane_dim=int(post["out_channels"]),
            mlp_hidden=int(dec["n_neurons"]), mlp_linears=int(dec["n_hidden_layers"]) + 1,
            mlp_activation=str(dec.get("activation", "relu")),
            density_activation=str(ren.get("density_activation", "trunc_exp")).replace("trunc_exp", "exp"),
            density_bias=float(ren.get("density_bias", -1.0)), colour_activation="sigmoid",
            radius=float(ren["radius"]), plane_axes=TRIPOSR_PLANES,
            samples_per_ray=int(ren.get("num_samples_per_ray", 128)), importance_samples=0,
            delta_units="normalised", midpoint_composite=False, mesh_resolution=256, mesh_level=25.0,
            background=0.5, foreground_ratio=0.85, render_size=256, model_yaw_deg=-90.0,
            license="MIT",
        )
    except KeyError as e:
        raise BadInput(f"TripoSR config.yaml lacks the key {e.args[0]!r}", {"field": e.args[0]}) from None


#: the published hub configs, for building the real-size architectures without their files
OPENLRM_HUB_CONFIGS: dict[str, dict[str, Any]] = {
    size: {"camera_embed_dim": 1024, "rendering_samples_per_ray": samples, "transformer_dim": dim,
           "transformer_layers": layers, "transformer_heads": heads, "triplane_low_res": 32, "triplane_high_res": 64,
           "triplane_dim": tdim, "encoder_type": "dinov2", "encoder_model_name": enc, "encoder_feat_dim": feat,
           "encoder_freeze": False}
    for size, (samples, dim, layers, heads, tdim, enc, feat) in {
        "small": (96, 512, 12, 8, 32, "dinov2_vits14_reg", 384),
        "base": (96, 768, 12, 12, 48, "dinov2_vitb14_reg", 768),
        "large": (128, 1024, 16, 16, 80, "dinov2_vitb14_reg", 768),
    }.items()
}

TRIPOSR_HUB_CONFIG: dict[str, Any] = {
    "cond_image_size": 512,
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "image_tokenizer": {"pretrained_model_name_or_path": "facebook/dino-vitb16"},
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "tokenizer": {"plane_size": 32, "num_channels": 1024},
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "backbone": {"in_channels": 1024, "num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 16,
                 "cross_attention_dim": 768},
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "post_processor": {"in_channels": 1024, "out_channels": 40},
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
    "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp", "density_bias": -1.0,
                 "num_samples_per_ray": 128},
}
