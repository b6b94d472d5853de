"""Stage checkpoints in the job folder, so that a cancelled or crashed long job resumes from its last finished stage.

``out_dir/checkpoints/request.json`` fingerprints the job (method, prompts, seed, resolved options and the inputs'
SHA-256); each finished stage writes ``checkpoints/<stage>.pt``: its result as plain tensors plus the random state
(the method's generator, torch's CPU and CUDA generators) at that point. With ``ctx.resume`` a stage whose file
exists is loaded instead of run and the random state restored, so the remaining stages draw what an uninterrupted
run would have drawn; the first missing stage and everything after it run normally. The runner removes the folder
once ``meta.json`` is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ...errors import BadInput
from ...files import atomic_path
from ..base import JobRequest, RunContext

T = TypeVar("T")
FOLDER = "checkpoints"


def fingerprint(request: JobRequest) -> dict:
    """What must match for a resume: everything that shapes the result, inputs by content."""
    files = {role: hashlib.sha256(Path(p).read_bytes()).hexdigest() for role, p in sorted(request.files.items())
             if Path(p).is_file()}
    return {"method": request.method, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
            "seed": request.seed, "options": request.options, "files": files}


class StageCheckpoints:
    """``run(name, compute, save, load)`` per stage (module docstring); ``generator`` is the method's."""

    def __init__(self, ctx: RunContext, request: JobRequest, generator: torch.Generator):
        self.ctx, self.generator, self.dir = ctx, generator, ctx.out_dir / FOLDER
        self.resuming = ctx.resume
        meta = self.dir / "request.json"
        want = json.loads(json.dumps(fingerprint(request)))
        if self.resuming:
            if not meta.is_file():
                raise BadInput(f"nothing to resume in {ctx.out_dir}: no {FOLDER}/request.json (run it without resume)",
                               {"field": "resume", "path": str(ctx.out_dir)})
            have = json.loads(meta.read_text())
            changed = [k for k in want if have.get(k) != want[k]]
            if changed:
                raise BadInput(f"cannot resume: the {changed[0]} differ from the interrupted job's",
                               {"field": changed[0], "path": str(ctx.out_dir)})
        else:
            if self.dir.exists():
                for old in self.dir.glob("*.pt"):
                    old.unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(meta) as tmp:
                Path(tmp).write_text(json.dumps(want, indent=1))

    def run(self, name: str, compute: Callable[[], T], save: Callable[[T], dict], load: Callable[[dict], T]) -> T:
        """``load(state)`` when resuming and ``<name>.pt`` exists (random state restored), else ``compute()`` and
        write ``save(result)`` (a dict of tensors and plain values) with the random state."""
        path = self.dir / f"{name}.pt"
        if self.resuming and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch"])
            if state.get("cuda") and torch.cuda.is_available():  # pragma: no cover - needs a GPU
                torch.cuda.set_rng_state_all(state["cuda"])
            self.ctx.progress(name, 1, 1)
            return load(state["value"])
        self.resuming = False  # a stage that runs again invalidates every later checkpoint
        value = compute()
        state = {"value": save(value), "generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return value


def finished(out_dir: Path) -> None:
    """Remove the checkpoints of a finished job."""
    import shutil

    shutil.rmtree(out_dir / FOLDER, ignore_errors=True)
