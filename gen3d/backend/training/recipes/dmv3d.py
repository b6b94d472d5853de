"""Recipe ``dmv3d``: train a DMV3D denoiser from multi-view renders (``python -m gen3d dataset multiview``).

One item: ``1 + noisy_views + extra_views`` views of one object at the model's image size on white. Image variant:
the scene is moved so that view 0 (the clean input) is the canonical input camera (the LRM recipe's
:func:`normalise_cameras`). Text variant: the input view is always blank, so it cannot fix the frame; the scene
keeps the data's world axes (Z up, front = azimuth 0 on -Y, ``dataset multiview``'s and ``orbit_cameras``'
convention) and is only moved and scaled (:func:`world_frame`): each object sits in its own world pose, the blank
input slot is the canonical input camera (the world's front at elevation 0, the sampler's input camera) and the
sampling layout's noisy views sit at the data's median elevation (written into the export).
A timestep ``t`` is drawn uniformly from ``[0, T)`` (DDPM's sampling, also Open-DiffusionGS'), the noisy views get
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (one ``t`` for all of them), the denoiser predicts a triplane from
(input view, noisy views, Plücker rays of all, ``t``) and renders it at *every* view: the noisy views (the x0
prediction), the input view and the extra supervision views, each over a random grey (0, 0.5 or 1, as the LRM
recipe: on white alone an empty triplane is a cheap minimum). With probability ``uncond_prob`` the input view is
blanked (condition dropout: the unconditional path of classifier-free guidance). Loss: ``pixel_weight`` x MSE(RGB)
+ ``mask_weight`` x :func:`balanced_mask_loss` (opacity against alpha) + ``lpips_weight`` x LPIPS-VGG (only when
installed locally, as the LRM recipe).

``rays_per_view`` (default: whole images) renders only that many pixels of each view, half drawn from the object
(alpha > 0.5) and half from the background (all from one class where a view has only one; with replacement where a
class has fewer pixels than its half): the render under autograd, ~95 % of a CPU step, shrinks by ``S^2 /
rays_per_view`` and the colour term weighs object and background equally. The denoiser still reads whole views. LPIPS
needs whole images, so it must be off (``lpips_weight=0``; a config error says so otherwise). Whole images are the
same code path with every pixel chosen (:func:`chosen_pixels`, :func:`gather_pixels`).

Why the mask term is class-balanced: the object covers ~10 % of a view, so with a plain MSE an empty triplane costs
only mean(alpha^2) ~ 0.09 and every tiny model trained so far fell onto that plateau first (opacity inside and
outside the silhouette alike, IoU 0) and stayed there for ~100 steps before carving the object out. Weighting object
and background pixels equally makes "empty" cost 0.5, so the density grows inside the silhouette from the first steps
(Spot, t uniform: IoU 0.47 at step 40 instead of 0.0; see ``docs/DESIGN.md``).

Defaults (preset ``full``, model ``base``) are the Open-DiffusionGS numbers the issue quotes: AdamW lr 1e-5 with
cosine decay, gradient clip 0.5, MSE + 0.5 LPIPS, 4 denoised views at 256 px. DMV3D's own are unpublished.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...geometry.cameras import Cameras, orbit_angles
from ...geometry.placement import fov_from_focal
from ...models.dmv3d import CONFIGS, DMV3D, DMV3DConfig, Schedule, fresh_dmv3d, plucker_rays, render_views
from ...models.dmv3d.sampler import sample_triplane, to_model
from ..data import caption_ids, item_generator
from . import Recipe, TrainConfig
from .agp import class_prompt, load_captions
from .lrm import BACKGROUNDS, LRMViews, canonical_c2w, perceptual_loss, weighted_loss


class DMV3DTrainConfig(TrainConfig):
    config: Literal["tiny", "bench", "small", "base"] = Field("base",
                                                              description="architecture (models/dmv3d/config.py)")
    extra_views: int = Field(2, ge=0, le=16, description="supervision-only views rendered besides the denoised ones")
    samples_per_ray: int | None = Field(None, ge=4, le=1024, description="ray samples (config default)")
    pixel_weight: float = Field(1.0, ge=0)
    mask_weight: float = Field(1.0, ge=0)
    lpips_weight: float = Field(0.5, ge=0, description="used when lpips and its VGG16 weights are installed")
    rays_per_view: int | None = Field(None, ge=2, description="render only this many pixels of each view, half on "
                                      "the object and half on the background (None: whole images; needs "
                                      "lpips_weight=0)")
    eval_sampling_steps: int = Field(10, ge=1, le=1000, description="DDIM steps of the evaluation sample")
    uncond_prob: float = Field(0.1, ge=0, le=1, description="chance an item's condition (input view, or caption "
                               "in the text variant) is dropped: the unconditional path of classifier-free guidance")
    text_encoder: str | None = Field(None, description="folder with a CLIP tokenizer/ and text_encoder/ (an SD "
                                     "folder): trains the text variant on captions, its input view always blank")
    captions: str | None = Field(None, description="text variant: JSON file, object name -> caption (else the "
                                 "class prompt)")

    lr: float = Field(1e-5, gt=0, le=1.0)
    grad_clip: float = Field(0.5, ge=0)
    warmup_steps: int = Field(2000, ge=0)
    batch_size: int = Field(8, ge=1, le=4096)

    presets = {
        # CPU run: tiny architecture, 32 px, the 5 denoiser views only, 8 ray samples (~0.4 s a step on 2 cores)
        "tiny": {"config": "tiny", "steps": 300, "batch_size": 1, "lr": 2e-3, "warmup_steps": 5, "grad_clip": 1.0,
                 "extra_views": 0, "samples_per_ray": 8, "log_every": 10, "eval_every": 100,
                 "checkpoint_every": 100, "num_workers": 0, "lpips_weight": 0.0, "eval_sampling_steps": 4},
        # one GPU: the small architecture from scratch
        "small": {"config": "small", "steps": 200_000, "batch_size": 8, "lr": 1e-4, "warmup_steps": 2000,
                  "eval_every": 2000, "checkpoint_every": 5000},
        "full": {},
    }

    @model_validator(mode="after")
    def _consistent(self):
        if self.rays_per_view is not None:
            if self.lpips_weight > 0:
                raise ValueError(f"rays_per_view={self.rays_per_view} renders scattered pixels, and LPIPS needs whole "
                                 f"images: set lpips_weight=0 (or leave rays_per_view unset)")
            pixels = self.architecture.lrm.image_size ** 2
            if self.rays_per_view > pixels:
                raise ValueError(f"rays_per_view={self.rays_per_view} is more than the {pixels} pixels of a view")
        return self

    @property
    def architecture(self) -> DMV3DConfig:
        return CONFIGS[self.config]

    # what LRMViews reads: side views and one fixed render size, whole images (no crop)
    @property
    def side_views(self) -> int:
        return self.architecture.noisy_views + self.extra_views

    @property
    def render_range(self) -> tuple[int, int, int]:
        s = self.architecture.lrm.image_size
        return s, s, s


class DMV3DViews(LRMViews):
    """Items of ``views [M]`` (0: input, then ``noisy_views`` denoised, then extras), whole images on white:
    ``rgb [M, S, S, 3]``, ``alpha``, ``origins``/``dirs`` ``[M, S, S, 3]``, ``rays [M, 6, S, S]``, ``t``,
    ``keep_input`` (0: blank input view), ``pixels [M, P]`` (the flat pixel indices rendered for the loss,
    :func:`chosen_pixels`) and, with a ``tokenizer`` (text variant), the caption's ``input_ids`` (empty when
    dropped)."""

    def __init__(self, objects, model_cfg, cfg: DMV3DTrainConfig, tokenizer=None):
        super().__init__(objects, model_cfg, cfg)
        self.tokenizer = tokenizer
        captions = load_captions(cfg.captions)
        self.captions = [captions.get(o.name, captions.get(o.name.split("/")[-1], class_prompt(o.name)))
                         for o in objects]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        gen = item_generator(self.cfg.seed, epoch, index)
        M, S = self.cfg.side_views + 1, self.model_cfg.image_size
        views = torch.randperm(len(self.objects[index]), generator=gen)[:M].tolist()
        item = self.views(index, views, S, torch.zeros(M, 2, dtype=torch.long), S, torch.ones(M))
        c = self.cfg.architecture
        item["t"] = torch.randint(0, c.train_steps, (), generator=gen)
        item["noise"] = torch.randn(c.noisy_views, 3, S, S, generator=gen)
        item["rays"] = plucker_rays(*self.denoiser_rays(index, views[0], item["origins"], item["dirs"]))
        drop = bool(torch.rand((), generator=gen) < self.cfg.uncond_prob)
        item["keep_input"] = torch.tensor(float(not drop and self.tokenizer is None))
        if self.tokenizer is not None:
            item["input_ids"] = caption_ids(self.tokenizer, "" if drop else self.captions[index])
        item["loss_background"] = torch.tensor(BACKGROUNDS)[torch.randint(0, len(BACKGROUNDS), (M,), generator=gen)]
        item["pixels"] = chosen_pixels(item["alpha"], self.cfg.rays_per_view, gen)
        return item

    def frame(self, index: int, views: list[int], rgba: torch.Tensor) -> tuple[Cameras, dict[str, torch.Tensor]]:
        """Image variant: the LRM recipe's (view 0 canonical); text variant: :func:`world_frame`."""
        if self.tokenizer is None:
            return super().frame(index, views, rgba)
        cams = self.objects[index].views.cameras
        c2w = world_frame(cams.c2w, self.pivots[index], self.model_cfg.source_camera_distance)[views]
        return Cameras(cams.K[views], c2w, cams.width, cams.height), {}

    def denoiser_rays(self, index: int, view: int, origins: torch.Tensor,
                      dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rays the denoiser reads for views ``origins, dirs [M, S, S, 3]`` (slot 0 the input view, ``view`` of
        object ``index``): unchanged in the image variant; in the text variant the blank input slot's are the
        canonical input camera's (the sampler's), with ``view``'s intrinsics at the model's image size."""
        if self.tokenizer is None:
            return origins, dirs
        cams, S = self.objects[index].views.cameras, self.model_cfg.image_size
        c2w = canonical_c2w(self.model_cfg.source_camera_distance)[None]
        slot = Cameras(cams.K[view:view + 1], c2w, cams.width, cams.height).resized(S, S).pixel_rays()
        return tuple(torch.cat([a, b[1:]]) for a, b in zip(slot, (origins, dirs)))


def world_frame(c2w: torch.Tensor, pivot: torch.Tensor, distance: float) -> torch.Tensor:
    """``c2w [N, 4, 4]`` moved by ``-pivot`` and scaled by ``distance / mean |centre - pivot|``, axes kept: the
    world's front camera on the mean orbit (azimuth 0, elevation 0, looking at ``pivot``) becomes
    :func:`canonical_c2w` (the same as :func:`normalise_cameras` with that virtual camera as the source)."""
    centres = c2w[:, :3, 3]
    out = c2w.clone()
    out[:, :3, 3] = (centres - pivot) * (distance / float((centres - pivot).norm(dim=-1).mean()))
    return out


def chosen_pixels(alpha: torch.Tensor, rays: int | None, generator: torch.Generator) -> torch.Tensor:
    """Flat pixel indices ``[M, P]`` into each view of ``alpha [M, S, S]``: ``rays is None`` -> every pixel in order
    (``P = S^2``, no draw); else ``P = rays``, ``rays // 2`` object pixels (alpha > 0.5) then the rest background,
    without replacement where the class has enough pixels (all from one class where a view has only one)."""
    M, flat = len(alpha), alpha.reshape(len(alpha), -1)
    if rays is None:
        return torch.arange(flat.shape[1]).expand(M, -1).contiguous()
    picks = []
    for inside in flat > 0.5:
        classes = [c.float() for c in (inside, ~inside) if c.any()]
        counts = [rays // 2, rays - rays // 2] if len(classes) == 2 else [rays]
        picks.append(torch.cat([torch.multinomial(c, n, replacement=bool(n > c.sum()), generator=generator)
                                for c, n in zip(classes, counts)]))
    return torch.stack(picks)


def gather_pixels(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``x [B, M, S, S, ...]``, ``pixels [B, M, P]`` flat indices -> ``[B, M, P, ...]``."""
    flat = x.flatten(2, 3)
    index = pixels.reshape(*pixels.shape, *([1] * (flat.dim() - 3))).expand(-1, -1, -1, *flat.shape[3:])
    return flat.gather(2, index)


