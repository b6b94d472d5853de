"""DMV3D: multi-view diffusion whose denoiser is an LRM-style triplane reconstructor (no official code or weights;
weights come from ``python -m gen3d train dmv3d``)."""

from .checkpoints import load_dmv3d, save_dmv3d
from .config import CONFIGS, DMV3DConfig
from .diffusion import Schedule, ddim_sample
from .encoder import plucker_rays
from .model import DMV3D, fresh_dmv3d
from .sampler import render_views, sample_triplane, view_cameras

__all__ = ["CONFIGS", "DMV3D", "DMV3DConfig", "Schedule", "ddim_sample", "fresh_dmv3d", "load_dmv3d",
           "plucker_rays", "render_views", "sample_triplane", "save_dmv3d", "view_cameras"]
