"""blender_addon/backend_process.py without bpy: ports, launch commands, launch failures, stale pid files.

(Launching and stopping the real backend through the add-on is covered by test_addon_e2e.py.)
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_addon_module(name: str):
    """Import one add-on module by its package path without running the package's __init__ (which needs bpy)."""
    if "gen3d_addon_alone" not in sys.modules:
        pkg = types.ModuleType("gen3d_addon_alone")
        pkg.__path__ = [str(REPO / "blender_addon")]
        sys.modules["gen3d_addon_alone"] = pkg
    return importlib.import_module(f"gen3d_addon_alone.{name}")


bp = load_addon_module("backend_process")
BackendError = load_addon_module("client").BackendError


def test_free_port_falls_back_when_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        port = bp.free_port(taken)
        assert port != taken and port > 0
    assert bp.free_port(port) == port  # free again: the preferred one is used


def test_backend_argv():
    assert bp.backend_argv(python="/venv/bin/python") == ["/venv/bin/python", "-m", "gen3d"]
    assert bp.backend_argv(command="uv run python -m gen3d") == ["uv", "run", "python", "-m", "gen3d"]
    assert bp.backend_argv(python="/p", command="'/opt/my gen3d/bin/gen3d'") == ["/opt/my gen3d/bin/gen3d"]
    with pytest.raises(BackendError) as e:
        bp.backend_argv("", " ")
    assert e.value.code == "not_configured"


def test_launch_failures_are_readable(tmp_path):
    proc = bp.BackendProcess(str(tmp_path / "state"))
    with pytest.raises(BackendError) as e:
        proc.launch([str(tmp_path / "no-such-python"), "-m", "gen3d"], str(tmp_path / "data"), 8765)
    assert e.value.code == "launch_failed" and "no-such-python" in e.value.message
    # a "backend" that prints something and exits: the error says so and carries the log's end
    script = "import sys; print('backend boom: ' + ' '.join(sys.argv[1:])); sys.exit(3)"
    with pytest.raises(BackendError) as e:
        proc.launch([sys.executable, "-c", script], str(tmp_path / "data"), 8765, wait_s=60)
    assert e.value.code == "launch_failed" and "code 3" in e.value.message
    assert "backend boom: serve --host 127.0.0.1 --port" in e.value.detail["log"]
    assert not Path(proc.pid_path).exists() and not proc.started_here


def test_stale_pid_file_is_cleaned_up(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    proc = bp.BackendProcess(str(tmp_path))
    Path(proc.pid_path).write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:9"}))
    assert proc.attach_existing(timeout=0.5) is None
    assert not Path(proc.pid_path).exists()
    assert proc.stop(include_recorded=True) is False
