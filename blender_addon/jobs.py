"""Jobs in flight and the main-thread pump.

Network I/O (submit, follow events, download) runs on worker threads that never touch bpy; they put messages on
a :class:`queue.Queue`. :func:`pump` drains it on the main thread (from a ``bpy.app.timers`` timer in the UI),
updates the job records the panel draws, loads previews and imports finished results. In background mode and
with bpy as a module timers never fire, so :meth:`JobManager.run_sync` runs the same worker code inline and pumps.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import bpy

from .client import TERMINAL_STATES, BackendError, Client

log = logging.getLogger(__name__)

ACTIVE_STATES = ("preparing", "submitting", "queued", "running", "downloading", "importing")


@dataclass
class JobRecord:
    """One job as the panel shows it. Only the main thread mutates it (through :func:`pump`)."""

    key: int
    kind: str  # "generate" | "reconstruct" | "refine"
    method: str
    request: dict
    files: dict[str, str]
    out_dir: str
    placement: str = "cursor"  # "cursor": move to the 3D cursor; "in_place": keep world coordinates
    size: float = 0.0  # > 0: scale the result about the cursor to this largest dimension (metres)
    cursor: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source_object: str = ""
    hide_source: bool = False
    backend_version: str = ""
    job_id: str = ""
    state: str = "submitting"
    stage: str = ""
    step: int = 0
    total: int = 0
    fraction: float | None = None  # the whole job's progress from the backend (None: an older backend)
    eta: float | None = None
    message: str = ""
    error: str = ""
    error_code: str = ""
    error_hint: str = ""
    artifacts: list[str] = field(default_factory=list)
    result_path: str = ""
    preview_path: str = ""
    preview_image: str = ""
    objects: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    resumable: bool = False  # failed or cancelled with stage checkpoints on the backend
    started: float = field(default_factory=time.time)
    history: bool = False  # from the backend's job list (GET /v1/jobs), not submitted in this session
    resuming: bool = False  # Resume pressed: the earlier follower's late messages are dropped until it has ended

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def progress(self) -> float:
        if self.fraction is not None:
            return self.fraction
        return min(1.0, self.step / self.total) if self.total else 0.0

    def status_text(self) -> str:
        """``running · fit 120/600 · 35 % · ~2 min left`` while active; the state alone once finished."""
        if self.state == "failed":
            return self.error or "failed"
        if self.state == "succeeded" and views_only(self.artifacts):
            return "succeeded · views only (views.png), no 3D result"
        if not self.active:
            return self.state
        parts = [self.state]
        if self.message and self.message not in (self.state, "queued"):
            parts.append(self.message)
        elif self.stage:
            parts.append(self.stage)
        if self.state == "running":
            parts.append(f"{round(100 * self.progress)} %")
        if self.eta:
            parts.append(f"~{int(self.eta)} s left" if self.eta < 120 else f"~{round(self.eta / 60)} min left")
        return " · ".join(parts)


@dataclass
class BackendStatus:
    """What the panel knows about the backend (refreshed by :func:`refresh_status`)."""

    url: str = ""
    online: bool = False
    health: dict = field(default_factory=dict)
    methods: list[dict] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)  # GET /v1/jobs: the backend's history, kept across sessions
    error: str = ""
    checked: float = 0.0
    checking: bool = False
    client: Client | None = None  # the client it was checked with (follows the backend's running jobs)

    @property
    def version(self) -> str:
        return str(self.health.get("version", ""))

    def method(self, name: str) -> dict | None:
        return next((m for m in self.methods if m.get("name") == name), None)


def method_inputs(method: dict) -> set[str]:
    inputs = method.get("inputs") or {}
    return set(inputs if isinstance(inputs, (list, tuple)) else inputs.keys())


def method_weights(method: dict) -> tuple[bool, str, str]:
    """(ready, reason, download command) from a ``/v1/methods`` entry."""
    w = method.get("weights")
    ready = method.get("ready", method.get("weights_ready"))
    reason = str(method.get("reason") or "")
    command = str(method.get("download_command") or method.get("command") or "")
    if isinstance(w, dict):
        ready = w.get("ready", ready)
        missing = w.get("missing") or []
        command = str(w.get("command") or w.get("download_command") or command)
        if missing and not reason:
            reason = "missing weights: " + ", ".join(str(m.get("name", m) if isinstance(m, dict) else m)
                                                   for m in missing)
        if ready is None:
            ready = not missing
    elif isinstance(w, list):
        missing = [x for x in w if isinstance(x, dict) and x.get("ready", x.get("present")) is False]
        if ready is None:
            ready = not missing
        if missing:
            reason = reason or "missing weights: " + ", ".join(str(x.get("name", "?")) for x in missing)
            command = command or str(missing[0].get("command") or "")
    ready = True if ready is None else bool(ready)
    if not ready and not reason:
        reason = "its pretrained weights are not downloaded"
    return ready, reason, command


def method_kind(method: dict) -> str:
    """``reconstruct`` (needs posed views), ``texture`` (needs a mesh), ``dataset`` or ``generate``."""
    name = method.get("name", "")
    required = method.get("required_inputs")
    inputs = set(required) if required is not None else method_inputs(method)
    if name == "dataset":
        return "dataset"
    if "views" in inputs:
        return "reconstruct"
    if "mesh" in inputs:
        return "texture"
    return "generate"


class JobManager:
    def __init__(self):
        self.records: dict[int, JobRecord] = {}
        self.status = BackendStatus()
        self.queue: queue.Queue = queue.Queue()
        self._next = 1
        self._clients: dict[int, Client] = {}
        self._followers: dict[int, threading.Thread] = {}  # the worker thread following each record's job
        #: called on the main thread with a succeeded record whose GLB is downloaded; returns new object names
        self.importer: Callable[[JobRecord], list[str]] | None = None
        #: called on the main thread after the backend status (method list) changed
        self.on_status: Callable[[BackendStatus], None] | None = None

    # -- creation and control (main thread) -----------------------------------------------------------------------

    def new(self, **kwargs) -> JobRecord:
        rec = JobRecord(key=self._next, **kwargs)
        self._next += 1
        self.records[rec.key] = rec
        return rec

    def start(self, rec: JobRecord, client: Client) -> None:
        """Follow ``rec`` on a daemon worker thread; results arrive through :func:`pump`."""
        self._clients[rec.key] = client
        self._follow_with(rec.key, self._work, client, rec.request, rec.files, rec.out_dir, None)

    def run_sync(self, rec: JobRecord, client: Client, timeout: float) -> JobRecord:
        """Submit, follow, download and import ``rec`` in the calling thread (background mode)."""
        self._clients[rec.key] = client
        self._work(rec.key, client, rec.request, rec.files, rec.out_dir, time.monotonic() + timeout)
        self.pump()
        return rec

    def cancel(self, rec: JobRecord, sync: bool = False) -> None:
        """Ask the server to cancel ``rec`` (a job not yet submitted is cancelled once it has an id)."""
        rec.cancel_requested = True
        rec.message = "cancelling..."
        client = self._clients.get(rec.key)
        if not rec.job_id or client is None or rec.state in TERMINAL_STATES:
            return
        if sync:
            self._send_cancel(rec.key, client, rec.job_id)
        else:
            threading.Thread(target=self._send_cancel, args=(rec.key, client, rec.job_id), daemon=True).start()

    def resume(self, rec: JobRecord, client: Client) -> None:
        """Continue a failed or cancelled job from its last finished stage and follow it as :meth:`start` does."""
        rec.state, rec.error, rec.error_code, rec.resumable, rec.message = "queued", "", "", False, "resuming"
        rec.resuming = True
        self._clients[rec.key] = client
        self._follow_with(rec.key, self._resume, client, rec.job_id, rec.out_dir, self._followers.get(rec.key))

    def _follow_with(self, key: int, target: Callable, *args) -> None:
        """Run ``target(key, *args)`` on the daemon thread that follows record ``key`` from now on."""
        thread = threading.Thread(target=target, args=(key, *args), name=f"gen3d-job-{key}", daemon=True)
        self._followers[key] = thread
        thread.start()

    def remove(self, rec: JobRecord) -> None:
        self.records.pop(rec.key, None)
        self._clients.pop(rec.key, None)
        self._followers.pop(rec.key, None)
        img = bpy.data.images.get(rec.preview_image) if rec.preview_image else None
        if img is not None and img.users == 0:
            bpy.data.images.remove(img)

    def clear(self) -> None:
        """Forget everything (unregister); worker threads still running only put on a queue nobody reads."""
        for rec in self.records.values():
            rec.cancel_requested = True
        self.records.clear()
        self._clients.clear()
        self._followers.clear()
        self.queue = queue.Queue()
        self.status = BackendStatus()

    def refresh_status(self, client: Client, sync: bool = False) -> None:
        """Health handshake and method list, on a worker thread (or inline with ``sync``); see :func:`pump`."""
        self.status.checking = True
        if sync:
            self._check(client)
            self.pump()
        else:
            threading.Thread(target=self._check, args=(client,), name="gen3d-status", daemon=True).start()

    # -- worker side (no bpy) -------------------------------------------------------------------------------------

    def _check(self, client: Client) -> None:
        status = BackendStatus(url=client.base, checked=time.time(), client=client)
        try:
            status.health = client.handshake()
            status.methods = client.methods()
            status.online = True
            status.jobs = client.jobs()
        except BackendError as e:
            status.error = str(e)
        self.queue.put(("status", None, status))

    def _send_cancel(self, key: int, client: Client, job_id: str) -> None:
        try:
            client.cancel(job_id)
        except BackendError as e:
            self.queue.put(("note", key, f"cancel failed: {e}"))

    def _work(self, key: int, client: Client, request: dict, files: dict, out_dir: str,
              deadline: float | None) -> None:
        """Submit ``request`` and follow the job to its imported result."""
        with self._failures_reported(key, out_dir):
            job = client.submit(request, files)
            self.queue.put(("job", key, job))
            rec = self.records.get(key)
            if rec is not None and rec.cancel_requested:
                client.cancel(str(job["id"]))
            self._follow(key, client, str(job["id"]), out_dir, deadline)

    def _resume(self, key: int, client: Client, job_id: str, out_dir: str, previous: threading.Thread | None) -> None:
        """Resume the job on the backend and follow it to its imported result. The ``previous`` follower (of the
        cancelled or failed run) may still be posting that run's end: wait for it, then mark where this run's
        messages begin (:func:`pump` drops the ones before)."""
        if previous is not None:
            previous.join()
        self.queue.put(("resumed", key, None))
        with self._failures_reported(key, out_dir):
            self.queue.put(("job", key, client.resume(job_id)))
            self._follow(key, client, job_id, out_dir, None)

    def _watch(self, key: int, client: Client, job_id: str) -> None:
        """Follow a job adopted from the backend's list: live progress, then its final state."""
        with self._failures_reported(key, ""):
            self._follow(key, client, job_id, "", None)

    @contextmanager
    def _failures_reported(self, key: int, out_dir: str) -> Iterator[None]:
        try:
            yield
        except BackendError as e:
            discard_unused(out_dir)
            self.queue.put(("error", key, e))
        except Exception as e:  # a bug here must still end the job readably, not leave it "running"
            log.exception("job %s worker crashed", key)
            discard_unused(out_dir)
            self.queue.put(("error", key, BackendError("internal", f"{type(e).__name__}: {e}")))

    def _follow(self, key: int, client: Client, job_id: str, out_dir: str, deadline: float | None) -> None:
        """Follow a submitted job to its end. With an ``out_dir``: previews on the way, then the result (or a
        views-only job's views) downloaded there for import; without one: progress and the final state only."""
        q = self.queue
        last_preview = [None, 0.0]

        def on_update(snapshot: dict) -> None:
            q.put(("job", key, snapshot))
            url = snapshot.get("preview_url") or snapshot.get("preview")
            if out_dir and isinstance(url, str) and url != last_preview[0] and \
                    time.monotonic() - last_preview[1] > 2.0:
                last_preview[:] = [url, time.monotonic()]
                try:
                    path = client.download_url(url, os.path.join(out_dir, "progress_preview.png"))
                    q.put(("preview", key, path))
                except BackendError as e:
                    log.debug("preview download failed: %s", e)

        job = client.wait(job_id, on_update, deadline=deadline)
        if not out_dir:
            q.put(("ended", key, job))
            return
        if job.get("state") != "succeeded":
            discard_unused(out_dir)
            q.put(("job", key, job))
            return
        q.put(("state", key, "downloading"))
        if views_only(artifact_names(job)):  # ``--set stop_after=views``: show the views; there is no 3D result
            q.put(("preview", key, client.download(job_id, "views.png", os.path.join(out_dir, "views.png"))))
            q.put(("note", key, "stopped after the views (views.png); no 3D result"))
            q.put(("state", key, "succeeded"))
            return
        rec = self.records.get(key)
        path, preview = download_result(client, job, out_dir, rec.kind if rec is not None else "generate")
        if preview:
            q.put(("preview", key, preview))
        q.put(("result", key, path))

    # -- main thread ----------------------------------------------------------------------------------------------

    def pump(self) -> int:
        """Apply queued worker messages (main thread only); returns how many were applied."""
        n = 0
        while True:
            try:
                kind, key, payload = self.queue.get_nowait()
            except queue.Empty:
                break
            n += 1
            if kind == "call":  # a worker asks for something to run on the main thread
                try:
                    payload()
                except Exception:
                    log.exception("main-thread callback failed")
                continue
            if kind == "status":
                self.status = payload
                self.adopt(payload.jobs, payload.client if payload.online else None)
                if self.on_status:
                    self.on_status(payload)
                continue
            rec = self.records.get(key)
            if rec is None or (rec.resuming and kind != "resumed"):
                continue
            if kind == "resumed":
                rec.resuming = False
                continue
            try:
                self._apply(rec, kind, payload)
            except Exception as e:  # keep the pump alive; show the problem on the job
                log.exception("applying %s to job %s failed", kind, key)
                rec.state, rec.error, rec.error_code = "failed", f"{type(e).__name__}: {e}", "addon_error"
        if n:
            redraw()
        return n

    def adopt(self, server_jobs: list[dict], client: Client | None = None) -> None:
        """Jobs the backend knows and this session does not (an earlier Blender session's, another client's) join
        the list, oldest first: finished ones ready to be re-imported, previewed or deleted; queued and running
        ones followed on a worker thread with ``client`` (live progress, cancel), importable once they succeed."""
        known = {r.job_id for r in self.records.values() if r.job_id}
        for job in server_jobs:
            if job.get("id") in known or (job.get("state") not in TERMINAL_STATES and client is None):
                continue
            method = self.status.method(job.get("method", "")) or {"name": job.get("method", "")}
            kind = {"reconstruct": "reconstruct", "texture": "refine"}.get(method_kind(method), "generate")
            rec = self.new(kind=kind, method=str(job.get("method", "")), request=job.get("request") or {}, files={},
                           out_dir="", history=True)
            apply_snapshot(rec, job)
            rec.state = str(job.get("state") or "queued")
            rec.started = float(job.get("created") or rec.started)
            if rec.active:
                self._clients[rec.key] = client
                self._follow_with(rec.key, self._watch, client, rec.job_id)

    def _apply(self, rec: JobRecord, kind: str, payload: Any) -> None:
        if kind == "job":
            apply_snapshot(rec, payload)
        elif kind == "ended":  # an adopted job's last snapshot: its own state (nothing to download now)
            apply_snapshot(rec, payload)
            rec.state = str(payload.get("state"))
        elif kind == "state":
            rec.state = payload
        elif kind == "note":
            rec.message = payload
        elif kind == "preview":
            rec.preview_image = load_preview(payload, rec.preview_image or f"Gen3D preview {rec.key}")
            rec.preview_path = payload
        elif kind == "error":
            rec.state = "failed"
            rec.error, rec.error_code = str(payload), payload.code
            rec.error_hint = str(payload.detail.get("command") or "")
        elif kind == "result":
            rec.result_path = payload
            rec.state = "importing"
            rec.objects = self.importer(rec) if self.importer else []
            if rec.state == "importing":
                rec.state = "succeeded"


