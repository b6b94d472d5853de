"""``python -m gen3d methods``: the registered methods, their inputs and options."""

from __future__ import annotations

import json


def describe(name: str) -> dict:
    """The description of one method that ``/v1/methods`` serves too."""
    from ..pipelines import get

    p = get(name)
    schema = p.Options.model_json_schema()
    for option in p.Options.main:
        schema["properties"][option]["x-main"] = True
    return {"name": p.name, "title": p.title or p.name, "description": p.description, "inputs": p.inputs,
            "required_inputs": list(p.required_inputs), "options_schema": schema,
            "presets": p.Options.presets, "weights": list(p.weights)}


def weights_text(weights: list[dict]) -> str:
    """``triposr missing (python -m gen3d weights download triposr), sd15 tiny`` for a method's weights."""
    parts = []
    for w in weights:
        state = "unknown" if w["ready"] is None else "tiny (smoke-test)" if w["tiny"] else (
            "present" if w["ready"] else f"missing ({w['command']})" if w["command"] else "missing")
        parts.append(f"{w['name']} {state}")
    return ", ".join(parts) or "none needed"


def _run(args) -> int:
    from ..api.catalog import all_methods
    from ..pipelines.base import PRESETS

    data = all_methods()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for d in data:
        required = set(d["required_inputs"])
        inputs = [f"{r} (required)" if r in required else r for r in d["inputs"]]
        presets = [f"{p} ({', '.join(f'{k}={v}' for k, v in d['presets'][p].items())})" if d["presets"].get(p)
                   else p for p in PRESETS]
        print(f"{d['name']:<20} {d['title']}")
        print(f"{'':<20} inputs: {', '.join(inputs) or '-'}")
        print(f"{'':<20} weights: {weights_text(d['weights'])}")
        print(f"{'':<20} presets: {'; '.join(presets)}")
        print(f"{'':<20} options: {', '.join(d['options_schema'].get('properties', {})) or '-'}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list methods with their inputs and options")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
