"""The scheduler: one background thread that feeds queued jobs to the worker process in FIFO order and turns
the worker's messages into job updates.

It waits on the worker's pipe, the worker's process sentinel and a wake-up pipe at once, so a message, a
crash or a new submission is handled immediately. A worker that dies fails its job with the reason
("worker process died (signal 9, SIGKILL)") and a fresh one starts; a job that ignores cancellation for
``cancel_grace_s`` has its worker killed.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Any

from ..errors import Conflict
from .settings import Settings
from .store import JobStore
from .worker import WorkerProcess

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.0, 1.0, 5.0, 30.0)


class Scheduler:
    def __init__(self, store: JobStore, settings: Settings):
        self.store, self.settings = store, settings
        self.worker: WorkerProcess | None = None
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gen3d-scheduler", daemon=True)
        self._cancel_at: float | None = None
        self._crashes = 0  # consecutive worker deaths without a job finishing
        self._start_after = 0.0

    # --- called from request handlers ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"!")
        except OSError:
            pass

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or ask the running one to stop; returns the job."""
        with self.store.lock:
            job = self.store.get(job_id)
            if job["state"] == "queued":
                return self.store.update(job_id, state="cancelled", finished=time.time(), message="cancelled")
            job = self.store.update(job_id, expect=("running",), cancel_requested=True, message="cancelling")
            worker = self.worker
            if worker is not None and worker.job_id == job_id and self._cancel_at is None:
                worker.cancel.set()
                self._cancel_at = time.monotonic()
        self.wake()
        return job

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again to continue from its stage checkpoints (409 otherwise); it runs
        before newer queued jobs (the queue is in submission order)."""
        with self.store.lock:
            job = self.store.get(job_id)
            if job["state"] not in ("failed", "cancelled"):
                raise Conflict(f"job {job_id} is {job['state']}; only a failed or cancelled job can resume",
                               {"job": job_id, "state": job["state"]})
            if not self.store.has_checkpoints(job_id):
                raise Conflict(f"job {job_id} ({job['method']}) left no stage checkpoints to resume from",
                               {"job": job_id, "method": job["method"]}, code="not_resumable")
            job = self.store.update(job_id, state="queued", resume=True, resumable=False, error=None, finished=None,
                                    cancel_requested=False, progress=0.0, eta_s=None, message="queued to resume")
        self.wake()
        return job

    def unload(self) -> dict[str, Any]:
        """Ask the worker to drop its cached models (after the running job, if any)."""
        worker = self.worker
        try:
            worker.send("unload")
        except (AttributeError, OSError):  # no worker, or it just died: nothing is loaded
            return {"loaded": [], "after_job": None}
        return {"loaded": worker.loaded, "after_job": worker.job_id}

    def status(self) -> dict[str, Any]:
        w = self.worker
        return {"pid": w.pid if w else None, "alive": bool(w and w.alive()), "device": w.device if w else None,
                "job": w.job_id if w else None, "loaded_models": list(w.loaded) if w else [],
                "memory": w.memory if w else None}

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        self._thread.join(timeout=10.0)
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    # --- the thread ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # keep scheduling whatever happens to one job
                log.exception("scheduler step failed")
                time.sleep(0.5)

    def _step(self) -> None:
        w = self._ensure_worker()
        if w is not None and w.job_id is None:
            self._dispatch(w)
        waitables: list[Any] = [self._wake_r]
        if w is not None:
            waitables += [w.conn, w.process.sentinel]
        timeout = 0.5 if w is not None else max(0.05, self._start_after - time.monotonic())
        for ready in wait(waitables, timeout=timeout):
            if ready is self._wake_r:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
            elif w is not None and ready is w.conn:
                self._drain(w)
        if w is not None and not w.alive():
            self._drain(w)
            self._worker_died(w, w.death_reason())
        elif w is not None and w.job_id is not None and self._cancel_at is not None \
                and time.monotonic() - self._cancel_at > self.settings.cancel_grace_s:
            log.warning("job %s ignored cancellation for %.0f s; stopping its worker", w.job_id,
                        self.settings.cancel_grace_s)
            job_id = w.job_id
            w.kill()
            self.worker = None
            self._finish(job_id, "cancelled", message="cancelled (worker stopped)")

    def _ensure_worker(self) -> WorkerProcess | None:
        if self.worker is None and time.monotonic() >= self._start_after:
            self.worker = WorkerProcess(self.settings.device, self.settings.weights_dir)
            log.info("started worker process %d", self.worker.pid)
        return self.worker

    def _dispatch(self, w: WorkerProcess) -> None:
        job = self.store.claim_next()
        if job is None:
            return
        request = dict(job["request"])
        job_dir = self.store.job_dir(job["id"])
        request["files"] = {role: str(job_dir / rel) for role, rel in request.get("files", {}).items()}
        w.cancel.clear()
        w.job_id, self._cancel_at = job["id"], None
        w.send("run", job["id"], request, str(self.store.out_dir(job["id"])), bool(job.get("resume")))
        log.info("job %s (%s) started", job["id"], job["method"])

    def _drain(self, w: WorkerProcess) -> None:
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return
            self._handle(w, msg)

    def _handle(self, w: WorkerProcess, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.device = msg[2]
            w.set_state(msg[3])
        elif kind == "progress":
            _, job_id, stage, step, total, t, whole = msg
            self._update(job_id, kind="progress", stage=stage, step=step, total=total, updated=t, **whole)
        elif kind == "preview":
            _, job_id, name, t = msg
            self._update(job_id, kind="preview", preview=name, updated=t)
        elif kind in ("done", "failed", "cancelled"):
            job_id = msg[1]
            w.set_state(msg[-1])
            w.job_id, self._crashes = None, 0
            if kind == "done":
                self._finish(job_id, "succeeded", artifacts=self._artifacts(job_id, msg[2]), message="done",
                             progress=1.0)
            elif kind == "failed":
                self._finish(job_id, "failed", error=msg[2], message=msg[2].get("message", "failed"))
            else:
                self._finish(job_id, "cancelled", message="cancelled")
        elif kind == "unloaded":
            w.set_state(msg[1])

    def _artifacts(self, job_id: str, names: list[str]) -> list[dict[str, Any]]:
        out = self.store.out_dir(job_id)
        return [{"name": n, "size": (out / n).stat().st_size} for n in names if (out / n).is_file()]

    def _finish(self, job_id: str, state: str, **fields: Any) -> None:
        self._cancel_at = None
        fields.setdefault("eta_s", None)
        fields["resumable"] = state in ("failed", "cancelled") and self.store.has_checkpoints(job_id)
        self._update(job_id, state=state, finished=time.time(), updated=time.time(), **fields)
        log.info("job %s %s", job_id, state)

    def _update(self, job_id: str, **fields: Any) -> None:
        try:
            self.store.update(job_id, **fields)
        except Exception as e:  # the job was deleted meanwhile
            log.debug("job %s not updated: %s", job_id, e)

    def _worker_died(self, w: WorkerProcess, reason: str) -> None:
        log.error("%s (pid %d)", reason, w.pid)
        job_id = w.job_id
        w.kill()
        self.worker = None
        self._crashes += 1
        self._start_after = time.monotonic() + RESTART_BACKOFF_S[min(self._crashes - 1, len(RESTART_BACKOFF_S) - 1)]
        if job_id is not None:
            cancelled = self.store.get(job_id).get("cancel_requested")
            if cancelled:
                self._finish(job_id, "cancelled", message="cancelled (worker stopped)")
            else:
                self._finish(job_id, "failed", message=reason,
                             error={"code": "worker_died", "message": reason, "detail": {"pid": w.pid}})
