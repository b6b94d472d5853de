"""MVDream 4-view text prior (diffusers port ``ashawkey/mvdream-sd2.1-diffusers``, our SDPA multi-view UNet) and
ImageDream, its image-prompted fine-tune (``ashawkey/imagedream-ipmv-diffusers``).

Batches are groups of ``num_frames`` (4) consecutive views of one object sharing the timestep. Default CFG 50 and
the :class:`~backend.guidance.distillation.X0Reconstruction` loss (MVDream-threestudio); view-dependent prompts off.

Camera convention (:func:`mvdream_cameras`): MVDream's ``get_camera`` builds a Y-up OpenGL camera-to-world at
(cos el sin az, sin el, cos el cos az) and left-multiplies the Y-up -> Z-up flip, then normalises the translation.
That is exactly our orbit convention (Z up, az 0 on -Y, az 90 on +X, elevation positive above) with OpenGL camera
axes, so our cameras convert by ``opencv_to_opengl`` plus translation normalisation, flattened row-major.

ImageDream (:class:`ImageDreamPrior`): CLIP ViT-H/14 tokens of the reference image (``hidden_states[-2]``, 257 x
1280) go to the UNet as ``ip``; in ``pixel`` mode (the published diffusers checkpoint) each object gets a 5th frame
holding the reference latent, with an all-zero camera, whose prediction is dropped; ``local`` mode (the ``-local``
checkpoint) has only the tokens. The negative and null branches have zero CLIP tokens and a zero reference latent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...geometry.cameras import Cameras, opencv_to_opengl
from ...models.mvdream_unet import MultiViewUNetModel
from ..clip_image import clip_pixels
from .base import Condition, fp16_variant
from .sd import DiffusersTextPrior
from .text import text_branches


def mvdream_cameras(c2w: torch.Tensor, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Our OpenCV camera-to-world ``[N,4,4]`` (Z-up world) -> MVDream's camera input ``[N,16]``."""
    gl = opencv_to_opengl(c2w.float()).clone()
    pos = gl[:, :3, 3] - torch.as_tensor(target, dtype=gl.dtype, device=gl.device)
    gl[:, :3, 3] = pos / (pos.norm(dim=-1, keepdim=True) + 1e-8)
    return gl.reshape(-1, 16)


class MVDreamPrior(DiffusersTextPrior):
    """Multi-view prior; ``condition(prompt, negative_prompt, cameras)`` with a multiple of 4 cameras."""

    guidance_scale = 50.0
    num_frames = 4
    unet_class = MultiViewUNetModel
    default_weights = "mvdream"

    @property
    def time_embedding(self) -> torch.nn.Module:
        return self.unet.time_embed

    def condition(self, prompt: str, negative_prompt: str = "", cameras: Cameras | torch.Tensor | None = None,
                  target=(0.0, 0.0, 0.0)) -> Condition:
        """``cameras``: :class:`Cameras` or OpenCV c2w ``[B,4,4]``, B a multiple of 4 (views of one object
        consecutive). Branches ``cond``, ``negative``, ``null``, each with ``context`` and ``camera``."""
        c2w = cameras.c2w if isinstance(cameras, Cameras) else cameras
        if c2w is None or c2w.shape[0] % self.num_frames:
            raise ValueError(f"MVDream needs a multiple of {self.num_frames} cameras")
        cam = mvdream_cameras(c2w, target).to(self.device)
        branches = text_branches(self.text, prompt, negative_prompt, cam.shape[0], "context", view_dependent=False)
        return Condition({name: {**b, "camera": cam} for name, b in branches.items()})

    def _eps(self, x, t, context, camera):
        return self.unet(x, t, context=context.to(self.dtype), camera=camera.to(self.dtype),
                         num_frames=self.num_frames)

    def __call__(self, images, cond, t, distillation=None, progress: float = 0.0, **kw):
        """As the base; ``t`` may also be one timestep per group ``[B/4]`` (repeated over its views)."""
        from ..distillation import X0Reconstruction

        if isinstance(t, torch.Tensor) and t.numel() * self.num_frames == images.shape[0]:
            t = t.reshape(-1).repeat_interleave(self.num_frames)
        return super().__call__(images, cond, t, distillation or X0Reconstruction(), progress, **kw)


