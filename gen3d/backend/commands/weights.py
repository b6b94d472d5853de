"""``python -m gen3d weights list|download NAME|verify [NAME]|path NAME|convert NAME FILE|tiny --dir DIR``: the
weights registry."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput


#: registry users that are not methods: the commands that load them
TOOLS = {"controlnet-dataset": "dataset generate"}


def listed(all_entries: bool = False) -> list[str]:
    """Entries that something here runs (a registered method or a tool); every entry with ``all_entries``."""
    from .. import weights
    from ..pipelines import names

    users = set(names()) | set(TOOLS)
    return sorted(n for n, e in weights.ENTRIES.items() if all_entries or users & set(e.methods))


def size_text(row: dict) -> str:
    """The published download size; for smoke-test weights the size on disk, marked as such."""
    from .. import weights

    if row["tiny"]:
        return f"{weights.folder_size(row['path']) / 1e6:.1f} MB on disk, smoke-test weights (real: {row['size_gb']:.2f} GB)"
    return f"{row['size_gb']:.2f} GB"


def _list(args) -> int:
    from .. import weights
    from ..pipelines import names

    rows = [weights.describe(n) for n in listed(args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    runs = set(names()) | set(TOOLS)
    for r in rows:
        users = [m for m in r["methods"] if m in runs] or r["methods"]
        print(f"{r['name']:<24} {r['status']:<8} {size_text(r)}  {r['repo']}")
        print(f"{'':<24} licence: {r['license']}; used by: {', '.join(users)}")
    return 0


def _download(args) -> int:
    from .. import weights

    from ..transfer import DownloadPrinter

    printer = DownloadPrinter(args.name)  # bytes and percent on stderr: a bar on a terminal, else plain lines
    try:
        path = weights.download(args.name, accept_license=args.accept_license, dest=args.dir, progress=printer)
    finally:
        printer.close()
    print(f"{args.name}: {path}")
    return 0


def _verify(args) -> int:
    from .. import weights

    names = [args.name] if args.name else listed()
    bad = 0
    for name in names:
        if not args.name and weights.status(name) == "missing":
            print(f"{name:<24} missing")
            continue
        problems = weights.verify(name)
        bad += bool(problems)
        tiny = " (smoke-test weights: tiny random models, not the real checkpoint)" if (
            not problems and weights.status(name) == "tiny") else ""
        print(f"{name:<24} {'ok' + tiny if not problems else '; '.join(problems)}")
    return 1 if bad else 0


def _path(args) -> int:
    from .. import weights

    print(weights.resolve(args.name))
    return 0


def _convert(args) -> int:
    from .. import weights
    from ..guidance.priors.imagedream_local import convert_local

    base = weights.resolve("imagedream", args.base)
    out = Path(args.dir) if args.dir else (weights.weights_dir() or Path("weights")) / args.name
    print(f"{args.name}: {convert_local(args.checkpoint, base, out)}")
    return 0


def _tiny(args) -> int:
    from .. import weights

    names = args.names or sorted(weights.ENTRIES)
    root = Path(args.dir)
    for name in names:
        out = weights.write_tiny(name, root)
        if out is None:
            if args.names:
                raise BadInput(f"{name} has no tiny factory yet", {"weights": name})
            print(f"{name:<24} skipped (no tiny factory)")
        else:
            print(f"{name:<24} {weights.folder_size(out) / 1e6:6.2f} MB  {out}")
    print(f"total {weights.folder_size(root) / 1e6:.1f} MB in {root}; use it with GEN3D_WEIGHTS_DIR={root.resolve()}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("weights", help="list, download, verify pretrained weights; write tiny smoke-test models")
    s = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = s.add_parser("list", help="the entries of the available methods with their status (present, missing, tiny)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--all", action="store_true", help="also entries of methods that are not available yet")
    q.set_defaults(func=_list)
    q = s.add_parser("download", help="fetch one entry from the Hugging Face hub (resumable)")
    q.add_argument("name")
    q.add_argument("--accept-license", action="store_true", help="accept a restrictive (e.g. non-commercial) licence")
    q.add_argument("--dir", help="target folder (default: $GEN3D_WEIGHTS_DIR/NAME, else the Hugging Face cache)")
    q.set_defaults(func=_download)
    q = s.add_parser("verify", help="check files of one or all present entries")
    q.add_argument("name", nargs="?")
    q.set_defaults(func=_verify)
    q = s.add_parser("path", help="print the folder an entry resolves to")
    q.add_argument("name")
    q.set_defaults(func=_path)
    q = s.add_parser("convert", help="turn an original checkpoint into the entry's folder (imagedream-local)")
    q.add_argument("name", choices=["imagedream-local"])
    q.add_argument("checkpoint", help="the original file (sd-v2.1-base-4view-ipmv-local.pt)")
    q.add_argument("--base", help="the imagedream folder to start from (default: the registry's)")
    q.add_argument("--dir", help="target folder (default: $GEN3D_WEIGHTS_DIR/NAME, else ./weights/NAME)")
    q.set_defaults(func=_convert)
    q = s.add_parser("tiny", help="write tiny random models in the real layouts (smoke tests, no download)")
    q.add_argument("--dir", required=True, help="output folder; then set GEN3D_WEIGHTS_DIR to it")
    q.add_argument("names", nargs="*", help="entries to write (default: all that have a tiny factory)")
    q.set_defaults(func=_tiny)
