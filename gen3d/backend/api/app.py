"""The HTTP API v1: a FastAPI app over the job store, the event bus and the scheduler.

Errors are translated here, once: every error response is ``{"error": {"code", "message", "detail"}}`` with
the status of its :class:`~backend.errors.Gen3DError` (400 malformed, 401 token, 404 unknown job or artifact,
409 wrong state, 413 too large, 422 invalid request, 503 missing weights); anything unexpected becomes a
structured 500 ``internal`` error, never a bare one.

With a token configured, every route but ``GET /v1/health`` needs ``Authorization: Bearer TOKEN`` or
``X-Gen3D-Token: TOKEN``.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import API_VERSION, __version__
from ..errors import BadInput, Gen3DError, NotFound, Unauthorized
from ..pipelines import JobRequest, get
from . import catalog, schemas, uploads
from .events import Event, EventBus
from .scheduler import Scheduler
from .settings import Settings
from .store import FINISHED, JobStore

log = logging.getLogger(__name__)

HTTP_CODES = {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              406: "not_acceptable", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
              422: "bad_input", 429: "too_many_requests", 503: "unavailable"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": desc} for status, desc in (
        (400, "malformed request"), (401, "token missing or wrong"), (404, "no such job, artifact or method"),
        (409, "the job is in the wrong state"), (413, "upload or image too large"),
        (422, "invalid request or options"), (500, "internal error"), (503, "weights missing"))}
ROLES = ("image", "mesh", "views")
REQUEST_PART_DOC = ("JSON object: the job request (" + ", ".join(
    f for f in JobRequest.model_fields if f != "files") + "); files go in their own parts")


class Malformed(BadInput):
    """The body cannot be parsed at all (not JSON, not multipart)."""

    code = "malformed"
    http_status = 400


@dataclass
class Service:
    settings: Settings
    store: JobStore
    bus: EventBus
    scheduler: Scheduler
    device: str

    @classmethod
    def start(cls, settings: Settings) -> "Service":
        from ..device import pick_device

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore.open(settings.data_dir, settings.db_path)
        bus = EventBus()
        store.listen(lambda kind, job: bus.publish(job["id"], *_event_payload(kind, job)))
        scheduler = Scheduler(store, settings)
        scheduler.start()
        return cls(settings, store, bus, scheduler, str(pick_device(settings.device)))

    def stop(self) -> None:
        self.scheduler.stop()
        self.store.close()


def _event_payload(kind: str, job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if kind == "state":
        return "job", schemas.public_job(job)
    data = {k: job.get(k) for k in ("id", "state", "stage", "step", "total", "progress", "eta_s", "message")}
    data["emitted_at"] = job.get("updated")
    if kind == "preview":
        data["url"] = schemas.preview_url(job)
    return kind, data


# --- errors ----------------------------------------------------------------------------------------------------
def error_response(status: int, code: str, message: str, detail: dict | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "detail": jsonable_encoder(detail or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Gen3DError)
    async def _gen3d(request: Request, exc: Gen3DError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        return error_response(exc.http_status, exc.code, exc.message, exc.detail, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return await _gen3d(request, validation_error(exc.errors()))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}: {exc}")


def validation_error(errors: list[dict[str, Any]], prefix: str = "") -> BadInput:
    """Pydantic/FastAPI validation errors as one :class:`BadInput` naming the first bad field."""
    clean = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
             for e in errors]
    first = clean[0] if clean else {"loc": [], "msg": "invalid request"}
    field = prefix + ".".join(first["loc"])
    return BadInput(f"{field or 'request'}: {first['msg']}", {"field": field, "errors": clean})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a structured 413: at once when ``Content-Length`` says so,
    else as soon as the streamed body passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body larger than the limit of {self.max_bytes} bytes"

    def _too_large(self) -> JSONResponse:
        return error_response(413, "too_large", self._message(), {"max_bytes": self.max_bytes})


# --- dependencies (async: they never block, and a sync one would cost a thread-pool hop per request) -----------
async def service(request: Request) -> Service:
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False, description="the server's --token")
_header_token = APIKeyHeader(name="X-Gen3D-Token", auto_error=False, description="the server's --token")


async def require_token(request: Request,
                  bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                  header: Annotated[str | None, Depends(_header_token)]) -> None:
    expected = request.app.state.settings.token
    if not expected:
        return
    given = bearer.credentials if bearer is not None else header
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("this server needs a token: send 'Authorization: Bearer TOKEN' or 'X-Gen3D-Token: TOKEN'",
                           {"headers": ["Authorization", "X-Gen3D-Token"]})


async def existing_job(job_id: str, svc: Annotated[Service, Depends(service)]) -> dict[str, Any]:
    return svc.store.get(job_id)


Svc = Annotated[Service, Depends(service)]
JobDep = Annotated[dict, Depends(existing_job)]

public = APIRouter(tags=["service"])
router = APIRouter(dependencies=[Depends(require_token)])


# --- service ---------------------------------------------------------------------------------------------------
@public.get("/v1/health", response_model=schemas.Health)
async def health(svc: Svc) -> dict[str, Any]:
    """Version, API version, device, loaded models and queue length. Never needs the token."""
    worker = svc.scheduler.status()
    return {"version": __version__, "api_version": API_VERSION, "device": worker["device"] or svc.device,
            "worker": worker, "loaded_models": worker["loaded_models"],
            "queue_length": svc.store.queue_length(), "auth_required": bool(svc.settings.token)}


@router.get("/v1/methods", response_model=schemas.MethodList, tags=["service"])
def methods() -> dict[str, Any]:
    """Every registered method: inputs, options JSON schema, presets, and whether its weights are present
    (with the command that downloads them when not)."""
    return {"methods": catalog.all_methods()}


@router.post("/v1/unload", response_model=schemas.Unload, tags=["service"])
def unload(svc: Svc) -> dict[str, Any]:
    """Free the worker's loaded models (after the running job, if one is running)."""
    return svc.scheduler.unload()


