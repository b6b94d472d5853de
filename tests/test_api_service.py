"""The job server end to end: a real ``python -m gen3d serve`` on loopback (with a token), real HTTP.

Jobs use the test pipeline ``sleepy`` of tests/support/methods.py, and ``reconstruct`` on a ray-traced sphere. Expected values come from what the test itself sent (bytes, hashes, counts, the
sphere's size), never from the server's own output.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings, strategies as st

from support import files as F, scenes
from support.server import Server, read_sse

TOKEN = "s3cret-token"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    (root / "weights").mkdir()
    with Server(root / "data", token=TOKEN, extra_args=("--max-upload-mb", "4", "--cancel-grace-s", "2",
                                                        "--weights-dir", str(root / "weights"))) as s:
        s.weights_dir = root / "weights"
        yield s


def sleepy(**options) -> dict:
    return {"method": "sleepy", "prompt": "a cat", "options": options}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "detail"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def raw_get(srv, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def job_count(srv) -> int:
    return len(srv.client.get("/v1/jobs").json()["jobs"])


# --- service -------------------------------------------------------------------------------------------------
def test_health_methods_and_token(srv):
    anon = httpx.Client(base_url=srv.url)
    health = anon.get("/v1/health").json()  # health never needs the token
    assert health["api_version"] == 1 and health["device"] == "cpu" and health["auth_required"] is True
    assert health["worker"]["alive"] and health["queue_length"] >= 0
    assert_error(anon.get("/v1/methods"), 401, "unauthorized")
    assert anon.get("/v1/methods").headers["www-authenticate"] == "Bearer"
    assert_error(anon.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(anon.post("/v1/jobs", data={"request": json.dumps(sleepy())}), 401)
    assert_error(anon.post("/v1/unload"), 401)
    assert anon.get("/v1/methods", headers={"X-Gen3D-Token": TOKEN}).status_code == 200

    methods = {m["name"]: m for m in srv.client.get("/v1/methods").json()["methods"]}
    assert "sleepy" in set(methods)
    s = methods["sleepy"]
    assert s["options_schema"]["properties"]["steps"]["minimum"] == 1
    assert s["presets"]["fast"] == {"steps": 2} and s["required_inputs"] == ["prompt"]
    assert s["weights"] == [] and s["ready"] is True
    assert anon.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["responses"]["422"]

    heavy = methods["needs_weights"]  # its weights are not in the (empty) weights folder nor the HF cache
    assert heavy["ready"] is False and heavy["weights"][0]["ready"] is False
    assert heavy["weights"][0]["command"] == "python -m gen3d weights download sd15"
    n = job_count(srv)
    err = assert_error(srv.client.post("/v1/jobs", data={"request": json.dumps({"method": "needs_weights"})}),
                       503, "missing_weights")
    assert err["detail"]["command"] == "python -m gen3d weights download sd15"
    assert job_count(srv) == n


# --- jobs ----------------------------------------------------------------------------------------------------
def test_job_end_to_end_with_sse_uploads_and_artifacts(srv):
    image, mesh, views = F.png_bytes(32, 24), F.obj_bytes(), F.good_views(3)
    job = srv.submit({**sleepy(steps=6, step_s=0.05, preview=True), "seed": 7},
                     files={"image": ("ref.png", image, "image/png"), "mesh": ("m.obj", mesh),
                            "views": ("v.zip", views, "application/zip")})
    assert job["state"] in ("queued", "running") and job["request"]["seed"] == 7

    events = []
    with srv.client.stream("GET", job["urls"]["events"]) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for name, eid, data in read_sse(r):
            events.append((name, eid, data))
    assert events[0][0] == "job" and events[-1][0] == "job"
    assert events[-1][2]["state"] == "succeeded"
    steps = [d["step"] for n, _, d in events if n == "progress"]
    assert steps == sorted(steps) and steps[-1] == 6 and all(d["total"] == 6 for n, _, d in events if n == "progress")
    progress = [d for n, _, d in events if n == "progress"]  # no stage shares: the one stage is the whole job
    assert [d["progress"] for d in progress] == [pytest.approx(d["step"] / 6, abs=1e-4) for d in progress]
    assert progress[-1]["message"] == "sleep 6/6" and events[-1][2]["progress"] == 1.0
    previews = [d["url"] for n, _, d in events if n == "preview"]
    assert previews
    png = srv.client.get(previews[-1])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    done = srv.job(job["id"])
    names = {a["name"] for a in done["artifacts"]}
    assert {"result.json", "meta.json", "preview.png"} <= names
    result = srv.client.get(f"/v1/jobs/{job['id']}/artifacts/result.json").json()
    assert result["prompt"] == "a cat" and result["seed"] == 7 and result["steps"] == 6
    assert result["files"]["image"] == {"size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
                                        "name": "image.png"}
    assert result["files"]["mesh"]["sha256"] == hashlib.sha256(mesh).hexdigest()
    assert result["files"]["views"]["dir"] == ["images/000.png", "images/001.png", "images/002.png",
                                               "transforms.json"]
    assert done["started"] >= done["created"] and done["finished"] >= done["started"]

    # reconnecting with Last-Event-ID replays what came after it, up to the end
    first_progress = next(eid for n, eid, _ in events if n == "progress")
    with srv.client.stream("GET", job["urls"]["events"], headers={"Last-Event-ID": first_progress}) as r:
        replay = list(read_sse(r))
    after = events[[e[1] for e in events].index(first_progress) + 1:]
    assert [e[1] for e in replay] == [e[1] for e in after]

    assert srv.client.delete(job["urls"]["self"]).json() == {"id": job["id"], "deleted": True}
    assert_error(srv.client.get(job["urls"]["self"]), 404, "not_found")
    assert_error(srv.client.get(f"/v1/jobs/{job['id']}/artifacts/result.json"), 404)
    assert_error(srv.client.get(f"/v1/jobs/{job['id']}/events"), 404)


def test_failing_job_reports_structured_error(srv):
    job = srv.wait(srv.submit(sleepy(steps=3, step_s=0.0, fail_at=2))["id"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "numerical_error" and job["error"]["detail"] == {"step": 2}
    assert job["artifacts"] == []


def test_cancel_running_and_queued(srv):
    running = srv.submit(sleepy(steps=10_000, step_s=0.05))
    queued = srv.submit(sleepy(steps=1))
    srv.wait(running["id"], states=("running",))
    deadline = time.monotonic() + 60
    while srv.job(running["id"])["step"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_error(srv.client.delete(running["urls"]["self"]), 409, "conflict")

    q = srv.client.post(queued["urls"]["cancel"]).json()
    assert q["state"] == "cancelled"  # a queued job is cancelled at once
    r = srv.client.post(running["urls"]["cancel"]).json()
    assert r["cancel_requested"] is True and r["state"] == "running"
    job = srv.wait(running["id"], timeout=30)
    assert job["state"] == "cancelled" and job["step"] < 10_000
    assert_error(srv.client.post(running["urls"]["cancel"]), 409, "conflict")
    assert srv.wait(srv.submit(sleepy(steps=1))["id"])["state"] == "succeeded"  # the worker carries on


def test_resume_continues_a_cancelled_job_from_its_last_finished_stage(srv):
    job = srv.submit({"method": "staged", "prompt": "a cat", "seed": 5, "options": {"steps": 150, "step_s": 0.02}})
    deadline = time.monotonic() + 60
    while srv.job(job["id"]).get("stage") != "two" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_error(srv.client.post(job["urls"]["resume"]), 409, "conflict")  # still running
    srv.client.post(job["urls"]["cancel"])
    cancelled = srv.wait(job["id"], timeout=30)
    assert cancelled["state"] == "cancelled" and cancelled["resumable"] is True
    resumed = srv.client.post(job["urls"]["resume"]).json()
    assert resumed["state"] in ("queued", "running") and resumed["resumable"] is False
    done = srv.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded" and not done["resumable"]
    result = srv.client.get(f"{job['urls']['self']}/artifacts/result.json").json()
    import torch

    gen = torch.Generator().manual_seed(5)  # what an uninterrupted run draws
    assert result["values"] == [float(torch.rand(1, generator=gen)), float(torch.rand(1, generator=gen))]
    assert result["computed"] == ["two"]                    # stage one came from its checkpoint
    assert_error(srv.client.post(job["urls"]["resume"]), 409, "conflict")  # succeeded
    plain = srv.submit(sleepy(steps=10_000, step_s=0.05))
    srv.wait(plain["id"], states=("running",))
    srv.client.post(plain["urls"]["cancel"])
    assert not srv.wait(plain["id"], timeout=30)["resumable"]
    assert_error(srv.client.post(plain["urls"]["resume"]), 409, "not_resumable")


def test_worker_killed_mid_job_fails_it_and_a_fresh_worker_runs_the_next(srv):
    job = srv.submit(sleepy(steps=10_000, step_s=0.05))
    srv.wait(job["id"], states=("running",))
    pid = srv.client.get("/v1/health").json()["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)
    failed = srv.wait(job["id"], timeout=30)
    assert failed["state"] == "failed" and failed["error"]["code"] == "worker_died"
    assert "signal 9" in failed["error"]["message"] and "signal 9" in failed["message"]
    nxt = srv.wait(srv.submit(sleepy(steps=2))["id"], timeout=120)
    assert nxt["state"] == "succeeded"
    assert srv.client.get("/v1/health").json()["worker"]["pid"] != pid



def test_job_ignoring_cancellation_has_its_worker_stopped(srv):
    # steps of 6 s: the cancellation check comes right after a progress report, so once step 1 is reported the
    # job is asleep with no check for ~6 s, longer than the 2 s grace (cancelling before step 1 could be caught by
    # the first check, which is the other, graceful path)
    job = srv.submit(sleepy(steps=3, step_s=6.0))
    deadline = time.monotonic() + 60
    while srv.job(job["id"]).get("step", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = srv.client.get("/v1/health").json()["worker"]["pid"]
    srv.client.post(job["urls"]["cancel"])
    job = srv.wait(job["id"], timeout=30)
    assert job["state"] == "cancelled" and job["message"] == "cancelled (worker stopped)"
    assert srv.wait(srv.submit(sleepy(steps=1))["id"], timeout=120)["state"] == "succeeded"
    assert srv.client.get("/v1/health").json()["worker"]["pid"] != pid


def test_unload_frees_cached_models(srv):
    srv.wait(srv.submit(sleepy(steps=1))["id"])
    assert "sleepy-model" in srv.client.get("/v1/health").json()["loaded_models"]
    r = srv.client.post("/v1/unload")
    assert r.status_code == 200 and "sleepy-model" in r.json()["loaded"]
    deadline = time.monotonic() + 30
    while srv.client.get("/v1/health").json()["loaded_models"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.client.get("/v1/health").json()["loaded_models"] == []


def test_fifty_concurrent_submissions_keep_fifo_order(srv):
    before = {j["id"] for j in srv.client.get("/v1/jobs").json()["jobs"]}
    barrier = threading.Barrier(50)

    def submit(i):
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            barrier.wait()
            r = c.post("/v1/jobs", data={"request": json.dumps({**sleepy(steps=1, step_s=0.0), "seed": i})})
            assert r.status_code == 201, r.text
            return r.json()["id"]

    with ThreadPoolExecutor(50) as pool:
        ids = set(pool.map(submit, range(50)))
    assert len(ids) == 50
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = [j for j in srv.client.get("/v1/jobs").json()["jobs"] if j["id"] not in before]
        if all(j["state"] == "succeeded" for j in jobs) and len(jobs) == 50:
            break
        time.sleep(0.2)
    assert {j["id"] for j in jobs} == ids and all(j["state"] == "succeeded" for j in jobs)
    submitted_order = [j["id"] for j in jobs]  # the list is in submission order
    assert [j["id"] for j in sorted(jobs, key=lambda j: j["started"])] == submitted_order
    assert sorted(j["created"] for j in jobs) == [j["created"] for j in jobs]


# --- bad and hostile requests ------------------------------------------------------------------------------
def test_invalid_requests_are_refused_before_queueing(srv):
    n = job_count(srv)
    post = lambda request, files=None: srv.client.post(  # noqa: E731
        "/v1/jobs", data={"request": request if isinstance(request, str) else json.dumps(request)}, files=files)
    assert_error(post({"method": "nope", "prompt": "x"}), 422, "unknown_method")
    err = assert_error(post(sleepy(steps=0)), 422, "bad_input")
    assert err["detail"]["field"] == "options.steps"
    assert_error(post(sleepy(wings=3)), 422, "bad_input")
    assert_error(post({"method": "sleepy"}), 422, "bad_input")  # no prompt
    assert_error(post({**sleepy(), "preset": "ultra"}), 422, "bad_input")
    assert assert_error(post({**sleepy(), "prompt": "x" * 2001}), 422)["detail"]["field"] == "request.prompt"
    cam = {"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "c2w": [[1, 0, 0, 0]] * 4, "width": 4, "height": 4}
    assert_error(post({**sleepy(), "cameras": [cam] * 513}), 422)
    assert_error(post({**sleepy(), "seed": -1}), 422)
    assert_error(post({**sleepy(), "files": {"image": "/etc/passwd"}}), 422)
    assert_error(post("{not json"), 400, "malformed")
    assert_error(post("[1, 2]"), 400)
    assert_error(srv.client.post("/v1/jobs", data={}), 422)  # no request part
    assert_error(srv.client.post("/v1/jobs", content=b"garbage", headers={"content-type": "multipart/form-data"}),
                 400)
    assert_error(post(sleepy(), files={"image": ("a.png", b"not an image")}), 422)
    assert_error(post(sleepy(), files={"image": ("bomb.png", F.png_bomb())}), 413, "too_large")
    assert_error(post(sleepy(), files={"mesh": ("m.exe", F.obj_bytes())}), 422)
    assert_error(post(sleepy(), files={"views": ("v.zip", F.views_zip({"../../evil.json": b"{}"}))}), 422)
    assert_error(post(sleepy(), files={"views": ("v.zip", b"not a zip")}), 422)
    assert_error(post(sleepy(), files={"mesh": ("m.obj", b"v 0 0 0\n" * (600 << 10))}), 413, "too_large")
    def chunks():  # a well-formed multipart body without Content-Length: counted while it streams
        yield (b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n' + json.dumps(sleepy()).encode()
               + b'\r\n--b\r\nContent-Disposition: form-data; name="mesh"; filename="m.obj"\r\n\r\n')
        for _ in range(6):
            yield b"v 0 0 0\n" * (1 << 17)
        yield b"\r\n--b--\r\n"

    assert_error(srv.client.post("/v1/jobs", content=chunks(),
                                 headers={"content-type": "multipart/form-data; boundary=b"}), 413, "too_large")
    assert job_count(srv) == n  # nothing was queued
    jobs_dir = srv.data_dir / "jobs"
    assert {p.name for p in jobs_dir.iterdir()} <= {j["id"] for j in srv.client.get("/v1/jobs").json()["jobs"]}


def test_bad_uploads_are_refused_by_the_methods_own_checks_naming_the_field(srv):
    """The method's validation (the one the CLI runs too) opens every upload before anything is queued: an RGB
    image for a method that needs the object's mask, a GLB that is not one, an empty transforms.json. 422 with
    the input field named and no server path in the message."""
    n = job_count(srv)
    post = lambda request, files: srv.client.post(  # noqa: E731
        "/v1/jobs", data={"request": json.dumps(request)}, files=files)
    cases = [({"method": "lrm"}, {"image": ("ref.png", F.png_bytes(32, 32), "image/png")}, "image"),
             ({"method": "texture", "prompt": "wood"}, {"mesh": ("box.glb", b"glTF" + os.urandom(200))}, "mesh"),
             ({"method": "reconstruct"}, {"views": ("v.zip", F.views_zip({"transforms.json": b"{}"}))}, "views"),
             ({"method": "lrm"}, {"image": ("ref.png", F.png_bytes(32, 32)), "mesh": ("m.obj", F.obj_bytes())},
              "mesh")]
    for request, files, field in cases:
        err = assert_error(post(request, files), 422, "bad_input")
        assert err["detail"].get("field") == field, err
        assert err["message"].startswith(field) or repr(field) in err["message"], err
        text = json.dumps(err)
        assert str(srv.data_dir) not in text and "/jobs/" not in text and ".upload" not in text, err
    err = assert_error(post(sleepy(), {"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"x" * 64)}), 422)
    assert str(srv.data_dir) not in json.dumps(err) and ".upload" not in err["message"], err
    err = assert_error(post(sleepy(), {"image": ("bomb.png", F.png_bomb())}), 413, "too_large")
    assert f"{err['detail']['max_pixels']}" in err["message"], err  # the limit it names is the one it applies
    assert job_count(srv) == n
    assert {p.name for p in (srv.data_dir / "jobs").iterdir()} <= {j["id"] for j in srv.client.get("/v1/jobs").json()["jobs"]}


def test_methods_report_smoke_test_weights(srv, tmp_path):
    """``tiny`` reaches /v1/methods (per weight and per method) once an entry's folder is a smoke-test model
    (the marker file ``weights tiny`` writes is what makes it one)."""
    from gen3d.backend.weights import TINY_MARKER

    folder = srv.weights_dir / "triposr"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TINY_MARKER).write_text("{}")
    try:
        lrm = next(m for m in srv.client.get("/v1/methods").json()["methods"] if m["name"] == "lrm")
        assert lrm["tiny"] is True and lrm["ready"] is True
        assert [{k: w[k] for k in ("name", "ready", "tiny", "command", "license")} for w in lrm["weights"]] == [
            {"name": "triposr", "ready": True, "tiny": True, "command": "python -m gen3d weights download triposr",
             "license": "MIT"}]
        sleepy_m = next(m for m in srv.client.get("/v1/methods").json()["methods"] if m["name"] == "sleepy")
        assert sleepy_m["tiny"] is False
    finally:
        (folder / TINY_MARKER).unlink()
        folder.rmdir()


def test_artifact_names_cannot_leave_the_job_folder(srv):
    job = srv.wait(srv.submit(sleepy(steps=1))["id"])
    base = f"/v1/jobs/{job['id']}/artifacts/"
    assert srv.client.get(base + "result.json").status_code == 200
    for name in ("../../jobs.sqlite3", "..%2F..%2Fjobs.sqlite3", "%2e%2e/%2e%2e/jobs.sqlite3", "/etc/passwd",
                 "..", ".", "", "../inputs", "../out/../inputs/x", ".hidden", "nope.glb", "%00", "a/%2e%2e/%2e%2e"):
        status, body = raw_get(srv, base + name)  # sent verbatim, no client-side normalisation
        assert status == 404 and "error" in json.loads(body), (name, status, body)
    assert_error(srv.client.get("/v1/jobs/../../etc/passwd"), 404)
    assert_error(srv.client.get("/v1/jobs/nope"), 404, "not_found")
    assert_error(srv.client.post("/v1/jobs/nope/cancel"), 404)
    assert_error(srv.client.delete("/v1/jobs/nope"), 404)
    assert_error(srv.client.put("/v1/jobs"), 405, "method_not_allowed")
    assert_error(srv.client.get("/v1/jobs", params={"state": "flying"}), 422)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=12)
request_dicts = st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["sleepy", "", "x" * 300]) | st.text(max_size=10),
    "prompt": st.text(max_size=50) | json_values, "seed": st.integers(-2**40, 2**40) | json_values,
    "preset": st.sampled_from(["fast", "standard", "high", "turbo"]) | json_values,
    "options": st.fixed_dictionaries({}, optional={"steps": st.integers(-5, 3) | json_values,
                                                   "step_s": st.floats(-1, 0.001) | json_values}) | json_values,
    "cameras": st.lists(json_values, max_size=3) | json_values})


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=request_dicts.map(json.dumps) | st.text(max_size=80), job_id=st.text(max_size=20),
       artifact=st.text(max_size=30))
def test_fuzzed_requests_never_crash_the_server(srv, body, job_id, artifact):
    r = srv.client.post("/v1/jobs", data={"request": body})
    assert r.status_code in (201, 400, 404, 413, 422), r.text
    if r.status_code == 201:  # a valid tiny job: no need to run it
        srv.client.post(r.json()["urls"]["cancel"])
    else:
        assert set(r.json()["error"]) == {"code", "message", "detail"}
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/artifacts/{artifact}"),
                         ("POST", f"/v1/jobs/{job_id}/cancel")):
        try:
            r = srv.client.request(method, path)
        except httpx.InvalidURL:
            continue
        assert r.status_code < 500, (path, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"code", "message", "detail"}


# --- the first real method -----------------------------------------------------------------------------------
TINY_RECONSTRUCT = {"fit_steps": 20, "num_points": 400, "max_gaussians": 2000, "sh_degree": 0, "fit_resolutions": [1.0],
                    "densify_every": 20, "mesh_resolution": 32, "target_faces": 600, "smooth_iterations": 1,
                    "texture_resolution": 64, "uv_padding": 2, "extra_bake_views": 0, "refine_steps": 3,
                    "preview_size": 64}


def test_reconstruct_job_end_to_end(srv, tmp_path):
    """A reconstruct job on a ray-traced sphere (6 views, 64²): SSE progress through its stages, a GLB whose
    size matches the sphere's, downloadable."""
    job = srv.submit({"method": "reconstruct", "preset": "fast", "seed": 1, "options": TINY_RECONSTRUCT},
                     files={"views": ("sphere.zip", scenes.sphere_views_zip(tmp_path), "application/zip")})
    stages, states, fractions, messages = [], [], [], set()
    with srv.client.stream("GET", job["urls"]["events"], timeout=300) as r:
        for name, _, data in read_sse(r):
            if name == "progress":
                fractions.append(data["progress"])
                messages.add(data["message"])
                if data["stage"] not in stages:
                    stages.append(data["stage"])
            if name == "job":
                states.append(data["state"])
    assert states[-1] == "succeeded", srv.job(job["id"])
    assert len(stages) >= 2, stages
    # whole-job progress: it never goes back when a stage starts, a message per stage, 100 % at the end
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] < 0.5, fractions
    assert len(messages) >= len(stages) and "starting" not in messages
    assert srv.job(job["id"])["progress"] == 1.0
    done = srv.job(job["id"])
    names = {a["name"] for a in done["artifacts"]}
    assert {"mesh.glb", "meta.json"} <= names
    glb = srv.client.get(f"/v1/jobs/{job['id']}/artifacts/mesh.glb").content
    assert glb[:4] == b"glTF" and int.from_bytes(glb[8:12], "little") == len(glb)
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0
    assert 0.5 < float(mesh.extents.max()) < 2.0, mesh.extents  # the sphere's diameter is 1.0


