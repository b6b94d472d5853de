"""``python -m gen3d weights list|download NAME|verify [NAME]|path NAME|tiny --dir DIR``: the weights registry."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput


def _list(args) -> int:
    from .. import weights

    rows = [weights.describe(n) for n in sorted(weights.ENTRIES)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        flag = " (smoke-test weights)" if r["tiny"] else ""
        print(f"{r['name']:<24} {r['status']:<8} {r['size_gb']:>5.2f} GB  {r['repo']}{flag}")
        print(f"{'':<24} licence: {r['license']}; used by: {', '.join(r['methods'])}")
    return 0


def _download(args) -> int:
    from .. import weights

    path = weights.download(args.name, accept_license=args.accept_license, dest=args.dir)
    print(f"{args.name}: {path}")
    return 0


def _verify(args) -> int:
    from .. import weights

    names = [args.name] if args.name else sorted(weights.ENTRIES)
    bad = 0
    for name in names:
        if not args.name and weights.status(name) == "missing":
            print(f"{name:<24} missing")
            continue
        problems = weights.verify(name)
        bad += bool(problems)
        print(f"{name:<24} {'ok' if not problems else '; '.join(problems)}")
    return 1 if bad else 0


def _path(args) -> int:
    from .. import weights

    print(weights.resolve(args.name))
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
    q = s.add_parser("list", help="every registry entry with its status (present, missing, tiny)")
    q.add_argument("--json", action="store_true")
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
    q = s.add_parser("tiny", help="write tiny random models in the real layouts (smoke tests, no download)")
    q.add_argument("--dir", required=True, help="output folder; then set GEN3D_WEIGHTS_DIR to it")
    q.add_argument("names", nargs="*", help="entries to write (default: all that have a tiny factory)")
    q.set_defaults(func=_tiny)
