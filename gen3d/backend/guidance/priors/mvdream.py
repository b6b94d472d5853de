"""MVDream 4-view text prior (diffusers port ``ashawkey/mvdream-sd2.1-diffusers``, our SDPA multi-view UNet).

Batches are groups of ``num_frames`` (4) consecutive views of one object sharing the timestep. Default CFG 50 and
the :class:`~backend.guidance.distillation.X0Reconstruction` loss (MVDream-threestudio); view-dependent prompts off.

Camera convention (:func:`mvdream_cameras`): MVDream's ``get_camera`` builds a Y-up OpenGL camera-to-world at
(cos el sin az, sin el, cos el cos az) and left-multiplies the Y-up -> Z-up flip, then normalises the translation.
That is exactly our orbit convention (Z up, az 0 on -Y, az 90 on +X, elevation positive above) with OpenGL camera
axes, so our cameras convert by ``opencv_to_opengl`` plus translation normalisation, flattened row-major.
"""

from __future__ import annotations

import torch

from ...geometry.cameras import Cameras, opencv_to_opengl
from ...models.mvdream_unet import MultiViewUNetModel
from .base import Condition
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
