"""``dataset multiview`` throughput: views per minute per engine (Cycles CPU, Workbench) and worker count.

    .venv/bin/python benchmarks/bench_multiview.py [--size 512] [--views 8] [--models 2] [--passes rgba,depth,normal,ccm]

Renders Spot copied ``--models`` times on a random orbit, into a fresh folder per configuration (the table
printer is ``bench_dataset.py``'s).
"""

from __future__ import annotations

import argparse

from bench_dataset import print_table

from gen3d.backend.blender.multiview import MultiviewSettings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--passes", default="rgba,depth,normal,ccm")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    passes = tuple(args.passes.split(","))
    print_table(lambda engine: MultiviewSettings(size=args.size, engine=engine, samples=args.samples, views=args.views,
                                                 passes=passes), args.models,
                f"{args.size}², {args.samples} Cycles samples, {args.models} models x {args.views} views, "
                f"passes {args.passes}", workers=tuple(args.workers))


if __name__ == "__main__":
    main()
