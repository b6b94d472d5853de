"""Instant3D's sparse-view reconstructor: LRM's modules (``models/lrm``) on V posed views at once.

Each view is encoded by the same ViT, every ViT layer modulated adaLN-style by that view's camera embedding
(``LRMConfig.camera_modulates == "encoder"``); the V token sets are concatenated into one context of ``V * L`` tokens
that the triplane transformer cross-attends to (no view index: only the pairing image <-> camera matters). With one
view and no camera this is exactly :meth:`LRM.forward_planes`.

Its published open counterpart is InstantMesh's NeRF reconstructor (``TencentARC/InstantMesh``
``instant_nerf_{base,large}.ckpt``, Apache-2.0), whose hyper-parameters :func:`from_instantmesh_config` reads
(facts: ../shared/reference/feedforward_and_multiview.md section 3, checkpoint_keys/README.md "InstantMesh").

Camera encoding (:func:`encode_cameras`): 16 numbers per view, the OpenGL camera-to-world ``[:3, :4]`` in the model
frame (Z up, InstantMesh's azimuth 0 on +X) flattened row-major, then ``fx/W, fy/H, cx/W, cy/H``. The model frame is
Blender's rotated by ``model_yaw_deg`` = -90 about Z, so our azimuth 0 (camera on -Y) is InstantMesh's azimuth 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ...blender.poses import RINGS
from ...errors import BadInput
from ...geometry.cameras import Cameras, orbit_cameras
from ..lrm.config import DINO_VITB16, IMAGENET_MEAN, IMAGENET_STD, OPENLRM_PLANES, LRMConfig
from ..lrm.model import LRM, yaw_matrix

#: ``model_config.params`` of InstantMesh's configs/instant-nerf-{base,large}.yaml (the published checkpoints ship
#: no config file)
INSTANTMESH_CONFIGS: dict[str, dict[str, Any]] = {
    size: {"encoder_feat_dim": 768, "encoder_freeze": False, "encoder_model_name": "facebook/dino-vitb16",
           "transformer_dim": 1024, "transformer_layers": layers, "transformer_heads": 16, "triplane_low_res": 32,
           "triplane_high_res": 64, "triplane_dim": tdim, "rendering_samples_per_ray": samples}
    for size, (layers, tdim, samples) in {"base": (12, 40, 96), "large": (16, 80, 128)}.items()
}

#: Zero123++ v1.2's six output views as InstantMesh poses them (run.py): azimuths 30..330 step 60 (InstantMesh's
#: frame = ours, relative to the input view), elevations +20/-10 alternating, radius 4.0, vertical fov 30, 320-pixel
#: views, view k at row k // 2, column k % 2 of the 3x2 image (the ring of ``dataset multiview --orbit zero123pp``)
ZERO123PLUS_RING = RINGS["zero123pp"]
ZERO123PLUS_SIZE = 320


def from_instantmesh_config(params: dict[str, Any]) -> LRMConfig:
    """InstantNeRF's constructor kwargs (``INSTANTMESH_CONFIGS[size]``) -> LRMConfig.

    The encoder is facebook/dino-vitb16 (ImageNet-normalised input, position embeddings resized the transformers-4.x
    way: +0.1 offset, no antialias) with InstantMesh's per-layer camera adaLN; the triplane blocks are OpenLRM's
    (cross -> self -> MLP) without modulation, LayerNorm eps 1e-5 in the blocks and 1e-6 at the end; renderer and
    NeRF MLP are OpenLRM's (EG3D); meshing is PyMCubes at level 10 on 256^3 (run.py). Optional extra keys (only in
    our tiny folders): ``encoder_vit_config`` (overrides dino-vitb16 values), ``input_size``, ``render_size``.
    """
    try:
        if params.get("encoder_model_name", "facebook/dino-vitb16") != "facebook/dino-vitb16":
            raise BadInput(f"InstantMesh encoder {params['encoder_model_name']!r} is not supported "
                           "(only facebook/dino-vitb16)", {"field": "encoder_model_name"})
        vit = {**DINO_VITB16, **params.get("encoder_vit_config", {})}
        enc_dim = int(vit["hidden_size"])
        if int(params["encoder_feat_dim"]) != enc_dim:
            raise BadInput(f"encoder_feat_dim {params['encoder_feat_dim']} does not match the ViT width {enc_dim}",
                           {"field": "encoder_feat_dim"})
        samples = int(params["rendering_samples_per_ray"])
        return LRMConfig(
            family="instantmesh",
            enc_dim=enc_dim, enc_layers=int(vit["num_hidden_layers"]), enc_heads=int(vit["num_attention_heads"]),
            enc_patch=int(vit["patch_size"]), enc_pos_grid=int(vit["image_size"]) // int(vit["patch_size"]),
            enc_registers=0, enc_layerscale=False, enc_eps=float(vit["layer_norm_eps"]), enc_pos_antialias=False,
            enc_pos_offset=0.1, image_size=int(params.get("input_size", ZERO123PLUS_SIZE)),
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
            camera_raw_dim=16, camera_embed_dim=enc_dim, camera_modulates="encoder",
            dim=int(params["transformer_dim"]), layers=int(params["transformer_layers"]),
            heads=int(params["transformer_heads"]), block_order=("cross", "self", "ff"), ff_kind="gelu", ff_mult=4,
            attn_qkv_bias=False, attn_out_bias=False, norm_eps=1e-6, block_norm_eps=1e-5, in_groupnorm=False,
            out_layernorm=True, triplane_low_res=int(params["triplane_low_res"]),
            triplane_dim=int(params["triplane_dim"]),
            mlp_hidden=64, mlp_linears=4, mlp_activation="relu", density_activation="softplus", density_bias=-1.0,
            colour_activation="sigmoid_mip", radius=1.0, plane_axes=OPENLRM_PLANES, samples_per_ray=samples,
            importance_samples=samples // 2, delta_units="metric", midpoint_composite=True,
            mesh_resolution=256, mesh_level=10.0, background=1.0, foreground_ratio=0.85,
            source_camera_distance=ZERO123PLUS_RING.distance,
            source_focal=0.5 / math.tan(math.radians(ZERO123PLUS_RING.fov_deg / 2)),
            render_size=int(params.get("render_size", 192)), model_yaw_deg=-90.0, license="Apache-2.0",
        )
    except KeyError as e:
        raise BadInput(f"InstantMesh config lacks the key {e.args[0]!r}", {"field": e.args[0]}) from None


def encode_cameras(cams: Cameras, model_yaw_deg: float = -90.0) -> torch.Tensor:
    """Our cameras (Blender world, OpenCV axes, pixel intrinsics) -> InstantMesh's ``[V, 16]`` camera vectors."""
    c2w = cams.opengl_c2w()
    rot = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    rot[:3, :3] = yaw_matrix(-model_yaw_deg).to(c2w)  # world -> model
    c2w = rot @ c2w
    K = cams.K.to(c2w)
    intr = torch.stack([K[:, 0, 0] / cams.width, K[:, 1, 1] / cams.height, K[:, 0, 2] / cams.width,
                        K[:, 1, 2] / cams.height], -1)
    return torch.cat([c2w[:, :3, :4].reshape(-1, 12), intr], -1)


