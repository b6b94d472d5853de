"""Run one job: the single code path behind ``python -m gen3d run`` and the server's worker.

It validates the request, seeds everything, runs the pipeline and writes ``meta.json`` last, so a folder
with a ``meta.json`` is a finished result (a resumable method's stage checkpoints are removed then).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import BadInput, Gen3DError, InternalError
from ..files import write_json
from . import get, seed_everything
from .base import JobRequest, RunContext
from .progress import JobProgress, quiet_library_bars

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Versions of the backend and the libraries that shape its results."""
    out = {"gen3d": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for dist in ("diffusers", "transformers", "gsplat", "nvdiffrast", "bpy"):
        try:  # package metadata, not an import: importing bpy or diffusers costs seconds per process
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def run_job(request: JobRequest, ctx: RunContext) -> dict[str, Path]:
    """Validate and run ``request``; returns artifact name -> path, ``meta.json`` included.

    Errors are :class:`Gen3DError`; anything else is wrapped as :class:`InternalError`.
    """
    pipeline = get(request.method)
    options = pipeline.validate(request)  # before anything is written
    if ctx.resume and not pipeline.resumable:
        raise BadInput(f"method {request.method!r} cannot resume (it keeps no stage checkpoints)", {"field": "resume"})
    if ctx.resume and (ctx.out_dir / "meta.json").is_file():
        raise BadInput(f"nothing to resume: {ctx.out_dir} holds a finished result", {"field": "resume"})
    created = not ctx.out_dir.exists()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(request.seed)
    t0 = time.perf_counter()
    ctx.job = JobProgress(pipeline.stage_shares)
    try:
        with quiet_library_bars(load=bool(pipeline.weights)):
            artifacts = pipeline.run(request.model_copy(update={"options": options.model_dump()}), ctx)
    except BaseException as e:
        if created and not any(ctx.out_dir.iterdir()):  # a failed start leaves no empty folder behind
            ctx.out_dir.rmdir()
        if isinstance(e, Gen3DError) or not isinstance(e, Exception):
            raise
        if isinstance(e, torch.cuda.OutOfMemoryError):  # pragma: no cover - needs a GPU
            raise InternalError("the GPU ran out of memory; try the 'fast' preset or a smaller resolution",
                                {"error": str(e)}, code="out_of_memory") from e
        log.exception("method %s failed", request.method)
        raise InternalError(f"{request.method} failed: {type(e).__name__}: {e}",
                            {"exception": type(e).__name__}) from e
    meta: dict[str, Any] = {
        "method": request.method,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "preset": request.preset,
        "options": options.model_dump(),
        "versions": versions(),
        "device": str(ctx.device),
        "timings": {**ctx.timings, "total": round(time.perf_counter() - t0, 3)},
        "metrics": ctx.cache.pop("_metrics", {}) if isinstance(ctx.cache.get("_metrics"), dict) else {},
        "artifacts": sorted(artifacts),
    }
    meta.update(ctx.cache.pop("_meta_extra", {}) or {})
    meta["tiny_weights"] = _uses_tiny(pipeline.weights, meta.get("weights"))
    if meta["tiny_weights"]:
        meta["notice"] = SMOKE_NOTICE
        if "preview.png" in artifacts:
            stamp_preview(artifacts["preview.png"])
    artifacts["meta.json"] = write_json(ctx.out_dir / "meta.json", meta)
    if pipeline.resumable:
        from .stages.checkpoints import finished

        finished(ctx.out_dir)
    ctx.job.finish()
    return artifacts


SMOKE_NOTICE = "smoke-test weights: tiny random models, the output is not a real generation"


def _uses_tiny(declared, used) -> bool:
    """Whether the run used tiny smoke-test weights: any entry the pipeline declares, or any it reported using in
    ``meta["weights"]`` (a dict or a list of dicts with a ``tiny`` flag)."""
    from .. import weights

    used = used if isinstance(used, list) else [used] if isinstance(used, dict) else []
    return any(w.get("tiny") for w in used) or weights.uses_tiny(declared)


def stamp_preview(path: Path) -> None:
    """Write a 'SMOKE-TEST WEIGHTS' banner across the top of a preview image, in place (atomically)."""
    from PIL import Image, ImageDraw

    from ..files import atomic_path

    img = Image.open(path).convert("RGBA")
    draw = ImageDraw.Draw(img)
    height = max(12, img.height // 12)
    draw.rectangle([0, 0, img.width, height], fill=(200, 30, 30, 255))
    draw.text((4, max(0, height // 2 - 6)), "SMOKE-TEST WEIGHTS - not a real generation", fill=(255, 255, 255, 255))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
