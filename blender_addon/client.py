"""HTTP client for the Gen3D backend API v1 (standard library only, importable without bpy).

Every failure is a :class:`BackendError` with a stable ``code``, a one-line ``message``, a ``detail`` dict and the
HTTP ``status`` (None when no HTTP answer came back): the server's structured errors are passed through, and
connection problems become ``unreachable`` / ``timeout``. Idempotent GETs are retried on connection errors.

    client = Client("127.0.0.1:8765")
    client.handshake()                      # health + API version check
    job = client.submit({"method": "reconstruct", "preset": "fast"}, {"views": "views.zip"})
    job = client.wait(job["id"], on_update=print)
    client.download(job["id"], "mesh.glb", "/tmp/mesh.glb")
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Iterator

API_VERSION = 1
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_PORT = 8765


class BackendError(Exception):
    """A failed backend call: ``code`` (stable, e.g. ``missing_weights``), ``message``, ``detail``, HTTP ``status``."""

    def __init__(self, code: str, message: str, detail: dict | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        self.status = status

    def __str__(self) -> str:
        hint = self.detail.get("command")
        return f"{self.message} (run: {hint})" if hint else self.message

    def __repr__(self) -> str:
        return f"BackendError({self.code!r}, {self.message!r}, status={self.status})"


def normalize_url(url: str, default_port: int = DEFAULT_PORT) -> str:
    """``"localhost"``, ``"127.0.0.1:8765"``, ``"http://host:1/"`` -> ``"http://host:port"`` (no trailing slash)."""
    url = (url or "").strip()
    if not url:
        raise BackendError("bad_url", "the backend URL is empty; set it in the Gen3D preferences")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError("bad_url", f"the backend URL {url!r} is not an http(s) address", {"url": url})
    try:
        port = parts.port
    except ValueError:
        raise BackendError("bad_url", f"the backend URL {url!r} has an invalid port", {"url": url}) from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None and parts.scheme == "http":
        port = default_port
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def encode_multipart(fields: dict[str, tuple[bytes, str]], files: dict[str, str]) -> tuple[bytes, str]:
    """Build a ``multipart/form-data`` body.

    ``fields``: name -> (bytes, content type); ``files``: part name -> local path (filename and type from the path).
    Returns (body, content-type header value).
    """
    boundary = "gen3d-" + uuid.uuid4().hex
    out: list[bytes] = []

    def part(name: str, data: bytes, ctype: str, filename: str | None = None) -> None:
        disposition = f'form-data; name="{_quote(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quote(filename)}"'
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.append(data)
        out.append(b"\r\n")

    for name, (data, ctype) in fields.items():
        part(name, data, ctype)
    for name, path in files.items():
        with open(path, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        part(name, data, ctype, os.path.basename(path))
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def parse_error(status: int, body: bytes) -> BackendError:
    """Turn an HTTP error answer into a :class:`BackendError`.

    Understands ``{code, message, detail}``, the same under ``"error"``, and FastAPI's ``{"detail": ...}``.
    """
    try:
        doc = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = {}
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        doc = doc["error"]
    if isinstance(doc, dict) and "message" in doc:
        detail = doc.get("detail")
        return BackendError(str(doc.get("code") or f"http_{status}"), str(doc["message"]),
                            detail if isinstance(detail, dict) else {"detail": detail} if detail else {}, status)
    if isinstance(doc, dict) and "detail" in doc:  # FastAPI's own errors (404 route, 422 validation)
        detail = doc["detail"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return BackendError("bad_input", f"{where}: {first.get('msg', 'invalid')}", {"errors": detail}, status)
        return BackendError(f"http_{status}", str(detail), {}, status)
    text = body.decode("utf-8", "replace").strip()[:300] if body else ""
    return BackendError(f"http_{status}", f"the backend answered HTTP {status}" + (f": {text}" if text else ""),
                        {}, status)


class Client:
    """One backend. ``timeout``: seconds for ordinary calls; ``transfer_timeout``: uploads and downloads;
    ``retries``: extra tries of idempotent GETs after a connection error, ``backoff`` seconds apart (doubling)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, transfer_timeout: float = 300.0,
                 retries: int = 2, backoff: float = 0.25):
        self.base = normalize_url(url)
        self.token = token or None
        self.timeout = float(timeout)
        self.transfer_timeout = float(transfer_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              timeout: float | None = None, accept: str = "application/json") -> http.client.HTTPResponse:
        """Send one request; returns the open response (2xx) or raises :class:`BackendError`. GETs are retried."""
        headers = {"Accept": accept, "User-Agent": "gen3d-blender"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base + path
        tries = 1 + (self.retries if method == "GET" else 0)
        for attempt in range(tries):
            req = urllib.request.Request(url, data=body, headers=headers, method=method)
            try:
                return urllib.request.urlopen(req, timeout=timeout or self.timeout)
            except urllib.error.HTTPError as e:
                with e:
                    raise parse_error(e.code, e.read()) from None
            except (socket.timeout, TimeoutError) as e:
                raise BackendError("timeout", f"the backend at {self.base} did not answer {method} {path} within "
                                   f"{timeout or self.timeout:g} s", {"url": url}) from e
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    raise BackendError("timeout", f"the backend at {self.base} did not answer {method} {path} "
                                       f"within {timeout or self.timeout:g} s", {"url": url}) from e
                if attempt + 1 < tries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise BackendError("unreachable", f"cannot reach the Gen3D backend at {self.base} ({reason}); "
                                   "start it from the Gen3D panel or check the URL in the preferences",
                                   {"url": url, "reason": str(reason)}) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              timeout: float | None = None) -> Any:
        with self._open(method, path, body, content_type, timeout) as resp:
            data = resp.read()
        if not data:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendError("bad_response", f"the backend answered {method} {path} with something that is not "
                               "JSON; is the URL pointing at a Gen3D backend?", {"body": data[:200].decode(
                                   "utf-8", "replace")}) from None

    @staticmethod
    def _job_path(job_id: str, *rest: str) -> str:
        return "/v1/jobs/" + "/".join(urllib.parse.quote(str(p), safe="") for p in (job_id, *rest))

    # -- API ------------------------------------------------------------------------------------------------------

    def health(self) -> dict:
        return self._json("GET", "/v1/health")

    def handshake(self) -> dict:
        """``/v1/health`` plus a protocol check; raises ``incompatible_backend`` when the API versions differ."""
        health = self.health()
        if not isinstance(health, dict):
            raise BackendError("bad_response", f"{self.base}/v1/health did not answer a JSON object")
        version = health.get("api_version")
        if version is not None and int(version) != API_VERSION:
            raise BackendError("incompatible_backend", f"the backend speaks API v{version}, this add-on speaks "
                               f"v{API_VERSION}; update the one that is older",
                               {"backend_api_version": version, "addon_api_version": API_VERSION})
        return health

    def methods(self) -> list[dict]:
        """Every method with ``name``, ``inputs``, options schema, presets and weight status."""
        doc = self._json("GET", "/v1/methods")
        if isinstance(doc, dict):
            doc = doc.get("methods", doc)
        if isinstance(doc, dict):  # name -> description
            doc = [{"name": k, **v} for k, v in doc.items()]
        return list(doc or [])

    def submit(self, request: dict, files: dict[str, str] | None = None) -> dict:
        """``POST /v1/jobs``: ``request`` is the JSON part (method, prompt, seed, preset, options, cameras),
        ``files`` maps an input role (``image``, ``mesh``, ``views``) to a local file. Returns the job."""
        body, ctype = encode_multipart({"request": (json.dumps(request).encode(), "application/json")}, files or {})
        return self._json("POST", "/v1/jobs", body, ctype, timeout=self.transfer_timeout)

    def job(self, job_id: str) -> dict:
        return self._json("GET", self._job_path(job_id))

    def jobs(self) -> list[dict]:
        doc = self._json("GET", "/v1/jobs")
        return list(doc.get("jobs", []) if isinstance(doc, dict) else doc or [])

    def cancel(self, job_id: str) -> dict | None:
        return self._json("POST", self._job_path(job_id, "cancel"))

    def resume(self, job_id: str) -> dict:
        return self._json("POST", self._job_path(job_id, "resume"))

    def delete(self, job_id: str) -> None:
        self._json("DELETE", self._job_path(job_id))

    def unload(self) -> dict | None:
        return self._json("POST", "/v1/unload")

    def download(self, job_id: str, name: str, dest: str) -> str:
        """Save artifact ``name`` of a job to ``dest`` (written to a temporary name, then renamed)."""
        return self.download_url(self._job_path(job_id, "artifacts", *name.split("/")), dest)

    def download_url(self, path: str, dest: str) -> str:
        """Save ``path`` (relative to the backend, e.g. a preview URL from an event) to ``dest``; returns ``dest``."""
        if path.startswith(self.base):
            path = path[len(self.base):]
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        tmp = f"{dest}.part-{uuid.uuid4().hex[:8]}"
        try:
            with self._open("GET", path, timeout=self.transfer_timeout, accept="*/*") as resp, open(tmp, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, dest)
        except OSError as e:  # socket timeouts included
            raise BackendError("download_failed", f"downloading {path} failed: {e}", {"path": path}) from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return dest

    def events(self, job_id: str, timeout: float = 60.0) -> Iterator[tuple[str, Any]]:
        """Server-sent events of a job as (event name, parsed JSON data) until the server closes the stream.

        ``timeout`` bounds the silence between two events (the server sends keep-alive comments).
        """
        resp = self._open("GET", self._job_path(job_id, "events"), timeout=timeout, accept="text/event-stream")
        with resp:
            yield from parse_sse(resp)

    def wait(self, job_id: str, on_update: Callable[[dict], None] | None = None, poll_interval: float = 0.5,
             use_events: bool = True, deadline: float | None = None) -> dict:
        """Follow a job until it is succeeded, failed or cancelled; returns the final job.

        Uses the event stream and falls back to polling when the stream is missing or breaks. ``on_update`` gets
        every job snapshot (and progress event merged into the last snapshot). ``deadline``: ``time.monotonic()``
        value after which a ``timeout`` error is raised.
        """
        job = self.job(job_id)
        if on_update:
            on_update(job)
        if use_events and job.get("state") not in TERMINAL_STATES:
            try:
                for name, data in self.events(job_id):
                    if isinstance(data, dict):
                        job = merge_event(job, data, name)
                        if on_update:
                            on_update(job)
                        if job.get("state") in TERMINAL_STATES:
                            break
                    if deadline is not None and time.monotonic() > deadline:
                        break
            except BackendError as e:
                if e.code not in ("timeout", "unreachable", "http_404", "not_found", "http_405", "bad_response"):
                    raise
            except (OSError, http.client.HTTPException, ValueError):
                pass  # stream broke: fall back to polling
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError("timeout", f"job {job_id} did not finish in time", {"job": job_id})
            time.sleep(poll_interval)


def merge_event(job: dict, data: dict, name: str = "message") -> dict:
    """Fold one event into the last job snapshot: ``job`` events carry the whole job, ``progress`` events the
    changed fields, ``preview`` events the new preview's ``url``."""
    inner = data.get("job") if isinstance(data.get("job"), dict) else data
    merged = {**job, **{k: v for k, v in inner.items() if k != "id" or v == job.get("id")}}
    if name == "preview" and isinstance(inner.get("url"), str):
        merged["preview_url"] = inner["url"]
    return merged


def parse_sse(lines) -> Iterator[tuple[str, Any]]:
    """Parse a ``text/event-stream`` from an iterable of byte lines into (event, data) pairs.

    ``data`` is JSON-decoded when it parses, else the raw text. Comments (keep-alives) are skipped.
    """
    name, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    value = text
                yield name, value
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
