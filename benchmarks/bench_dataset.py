"""Dataset rendering throughput: views per minute per worker (Cycles CPU and Workbench), and 1 -> 2 workers.

    .venv/bin/python benchmarks/bench_dataset.py [--size 512] [--views 4] [--models 2]

Renders Spot (gen3d/backend/data/spot) copied ``--models`` times, into a fresh folder per configuration.
:func:`print_table` is shared with ``bench_multiview.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from gen3d.backend.blender.dataset import render_dataset
from gen3d.backend.blender.render import RenderSettings, SceneSettings
from gen3d.backend.commands.demo import SPOT_DIR


def views_per_minute(settings: SceneSettings, workers: int, models: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models" / "cow"
        folder.mkdir(parents=True)
        for i in range(models):
            shutil.copy(SPOT_DIR / "spot_triangulated.obj", folder / f"spot{i}.obj")
        t0 = time.perf_counter()
        counts = render_dataset(folder.parent, Path(tmp) / "out", settings, workers=workers)
        dt = time.perf_counter() - t0
        assert counts["failed"] == 0
        return counts["views"] / dt * 60


def print_table(make_settings: Callable[[str], SceneSettings], models: int, header: str,
                engines: tuple[str, ...] = ("CYCLES", "WORKBENCH"), workers: tuple[int, ...] = (1, 2)) -> None:
    """Views/min for every engine and worker count; ``make_settings(engine)`` gives the settings."""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {header}")
    print(f"{'engine':<10} {'workers':>7} {'views/min':>10} {'per worker':>11} {'scaling':>8}")
    for engine in engines:
        base = None
        for n in workers:
            vpm = views_per_minute(make_settings(engine), n, models)
            base = base or vpm
            print(f"{engine:<10} {n:>7} {vpm:>10.1f} {vpm / n:>11.1f} {vpm / base:>7.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--geometry", action="store_true", help="include depth/normal ray casting")
    args = p.parse_args()
    print_table(lambda engine: RenderSettings(size=args.size, engine=engine, samples=args.samples, views=args.views,
                                              geometry_passes=args.geometry), args.models,
                f"{args.size}², {args.samples} Cycles samples, {args.models} models x {args.views} views, "
                f"geometry passes {args.geometry}")


if __name__ == "__main__":
    main()
