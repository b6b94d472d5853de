"""The text variant's prompt encoder: the CLIP ``tokenizer/`` and ``text_encoder/`` that ``gen3d train dmv3d --set
text_encoder=SD_FOLDER`` trains against (frozen) and copies into the exported weights folder."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import MissingWeights


class PromptEncoder:
    """``encoder(prompts)`` -> CLIP's last hidden state ``[len(prompts), L, text_dim]``, each prompt padded and
    truncated to the tokenizer's length (as the recipe's captions)."""

    def __init__(self, folder: str | Path, device=None):
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        for part in ("tokenizer", "text_encoder"):
            if not (folder / part).is_dir():
                raise MissingWeights(f"DMV3D text variant: {folder / part} not found (the training export copies it)",
                                     {"path": str(folder / part)})
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.model = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.model(ids.to(self.device))[0]
