"""A real Gen3D server in a subprocess on a free loopback port, with the test pipelines loaded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
EXTRA_METHODS = "tests.support.methods"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server(data_dir, token=...) as srv: srv.client.get(...)``; ``srv.kill()`` simulates a crash."""

    def __init__(self, data_dir: Path, token: str | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.data_dir, self.token, self.extra_args = Path(data_dir), token, extra_args
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def start(self, timeout: float = 120.0) -> "Server":
        env = {**os.environ, "GEN3D_EXTRA_METHODS": EXTRA_METHODS, "PYTHONPATH": str(REPO), **self.env}
        cmd = [sys.executable, "-m", "gen3d", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               *(["--token", self.token] if self.token else []), *self.extra_args]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                health = self.client.get("/v1/health", timeout=2.0).json()
                if health["worker"]["device"]:  # the worker is up too
                    return self
            except (httpx.HTTPError, KeyError, json.JSONDecodeError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash or power loss would (its worker exits on its own)."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.client.close()
        self.log.close()

    # --- helpers -------------------------------------------------------------------------------------------
    def submit(self, request: dict, files: dict | None = None, expect: int = 201) -> dict:
        r = self.client.post("/v1/jobs", data={"request": json.dumps(request)}, files=files or None)
        assert r.status_code == expect, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")


def read_sse(response: httpx.Response):
    """Yield ``(event, id, data)`` from a streaming ``text/event-stream`` response."""
    event, eid, data = None, None, []
    for line in response.iter_lines():
        if line == "":
            if data or event:
                yield event or "message", eid, json.loads("\n".join(data)) if data else None
            event, eid, data = None, None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                eid = value
            elif field == "data":
                data.append(value)
