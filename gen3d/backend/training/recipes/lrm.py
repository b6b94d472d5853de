"""Recipe ``lrm``: train or fine-tune an OpenLRM / TripoSR-family model from multi-view renders.

One item (OpenLRM's Objaverse dataset, ``openlrm/datasets/objaverse.py``): ``side_views + 1`` views of one object;
the first is the input. The scene is moved by a similarity so that the input camera becomes the model's canonical
one (on -Y at ``source_camera_distance`` looking at the origin, Z up: the frame of :meth:`LRM.field`), scaled by that
distance over the input camera's distance to the point its optical axis passes closest to the other axes (the
object's centre on an orbit). The input image is composited on the model's background and resized as its
inference does; every sampled view (input included) is composited on a random grey (0, 0.5 or 1), resized to a
random resolution in ``[render_min, render_max]`` and a random ``render_region`` square crop is volume-rendered.
Loss: ``pixel_weight`` x MSE(RGB) + ``mask_weight`` x MSE(opacity, alpha) + ``lpips_weight`` x LPIPS-VGG (only when
the ``lpips`` package and the VGG16 weights are installed locally; never downloaded) + ``tv_weight`` x the triplanes'
total variation.

Defaults are OpenLRM's published ``configs/train-sample.yaml``: AdamW lr 4e-4, betas (0.9, 0.95), weight decay
0.05, gradient clip 1.0, 3000 warm-up steps then cosine, 3 side views, render 64-192 px with a 64 px region
(small; base 96-288/96, large 128-384/128), pixel 1.0, perceptual 1.0, TV 5e-4. The mask term is ours (weight 1.0;
TripoSR's report mentions a mask loss without its weight). TripoSR's training resolution is not published: 128-256/128.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...errors import BadInput
from ...geometry.cameras import Cameras, look_at, opencv_to_opengl
from ...geometry.transforms import read_rgba
from ...models.lrm import LRM, LRMConfig
from ...models.lrm.preprocess import model_input
from ...representations.triplane import RenderSettings
from ..data import ObjectViews, item_generator
from . import Recipe, TrainConfig

log = logging.getLogger(__name__)

ENTRIES = ("openlrm-small", "openlrm-base", "openlrm-large", "triposr")
#: (render_min, render_max, render_region) per entry: OpenLRM's model card table; TripoSR's is ours
RENDER = {"openlrm-small": (64, 192, 64), "openlrm-base": (96, 288, 96), "openlrm-large": (128, 384, 128),
          "triposr": (128, 256, 128)}
#: OpenLRM's random background greys of the rendered views
BACKGROUNDS = (0.0, 0.5, 1.0)
#: torchvision's VGG16 file that lpips loads from the torch hub cache
VGG16_FILE = "vgg16-397923af.pth"


class LRMTrainConfig(TrainConfig):
    model: Literal["openlrm-small", "openlrm-base", "openlrm-large", "triposr"] = Field(
        "openlrm-small", description="the weights-registry entry trained and written to OUT/weights/<model>")
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="fine-tune the entry's published weights, or train a freshly initialised network")
    architecture: Literal["published", "tiny"] = Field(
        "published", description="with init=scratch: the entry's published size, or its tiny test size")
    weights_path: str | None = Field(None, description="with init=pretrained: this folder instead of the registry")
    side_views: int = Field(3, ge=1, le=31, description="views rendered besides the input view")
    render_min: int | None = Field(None, ge=4, le=2048, description="smallest random render resolution")
    render_max: int | None = Field(None, ge=4, le=2048, description="largest random render resolution")
    render_region: int | None = Field(None, ge=4, le=2048, description="side of the rendered square crop")
    samples_per_ray: int | None = Field(None, ge=4, le=1024, description="ray samples (model default: 96 / 128)")
    pixel_weight: float = Field(1.0, ge=0)
    mask_weight: float = Field(1.0, ge=0)
    lpips_weight: float = Field(1.0, ge=0, description="used when lpips and its VGG16 weights are installed")
    tv_weight: float = Field(5e-4, ge=0)
    eval_views: int = Field(4, ge=1, le=16, description="held-out views in the evaluation render")
    eval_size: int = Field(96, ge=8, le=1024, description="evaluation render resolution")

    presets = {
        # a CPU smoke run: the tiny architecture from scratch on a few renders
        "tiny": {"init": "scratch", "architecture": "tiny", "steps": 40, "batch_size": 2, "lr": 3e-3,
                 "warmup_steps": 4, "side_views": 2, "render_min": 16, "render_max": 24, "render_region": 12,
                 "samples_per_ray": 12, "log_every": 1, "eval_every": 20, "checkpoint_every": 20,
                 "num_workers": 0, "eval_size": 32, "lpips_weight": 0.0},
        # fine-tuning a published model on one GPU
        "small": {"steps": 2000, "batch_size": 4, "warmup_steps": 100, "eval_every": 200, "checkpoint_every": 500},
        "full": {},
    }

    @model_validator(mode="after")
    def _consistent(self):
        lo, hi, region = self.render_range
        if not lo <= hi:
            raise ValueError(f"render_min {lo} > render_max {hi}")
        if region > lo:
            raise ValueError(f"render_region {region} > render_min {lo}")
        if self.init == "pretrained" and self.architecture != "published":
            raise ValueError("architecture=tiny needs init=scratch")
        return self

    @property
    def render_range(self) -> tuple[int, int, int]:
        lo, hi, region = RENDER[self.model]
        return self.render_min or lo, self.render_max or hi, self.render_region or region


# --- cameras --------------------------------------------------------------------------------------------------
def axes_pivot(c2w: torch.Tensor) -> torch.Tensor:
    """The point closest (least squares) to every camera's optical axis; ``c2w [N, 4, 4]`` OpenCV -> ``[3]``."""
    c, f = c2w[:, :3, 3].double(), c2w[:, :3, 2].double()
    P = torch.eye(3, dtype=torch.float64) - f[:, :, None] * f[:, None, :]
    return torch.linalg.lstsq(P.sum(0), (P @ c[:, :, None]).sum(0)).solution[:, 0].float()


