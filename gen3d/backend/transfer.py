"""Byte progress of a weights download, and its text for the CLI.

:func:`byte_bars` makes a tqdm class for ``huggingface_hub.snapshot_download(tqdm_class=...)``: the hub opens its
bars with it and we hear every byte written as one ``(done, total)`` call. huggingface_hub 2.x opens two bars
counted in bytes (network bytes, then bytes written to disk; equal for a plain HTTP download) plus one counting
files; older releases open only the file bar. The last byte bar opened is the one reported, else the file bar.

:class:`DownloadPrinter` shows it: a bar on a terminal, else plain lines (``[ 23.0%] sd15: 1.2 GB of 5.1 GB``, at
most one per ``interval_s`` and per whole percent, and the last one) that a log or the Blender add-on reads.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from tqdm import tqdm

#: ``report(done, total, unit)``: bytes (``unit="B"``) or files (``unit="files"``); ``total`` 0 while unknown
Report = Callable[[int, int, str], None]


def planned_bytes(snapshot_download: Callable, repo: str, **kwargs) -> int:
    """Bytes a ``snapshot_download(repo, **kwargs)`` will fetch (its dry run: files not on disk yet), known before
    the first byte; 0 where the hub release has no dry run (the total then grows as files start)."""
    try:
        plan = snapshot_download(repo, dry_run=True, tqdm_class=byte_bars(lambda *_: None), **kwargs)
    except TypeError:  # huggingface_hub < 1.0
        return 0
    return sum(f.file_size or 0 for f in plan if f.will_download)


def byte_bars(report: Report, planned: int = 0) -> type:
    """A tqdm class whose instances are silent and report their counts to ``report`` (see the module text);
    ``planned``: the bytes the whole download will fetch (:func:`planned_bytes`), the total while bars open."""
    lock = threading.Lock()
    state: dict = {"bytes": None}  # the byte bar being reported

    class Bars(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True  # no output of its own; disabled tqdm keeps n and total, but update() is ours
            super().__init__(*args, **kwargs)
            self.unit = kwargs.get("unit", "it")
            if self.unit == "B":
                state["bytes"] = self

        def update(self, n=1):
            with lock:
                self.n += n or 0
                if self.unit == "B" and state["bytes"] is self:
                    report(int(self.n), max(planned, int(self.total or 0)), "B")
                elif self.unit != "B" and state["bytes"] is None:
                    report(int(self.n), int(self.total or 0), "files")

    return Bars


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


class DownloadPrinter:
    """``report`` for :func:`byte_bars` that writes the progress of downloading ``name`` to ``stream``."""

    def __init__(self, name: str, stream: TextIO | None = None, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.stream, self.interval_s, self.clock = name, stream or sys.stderr, interval_s, clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar, self.printed_at, self.percent, self.last = None, float("-inf"), -1, ""

    def line(self, done: int, total: int, unit: str) -> str:
        size = (f"{human_bytes(done)} of {human_bytes(total)}" if total else human_bytes(done)) if unit == "B" \
            else f"{done} of {total} files"
        return (f"[{100 * done / total:5.1f}%] " if total else "") + f"{self.name}: {size}"

    def __call__(self, done: int, total: int, unit: str) -> None:
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(desc=self.name, unit=unit, unit_scale=unit == "B", file=self.stream,
                                dynamic_ncols=True)
            self.bar.total, self.bar.n = total or None, done
            self.bar.refresh()
            return
        self.last = self.line(done, total, unit)
        percent = int(100 * done / total) if total else -1  # unknown total: by time alone
        if (percent != self.percent or percent < 0) and self.clock() - self.printed_at >= self.interval_s:
            self.percent, self.printed_at = percent, self.clock()
            print(self.last, file=self.stream, flush=True)
            self.last = ""

    def close(self) -> None:
        """The last count, if it was held back."""
        if self.bar is not None:
            self.bar.close()
        elif self.last:
            print(self.last, file=self.stream, flush=True)
