"""DMV3D weights folder (no published layout exists; this is the one ``gen3d train dmv3d`` exports):
``config.json`` (:meth:`DMV3DConfig.to_json`) + ``model.safetensors`` (our parameter names)."""

from __future__ import annotations

import json
from pathlib import Path


from ...errors import BadInput, MissingWeights
from ...files import atomic_path, write_json
from .config import DMV3DConfig
from .model import DMV3D


def save_dmv3d(model: DMV3D, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(sd, str(tmp))
    write_json(folder / "config.json", model.config.to_json())
    return folder


def load_dmv3d(folder: str | Path) -> DMV3D:
    """A folder written by :func:`save_dmv3d` -> DMV3D in eval mode on the CPU."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise MissingWeights(f"DMV3D {name} not found in {folder}", {"path": str(folder / name)})
    config = DMV3DConfig.from_json(json.loads((folder / "config.json").read_text()))
    model = DMV3D(config)
    sd = load_file(str(folder / "model.safetensors"))
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise BadInput(f"{folder}: checkpoint does not match its config ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected tensors)", {"path": str(folder)})
    model.load_state_dict(sd, strict=True)
    return model.eval()
