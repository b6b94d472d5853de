"""Per-iteration cost of each ``magic123`` stage at real size, and DMTet marching + rasterization at tet grid 128
and 256.

    python benchmarks/bench_magic123.py                 # everything (CPU: a few minutes, ~8 GB of memory)
    python benchmarks/bench_magic123.py --only dmtet    # DMTet marching + rasterization only
    python benchmarks/bench_magic123.py --device cuda

Weights: the registry's real checkpoints when found, else random weights of the real UNet/VAE sizes (written once
to a temporary folder by ``bench_dreamgaussian.write_real_size``; SD 1.5 is timed with the SD 2.1 UNet, whose
convolutions and attention have the same sizes, only the text width differs: 1024 vs 768). Speed does not depend on
the weights. Each row is the median of ``--repeats`` timed iterations (after a warm-up when more than one):

- ``textual inversion``: one step (VAE encode at 512, text encoder and UNet forward + backward to the new row);
- ``SD SDS 512`` / ``Zero123 SDS 256``: one score-distillation step of each prior, including the backward through the
  VAE encoder to the image (what a coarse or fine step adds per prior);
- ``gaussians 128``: render + backward of the coarse Gaussians (20 000) at Magic123's 128 px;
- ``fit Spot's SDF``: initialisation of a DMTet from Spot (inside test, distance transform, 30 fitting steps) and the
  Chamfer distance of the result to Spot;
- ``dmtet R @ S``: extract the surface (marching tets) of a bumpy sphere on an R grid, render it at S px through
  ``gen3d.kernels.mesh`` and back-propagate to the SDF/deformation/colour grids (the fine stage's own cost).

A coarse iteration is ``gaussians + SD + Zero123`` (reference-only steps are cheaper); a fine one ``dmtet + SD +
Zero123`` plus the regularisers (included in the dmtet row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up when ``repeats > 1``."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bumpy_dmtet(resolution: int, device) -> "object":
    from gen3d.backend.representations.dmtet import DMTet

    d = DMTet(resolution).to(device)
    with torch.no_grad():
        p = d.lattice()
        r = p.norm(dim=-1)
        d.sdf.copy_(r - 0.6 - 0.04 * torch.sin(12 * p[..., 0]) * torch.sin(12 * p[..., 1]) * torch.sin(12 * p[..., 2]))
    return d


def bench_dmtet(device, repeats: int) -> list[tuple[str, float, str]]:
    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.pipelines.stages.dmtet_geometry import laplacian_smoothness, normal_consistency, render_dmtet
    from gen3d.backend.representations.dmtet import ColorVolume

    rows = []
    for res in (128, 256):
        d = bumpy_dmtet(res, device)
        colors = ColorVolume(128).to(device)
        verts, faces = d.surface()
        rows.append((f"dmtet {res}: marching tets", timed(lambda: d.surface(), repeats),
                     f"{len(verts)} vertices, {len(faces)} faces"))
        for size in (512, 1024):
            cams = orbit_cameras(15.0, 30.0, 1.8, 40.0, size, size).to(device)

            def step():
                out, v, f = render_dmtet(d, colors, cams, torch.ones(1, 3, device=device))
                loss = out.rgb.mean() + 0.1 * normal_consistency(v, f) + 0.1 * laplacian_smoothness(v, f)
                loss.backward()
            rows.append((f"dmtet {res} @ {size}: march + render + backward", timed(step, repeats), ""))
        del d, colors
    return rows


def bench_spot_fit(device, steps: int = 30) -> list[tuple[str, float, str]]:
    """Chamfer distance (mean of both directions, 200 000 surface samples each) between Spot and the DMTet fitted to
    its SDF, as % of Spot's bounding-box diagonal, per grid resolution."""
    import numpy as np
    import trimesh
    from scipy.spatial import cKDTree

    from gen3d.backend.pipelines.stages.dmtet_geometry import dmtet_from_mesh

    spot = trimesh.load(REPO / "gen3d/backend/data/spot/spot_triangulated.obj", force="mesh", process=False)
    spot.merge_vertices(merge_tex=True, merge_norm=True)
    v = spot.vertices - spot.bounds.mean(0)
    diag = float(np.linalg.norm(spot.bounds[1] - spot.bounds[0]))
    b = trimesh.sample.sample_surface(trimesh.Trimesh(v, spot.faces), 200_000, seed=1)[0]
    rows = []
    for res in (32, 64, 128):
        t0 = time.perf_counter()
        d = dmtet_from_mesh(v, spot.faces, res, steps, device)
        seconds = time.perf_counter() - t0
        sv, sf = d.surface()
        a = trimesh.sample.sample_surface(trimesh.Trimesh(sv.detach().cpu().numpy(), sf.cpu().numpy()), 200_000,
                                          seed=0)[0]
        chamfer = (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2
        rows.append((f"fit Spot's SDF, grid {res}, {steps} steps", seconds,
                     f"Chamfer {100 * chamfer / diag:.3f} % of the diagonal, {len(sf)} faces"))
    return rows


def bench_priors(device, repeats: int, root: Path) -> list[tuple[str, float, str]]:
    from bench_dreamgaussian import write_real_size

    from gen3d.backend import weights
    from gen3d.backend.guidance.priors.sd import StableDiffusionPrior
    from gen3d.backend.guidance.priors.zero123 import Zero123Prior
    from gen3d.backend.pipelines import RunContext
    from gen3d.backend.pipelines.stages.textual_inversion import TextualInversionConfig, learn_token

    rows = []

    def folder(name):
        path = weights.find(name)
        return path if path is not None and not weights.is_tiny(path) else write_real_size(name, root)

    sd = StableDiffusionPrior(folder("sd15"), device=device)
    t = torch.tensor([400], device=device)
    cond = sd.condition("a red car", batch_size=1)
    image = torch.rand(1, 3, 512, 512, device=device, requires_grad=True)
    rows.append(("SD SDS 512 (CFG, + VAE-encoder backward)", timed(
        lambda: sum(v for k, v in sd(image, cond, t).items() if k.startswith("loss_")).backward(), repeats), ""))
    ctx = RunContext(out_dir=root)
    rgba = torch.rand(1, 4, 192, 192)
    t0 = time.perf_counter()
    learn_token(sd, rgba, TextualInversionConfig(steps=1 + repeats), torch.Generator(), ctx)
    rows.append(("textual inversion step (approx.: includes one warm-up)", (time.perf_counter() - t0) / (1 + repeats),
                 ""))
    del sd
    z = Zero123Prior(folder("zero123-105000"), device=device)
    z.set_reference(torch.rand(1, 3, 256, 256), elevation=0.0, radius=1.8)
    zc = z.condition(torch.tensor([10.0]), torch.tensor([60.0]), 1.8)
    image = torch.rand(1, 3, 256, 256, device=device, requires_grad=True)
    rows.append(("Zero123 SDS 256 (CFG, + VAE-encoder backward)", timed(
        lambda: sum(v for k, v in z(image, zc, t).items() if k.startswith("loss_")).backward(), repeats), ""))
    return rows


def gaussian_step(device, repeats: int, cams, ref) -> float:
    """Seconds per render + backward of 20k ball Gaussians at ``cams`` plus the reference view ``ref`` with depth
    (a coarse-stage step)."""
    from gen3d.backend.pipelines.stages.distill_gaussians import ball_gaussians
    from gen3d.backend.pipelines.stages.fit_gaussians import render_gaussians

    g = ball_gaussians(20_000, 0.5, torch.Generator().manual_seed(0)).to(device)
    for name in ("means", "log_scales", "opacity_logits", "sh"):
        getattr(g, name).requires_grad_(True)
    cams, ref = cams.to(device), ref.to(device)

    def step():
        rgb, _, _ = render_gaussians(g, cams, torch.ones(1, 3, device=device))
        rgbd, a, _ = render_gaussians(g, ref, torch.ones(1, 3, device=device), render_mode="RGB+ED")
        (rgb.mean() + rgbd.mean() + a.mean()).backward()
    return timed(step, repeats)


def bench_gaussians(device, repeats: int) -> list[tuple[str, float, str]]:
    from gen3d.backend.geometry.cameras import orbit_cameras

    cams = orbit_cameras(0.0, 40.0, 1.8, 40.0, 128, 128)
    ref = orbit_cameras(0.0, 0.0, 1.8, 40.0, 192, 192)
    return [("gaussians 128 (+ reference 192 with depth): render + backward",
             gaussian_step(device, repeats, cams, ref), "20000 Gaussians")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--only", choices=["dmtet", "spot", "gaussians", "priors"])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from gen3d.backend.device import pick_device

    device = pick_device(args.device)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU threads'}), torch {torch.__version__}")
    root = Path(tempfile.mkdtemp(prefix="gen3d-bench-m123-"))   # random real-size weights (GBs): removed at exit
    try:
        for name, fn in (("dmtet", lambda: bench_dmtet(device, args.repeats)),
                         ("spot", lambda: bench_spot_fit(device)),
                         ("gaussians", lambda: bench_gaussians(device, args.repeats)),
                         ("priors", lambda: bench_priors(device, args.repeats, root))):
            if args.only in (None, name):
                for row in fn():
                    print(f"{row[0]:<62} {row[1]:>9.3f} s   {row[2]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