def zero123plus_cameras(size: int = ZERO123PLUS_SIZE, radius: float | None = None) -> Cameras:
    """The six Zero123++ v1.2 views InstantMesh reconstructs from, in view order."""
    ring = ZERO123PLUS_RING
    return orbit_cameras(ring.elevations, ring.azimuths, radius or ring.distance, ring.fov_deg, size, size)


def model_views(views: torch.Tensor, cfg: LRMConfig) -> torch.Tensor:
    """``views [..., 3, H, W]`` RGB in [0, 1] on the model's background -> ``[..., 3, S, S]`` at the model's input
    size (bicubic with antialias, clamped: InstantMesh's ``v2.functional.resize(..., interpolation=3)``)."""
    S = cfg.image_size
    lead = views.shape[:-3]
    x = views.reshape(-1, *views.shape[-3:]).float()
    if x.shape[-2:] != (S, S):
        x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).reshape(*lead, 3, S, S)


class SparseViewLRM(LRM):
    """An LRM that reconstructs one triplane from V posed views (Instant3D; InstantMesh's weights load into it)."""

    def __init__(self, cfg: LRMConfig):
        if cfg.camera_embed_dim and cfg.camera_modulates != "encoder":
            raise BadInput("a sparse-view reconstructor needs its cameras in the encoder (one per view)",
                           {"field": "camera_modulates"})
        super().__init__(cfg)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """``images [B, V, 3, S, S]`` in [0, 1] (``[B, 3, S, S]``: one view), ``cameras [B, V, 16]``
        (:func:`encode_cameras`; required when the model has a camera embedder) -> ``planes [B, 3, C, 2r, 2r]``."""
        if images.ndim == 4:
            images = images[:, None]
            cameras = None if cameras is None else cameras.reshape(len(images), 1, -1)
        B, V = images.shape[:2]
        mod = None
        if self.camera_embedder is not None:
            if cameras is None or tuple(cameras.shape[:2]) != (B, V):
                raise BadInput(f"{B}x{V} views need cameras of shape [{B}, {V}, 16], got "
                               f"{None if cameras is None else tuple(cameras.shape)}", {"field": "cameras"})
            mod = self.camera_embedder(cameras.flatten(0, 1).to(images.dtype))
        tokens = self.encoder(images.flatten(0, 1), mod)  # [B*V, L, D]
        tokens = tokens.reshape(B, V * tokens.shape[1], tokens.shape[2])  # views concatenated
        return self.upsample(self.transformer(tokens))
