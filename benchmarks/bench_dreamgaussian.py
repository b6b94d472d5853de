"""Per-stage wall time of ``dreamgaussian`` (image) and ``dreamgaussian-text`` at the real-size configuration.

    python benchmarks/bench_dreamgaussian.py                  # both methods, 'standard' (DreamGaussian's numbers)
    python benchmarks/bench_dreamgaussian.py --quick          # 10 + 2 iterations, times extrapolated to 500 + 50
    python benchmarks/bench_dreamgaussian.py --methods dreamgaussian --prior stable-zero123 --device cuda

Weights: the registry's real checkpoints when it finds them (``$GEN3D_WEIGHTS_DIR`` or the Hugging Face cache);
otherwise random weights of the real architectures (the SD/Zero123 UNet and SD VAE at full size, written once to a
temporary folder in the registry's layout; the CLIP encoders stay small, since they run once per job). Speed does not
depend on the weights, except the mesh stage, whose cost grows with the surface the Gaussians form.
The input is a synthetic RGBA object (two coloured spheres, rendered analytically); the prompt is "a red car".
Columns: one row per stage as recorded in meta.json (load, preprocess, gaussians, mesh, uv_unwrap, bake, refine,
export), plus s/iter for the two optimisation stages. With --quick the optimisation stages are extrapolated linearly
to the full iteration counts (the progressive 128/256/512 resolution keeps its proportions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = REPO / "tests" / "data" / "checkpoint_keys"
SD21_UNET = dict(sample_size=64, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)


def write_real_size(name: str, root: Path) -> Path:
    """Random weights of ``name``'s real UNet and VAE, in the registry's layout (the tiny factory's files, with the
    tiny builders swapped for full-size ones); the folder carries the tiny marker, as it is not a real model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from gen3d.backend import weights
    from gen3d.backend.guidance import tiny
    from gen3d.backend.models import mvdream_unet

    zero123 = json.loads((KEYS / "zero123-unet.json").read_text())["config"]
    mv = {k: v for k, v in json.loads((KEYS / "mvdream-sd21-4view-unet.json").read_text())["config"].items()
          if k != "use_checkpoint"}
    saved = tiny.WIDTH, tiny._vae, tiny._unet, mvdream_unet.MultiViewUNetModel
    real_mv = mvdream_unet.MultiViewUNetModel
    try:
        tiny.WIDTH = 768 if "zero123" in name else 1024            # the UNet's cross-attention width
        tiny._vae = lambda: AutoencoderKL(**SD_VAE)
        tiny._unet = lambda layout, in_channels=4: (UNet2DConditionModel(**zero123) if in_channels == 8
                                                    else UNet2DConditionModel(in_channels=in_channels, **SD21_UNET))
        mvdream_unet.MultiViewUNetModel = lambda **_: real_mv(**mv)
        return weights.write_tiny(name, root)
    finally:
        tiny.WIDTH, tiny._vae, tiny._unet, mvdream_unet.MultiViewUNetModel = saved


def synthetic_rgba(path: Path, size: int = 512) -> Path:
    """Two shaded spheres (orange body, blue head) on a transparent background."""
    from PIL import Image

    yy, xx = (np.mgrid[:size, :size] + 0.5) / size * 2 - 1
    rgba = np.zeros((size, size, 4), np.float32)
    for cx, cy, r, colour in ((0.0, 0.2, 0.45, (0.9, 0.5, 0.2)), (0.0, -0.45, 0.25, (0.2, 0.4, 0.9))):
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = d2 < r * r
        shade = np.sqrt(np.clip(1 - d2 / (r * r), 0, 1))[..., None]
        rgba[inside, :3] = (np.array(colour) * (0.3 + 0.7 * shade))[inside]
        rgba[inside, 3] = 1
    Image.fromarray((rgba * 255).astype(np.uint8)).save(path)
    return path


def run(method: str, prior: str, device, preset: str, iters: int | None, iters_refine: int | None, out: Path,
        image: Path) -> dict:
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job

    options = {"prior": prior}
    if iters is not None:
        options.update(iters=iters, iters_refine=iters_refine)
    request = JobRequest(method=method, preset=preset, seed=0, options=options,
                         files={"image": str(image)} if method == "dreamgaussian" else {},
                         prompt=None if method == "dreamgaussian" else "a red car")
    ctx = RunContext(out_dir=out, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_job(request, ctx)
    meta = json.loads((out / "meta.json").read_text())
    meta["wall"] = time.perf_counter() - t0
    meta["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return meta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", nargs="+", default=["dreamgaussian", "dreamgaussian-text"])
    p.add_argument("--prior", help="image prior (zero123-xl, stable-zero123) or text prior (sd21-base, mvdream)")
    p.add_argument("--preset", default="standard", choices=["fast", "standard", "high"])
    p.add_argument("--quick", action="store_true", help="10 + 2 iterations, extrapolated to the preset's counts")
    args = p.parse_args()

    from gen3d.backend import weights
    from gen3d.backend.device import pick_device
    from gen3d.backend.pipelines import get

    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="gen3d-bench-dg-"))
    image = synthetic_rgba(work / "input.png")
    random_root = work / "weights"
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU threads'}), torch {torch.__version__}")
    user_dir = os.environ.get(weights.WEIGHTS_DIR_ENV)
    for method in args.methods:
        if user_dir is not None:  # look for real weights where the user keeps them, for every method
            os.environ[weights.WEIGHTS_DIR_ENV] = user_dir
        prior = args.prior if args.prior and (method == "dreamgaussian") == ("zero123" in args.prior) else (
            "zero123-xl" if method == "dreamgaussian" else "sd21-base")
        path = weights.find(prior)
        if path is None or weights.is_tiny(path):
            t0 = time.perf_counter()
            path = write_real_size(prior, random_root)
            print(f"{prior}: real weights absent; random weights of the real UNet/VAE written in "
                  f"{time.perf_counter() - t0:.0f} s")
            os.environ[weights.WEIGHTS_DIR_ENV] = str(random_root)
            kind = "random (real-size UNet/VAE)"
        else:
            kind = f"real ({path})"
        opts = get(method).Options.resolve(args.preset, {})
        iters, refine = (10, 2) if args.quick else (None, None)
        meta = run(method, prior, device, args.preset, iters, refine, work / method, image)
        timings = meta["timings"]
        print(f"\n{method} (prior {prior}, {kind} weights, preset {args.preset}"
              f"{', quick: extrapolated' if args.quick else ''}) on {device}:")
        print(f"{'stage':<12} {'seconds':>9} {'s/iter':>8}")
        total = 0.0
        for stage, seconds in timings.items():
            if stage == "total":
                continue
            n_run, n_full = {"gaussians": (iters or opts.iters, opts.iters),
                             "refine": (refine or opts.iters_refine, opts.iters_refine)}.get(stage, (None, None))
            per = seconds / n_run if n_run else None
            full = per * n_full if per is not None else seconds
            total += full
            print(f"{stage:<12} {full:>9.2f} {per if per is not None else float('nan'):>8.3f}")
        print(f"{'total':<12} {total:>9.2f}   (measured wall {meta['wall']:.1f} s, peak GPU memory "
              f"{meta['peak_mb']:.0f} MB, {meta['metrics'].get('gaussians', '?')} Gaussians, "
              f"{meta['metrics'].get('faces', '?')} faces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
