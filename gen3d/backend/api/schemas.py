"""Response bodies of the HTTP API v1 and the conversion of stored jobs into them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. bad_input, not_found, missing_weights")
    message: str = Field(description="one readable line")
    detail: dict[str, Any] = Field(default_factory=dict, description="what and where: field, limits, command, ...")


class ErrorResponse(BaseModel):
    """Every error the API returns, whatever the status."""

    error: ErrorInfo


class Artifact(BaseModel):
    name: str = Field(description="path relative to the job's output folder, e.g. mesh.glb or views/000.png")
    url: str
    size: int | None = Field(None, description="bytes")


class Job(BaseModel):
    id: str
    method: str
    state: State
    stage: str | None = Field(None, description="the pipeline stage now running")
    step: int = 0
    total: int = Field(0, description="steps of the current stage")
    progress: float = Field(0.0, ge=0.0, le=1.0, description="the whole job's fraction done (stages weighted by "
                            "their measured share of a run); 1 when it succeeded")
    eta_s: float | None = Field(None, description="seconds left in the whole job, from its pace so far (null until "
                                "there is enough to go on)")
    message: str = Field("", description="what the job is doing now (the stage and its step)")
    error: ErrorInfo | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    preview_url: str | None = Field(None, description="latest preview image while running")
    cancel_requested: bool = False
    resumable: bool = Field(False, description="failed or cancelled with stage checkpoints: POST urls.resume "
                            "continues it from its last finished stage")
    created: float = Field(description="Unix time")
    started: float | None = None
    finished: float | None = None
    updated: float | None = Field(None, description="Unix time of the last change (the worker's clock for progress)")
    request: dict[str, Any] = Field(description="the request as accepted; files are paths inside the job folder")
    urls: dict[str, str] = Field(description="self, events, cancel, resume")


class JobList(BaseModel):
    jobs: list[Job] = Field(description="in submission order")
    queue_length: int


class WorkerStatus(BaseModel):
    pid: int | None
    alive: bool
    device: str | None
    job: str | None = Field(description="the job running now")
    loaded_models: list[str]
    memory: dict[str, float] | None = Field(None, description="CUDA memory in MiB after the last job (total, free, "
                                            "allocated, reserved, peak_allocated); null on CPU/MPS")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    api_version: int
    device: str
    worker: WorkerStatus
    loaded_models: list[str]
    queue_length: int
    auth_required: bool


class WeightStatus(BaseModel):
    name: str
    ready: bool | None = Field(description="present on disk; null when the weights registry cannot tell")
    tiny: bool = Field(False, description="smoke-test weights (tiny random models): outputs are not real generations")
    command: str | None = Field(None, description="the command that downloads it when missing")
    license: str | None = Field(None, description="its licence, shown before a download")
    restrictive: bool = Field(False, description="a restrictive (e.g. non-commercial) licence: downloading needs "
                              "--accept-license")
    size_gb: float | None = Field(None, description="approximate download size")


class Method(BaseModel):
    name: str
    title: str
    description: str
    inputs: dict[str, str]
    required_inputs: list[str]
    options_schema: dict[str, Any]
    presets: dict[str, dict[str, Any]]
    weights: list[WeightStatus]
    ready: bool | None = Field(description="every weight present (null: unknown)")
    tiny: bool = Field(False, description="some of its weights are smoke-test weights (python -m gen3d weights tiny)")


class MethodList(BaseModel):
    methods: list[Method]


class Deleted(BaseModel):
    id: str
    deleted: bool = True


class Unload(BaseModel):
    loaded: list[str] = Field(description="models loaded when the request arrived")
    after_job: str | None = Field(description="the worker unloads after this running job")


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def artifact_url(job_id: str, name: str) -> str:
    return f"{job_url(job_id)}/artifacts/{name}"


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    """A stored job as the API shows it (the fields of :class:`Job`)."""
    jid = job["id"]
    out = {k: job.get(k) for k in ("id", "method", "state", "stage", "step", "total", "progress", "eta_s", "message",
                                   "error",
                                   "cancel_requested", "created", "started", "finished", "updated", "request")}
    out["resumable"] = bool(job.get("resumable"))
    out["progress"] = out["progress"] or 0.0  # jobs stored before whole-job progress existed
    out["artifacts"] = [{"name": a["name"], "url": artifact_url(jid, a["name"]), "size": a.get("size")}
                        for a in job.get("artifacts") or []]
    out["preview_url"] = preview_url(job)
    out["urls"] = {"self": job_url(jid), "events": f"{job_url(jid)}/events", "cancel": f"{job_url(jid)}/cancel",
                   "resume": f"{job_url(jid)}/resume"}
    return out


def preview_url(job: dict[str, Any]) -> str | None:
    if not job.get("preview"):
        return None
    return f"{artifact_url(job['id'], job['preview'])}?t={job.get('updated') or 0:.3f}"
