"""ControlNet generation from rendered edge maps (3D-DST): images that come with exact 3D annotations.

Reads ``manifest.jsonl`` written by ``dataset render``, generates ``images_per_view`` images per edge map with a
canny ControlNet (SD 1.5 or SDXL), and writes them next to their annotations:
``<class>/<model>/generated/NNN_K.png`` plus ``NNN_K.json`` (prompt, negative prompt, seed, model, annotation).
Finished images are skipped on a second run; ``generated.jsonl`` lists everything in a stable order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..distribute import map_tasks
from ..errors import BadInput
from ..files import atomic_path, write_bytes, write_json

log = logging.getLogger(__name__)

#: 3D-DST's template prompt
TEMPLATE = "An image of {cls}, best quality, extremely detailed"
NEGATIVE = "low quality, blurry, deformed, disfigured, bad anatomy, watermark, text, cropped"


@dataclass
class GenerateSettings:
    base: str = "sd15"  # "sd15" or "sdxl-base": the ControlNet canny entry follows
    steps: int = 20
    guidance_scale: float = 9.0
    conditioning_scale: float = 1.0
    images_per_view: int = 1
    negative_prompt: str = NEGATIVE
    seed: int = 0
    device: str = "auto"
    #: class or model id -> list of captions (optional per-model captions take precedence over the class's)
    prompts: dict[str, list[str]] = field(default_factory=dict)


def load_prompts(path: Path | None) -> dict[str, list[str]]:
    """A JSON object mapping class names or model ids to a caption or a list of captions."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"--prompts: cannot read {path}: {e}", {"field": "prompts", "path": str(path)}) from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, list)) for v in data.values()):
        raise BadInput(f"--prompts: {path} must map class names or model ids to captions", {"field": "prompts"})
    return {k: [v] if isinstance(v, str) else [str(x) for x in v] for k, v in data.items()}


def view_seed(seed: int, model_id: str, view: int, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{model_id}:{view}:{k}".encode()).digest()[:4], "little")


def choose_prompt(s: GenerateSettings, model_id: str, cls: str, view_seed_: int) -> str:
    captions = s.prompts.get(model_id) or s.prompts.get(cls)
    return captions[view_seed_ % len(captions)] if captions else TEMPLATE.format(cls=cls.replace("_", " "))


_PRIOR_CACHE: dict[tuple, object] = {}


def _prior(s: GenerateSettings):
    from ..device import pick_device
    from ..guidance.priors.controlnet import ControlNetCanny

    key = (s.base, s.device)
    if key not in _PRIOR_CACHE:
        _PRIOR_CACHE[key] = ControlNetCanny.from_registry(s.base, device=pick_device(s.device))
    return _PRIOR_CACHE[key]


def _control(path: Path) -> torch.Tensor:
    """Edge map PNG -> ``[1,3,H,W]`` in {0,1}; H and W cropped to multiples of 8 (the VAE's stride)."""
    edges = np.asarray(Image.open(path).convert("L")) > 0
    h, w = edges.shape[0] // 8 * 8, edges.shape[1] // 8 * 8
    return torch.from_numpy(edges[:h, :w]).float()[None, None].expand(1, 3, h, w).contiguous()


def smoke_marker(tiny: bool) -> dict:
    """What marks an image made with smoke-test weights (in its JSON and its ``generated.jsonl`` line)."""
    from .runner import SMOKE_NOTICE

    return {"tiny_weights": True, "notice": SMOKE_NOTICE} if tiny else {}


def generate_model(task: dict) -> dict:
    """Generate every image of one model's views (``task``: ``root``, ``views`` manifest lines, ``settings``)."""
    s = GenerateSettings(**task["settings"])
    root = Path(task["root"])
    written = []
    for line in task["views"]:
        model_dir = root / line["class"] / line["model_id"]
        stem = Path(line["edges"]).stem
        for k in range(s.images_per_view):
            out_png = model_dir / "generated" / f"{stem}_{k}.png"
            rel = out_png.relative_to(root).as_posix()
            if not (out_png.is_file() and out_png.with_suffix(".json").is_file()):
                seed = view_seed(s.seed, line["model_id"], line["view"], k)
                prompt = choose_prompt(s, line["model_id"], line["class"], seed)
                image = _prior(s).generate(_control(root / line["edges"]), prompt, s.negative_prompt, steps=s.steps,
                                           guidance_scale=s.guidance_scale,
                                           conditioning_scale=s.conditioning_scale, seed=seed)
                with atomic_path(out_png) as tmp:
                    Image.fromarray((image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(
                        tmp, format="PNG")
                write_json(out_png.with_suffix(".json"), {
                    "prompt": prompt, "negative_prompt": s.negative_prompt, "seed": seed, "controlnet": s.base,
                    "steps": s.steps, "guidance_scale": s.guidance_scale, "edges": line["edges"],
                    "annotation": line["annotation"], "image_render": line["image"], **smoke_marker(task["tiny"])})
            written.append({"model_id": line["model_id"], "class": line["class"], "view": line["view"], "k": k,
                            "image": rel, "meta": Path(rel).with_suffix(".json").as_posix(),
                            "annotation": line["annotation"], **smoke_marker(task["tiny"])})
    return {"model_id": task["model_id"], "images": written}


def generate_dataset(root: Path, settings: GenerateSettings, workers: int = 1, ray_address: str | None = None,
                     on_result=None) -> dict:
    """Generate images for every rendered view listed in ``root/manifest.jsonl``; returns counts."""
    from .. import weights
    from ..guidance.priors.controlnet import CANNY_ENTRIES

    root = Path(root)
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise BadInput(f"--data: {manifest} not found; run 'dataset render' first", {"field": "data"})
    if settings.base not in CANNY_ENTRIES:
        raise BadInput(f"--controlnet: choose one of {', '.join(CANNY_ENTRIES)}", {"field": "controlnet"})
    for name in (settings.base, CANNY_ENTRIES[settings.base]):
        weights.resolve(name)  # a missing checkpoint fails here, once, with the download command
    by_model: dict[str, list[dict]] = defaultdict(list)
    for line in manifest.read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "ok":
            by_model[f"{rec['class']}/{rec['model_id']}"].append(rec)
    tiny = weights.uses_tiny([settings.base, CANNY_ENTRIES[settings.base]])
    tasks = [{"root": str(root), "model_id": key, "views": views, "settings": asdict(settings), "tiny": tiny}
             for key, views in sorted(by_model.items())]
    images = []
    for r in map_tasks(generate_model, tasks, workers, ray_address):
        images += r["images"]
        if on_result:
            on_result(r)
    images.sort(key=lambda x: (x["class"], x["model_id"], x["view"], x["k"]))
    write_bytes(root / "generated.jsonl", "".join(json.dumps(x) + "\n" for x in images).encode())
    return {"models": len(tasks), "images": len(images), "tiny_weights": tiny}
