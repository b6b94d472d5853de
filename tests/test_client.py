"""blender_addon/client.py alone (no bpy): error, timeout and retry paths against a loopback HTTP server written
here, multipart bodies checked with the standard library's email parser, and the SSE reader."""

from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_client():
    """Import client.py by path: the add-on package's __init__ imports bpy, the client must not need it."""
    spec = importlib.util.spec_from_file_location("gen3d_client_alone", REPO / "blender_addon" / "client.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


client_mod = load_client()
Client, BackendError = client_mod.Client, client_mod.BackendError


class FakeBackend(BaseHTTPRequestHandler):
    """Routes that exercise the client's paths; counters live on the server object."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, doc, ctype="application/json"):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        if self.path == "/v1/health":
            self._send(200, {"status": "ok", "version": "9.9.9", "api_version": srv.api_version,
                             "auth": self.headers.get("Authorization")})
        elif self.path == "/v1/methods":
            if srv.hits[self.path] <= srv.drop_first:  # close the connection without an answer
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(200, {"methods": [{"name": "reconstruct", "inputs": {"views": "zip"}}]})
        elif self.path == "/v1/jobs/missing":
            self._send(404, {"code": "not_found", "message": "no job 'missing'", "detail": {"id": "missing"}})
        elif self.path == "/v1/jobs/weights":
            self._send(503, {"error": {"code": "missing_weights", "message": "LRM weights are missing",
                                       "detail": {"command": "python -m gen3d weights download lrm"}}})
        elif self.path == "/v1/jobs/fastapi":
            self._send(422, {"detail": [{"loc": ["body", "request"], "msg": "field required", "type": "missing"}]})
        elif self.path == "/v1/jobs/html":
            self._send(500, b"<html>oops</html>", "text/html")
        elif self.path == "/v1/jobs/slow":
            time.sleep(1.5)
            self._send(200, {"id": "slow"})
        elif self.path == "/v1/jobs/j1":
            srv.polls += 1
            state = "succeeded" if srv.polls >= 3 else "running"
            self._send(200, {"id": "j1", "state": state, "step": srv.polls, "total": 3,
                             "artifacts": ["mesh.glb"] if state == "succeeded" else []})
        elif self.path == "/v1/jobs/j1/events":
            self._send(404, {"code": "not_found", "message": "no events here"})
        elif self.path == "/v1/jobs/j2":
            self._send(200, {"id": "j2", "state": "succeeded" if srv.sse_done else "running"})
        elif self.path == "/v1/jobs/j2/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunks = [": keep-alive\n\n", 'event: progress\ndata: {"stage": "fit", "step": 1,\ndata:  "total": 2}\n\n',
                      "event: progress\r\ndata: {\"stage\": \"fit\", \"step\": 2, \"total\": 2}\r\n\r\n",
                      'event: state\ndata: {"state": "succeeded"}\n\n']
            for c in chunks:
                self.wfile.write(c.encode())
                self.wfile.flush()
            srv.sse_done = True
            self.close_connection = True
        elif self.path.startswith("/v1/jobs/j1/artifacts/"):
            self._send(200, b"glTF" + bytes(range(256)) * 64, "model/gltf-binary")
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        srv = self.server
        srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if self.path == "/v1/jobs":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            parts = {p.get_param("name", header="content-disposition"): (
                p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in msg.iter_parts()}
            srv.last_parts = parts
            self._send(201, {"id": "new", "state": "queued"})
        elif self.path == "/v1/jobs/j1/cancel":
            self._send(409, {"code": "conflict", "message": "job j1 already finished", "detail": {}})
        else:
            self._send(404, {"detail": "Not Found"})


@pytest.fixture()
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeBackend)
    srv.daemon_threads = True
    srv.handle_error = lambda request, address: None  # the client hung up on purpose (timeouts)
    srv.hits, srv.drop_first, srv.api_version, srv.polls, srv.sse_done = {}, 0, 1, 0, False
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv, scheme=True):
    host, port = srv.server_address
    return f"{'http://' if scheme else ''}{host}:{port}"


def test_normalize_url():
    n = client_mod.normalize_url
    assert n("127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert n("http://localhost:9000/") == "http://localhost:9000"
    assert n("localhost") == "http://localhost:8765"
    assert n("https://example.org") == "https://example.org"
    for bad in ("", "ftp://x", "http://host:notaport"):
        with pytest.raises(BackendError) as e:
            n(bad)
        assert e.value.code == "bad_url"


def test_handshake_with_and_without_scheme_and_token(fake):
    for u in (url(fake), url(fake, scheme=False)):
        health = Client(u, token="s3cret").handshake()
        assert health["version"] == "9.9.9"
        assert health["auth"] == "Bearer s3cret"
    fake.api_version = 2
    with pytest.raises(BackendError) as e:
        Client(url(fake)).handshake()
    assert e.value.code == "incompatible_backend" and "v2" in e.value.message


def test_structured_errors(fake):
    c = Client(url(fake))
    with pytest.raises(BackendError) as e:
        c.job("missing")
    assert (e.value.code, e.value.status, e.value.detail) == ("not_found", 404, {"id": "missing"})
    with pytest.raises(BackendError) as e:
        c.job("weights")
    assert e.value.code == "missing_weights" and e.value.status == 503
    assert "python -m gen3d weights download lrm" in str(e.value)
    with pytest.raises(BackendError) as e:
        c.job("fastapi")
    assert e.value.code == "bad_input" and "body.request" in e.value.message
    with pytest.raises(BackendError) as e:
        c.job("html")
    assert e.value.code == "http_500" and "oops" in e.value.message
    with pytest.raises(BackendError) as e:
        c.cancel("j1")
    assert e.value.code == "conflict" and e.value.status == 409


def test_timeout_is_a_readable_error(fake):
    t0 = time.monotonic()
    with pytest.raises(BackendError) as e:
        Client(url(fake), timeout=0.3, retries=3).job("slow")
    assert e.value.code == "timeout" and "0.3 s" in e.value.message
    assert time.monotonic() - t0 < 1.4  # a timeout is not retried (generous bound, not a benchmark)


def test_get_retried_after_dropped_connections_but_post_not(fake):
    fake.drop_first = 2
    c = Client(url(fake), retries=2, backoff=0.01)
    assert c.methods()[0]["name"] == "reconstruct"
    assert fake.hits["/v1/methods"] == 3
    fake.hits.clear()
    fake.drop_first = 5
    with pytest.raises(BackendError) as e:
        Client(url(fake), retries=1, backoff=0.01).methods()
    assert e.value.code == "unreachable" and fake.hits["/v1/methods"] == 2


def test_unreachable_backend():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError) as e:
        Client(f"127.0.0.1:{port}", retries=1, backoff=0.01).health()
    assert e.value.code == "unreachable" and e.value.status is None
    assert f"127.0.0.1:{port}" in e.value.message and "Traceback" not in str(e.value)


def test_multipart_upload(fake, tmp_path):
    img = tmp_path / "ref image.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n")
    zp = tmp_path / "views.zip"
    zp.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    req = {"method": "reconstruct", "prompt": 'a "quoted" prompt\nwith newline', "seed": 7}
    job = Client(url(fake)).submit(req, {"image": str(img), "views": str(zp)})
    assert job == {"id": "new", "state": "queued"}
    parts = fake.last_parts
    assert json.loads(parts["request"][2]) == req and parts["request"][1] == "application/json"
    assert parts["image"][:2] == ("ref image.png", "image/png") and parts["image"][2] == img.read_bytes()
    assert parts["views"][0] == "views.zip" and parts["views"][2] == zp.read_bytes()


def test_wait_polls_when_there_is_no_event_stream(fake):
    seen = []
    job = Client(url(fake)).wait("j1", seen.append, poll_interval=0.01)
    assert job["state"] == "succeeded" and job["artifacts"] == ["mesh.glb"]
    assert [s["step"] for s in seen] == [1, 2, 3]


def test_wait_follows_server_sent_events(fake):
    seen = []
    job = Client(url(fake)).wait("j2", seen.append, poll_interval=0.01)
    assert job["state"] == "succeeded"
    progress = [(s.get("stage"), s.get("step")) for s in seen if s.get("stage")]
    assert progress[:2] == [("fit", 1), ("fit", 2)]
    assert all(s["id"] == "j2" for s in seen)


def test_parse_sse():
    lines = [b": comment\n", b"event: a\n", b"data: {\"x\": 1}\n", b"\n", b"data: plain\n", b"data: text\n", b"\n",
             b"id: 3\n", b"\n"]
    assert list(client_mod.parse_sse(lines)) == [("a", {"x": 1}), ("message", "plain\ntext")]


def test_download_is_atomic(fake, tmp_path):
    dest = tmp_path / "out" / "mesh.glb"
    Client(url(fake)).download("j1", "mesh.glb", str(dest))
    assert dest.read_bytes() == b"glTF" + bytes(range(256)) * 64
    with pytest.raises(BackendError):
        Client(url(fake)).download("missing", "mesh.glb", str(tmp_path / "x.glb"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial file left behind
