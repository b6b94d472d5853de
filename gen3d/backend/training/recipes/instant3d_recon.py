"""Recipe ``instant3d-recon``: train or fine-tune Instant3D's sparse-view reconstructor (:class:`SparseViewLRM`),
exported in InstantMesh's NeRF layout so that the ``instant3d`` method loads the result.

One item: ``input_views`` posed input views plus ``side_views`` more views of one object, all drawn at random from
its renders (Instant3D's random-view training; InstantMesh trains the same way on 32 random renders). The object
stays in its world frame (Z up), moved so that the point the cameras look at is the origin; each input keeps its
real pose as its camera (:func:`encode_cameras`) and is composited on white and resized to the model's input size
(:func:`model_views`). Every drawn view is volume-rendered and compared exactly as in recipe ``lrm`` (its dataset
crops, random grey backgrounds and loss module: MSE + mask [+ LPIPS] + TV). Not done: InstantMesh's random yaw
augmentation. Defaults: ``lrm``'s loop settings, 4 inputs (Instant3D) and 4 supervised views, 96-192 px renders
(InstantMesh's 192-pixel targets) with a 96-pixel region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ...geometry.cameras import Cameras
from ...models.instant3d.reconstructor import (INSTANTMESH_CONFIGS, SparseViewLRM, encode_cameras,
                                               from_instantmesh_config, model_views)
from ...models.lrm.config import LRMConfig
from .lrm import LRMRecipe, LRMTrainConfig, LRMViews, LRMWithLoss

#: (render_min, render_max, render_region)
RENDER = (96, 192, 96)


class Instant3DReconConfig(LRMTrainConfig):
    model: Literal["instantmesh-nerf-base", "instantmesh-nerf-large"] = Field(
        "instantmesh-nerf-base", description="the weights-registry entry trained and written to OUT/weights/<model>")
    input_views: int = Field(4, ge=1, le=16, description="posed input views per item (Instant3D: 4)")
    side_views: int = Field(4, ge=1, le=31, description="supervised views besides the inputs")

    presets = {"tiny": {**LRMTrainConfig.presets["tiny"], "input_views": 2, "side_views": 2},
               "small": LRMTrainConfig.presets["small"], "full": {}}

    @property
    def render_range(self) -> tuple[int, int, int]:
        return self.render_min or RENDER[0], self.render_max or RENDER[1], self.render_region or RENDER[2]


class SparseViews(LRMViews):
    """``lrm``'s dataset view with the first ``input_views`` drawn views as inputs: ``source [V, 3, S, S]`` and
    ``source_camera [V, 16]``; rays and targets cover all drawn views, in the object-centred world frame."""

    def item_views(self) -> int:
        return self.cfg.input_views + self.cfg.side_views

    def frame(self, index: int, views: list[int], rgba: torch.Tensor) -> tuple[Cameras, dict[str, torch.Tensor]]:
        cams = self.objects[index].views.cameras
        c2w = cams.c2w[views].clone()
        c2w[:, :3, 3] -= self.pivots[index]
        posed = Cameras(cams.K[views], c2w, cams.width, cams.height)
        V = self.cfg.input_views
        on_white = rgba[:V, :3] * rgba[:V, 3:] + (1 - rgba[:V, 3:])
        return posed, {"source": model_views(on_white, self.model_cfg),
                       "source_camera": encode_cameras(posed[:V], self.model_cfg.model_yaw_deg)}


def fresh_reconstructor(cfg: LRMConfig, seed: int) -> SparseViewLRM:
    """A newly initialised SparseViewLRM, seeded: default layer init, triplane tokens ``randn / sqrt(D)`` (InstantMesh's
    ``pos_embed`` init), camera adaLN at zero."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SparseViewLRM(cfg)
        with torch.no_grad():
            model.transformer.tokens.normal_(0.0, cfg.dim ** -0.5)
    return model


def _size(cfg: Instant3DReconConfig) -> str:
    return cfg.model.rsplit("-", 1)[1]


class Instant3DReconRecipe(LRMRecipe):
    name = "instant3d-recon"
    Config = Instant3DReconConfig

    def min_views(self, cfg: Instant3DReconConfig) -> int:
        return cfg.input_views + cfg.side_views

    def _params(self, cfg: Instant3DReconConfig) -> tuple[dict, Path | None]:
        """InstantNeRF's constructor kwargs (published, tiny, or the weights folder's) and the folder to load."""
        from ...models.instant3d.checkpoints import find_checkpoint, instantmesh_params
        from ...models.instant3d.tiny import tiny_params
        from ...weights import resolve

        if cfg.init == "scratch":
            tiny = cfg.architecture == "tiny"
            return (tiny_params(_size(cfg)) if tiny else dict(INSTANTMESH_CONFIGS[_size(cfg)])), None
        path = resolve(cfg.model, cfg.weights_path)
        return instantmesh_params(path, find_checkpoint(path)[1]), path

    def dataset(self, objects, cfg: Instant3DReconConfig) -> SparseViews:
        return SparseViews(objects, from_instantmesh_config(self._params(cfg)[0]), cfg)

    def model(self, cfg: Instant3DReconConfig) -> LRMWithLoss:
        from ...models.instant3d.checkpoints import load_instantmesh

        params, path = self._params(cfg)
        net = fresh_reconstructor(from_instantmesh_config(params), cfg.seed) if path is None else load_instantmesh(path)
        return LRMWithLoss(net.train(), cfg, params)

    @torch.no_grad()
    def evaluate(self, model: LRMWithLoss, dataset: SparseViews, cfg: Instant3DReconConfig):
        """Object 0 from its first ``input_views`` renders: ``eval_views`` others, evenly spread, rendered whole at
        ``eval_size`` on white. Returns the grid (top: inputs, then ground truth; bottom: predictions) and
        ``eval_psnr``."""
        n, V, size = len(dataset.objects[0]), cfg.input_views, cfg.eval_size
        k = min(cfg.eval_views, n - V)
        views = list(range(V)) + [V + (i * (n - V)) // k for i in range(k)]
        item = dataset.views(0, views, size, torch.zeros(len(views), 2, dtype=torch.long), size,
                             torch.ones(len(views)))
        dev = next(model.parameters()).device
        batch = {key: v[None].to(dev) for key, v in item.items()}
        planes = model.lrm.forward_planes(batch["source"], batch["source_camera"])
        rgb, _ = model.render(planes, batch["origins"][:, V:], batch["dirs"][:, V:], batch["background"][:, V:],
                              [0], jitter=False)
        pred, gt = rgb[0].float().clamp(0, 1).cpu(), item["rgb"][V:]
        psnr = float(-10 * torch.log10(F.mse_loss(pred, gt).clamp_min(1e-10)))
        inputs = F.interpolate(item["source"], size=(size, size), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
        top = torch.cat([*inputs, *gt], 1)
        bottom = torch.cat([torch.ones(size, size * V, 3), *pred], 1)
        return torch.cat([top, bottom], 0).numpy(), {"eval_psnr": psnr}

    def export(self, model: LRMWithLoss, folder: Path, cfg: Instant3DReconConfig) -> Path:
        from ...models.instant3d.checkpoints import save_instantmesh

        published = INSTANTMESH_CONFIGS[_size(cfg)]
        overrides = {k: v for k, v in model.hub_config.items() if published.get(k) != v}
        return save_instantmesh(model.lrm.cpu().float(), folder, _size(cfg), overrides or None)
