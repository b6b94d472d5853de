"""Recipe ``agp``: train SweetDreamer's aligned geometric prior on canonical coordinate maps of a 3D collection.

Data: ``dataset multiview --passes rgba,ccm`` folders (a ``ccm_file_path`` per frame; render at the AGP's
resolution, 64 px for the real model; SweetDreamer's elevations are -10..45°). One item is one random view of one
object: its CCM as the 4-channel AGP input (:func:`~backend.geometry.ccm.agp_input_from_png`, area-resized to
``resolution`` when the renders differ), its camera (:func:`~backend.geometry.ccm.agp_camera`) and its caption,
from ``captions`` (a JSON object: object name -> caption; the name is the object's folder relative to the data
folder, or its last part) or else the class prompt ``"a 3D model of a <class>"`` (the class is the first folder of
the name, ``DIR/<class>/<id>``) with the view suffix the method's prompts carry (``", front view"`` etc. from the
camera, :func:`~backend.guidance.priors.text.view_prompt`, as the official CCM prompt processor at inference),
replaced by the empty prompt with probability ``cfg_dropout`` so that classifier-free guidance works.
Loss: epsilon MSE at a uniform timestep of SD 2.1-base's DDPM schedule.

Initialisation: the UNet from SD 2.1-base (registry ``sd21-base`` or ``sd_weights_path``) where shapes allow
(:func:`~backend.models.agp.agp_unet_from_sd`): every SD parameter is kept (SD's latents are 4-channel too, so
``conv_in``/``conv_out`` fit); only ``camera_embedding.*`` is new. The CLIP text encoder is frozen and exported
with the UNet. The tiny preset uses whatever ``sd21-base`` resolves to: with ``weights tiny`` that is the tiny SD.

The paper's scale is the ``full`` preset: 20-30k Objaverse objects (filtered), about a day on 8 GPUs. Its other
fine-tuning numbers (batch, learning rate, steps) are not published; ours are SD fine-tuning's usual ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...errors import BadInput
from ...geometry.cameras import orbit_angles
from ...geometry.ccm import agp_camera, agp_input_from_png
from ...geometry.transforms import read_rgba
from ...guidance.priors.text import view_prompt
from ..data import ObjectViews, caption_ids, item_generator
from . import Recipe, TrainConfig


class AGPTrainConfig(TrainConfig):
    sd_weights_path: str | None = Field(None, description="SD 2.1-base folder to start from (else the registry)")
    resolution: int = Field(64, ge=8, le=512, description="CCM side the AGP denoises (64 as the official)")
    captions: str | None = Field(None, description="JSON file: object name -> caption (else the class prompt)")
    cfg_dropout: float = Field(0.1, ge=0, le=1, description="chance of the empty prompt (for CFG)")
    eval_views: int = Field(4, ge=1, le=16, description="views of object 0 in the evaluation image")
    batch_size: int = Field(32, ge=2, le=4096, description=(
        "samples per process and micro-step (at least 2: the camera embedding's BatchNorm needs a batch)"))

    presets = {
        # a CPU smoke run on the tiny SD (python -m gen3d weights tiny sd21-base)
        "tiny": {"steps": 40, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0,
                 "resolution": 16, "log_every": 1, "eval_every": 20, "checkpoint_every": 20, "num_workers": 0},
        "small": {"steps": 5000, "batch_size": 16, "lr": 1e-5, "warmup_steps": 200, "weight_decay": 0.01,
                  "beta2": 0.999, "eval_every": 500, "checkpoint_every": 1000},
        # the paper's scale: 20-30k objects, ~1 day on 8 GPUs (run with --num-processes 8)
        "full": {"steps": 60_000, "batch_size": 32, "lr": 1e-5, "warmup_steps": 500, "weight_decay": 0.01,
                 "beta2": 0.999, "eval_every": 2000, "checkpoint_every": 2000},
    }


def class_prompt(name: str) -> str:
    """``"a 3D model of a <class>"`` for an object named ``<class>/<id>`` (else ``"a 3D model"``)."""
    parts = name.split("/")
    return f"a 3D model of a {parts[0].replace('_', ' ')}" if len(parts) > 1 else "a 3D model"


def load_captions(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        captions = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"option captions: cannot read {path}: {e}", {"field": "captions"}) from None
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise BadInput(f"option captions: {path} must be a JSON object of object name -> caption",
                       {"field": "captions"})
    return captions


class CCMViews(torch.utils.data.Dataset):
    """Keys ``(epoch, index)`` -> ``{"x0" [4,R,R], "camera" [12], "input_ids" [77], "t" [], "noise" [4,R,R]}``."""

    def __init__(self, objects: list[ObjectViews], cfg: AGPTrainConfig, tokenizer, num_train_timesteps: int):
        self.objects, self.cfg, self.tokenizer, self.T = objects, cfg, tokenizer, num_train_timesteps
        captions = load_captions(cfg.captions)
        self.captions = [captions.get(o.name, captions.get(o.name.split("/")[-1], class_prompt(o.name)))
                         for o in objects]
        self.ccm_paths = []
        for obj in objects:
            root = obj.views.image_paths[0].parent.parent
            frames = json.loads((root / "transforms.json").read_text())["frames"]
            if not all("ccm_file_path" in f for f in frames):
                raise BadInput(f"object {obj.name}: no CCM pass; render it with python -m gen3d dataset multiview "
                               f"--passes rgba,ccm", {"field": "data", "object": obj.name})
            self.ccm_paths.append([root / f["ccm_file_path"] for f in frames])

    def __len__(self) -> int:
        return len(self.objects)

    def ccm(self, index: int, view: int) -> torch.Tensor:
        rgba = torch.from_numpy(read_rgba(self.ccm_paths[index][view], None)).permute(2, 0, 1)[None]
        x = agp_input_from_png(rgba)
        if x.shape[-1] != self.cfg.resolution:
            x = F.interpolate(x, (self.cfg.resolution,) * 2, mode="area")
        return x[0]

    def tokens(self, caption: str) -> torch.Tensor:
        return caption_ids(self.tokenizer, caption)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        gen = item_generator(self.cfg.seed, epoch, index)
        view = int(torch.randint(len(self.ccm_paths[index]), (1,), generator=gen))
        drop = float(torch.rand((), generator=gen)) < self.cfg.cfg_dropout
        x0 = self.ccm(index, view)
        c2w = self.objects[index].views.cameras.c2w[view:view + 1]
        elevation, azimuth = orbit_angles(c2w)[0, :2].tolist()
        return {"x0": x0, "camera": agp_camera(c2w)[0],
                "input_ids": self.tokens("" if drop else view_prompt(self.captions[index], elevation, azimuth)),
                "t": torch.randint(self.T, (), generator=gen), "noise": torch.randn(x0.shape, generator=gen)}


class AGPWithLoss(nn.Module):
    """The AGP UNet being trained and the frozen CLIP text encoder: ``forward(batch) -> {"loss"}`` (epsilon MSE)."""

    def __init__(self, unet, text_encoder, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def noisy(self, x0, noise, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def eps(self, x_t, t, input_ids, camera):
        with torch.no_grad():
            text = self.text_encoder(input_ids)[0]
        return self.unet(x_t, t, text, class_labels=camera).sample

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_t = self.noisy(batch["x0"], batch["noise"], batch["t"])
        eps = self.eps(x_t, batch["t"], batch["input_ids"], batch["camera"])
        return {"loss": F.mse_loss(eps.float(), batch["noise"].float())}


class AGPRecipe(Recipe):
    name = "agp"
    Config = AGPTrainConfig

    def min_views(self, cfg) -> int:
        return 1

    def entry(self, cfg) -> str:
        return "agp"

    def _sd(self, cfg) -> Path:
        from ... import weights

        return weights.resolve("sd21-base", cfg.sd_weights_path)

    def tiny(self, cfg) -> bool:
        from ... import weights

        return weights.is_tiny(self._sd(cfg))

    def _scheduler(self, cfg):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_pretrained(self._sd(cfg), subfolder="scheduler")

    def dataset(self, objects, cfg) -> CCMViews:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(self._sd(cfg), subfolder="tokenizer")
        return CCMViews(objects, cfg, tokenizer, int(self._scheduler(cfg).config.num_train_timesteps))

    def model(self, cfg) -> AGPWithLoss:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        from ...guidance.priors.base import fp16_variant
        from ...models.agp import agp_unet_from_sd

        sd = self._sd(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the new camera embedding's init
            unet, _ = agp_unet_from_sd(UNet2DConditionModel.from_pretrained(
                sd, subfolder="unet", torch_dtype=torch.float32, variant=fp16_variant(sd / "unet")), cfg.resolution)
        text = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder", torch_dtype=torch.float32,
                                             variant=fp16_variant(sd / "text_encoder"))
        return AGPWithLoss(unet.train(), text, self._scheduler(cfg).alphas_cumprod)

    @torch.no_grad()
    def evaluate(self, model: AGPWithLoss, dataset: CCMViews, cfg):
        """Object 0's first ``eval_views`` views noised to t = 500 with fixed noise: the loss there and an image
        (top: the CCMs as ``(c + 1) / 2``, bottom: the one-step x0 predictions)."""
        n = min(cfg.eval_views, len(dataset.ccm_paths[0]))
        dev = next(model.parameters()).device
        x0 = torch.stack([dataset.ccm(0, v) for v in range(n)]).to(dev)
        camera = agp_camera(dataset.objects[0].views.cameras.c2w[:n]).to(dev)
        angles = orbit_angles(dataset.objects[0].views.cameras.c2w[:n])
        ids = torch.stack([dataset.tokens(view_prompt(dataset.captions[0], float(e), float(a)))
                           for e, a in angles[:, :2]]).to(dev)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(dev)
        t = torch.full((n,), 500, device=dev)
        x_t = model.noisy(x0, noise, t)
        eps = model.eps(x_t, t, ids, camera).float()
        a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
        pred = ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        show = lambda x: ((x[:, :3] + 1) / 2).permute(0, 2, 3, 1).cpu()  # noqa: E731
        image = torch.cat([torch.cat(list(show(x0)), 1), torch.cat(list(show(pred)), 1)], 0)
        return image.numpy().astype(np.float32), {"eval_loss": float(F.mse_loss(eps, noise))}

    def export(self, model: AGPWithLoss, folder: Path, cfg) -> Path:
        from ...models.agp import save_agp

        return save_agp(folder, model.unet.cpu().float(), self._scheduler(cfg), self._sd(cfg))
