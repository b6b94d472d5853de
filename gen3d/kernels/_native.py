"""Optional compiled CPU kernels: C++ sources in ``csrc/`` built on first use with the system C++ compiler.

The sources are plain C++17 without torch headers (about a second to build) and are called through ctypes on
contiguous CPU tensors. The shared library is cached under ``$GEN3D_KERNEL_CACHE`` (default
``~/.cache/gen3d/kernels``), keyed by the source, the compiler and the CPU, and written atomically so concurrent
processes can build at once. Where no compiler is found or the build fails (typically Windows, or macOS without the
command line tools), ``load`` returns None and callers run their pure-torch path; ``GEN3D_NATIVE=0`` forces that
path (the tests run both).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent / "csrc"
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd"]
#: per source: the mesh kernel must round as the torch pass does, so no fused multiply-adds
_SOURCE_FLAGS = {"mesh": ["-ffp-contract=off"]}
_ARCH_FLAGS = ["-march=native"]  # tried first, dropped if the compiler rejects it
_loaded: dict = {}


def enabled() -> bool:
    """False when ``GEN3D_NATIVE=0`` asks for the pure-torch kernels."""
    return os.environ.get("GEN3D_NATIVE", "1").strip() not in ("0", "false", "no", "off")


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("GEN3D_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gen3d", "kernels")
    return Path(root)


def _build(name: str, cxx: str) -> Path:
    src = SOURCES / f"{name}.cpp"
    text = src.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    flags = _FLAGS + _SOURCE_FLAGS.get(name, [])
    key = hashlib.sha256(b"\0".join([text, version.encode(), " ".join(flags).encode(), platform.machine().encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    cache = _cache_dir()
    lib = cache / f"{name}-{key}{'.dll' if os.name == 'nt' else '.so'}"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}-", suffix=lib.suffix)
    os.close(fd)
    try:
        errors = ""
        for extra in (_ARCH_FLAGS, []):
            res = subprocess.run([cxx, *flags, *extra, str(src), "-o", tmp], capture_output=True, text=True,
                                 timeout=600)
            if res.returncode == 0:
                os.replace(tmp, lib)
                return lib
            errors = res.stderr.strip()[-2000:]
        raise RuntimeError(f"{cxx} failed on {src.name}: {errors}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pointers(*tensors) -> list:
    """ctypes pointers to the data of contiguous CPU tensors. The caller keeps the tensors alive during the call
    (a temporary such as ``t.contiguous()`` built inside the argument list would be freed before it)."""
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"native kernels take contiguous CPU tensors, got {t.device} strides {t.stride()}")
    return [ctypes.c_void_p(t.data_ptr()) for t in tensors]


def load(name: str) -> Optional[ctypes.CDLL]:
    """The compiled library ``csrc/<name>.cpp`` (built and cached on first use), or None when native kernels are
    disabled or cannot be built here (the reason is logged once)."""
    if not enabled():
        return None
    if name not in _loaded:
        cxx = _compiler()
        lib = None
        if cxx is None:
            log.info("no C++ compiler found: using the pure-torch %s kernels", name)
        else:
            try:
                lib = ctypes.CDLL(str(_build(name, cxx)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                log.warning("native %s kernels unavailable, using pure torch: %s", name, exc)
        _loaded[name] = lib
    return _loaded[name]