class DMV3DWithLoss(nn.Module):
    """The denoiser being trained (``self.model``) and its loss: ``forward(batch) -> {"loss", "pixel", "mask",
    ["lpips"]}``."""

    def __init__(self, model: DMV3D, cfg: DMV3DTrainConfig, text_encoder=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.text_encoder = None if text_encoder is None else text_encoder.requires_grad_(False).eval()
        c = model.config
        self.schedule = Schedule.linear(c.train_steps, c.beta_start, c.beta_end)
        self._lpips = (perceptual_loss(),) if cfg.lpips_weight > 0 else (None,)

    def settings(self, jitter: bool):
        s = self.model.render_settings(jitter=jitter, ray_chunk=1 << 16)
        n = self.cfg.samples_per_ray
        if n:
            s.n_coarse, s.n_importance = n - n // 2, n // 2
        return s

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """CLIP token ids ``[B, L]`` -> the frozen text encoder's last hidden state ``[B, L, text_dim]``."""
        return None if self.text_encoder is None else self.text_encoder(input_ids)[0]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        V = self.model.config.views
        x0 = to_model(batch["rgb"][:, :V])  # [B, V, 3, S, S]
        noisy = self.schedule.add_noise(x0[:, 1:], batch["noise"], batch["t"])
        clean = x0[:, :1] * batch["keep_input"].view(-1, 1, 1, 1, 1)  # dropped: blank (0), as unconditional sampling
        planes = self.model.forward_planes(torch.cat([clean, noisy], 1), batch["rays"][:, :V], batch["t"],
                                           self.encode_text(batch.get("input_ids")))
        origins, dirs, rgb, alpha = (gather_pixels(batch[k], batch["pixels"]) for k in ("origins", "dirs", "rgb",
                                                                                       "alpha"))
        bg = batch["loss_background"][:, :, None, None]  # [B, M] random greys: empty space is never free
        rgb_pred, opacity = render_views(self.model, planes, origins, dirs, self.settings(True),
                                         background=bg.expand(-1, -1, alpha.shape[2], 1).reshape(len(bg), -1, 1))
        target = rgb - (1 - alpha[..., None]) * (1 - bg)  # the white-composited pixels over bg
        terms = {"pixel": F.mse_loss(rgb_pred, target), "mask": balanced_mask_loss(opacity, alpha)}
        weights = {"pixel": self.cfg.pixel_weight, "mask": self.cfg.mask_weight}
        if self._lpips[0] is not None:  # whole images (the config refuses LPIPS with rays_per_view)
            S = batch["rgb"].shape[-2]
            rgb_pred, target = rgb_pred.unflatten(2, (S, S)), target.unflatten(2, (S, S))
        return weighted_loss(terms, weights, self._lpips[0], self.cfg.lpips_weight, rgb_pred, target)


def balanced_mask_loss(opacity: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Squared error of ``opacity`` against ``alpha`` (same shape, in [0, 1]), averaged over the object's pixels and
    over the background's separately (soft membership ``alpha`` and ``1 - alpha``), then the two means averaged."""
    se = (opacity - alpha).pow(2)
    fg, bg = alpha.float(), 1 - alpha.float()
    return 0.5 * ((se * fg).sum() / fg.sum().clamp_min(1e-6) + (se * bg).sum() / bg.sum().clamp_min(1e-6))


def input_fov_deg(dataset: LRMViews) -> float:
    """Vertical field of view of the data's cameras (object 0, view 0), written into the exported config as the
    sampling cameras' field of view."""
    cams = dataset.objects[0].views.cameras
    return fov_from_focal(float(cams.K[0, 1, 1]) / cams.height)


def median_elevation_deg(dataset: LRMViews) -> float:
    """Median elevation of all the data's cameras about their object's pivot (world axes, Z up): the text variant's
    sampling elevation, so that its noisy views sit where it was trained (e.g. 15 degrees for rings at 15 and 45)."""
    return float(torch.cat([orbit_angles(o.views.cameras.c2w, pivot.tolist())[:, 0]
                            for o, pivot in zip(dataset.objects, dataset.pivots)]).median())


class DMV3DRecipe(Recipe):
    name = "dmv3d"
    Config = DMV3DTrainConfig

    def min_views(self, cfg: DMV3DTrainConfig) -> int:
        return cfg.side_views + 1

    def dataset(self, objects, cfg: DMV3DTrainConfig) -> DMV3DViews:
        tokenizer = None
        if cfg.text_encoder:
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(Path(cfg.text_encoder) / "tokenizer")
        views = DMV3DViews(objects, cfg.architecture.lrm, cfg, tokenizer)
        self._data_fov = input_fov_deg(views)
        self._layout = {"view_elevation_deg": median_elevation_deg(views)} if tokenizer is not None else {}
        return views

    def model(self, cfg: DMV3DTrainConfig) -> DMV3DWithLoss:
        if not cfg.text_encoder:
            return DMV3DWithLoss(fresh_dmv3d(cfg.architecture, cfg.seed).train(), cfg)
        from transformers import CLIPTextModel

        text = CLIPTextModel.from_pretrained(Path(cfg.text_encoder) / "text_encoder", torch_dtype=torch.float32)
        arch = dataclasses.replace(cfg.architecture, text_dim=text.config.hidden_size)
        return DMV3DWithLoss(fresh_dmv3d(arch, cfg.seed).train(), cfg, text)

    def entry(self, cfg: DMV3DTrainConfig) -> str:
        return "dmv3d"

    def tiny(self, cfg: DMV3DTrainConfig) -> bool:
        return cfg.config == "tiny"

    @torch.no_grad()
    def evaluate(self, model: DMV3DWithLoss, dataset: DMV3DViews, cfg: DMV3DTrainConfig):
        """Object 0 sampled from pure noise given its view 0, with the data's cameras as the noisy views (views
        1..noisy_views), rendered at the remaining views (held out from the sample). Returns the image grid (top:
        input then ground truth, bottom: renders of the sample) and ``eval_psnr`` (whole images on white)."""
        m = model.model
        n, V = len(dataset.objects[0]), m.config.views
        views = list(range(min(n, V + max(cfg.extra_views, 1))))
        S = m.cfg.image_size
        item = dataset.views(0, views, S, torch.zeros(len(views), 2, dtype=torch.long), S, torch.ones(len(views)))
        dev = next(m.parameters()).device
        source, text = item["rgb"][:1].permute(0, 3, 1, 2).to(dev), {}
        origins, dirs = dataset.denoiser_rays(0, views[0], item["origins"][:V], item["dirs"][:V])
        if dataset.tokenizer is not None:  # text variant: object 0's caption, blank input view
            ids = torch.stack([caption_ids(dataset.tokenizer, c) for c in (dataset.captions[0], "")]).to(dev)
            source, (text["text"], text["null_text"]) = None, model.encode_text(ids).split(1)
        planes = sample_triplane(m, source, cfg.eval_sampling_steps, torch.Generator().manual_seed(cfg.seed),
                                 rays=(origins.to(dev), dirs.to(dev)),
                                 samples_per_ray=cfg.samples_per_ray, **text)
        held = slice(V, None) if len(views) > V else slice(1, V)
        rgb, _ = render_views(m, planes, item["origins"][None, held].to(dev), item["dirs"][None, held].to(dev),
                              model.settings(False))
        pred, gt = rgb[0].clamp(0, 1).cpu(), item["rgb"][held]
        psnr = float(-10 * torch.log10(F.mse_loss(pred, gt).clamp_min(1e-10)))
        top = torch.cat([item["rgb"][0], *gt], 1)
        bottom = torch.cat([torch.ones(S, S, 3), *pred], 1)
        return torch.cat([top, bottom], 0).numpy(), {"eval_psnr": psnr}

    def export(self, model: DMV3DWithLoss, folder: Path, cfg: DMV3DTrainConfig) -> Path:
        from ...models.dmv3d import save_dmv3d

        m = model.model.cpu().float()
        m.config = dataclasses.replace(m.config, view_fov_deg=self._data_fov, **self._layout)
        save_dmv3d(m, folder)
        for part in ("tokenizer", "text_encoder") if cfg.text_encoder else ():  # the text variant's prompt encoder
            shutil.copytree(Path(cfg.text_encoder) / part, folder / part, dirs_exist_ok=True)
        return folder