# --- jobs ------------------------------------------------------------------------------------------------------
def _parse_request(text: str) -> JobRequest:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise Malformed(f"the 'request' part is not JSON ({e})", {"field": "request"}) from None
    if not isinstance(data, dict):
        raise Malformed("the 'request' part must be a JSON object", {"field": "request"})
    if "files" in data:
        raise BadInput("files are sent as multipart parts named image, mesh or views, not in the request",
                       {"field": "request.files"})
    try:
        return JobRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False, include_context=False, include_input=False),
                               prefix="request.") from None


def _save_uploads(parts: dict[str, UploadFile], inputs: Path, pipeline, settings: Settings) -> dict[str, Path]:
    saved = {}
    for role, part in parts.items():
        if role not in pipeline.inputs:
            raise BadInput(f"method {pipeline.name!r} takes no {role!r} input; it takes: "
                           f"{', '.join(pipeline.inputs) or 'nothing'}", {"field": role})
        inputs.mkdir(parents=True, exist_ok=True)
        if role == "image":
            saved[role] = uploads.save_image(part.file, inputs, settings)
        elif role == "mesh":
            saved[role] = uploads.save_mesh(part.file, part.filename, inputs)
        else:
            saved[role] = uploads.extract_views(part.file, inputs, settings)
    return saved


@router.post("/v1/jobs", status_code=201, response_model=schemas.Job, tags=["jobs"])
def submit_job(
    svc: Svc,
    request: Annotated[str, Form(description=REQUEST_PART_DOC)],
    image: Annotated[UploadFile | None, File(description="reference image (PNG, JPEG, WebP)")] = None,
    mesh: Annotated[UploadFile | None, File(description="input mesh: GLB, glTF, OBJ, PLY, STL, OFF")] = None,
    views: Annotated[UploadFile | None, File(description="zip of a transforms.json folder")] = None,
):
    """Validate a job (request, files, options, weights) and queue it. Nothing is queued when anything is wrong."""
    spec = _parse_request(request)
    try:
        pipeline = get(spec.method)
    except NotFound as e:
        raise BadInput(e.message, e.detail, code="unknown_method") from None
    store = svc.store
    job_id = store.new_id()
    job_dir = store.job_dir(job_id)
    parts = {role: part for role, part in (("image", image), ("mesh", mesh), ("views", views)) if part is not None}
    saved: dict[str, Path] = {}
    try:
        saved = _save_uploads(parts, job_dir / "inputs", pipeline, svc.settings)
        spec = spec.model_copy(update={"files": {role: str(p) for role, p in saved.items()}})
        pipeline.validate(spec)
        catalog.require_weights(pipeline)
    except Gen3DError as e:  # the uploads are named by their field, never by where the server keeps them
        shutil.rmtree(job_dir, ignore_errors=True)
        raise e.naming(uploads.upload_names(saved, job_dir)) from None
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    record = spec.model_dump(mode="json")
    record["files"] = {role: p.relative_to(job_dir).as_posix() for role, p in saved.items()}
    job = store.create(job_id, spec.method, record)
    svc.scheduler.wake()
    return JSONResponse(schemas.public_job(job), status_code=201, headers={"Location": schemas.job_url(job_id)})


