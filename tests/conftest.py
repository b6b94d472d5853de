"""Shared test setup: no network, no GPU, the repo's shared data at hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite runs servers, workers and bpy processes side by side on small machines; OpenMP threads that busy-wait
# for each other then starve everything (seen: 0.5 s tasks taking 30 s). One thread per process (inherited by the
# subprocesses) keeps the suite's time predictable; it changes nothing outside the tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: small real assets copied into the project (checkpoint key lists)."""
    return DATA


@pytest.fixture(scope="session")
def spot_dir() -> Path:
    """Spot (OBJ + texture), the sample object the backend ships for its demo."""
    from gen3d.backend.commands.demo import SPOT_DIR

    return SPOT_DIR


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Every registry entry's tiny model, written once per session by ``python -m gen3d weights tiny --dir``.

    Use it as ``monkeypatch.setenv("GEN3D_WEIGHTS_DIR", str(tiny_weights))`` or pass ``tiny_weights / NAME`` paths.
    """
    from gen3d.backend.__main__ import main

    root = tmp_path_factory.mktemp("tiny_weights")
    assert main(["weights", "tiny", "--dir", str(root)]) == 0
    return root