def download_result(client: Client, job: dict, out_dir: str, kind: str) -> tuple[str, str]:
    """Download a succeeded job's GLB and what goes with it into ``out_dir``: ``(glb path, preview path or "")``.

    Beside the GLB: where the object stands (``placement.json``, gen3d/backend/geometry/placement.py) and, for a
    refinement, its texture and meta.json, so that an unchanged mesh only gets a new image on its material."""
    job_id, names = str(job["id"]), artifact_names(job)
    glb = next((n for n in names if n == "mesh.glb"), None) or next((n for n in names if n.endswith(".glb")), None)
    if glb is None:
        raise BackendError("no_result", f"job {job_id} succeeded but has no GLB artifact", {"artifacts": names})
    preview = ""
    if "preview.png" in names:
        try:
            preview = client.download(job_id, "preview.png", os.path.join(out_dir, "preview.png"))
        except BackendError as e:
            log.debug("preview download failed: %s", e)
    for extra in ("placement.json",) + (("texture.png", "meta.json") if kind == "refine" else ()):
        if extra in names:
            client.download(job_id, extra, os.path.join(out_dir, extra))
    return client.download(job_id, glb, os.path.join(out_dir, os.path.basename(glb))), preview


def discard_unused(out_dir: str) -> None:
    """Remove a job's result folder when it holds nothing but the ``inputs`` the add-on wrote for it (a job that
    never started, or ended without a result), so failed attempts leave no empty result folders behind."""
    if out_dir and os.path.isdir(out_dir) and set(os.listdir(out_dir)) <= {"inputs"}:
        shutil.rmtree(out_dir, ignore_errors=True)


