"""DMV3D configurations: an LRM-style triplane denoiser over noisy views with Plücker rays (reference section 4).

A :class:`DMV3DConfig` is an :class:`~..lrm.LRMConfig` (triplane transformer, upsampler, NeRF MLP, renderer,
meshing; OpenLRM's conventions: cross -> self -> MLP blocks, softplus density, metric ray marching, radius 1) plus
the DMV3D fields. The text variant (``text_dim`` > 0) also cross-attends to CLIP text tokens, projected to the
encoder width and appended to the view tokens; its input view is always blank. The LRM's camera adaLN input is reused as the timestep embedding (``camera_embed_dim`` = width of
the timestep embedding), and the image encoder is a ViT over patches of RGB + Plücker rays (``encoder.py``).

Sizes (parameters counted on ``meta`` by ``tests/test_dmv3d.py``; DMV3D's own sizes are unpublished, ``base``
follows Open-DiffusionGS' 1024-wide transformer with patch 8 at 256 px; ``tiny`` is CI's, ``bench`` the CPU evidence
run's of ``benchmarks/bench_dmv3d.py``, both with the triplane box of radius :data:`CPU_RADIUS`):

========  =====  =====  ======================  ==========================  ===========  ===========
config    image  patch  encoder (layers x dim)  triplane transf. (layers x   triplane     parameters
                                                dim, heads)                  r, C
========  =====  =====  ======================  ==========================  ===========  ===========
tiny      32     8      1 x 32                  2 x 64, 4                    4 -> 8, 8    0.20 M
bench     32     4      2 x 64                  4 x 128, 4                   8 -> 16, 16  1.36 M
small     256    8      6 x 512                 12 x 512, 8                  32 -> 64, 32 91 M
base      256    8      12 x 1024               16 x 1024, 16                32 -> 64, 40 528 M
========  =====  =====  ======================  ==========================  ===========  ===========

``bench`` reads 4 x 4 patches (64 tokens a view): at 32 px an object spans only 2-3 patches of 8, and the
network forward is ~5 % of a CPU training step (the renders are the rest; ``benchmarks/bench_dmv3d.py --speed``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...errors import BadInput
from ..lrm.config import LRMConfig, from_openlrm_config

#: Plücker ray channels concatenated to RGB: (o x d, d)
RAY_CHANNELS = 6


@dataclass(frozen=True)
class DMV3DConfig:
    name: str
    lrm: LRMConfig  # encoder width/depth/patch/image_size, transformer, triplane, NeRF, renderer, meshing
    noisy_views: int = 4  # views denoised jointly (one noise level t); the clean input view is one more
    train_steps: int = 1000  # diffusion steps T
    beta_start: float = 1e-4  # DDPM linear beta schedule
    beta_end: float = 0.02
    view_elevation_deg: float = 20.0  # sampling layout: noisy views on the input camera's orbit (text: the data's)
    view_azimuths_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)  # ... at these azimuths from it
    view_fov_deg: float = 40.0  # vertical field of view of the sampling cameras (the recipe writes its data's)
    text_dim: int = 0  # text variant: width of the CLIP text tokens the triplane transformer also attends to

    @property
    def views(self) -> int:
        """Views the encoder reads: the clean input view (index 0) and the noisy ones."""
        return self.noisy_views + 1

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lrm"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["lrm"].items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DMV3DConfig":
        try:
            lrm = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
                   for k, v in d["lrm"].items()}
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "lrm"}
            return cls(lrm=LRMConfig(**lrm), **fields)
        except (KeyError, TypeError) as e:
            raise BadInput(f"DMV3D config.json is not a DMV3D config ({e})", {"field": "config.json"}) from None


def _lrm(image: int, enc: tuple[int, int], dim: int, layers: int, heads: int, low_res: int, channels: int,
         samples: int, time_dim: int, radius: float = 1.0, patch: int = 8) -> LRMConfig:
    """OpenLRM's conventions at the given sizes, with a ``patch`` x ``patch`` RGB+ray encoder and no DINOv2 parts;
    the triplane spans ``[-radius, radius]^3``."""
    base = from_openlrm_config({
        "camera_embed_dim": time_dim, "rendering_samples_per_ray": samples, "transformer_dim": dim,
        "transformer_layers": layers, "transformer_heads": heads, "triplane_low_res": low_res,
        "triplane_high_res": 2 * low_res, "triplane_dim": channels, "encoder_type": "dinov2",
        "encoder_model_name": "dinov2_vits14_reg", "encoder_feat_dim": enc[1], "encoder_dim": enc[1],
        "encoder_layers": enc[0], "encoder_heads": max(enc[1] // 64, 2), "source_size": image, "render_size": image})
    return base.replace(enc_patch=patch, enc_pos_grid=image // patch, enc_registers=0, enc_layerscale=False,
                        camera_raw_dim=0, background=1.0, foreground_ratio=0.8, radius=radius,
                        license="your own weights (trained with python -m gen3d train dmv3d)")


#: triplane half-extent of the CPU configs: their data (``benchmarks/bench_dmv3d.py``, ``commands.demo.ring_cameras``)
#: frames the object's bounding sphere at 80 % of a 40-degree view, which after the recipe's move of the input camera
#: to distance 2 is a sphere of radius 2 sin(20 deg) 0.8 = 0.55; a box of 0.6 spends the triplane cells and ray samples
#: on the object (a free triplane fitted to Spot's views, held-out IoU: 0.87 at 16^2 and 16 ray samples, 0.93 at 32^2
#: and 24, against 0.44-0.50 at 8^2 and 8 in the unit box)
CPU_RADIUS = 0.6

CONFIGS: dict[str, DMV3DConfig] = {
    "tiny": DMV3DConfig("tiny", _lrm(32, (1, 32), 64, 2, 4, 4, 8, 16, 32, CPU_RADIUS)),
    "bench": DMV3DConfig("bench", _lrm(32, (2, 64), 128, 4, 4, 8, 16, 16, 64, CPU_RADIUS, patch=4)),
    "small": DMV3DConfig("small", _lrm(256, (6, 512), 512, 12, 8, 32, 32, 96, 512)),
    "base": DMV3DConfig("base", _lrm(256, (12, 1024), 1024, 16, 16, 32, 40, 128, 1024)),
}
