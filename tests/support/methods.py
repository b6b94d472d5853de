"""Small real pipelines for the service tests, loaded into the server and its worker with
``GEN3D_EXTRA_METHODS=tests.support.methods``.

- ``sleepy``: ``steps`` steps of ``step_s`` seconds with progress, a cancellation check and optional previews;
  writes ``result.json`` (what it received: prompt, seed, the size and SHA-256 of each input file) and keeps a
  fake model in ``ctx.cache`` so loaded models and unloading can be observed.
- ``staged``: resumable; two checkpointed stages (``one``, ``two``) of ``steps`` sleeps, each drawing a number
  from the method's generator; ``result.json`` has both numbers and the stages this run computed.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from gen3d.backend.files import write_json
from gen3d.backend.pipelines import Options, Pipeline, register
from gen3d.backend.pipelines.base import JobRequest, RunContext


def file_digest(path: Path) -> dict:
    if path.is_dir():
        return {"dir": sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())}
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "name": path.name}


class SleepyOptions(Options):
    steps: int = Field(5, ge=1, le=100_000, description="number of steps")
    step_s: float = Field(0.02, ge=0.0, le=10.0, description="seconds per step")
    preview: bool = Field(False, description="send a preview image every step")
    fail_at: int | None = Field(None, ge=1, description="raise a NumericalError at this step")
    presets = {"fast": {"steps": 2}, "high": {"steps": 20}}
    main = ("steps",)


@register
class Sleepy(Pipeline):
    name = "sleepy"
    title = "Sleepy (test)"
    description = "sleeps in steps, reporting progress"
    inputs = {"prompt": "any text", "image": "optional image", "mesh": "optional mesh", "views": "optional views"}
    required_inputs = ("prompt",)
    Options = SleepyOptions

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from gen3d.backend.errors import NumericalError

        opts = SleepyOptions(**request.options)
        ctx.cache.setdefault("sleepy-model", object())
        with ctx.stage("sleep"):
            for i in range(opts.steps):
                ctx.check_cancelled()
                time.sleep(opts.step_s)
                if opts.fail_at == i + 1:
                    raise NumericalError(f"diverged at step {i + 1}", {"step": i + 1})
                preview = np.full((8, 8, 3), (i * 7) % 256, np.uint8) if opts.preview else None
                ctx.progress("sleep", i + 1, opts.steps, preview)
        result = {"prompt": request.prompt, "seed": request.seed, "steps": opts.steps,
                  "files": {role: file_digest(Path(p)) for role, p in request.files.items()}}
        return {"result.json": write_json(ctx.out_dir / "result.json", result)}


class StagedOptions(Options):
    steps: int = Field(3, ge=1, le=100_000, description="steps per stage")
    step_s: float = Field(0.02, ge=0.0, le=10.0, description="seconds per step")


@register
class Staged(Pipeline):
    name = "staged"
    title = "Staged (test)"
    inputs = {"prompt": "any text"}
    required_inputs = ("prompt",)
    resumable = True
    Options = StagedOptions

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        import torch

        from gen3d.backend.pipelines.stages.checkpoints import StageCheckpoints

        opts = StagedOptions(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        stages, computed = StageCheckpoints(ctx, request, gen), []

        def stage(name):
            def compute():
                for i in range(opts.steps):
                    ctx.check_cancelled()
                    time.sleep(opts.step_s)
                    ctx.progress(name, i + 1, opts.steps)
                computed.append(name)
                return {"x": torch.rand(1, generator=gen)}
            with ctx.stage(name):
                return float(stages.run(name, compute, lambda v: v, lambda v: v)["x"])

        values = [stage("one"), stage("two")]
        result = {"values": values, "computed": computed}
        return {"result.json": write_json(ctx.out_dir / "result.json", result)}


@register
class NeedsWeights(Pipeline):
    """Needs a real checkpoint (``sd15``) that tests never have: submissions must be refused with 503."""

    name = "needs_weights"
    title = "Needs weights (test)"
    inputs = {"prompt": "any text"}
    weights = ("sd15",)

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        raise AssertionError("never queued: its weights are missing")