def artifact_names(job: dict) -> list[str]:
    arts = job.get("artifacts") or []
    if isinstance(arts, dict):
        return list(arts)
    return [a.get("name", "") if isinstance(a, dict) else str(a) for a in arts]


def views_only(names: list[str]) -> bool:
    """A job that stopped after its views (``stop_after=views``): ``views.png`` and no mesh to import."""
    return "views.png" in names and not any(n.endswith(".glb") for n in names)


def apply_snapshot(rec: JobRecord, job: dict) -> None:
    """Copy a server job snapshot onto the record."""
    rec.job_id = str(job.get("id") or rec.job_id)
    state = job.get("state")
    if state:
        # a succeeded job is "downloading" here until its GLB is imported
        rec.state = "downloading" if state == "succeeded" else state
    for attr in ("stage", "message"):
        if job.get(attr) is not None:
            setattr(rec, attr, str(job[attr]))
    for attr in ("step", "total"):
        if isinstance(job.get(attr), (int, float)):
            setattr(rec, attr, int(job[attr]))
    if isinstance(job.get("progress"), (int, float)):
        rec.fraction = float(job["progress"])
    rec.resumable = bool(job.get("resumable"))
    eta = job.get("eta_s", job.get("eta"))
    rec.eta = float(eta) if isinstance(eta, (int, float)) else None
    if job.get("artifacts"):
        rec.artifacts = artifact_names(job)
    err = job.get("error")
    if state in ("failed", "cancelled") and isinstance(err, dict):
        rec.error = str(err.get("message") or err.get("code") or "failed")
        rec.error_code = str(err.get("code") or "")
        rec.error_hint = str((err.get("detail") or {}).get("command") or "")
    elif state == "failed":
        rec.error = str(err or rec.message or "the job failed")


def load_preview(path: str, name: str) -> str:
    """Load (or reload) ``path`` into the image datablock ``name``; returns the datablock's name."""
    img = bpy.data.images.get(name)
    if img is None:
        img = bpy.data.images.load(path, check_existing=False)
        img.name = name
    else:
        img.filepath = path
        img.reload()
    if not bpy.app.background:
        img.preview_ensure()
    return img.name


def redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


manager = JobManager()


def _timer() -> float:
    manager.pump()
    return 0.2 if any(r.active for r in manager.records.values()) else 1.0


def register() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=0.5, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    manager.clear()
