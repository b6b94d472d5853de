"""Per-step cost of each ``dreamcraft3d`` stage at real size (random weights of the real SD 2.1-base and Zero123-XL
UNet/VAE sizes, speed does not depend on the weights), and of BSD's DreamBooth phase.

    python benchmarks/bench_dreamcraft3d.py                      # CPU: several minutes, ~8 GB of memory
    python benchmarks/bench_dreamcraft3d.py --device cuda --full # + the full fine-tune step (~17 GB more)

Rows (median of ``--repeats`` after a warm-up when more than one; DreamCraft3D's cameras: distance 3.8, fovy 20):

- ``coarse gaussians``: render + backward of 20 000 Gaussians at 128 px plus the 128 px reference with depth;
- ``SD 2.1 SDS 512`` / ``Zero123-XL SDS 256``: one score-distillation step of each prior with the backward through
  the VAE encoder (a coarse guidance step is the Gaussians + both; a geometry step the DMTet row + both);
- ``geometry dmtet 128 @ S``: marching tets, normal-shaded render at S px and backward with normal consistency;
- ``texture BSD step``: a textured-mesh render at 512 px, the teacher's CFG pair and the estimator's epsilon, the
  BSD gradient through the VAE encoder, and the estimator's diffusion loss backward (a texture step);
- ``BSD DreamBooth step (LoRA)``: one teacher diffusion-loss step on a cached 512 px image (encode, forward,
  backward, AdamW);
- ``BSD augmentation``: SDEdit of a render by the frozen prior, 25 DDIM steps from strength 0.5 (one new cache
  image, every ``per_update_pretrain_step`` steps of the DreamBooth phase);
- ``BSD DreamBooth step (full)``: as LoRA with a float32 UNet copy (``--full`` only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_magic123 import bumpy_dmtet, gaussian_step, timed  # noqa: E402


def bench_coarse(device, repeats: int) -> list[tuple[str, float, str]]:
    from gen3d.backend.geometry.cameras import orbit_cameras

    cams = orbit_cameras(20.0, 40.0, 3.8, 20.0, 128, 128)
    ref = orbit_cameras(0.0, 0.0, 3.8, 20.0, 128, 128)
    return [("coarse gaussians 128 (+ reference with depth)", gaussian_step(device, repeats, cams, ref),
             "20000 Gaussians")]


def bench_geometry(device, repeats: int) -> list[tuple[str, float, str]]:
    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.pipelines.stages.dmtet_geometry import normal_consistency, render_dmtet
    from gen3d.backend.representations.dmtet import ColorVolume

    d, colors = bumpy_dmtet(128, device), ColorVolume(128).to(device)
    rows = []
    for size in (512, 1024):
        cams = orbit_cameras(15.0, 30.0, 3.8, 20.0, size, size).to(device)

        def step():
            out, v, f = render_dmtet(d, colors, cams, torch.ones(1, 3, device=device), normal_shading=True)
            (out.rgb.mean() + 10 * normal_consistency(v, f)).backward()
        rows.append((f"geometry dmtet 128 @ {size}: march + normals + backward", timed(step, repeats), ""))
    return rows


def bench_priors(device, repeats: int, root: Path, full: bool):
    """Yields its rows as they are measured (the slow ones)."""
    import numpy as np
    import trimesh
    from bench_dreamgaussian import write_real_size

    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior
    from gen3d.backend.guidance.priors.zero123 import Zero123Prior
    from gen3d.backend.pipelines.stages.bootstrapped_texture import BSDOptions, Personalisation
    from gen3d.backend.pipelines.stages.mesh_render import render_mesh
    from gen3d.backend.pipelines.stages.uv_unwrap import UnwrapConfig, uv_unwrap

    t = torch.tensor([400], device=device)
    z = Zero123Prior(write_real_size("zero123-xl", root), device=device)
    z.set_reference(torch.rand(1, 3, 256, 256), elevation=0.0, radius=3.8)
    zc = z.condition(torch.tensor([10.0]), torch.tensor([60.0]), 3.8)
    image = torch.rand(1, 3, 256, 256, device=device, requires_grad=True)
    yield ("Zero123-XL SDS 256 (CFG, + VAE-encoder backward)", timed(
        lambda: sum(v for k, v in z(image, zc, t).items() if k.startswith("loss_")).backward(), repeats), "")
    del z
    sd = StableDiffusionPrior(write_real_size("sd21-base", root), device=device)
    cams = orbit_cameras(torch.tensor([15.0]), torch.tensor([40.0]), 3.8, 20.0, 512, 512).to(device)
    cond = sd.condition("a hamburger", elevation=torch.tensor([15.0]), azimuth=torch.tensor([40.0]))
    image = torch.rand(1, 3, 512, 512, device=device, requires_grad=True)
    yield ("SD 2.1-base SDS 512 (CFG, + VAE-encoder backward)", timed(
        lambda: sum(v for k, v in sd(image, cond, t).items() if k.startswith("loss_")).backward(), repeats), "")

    sphere = trimesh.creation.icosphere(5, 0.5)
    mesh = uv_unwrap(np.asarray(sphere.vertices), np.asarray(sphere.faces), UnwrapConfig(resolution=1024)).to(device)
    texture = torch.nn.Parameter(torch.zeros(1024, 1024, 3, device=device))
    for mode in ("lora", "full") if full else ("lora",):
        bsd = Personalisation(sd, BSDOptions(personalise=mode), "a hamburger", "")
        if mode == "lora":
            def texture_step():
                out = render_mesh(mesh, cams, torch.ones(1, 3, device=device), texture=torch.sigmoid(texture))
                losses = sd(out.rgb.permute(0, 3, 1, 2), cond, t, bsd.bsd, cameras=cams.c2w)
                (0.01 * losses["loss_vsd"] + 0.1 * losses["loss_lora"]).backward()
            yield ("texture BSD step 512 (render, teacher CFG, estimator, backward)", timed(texture_step, repeats),
                   "")
            render = torch.rand(1, 3, 512, 512, device=device)
            gen = torch.Generator(device).manual_seed(0)
            yield ("BSD augmentation (SDEdit, 25 DDIM steps from strength 0.5)", timed(
                lambda: bsd.augment(render, cams.c2w, torch.tensor([15.0]), torch.tensor([40.0]), 0.5, gen), 1), "")
        else:
            bsd.cache.append((torch.rand(1, 3, 512, 512), cams.c2w.cpu(), torch.tensor([15.0]), torch.tensor([40.0])))
        n = sum(p.numel() for p in bsd.bsd.teacher_parameters(sd))
        yield (f"BSD DreamBooth step ({mode}) 512", timed(lambda: bsd.teacher_step(torch.Generator()), repeats),
               f"{n / 1e6:.1f} M trained parameters")
        bsd.remove()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--only", choices=["coarse", "geometry", "priors"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--full", action="store_true", help="also time the full fine-tune of a UNet copy")
    args = p.parse_args()

    from gen3d.backend.device import pick_device

    device = pick_device(args.device)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU threads'}), torch {torch.__version__}")
    root = Path(tempfile.mkdtemp(prefix="gen3d-bench-dc3-"))   # random real-size weights (GBs): removed at exit
    try:
        for name, fn in (("coarse", lambda: bench_coarse(device, args.repeats)),
                         ("geometry", lambda: bench_geometry(device, args.repeats)),
                         ("priors", lambda: bench_priors(device, args.repeats, root, args.full))):
            if args.only in (None, name):
                for row in fn():
                    print(f"{row[0]:<66} {row[1]:>9.3f} s   {row[2]}", flush=True)
                if device.type == "cuda":
                    print(f"  peak memory so far: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
