"""Our import names never shadow another distribution's: fresh interpreters, started from the repo root (which
Python puts first on ``sys.path``) and from an unrelated folder, import Hugging Face's ``kernels`` (which
transformers imports for diffusers' PEFT loader), our rasterizers and the CLI side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, kernels, diffusers.loaders.peft
from gen3d.kernels.gaussians import rasterization
from gen3d.kernels.mesh import rasterize, interpolate, texture, antialias
import gen3d
print(json.dumps({"kernels": kernels.__file__, "gen3d": gen3d.__file__,
                  "hub_api": callable(getattr(kernels, "get_kernel", None))}))
"""


@pytest.fixture(params=["repo_root", "elsewhere"])
def cwd(request, tmp_path) -> Path:
    return REPO if request.param == "repo_root" else tmp_path


def test_hf_kernels_and_ours_import_side_by_side(cwd):
    import json

    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # Hugging Face's kernel hub, not a folder of ours, answers to ``kernels``
    assert found["hub_api"], found
    assert "site-packages" in Path(found["kernels"]).parts, found
    # and ``gen3d`` is this checkout (editable install or the working directory)
    assert Path(found["gen3d"]).resolve() == REPO / "gen3d" / "__init__.py", found


def test_cli_info_runs(cwd):
    for argv in (["-m", "gen3d", "info"], ["-m", "gen3d.backend", "info"]):
        proc = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "torch" in proc.stdout