@router.get("/v1/jobs", response_model=schemas.JobList, tags=["jobs"])
async def list_jobs(svc: Svc, state: Annotated[list[schemas.State] | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> JSONResponse:
    """Jobs in submission order (the last ``limit``), optionally only those in the given states."""
    jobs = svc.store.list(state)[-limit:]
    return JSONResponse({"jobs": [schemas.public_job(j) for j in jobs], "queue_length": svc.store.queue_length()})


@router.get("/v1/jobs/{job_id}", response_model=schemas.Job, tags=["jobs"])
async def get_job(job: JobDep) -> JSONResponse:
    """The job's state, stage, step/total, ETA, message, error and artifacts."""
    return JSONResponse(schemas.public_job(job))  # the hot polling path: already JSON-ready, skip re-validation


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(event=event.type, id=event.id, data=event.data)


@router.get("/v1/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"],
            responses={200: {"description": "text/event-stream of `job` (the whole job, first and on every state "
                                            "change), `progress` and `preview` events; ends when the job ends"}})
async def job_events(job: JobDep, svc: Svc, last_event_id: Annotated[str | None, Header(max_length=64)] = None
                     ) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events for one job. Starts with a `job` snapshot (or, with `Last-Event-ID`, the events missed
    since), then streams live events and closes after the job reaches a final state."""
    job_id = job["id"]
    with svc.store.lock:  # no event can slip between the snapshot and the subscription
        try:
            job = svc.store.get(job_id)
        except NotFound:
            return
        sub, backlog = svc.bus.subscribe(job_id, last_event_id)
        last = svc.bus.last_id(job_id)
    try:
        if backlog is None:
            yield ServerSentEvent(event="job", id=last, data=schemas.public_job(job))
        else:
            for event in backlog:
                yield _sse(event)
        done = job["state"] in FINISHED
        while not done:
            event = await sub.queue.get()
            yield _sse(event)
            done = event.type == "job" and event.data["state"] in FINISHED
    finally:
        svc.bus.unsubscribe(sub)


@router.post("/v1/jobs/{job_id}/cancel", response_model=schemas.Job, tags=["jobs"])
def cancel_job(job: JobDep, svc: Svc) -> dict[str, Any]:
    """Cancel a queued job at once or ask a running one to stop (409 when it already finished)."""
    return schemas.public_job(svc.scheduler.cancel(job["id"]))


@router.post("/v1/jobs/{job_id}/resume", response_model=schemas.Job, tags=["jobs"])
def resume_job(job: JobDep, svc: Svc) -> dict[str, Any]:
    """Queue a failed or cancelled job again; it continues from its last finished stage (409 when the job is not
    failed or cancelled, or its method left no stage checkpoints)."""
    return schemas.public_job(svc.scheduler.resume(job["id"]))


@router.get("/v1/jobs/{job_id}/artifacts/{name:path}", response_class=FileResponse, tags=["jobs"],
            responses={200: {"description": "the file", "content": {"application/octet-stream": {}}}})
def get_artifact(job: JobDep, name: str, svc: Svc) -> FileResponse:
    """A file the job wrote (`mesh.glb`, `preview.png`, `views/000.png`, ...); paths cannot leave the job folder."""
    root = svc.store.out_dir(job["id"]).resolve()
    parts = Path(name).parts
    safe = bool(parts) and "\0" not in name and not any(p.startswith((".", "/")) for p in parts)
    path = root.joinpath(*parts).resolve() if safe else root
    if not safe or not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"job {job['id']} has no artifact {name!r}", {"job": job["id"], "artifact": name})
    return FileResponse(path, filename=path.name)


@router.delete("/v1/jobs/{job_id}", response_model=schemas.Deleted, tags=["jobs"])
def delete_job(job: JobDep, svc: Svc) -> dict[str, Any]:
    """Remove a job and its files (409 while it runs: cancel it first)."""
    svc.store.delete(job["id"])
    svc.bus.forget(job["id"])
    return {"id": job["id"], "deleted": True}


# --- the app ---------------------------------------------------------------------------------------------------
def create_app(settings: Settings) -> FastAPI:
    """The app; the store, scheduler and worker start with the app's lifespan and stop with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = Service.start(settings)
        try:
            yield
        finally:
            app.state.service.stop()

    app = FastAPI(title="Gen3D backend", version=__version__, lifespan=lifespan, responses=ERROR_RESPONSES,
                  description=__doc__, form_limits={"max_files": len(ROLES), "max_fields": 1, "max_part_size": 4 << 20})
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    _install_error_handlers(app)
    app.include_router(public)
    app.include_router(router)
    return app
