"""Running a kernel test module on both paths: the compiled kernels and the pure-torch fallback."""

from __future__ import annotations

import pytest

from gen3d.kernels import _native


def both_kernel_paths(library: str):
    """An autouse fixture (assign it to ``kernel_path`` in the module) that runs each test with the compiled
    ``library`` kernels, then with the pure-torch ones (``GEN3D_NATIVE=0``); the compiled run skips without a C++
    compiler."""

    @pytest.fixture(autouse=True, params=["native", "torch"])
    def kernel_path(request, monkeypatch):
        monkeypatch.setenv("GEN3D_NATIVE", "1" if request.param == "native" else "0")
        if request.param == "native" and _native.load(library) is None:
            pytest.skip("no C++ compiler here: the native kernels cannot be built")
        return request.param

    return kernel_path
