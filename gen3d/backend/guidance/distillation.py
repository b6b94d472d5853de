"""Score distillation, written once over any :class:`~backend.guidance.priors.base.DiffusionPrior`.

Each variant is called as ``variant(prior, z, cond, t, progress=0.0, noise=None, ...)`` with latents ``z [B,4,h,w]``
(float32, carrying the gradient back to the renders), timesteps ``t [B]`` and training ``progress`` in [0, 1], and
returns a dict of losses ``loss_*`` and logging scalars (``grad_norm``). A gradient ``g`` on the latents is returned
as the loss ``0.5·‖z − sg(z − g)‖²_sum / B`` (``sg`` = detach), whose derivative with respect to ``z`` is ``g / B``.

- :class:`SDS` (DreamFusion): ``g = w(t)·(ε̂_cfg − ε)`` with selectable ``w(t)``.
- :class:`CSD` (Classifier Score Distillation): ``g = w(t)·s·(c·ε(y) + u·ε(y_neg) + n·ε(∅))`` with the official
  annealing of the negative-prompt weights (u: 0 → −1, n: −1 → 0); with u = 0, n = −1 it is exactly the classifier
  term ``s·(ε_cond − ε_null)`` of SDS.
- :class:`VSD` (ProlificDreamer): ``g = w(t)·(ε̂_pretrained_cfg − ε̂_φ)``; ε_φ is the same UNet with a LoRA adapter
  (peft) and a camera embedding added to the timestep embedding, trained by ``loss_lora`` on the renders.
- :class:`BSD` (DreamCraft3D): VSD whose "pretrained" side is itself fine-tuned (a second adapter, or a full UNet
  copy, with its own camera
  embedding trained by ``loss_pretrain`` on SDEdit-augmented renders).
- :class:`X0Reconstruction` (MVDream): ``0.5·‖z − sg(x̂0)‖²`` with the CFG x0 prediction std-rescaled toward the
  unguided one per group of views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .priors.base import Condition, DiffusionPrior, cfg


def weight(name: str, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """``w(t)`` from ``ᾱ_t``: ``sds`` = 1 − ᾱ (DreamFusion), ``uniform`` = 1, ``fantasia3d`` = √ᾱ·(1 − ᾱ)."""
    a = alphas_cumprod_t
    if name == "sds":
        return 1 - a
    if name == "uniform":
        return torch.ones_like(a)
    if name == "fantasia3d":
        return a.sqrt() * (1 - a)
    raise ValueError(f"unknown weighting {name!r}; choose sds, uniform or fantasia3d")


def loss_from_grad(z: torch.Tensor, grad: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """``{name: 0.5·‖z − sg(z − grad)‖²_sum / B, "grad_norm": ‖grad‖}`` (NaNs in ``grad`` zeroed)."""
    grad = torch.nan_to_num(grad.float())
    target = (z.float() - grad).detach()
    loss = 0.5 * F.mse_loss(z.float(), target, reduction="sum") / z.shape[0]
    return {name: loss, "grad_norm": grad.norm().detach()}


def _noisy(prior: DiffusionPrior, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None):
    noise = torch.randn_like(z) if noise is None else noise
    return noise, prior.add_noise(z.detach(), noise, t)


def _w(prior: DiffusionPrior, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weight(name, prior.alphas_cumprod[t]).view(-1, *([1] * (like.dim() - 1)))


@dataclass
class SDS:
    """Score Distillation Sampling. ``guidance_scale`` None = the prior's default; ``grad_clip`` clamps g."""

    guidance_scale: float | None = None
    weighting: str = "sds"
    grad_clip: float | None = None
    name: str = "loss_sds"

    def __call__(self, prior: DiffusionPrior, z: torch.Tensor, cond: Condition, t: torch.Tensor,
                 progress: float = 0.0, noise: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            noise, z_t = _noisy(prior, z, t, noise)
            eps = prior.predict_cfg(z_t, t, cond, self.guidance_scale)
        grad = _w(prior, self.weighting, t, z) * (eps - noise)
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        return loss_from_grad(z, grad, self.name)


@dataclass
class CSD:
    """Classifier Score Distillation: ``g = w(t)·s·(c·ε(y) + u·ε(y_neg) + n·ε(∅))``.

    ``u`` and ``n`` move linearly from ``*_start`` to ``*_end`` by ``progress = anneal_end``. Defaults are the
    official NeRF stage (u 0 → −1, n −1 → 0 over the first half, w = 1; the official code also divides g by its
    L2 norm over the batch, ``normalize=True``). The official DMTet refine stage is u −1 → −0.5, n 0 → −0.5 over
    all steps, w = sds, no normalisation. ``s = guidance_scale`` multiplies all three (1 in the official code).
    """

    guidance_scale: float = 1.0
    weighting: str = "uniform"
    c: float = 1.0
    u_start: float = 0.0
    u_end: float = -1.0
    n_start: float = -1.0
    n_end: float = 0.0
    anneal_end: float = 0.5
    normalize: bool = False
    name: str = "loss_csd"

    def coefficients(self, progress: float) -> tuple[float, float, float]:
        """``(c, u, n)`` at ``progress``."""
        a = min(max(progress, 0.0) / self.anneal_end, 1.0) if self.anneal_end > 0 else 1.0
        return self.c, self.u_start + a * (self.u_end - self.u_start), self.n_start + a * (self.n_end - self.n_start)

    def __call__(self, prior: DiffusionPrior, z: torch.Tensor, cond: Condition, t: torch.Tensor,
                 progress: float = 0.0, noise: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        c, u, n = self.coefficients(progress)
        branches = [b for b, k in (("cond", c), ("negative", u), ("null", n)) if k != 0.0]
        coef = {"cond": c, "negative": u, "null": n}
        with torch.no_grad():
            _, z_t = _noisy(prior, z, t, noise)
            eps = dict(zip(branches, prior.predict(z_t, t, cond, branches)))
        grad = self.guidance_scale * sum(coef[b] * eps[b] for b in branches)
        grad = _w(prior, self.weighting, t, z) * grad
        if self.normalize:  # the official code divides by the norm of the whole batch's gradient
            grad = grad / (grad.norm() + 1e-8)
        out = loss_from_grad(z, grad, self.name)
        out.update(csd_u=torch.tensor(u), csd_n=torch.tensor(n))
        return out


def _group_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """Standard deviation over each group of ``group`` consecutive batch items: ``[B / group]``."""
    return x.reshape(x.shape[0] // group, -1).std(dim=1)


@dataclass
class X0Reconstruction:
    """MVDream's multi-view loss: ``0.5·‖z − sg(x̂0)‖²_sum / B``.

    ``x̂0`` is predicted from the CFG epsilon; with ``std_rescale`` r > 0 it becomes
    ``r·x̂0·(std(x̂0_cond)/std(x̂0)) + (1 − r)·x̂0``, the std taken over each group of ``prior.num_frames`` views.
    MVDream-threestudio uses r = 0.5 (the paper 0.7) and CFG 50.
    """

    guidance_scale: float | None = None
    std_rescale: float = 0.5
    name: str = "loss_sds"

    def __call__(self, prior: DiffusionPrior, z: torch.Tensor, cond: Condition, t: torch.Tensor,
                 progress: float = 0.0, noise: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            noise, z_t = _noisy(prior, z, t, noise)
            eps_c, eps_u = prior.predict(z_t, t, cond, ("cond", "negative"))
            s = prior.guidance_scale if self.guidance_scale is None else self.guidance_scale
            a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
            x0 = (z_t - (1 - a).sqrt() * cfg(eps_c, eps_u, s)) / a.sqrt()
            if self.std_rescale > 0:
                x0_cond = (z_t - (1 - a).sqrt() * eps_c) / a.sqrt()
                f = prior.num_frames
                factor = ((_group_std(x0_cond, f) + 1e-8) / (_group_std(x0, f) + 1e-8)).repeat_interleave(f)
                x0 = self.std_rescale * x0 * factor.view(-1, 1, 1, 1) + (1 - self.std_rescale) * x0
        return loss_from_grad(z, z.detach() - x0, self.name)


class CameraEmbedding(nn.Module):
    """Flattened 4x4 camera-to-world (16 numbers) -> timestep-embedding width: Linear, SiLU, Linear (threestudio's
    ``TimestepEmbedding(16, 1280)``); the output is added to the UNet's timestep embedding."""

    def __init__(self, embed_dim: int, camera_dim: int = 16):
        super().__init__()
        self.linear_1 = nn.Linear(camera_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, camera: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(camera)))


def _embed_width(prior: DiffusionPrior) -> int:
    probe = prior.time_embedding
    linears = [m for m in probe.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features


class VSD(nn.Module):
    """Variational Score Distillation with a LoRA epsilon estimator sharing the prior's UNet.

    ``cameras [B,4,4]`` (any fixed convention; flattened and fed to :class:`CameraEmbedding`) must be passed to
    the call. Trainable: the adapter's LoRA weights and the camera embedding (:meth:`trainable_parameters`, lr 1e-4
    in threestudio). Returns ``loss_vsd`` (the distillation loss on the renders) and ``loss_lora`` (the estimator's
    diffusion loss on the detached renders, t ~ U[0, T), camera dropped with probability ``camera_dropout``).
    Defaults (threestudio ProlificDreamer): CFG 7.5 pretrained, ``guidance_scale_lora`` 1, rank 4, w = 1 − ᾱ.
    """

    adapter = "vsd_estimator"

    def __init__(self, prior: DiffusionPrior, guidance_scale: float = 7.5, guidance_scale_lora: float = 1.0,
                 lora_rank: int = 4, camera_dim: int = 16, camera_dropout: float = 0.1, weighting: str = "sds",
                 name: str = "loss_vsd"):
        super().__init__()
        self.guidance_scale, self.guidance_scale_lora = guidance_scale, guidance_scale_lora
        self.camera_dropout, self.weighting, self.name = camera_dropout, weighting, name
        self.camera_embedding = self._add_adapter(prior, self.adapter, lora_rank, camera_dim)
        self._hook_camera: torch.Tensor | None = None
        self._hook = prior.time_embedding.register_forward_hook(self._add_camera)

    def _add_adapter(self, prior: DiffusionPrior, name: str, rank: int, camera_dim: int) -> CameraEmbedding:
        from peft import LoraConfig

        prior.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                          target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=name)
        for n_, p in prior.unet.named_parameters():
            if f".{name}." in n_:
                p.data = p.data.float()  # train adapters in float32 even when the prior runs in fp16
        prior.unet.disable_adapters()
        return CameraEmbedding(_embed_width(prior), camera_dim).to(prior.device)

    def _add_camera(self, module, inputs, output):
        return output if self._hook_camera is None else output + self._hook_camera.to(output.dtype)

    def lora_parameters(self, prior: DiffusionPrior, adapter: str | None = None) -> list[nn.Parameter]:
        key = f".{adapter or self.adapter}."
        return [p for n_, p in prior.unet.named_parameters() if key in n_]

    def trainable_parameters(self, prior: DiffusionPrior) -> list[nn.Parameter]:
        return self.lora_parameters(prior) + list(self.camera_embedding.parameters())

    def _eps_with(self, prior: DiffusionPrior, adapter: str, embedding: CameraEmbedding, z_t, t, cond,
                  branches: Sequence[str], cameras: torch.Tensor) -> list[torch.Tensor]:
        """Epsilon of ``branches`` with ``adapter`` active and ``cameras`` (one row per branch row) embedded."""
        prior.unet.enable_adapters()
        prior.unet.set_adapter(adapter)
        self._hook_camera = embedding(cameras.float())
        try:
            return prior.predict(z_t, t, cond, branches)
        finally:
            self._hook_camera = None
            prior.unet.disable_adapters()
            for p in self._adapter_parameters(prior):  # peft's set_adapter/disable_adapters toggle requires_grad
                p.requires_grad_(True)

    def _adapter_parameters(self, prior: DiffusionPrior) -> list[nn.Parameter]:
        return self.lora_parameters(prior, self.adapter)

    def _estimator_eps(self, prior, z_t, t, cond, cameras, branch: str) -> torch.Tensor:
        cam = cameras.flatten(1)
        if self.guidance_scale_lora == 1.0:
            return self._eps_with(prior, self.adapter, self.camera_embedding, z_t, t, cond, (branch,), cam)[0]
        eps_c, eps_u = self._eps_with(prior, self.adapter, self.camera_embedding, z_t, t, cond, (branch, branch),
                                      torch.cat([cam, torch.zeros_like(cam)]))
        return cfg(eps_c, eps_u, self.guidance_scale_lora)

    def _teacher_eps(self, prior, z_t, t, cond, cameras) -> torch.Tensor:
        return prior.predict_cfg(z_t, t, cond, self.guidance_scale)

    def diffusion_loss(self, prior: DiffusionPrior, adapter: str, embedding: CameraEmbedding, z: torch.Tensor,
                       cond: Condition, cameras: torch.Tensor, branch: str) -> torch.Tensor:
        """Standard epsilon-prediction loss of ``adapter`` on ``z`` (detached), t ~ U[0, T), camera dropout."""
        z = z.detach()
        t = torch.randint(0, prior.num_train_timesteps, (z.shape[0],), device=z.device)
        noise = torch.randn_like(z)
        cam = cameras.flatten(1).float()
        keep = (torch.rand(cam.shape[0], 1, device=cam.device) >= self.camera_dropout).float()
        eps = self._eps_with(prior, adapter, embedding, prior.add_noise(z, noise, t), t, cond, (branch,), cam * keep)[0]
        return F.mse_loss(eps, noise)

    def forward(self, prior: DiffusionPrior, z: torch.Tensor, cond: Condition, t: torch.Tensor, progress: float = 0.0,
                noise: torch.Tensor | None = None, cameras: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        if cameras is None:
            raise ValueError("VSD needs the render cameras (cameras=[B,4,4])")
        plain = "plain" if "plain" in cond else "cond"  # the estimator sees the view-independent prompt
        with torch.no_grad():
            noise, z_t = _noisy(prior, z, t, noise)
            eps_teacher = self._teacher_eps(prior, z_t, t, cond, cameras)
            eps_phi = self._estimator_eps(prior, z_t, t, cond, cameras, plain)
        out = loss_from_grad(z, _w(prior, self.weighting, t, z) * (eps_teacher - eps_phi), self.name)
        out["loss_lora"] = self.diffusion_loss(prior, self.adapter, self.camera_embedding, z, cond, cameras, plain)
        return out

    def remove(self, prior: DiffusionPrior) -> None:
        """Detach the camera hook and delete the adapter(s) from the prior's UNet."""
        self._hook.remove()
        prior.unet.delete_adapters([self.adapter])


class BSD(VSD):
    """Bootstrapped Score Distillation: VSD whose teacher is the prior fine-tuned on augmented renders.

    The teacher has its own camera embedding and is trained with :meth:`teacher_loss` (``loss_pretrain``) on renders
    augmented by ``prior.refine`` (DreamCraft3D's "DreamBooth" phase: SDEdit with the frozen prior from the current
    render). By default it is a second LoRA adapter (``bsd_teacher``, rank 16) on the shared, frozen UNet: the
    memory-saving substitute. ``full_teacher=True`` is DreamCraft3D's own choice: a full float32 copy of the UNet,
    every weight trained (official lr 1e-5), at the cost of a second UNet and its optimiser state. Defaults: CFG 2.0.
    """

    teacher = "bsd_teacher"

    def __init__(self, prior: DiffusionPrior, guidance_scale: float = 2.0, teacher_rank: int = 16,
                 full_teacher: bool = False, **kw):
        import copy

        teacher_unet = copy.deepcopy(prior.unet).float().requires_grad_(True) if full_teacher else None
        super().__init__(prior, guidance_scale=guidance_scale, **kw)
        self.teacher_unet = teacher_unet
        if teacher_unet is None:
            self.teacher_embedding = self._add_adapter(prior, self.teacher, teacher_rank, 16)
        else:
            self.teacher_embedding = CameraEmbedding(_embed_width(prior), 16).to(prior.device)
            self._teacher_hook = teacher_unet.time_embedding.register_forward_hook(self._add_camera)

    def teacher_parameters(self, prior: DiffusionPrior) -> list[nn.Parameter]:
        weights = self.lora_parameters(prior, self.teacher) if self.teacher_unet is None else list(
            self.teacher_unet.parameters())
        return weights + list(self.teacher_embedding.parameters())

    def _eps_with(self, prior: DiffusionPrior, adapter: str, embedding: CameraEmbedding, z_t, t, cond,
                  branches: Sequence[str], cameras: torch.Tensor) -> list[torch.Tensor]:
        if adapter != self.teacher or self.teacher_unet is None:
            return super()._eps_with(prior, adapter, embedding, z_t, t, cond, branches, cameras)
        frozen, dtype = prior.unet, prior.dtype
        prior.unet, prior.dtype = self.teacher_unet, torch.float32  # the copy, in float32 (it trains)
        self._hook_camera = embedding(cameras.float())
        try:
            return prior.predict(z_t, t, cond, branches)
        finally:
            prior.unet, prior.dtype, self._hook_camera = frozen, dtype, None

    def _teacher_eps(self, prior, z_t, t, cond, cameras) -> torch.Tensor:
        cam = cameras.flatten(1)
        eps_c, eps_u = self._eps_with(prior, self.teacher, self.teacher_embedding, z_t, t, cond, ("cond", "negative"),
                                      torch.cat([cam, cam]))
        return cfg(eps_c, eps_u, self.guidance_scale)

    def teacher_loss(self, prior: DiffusionPrior, augmented: torch.Tensor, cond: Condition,
                     cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fine-tune the teacher on ``augmented [B,3,H,W]`` in [0,1] (e.g. ``prior.refine(renders, ...)``)."""
        with torch.no_grad():
            z = prior.encode(augmented)
        return {"loss_pretrain": self.diffusion_loss(prior, self.teacher, self.teacher_embedding, z, cond, cameras,
                                                     "cond")}

    def _adapter_parameters(self, prior: DiffusionPrior) -> list[nn.Parameter]:
        teacher = self.lora_parameters(prior, self.teacher) if self.teacher_unet is None else []
        return self.lora_parameters(prior, self.adapter) + teacher

    def remove(self, prior: DiffusionPrior) -> None:
        super().remove(prior)
        if self.teacher_unet is None:
            prior.unet.delete_adapters([self.teacher])
        else:
            self._teacher_hook.remove()
            self.teacher_unet = None
