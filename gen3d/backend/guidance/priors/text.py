"""CLIP text conditioning shared by the text-driven priors (SD, MVDream): cached embeddings, view-dependent prompts.

View directions use our orbit convention (``gen3d/backend/geometry/cameras.py``): azimuth 0 = the object's front (camera
on -Y), elevation positive above. threestudio's rule: ``side`` by default, ``front`` if |az| < 45°, ``back`` if
|az| > 135°, ``overhead`` if elevation > 60° (later rules win); the prompt gets the suffix ``", <direction> view"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .base import fp16_variant

FRONT_THRESHOLD, BACK_THRESHOLD, OVERHEAD_THRESHOLD = 45.0, 45.0, 60.0


def view_direction(elevation_deg: float, azimuth_deg: float) -> str:
    """``front``, ``side``, ``back`` or ``overhead`` for one camera (angles in degrees, our orbit convention)."""
    az = (float(azimuth_deg) + 180.0) % 360.0 - 180.0
    direction = "side"
    if abs(az) < FRONT_THRESHOLD:
        direction = "front"
    if abs(az) > 180.0 - BACK_THRESHOLD:
        direction = "back"
    if float(elevation_deg) > OVERHEAD_THRESHOLD:
        direction = "overhead"
    return direction


def view_prompt(prompt: str, elevation_deg: float, azimuth_deg: float) -> str:
    return f"{prompt}, {view_direction(elevation_deg, azimuth_deg)} view"


class TextEncoder:
    """CLIP tokenizer + text encoder from a diffusers folder (``tokenizer/``, ``text_encoder/``).

    ``embed(texts)`` returns ``[N, 77, D]`` (the encoder's last hidden state, as diffusers' SD pipelines use it);
    every distinct text is encoded once and cached, so per-step calls cost nothing.
    """

    def __init__(self, folder: str | Path, device: torch.device, dtype: torch.dtype,
                 tokenizer: str = "tokenizer", text_encoder: str = "text_encoder"):
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        self.device, self.dtype = device, dtype
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer)
        self.model = CLIPTextModel.from_pretrained(folder, subfolder=text_encoder, torch_dtype=dtype,
                                                   variant=fp16_variant(folder / text_encoder))
        self.model.to(device).eval().requires_grad_(False)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            ids = self.tokenizer(todo, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            for text, emb in zip(todo, self.model(ids)[0]):
                self._cache[text] = emb
        return torch.stack([self._cache[t] for t in texts])


def text_branches(encoder: TextEncoder, prompt: str, negative_prompt: str, batch: int, key: str,
                  elevation=None, azimuth=None, view_dependent: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``cond`` (view-dependent when angles are given), ``plain`` (no view suffix), ``negative``, ``null`` branches,
    each ``{key: [batch, 77, D]}``."""
    if view_dependent and elevation is not None and azimuth is not None:
        el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand(batch).tolist()
        az = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1).expand(batch).tolist()
        cond_texts = [view_prompt(prompt, e, a) for e, a in zip(el, az)]
    else:
        cond_texts = [prompt] * batch
    return {"cond": {key: encoder.embed(cond_texts)}, "plain": {key: encoder.embed([prompt] * batch)},
            "negative": {key: encoder.embed([negative_prompt or ""] * batch)},
            "null": {key: encoder.embed([""] * batch)}}
