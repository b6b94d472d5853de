"""SyncDreamer (ICLR 2024): one image -> 16 multiview-consistent views by joint denoising with a 3D feature volume."""

from .cameras import ELEVATION_RANGE, NUM_VIEWS, target_cameras
from .checkpoint import load_syncdreamer
from .model import SyncDreamer, SyncDreamerConfig
from .sampler import sample_views

__all__ = ["ELEVATION_RANGE", "NUM_VIEWS", "SyncDreamer", "SyncDreamerConfig", "load_syncdreamer", "sample_views",
           "target_cameras"]
