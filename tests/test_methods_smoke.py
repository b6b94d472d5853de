"""Every registered generative method runs once through the CLI on the tiny smoke-test weights (issue 13).

Checks what a user gets: a GLB whose mesh has UVs and a base-colour texture, a preview stamped as smoke-test
output, and a meta.json that says the weights were tiny.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from gen3d.backend.pipelines import get, names

GENERATIVE = [n for n in names() if get(n).weights]

#: per-method overrides that keep a CPU run short (the ``fast`` preset does the rest)
QUICK = {
    "dreamgaussian": ["iters=8", "iters_refine=2"],
    "dreamgaussian-text": ["iters=8", "iters_refine=2"],
    "sweetdreamer": ["iters=4", "iters_stage2=2", "iters_refine=1", "mesh_resolution=32", "texture_size=64",
                     "bake_size=32", "refine_size=32"],
    "texture": ["iters_refine=2", "texture_size=64"],
    "magic123": ["iters=8", "known_iters=2", "fine_iters=2", "tet_resolution=16", "color_resolution=8"],
    "dreamcraft3d": ["iters=8", "num_pts=300", "render_sizes=[32,32,32]", "ref_size=32", "mesh_resolution=32",
                     "fine_iters=2", "tet_resolution=16", "fine_render_size=32", "color_resolution=8",
                     "texture_iters=3", "texture_render_size=32", "only_pretrain_step=5", "augment_steps=2",
                     "texture_size=64", "preview_views=2", "preview_size=64", "lambda_depth=0"],
    "instant3d": ["grid_size=128", "steps=2", "mesh_resolution=48", "texture_size=128",
                  "target_faces=4000"],
    "syncdreamer": ["sample_steps=1", "samples=2", "fit_steps=20", "num_points=1000", "mesh_resolution=48",
                    "target_faces=2000", "refine_steps=2", "texture_resolution=64", "preview_size=64"],
    **{m: ["iters=8", "iters_refine=1", "views_steps=1", "num_pts=300", "mesh_resolution=32", "texture_size=64",
           "bake_size=48", "bake_azimuths=4", "refine_size=48", "preview_views=2", "preview_size=64"]
       for m in ("mvdream", "imagedream")},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_inputs")
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[24:72, 30:66] = (210, 120, 40, 255)
    Image.fromarray(rgba).save(root / "object.png")
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    box.export(root / "box.glb")
    return root


def test_every_generative_method_is_covered():
    assert {"dreamgaussian", "dreamgaussian-text", "lrm", "mvdream", "imagedream"} <= set(GENERATIVE)


@pytest.mark.parametrize("method", GENERATIVE)
def test_method_runs_on_tiny_weights(method, inputs, tiny_weights, tmp_path):
    pipeline = get(method)
    args = [sys.executable, "-m", "gen3d", "run", method, "--out", str(tmp_path / "out"), "--preset", "fast",
            "--weights-dir", str(tiny_weights), "--seed", "1"]
    if "image" in pipeline.required_inputs:
        args += ["--image", str(inputs / "object.png")]
    if "mesh" in pipeline.inputs:
        args += ["--mesh", str(inputs / "box.glb")]
    if "prompt" in pipeline.inputs:
        args += ["--prompt", "a small wooden box"]
    for kv in QUICK.get(method, []):
        args += ["--set", kv]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"

    scene = trimesh.load(out / "mesh.glb")
    mesh = next(iter(scene.geometry.values())) if isinstance(scene, trimesh.Scene) else scene
    assert len(mesh.faces) > 0
    assert mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices)
    texture = mesh.visual.material.baseColorTexture
    assert texture is not None and min(texture.size) >= 8

    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == method and meta["tiny_weights"] is True
    # whole-job progress, as the CLI printed it (plain lines off a terminal): moving across the stages, never
    # back, 100 % at the end; every stage the run timed has a share
    printed = [float(p) for p in re.findall(r"^\[\s*([\d.]+)%\]", r.stderr, re.M)]
    assert printed == sorted(printed) and printed[-1] == 100.0 and len(set(printed)) >= 3, printed
    assert set(meta["timings"]) - {"total"} <= set(pipeline.stage_shares)
    assert "smoke-test" in meta["notice"]
    preview = np.asarray(Image.open(out / "preview.png").convert("RGB")).astype(int)
    banner = preview[:3].reshape(-1, 3).mean(0)  # the top rows carry the red smoke-test banner
    assert banner[0] > 150 and banner[1] < 80 and banner[2] < 80
