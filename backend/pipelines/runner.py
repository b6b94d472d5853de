"""Run one job: the single code path behind ``python -m backend run`` and the server's worker.

It validates the request, seeds everything, runs the pipeline and writes ``meta.json`` last, so a folder
with a ``meta.json`` is a finished result.
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
from ..errors import Gen3DError, InternalError
from ..files import write_json
from . import get, seed_everything
from .base import JobRequest, RunContext

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
    options = pipeline.validate(request)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(request.seed)
    t0 = time.perf_counter()
    try:
        artifacts = pipeline.run(request.model_copy(update={"options": options.model_dump()}), ctx)
    except Gen3DError:
        raise
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - needs a GPU
        raise InternalError("the GPU ran out of memory; try the 'fast' preset or a smaller resolution",
                            {"error": str(e)}, code="out_of_memory") from e
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
    artifacts["meta.json"] = write_json(ctx.out_dir / "meta.json", meta)
    return artifacts
