"""Pipelines, registered by name. ``get(name)`` and ``names()`` import the method modules on first use."""

from __future__ import annotations

import importlib
import os

from ..errors import NotFound
from .base import JobRequest, Options, Pipeline, RunContext, seed_everything

#: modules that define methods; each calls :func:`register` at import time (``GEN3D_EXTRA_METHODS``, a
#: comma-separated list of modules, adds more: test pipelines, plug-ins)
METHOD_MODULES: list[str] = ["gen3d.backend.pipelines.reconstruct", "gen3d.backend.pipelines.lrm",
                              "gen3d.backend.pipelines.dreamgaussian", "gen3d.backend.pipelines.texture",
                              "gen3d.backend.pipelines.magic123",
                              "gen3d.backend.pipelines.instant3d",
                              "gen3d.backend.pipelines.dmv3d", "gen3d.backend.pipelines.syncdreamer",
                              "gen3d.backend.pipelines.mvdream", "gen3d.backend.pipelines.sweetdreamer",
                              "gen3d.backend.pipelines.dreamcraft3d"]

_REGISTRY: dict[str, type[Pipeline]] = {}
_loaded = False


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: make a pipeline available to the CLI and the server under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        for mod in METHOD_MODULES + [m for m in os.environ.get("GEN3D_EXTRA_METHODS", "").split(",") if m]:
            importlib.import_module(mod)
        _loaded = True


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Pipeline:
    _load()
    if name not in _REGISTRY:
        raise NotFound(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}",
                       {"field": "method", "value": name})
    return _REGISTRY[name]()


__all__ = ["JobRequest", "Options", "Pipeline", "RunContext", "get", "names", "register", "seed_everything"]
