"""Dataset rendering throughput: views per minute per worker (Cycles CPU and Workbench), and 1 -> 2 workers.

    .venv/bin/python benchmarks/bench_dataset.py [--size 512] [--views 4] [--models 2]

Renders Spot (gen3d/backend/data/spot) copied ``--models`` times, into a fresh folder per configuration.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from gen3d.backend.blender.dataset import render_dataset
from gen3d.backend.blender.render import RenderSettings
from gen3d.backend.commands.demo import SPOT_DIR



def run(engine: str, workers: int, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models" / "cow"
        models.mkdir(parents=True)
        for i in range(args.models):
            shutil.copy(SPOT_DIR / "spot_triangulated.obj", models / f"spot{i}.obj")
        s = RenderSettings(size=args.size, engine=engine, samples=args.samples, views=args.views,
                           geometry_passes=args.geometry)
        t0 = time.perf_counter()
        counts = render_dataset(models.parent, Path(tmp) / "out", s, workers=workers)
        dt = time.perf_counter() - t0
        assert counts["failed"] == 0
        return counts["views"] / dt * 60


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--geometry", action="store_true", help="include depth/normal ray casting")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.size}², "
          f"{args.samples} Cycles samples, {args.models} models x {args.views} views, geometry passes {args.geometry}")
    print(f"{'engine':<10} {'workers':>7} {'views/min':>10} {'per worker':>11} {'scaling':>8}")
    for engine in ("CYCLES", "WORKBENCH"):
        base = None
        for workers in (1, 2):
            vpm = run(engine, workers, args)
            base = base or vpm
            print(f"{engine:<10} {workers:>7} {vpm:>10.1f} {vpm / workers:>11.1f} {vpm / base:>7.2f}x")


if __name__ == "__main__":
    main()