def canonical_c2w(distance: float) -> torch.Tensor:
    """The LRM's canonical input camera, OpenCV ``[4, 4]``: on -Y at ``distance``, looking at the origin, Z up."""
    return look_at(torch.tensor([0.0, -distance, 0.0]), torch.zeros(3))[0]


def normalise_cameras(c2w: torch.Tensor, source: int, pivot: torch.Tensor, distance: float) -> torch.Tensor:
    """``c2w [N, 4, 4]`` OpenCV after the similarity that takes camera ``source`` to :func:`canonical_c2w` and scales
    its distance to ``pivot`` (along its axis) to ``distance``."""
    src = c2w[source]
    d = float((pivot - src[:3, 3]) @ src[:3, 2])
    canon = canonical_c2w(distance)
    R = canon[:3, :3] @ src[:3, :3].T
    out = c2w.clone()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = (distance / d) * (c2w[:, :3, 3] - src[:3, 3]) @ R.T + canon[:3, 3]
    return out


def source_camera(K: torch.Tensor, size: int, distance: float) -> torch.Tensor:
    """OpenLRM's 16-number camera of the canonical input view: OpenGL 3x4 camera-to-world flattened, then
    ``fx, fy, cx, cy`` over the image size (``K [3, 3]`` pixels)."""
    rt = opencv_to_opengl(canonical_c2w(distance))[:3].reshape(12)
    return torch.cat([rt, torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]) / size])


