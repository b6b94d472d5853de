"""Backend commands the add-on runs as child processes (``weights download``, ``dataset render``), followed as tasks.

A worker thread copies the command's output to its log file as it comes and reads its progress from it: the last
``NN.N%`` printed (the backend's plain progress lines, ``[ 23.0%] sd15: 1.2 GB of 5.1 GB``, and tqdm's bars both
carry one) and the last line. Updates reach the records through the job manager's queue, so that only the main
thread (:meth:`JobManager.pump`) changes them, as for jobs. The Jobs panel draws them with a bar and Cancel.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable

from .jobs import manager

PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%")


@dataclass
class CliTask:
    """One command; the main thread reads and changes it (the worker posts its updates)."""

    key: int
    label: str  # "download sd15", "dataset render"
    argv: list[str]
    log_path: str
    state: str = "running"  # running | succeeded | failed | cancelled
    fraction: float | None = None  # the last percentage it printed, as a fraction; None before any
    line: str = ""  # its last line of output
    error: str = ""  # why it failed: its last "error: " line, else its last line or exit code
    on_done: Callable[["CliTask"], None] | None = field(default=None, repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state == "running"

    def status_text(self) -> str:
        return self.error if self.state == "failed" else self.line or self.state


class TaskList:
    def __init__(self):
        self.tasks: dict[int, CliTask] = {}
        self._next = 1

    def start(self, label: str, argv: list[str], log_path: str,
              on_done: Callable[[CliTask], None] | None = None) -> CliTask:
        """Start ``argv`` (stdout and stderr into ``log_path``) and follow it on a worker thread."""
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        task = CliTask(self._next, label, list(argv), log_path, on_done=on_done)
        self._next += 1
        task.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        task.reader = threading.Thread(target=_follow, args=(task,), name=f"gen3d-task-{task.key}", daemon=True)
        self.tasks[task.key] = task
        task.reader.start()
        return task

    def wait(self, task: CliTask) -> CliTask:
        """Block until ``task``'s command ends (synchronous mode), then apply its updates."""
        task.reader.join()
        manager.pump()
        return task

    def cancel(self, task: CliTask) -> None:
        if task.active and task.proc is not None:
            task.state = "cancelled"
            task.proc.terminate()

    def remove(self, task: CliTask) -> None:
        if not task.active:
            self.tasks.pop(task.key, None)

    def clear(self) -> None:
        for task in list(self.tasks.values()):
            self.cancel(task)
        self.tasks.clear()


def _follow(task: CliTask) -> None:
    """Worker thread: copy the output to the log, post progress and the end to the main thread."""
    post = manager.queue.put
    pending = b""
    with open(task.log_path, "wb") as log:
        while chunk := os.read(task.proc.stdout.fileno(), 65536):
            log.write(chunk)
            log.flush()
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            lines = [ln.decode("utf-8", "replace").strip() for ln in lines if ln.strip()]
            if lines:
                post(("call", None, lambda lines=lines: _progress(task, lines)))
    code = task.proc.wait()
    task.proc.stdout.close()
    with open(task.log_path, encoding="utf-8", errors="replace") as f:
        text = [ln.strip() for ln in re.split(r"[\r\n]", f.read()) if ln.strip()]
    post(("call", None, lambda: _end(task, code, text)))


def _progress(task: CliTask, lines: list[str]) -> None:
    task.line = lines[-1]
    for line in reversed(lines):
        if m := PERCENT.search(line):
            task.fraction = min(1.0, float(m[1]) / 100)
            break


def _end(task: CliTask, code: int, lines: list[str]) -> None:
    """The command ended with exit ``code`` having printed ``lines`` (a cancelled task stays cancelled)."""
    if task.state == "running" and code == 0:
        task.state, task.fraction = "succeeded", 1.0
        task.line = lines[-1] if lines else "done"
    elif task.state == "running":
        errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
        task.state = "failed"
        task.error = errors[-1] if errors else (lines[-1] if lines else f"exit {code}")
    if task.on_done is not None:
        task.on_done(task)


tasks = TaskList()

