"""Cost of one score-distillation step per prior, at real model sizes with random weights; plus a tiny-weights smoke run.

    python benchmarks/bench_guidance.py                   # best device; fp16 on CUDA, fp32 on CPU
    python benchmarks/bench_guidance.py --quick           # batch 1, 3 repetitions (use on CPU: real-size UNets are slow)
    python benchmarks/bench_guidance.py --smoke-only      # only: every prior on tiny weights on this device
    python benchmarks/bench_guidance.py --no-smoke --quick --models mvdream   # one real-size UNet

Real-size architectures (no download): the SD 2.1-base UNet (64^2 latents), the Zero123 UNet (8 input channels,
32^2 latents, config from tests/data/checkpoint_keys/zero123-unet.json), the MVDream multi-view UNet (4 views,
32^2 latents, the port's config) and SD's VAE. Columns:
  unet_cfg   the no-grad UNet call of one SDS step (conditional + unconditional, batch 2B)
  vae_fb     VAE encode forward + backward of the renders (what carries the gradient to the 3D representation)
  peak_mb    torch.cuda.max_memory_allocated over the row (CUDA only)
The smoke run loads every prior from tiny weights (written to a temporary folder) through the registry on the device
and checks that SDS / CSD / VSD / x0-reconstruction losses and their gradients are finite and refine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, reps):
    fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bench_real_size(device, dtype, batch, reps, models):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from gen3d.backend.models.mvdream_unet import MultiViewUNetModel

    keys = REPO / "tests" / "data" / "checkpoint_keys"
    zero123_cfg = json.loads((keys / "zero123-unet.json").read_text())["config"]
    mv_cfg = {k: v for k, v in json.loads((keys / "mvdream-sd21-4view-unet.json").read_text())["config"].items()
              if k != "use_checkpoint"}
    with torch.device(device):
        vae = AutoencoderKL(**SD_VAE).to(dtype).eval().requires_grad_(False)
    print(f"\nreal-size step costs on {device} ({dtype}), batch {batch}:")
    print(f"{'prior':<10} {'images':>6} {'px':>5} {'unet_cfg s':>11} {'vae_fb s':>9} {'peak_mb':>9}", flush=True)
    for name, build, latent, size, views in [
            ("sd21-base", lambda: UNet2DConditionModel(**SD21_UNET), 64, 512, 1),
            ("zero123", lambda: UNet2DConditionModel(**zero123_cfg), 32, 256, 1),
            ("mvdream", lambda: MultiViewUNetModel(**mv_cfg), 32, 256, 4)]:
        if name not in models:
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.device(device):
            unet = build().to(dtype).eval().requires_grad_(False)
        n = batch * views
        x = torch.randn(2 * n, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
        t = torch.full((2 * n,), 500, device=device)
        if name == "mvdream":
            ctx = torch.randn(2 * n, 77, 1024, device=device, dtype=dtype)
            cam = torch.randn(2 * n, 16, device=device, dtype=dtype)
            call = lambda: unet(x, t, ctx, cam, num_frames=4)  # noqa: E731
        else:
            ctx = torch.randn(2 * n, 77 if name == "sd21-base" else 1, unet.config.cross_attention_dim, device=device,
                              dtype=dtype)
            call = lambda: unet(x, t, encoder_hidden_states=ctx).sample  # noqa: E731
        with torch.no_grad():
            unet_s = _time(call, device, reps)
        renders = torch.rand(n, 3, size, size, device=device, dtype=dtype, requires_grad=True)
        vae_s = _time(lambda: vae.encode(renders * 2 - 1).latent_dist.sample().float().square().sum().backward(),
                      device, reps)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        print(f"{name:<10} {n:>6} {size:>5} {unet_s:>11.4f} {vae_s:>9.4f} {peak:>9.0f}", flush=True)
        del unet


def smoke(device):
    from gen3d.backend import weights
    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.guidance.distillation import CSD, SDS, VSD
    from gen3d.backend.guidance.priors.controlnet import ControlNetCanny, canny
    from gen3d.backend.guidance.priors.mvdream import MVDreamPrior
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior
    from gen3d.backend.guidance.priors.zero123 import Zero123Prior

    root = Path(tempfile.mkdtemp(prefix="gen3d-tiny-"))
    for name in ("sd21-base", "zero123-xl", "zero123-105000", "stable-zero123", "mvdream", "sd15",
                 "controlnet-canny-sd15"):
        weights.write_tiny(name, root)
    os.environ["GEN3D_WEIGHTS_DIR"] = str(root)

    def check(label, out, x):
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        loss.backward()
        ok = bool(torch.isfinite(loss)) and x.grad is not None and bool(torch.isfinite(x.grad).all())
        print(f"  {label:<28} {'ok' if ok else 'FAILED'}  loss {float(loss.detach()):.4g}")
        return ok

    results = []
    sd = StableDiffusionPrior.from_registry("sd21-base", device=device)
    print(f"smoke on {device}, prior dtype {sd.dtype}:")
    cond = sd.condition("a red car", "blurry", elevation=[0.0, 20.0], azimuth=[0.0, 120.0])
    t = torch.tensor([300, 600])
    x = torch.rand(2, 3, 64, 64, device=device, requires_grad=True)
    results.append(check("sd sds", sd(x, cond, t), x))
    x.grad = None
    results.append(check("sd csd", sd(x, cond, t, CSD(), progress=0.2), x))
    x.grad = None
    vsd = VSD(sd)
    cams = orbit_cameras(0.0, torch.tensor([0.0, 120.0]), 2.0, 40, 64, 64).c2w.to(device)
    results.append(check("sd vsd (lora fp32 on fp16)", sd(x, cond, t, vsd, cameras=cams), x))
    vsd.remove(sd)
    results.append(sd.refine(x.detach(), cond, 0.5, 4).isfinite().all().item())
    for name in ("zero123-xl", "zero123-105000", "stable-zero123"):
        z = Zero123Prior.from_registry(name, device=device)
        z.set_reference(torch.rand(1, 3, 64, 64, device=device), 0.0)
        x = torch.rand(2, 3, 64, 64, device=device, requires_grad=True)
        results.append(check(f"{name} sds", z(x, z.condition([10.0, -10.0], [90.0, 180.0]), t, SDS()), x))
    mv = MVDreamPrior.from_registry(device=device)
    mv_cams = orbit_cameras(15.0, torch.tensor([0.0, 90.0, 180.0, 270.0]), 2.0, 40, 64, 64).c2w.to(device)
    x = torch.rand(4, 3, 64, 64, device=device, requires_grad=True)
    out = mv(x, mv.condition("a corgi", "", mv_cams), torch.tensor([500]))
    results.append(check("mvdream x0-reconstruction", out, x))
    cn = ControlNetCanny.from_registry("sd15", device=device)
    img = cn.generate(canny(torch.rand(1, 3, 64, 64)).to(device), "a box", steps=2)
    results.append(bool(torch.isfinite(img).all()))
    print(f"  {'controlnet canny sd15':<28} {'ok' if results[-1] else 'FAILED'}")
    return all(results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke-only", action="store_true")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--models", default="sd21-base,zero123,mvdream", help="comma-separated real-size UNets to time")
    p.add_argument("--no-smoke", action="store_true", help="skip the tiny-weights smoke run")
    args = p.parse_args()
    from gen3d.backend.device import pick_device

    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    ok = True if args.no_smoke else smoke(device)
    if not args.smoke_only:
        bench_real_size(device, dtype, args.batch or (1 if args.quick else 4), 3 if args.quick else 10,
                        args.models.split(","))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
