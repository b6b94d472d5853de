"""``python -m gen3d methods``: the registered methods, their inputs and options."""

from __future__ import annotations

import json


def describe(name: str) -> dict:
    """The description of one method that ``/v1/methods`` serves too."""
    from ..pipelines import get

    p = get(name)
    schema = p.Options.model_json_schema()
    return {"name": p.name, "title": p.title or p.name, "description": p.description, "inputs": p.inputs,
            "required_inputs": list(p.required_inputs), "options_schema": schema,
            "presets": p.Options.presets, "weights": list(p.weights)}


def _run(args) -> int:
    from ..pipelines import names

    data = [describe(n) for n in names()]
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for d in data:
        print(f"{d['name']:<20} {d['title']}")
        print(f"{'':<20} inputs: {', '.join(d['inputs']) or '-'}; options: "
              f"{', '.join(d['options_schema'].get('properties', {}))}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list methods with their inputs and options")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
