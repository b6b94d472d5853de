"""``python -m gen3d run METHOD ...``: run one method locally, with the job's progress on stderr.

The same :func:`backend.pipelines.runner.run_job` runs server jobs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from ..errors import BadInput

if TYPE_CHECKING:  # importing pipelines imports torch: not at parse time
    from ..pipelines import JobRequest, RunContext
    from ..pipelines.progress import JobProgress


def read_cameras(path: str) -> list:
    """The ``--cameras`` file: a JSON list of wire cameras (or one camera)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BadInput(f"--cameras: cannot read {path} ({e.strerror})", {"field": "cameras", "path": path}) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"--cameras: {path} is not JSON ({e})", {"field": "cameras", "path": path}) from None
    return data if isinstance(data, list) else [data]


def parse_set(pairs: list[str]) -> dict:
    """``["iters=100", "bg=[1,1,1]"]`` -> ``{"iters": 100, "bg": [1, 1, 1]}`` (values parsed as JSON when they can be)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--set expects KEY=VALUE, got {pair!r}", {"field": "--set"})
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class CliProgress:
    """The job's whole progress (``ctx.job``): on a terminal one bar (percent, the stage's message, ETA); anywhere
    else (a log file, a pipe) plain lines, one when a stage starts and at most one per ``interval_s`` within it."""

    def __init__(self, job: Callable[[], "JobProgress"], stream: TextIO | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.job, self.stream, self.interval_s, self.clock = job, stream or sys.stderr, interval_s, clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar, self.label, self.printed_at = None, None, float("-inf")

    def __call__(self, stage, step, total, preview=None):
        job = self.job()
        if self.tty:
            self._draw(job)
        elif job.label != self.label or self.clock() - self.printed_at >= self.interval_s:
            self.label, self.printed_at = job.label, self.clock()
            print(self.line(job), file=self.stream, flush=True)

    @staticmethod
    def line(job: "JobProgress") -> str:
        from ..pipelines.progress import format_seconds

        eta = job.eta_s
        return f"[{100 * job.fraction:5.1f}%] {job.message}" + (
            f", about {format_seconds(eta)} left" if eta is not None and not job.finished else "")

    def _draw(self, job: "JobProgress") -> None:
        from tqdm import tqdm

        from ..pipelines.progress import format_seconds

        if self.bar is None:
            self.bar = tqdm(total=100, file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")
        eta = job.eta_s
        self.bar.n = round(100 * job.fraction, 1)
        self.bar.set_description_str(job.message, refresh=False)
        self.bar.set_postfix_str(f"about {format_seconds(eta)} left" if eta is not None else "", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        from ..pipelines.progress import format_seconds

        job = self.job()
        if self.bar is not None:
            if job.finished:
                self._draw(job)
            self.bar.close()
            self.bar = None
        if job.finished:
            print(f"[100.0%] done in {format_seconds(job.elapsed)}", file=self.stream, flush=True)


def run_with_progress(request: "JobRequest", ctx: "RunContext", stream: TextIO | None = None) -> dict[str, Path]:
    """:func:`~gen3d.backend.pipelines.runner.run_job` with :class:`CliProgress` on ``stream`` (stderr)."""
    from ..pipelines.runner import run_job

    progress = CliProgress(lambda: ctx.job, stream)
    ctx.progress_fn = progress
    try:
        return run_job(request, ctx)
    finally:
        progress.close()


def job_request(**fields) -> "JobRequest":
    """A :class:`JobRequest` from the flags; pydantic's complaints become one :class:`BadInput` naming the flag."""
    from pydantic import ValidationError

    from ..pipelines import JobRequest

    try:
        return JobRequest(**fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise BadInput(f"--{where.split('.')[0].replace('_', '-')}: {where}: {first.get('msg')}",
                       {"field": where}) from None


def _run(args) -> int:
    from ..device import pick_device
    from ..pipelines import RunContext

    if args.weights_dir:
        os.environ["GEN3D_WEIGHTS_DIR"] = str(Path(args.weights_dir).resolve())
    files = {role: str(Path(p).resolve()) for role, p in
             (("views", args.views), ("image", args.image), ("mesh", args.mesh)) if p}
    for role, p in files.items():
        if not Path(p).exists():
            raise BadInput(f"--{role}: {p} does not exist", {"field": role, "path": p})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out: {args.out} is a file; give a folder (it is created when the run starts)",
                       {"field": "out", "path": args.out})
    cameras = read_cameras(args.cameras) if args.cameras else []
    request = job_request(method=args.method, prompt=args.prompt, negative_prompt=args.negative_prompt,
                         seed=args.seed, preset=args.preset, options=parse_set(args.set), files=files,
                         cameras=cameras)
    if args.resume and not out.is_dir():
        raise BadInput(f"--resume: {args.out} does not exist; nothing to resume", {"field": "resume",
                                                                                   "path": args.out})
    ctx = RunContext(out_dir=out, device=pick_device(args.device),
                     weights_dir=Path(args.weights_dir) if args.weights_dir else None, resume=args.resume)
    artifacts = run_with_progress(request, ctx)
    print(f"wrote {len(artifacts)} artifacts to {args.out}:")
    for name in sorted(artifacts):
        print(f"  {name}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a method locally (see 'methods')")
    p.add_argument("method", help="method name, e.g. reconstruct")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--views", help="folder with transforms.json and images (reconstruct)")
    p.add_argument("--image", help="reference image (image-to-3D methods)")
    p.add_argument("--mesh", help="input mesh, GLB/OBJ/PLY (texture)")
    p.add_argument("--cameras", help="JSON file with a list of wire cameras")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="standard", choices=["fast", "standard", "high"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--weights-dir", help="folder of weights (overrides GEN3D_WEIGHTS_DIR)")
    p.add_argument("--resume", action="store_true", help=(
        "continue an interrupted run in --out from its last finished stage (same flags; resumable methods)"))
    p.set_defaults(func=_run)
