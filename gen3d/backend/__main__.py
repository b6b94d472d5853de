"""The Gen3D command line: ``python -m gen3d COMMAND``.

Each command lives in ``gen3d/backend/commands/<name>.py`` with ``add_parser(subparsers)`` setting ``func``; only
commands listed in :data:`COMMANDS` (and so only commands that work) appear in ``--help``. Errors are
translated here, once: a :class:`~backend.errors.Gen3DError` prints one line and exits with its code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import Gen3DError

COMMANDS = ["info", "run", "methods", "dataset", "serve", "weights", "demo", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gen3d", description="Gen3D backend: 3D generation service and tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Gen3DError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
