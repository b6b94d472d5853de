"""The add-on as Blender sees it: build the zip, validate it with Blender's own extension tool, install it into
bpy (from PyPI) with ``extensions.package_install_files``, enable it, check what it registered, disable it and
check that nothing is left behind.

Each scenario runs bpy in a fresh subprocess with HOME in a temporary folder (the user config stays untouched,
and the add-on registered here never leaks into other tests' bpy). The scenario functions at the bottom of this
file run there and print one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import build_addon  # noqa: E402

pytest.importorskip("bpy")

ADDON_MODULE = "bl_ext.user_default.gen3d"


def run_scenario(file: Path, name: str, *args: str, home: Path, timeout: float = 240, env: dict | None = None):
    """Run ``name(*args)`` of ``file`` in a fresh Python with HOME=home; returns its last stdout line as JSON."""
    proc = subprocess.run([sys.executable, str(file), name, *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HOME": str(home), **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"scenario {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return json.loads(lines[-1])


def _error_of(op, **kw) -> str:
    """Run an operator that should fail (inside a scenario); returns the error Blender reports ('' on success)."""
    try:
        op(**kw)
    except RuntimeError as e:
        return str(e)
    return ""


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    return build_addon.build(REPO / "blender_addon", tmp_path_factory.mktemp("dist"))


def test_zip_layout_and_blender_validates_it(addon_zip):
    with zipfile.ZipFile(addon_zip) as z:
        names = z.namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # Blender's own extension tool (what 'blender --command extension validate' runs), found without importing bpy
    bpy_dir = Path(importlib.util.find_spec("bpy").origin).parent
    tool = next(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    out = subprocess.run([sys.executable, str(tool), "validate", str(addon_zip)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr


def test_manifest_declares_the_permissions_the_code_uses():
    """Blender shows an extension's permissions to the user: every resource the add-on touches is declared."""
    import tomllib

    declared = set(tomllib.loads((REPO / "blender_addon" / "blender_manifest.toml").read_text())["permissions"])
    code = "\n".join(p.read_text() for p in (REPO / "blender_addon").glob("*.py"))
    used = {"network": "urlopen" in code or "http.client" in code, "files": "open(" in code,
            "clipboard": "window_manager.clipboard" in code}
    assert {k for k, v in used.items() if v} <= declared, declared


def test_build_rejects_a_bad_manifest(tmp_path):
    src = tmp_path / "addon"
    src.mkdir()
    (src / "__init__.py").write_text("import torch\n")
    (src / "blender_manifest.toml").write_text(
        'schema_version = "1.0.0"\nid = "gen3d"\nversion = "1.0"\nname = "X"\ntagline = "Ends with a dot."\n'
        'maintainer = "m"\ntype = "add-on"\nblender_version_min = "4.1.0"\nlicense = ["MIT"]\n'
        '[permissions]\nnetwork = "ok"\nteleport = "why not"\n')
    with pytest.raises(build_addon.ManifestError) as e:
        build_addon.build(src, tmp_path / "dist")
    msg = str(e.value)
    for needle in ("version", "tagline", "blender_version_min", "license", "teleport", "imports 'torch'"):
        assert needle in msg, needle
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_install_enable_and_unregister_leaves_nothing(addon_zip, tmp_path):
    r = run_scenario(Path(__file__), "scenario_install", str(addon_zip), home=tmp_path / "home")
    assert r["installed"] == ["FINISHED"]
    assert r["enabled"]
    assert {"generate", "reconstruct", "refine_texture", "cancel", "launch_backend", "render_dataset"} <= set(
        r["operators"])
    assert {"GEN3D_PT_backend", "GEN3D_PT_jobs"} <= set(r["classes"])
    assert r["scene_prop"] and r["timer_registered"]
    assert r["prefs_bl_idname"] == ADDON_MODULE
    assert r["user_dir"].startswith(str(tmp_path / "home"))
    assert r["dataset_poll"] is False and "Python" in r["dataset_poll_error"]  # no backend configured yet
    after = r["after"]
    assert after["classes"] == [] and after["operators"] == [] and not after["scene_prop"]
    assert not after["timer_registered"] and after["handlers"] == r["before"]["handlers"]
    assert after["threads"] == [] and not after["enabled"]


