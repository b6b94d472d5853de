"""Posed training views shared by the optimisation stages: a resized copy of a set, and a shuffled cycle
through it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...geometry.cameras import Cameras


def resized_views(cameras: Cameras, images: torch.Tensor, fraction: float) -> tuple[Cameras, torch.Tensor]:
    """``cameras`` and ``images [N,H,W,C]`` at ``fraction`` of their size (at least 16 px a side; area filter)."""
    w, h = max(16, round(cameras.width * fraction)), max(16, round(cameras.height * fraction))
    if (w, h) == (cameras.width, cameras.height):
        return cameras, images
    small = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
    return cameras.resized(w, h), small


class ShuffledViews:
    """View indices ``0..n-1`` in random order, reshuffled after each pass: every view is used once before any
    view repeats."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order, self.cursor = torch.randperm(n, generator=generator), 0

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices."""
        ids = []
        for _ in range(k):
            if self.cursor == self.n:
                self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
            ids.append(int(self.order[self.cursor]))
            self.cursor += 1
        return ids