class ImageDreamPrior(MVDreamPrior):
    """MVDream fine-tuned with an image prompt; call :meth:`set_reference` before :meth:`condition`.

    Defaults as bytedance's ImageDream threestudio guidance: CFG 5, ``ip_mode`` pixel.
    """

    guidance_scale = 5.0
    default_weights = "imagedream"

    def __init__(self, folder, device=None, dtype=None, guidance_scale: float | None = None, ip_mode: str = "pixel"):
        from transformers import CLIPVisionModel

        from ..clip_image import load_clip_processor

        super().__init__(folder, device, dtype, guidance_scale)
        if ip_mode not in ("pixel", "local"):
            raise ValueError(f"ip_mode must be pixel or local, got {ip_mode!r}")
        folder = Path(folder)
        self.ip_mode = ip_mode
        self.processor = load_clip_processor(folder, 224)
        self.image_encoder = CLIPVisionModel.from_pretrained(folder, subfolder="image_encoder", torch_dtype=self.dtype,
                                                             variant=fp16_variant(folder / "image_encoder"))
        self.image_encoder.to(self.device).eval().requires_grad_(False)
        self.reference: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def set_reference(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """``rgb [1,3,H,W]`` in [0,1], the object on white: its CLIP tokens ``[1,257,1280]`` (penultimate layer,
        before ``post_layernorm``) and its VAE latent (a posterior sample at ``image_size``, as the port)."""
        pixels = clip_pixels(rgb, self.processor).to(self.device, self.dtype)
        tokens = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2].float()
        x = self.resize(rgb.to(self.device, torch.float32)).to(self.dtype) * 2 - 1
        latent = self.vae.encode(x).latent_dist.sample(generator) * self.vae.config.scaling_factor
        self.reference = (tokens, latent.float())

    def condition(self, prompt: str = "", negative_prompt: str = "", cameras: Cameras | torch.Tensor | None = None,
                  target=(0.0, 0.0, 0.0)) -> Condition:
        """As MVDream's, each branch adding ``ip [B,257,1280]`` and ``ip_img [B,4,h,w]`` (zeros unless positive)."""
        if self.reference is None:
            raise RuntimeError("ImageDreamPrior.set_reference(image) must come before condition()")
        cond = super().condition(prompt, negative_prompt, cameras, target)
        tokens, latent = self.reference
        for name, branch in cond.branches.items():
            scale = 1.0 if name in ("cond", "plain") else 0.0
            b = branch["camera"].shape[0]
            branch["ip"] = scale * tokens.expand(b, -1, -1)
            branch["ip_img"] = scale * latent.expand(b, -1, -1, -1)
        return cond

    def _eps(self, x, t, context, camera, ip, ip_img):
        kw = dict(context=context.to(self.dtype), ip=ip.to(self.dtype))
        if self.ip_mode == "local":
            return self.unet(x, t, camera=camera.to(self.dtype), num_frames=self.num_frames, **kw)
        f = self.num_frames

        def with_frame(a: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            """``[G*f, ...]`` + one row per group ``[G, ...]`` -> ``[G*(f+1), ...]``, the extra row last."""
            grouped = a.reshape(-1, f, *a.shape[1:])
            return torch.cat([grouped, extra.unsqueeze(1).to(a.dtype)], 1).flatten(0, 1)

        first = slice(None, None, f)
        x5 = with_frame(x, torch.zeros_like(x[first]))          # the UNet puts the reference latent there
        kw = {k: with_frame(v, v[first]) for k, v in kw.items()}
        out = self.unet(x5, with_frame(t, t[first]), camera=with_frame(camera.to(self.dtype), torch.zeros_like(
            camera[first])), num_frames=f + 1, ip_img=ip_img[first], **kw)
        return out.reshape(-1, f + 1, *out.shape[1:])[:, :f].flatten(0, 1)
