"""Cost of MVDream's and ImageDream's two loops at real model size with random weights (no download).

    python benchmarks/bench_mvdream.py                      # both models, 2 timed steps each, best device
    python benchmarks/bench_mvdream.py --models mvdream --steps 1 --device cpu

Real-size architectures: the multi-view UNet with the port's config (tests/data/checkpoint_keys/
mvdream-sd21-4view-unet.json; ImageDream adds ``ip_dim`` 16), SD's VAE, the DDIM scheduler of the hub folders.
Rows per model:
  views_step  one step of the 4-view sampler: the CFG UNet call on 2 x 4 latents of 32² (ImageDream: 2 x 5 with
              the reference frame) plus the DDIM update (x 50 steps = one set of views, plus one VAE decode)
  decode      the VAE decode of the 4 views at 256² (once per set of views)
  sds_step    one multi-view SDS step of the 3D stage without the render: VAE encode of 4 renders at 256² with
              backward, the no-grad CFG UNet call, the x0-reconstruction loss (std rescale)
Text and image encoders are not timed (run once per job; their outputs are random here). fp16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def _time(fn, device, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def build_prior(name: str, device: torch.device, dtype: torch.dtype):
    """A real-size MVDream / ImageDream prior with random weights (the folder loading is skipped)."""
    from diffusers import AutoencoderKL, DDIMScheduler

    from gen3d.backend.guidance.priors.base import Condition, DiffusionPrior
    from gen3d.backend.guidance.priors.mvdream import ImageDreamPrior, MVDreamPrior
    from gen3d.backend.models.mvdream_unet import MultiViewUNetModel

    keys = json.loads((REPO / "tests/data/checkpoint_keys/mvdream-sd21-4view-unet.json").read_text())
    config = {k: v for k, v in keys["config"].items() if k != "use_checkpoint"}
    image = name == "imagedream"
    cls = ImageDreamPrior if image else MVDreamPrior
    prior = cls.__new__(cls)
    unet = MultiViewUNetModel(**config, ip_dim=16 if image else 0).to(dtype)
    DiffusionPrior.__init__(prior, AutoencoderKL(**SD_VAE).to(dtype), unet, DDIMScheduler(**SCHEDULER), device, dtype)
    prior.guidance_scale, prior.ip_mode = (5.0, "pixel") if image else (50.0, None)
    branch = {"context": torch.randn(4, 77, 1024), "camera": torch.randn(4, 16)}
    if image:
        branch.update(ip=torch.randn(4, 257, 1280), ip_img=torch.randn(4, 4, 32, 32))
    cond = Condition({"cond": branch, "negative": {k: torch.zeros_like(v) for k, v in branch.items()}})
    return prior, cond


def bench(name: str, device: torch.device, steps: int) -> dict:
    from diffusers import DDIMScheduler

    from gen3d.backend.guidance.distillation import X0Reconstruction

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    prior, cond = build_prior(name, device, dtype)
    sched = DDIMScheduler(**SCHEDULER)
    sched.set_timesteps(50, device=device)
    z = torch.randn(4, 4, 32, 32, device=device)
    t = sched.timesteps[10]

    @torch.no_grad()
    def views_step():
        eps = prior.predict_cfg(z, t.reshape(1).expand(4), cond, 7.5)
        sched.step(eps, t, z)

    renders = torch.rand(4, 3, 256, 256, device=device, requires_grad=True)
    loss_fn = X0Reconstruction(std_rescale=0.5)

    def sds_step():
        out = prior(renders, cond, torch.tensor([500], device=device), loss_fn)
        out["loss_sds"].backward()

    row = {"model": name, "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    views_step()  # warm-up
    row["views_step_s"] = _time(views_step, device, steps)
    with torch.no_grad():
        row["decode_s"] = _time(lambda: prior.decode(z), device, 1)
    row["sds_step_s"] = _time(sds_step, device, steps)
    row["views_50_steps_s"] = 50 * row["views_step_s"] + row["decode_s"]
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mvdream", "imagedream"], choices=["mvdream", "imagedream"])
    p.add_argument("--steps", type=int, default=2, help="timed repetitions of each step (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        rows.append(bench(name, torch.device(args.device), args.steps))
        print(f"{name:11s} {rows[-1]['device']:5s} {rows[-1]['dtype']:8s} views step {rows[-1]['views_step_s']:.2f} s"
              f"  (50 steps + decode ~ {rows[-1]['views_50_steps_s']:.0f} s)  decode {rows[-1]['decode_s']:.2f} s"
              f"  MV-SDS step {rows[-1]['sds_step_s']:.2f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
