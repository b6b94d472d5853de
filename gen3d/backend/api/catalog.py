"""What ``/v1/methods`` serves: every registered pipeline with its weights' readiness, and the check that refuses
a job whose weights are missing before it is queued (503 naming the download command)."""

from __future__ import annotations

import logging
from typing import Any

from ..commands.methods import describe
from ..errors import Gen3DError, MissingWeights
from ..pipelines import Pipeline, names

log = logging.getLogger(__name__)


def weight_status(name: str) -> dict[str, Any]:
    """``{"name", "ready", "tiny", "command"}`` (plus ``license``, ``restrictive`` and ``size_gb`` from the registry);
    ``ready`` is None when the registry cannot tell, ``tiny`` marks smoke-test weights (``python -m gen3d weights
    tiny``)."""
    try:
        from .. import weights
    except ImportError:  # the registry is optional for test pipelines
        return {"name": name, "ready": None, "tiny": False, "command": None}
    try:
        d = weights.describe(name)
    except Gen3DError as e:
        log.warning("weights %r: %s", name, e.message)
        return {"name": name, "ready": False, "tiny": False, "command": None}
    return {"name": name, "ready": d["status"] != "missing", "tiny": d["tiny"], "command": d["command"],
            "license": d["license"], "restrictive": d["restrictive"], "size_gb": d["size_gb"]}


def method_info(name: str) -> dict[str, Any]:
    info = describe(name)
    info["weights"] = [weight_status(w) for w in info["weights"]]
    readiness = [w["ready"] for w in info["weights"]]
    info["ready"] = False if False in readiness else (None if None in readiness else True)
    info["tiny"] = any(w["tiny"] for w in info["weights"])
    return info


def all_methods() -> list[dict[str, Any]]:
    return [method_info(n) for n in names()]


def require_weights(pipeline: Pipeline) -> None:
    missing = [w for w in map(weight_status, pipeline.weights) if w["ready"] is False]
    if missing:
        commands = [w["command"] for w in missing if w["command"]]
        raise MissingWeights(f"method {pipeline.name!r} needs weights that are not installed: "
                             f"{', '.join(w['name'] for w in missing)}"
                             + (f"; fetch them with: {' && '.join(commands)}" if commands else ""),
                             {"weights": [w["name"] for w in missing], "commands": commands,
                              "command": commands[0] if commands else None})
