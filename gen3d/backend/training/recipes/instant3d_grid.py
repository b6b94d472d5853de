"""Recipe ``instant3d-grid``: fine-tune a text-to-image model (SD 2.1-base layout; SDXL is not trained here) to
draw Instant3D's 2x2 grid of four views from a caption.

One item: an object's first four renders (``dataset multiview --orbit instant3d`` writes exactly the grid's ring:
elevation 20, azimuths 0/90/180/270) composited on white, resized to half the grid side and tiled row-major into one
grid image (the layout :func:`split_grid` reads back), and its caption: ``DATA/captions.json`` (object name ->
text) when present, else the object's folder name with ``_``/``-`` read as spaces. The UNet learns the usual
denoising objective (the scheduler's prediction type, uniform timesteps, the VAE mode of the grid as the clean
latent) with the caption dropped 10 % of the time (classifier-free guidance); VAE and text encoder are frozen.
The evaluation samples one grid with :class:`GridGenerator` from the blob initialisation and reports the denoising
loss at fixed timesteps and noise (``eval_loss``). The export is a diffusers folder, ``grid_weights_path`` of the
``instant3d`` method.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...errors import BadInput
from ...geometry.transforms import read_rgba
from ..data import ObjectViews, caption_ids, item_generator
from . import Recipe, TrainConfig

#: fixed timesteps of the evaluation loss
EVAL_TIMESTEPS = (100, 300, 500, 700, 900)


class GridTrainConfig(TrainConfig):
    model: Literal["sd21-base"] = Field("sd21-base", description="the base text-to-image entry fine-tuned")
    weights_path: str | None = Field(None, description="this diffusers folder instead of the registry's")
    grid_size: int = Field(512, ge=32, le=2048, multiple_of=16, description="grid side in pixels (SD 2.1: 512)")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="probability of training on the empty caption")
    eval_steps: int = Field(20, ge=1, le=200, description="sampling steps of the evaluation grid")

    presets = {
        "tiny": {"steps": 30, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "grid_size": 64, "log_every": 1,
                 "eval_every": 30, "checkpoint_every": 30, "num_workers": 0, "eval_steps": 2, "weight_decay": 0.0},
        "small": {"steps": 2000, "batch_size": 4, "lr": 1e-5, "warmup_steps": 100, "eval_every": 200,
                  "checkpoint_every": 500, "weight_decay": 0.01},
        "full": {"lr": 1e-5, "weight_decay": 0.01, "warmup_steps": 500},
    }


def data_root(obj: ObjectViews) -> Path:
    """The data folder ``obj`` was found in (its name is its folder relative to it)."""
    image = obj.views.image_paths[0]
    return next(p for p in image.parents if image.is_relative_to(p / obj.name))


def captions_for(objects: list[ObjectViews]) -> list[str]:
    """``captions.json`` of the data folder (object name -> caption), else the folder name as words."""
    captions = []
    for obj in objects:
        table = data_root(obj) / "captions.json"
        caption = json.loads(table.read_text()).get(obj.name) if table.is_file() else None
        captions.append(caption or re.sub(r"[_\-/.]+", " ", obj.name).strip())
    return captions


class GridViews(torch.utils.data.Dataset):
    """Keys ``(epoch, index)`` -> ``{"grid": [3, G, G] in [-1, 1], "input_ids": [77], "drop": bool}``."""

    def __init__(self, objects: list[ObjectViews], tokenizer, cfg: GridTrainConfig, captions: list[str]):
        self.objects, self.tokenizer, self.cfg, self.captions = objects, tokenizer, cfg, captions

    def __len__(self) -> int:
        return len(self.objects)

    def grid(self, index: int) -> torch.Tensor:
        folder, half = self.objects[index].views, self.cfg.grid_size // 2
        tiles = []
        for v in range(4):
            rgba = torch.from_numpy(read_rgba(folder.image_paths[v], folder.mask_paths[v])).permute(2, 0, 1)
            rgb = rgba[:3] * rgba[3:] + (1 - rgba[3:])
            tiles.append(F.interpolate(rgb[None], size=(half, half), mode="bilinear", antialias=True)[0])
        grid = torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1)
        return grid.clamp(0, 1) * 2 - 1

    def tokens(self, caption: str) -> torch.Tensor:
        return caption_ids(self.tokenizer, caption)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        gen = item_generator(self.cfg.seed, epoch, index)
        drop = bool(torch.rand((), generator=gen) < self.cfg.caption_dropout)
        return {"grid": self.grid(index), "input_ids": self.tokens("" if drop else self.captions[index]),
                "noise_seed": torch.randint(0, 2 ** 62, (), generator=gen)}


class GridModel(nn.Module):
    """The pipeline's UNet (trained) with its frozen VAE and text encoder; ``forward(batch) -> {"loss"}``."""

    def __init__(self, pipe):
        super().__init__()
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae.requires_grad_(False), \
            pipe.text_encoder.requires_grad_(False)
        self.scheduler, self.pipe = pipe.scheduler, (pipe,)  # a tuple: not a submodule

    def loss(self, grid, input_ids, timesteps, noise) -> torch.Tensor:
        with torch.no_grad():
            z = self.vae.encode(grid.to(self.vae.dtype)).latent_dist.mean * self.vae.config.scaling_factor
            context = self.text_encoder(input_ids)[0]
        noise = noise.to(z)
        noisy = self.scheduler.add_noise(z, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=context).sample
        target = (self.scheduler.get_velocity(z, noise, timesteps)
                  if self.scheduler.config.prediction_type == "v_prediction" else noise)
        return F.mse_loss(pred.float(), target.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grid, ids = batch["grid"], batch["input_ids"]
        gens = [torch.Generator().manual_seed(int(s)) for s in batch["noise_seed"]]
        n_train = self.scheduler.config.num_train_timesteps
        t = torch.stack([torch.randint(0, n_train, (), generator=g) for g in gens]).to(grid.device)
        shape = (4, grid.shape[-2] // 8, grid.shape[-1] // 8)
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(grid.device)
        return {"loss": self.loss(grid, ids, t, noise)}


class Instant3DGridRecipe(Recipe):
    name = "instant3d-grid"
    Config = GridTrainConfig

    def min_views(self, cfg: GridTrainConfig) -> int:
        return 4

    def entry(self, cfg: GridTrainConfig) -> str:
        return "instant3d-grid"

    def tiny(self, cfg: GridTrainConfig) -> bool:
        from ...weights import is_tiny

        return is_tiny(self._folder(cfg))

    def _folder(self, cfg: GridTrainConfig) -> Path:
        from ...weights import resolve

        return resolve(cfg.model, cfg.weights_path)

    def _pipe(self, cfg: GridTrainConfig):
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        folder = self._folder(cfg)
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        return pipe

    def dataset(self, objects, cfg: GridTrainConfig) -> GridViews:
        from transformers import CLIPTokenizer

        for obj in objects:
            cams = obj.views.cameras
            if cams.width != cams.height:
                raise BadInput(f"object {obj.name}: the grid needs square renders", {"object": obj.name})
        tokenizer = CLIPTokenizer.from_pretrained(self._folder(cfg), subfolder="tokenizer")
        return GridViews(objects, tokenizer, cfg, captions_for(objects))

    def model(self, cfg: GridTrainConfig) -> GridModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return GridModel(self._pipe(cfg))

    @torch.no_grad()
    def evaluate(self, model: GridModel, dataset: GridViews, cfg: GridTrainConfig):
        from ...models.instant3d.grid import GridGenerator

        dev = next(model.unet.parameters()).device
        grid = dataset.grid(0)[None].to(dev)
        ids = dataset.tokens(dataset.captions[0])[None].to(dev)
        gen = torch.Generator().manual_seed(0)
        shape = (1, 4, grid.shape[-2] // 8, grid.shape[-1] // 8)
        losses = [float(model.loss(grid, ids, torch.tensor([t], device=dev), torch.randn(shape, generator=gen)))
                  for t in EVAL_TIMESTEPS]
        pipe = model.pipe[0]
        sampler = GridGenerator(type(pipe)(**{**pipe.components, "requires_safety_checker": False}))
        image = sampler(dataset.captions[0], cfg.grid_size, cfg.eval_steps, seed=0)
        truth = (grid[0].permute(1, 2, 0).cpu().numpy() + 1) / 2
        return np.concatenate([truth, image], 1), {"eval_loss": float(np.mean(losses))}

    def export(self, model: GridModel, folder: Path, cfg: GridTrainConfig) -> Path:
        pipe = model.pipe[0]
        pipe.to("cpu", torch.float32)
        pipe.save_pretrained(folder)
        return folder
