"""``python -m gen3d info``: versions, chosen device and which optional accelerators import."""

from __future__ import annotations

import importlib.util
import json


def accelerators() -> dict[str, bool]:
    """Which optional packages are importable (without importing heavy ones)."""
    return {name: importlib.util.find_spec(name) is not None for name in ("gsplat", "nvdiffrast", "bpy")}


def info() -> dict:
    from ..device import pick_device
    from ..pipelines.runner import versions

    return {"versions": versions(), "device": str(pick_device()), "accelerators": accelerators()}


def _run(args) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"Gen3D {data['versions']['gen3d']}  device: {data['device']}")
    for k, v in data["versions"].items():
        print(f"  {k:<13} {v}")
    for k, v in data["accelerators"].items():
        if k not in data["versions"]:  # an installed one is already listed with its version
            print(f"  {k:<13} {'available' if v else 'not installed'}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="versions, device and optional accelerators")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)
