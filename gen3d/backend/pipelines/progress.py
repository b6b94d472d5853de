"""Whole-job progress: one fraction, one ETA and one message for a job, from its stages and their steps.

A pipeline times its stages with ``with ctx.stage(name)`` and reports steps with ``ctx.progress(stage, step,
total)``. :class:`JobProgress` turns both into the job's fraction done: the stages that finished count with their
share of a whole run (``Pipeline.stage_shares``: stage name -> fraction of the job's time, measured from the stage
timings of real runs), the running one with its share times its own ``step / total``. A pipeline that declares no
shares gets its running stage's fraction (honest, if not whole-job). The ETA is the elapsed time scaled by what is
left, and is ``None`` until there is enough to go on.

:func:`quiet_library_bars` silences Hugging Face's own progress bars while a job runs: the job reports its progress
itself, and theirs would interleave with it in logs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

#: no ETA before this much of the job is done or this many seconds have passed (early paces mislead)
ETA_MIN_FRACTION = 0.02
ETA_MIN_SECONDS = 2.0


class JobProgress:
    """Tracks one job; ``fraction`` in [0, 1], ``eta_s`` (seconds or None) and ``message`` describe it now."""

    def __init__(self, shares: dict[str, float] | None = None, clock: Callable[[], float] = time.monotonic):
        total = sum(shares.values()) if shares else 0.0
        self.shares = {k: v / total for k, v in shares.items()} if total > 0 else {}
        self.clock = clock
        self.started = clock()
        self.running: list[str] = []  # the timed stages running now (ctx.stage), innermost last
        self.done: set[str] = set()
        self.step, self.total, self.label = 0, 0, "starting"
        self.finished = False
        self.reached = 0.0  # the highest fraction reported so far: the fraction never goes back

    def begin(self, stage: str) -> None:
        """A timed stage starts (``with ctx.stage(name)``)."""
        self.running.append(stage)
        self.step, self.total, self.label = 0, 0, stage

    def end(self, stage: str) -> None:
        if stage in self.running:
            self.running.remove(stage)
        self.done.add(stage)
        self.step, self.total = 0, 0

    def report(self, stage: str, step: int, total: int) -> None:
        """A step of ``stage`` (the name a pipeline reports steps under; it may differ from the timed stage's)."""
        self.label, self.step, self.total = stage, step, total

    def finish(self) -> None:
        self.finished, self.label, self.step, self.total = True, "done", 1, 1

    @property
    def within(self) -> float:
        return min(1.0, max(0.0, self.step / self.total)) if self.total > 0 else 0.0

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        if not self.shares:
            return self.within
        done = sum(self.shares.get(s, 0.0) for s in self.done)
        stage = self.running[-1] if self.running else None
        running = self.shares.get(stage, 0.0) * self.within if stage not in self.done else 0.0
        self.reached = max(self.reached, min(1.0, done + running))
        return self.reached

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def eta_s(self) -> float | None:
        f, elapsed = self.fraction, self.elapsed
        if self.finished:
            return 0.0
        if f < ETA_MIN_FRACTION or elapsed < ETA_MIN_SECONDS:
            return None
        return round(elapsed * (1.0 - f) / f, 1)

    @property
    def message(self) -> str:
        text = self.label.replace("_", " ")
        return f"{text} {self.step}/{self.total}" if self.total > 1 else text

    def snapshot(self) -> dict:
        return {"progress": round(self.fraction, 4), "eta_s": self.eta_s, "message": self.message}


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@contextmanager
def quiet_library_bars(load: bool = False) -> Iterator[None]:
    """Hugging Face's progress bars (hub downloads, transformers' and diffusers' loading bars) off inside the block,
    restored after. ``load`` imports transformers' and diffusers' logging modules when installed, so bars of
    libraries a job will import are silenced too (a job that needs no weights passes False and imports nothing)."""
    restore = []
    try:
        import huggingface_hub.utils as hub
    except ImportError:  # pragma: no cover - a dependency
        hub = None
    if hub is not None and not hub.are_progress_bars_disabled():
        hub.disable_progress_bars()
        restore.append(hub.enable_progress_bars)
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        mod = sys.modules.get(name)
        if mod is None and load and importlib.util.find_spec(name.split(".")[0]) is not None:
            mod = importlib.import_module(name)
        if mod is not None and mod.is_progress_bar_enabled():
            mod.disable_progress_bar()
            restore.append(mod.enable_progress_bar)
    try:
        yield
    finally:
        for undo in restore:
            undo()
