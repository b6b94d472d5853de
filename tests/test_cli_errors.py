"""The CLI's one error path, as a user meets it (``python -m gen3d`` in a subprocess): every refusal is one line
on stderr and exit 2 (3 for missing weights), never a traceback, and a failed start leaves no output folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gen3d", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=240)


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    """stderr without log records (``2026-... INFO name: ...``)."""
    return [line for line in r.stderr.splitlines() if line.strip() and not line[:4].isdigit()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every refusal at once (the subprocesses run side by side): name -> (result, output folder)."""
    tmp = tmp_path_factory.mktemp("cli")
    rgb = tmp / "rgb.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(rgb)
    rgba = tmp / "rgba.png"
    a = np.zeros((32, 32, 4), np.uint8)
    a[8:24, 8:24] = 255
    Image.fromarray(a).save(rgba)
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(rgb.read_bytes()[:40])
    (tmp / "cams.json").write_text("[{not json")
    (tmp / "a_file").write_text("x")
    (tmp / "box.glb").write_bytes(b"glTF" + bytes(100))
    (tmp / "views").mkdir()
    (tmp / "views" / "transforms.json").write_text("{}")
    empty_weights, rembg_home = tmp / "weights", tmp / "u2net"
    empty_weights.mkdir()
    rembg_home.mkdir()
    env = {"GEN3D_WEIGHTS_DIR": str(empty_weights), "U2NET_HOME": str(rembg_home)}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused, as without a network
    cases = {
        "cameras_not_json": ("run", "lrm", "--image", str(rgba), "--cameras", str(tmp / "cams.json")),
        "out_is_a_file": ("run", "lrm", "--image", str(rgba)),
        "rgb_without_mask": ("run", "lrm", "--image", str(rgb)),
        "corrupt_png": ("run", "lrm", "--image", str(corrupt)),
        "unexpected_input": ("run", "lrm", "--image", str(rgba), "--mesh", str(tmp / "box.glb")),
        "garbage_glb": ("run", "texture", "--mesh", str(tmp / "box.glb"), "--prompt", "wood"),
        "empty_transforms": ("run", "reconstruct", "--views", str(tmp / "views")),
        "missing_weights": ("run", "lrm", "--image", str(rgba)),
    }
    outs = {name: tmp / ("a_file" if name == "out_is_a_file" else f"out-{name}") for name in cases}
    jobs = {name: (*args, "--out", str(outs[name])) for name, args in cases.items()}
    jobs["download_offline"] = ("weights", "download", "triposr", "--dir", str(tmp / "dl"))
    jobs["busy_port"] = ("serve", "--port", str(busy.getsockname()[1]), "--data-dir", str(tmp / "serverdata"))
    envs = {"download_offline": {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}"}}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(cli, *args, env={**env, **envs.get(name, {})}) for name, args in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    busy.close()
    closed.close()
    return {name: (r, outs.get(name), tmp) for name, r in results.items()}


@pytest.mark.parametrize("name, code, words", [
    ("cameras_not_json", 2, "--cameras"), ("out_is_a_file", 2, "--out"), ("rgb_without_mask", 2, "transparency"),
    ("corrupt_png", 2, "image"), ("unexpected_input", 2, "takes no 'mesh'"), ("garbage_glb", 2, "GLB"),
    ("empty_transforms", 2, "frames"), ("missing_weights", 3, "weights download triposr"),
    ("download_offline", 2, "cannot download triposr"), ("busy_port", 2, "port")])
def test_refusals_are_one_line_and_leave_no_folder(runs, name, code, words):
    r, out, tmp = runs[name]
    lines = error_lines(r)
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: ") and words in lines[0], lines
    if out is not None and name != "out_is_a_file":
        assert not out.exists(), f"{name} left {sorted(p.name for p in out.iterdir())}"
    assert not (tmp / "serverdata").exists()  # the busy port is refused before the server writes anything
