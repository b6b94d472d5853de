"""Per-step cost of SyncDreamer's denoiser (UNet + volumes) at the published size, random weights.

    python benchmarks/bench_syncdreamer.py                      # CPU, 1 step, batch_view_num 8, CFG 2
    python benchmarks/bench_syncdreamer.py --device cuda --fp16 --steps 3 --batch-view-num 8

One step = the spatial volume from all 16 noisy views, then per chunk of ``batch_view_num`` views the frustum
volumes and the UNet on both CFG branches (``predict_noise``), then the DDIM update. Columns: volume (spatial volume
+ all 16 frusta, once), step (the whole step, best of ``--steps``), x50 (the published 50 steps, extrapolated),
peak memory (CPU: the process's maximum resident set, weights included; CUDA: ``max_memory_allocated``).
The VAE and CLIP run once per sample and are not timed. Speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen3d.backend.models.syncdreamer.model import SyncDreamer  # noqa: E402
from gen3d.backend.models.syncdreamer.sampler import ddim_schedule, ddim_step  # noqa: E402


def build(device: torch.device) -> SyncDreamer:
    """The published architecture with random weights (norm weights 1), built without a slow initialisation."""
    with torch.device("meta"):
        model = SyncDreamer()
    buffers = {k: v.clone() for k, v in model.named_buffers() if not v.is_meta}  # CLIP's position ids: unused
    model = model.to_empty(device=device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("first_stage_model.", "clip_image_encoder.")):
                continue  # not used by the denoiser
            is_norm = p.ndim == 1 and ("norm" in name or ".bn." in name or "proj_context.1" in name)
            p.copy_(torch.ones(p.shape) if is_norm and name.endswith("weight") else torch.randn(p.shape, generator=gen)
                    * 0.02)
        for name, b in buffers.items():
            model.get_buffer(name).copy_(b)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--batch-view-num", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA), as the method does")
    args = ap.parse_args()
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    model = build(dev)
    print(f"# built in {time.perf_counter() - t0:.1f} s on {dev}, torch threads {torch.get_num_threads()}", flush=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast("cuda", dtype=torch.float16) if args.fp16 and dev.type == "cuda" else \
        contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    inputs = {"clip": torch.randn(1, 1, 768, generator=gen).to(dev),
              "latent": torch.randn(1, 4, 32, 32, generator=gen).to(dev)}
    x = torch.randn(1, 16, 4, 32, 32, generator=gen).to(dev)
    elevation = torch.tensor([0.5], device=dev)
    sched = ddim_schedule(model.alphas_cumprod, 50, 1.0)
    with torch.no_grad(), autocast:
        t = torch.tensor([int(sched.timesteps[25])], device=dev)
        sync(dev)
        t0 = time.perf_counter()
        v_embed = torch.zeros(1, 16, 4, device=dev)
        t_embed = model.embed_time(t)
        volume = model.spatial_volume.spatial(x, t_embed, v_embed, model.poses, model.Ks)
        model.spatial_volume.frustum(volume, t_embed, v_embed, model.poses, model.Ks, torch.arange(16, device=dev),
                                     32)
        sync(dev)
        volume_s = time.perf_counter() - t0
        best = float("inf")
        for i in range(args.steps):
            sync(dev)
            t0 = time.perf_counter()
            eps = model.predict_noise(x, t, inputs, elevation, args.cfg, args.batch_view_num)
            x = ddim_step(x, eps.float(), sched, 25, gen)
            sync(dev)
            best = min(best, time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print("| device | batch_view_num | cfg | fp16 | volume s | step s | x50 s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {dev.type} | {args.batch_view_num} | {args.cfg} | {bool(args.fp16 and dev.type == 'cuda')} | "
          f"{volume_s:.2f} | {best:.2f} | {50 * best:.0f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
