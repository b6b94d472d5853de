"""The worker process: runs one job at a time with :func:`backend.pipelines.runner.run_job`.

It is started with the ``spawn`` context (no forked CUDA or thread state) and talks to the server over one
duplex pipe. Loaded models live in the worker's ``cache`` dict and survive between jobs until ``unload``.
Cancellation is a shared event the pipeline polls through ``ctx.check_cancelled()``.

Messages, server -> worker: ``("run", job_id, request_dict, out_dir, resume)``, ``("unload",)``, ``("stop",)``.
Worker -> server: ``("ready", pid, device, state)``, ``("progress", job_id, stage, step, total, t, whole)``,
``("preview", job_id, name, t)``, ``("done", job_id, artifact_names, state)``,
``("failed", job_id, error_dict, state)``, ``("cancelled", job_id, state)``, ``("unloaded", state)``;
``t`` is the worker's ``time.time()`` when the pipeline reported, ``whole`` the whole job's ``progress``, ``eta_s``
and ``message`` (:class:`~gen3d.backend.pipelines.progress.JobProgress`), ``state`` is ``{"models": names of cached
models, "memory": accelerator memory in MiB or None}``.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: at most this often a progress message for the same stage (the first and last step always go out)
PROGRESS_INTERVAL_S = 0.05
#: at most this often a preview image is written
PREVIEW_INTERVAL_S = 0.5


def _exit_with_parent() -> None:
    """Die when the server dies (even by SIGKILL), instead of finishing a job nobody will collect."""
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True, name="parent-watch").start()


class _Reporter:
    """``ctx.progress`` for one job: throttled progress messages, previews written as ``preview.png``."""

    def __init__(self, conn: Connection, job_id: str, out_dir: Path):
        self.conn, self.job_id, self.out_dir = conn, job_id, out_dir
        self.stage, self.sent_at, self.preview_at = None, 0.0, 0.0
        self.ctx = None  # the job's RunContext, for its whole-job progress

    def __call__(self, stage: str, step: int, total: int, preview=None) -> None:
        now = time.time()
        if stage != self.stage or step >= total or step <= 1 or now - self.sent_at >= PROGRESS_INTERVAL_S:
            self.stage, self.sent_at = stage, now
            self.conn.send(("progress", self.job_id, str(stage), int(step), int(total), now, self.ctx.job.snapshot()))
        if preview is not None and now - self.preview_at >= PREVIEW_INTERVAL_S:
            self.preview_at = now
            self._write_preview(preview)
            self.conn.send(("preview", self.job_id, "preview.png", time.time()))

    def _write_preview(self, image) -> None:
        import numpy as np
        from PIL import Image

        from ..files import atomic_path

        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        with atomic_path(self.out_dir / "preview.png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")


def _memory(device) -> dict[str, float] | None:
    """Accelerator memory in MiB (CUDA only; None elsewhere)."""
    import torch

    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    mib = 1 << 20
    return {"total_mib": round(total / mib), "free_mib": round(free / mib),
            "allocated_mib": round(torch.cuda.memory_allocated(device) / mib),
            "reserved_mib": round(torch.cuda.memory_reserved(device) / mib),
            "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / mib)}


def _state(cache: dict[str, Any], device) -> dict[str, Any]:
    return {"models": sorted(k for k in cache if not k.startswith("_")), "memory": _memory(device)}


def _run_one(conn: Connection, cancel: Any, cache: dict, device, weights_dir: Path | None,
             job_id: str, request: dict, out_dir: str, resume: bool = False) -> None:
    from ..errors import Cancelled, Gen3DError, InternalError
    from ..pipelines import JobRequest, RunContext
    from .uploads import upload_names
    from ..pipelines.runner import run_job

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reporter = _Reporter(conn, job_id, out)
    ctx = reporter.ctx = RunContext(out_dir=out, device=device, progress_fn=reporter, cancelled_fn=cancel.is_set,
                                    weights_dir=weights_dir, cache=cache, resume=resume)
    try:
        artifacts = run_job(JobRequest.model_validate(request), ctx)
    except Cancelled:
        conn.send(("cancelled", job_id, _state(cache, device)))
        return
    except Gen3DError as e:  # uploads are named by their input field, not by where the server keeps them
        named = e.naming(upload_names(request.get("files", {}), out.parent))
        conn.send(("failed", job_id, named.to_dict(), _state(cache, device)))
        return
    except BaseException as e:  # noqa: BLE001 - anything else is a bug to report, not a reason to die
        err = InternalError(f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc(limit=8)})
        log.exception("job %s crashed", job_id)
        conn.send(("failed", job_id, err.to_dict(), _state(cache, device)))
        return
    root = out.resolve()
    names = []
    if (root / "preview.png").is_file():  # the last preview is kept as an artifact
        artifacts.setdefault("preview.png", root / "preview.png")
    for path in artifacts.values():
        p = Path(path).resolve()
        if p.is_relative_to(root) and p.is_file():
            names.append(p.relative_to(root).as_posix())
        else:
            log.warning("job %s: artifact %s is not a file inside %s; not published", job_id, p, root)
    conn.send(("done", job_id, sorted(names), _state(cache, device)))


def worker_main(conn: Connection, cancel: Any, device_name: str, weights_dir: str | None) -> None:
    """Entry point of the spawned worker process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops us
    _exit_with_parent()
    if weights_dir:
        os.environ["GEN3D_WEIGHTS_DIR"] = weights_dir
    from ..device import pick_device

    device = pick_device(device_name)
    cache: dict[str, Any] = {}
    conn.send(("ready", os.getpid(), str(device), _state(cache, device)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "run":
            _run_one(conn, cancel, cache, device, Path(weights_dir) if weights_dir else None, *msg[1:])
        elif msg[0] == "unload":
            cache.clear()
            gc.collect()
            import torch

            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            conn.send(("unloaded", _state(cache, device)))
        elif msg[0] == "stop":  # skip the interpreter's slow teardown of torch & co; nothing is left unwritten
            logging.shutdown()
            os._exit(0)


class WorkerProcess:
    """The server's handle on one worker process."""

    def __init__(self, device: str, weights_dir: Path | None):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.cancel = ctx.Event()
        self.process = ctx.Process(target=worker_main, name="gen3d-worker", daemon=True,
                                   args=(child, self.cancel, device, str(weights_dir) if weights_dir else None))
        self.process.start()
        child.close()
        self.pid = self.process.pid
        self.device: str | None = None
        self.job_id: str | None = None
        self.loaded: list[str] = []
        self.memory: dict[str, float] | None = None

    def set_state(self, state: dict[str, Any]) -> None:
        self.loaded, self.memory = state["models"], state["memory"]

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    def alive(self) -> bool:
        return self.process.is_alive()

    def death_reason(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "worker process stopped responding"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            return f"worker process died (signal {-code}, {name})"
        return f"worker process exited with code {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to finish, then kill it if it does not."""
        try:
            self.cancel.set()
            self.send("stop")
        except (OSError, ValueError):
            pass
        self.process.join(timeout=timeout)
        self.kill()
