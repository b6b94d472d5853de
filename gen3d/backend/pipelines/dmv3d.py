"""Method ``dmv3d``: one image (image-variant weights) or a prompt (text-variant weights) -> a textured mesh by
DMV3D sampling (multi-view diffusion whose denoiser is a triplane reconstructor; no published weights: train them
with ``python -m gen3d train dmv3d``).

Stages: preprocess (image variant: the LRM's mask, recentre, white background, the model's resolution; text variant:
the prompt and the negative prompt, or the empty one, through the CLIP encoder exported with the weights) -> DDIM
sampling of the noisy views with the input view clean (blank for text; each step's x0 renders streamed as
previews, the last step's written to ``views.png``) -> the final triplane -> marching cubes, UV unwrap and colour
bake (the shared ``stages/triplane_mesh.textured_mesh_from_field``, as ``lrm`` and ``instant3d``) -> export (GLB, OBJ,
``preview.png``) and ``placement.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from ..errors import BadInput, MissingWeights, NumericalError
from . import register
from .base import JobRequest, Options, Pipeline, RunContext
from .inputs import IMAGE_INPUT, PROMPT_INPUT

TRAIN_COMMAND = "python -m gen3d train dmv3d --data DATA --out OUT (then GEN3D_WEIGHTS_DIR=OUT/weights)"


class DMV3DOptions(Options):
    weights_path: str | None = Field(None, description="checkpoint folder (else $GEN3D_WEIGHTS_DIR/dmv3d)")
    steps: int = Field(30, ge=1, le=1000, description="DDIM sampling steps (eta 0)")
    guidance: float = Field(1.0, ge=0, le=20, description="classifier-free guidance scale on the triplane (1 = off; "
                            "needs weights trained with uncond_prob > 0)")
    samples_per_ray: int | None = Field(None, ge=4, le=1024, description="ray samples of the x0 renders")
    foreground_ratio: float | None = Field(None, gt=0.3, le=1.0, description="object size / image size")
    mesh_resolution: int = Field(256, ge=32, le=512, description="marching-cubes grid per side")
    mesh_level: float | None = Field(None, gt=0, description="density iso level (model default 3.0)")
    target_faces: int = Field(100_000, ge=0, le=2_000_000, description="decimate to this many faces (0 = keep)")
    smooth_iterations: int = Field(2, ge=0, le=50)
    texture_size: int = Field(1024, ge=64, le=4096, description="baked base-colour texture side in pixels")
    preview_views: int = Field(8, ge=1, le=120)
    preview_size: int = Field(256, ge=16, le=1024)

    main = ("steps", "mesh_resolution", "texture_size", "target_faces")

    presets = {
        "fast": {"steps": 10, "mesh_resolution": 128, "texture_size": 512, "preview_views": 4, "preview_size": 128,
                 "target_faces": 30_000},
        "standard": {},
        "high": {"steps": 50, "texture_size": 2048, "preview_views": 16, "target_faces": 300_000},
    }


def weights_folder(explicit: str | None) -> Path:
    """``explicit``, else ``$GEN3D_WEIGHTS_DIR/dmv3d``; missing: one :class:`MissingWeights` naming the training
    command (DMV3D has no published weights to download)."""
    root = os.environ.get("GEN3D_WEIGHTS_DIR")
    path = Path(explicit).expanduser() if explicit else (Path(root).expanduser() / "dmv3d" if root else None)
    if path is None or not (path / "model.safetensors").is_file():
        where = str(path) if path else "$GEN3D_WEIGHTS_DIR/dmv3d (GEN3D_WEIGHTS_DIR is not set)"
        raise MissingWeights(f"DMV3D weights not found at {where}; DMV3D has no published weights, train them with: "
                             f"{TRAIN_COMMAND}", {"weights": "dmv3d", "command": TRAIN_COMMAND})
    return path


def variant_input(folder: Path) -> str:
    """The input role a weights folder samples from: ``"prompt"`` for the text variant, else ``"image"``."""
    try:
        text_dim = json.loads((folder / "config.json").read_text()).get("text_dim", 0)
    except (OSError, ValueError, AttributeError):
        raise BadInput(f"{folder / 'config.json'}: not a readable DMV3D config", {"weights": "dmv3d"}) from None
    return "prompt" if text_dim else "image"


def check_variant_input(request: JobRequest, needed: str | None) -> None:
    """One :class:`BadInput` unless the request gives the input ``needed`` (``"image"`` or ``"prompt"``; None: the
    weights are not found yet, so either one). The text variant also refuses an image (it would be ignored); a prompt
    beside an image for the image variant is ignored, as the add-on sends the panel's prompt to every method that
    takes one."""
    image, prompt = "image" in request.files, bool(request.prompt)
    if needed is None and not (image or prompt):
        raise BadInput("method 'dmv3d' needs an image (image-variant weights) or a prompt (text-variant weights)",
                       {"field": "image"})
    if needed == "prompt" and (image or not prompt):
        raise BadInput("these DMV3D weights are the text variant: they take a prompt" +
                       (", not an image" if image else ""), {"field": "image" if image else "prompt"})
    if needed == "image" and not image:
        raise BadInput("these DMV3D weights are the image variant: they take an image", {"field": "image"})


@register
class DMV3DPipeline(Pipeline):
    name = "dmv3d"
    title = "DMV3D (image or text to 3D by multi-view diffusion with a reconstruction denoiser)"
    description = ("Denoises four views jointly; every step reconstructs a triplane NeRF from the noisy views and "
                   "re-renders it, so the last step is the 3D object. Weights are trained with gen3d train dmv3d.")
    inputs = {"image": f"{IMAGE_INPUT} (image-variant weights)", "prompt": f"{PROMPT_INPUT} (text-variant weights)"}
    needs_mask = True
    Options = DMV3DOptions
    #: meta.json timings of a fast-preset CPU run of the tiny model (a real model's sampling weighs far more)
    stage_shares = {"load": 0.001, "preprocess": 0.001, "sample": 0.08, "mesh": 0.32, "uv_unwrap": 0.54,
                    "bake": 0.01, "export": 0.04}
    weights = ()  # no registry entry: trained weights are found by weights_folder()

    def validate(self, request: JobRequest) -> DMV3DOptions:
        """Also: the input the weights' variant reads (:func:`check_variant_input`; here when the weights are
        already in place, else again when they are loaded)."""
        opts = super().validate(request)
        try:
            needed = variant_input(weights_folder(opts.weights_path))
        except MissingWeights:
            needed = None
        check_variant_input(request, needed)
        return opts

    def _model(self, opts: DMV3DOptions, ctx: RunContext):
        from ..models.dmv3d import load_dmv3d
        from ..weights import is_tiny

        path = weights_folder(opts.weights_path)
        key = f"dmv3d:{path.resolve()}"
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = load_dmv3d(path).to(ctx.device)
        ctx.cache["_meta_extra"] = {"weights": {"name": "dmv3d", "path": str(path), "tiny": is_tiny(path),
                                                "config": ctx.cache[key].config.name}}
        return ctx.cache[key]

    def _prompt_encoder(self, folder: Path, ctx: RunContext):
        from ..models.dmv3d.text import PromptEncoder

        key = f"dmv3d-text:{folder.resolve()}"
        if key not in ctx.cache:
            with ctx.stage("load"):
                ctx.cache[key] = PromptEncoder(folder, ctx.device)
        return ctx.cache[key]

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.image_prep import read_image
        from ..geometry.placement import CanonicalView, record_placement
        from ..models.dmv3d import sample_triplane
        from ..models.lrm.preprocess import preprocess_image
        from .stages.export import export_results, write_png
        from .stages.triplane_mesh import textured_mesh_from_field, to_uint8

        opts = DMV3DOptions(**request.options)
        model = self._model(opts, ctx)
        check_variant_input(request, "prompt" if model.config.text_dim else "image")
        cfg = model.cfg
        out: dict[str, Path] = {}
        image, text = None, {}
        with ctx.stage("preprocess"):
            if model.config.text_dim:
                encoder = self._prompt_encoder(weights_folder(opts.weights_path), ctx)
                text["text"], text["null_text"] = encoder([request.prompt, request.negative_prompt or ""]).split(1)
            else:
                image = preprocess_image(read_image(request.files["image"]), cfg, opts.foreground_ratio,
                                         what=Path(request.files["image"]).name).to(ctx.device)
                out["input.png"] = write_png(ctx.out_dir / "input.png",
                                             to_uint8(image[0].permute(1, 2, 0).cpu().numpy()))
        last: list[np.ndarray] = []

        def preview(i: int, t: int, x0: torch.Tensor) -> None:
            ctx.check_cancelled()
            last[:] = [np.concatenate(list(x0.cpu().numpy()), 1)]
            ctx.progress("sample", i + 1, opts.steps, to_uint8(last[0]))

        with ctx.stage("sample"):
            planes = sample_triplane(model, image, opts.steps, torch.Generator().manual_seed(request.seed),
                                     samples_per_ray=opts.samples_per_ray, on_step=preview, guidance=opts.guidance,
                                     **text).float()
            out["views.png"] = write_png(ctx.out_dir / "views.png", to_uint8(last[0]))
        if not torch.isfinite(planes).all():
            raise NumericalError("the model produced NaN/inf triplane features", {"stage": "sample"})
        mesh = textured_mesh_from_field(model.field(planes[0]), ctx, opts.mesh_resolution,
                                        opts.mesh_level or cfg.mesh_level, opts.smooth_iterations, opts.target_faces,
                                        opts.texture_size, half_precision=False)
        with ctx.stage("export"):
            out.update(export_results(ctx.out_dir, mesh, preview_views=opts.preview_views,
                                      preview_size=opts.preview_size))
            out.update(record_placement(request, ctx, mesh.vertices, CanonicalView(
                0.0, cfg.source_camera_distance, model.config.view_fov_deg)))
        ctx.cache.setdefault("_metrics", {}).update({"faces": int(len(mesh.faces)), "steps": opts.steps})
        return out
