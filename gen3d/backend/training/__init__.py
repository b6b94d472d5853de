"""Training: one loop on Hugging Face Accelerate (``trainer.py``), multi-view render folders and keyed sampling
(``data.py``), and one small module per method's recipe (``recipes/``). CLI: ``python -m gen3d train RECIPE``."""

from .recipes import RECIPES, Recipe, TrainConfig, get_recipe
from .trainer import TrainRun, prepare, train

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainRun", "get_recipe", "prepare", "train"]