# --- the dataset view -----------------------------------------------------------------------------------------
class LRMViews(torch.utils.data.Dataset):
    """Keys ``(epoch, index)`` -> one object's training item (a dict of tensors, M = side_views + 1, R = region):
    ``source [3, S, S]``, ``source_camera [16]``, ``origins, dirs [M, R, R, 3]`` (normalised frame),
    ``rgb [M, R, R, 3]`` composited on ``background [M]``, ``alpha [M, R, R]``, ``render_seed`` (int64, seeds the
    ray jitter)."""

    def __init__(self, objects: list[ObjectViews], model_cfg: LRMConfig, cfg: LRMTrainConfig):
        self.objects, self.model_cfg, self.cfg = objects, model_cfg, cfg
        self.pivots = []
        for obj in objects:
            cams = obj.views.cameras
            if cams.width != cams.height:
                raise BadInput(f"object {obj.name}: images are {cams.width} x {cams.height}; the lrm recipe needs "
                               f"square renders", {"field": "data", "object": obj.name})
            pivot = axes_pivot(cams.c2w)
            ahead = ((pivot - cams.c2w[:, :3, 3]) * cams.c2w[:, :3, 2]).sum(-1)
            if not bool((ahead > 1e-6).all()):
                raise BadInput(f"object {obj.name}: the cameras do not look at a common centre (an orbit around the "
                               f"object is expected)", {"field": "data", "object": obj.name})
            self.pivots.append(pivot)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        gen = item_generator(self.cfg.seed, epoch, index)
        M = self.item_views()
        lo, hi, region = self.cfg.render_range
        views = torch.randperm(len(self.objects[index]), generator=gen)[:M].tolist()
        res = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        anchors = torch.randint(0, res - region + 1, (M, 2), generator=gen)
        background = torch.tensor(BACKGROUNDS)[torch.randint(0, len(BACKGROUNDS), (M,), generator=gen)]
        seed = torch.randint(0, 2 ** 62, (), generator=gen)
        return {**self.views(index, views, res, anchors, region, background), "render_seed": seed}

    def item_views(self) -> int:
        """Views drawn per item: the input and ``side_views`` others."""
        return self.cfg.side_views + 1

    def frame(self, index: int, views: list[int], rgba: torch.Tensor) -> tuple[Cameras, dict[str, torch.Tensor]]:
        """The drawn views' cameras in the training frame and the model's inputs: view 0 moved to the canonical
        input camera (``source [3, S, S]``, ``source_camera [16]``)."""
        mc, cams = self.model_cfg, self.objects[index].views.cameras
        c2w = normalise_cameras(cams.c2w[views], 0, self.pivots[index], mc.source_camera_distance)
        inputs = {"source": model_input(rgba[:1], mc)[0],
                  "source_camera": source_camera(cams.K[views[0]], cams.width, mc.source_camera_distance)}
        return Cameras(cams.K[views], c2w, cams.width, cams.height), inputs

    def views(self, index: int, views: list[int], res: int, anchors: torch.Tensor, region: int,
              background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views ``views`` of object ``index`` (the first are the inputs), rendered at ``res`` and cropped to the
        ``region`` squares at ``anchors [M, 2]`` (row, column)."""
        folder = self.objects[index].views
        rgba = torch.stack([torch.from_numpy(read_rgba(folder.image_paths[v], folder.mask_paths[v])) for v in views])
        rgba = rgba.permute(0, 3, 1, 2)  # [M, 4, H, W]
        posed, inputs = self.frame(index, views, rgba)
        origins, dirs = posed.resized(res, res).pixel_rays()
        alpha = rgba[:, 3:]
        rgb = rgba[:, :3] * alpha + background[:, None, None, None] * (1 - alpha)
        small = F.interpolate(torch.cat([rgb, alpha], 1), size=(res, res), mode="bicubic", align_corners=True)
        small = small.clamp(0, 1).permute(0, 2, 3, 1)  # [M, res, res, 4]
        rows = anchors[:, 0, None] + torch.arange(region)  # [M, R]
        cols = anchors[:, 1, None] + torch.arange(region)
        m = torch.arange(len(views))[:, None, None]
        crop = (m, rows[:, :, None], cols[:, None, :])
        return {**inputs, "origins": origins[crop], "dirs": dirs[crop], "rgb": small[crop][..., :3].contiguous(),
                "alpha": small[crop][..., 3].contiguous(), "background": background.float()}


# --- the model with its loss ----------------------------------------------------------------------------------
def perceptual_loss():
    """LPIPS-VGG (OpenLRM's training perceptual term) when the ``lpips`` package and torchvision's VGG16 weights are
    installed locally, else None. Nothing is downloaded."""
    try:
        import lpips
    except ImportError:
        log.info("LPIPS term off: the lpips package is not installed")
        return None
    if not (Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE).is_file():
        log.info("LPIPS term off: %s is not in the torch hub cache", VGG16_FILE)
        return None
    return lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)


def weighted_loss(terms: dict, weights: dict, lpips_fn, lpips_weight: float, rgb: torch.Tensor,
                  target: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"loss": sum of weights[k] * terms[k], **terms}``, with the LPIPS term of ``rgb`` against ``target``
    (``[..., H, W, 3]`` in [0, 1]) added when ``lpips_fn`` is not None."""
    if lpips_fn is not None:
        lpips_fn.to(rgb.device)
        flat = lambda x: x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)  # noqa: E731
        terms = {**terms, "lpips": lpips_fn(flat(rgb), flat(target), normalize=True).mean()}
        weights = {**weights, "lpips": lpips_weight}
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}


