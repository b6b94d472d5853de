"""The job store: one SQLite database (WAL) under the data folder plus one folder per job.

Every job is a plain dict (the fields of :class:`backend.api.schemas.Job` minus URLs) kept in memory for fast
reads and written through to SQLite on every change (progress at most once a second: it is rebuilt by the
next event anyway). Listeners registered with :meth:`JobStore.listen` hear every change, in order, while
``lock`` is held (so a reader holding ``lock`` sees no change between its read and its subscription).

Restart rules (:meth:`JobStore.open`): finished jobs stay as they are, queued ones stay queued in their original
order, and a job that was running is marked failed with ``interrupted by restart`` (``resumable`` when its method
left stage checkpoints).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import Conflict, NotFound

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
PROGRESS_PERSIST_S = 1.0

#: a change: (kind, job) with kind "state" (state or message changed), "progress" or "preview"
Listener = Callable[[str, dict[str, Any]], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    id    TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    data  TEXT NOT NULL
);
"""


def new_job(job_id: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
    return {"id": job_id, "method": method, "state": "queued", "stage": None, "step": 0, "total": 0,
            "progress": 0.0, "eta_s": None, "message": "queued", "error": None, "artifacts": [], "preview": None,
            "created": time.time(), "started": None, "finished": None, "updated": time.time(), "request": request,
            "cancel_requested": False}


class JobStore:
    """Thread-safe: the API's request handlers and the scheduler thread share one instance."""

    def __init__(self, data_dir: Path, db_path: Path):
        self.jobs_dir = data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._jobs: dict[str, dict[str, Any]] = {}  # insertion order = submission order
        self._persisted_at: dict[str, float] = {}
        self._listeners: list[Listener] = []

    @classmethod
    def open(cls, data_dir: Path, db_path: Path) -> "JobStore":
        """Open (or create) the store and apply the restart rules."""
        store = cls(data_dir, db_path)
        for (data,) in store._db.execute("SELECT data FROM jobs ORDER BY seq"):
            job = json.loads(data)
            store._jobs[job["id"]] = job
        for job in list(store._jobs.values()):
            if job["state"] == "running":
                store.update(job["id"], state="failed", finished=time.time(), message="interrupted by restart",
                             resumable=store.has_checkpoints(job["id"]),
                             error={"code": "interrupted", "message": "interrupted by restart",
                                    "detail": {"stage": job["stage"], "step": job["step"]}})
        log.info("job store %s: %d jobs, %d queued", db_path, len(store._jobs), store.queue_length())
        return store

    def close(self) -> None:
        with self.lock:
            self._db.close()

    def listen(self, fn: Listener) -> None:
        self._listeners.append(fn)

    # --- folders -------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def out_dir(self, job_id: str) -> Path:
        """Where the pipeline writes; artifact names are paths relative to it."""
        return self.job_dir(job_id) / "out"

    def has_checkpoints(self, job_id: str) -> bool:
        """Whether the job's pipeline left stage checkpoints to resume from (``pipelines.stages.checkpoints``)."""
        return (self.out_dir(job_id) / "checkpoints" / "request.json").is_file()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    # --- reads ---------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}", {"job": job_id})
            return dict(job)

    def list(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Jobs in submission order."""
        wanted = set(states) if states else None
        with self.lock:
            return [dict(j) for j in self._jobs.values() if wanted is None or j["state"] in wanted]

    def queue_length(self) -> int:
        with self.lock:
            return sum(1 for j in self._jobs.values() if j["state"] == "queued")

    # --- writes --------------------------------------------------------------------------------------------
    def create(self, job_id: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # created times follow submission order
            job = new_job(job_id, method, request)
            self._db.execute("INSERT INTO jobs (id, state, data) VALUES (?, ?, ?)",
                             (job_id, job["state"], json.dumps(job)))
            self._jobs[job_id] = job
            self._notify("state", job)
            return dict(job)

    def update(self, job_id: str, *, expect: Iterable[str] | None = None, kind: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """Change fields of a job; with ``expect``, raise :class:`Conflict` unless its state is one of those.
        Listeners hear ``kind`` (default: "state" when the state, message or error change, else "progress")."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}", {"job": job_id})
            if expect is not None and job["state"] not in expect:
                raise Conflict(f"job {job_id} is {job['state']}", {"job": job_id, "state": job["state"]})
            if kind is None:
                kind = "state" if {"state", "message", "error", "cancel_requested"} & fields.keys() else "progress"
            job.update(fields)
            now = time.monotonic()
            if kind == "state" or now - self._persisted_at.get(job_id, 0.0) >= PROGRESS_PERSIST_S:
                self._db.execute("UPDATE jobs SET state = ?, data = ? WHERE id = ?",
                                 (job["state"], json.dumps(job), job_id))
                self._persisted_at[job_id] = now
            self._notify(kind, job)
            return dict(job)

    def claim_next(self) -> dict[str, Any] | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        with self.lock:
            job = next((j for j in self._jobs.values() if j["state"] == "queued"), None)
            if job is None:
                return None
            return self.update(job["id"], state="running", started=time.time(), message="starting")

    def delete(self, job_id: str) -> None:
        """Remove a job that is not running, with its folder."""
        with self.lock:
            state = self.get(job_id)["state"]
            if state == "running":
                raise Conflict(f"job {job_id} is running; cancel it first", {"job": job_id, "state": state})
            if state == "queued":  # tell anyone following it that it will never run
                self.update(job_id, state="cancelled", finished=time.time(), message="deleted")
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            del self._jobs[job_id]
            self._persisted_at.pop(job_id, None)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _notify(self, kind: str, job: dict[str, Any]) -> None:
        snapshot = dict(job)
        for fn in self._listeners:
            try:
                fn(kind, snapshot)
            except Exception:  # a listener must never break the store
                log.exception("job listener failed")
