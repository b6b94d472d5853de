"""Batch rendering of a folder of CAD models into a dataset of one kind (the settings' class): 3D-DST
geometry-control views (:class:`~.render.RenderSettings`) or multi-view training folders
(:class:`~.multiview.MultiviewSettings`).

One bpy per worker process (spawned; the scene is reset between models), or one Ray task per model. Finished
models are skipped on a second run (their ``done.json``), a model that fails to load is logged and reported
without stopping the batch, and ``manifest.jsonl`` lists what was written (the kind says how), in a stable order.

Layout: ``OUT/<class>/<model_id>/`` with the kind's files plus ``done.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..distribute import map_tasks
from ..errors import BadInput
from ..files import write_bytes
from .render import SceneSettings, render_model
from .scene import MODEL_SUFFIXES

log = logging.getLogger(__name__)


def discover_models(root: Path) -> list[dict]:
    """Models under ``root``: mesh files, or ShapeNet-style folders (``<class>/<id>/models/model_normalized.obj``).

    The class is the name of the folder above the model (``root``'s own name for top-level files); the id is the
    file stem or the folder name.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"--models: {root} is not a folder", {"field": "models", "path": str(root)})
    found: dict[Path, dict] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES:
            if p.name == "model_normalized.obj" and p.parent.name == "models":
                folder = p.parent.parent
                found[folder] = {"model_path": str(folder), "model_id": folder.name,
                                 "category": folder.parent.name if folder.parent != root else root.name}
            elif not any(parent in found for parent in p.parents):
                found[p] = {"model_path": str(p), "model_id": p.stem,
                            "category": p.parent.name if p.parent != root else root.name}
    if not found:
        raise BadInput(f"--models: no models ({', '.join(MODEL_SUFFIXES)}) under {root}",
                       {"field": "models", "path": str(root)})
    return list(found.values())


def _tasks(models: list[dict], out: Path, settings: SceneSettings) -> list[dict]:
    return [{**m, "out": str(out / m["category"] / m["model_id"]), "settings": settings} for m in models]


def write_manifest(out: Path, results: list[dict], settings: SceneSettings) -> Path:
    """``manifest.jsonl``: the kind's lines for every finished model plus one per failed model, sorted by class
    and model, with paths relative to ``out``."""
    lines = []
    for r in sorted(results, key=lambda r: (r["category"], r["model_id"])):
        if r["status"] != "ok":
            lines.append({"model_id": r["model_id"], "class": r["category"], "status": "failed", "error": r["error"]})
        else:
            lines.extend(settings.manifest_lines(r, f"{r['category']}/{r['model_id']}"))
    return write_bytes(out / "manifest.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())


def render_dataset(models_dir: Path, out: Path, settings: SceneSettings, workers: int = 1,
                   ray_address: str | None = None, on_result: Callable[[dict], None] | None = None) -> dict:
    """Render every model under ``models_dir``; returns counts ``{"ok", "skipped", "failed", "views"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads == 0 and workers > 1:  # share the cores instead of oversubscribing them
        settings = replace(settings, threads=max(1, mp.cpu_count() // workers))
    tasks = _tasks(discover_models(Path(models_dir)), out, settings)
    results = []
    for r in map_tasks(render_model, tasks, workers, ray_address):
        results.append(r)
        if on_result:
            on_result(r)
    write_manifest(out, results, settings)
    return {"ok": sum(r["status"] == "ok" and not r.get("skipped") for r in results),
            "skipped": sum(bool(r.get("skipped")) for r in results),
            "failed": sum(r["status"] != "ok" for r in results),
            "views": sum(len(r.get("views", [])) for r in results if r["status"] == "ok")}
