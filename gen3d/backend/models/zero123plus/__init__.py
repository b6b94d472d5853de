"""Zero123++ v1.2 (image -> six views in one 3x2 image), the multi-view front of InstantMesh."""

from .model import Zero123Plus, ReferenceUNet  # noqa: F401
