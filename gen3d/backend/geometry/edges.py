"""Canny edge maps, the control images of canny ControlNets (3D-DST's thresholds 100/200, aperture 3)."""

from __future__ import annotations

import cv2
import numpy as np


def canny_edges(rgb: np.ndarray, low: int = 100, high: int = 200, aperture: int = 3) -> np.ndarray:
    """``[H,W,3] uint8`` RGB -> ``[H,W] uint8`` edge map (255 on edges, 0 elsewhere) of its grey levels."""
    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high, apertureSize=aperture)
