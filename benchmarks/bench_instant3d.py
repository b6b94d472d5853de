"""Speed of Instant3D per asset at real size with random weights: grid sampling and sparse-view reconstruction.

    python benchmarks/bench_instant3d.py --quick        # SD 2.1-base grid at 512, 1 step; InstantMesh base; 128^3
    python benchmarks/bench_instant3d.py --steps 30 --recon base large --grid 256 --device cuda
    python benchmarks/bench_instant3d.py --skip-grid --recon --zero123plus   # one Zero123++ step only

Real-size architectures, no download: SD 2.1-base (UNet, VAE, the OpenCLIP-H text encoder; a character tokenizer)
sampled by :class:`GridGenerator` from the blob initialisation with CFG (one Euler step by default), and InstantMesh's
NeRF reconstructor (base / large) on the four grid views at 320 pixels. Columns:
  grid_s     blob encode + steps x (UNet cond + uncond) + VAE decode of one grid
  recon_s    four views -> triplane (encoder + transformer + upsampler)
  density_s  density on grid^3 (the marching-cubes input), mcubes_s PyMCubes at the model's level
  step_s     one Zero123++ v1.2 denoising step (image front): reference pass on the 64x64 condition latent + main
             pass on the 120x80 latent of the 960x640 view image, CFG batch 2, SD-2 UNet, Euler ancestral update
Random weights give noise, so the marching-cubes time is a lower bound (little surface); GPU numbers come from the
same script with --device cuda.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gen3d.backend.device import pick_device  # noqa: E402
from gen3d.backend.models.instant3d.grid import GridGenerator, grid_cameras  # noqa: E402
from gen3d.backend.models.instant3d.reconstructor import (INSTANTMESH_CONFIGS, SparseViewLRM,  # noqa: E402
                                                          encode_cameras, from_instantmesh_config)

SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
OPENCLIP_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                       projection_dim=512, hidden_act="gelu", max_position_embeddings=77)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def sd21_pipeline(device, dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from gen3d.backend.guidance.tiny import write_tokenizer

    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    write_tokenizer(folder, pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **OPENCLIP_H_TEXT))
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**SD_VAE), text_encoder=text, tokenizer=tokenizer,
                                   unet=UNet2DConditionModel(**SD21_UNET), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device, dtype)


def bench_grid(device, dtype, size: int, steps: int):
    gen = GridGenerator(sd21_pipeline(device, dtype))
    gen("warm up", 64, 1)  # first-call overheads at a tiny size
    sync(device)
    t = time.perf_counter()
    gen("a wooden chair", size, steps, seed=0)
    sync(device)
    total = time.perf_counter() - t
    print(f"grid  sd21-base {size}px  steps {steps}  grid_s {total:.2f}", flush=True)


def bench_zero123plus_step(device, dtype):
    from diffusers import EulerAncestralDiscreteScheduler, UNet2DConditionModel

    from gen3d.backend.models.zero123plus import ReferenceUNet

    unet = ReferenceUNet(UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval())
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                            prediction_type="v_prediction", timestep_spacing="trailing")
    sched.set_timesteps(28)
    t = sched.timesteps[0]
    x, ref = torch.randn(1, 4, 120, 80, device=device), torch.randn(2, 4, 64, 64, device=device)
    ctx = torch.randn(2, 77, 1024, device=device, dtype=dtype)
    with torch.no_grad():
        unet(torch.randn(2, 4, 16, 16, device=device, dtype=dtype), t, ctx, ref[..., :8, :8].to(dtype))  # warm up
        sync(device)
        start = time.perf_counter()
        pred = unet(sched.scale_model_input(torch.cat([x, x]), t).to(dtype), t, ctx, ref.to(dtype)).float()
        uncond, cond = pred.chunk(2)
        sched.step(uncond + 4.0 * (cond - uncond), t, x)
        sync(device)
    print(f"zero123plus-v1.2 UNet (SD-2, random)  960x640 + 512 reference  step_s {time.perf_counter() - start:.2f}",
          flush=True)


def random_reconstructor(size: str, device) -> SparseViewLRM:
    with torch.device("meta"):
        model = SparseViewLRM(from_instantmesh_config(INSTANTMESH_CONFIGS[size]))
    model = model.to_empty(device=device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.ones(p.shape) if name.endswith("norm.weight") else torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(value)
    return model.eval()


def bench_recon(device, size: str, views: int, grid: int):
    import mcubes

    model = random_reconstructor(size, device)
    S = model.cfg.image_size
    images = torch.rand(1, views, 3, S, S, device=device)
    cams = encode_cameras(grid_cameras(S))[None, :views].to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        sync(device)
        t = time.perf_counter()
        planes = model.forward_planes(images, cams).float()
        sync(device)
        recon = time.perf_counter() - t
        field = model.field(planes[0])
        t = time.perf_counter()
        density = field.density_grid(grid)
        sync(device)
        dens = time.perf_counter() - t
    t = time.perf_counter()
    mcubes.marching_cubes(density, model.cfg.mesh_level)
    mc = time.perf_counter() - t
    print(f"recon instantmesh-nerf-{size}  {views} views @{S}px  recon_s {recon:.2f}  density_s ({grid}^3) {dens:.2f}  "
          f"mcubes_s {mc:.2f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="1 step, base only, 128^3 density grid")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--grid", type=int, default=512, help="grid image side (SD 2.1-base: 512)")
    ap.add_argument("--recon", nargs="*", default=["base", "large"], choices=["base", "large"])
    ap.add_argument("--mesh", type=int, default=256, help="marching-cubes grid (InstantMesh: 256)")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--zero123plus", action="store_true", help="also time one Zero123++ denoising step")
    args = ap.parse_args()
    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.quick:
        args.steps, args.recon, args.mesh = 1, ["base"], 128
    print(f"# {device} ({dtype}), torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    if not args.skip_grid:
        bench_grid(device, dtype, args.grid, args.steps)
    for size in args.recon:
        bench_recon(device, size, 4, args.mesh)
    if args.zero123plus:
        bench_zero123plus_step(device, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
