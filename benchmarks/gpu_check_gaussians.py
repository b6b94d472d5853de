"""Parity and speed of kernels.gaussians' torch backend against gsplat's CUDA kernels (run on a GPU machine).

    python benchmarks/gpu_check_gaussians.py            # parity on 3 scenes + timings
    python benchmarks/gpu_check_gaussians.py --quick    # one parity scene, smaller timing grid

Both backends get the same random float32 inputs on CUDA (render_mode RGB+D, a background, SH degree 3
for one scene, the antialiased mode for another). Printed: max |difference| of colours, alphas, depths and
of the gradients of a fixed random loss wrt means, quats, scales, opacities, colours and the projected
2D means (``meta["means2d"].grad``), each with the reference's max |value| for scale; then the median
milliseconds of forward and forward+backward of both backends. Exits with a note when gsplat or CUDA
is missing. gsplat releases up to 1.5.x clamp alpha at 0.999 and size radii differently; the torch
backend follows the current kernels (0.99, opacity-aware radii), so older versions differ on saturated
pixels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gaussians import make_scene as bench_scene  # noqa: E402
from gen3d.kernels.gaussians import gsplat_available, rasterization  # noqa: E402


def make_scene(n: int, size: int, n_cams: int = 2, sh_degree=None, seed: int = 0, device="cuda"):
    """``bench_gaussians.make_scene`` (cameras 0.4 above the orbit's plane) and a random background per camera."""
    scene = bench_scene(n, size, device, seed=seed, n_cams=n_cams, sh_degree=sh_degree, height=0.4)
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(seed + 1))
    return (*scene, bg.to(device))


def render_and_grads(backend, scene, size, sh_degree, rasterize_mode):
    means, quats, scales, opacities, colors, viewmats, Ks, bg = scene
    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    img, alpha, meta = rasterization(*leaves, viewmats, Ks, size, size, sh_degree=sh_degree, backgrounds=bg,
                                     render_mode="RGB+D", rasterize_mode=rasterize_mode, backend=backend)
    meta["means2d"].retain_grad()
    g = torch.Generator(device=img.device).manual_seed(1)
    w_img = torch.rand(img.shape, device=img.device, generator=g)
    w_a = torch.rand(alpha.shape, device=img.device, generator=g)
    ((img * w_img).sum() + (alpha * w_a).sum()).backward()
    outs = {"colors": img[..., :3], "alphas": alpha, "depth": img[..., 3:]}
    grads = dict(zip(("d_means", "d_quats", "d_scales", "d_opacities", "d_colors"), (t.grad for t in leaves)))
    grads["d_means2d"] = meta["means2d"].grad
    radii = meta["radii"] if meta["radii"].dim() == 3 else meta["radii"][..., None].expand(-1, -1, 2)
    return outs, grads, (radii > 0).all(-1)


def parity(size, n, sh_degree, rasterize_mode):
    scene = make_scene(n, size, sh_degree=sh_degree)
    ref_out, ref_grads, ref_vis = render_and_grads("gsplat", scene, size, sh_degree, rasterize_mode)
    out, grads, vis = render_and_grads("torch", scene, size, sh_degree, rasterize_mode)
    print(f"\nparity: N={n} {size}x{size} 2 cameras sh_degree={sh_degree} {rasterize_mode}; "
          f"visible gsplat {int(ref_vis.sum())} torch {int(vis.sum())} (mismatch {int((ref_vis != vis).sum())})")
    print(f"{'quantity':14} {'max|diff|':>12} {'mean|diff|':>12} {'max|gsplat|':>12}")
    for name in list(ref_out) + list(ref_grads):
        a = (out | grads)[name].float()
        b = (ref_out | ref_grads)[name].float()
        if name == "d_means2d":  # only Gaussians both backends render have a screen-space gradient
            a, b = a[vis & ref_vis], b[vis & ref_vis]
        diff = (a - b).abs()
        print(f"{name:14} {diff.max().item():12.3e} {diff.mean().item():12.3e} {b.abs().max().item():12.3e}")


def median_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def timings(grid, reps):
    print(f"\n{'N':>7} {'size':>5} {'gsplat fwd':>10} {'gsplat f+b':>10} {'torch fwd':>10} {'torch f+b':>10} "
          f"{'torch peak MB':>13}")
    for n, size in grid:
        means, quats, scales, opacities, colors, viewmats, Ks, bg = make_scene(n, size, n_cams=1)
        row = {}
        for backend in ("gsplat", "torch"):
            leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]

            def fwd():
                with torch.no_grad():
                    rasterization(means, quats, scales, opacities, colors, viewmats, Ks, size, size, backend=backend)

            def step():
                img, alpha, _ = rasterization(*leaves, viewmats, Ks, size, size, backend=backend)
                (img.sum() + alpha.sum()).backward()

            torch.cuda.reset_peak_memory_stats()
            row[backend] = (median_ms(fwd, reps), median_ms(step, reps), torch.cuda.max_memory_allocated() / 2**20)
        print(f"{n:>7} {size:>5} {row['gsplat'][0]:10.2f} {row['gsplat'][1]:10.2f} {row['torch'][0]:10.2f} "
              f"{row['torch'][1]:10.2f} {row['torch'][2]:13.0f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("note: no CUDA device; nothing to compare (the torch backend is covered by tests/test_gaussians_kernel.py)")
        return 0
    if not gsplat_available():
        print("note: gsplat is not installed (pip install gsplat); only the torch backend exists here, nothing to compare")
        return 0
    import gsplat

    print(f"torch {torch.__version__}, gsplat {getattr(gsplat, '__version__', '?')}, {torch.cuda.get_device_name()}")
    cases = [(256, 20_000, None, "classic")]
    if not args.quick:
        cases += [(256, 20_000, 3, "classic"), (192, 5_000, None, "antialiased")]
    for size, n, sh, mode in cases:
        parity(size, n, sh, mode)
    grid = [(20_000, 256), (100_000, 512)] if args.quick else [(2_000, 128), (20_000, 256), (100_000, 512),
                                                                 (500_000, 1024)]
    timings(grid, reps=5 if args.quick else 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
