"""The pipeline contract shared by the CLI and the server.

A pipeline has a ``name``, a typed :class:`Options` model with named presets (``fast``, ``standard``,
``high``), the weights it needs, and ``run(request, ctx)``. ``ctx`` carries the device, the output folder,
progress reporting and cancellation. Pipelines register themselves with :func:`register`.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from ..errors import BadInput, Cancelled
from .progress import JobProgress

log = logging.getLogger(__name__)

PRESETS = ("fast", "standard", "high")


class Options(BaseModel):
    """Base of every pipeline's options. Subclasses add fields with descriptions, defaults and bounds and fill
    ``presets`` with partial overrides per preset name."""

    model_config = ConfigDict(extra="forbid")
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the few options a person usually sets (``x-main`` in the served schema; the add-on puts the rest under
    #: "Advanced")
    main: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def resolve(cls, preset: str = "standard", overrides: dict[str, Any] | None = None) -> "Options":
        """Defaults, then the preset's values, then explicit overrides; raises :class:`BadInput` naming the field."""
        if preset not in PRESETS:
            raise BadInput(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}",
                           {"field": "preset", "value": preset})
        values = {**cls.presets.get(preset, {}), **(overrides or {})}
        try:
            return cls(**values)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "options"
            raise BadInput(f"option {where}: {first.get('msg')}",
                           {"field": f"options.{where}", "errors": e.errors(include_url=False,
                                                                               include_context=False)}) from None


class WireCamera(BaseModel):
    """A camera on the wire (DESIGN.md): K in pixels, OpenCV camera-to-world in Blender's Z-up world."""

    model_config = ConfigDict(extra="ignore")
    K: list[list[float]] = Field(description="3x3 intrinsics in pixels, pixel centres at half-integers")
    c2w: list[list[float]] = Field(description="4x4 camera-to-world, OpenCV axes (x right, y down, z forward)")
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    name: str | None = None
    role: str | None = Field(None, description="'reference' marks the camera the reference image was taken from")


class JobRequest(BaseModel):
    """One job: the JSON part of ``POST /v1/jobs`` and what the CLI builds from its flags.

    ``files`` maps an input role (``image``, ``mesh``, ``views``) to a local path, filled by the server after upload.
    """

    model_config = ConfigDict(extra="forbid")
    method: str
    prompt: str | None = Field(None, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    seed: int = Field(0, ge=0, lt=2**32)
    preset: str = "standard"
    options: dict[str, Any] = Field(default_factory=dict)
    cameras: list[WireCamera] = Field(default_factory=list, max_length=512)
    cursor: list[FiniteFloat] | None = Field(None, min_length=3, max_length=3, description=(
        "the 3D cursor (world, metres): where a generated object lands (see backend.geometry.placement)"))
    files: dict[str, str] = Field(default_factory=dict)


ProgressFn = Callable[[str, int, int, "np.ndarray | None"], None]


@dataclass
class RunContext:
    """What a pipeline gets besides its request.

    ``progress(stage, step, total, preview)``: preview is an optional ``[H, W, 3|4] uint8`` image.
    ``check_cancelled()`` raises :class:`Cancelled` when the job was cancelled; pipelines call it between steps.
    ``cache`` keeps loaded models between jobs of the same worker.
    """

    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress_fn: ProgressFn | None = None
    cancelled_fn: Callable[[], bool] | None = None
    weights_dir: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: whole-job progress (fraction, ETA, message) from the stages and steps; the runner sets the method's shares
    job: JobProgress = field(default_factory=JobProgress)
    #: continue an interrupted job from the stage checkpoints in ``out_dir`` (methods with ``resumable``)
    resume: bool = False

    def progress(self, stage: str, step: int, total: int, preview: np.ndarray | None = None) -> None:
        self.job.report(stage, step, total)
        if self.progress_fn is not None:
            self.progress_fn(stage, step, total, preview)

    def check_cancelled(self) -> None:
        if self.cancelled_fn is not None and self.cancelled_fn():
            raise Cancelled("the job was cancelled")

    def stage(self, name: str) -> "_StageTimer":
        """``with ctx.stage("fit"): ...`` adds the stage's wall time to ``ctx.timings[name]``."""
        return _StageTimer(self, name)


class _StageTimer:
    def __init__(self, ctx: RunContext, name: str):
        self.ctx, self.name = ctx, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.ctx.check_cancelled()
        self.ctx.job.begin(self.name)
        return self

    def __exit__(self, *exc):  # a stage entered twice (a second model loaded) counts both times
        self.ctx.timings[self.name] = round(self.ctx.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)
        self.ctx.job.end(self.name)
        return False


class Pipeline:
    """Base class. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: input role -> description; roles are ``prompt``, ``image``, ``mesh``, ``views``, ``cameras``
    inputs: ClassVar[dict[str, str]] = {}
    #: roles of which at least one must be present
    required_inputs: ClassVar[tuple[str, ...]] = ()
    #: the ``image`` input must carry the object's mask (alpha), or rembg must be able to make one
    needs_mask: ClassVar[bool] = False
    Options: ClassVar[type[Options]] = Options
    #: names of entries of the weights registry this method needs
    weights: ClassVar[tuple[str, ...]] = ()
    #: its stages checkpoint to the job folder and ``ctx.resume`` continues from them (``stages.checkpoints``)
    resumable: ClassVar[bool] = False
    #: ``ctx.stage`` name -> its share of a run's time (from measured stage timings), for whole-job progress
    stage_shares: ClassVar[dict[str, float]] = {}

    def validate(self, request: JobRequest) -> Options:
        """The one check of a request, before anything is queued or written (the API and the CLI both call it):
        options, required inputs and every input file opened as its role says; returns the resolved options.
        Methods with more rules extend it (``super().validate(request)`` first)."""
        from .inputs import check_files

        opts = self.Options.resolve(request.preset, request.options)
        for role in self.required_inputs:
            present = bool(request.prompt) if role == "prompt" else (
                bool(request.cameras) if role == "cameras" else role in request.files)
            if not present:
                raise BadInput(f"method {self.name!r} needs the input {role!r}", {"field": role})
        check_files(self, request, opts)
        return opts

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        """Run the job; returns artifact name -> path (all inside ``ctx.out_dir``)."""
        raise NotImplementedError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