def test_render_dataset_operator_writes_an_annotated_dataset(addon_zip, tmp_path):
    r = run_scenario(Path(__file__), "scenario_dataset", str(addon_zip), str(tmp_path / "out"),
                     home=tmp_path / "home")
    assert r["result"] == ["FINISHED"] and r["running_after_return"], r
    assert r["state"] == "succeeded" and r["line"].startswith("rendered 2 models (4 views in all)"), r
    assert r["seen"] == sorted(r["seen"]) and r["seen"][-1] == 1.0  # tqdm's "models" bar, read as it came
    lines = [json.loads(x) for x in Path(r["manifest"]).read_text().splitlines()]
    assert sorted((x["model_id"], x["view"]) for x in lines) == [("Cube", 0), ("Cube", 1), ("Tall", 0), ("Tall", 1)]
    root = Path(r["manifest"]).parent
    for x in lines:
        ann = json.loads((root / x["annotation"]).read_text())
        assert ann["bbox_2d"] is not None and (root / x["edges"]).is_file()
        assert ann["distance"] == 3.0  # the dialog's options reach 'dataset render'
    assert not list(root.rglob("depth/*.npy"))  # depth and normals were off


# -- scenarios (run in a subprocess: python tests/test_addon_install.py NAME ARGS...) ------------------------------


def _snapshot() -> dict:
    import threading

    import bpy

    return {
        "classes": sorted(n for n in dir(bpy.types) if n.upper().startswith("GEN3D")),
        "operators": sorted(dir(bpy.ops.gen3d)),
        "scene_prop": "gen3d" in bpy.types.Scene.bl_rna.properties,
        "handlers": {k: len(getattr(bpy.app.handlers, k)) for k in dir(bpy.app.handlers)
                     if isinstance(getattr(bpy.app.handlers, k), list)},
        "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("gen3d")),
        "enabled": ADDON_MODULE in bpy.context.preferences.addons,
    }


def scenario_install(zip_path: str) -> dict:
    import addon_utils
    import bpy

    before = _snapshot()
    installed = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                         enable_on_install=True)
    during = _snapshot()
    pkg = sys.modules[ADDON_MODULE]
    timer = sys.modules[ADDON_MODULE + ".jobs"]._timer
    during["timer_registered"] = bpy.app.timers.is_registered(timer)
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    during["prefs_bl_idname"] = type(prefs).bl_idname
    during["user_dir"] = sys.modules[ADDON_MODULE + ".preferences"].user_dir()
    during["dataset_poll"] = bpy.ops.gen3d.render_dataset.poll()
    try:
        bpy.ops.gen3d.render_dataset()
        during["dataset_poll_error"] = ""
    except RuntimeError as e:
        during["dataset_poll_error"] = str(e)
    assert pkg.__name__ == ADDON_MODULE
    addon_utils.disable(ADDON_MODULE, default_set=True)
    after = _snapshot()
    after["timer_registered"] = bpy.app.timers.is_registered(timer)
    return {"installed": sorted(installed), **during, "before": before, "after": after}


def scenario_dataset(zip_path: str, out: str) -> dict:
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.launch_mode, prefs.python_path, prefs.output_dir = "PYTHON", sys.executable, out
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.mesh.primitive_cylinder_add(location=(3, 0, 0), depth=3)
    bpy.context.active_object.name = "Tall"
    bpy.data.objects["Cube"].select_set(True)
    # the interactive path (what the dialog's OK runs in the UI): the command runs as a task, followed through the
    # same queue pump as jobs, while the operator has already returned
    result = bpy.ops.gen3d.render_dataset(views_per_model=2, size=48, engine="WORKBENCH", pose_mode="3", distance=3.0,
                                          geometry_passes=False, mode="ASYNC")
    manager = sys.modules[ADDON_MODULE + ".jobs"].manager
    (task,) = sys.modules[ADDON_MODULE + ".tasks"].tasks.tasks.values()
    running, seen = task.active, []
    deadline = time.monotonic() + 120
    while task.active and time.monotonic() < deadline:
        manager.pump()
        seen.append(task.fraction)
        time.sleep(0.05)
    manager.pump()
    manifest = next(Path(out).glob("*-dataset/data/manifest.jsonl"), None)
    return {"result": sorted(result), "running_after_return": running, "state": task.state, "line": task.line,
            "seen": [f for f in seen if f is not None], "manifest": str(manifest)}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