def tv_loss(planes: torch.Tensor) -> torch.Tensor:
    """OpenLRM's TV term: mean squared neighbour differences of ``planes [B, 3, C, H, W]`` along H plus along W."""
    return ((planes[..., 1:, :] - planes[..., :-1, :]).pow(2).mean()
            + (planes[..., :, 1:] - planes[..., :, :-1]).pow(2).mean())


class LRMWithLoss(nn.Module):
    """The LRM being trained (``self.lrm``) and its loss: ``forward(batch) -> {"loss", "pixel", "mask", "tv",
    ["lpips"]}`` (scalars, batch means)."""

    def __init__(self, lrm: LRM, cfg: LRMTrainConfig, hub_config: dict):
        super().__init__()
        self.lrm, self.cfg, self.hub_config = lrm, cfg, hub_config
        self._lpips = (perceptual_loss(),) if cfg.lpips_weight > 0 else (None,)  # a tuple: not a submodule

    def settings(self, jitter: bool) -> RenderSettings:
        n = self.cfg.samples_per_ray or self.lrm.cfg.samples_per_ray
        fine = n // 2 if self.lrm.cfg.importance_samples else 0
        s = self.lrm.render_settings(jitter=jitter, ray_chunk=1 << 16)
        s.n_coarse, s.n_importance = n - fine, fine
        return s

    def render(self, planes, origins, dirs, background, seeds, jitter: bool = True):
        """Per object ``b``: rays ``[B, M, R, R, 3]`` through ``planes[b]`` -> ``rgb [B, M, R, R, 3]`` over
        ``background [B, M]`` and ``opacity [B, M, R, R]``."""
        settings = self.settings(jitter)
        rgbs, opacities = [], []
        for b in range(len(planes)):
            gen = torch.Generator().manual_seed(int(seeds[b]))
            bg = background[b].repeat_interleave(origins[b, 0].numel() // 3)[:, None]
            out = self.lrm.field(planes[b]).render_rays(origins[b].reshape(-1, 3), dirs[b].reshape(-1, 3), settings,
                                                        background=bg, generator=gen)
            rgbs.append(out["rgb"].reshape(origins[b].shape))
            opacities.append(out["opacity"].reshape(origins[b].shape[:-1]))
        return torch.stack(rgbs), torch.stack(opacities)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        planes = self.lrm.forward_planes(batch["source"], batch["source_camera"])
        rgb, opacity = self.render(planes, batch["origins"], batch["dirs"], batch["background"], batch["render_seed"])
        terms = {"pixel": F.mse_loss(rgb, batch["rgb"]), "mask": F.mse_loss(opacity, batch["alpha"]),
                 "tv": tv_loss(planes.float())}
        weights = {"pixel": self.cfg.pixel_weight, "mask": self.cfg.mask_weight, "tv": self.cfg.tv_weight}
        return weighted_loss(terms, weights, self._lpips[0], self.cfg.lpips_weight, rgb, batch["rgb"])


def fresh_lrm(cfg: LRMConfig, seed: int) -> LRM:
    """A newly initialised LRM (PyTorch's default layer init; OpenLRM's triplane tokens ``randn / sqrt(D)``, DINOv2's
    ``trunc_normal(0.02)`` position embedding and CLS token, register tokens ``normal(1e-6)``), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LRM(cfg)
        with torch.no_grad():
            model.transformer.tokens.normal_(0.0, cfg.dim ** -0.5)
            nn.init.trunc_normal_(model.encoder.pos_embed, std=0.02)
            nn.init.trunc_normal_(model.encoder.cls_token, std=0.02)
            if model.encoder.register_tokens is not None:
                model.encoder.register_tokens.normal_(0.0, 1e-6)
    return model


def hub_config_for(cfg: LRMTrainConfig) -> dict:
    """The entry's published (or tiny) config file contents, for a network built from scratch."""
    from ...models.lrm import OPENLRM_HUB_CONFIGS, TRIPOSR_HUB_CONFIG
    from ...models.lrm.tiny import TINY_OPENLRM, TINY_OPENLRM_PACKED, tiny_triposr_yaml

    if cfg.model == "triposr":
        return tiny_triposr_yaml() if cfg.architecture == "tiny" else json.loads(json.dumps(TRIPOSR_HUB_CONFIG))
    if cfg.architecture == "tiny":
        return dict(TINY_OPENLRM_PACKED if cfg.model == "openlrm-base" else TINY_OPENLRM)
    return dict(OPENLRM_HUB_CONFIGS[cfg.model.removeprefix("openlrm-")])


def model_config(cfg: LRMTrainConfig, hub_config: dict) -> LRMConfig:
    from ...models.lrm.checkpoints import resolve_interpolations
    from ...models.lrm.config import from_openlrm_config, from_triposr_config

    if cfg.model == "triposr":
        return from_triposr_config(resolve_interpolations(hub_config))
    return from_openlrm_config(hub_config)


class LRMRecipe(Recipe):
    name = "lrm"
    Config = LRMTrainConfig

    def min_views(self, cfg: LRMTrainConfig) -> int:
        return cfg.side_views + 1

    def _hub_config(self, cfg: LRMTrainConfig) -> tuple[dict, Path | None]:
        if cfg.init == "scratch":
            return hub_config_for(cfg), None
        from ...models.lrm.checkpoints import detect_family
        from ...weights import resolve

        path = resolve(cfg.model, cfg.weights_path)
        if detect_family(path) == "triposr":
            import yaml

            return yaml.safe_load((path / "config.yaml").read_text()), path
        return json.loads((path / "config.json").read_text()), path

    def dataset(self, objects, cfg: LRMTrainConfig) -> LRMViews:
        return LRMViews(objects, model_config(cfg, self._hub_config(cfg)[0]), cfg)

    def model(self, cfg: LRMTrainConfig) -> LRMWithLoss:
        hub, path = self._hub_config(cfg)
        if path is None:
            lrm = fresh_lrm(model_config(cfg, hub), cfg.seed)
        else:
            from ...models.lrm import load_lrm

            lrm = load_lrm(path)
        return LRMWithLoss(lrm.train(), cfg, hub)

    def entry(self, cfg: LRMTrainConfig) -> str:
        return cfg.model

    def tiny(self, cfg: LRMTrainConfig) -> bool:
        return cfg.architecture == "tiny"

    @torch.no_grad()
    def evaluate(self, model: LRMWithLoss, dataset: LRMViews, cfg: LRMTrainConfig):
        """Object 0 from its view 0: ``eval_views`` other views (evenly spread) rendered whole at ``eval_size`` on
        white. Returns the image grid (top: input, then ground truth; bottom: predictions) and ``eval_psnr``."""
        n = len(dataset.objects[0])
        k = min(cfg.eval_views, n - 1)
        views = [0] + [1 + (i * (n - 1)) // k for i in range(k)]
        size = cfg.eval_size
        item = dataset.views(0, views, size, torch.zeros(len(views), 2, dtype=torch.long), size,
                             torch.ones(len(views)))
        dev = next(model.parameters()).device
        batch = {key: v[None].to(dev) for key, v in item.items()}
        planes = model.lrm.forward_planes(batch["source"], batch["source_camera"])
        rgb, _ = model.render(planes, batch["origins"][:, 1:], batch["dirs"][:, 1:], batch["background"][:, 1:],
                              [0], jitter=False)
        pred, gt = rgb[0].float().clamp(0, 1).cpu(), item["rgb"][1:]
        psnr = float(-10 * torch.log10(F.mse_loss(pred, gt).clamp_min(1e-10)))
        source = F.interpolate(item["source"][None], size=(size, size), mode="bilinear", antialias=True)[0]
        top = torch.cat([source.permute(1, 2, 0), *gt], 1)
        bottom = torch.cat([torch.ones(size, size, 3), *pred], 1)
        return torch.cat([top, bottom], 0).numpy(), {"eval_psnr": psnr}

    def export(self, model: LRMWithLoss, folder: Path, cfg: LRMTrainConfig) -> Path:
        from ...models.lrm import save_openlrm, save_triposr

        lrm = model.lrm.cpu().float()
        save = save_triposr if cfg.model == "triposr" else save_openlrm
        return save(lrm, folder, model.hub_config)
