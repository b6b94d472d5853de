"""Training recipes: what differs between methods. The loop (``training/trainer.py``) is written once.

A recipe is a small module with a :class:`Recipe` subclass registered in :data:`RECIPES` (``"name":
"module:Class"``, imported on demand). It supplies

- ``Config``: a :class:`TrainConfig` subclass (pydantic, bounded fields) with ``presets`` ``tiny``, ``small``,
  ``full``: the loop's settings (steps, batch, optimiser, schedule, EMA, ...) plus the recipe's own;
- ``dataset(objects, cfg)``: the *dataset view*, a map-style dataset indexed by keys ``(epoch, index)``
  (see :mod:`..data`): which frames, what resolution, what augmentation;
- ``model(cfg)``: the model factory, a module whose ``forward(batch)`` returns ``{"loss": scalar, term: scalar,
  ...}`` (computing the loss inside ``forward`` is what lets DDP/DeepSpeed/FSDP wrap it);
- ``evaluate(model, dataset, cfg)``: a fixed evaluation render ``[H, W, 3]`` in [0, 1] and its metrics;
- ``export(model, folder, cfg)``: writes the model into ``folder`` in the layout the method's loader reads; the
  trainer moves it to ``OUT/weights/<entry(cfg)>/``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ...errors import BadInput

PRESETS = ("tiny", "small", "full")

#: recipe name -> "module:Class" (a new recipe is one line here and one module)
RECIPES = {
    "lrm": "gen3d.backend.training.recipes.lrm:LRMRecipe",
    "instant3d-recon": "gen3d.backend.training.recipes.instant3d_recon:Instant3DReconRecipe",
    "instant3d-grid": "gen3d.backend.training.recipes.instant3d_grid:Instant3DGridRecipe",
    "dmv3d": "gen3d.backend.training.recipes.dmv3d:DMV3DRecipe",
    "agp": "gen3d.backend.training.recipes.agp:AGPRecipe",
}


class TrainConfig(BaseModel):
    """The loop's settings, shared by every recipe (defaults: OpenLRM's published training config)."""

    model_config = ConfigDict(extra="forbid")
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    steps: int = Field(100_000, ge=1, le=10_000_000, description="optimiser steps")
    batch_size: int = Field(16, ge=1, le=4096, description="samples per process and micro-step")
    grad_accum: int = Field(1, ge=1, le=1024, description="micro-steps accumulated per optimiser step")
    lr: float = Field(4e-4, gt=0, le=1.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.05, ge=0, le=1.0, description="AdamW weight decay (not on biases and norms)")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    warmup_steps: int = Field(3000, ge=0, description="linear warm-up steps, then cosine decay to 0")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: off)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="exponential moving average of the weights (0: off; "
                                                          "DDP only); exported instead of the raw weights when on")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on CUDA where supported, else fp16 on CUDA, fp32 on CPU")
    seed: int = Field(0, ge=0, lt=2 ** 31)
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    eval_every: int = Field(1000, ge=1, description="steps between evaluation renders (eval/step_N.png)")
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints/step_N")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept")
    num_workers: int = Field(4, ge=0, le=64, description="data-loader worker processes per training process")
    tensorboard: bool = Field(False, description="also log to TensorBoard (OUT/tensorboard) via Accelerate")

    @classmethod
    def resolve(cls, preset: str, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults, then the preset, then ``--set`` overrides; a bad value raises :class:`BadInput` naming it."""
        if preset not in PRESETS:
            raise BadInput(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", {"field": "preset"})
        try:
            return cls(**{**cls.presets.get(preset, {}), **(overrides or {})})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = str(first.get("msg")).removeprefix("Value error, ")
            raise BadInput(f"option {where}: {message}" if where else f"options: {message}",
                           {"field": where or "options"}) from None


class Recipe:
    """Base of the recipes (see the module docstring); subclasses set ``name`` and ``Config``."""

    name: ClassVar[str]
    Config: ClassVar[type[TrainConfig]] = TrainConfig

    def min_views(self, cfg) -> int:
        """Views an object needs to be usable."""
        return 2

    def entry(self, cfg) -> str:
        """The weights-registry entry the trained model is exported as (``OUT/weights/<entry>``)."""
        raise NotImplementedError

    def tiny(self, cfg) -> bool:
        """True when the exported model is a tiny test architecture (it then carries the registry's tiny marker)."""
        return False

    def dataset(self, objects, cfg) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def model(self, cfg) -> nn.Module:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset, cfg) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def export(self, model: nn.Module, folder: Path, cfg) -> Path:
        raise NotImplementedError

    @staticmethod
    def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
        """AdamW groups as OpenLRM's trainer builds them: weight decay on weights, none on biases and norms."""
        no_decay = set()
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                no_decay |= {id(p) for p in module.parameters(recurse=False)}
            elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
                no_decay.add(id(module.bias))
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": cfg.weight_decay},
                {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise BadInput(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}", {"field": "recipe"})
    module, _, cls = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
