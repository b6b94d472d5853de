"""Launch, attach to and stop a local Gen3D backend (standard library only, importable without bpy).

A launched backend listens on 127.0.0.1 only, on the preferred port or a free one when that is taken. Its pid and
URL go to a pid file in the add-on's user folder so that a later Blender session attaches to it instead of starting
a second one, and a stale entry (process gone or not answering) is cleaned up. Its output goes to a log file.
Only a backend this process started is stopped at exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from .client import BackendError, Client

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port(preferred: int, host: str = HOST) -> int:
    """``preferred`` when nothing listens there, else a port the OS picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise BackendError("no_port", f"no free TCP port on {host}")


def backend_argv(python: str = "", command: str = "") -> list[str]:
    """The command that starts the backend before its ``serve`` arguments: ``command`` (split like a shell
    would, e.g. ``"/opt/gen3d/.venv/bin/gen3d"`` or ``"uv run python -m gen3d"``) or ``python -m gen3d``."""
    if command.strip():
        return shlex.split(command, posix=os.name != "nt")
    if python.strip():
        return [python.strip(), "-m", "gen3d"]
    raise BackendError("not_configured", "set the backend's Python (or a launch command) in the Gen3D preferences")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _looks_like_backend(pid: int) -> bool:
    """On Linux, check the command line; elsewhere trust the pid file."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
    except OSError:
        return os.name != "posix" or sys.platform == "darwin"
    return b"serve" in cmd and (b"backend" in cmd or b"gen3d" in cmd)


class BackendProcess:
    """The backend this add-on launched or attached to. ``state_dir`` holds ``backend.pid`` and ``backend.log``."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.pid_path = os.path.join(state_dir, "backend.pid")
        self.log_path = os.path.join(state_dir, "backend.log")
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        #: stop a backend started here when Blender exits or the add-on is disabled; else leave it running
        self.stop_at_exit = True
        self._atexit = False

    @property
    def started_here(self) -> bool:
        """True while a backend launched by this Blender session runs."""
        return self.proc is not None and self.proc.poll() is None

    def read_pid_file(self) -> dict | None:
        try:
            with open(self.pid_path, encoding="utf-8") as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) and "pid" in doc else None
        except (OSError, ValueError):
            return None

    def attach_existing(self, token: str | None = None, timeout: float = 2.0) -> str | None:
        """URL of a backend recorded in the pid file that still answers; cleans up a stale record."""
        doc = self.read_pid_file()
        if doc is None:
            return None
        url, pid = doc.get("url"), int(doc["pid"])
        try:
            Client(url, token, timeout=timeout, retries=0).handshake()
            self.url = url
            return url
        except BackendError:
            pass
        if _pid_alive(pid) and _looks_like_backend(pid):
            log.info("stopping stale backend pid %d that no longer answers at %s", pid, url)
            self._kill_pid(pid)
        self._remove_pid_file()
        return None

    def launch(self, argv: list[str], data_dir: str, port: int, token: str | None = None, cwd: str | None = None,
               wait_s: float = 60.0, weights_dir: str | None = None) -> str:
        """Start ``argv + ['serve', ...]`` on loopback, wait until ``/v1/health`` answers, return its URL.

        Raises ``launch_failed`` with the end of the log when the process exits or never answers.
        """
        existing = self.attach_existing(token)
        if existing:
            return existing
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(data_dir, exist_ok=True)
        port = free_port(port)
        cmd = [*argv, "serve", "--host", HOST, "--port", str(port), "--data-dir", data_dir]
        if weights_dir:
            cmd += ["--weights-dir", weights_dir]
        env = dict(os.environ)
        if token:  # through the environment, so that it stays out of the process list
            env["GEN3D_TOKEN"] = token
        log.info("launching backend: %s", " ".join(cmd))
        logf = open(self.log_path, "ab")
        logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=cwd or None, creationflags=flags,
                                         start_new_session=os.name == "posix")
        except OSError as e:
            raise BackendError("launch_failed", f"could not start the backend with {cmd[0]!r}: {e}",
                               {"command": cmd}) from e
        finally:
            logf.close()
        if not self._atexit:
            atexit.register(self._at_exit)
            self._atexit = True
        url = f"http://{HOST}:{port}"
        client = Client(url, token, timeout=2.0, retries=0)
        deadline = time.monotonic() + wait_s
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise BackendError("launch_failed", f"the backend exited with code {code} while starting; "
                                   "see the Gen3D backend log", {"log": self.log_tail(), "command": cmd})
            try:
                client.handshake()
                break
            except BackendError as e:
                if e.code == "incompatible_backend":
                    self.stop()
                    raise
                if time.monotonic() > deadline:
                    self.stop()
                    raise BackendError("launch_failed", f"the backend did not answer at {url} within {wait_s:g} s",
                                       {"log": self.log_tail(), "command": cmd}) from None
                time.sleep(0.25)
        with open(self.pid_path, "w", encoding="utf-8") as f:
            json.dump({"pid": self.proc.pid, "url": url, "port": port, "data_dir": data_dir}, f)
        self.url = url
        return url

    def stop(self, include_recorded: bool = False) -> bool:
        """Stop the backend this session started (and, with ``include_recorded``, one from an earlier session
        found in the pid file). Returns True when something was stopped."""
        stopped = False
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                stopped = True
            self.proc = None
            self._remove_pid_file()
        elif include_recorded:
            doc = self.read_pid_file()
            if doc and _pid_alive(int(doc["pid"])) and _looks_like_backend(int(doc["pid"])):
                stopped = self._kill_pid(int(doc["pid"]))
            self._remove_pid_file()
        if stopped:
            self.url = None
        return stopped

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _kill_pid(self, pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return False
        for _ in range(40):
            if not _pid_alive(pid):
                return True
            time.sleep(0.25)
        try:
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except OSError:
            pass
        return True

    def _remove_pid_file(self) -> None:
        try:
            os.remove(self.pid_path)
        except OSError:
            pass

    def _at_exit(self) -> None:
        if self.stop_at_exit:
            self.stop()

    def close(self) -> None:
        """At add-on unregister: stop what this session started (when ``stop_at_exit``), drop the exit hook."""
        self._at_exit()
        if self._atexit:
            atexit.unregister(self._at_exit)
            self._atexit = False