# --- schemathesis against the published OpenAPI (when installed: the dev extra) ----------------------------
try:
    import schemathesis
except ImportError:  # pragma: no cover - optional
    schemathesis = None

@pytest.mark.skipif(schemathesis is None, reason="schemathesis is not installed (dev extra)")
def test_openapi_fuzz_gets_no_server_error(srv):
    """Requests generated from the published OpenAPI document, every operation: never a 5xx."""
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        case = data.draw(data.draw(st.sampled_from(operations)).as_strategy())
        case.call_and_validate(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"},
                               checks=[schemathesis.checks.not_a_server_error])

    check()


# --- restart (last: it replaces the module's server) ----------------------------------------------------------
def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_restart_keeps_finished_jobs_requeues_queued_and_fails_running(srv):
    ok = srv.wait(srv.submit(sleepy(steps=1))["id"])
    bad = srv.wait(srv.submit(sleepy(steps=2, step_s=0.0, fail_at=1))["id"])
    running = srv.submit(sleepy(steps=10_000, step_s=0.05))["id"]
    srv.wait(running, states=("running",))
    q1, q2, qc = (srv.submit(sleepy(steps=2, step_s=0.0))["id"] for _ in range(3))
    assert srv.client.post(f"/v1/jobs/{qc}/cancel").json()["state"] == "cancelled"
    worker = srv.client.get("/v1/health").json()["worker"]["pid"]
    result = srv.client.get(f"/v1/jobs/{ok['id']}/artifacts/result.json").content

    srv.kill()  # SIGKILL: no shutdown code runs
    deadline = time.monotonic() + 30
    while _process_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _process_alive(worker), "the worker outlived its server"

    with Server(srv.data_dir, token=TOKEN) as again:
        jobs = {j["id"]: j for j in again.client.get("/v1/jobs").json()["jobs"]}
        assert jobs[ok["id"]]["state"] == "succeeded"
        assert again.client.get(f"/v1/jobs/{ok['id']}/artifacts/result.json").content == result
        assert jobs[bad["id"]]["state"] == "failed" and jobs[bad["id"]]["error"]["code"] == "numerical_error"
        assert jobs[running]["state"] == "failed" and jobs[running]["message"] == "interrupted by restart"
        assert jobs[running]["error"]["code"] == "interrupted"
        assert jobs[qc]["state"] == "cancelled"
        done = [again.wait(q, timeout=60) for q in (q1, q2)]
        assert [j["state"] for j in done] == ["succeeded", "succeeded"]
        assert done[0]["started"] < done[1]["started"]
