"""Per-step wall time of ``texture`` on Spot (gen3d/backend/data/spot, 5 856 faces, its own UVs) at a 1024² texture.

    python benchmarks/bench_texture.py                        # prompt (SD 2.1) and reference image (Zero123)
    python benchmarks/bench_texture.py --quick                # 3 refinement steps, extrapolated to 50
    python benchmarks/bench_texture.py --modes text --prior mvdream --device cuda

Modes: ``text`` (prompt "a cow with brown spots", initial texture = Spot's own), ``image`` (a reference image of
Spot rendered from a camera off to the front-left, Spot's texture dropped so the initial texture is the
reference's projection). Weights: the registry's real checkpoints when found, else random weights of the real
UNet/VAE (``bench_dreamgaussian.write_real_size``); speed does not depend on the weights.
Columns: each stage of meta.json; for ``refine`` also seconds per step (mean, min, max over the steps after the
first, from the progress callback); with --quick the stage is extrapolated to the preset's step count as the first
step (warm-up included) plus the mean of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

def spot_inputs(work: Path) -> dict[str, Path | dict]:
    """``spot.glb`` (textured), ``spot_plain.glb`` (UVs, no texture), ``reference.png`` and its wire camera."""
    from gen3d.backend.commands.demo import spot_mesh
    from gen3d.backend.geometry.cameras import look_at
    from gen3d.backend.pipelines.stages.mesh_render import render_mesh
    from gen3d.backend.representations.mesh import save_glb

    mesh = spot_mesh()
    save_glb(mesh, work / "spot.glb")
    save_glb(replace(mesh, texture=None), work / "spot_plain.glb")
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    centre = (lo + hi) / 2
    eye = centre + torch.tensor([-1.2, 2.2, 0.8]) * float((hi - lo).norm())   # Spot faces +Y
    W, H = 640, 480
    K = torch.tensor([[700.0, 0, W / 2], [0, 700.0, H / 2], [0, 0, 1]])
    from gen3d.backend.geometry.cameras import Cameras

    cam = Cameras(K, look_at(eye[None], centre[None]), W, H)
    with torch.no_grad():
        r = render_mesh(mesh, cam, torch.ones(1, 3))
    rgba = torch.cat([r.rgb[0], r.alpha[0]], -1).clamp(0, 1).numpy()
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8)).save(work / "reference.png")
    return {"textured": work / "spot.glb", "plain": work / "spot_plain.glb", "image": work / "reference.png",
            "camera": {**cam.to_wire()[0], "role": "reference"}}


def run(mode: str, inputs: dict, prior: str, device, preset: str, steps: int | None, out: Path) -> dict:
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job

    options = {"prior": prior, "texture_size": 1024}
    if steps is not None:
        options["iters_refine"] = steps
    if mode == "text":
        request = JobRequest(method="texture", prompt="a cow with brown spots", preset=preset, options=options,
                             files={"mesh": str(inputs["textured"])})
    else:
        request = JobRequest(method="texture", preset=preset, options=options, cameras=[inputs["camera"]],
                             files={"mesh": str(inputs["plain"]), "image": str(inputs["image"])})
    stamps: list[float] = []

    def progress(stage, step, total, preview=None):
        if stage == "refine":
            stamps.append(time.perf_counter())

    ctx = RunContext(out_dir=out, device=device, progress_fn=progress)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_job(request, ctx)
    meta = json.loads((out / "meta.json").read_text())
    meta["wall"] = time.perf_counter() - t0
    meta["step_times"] = np.diff(stamps).tolist()
    meta["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return meta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", nargs="+", default=["text", "image"], choices=["text", "image"])
    p.add_argument("--prior", help="text prior (sd21-base, mvdream) for the text mode")
    p.add_argument("--preset", default="standard", choices=["fast", "standard", "high"])
    p.add_argument("--quick", action="store_true", help="3 refinement steps, extrapolated to the preset's count")
    p.add_argument("--tiny", action="store_true", help="tiny random priors (checks the script, not the speed)")
    args = p.parse_args()

    from bench_dreamgaussian import write_real_size

    from gen3d.backend import weights
    from gen3d.backend.device import pick_device
    from gen3d.backend.pipelines import get

    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="gen3d-bench-texture-"))
    inputs = spot_inputs(work)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU threads'}), torch {torch.__version__}")
    user_dir = os.environ.get(weights.WEIGHTS_DIR_ENV)
    opts = get("texture").Options.resolve(args.preset, {})
    for mode in args.modes:
        if user_dir is not None:
            os.environ[weights.WEIGHTS_DIR_ENV] = user_dir
        prior = "zero123-xl" if mode == "image" else (args.prior or "sd21-base")
        path = weights.find(prior)
        if args.tiny:
            path = weights.write_tiny(prior, work / "weights")
            os.environ[weights.WEIGHTS_DIR_ENV] = str(work / "weights")
            kind = "tiny"
        elif path is None or weights.is_tiny(path):
            t0 = time.perf_counter()
            path = write_real_size(prior, work / "weights")
            print(f"{prior}: real weights absent; random weights of the real UNet/VAE written in "
                  f"{time.perf_counter() - t0:.0f} s")
            os.environ[weights.WEIGHTS_DIR_ENV] = str(work / "weights")
            kind = "random (real-size UNet/VAE)"
        else:
            kind = f"real ({path})"
        steps = 3 if args.quick else None
        meta = run(mode, inputs, prior, device, args.preset, steps, work / mode)
        n_run, n_full = steps or opts.iters_refine, opts.iters_refine
        print(f"\ntexture, {mode} (prior {prior}, {kind} weights, preset {args.preset}, texture 1024², refine "
              f"{opts.refine_size} px{', quick: refine extrapolated' if args.quick else ''}) on {device}:")
        print(f"{'step':<14} {'seconds':>9}")
        total = 0.0
        st = meta["step_times"]
        for stage, seconds in meta["timings"].items():
            if stage == "total":
                continue
            full = seconds
            if stage == "refine" and st and n_full > n_run:   # the first step (warm-up) + the mean of the others
                full = seconds - sum(st) + np.mean(st) * (n_full - 1)
            total += full
            print(f"{stage:<14} {full:>9.2f}")
        if st:
            print(f"{'refine / step':<14} {np.mean(st):>9.3f}   (min {min(st):.3f}, max {max(st):.3f}, over the "
                  f"{len(st)} steps after the first)")
        print(f"{'total':<14} {total:>9.2f}   (measured wall {meta['wall']:.1f} s, peak GPU memory "
              f"{meta['peak_mb']:.0f} MB, init {meta.get('init')}, uv {meta.get('uv_source')}, "
              f"{meta['metrics'].get('faces')} faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
