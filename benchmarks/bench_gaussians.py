"""Speed and memory of kernels.gaussians.rasterization, with a dense brute-force torch renderer as baseline.

    python benchmarks/bench_gaussians.py            # N in {2k, 20k, 100k} x {128, 256, 512}^2, every device
    python benchmarks/bench_gaussians.py --quick     # 2k and 20k at 128 and 256, fewer repetitions
    python benchmarks/bench_gaussians.py --compare 20000 256 --peer /tmp/gsplat-pytorch   # interleaved, one process

Scene (DreamGaussian-like): N Gaussians uniform in a ball of radius 0.5, per-axis scales 0.7 (V/N)^(1/3)
times a log-normal factor (sigma 0.25) so neighbours overlap, random rotations, opacities U(0.05, 0.95),
random RGB; one camera on an orbit of radius 2 with 49.1 deg vertical field of view, looking at the centre.
"forward" = rendering under no_grad; "fwd+bwd" = rendering + backward of a weighted sum of colours and
alphas (a training step). Each configuration runs in its own subprocess; peak memory is the growth of
the process's max RSS over the configuration (CPU) or torch.cuda.max_memory_allocated (CUDA).
The dense baseline composites every Gaussian at every pixel (sorted by depth, same rules) and runs in the
same process, where its working set fits in memory. The table has a row per compositor path: "native" (the
compiled kernels of gen3d.kernels._native) and "torch" (GEN3D_NATIVE=0, the pure-torch fallback).

``--compare N SIZE`` times, in one process and interleaved round by round (so a shared machine's load hits all
alike), fwd+bwd of the native path, the pure-torch path and, with ``--peer DIR``, the tiled pure-PyTorch
rasterizer of a gsplat-pytorch checkout (github.com/Mxbonn/gsplat-pytorch: its ``project_gaussians`` and
``rasterize_gaussians``, block width 16; it is imported from DIR, never vendored), and prints the ratios.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen3d.backend.geometry.cameras import Cameras, look_at  # noqa: E402
from gen3d.kernels._gaussians_project import project_gaussians, quat_scale_to_covar  # noqa: E402
from gen3d.kernels.gaussians import rasterization  # noqa: E402

FOV_DEG = 49.1
RADIUS = 2.0
DENSE_MAX_PAIRS = 60e6  # pixels x visible Gaussians above which the dense baseline is skipped


def make_scene(n: int, size: int, device="cpu", dtype=torch.float32, seed: int = 0, n_cams: int = 1,
               sh_degree: int | None = None, height: float = 0.3):
    """DreamGaussian-like random Gaussians (uniform in a ball of radius 0.5; RGB colours, or SH coefficients of
    ``sh_degree``) and ``n_cams`` cameras on an orbit of radius ``RADIUS`` at ``height`` looking at the origin,
    the first at azimuth 0 (on -Y): ``(means, quats, scales, opacities, colors, viewmats, Ks)``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    base = 0.7 * (4 / 3 * math.pi * 0.5**3 / n) ** (1 / 3)
    scales = base * torch.exp(0.25 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    f = 0.5 * size / math.tan(math.radians(FOV_DEG) / 2)
    Ks = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]).expand(n_cams, 3, 3).clone()
    az = 2 * math.pi * torch.arange(n_cams) / n_cams
    eyes = torch.stack([RADIUS * torch.sin(az), -RADIUS * torch.cos(az), torch.full_like(az, height)], -1)
    viewmats = Cameras(Ks, look_at(eyes, torch.zeros(3)), size, size).viewmats()
    out = (means, quats, scales, opacities, colors, viewmats, Ks)
    return tuple(t.to(device=device, dtype=dtype) for t in out)


def dense_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
    """Brute force: every visible Gaussian at every pixel, depth-sorted, log-space transmittance."""
    proj = project_gaussians(means, quat_scale_to_covar(quats, scales), opacities, viewmats, Ks, width, height)
    vis = proj.visible[0]
    order = torch.argsort(proj.depths[0][vis])
    m2, con, op = proj.means2d[0][vis][order], proj.conics[0][vis][order], proj.opacities[0][vis][order]
    col = colors[vis][order]
    ys, xs = torch.meshgrid(torch.arange(height, device=means.device) + 0.5,
                            torch.arange(width, device=means.device) + 0.5, indexing="ij")
    dx = xs.reshape(-1, 1) - m2[:, 0]
    dy = ys.reshape(-1, 1) - m2[:, 1]
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    alpha = torch.clamp(op * torch.exp(-sigma), max=0.99)
    alpha = alpha * (alpha >= 1 / 255)
    log_t = torch.cumsum(torch.log1p(-alpha), dim=1)
    alive = log_t > math.log(1e-4)
    w = alpha * torch.exp(log_t - torch.log1p(-alpha)) * alive
    return (w @ col).reshape(1, height, width, -1), w.sum(1).reshape(1, height, width, 1)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_ms(fn, reps: int, device: str):
    """Median wall and process-CPU milliseconds of fn (CPU time is what a busy shared machine distorts least)."""
    fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def _timings(render, scene, size, reps, device):
    means, quats, scales, opacities, colors, viewmats, Ks = scene
    weights = torch.rand(size, size, 3, device=device, generator=None)

    def forward():
        with torch.no_grad():
            render(means, quats, scales, opacities, colors, viewmats, Ks, size, size)

    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]

    def train_step():
        img, alpha = render(*leaves, viewmats, Ks, size, size)[:2]
        ((img[0] * weights).sum() + alpha.sum()).backward()

    return _median_ms(forward, reps, device), _median_ms(train_step, reps, device)


def run_one(cfg: dict) -> dict:
    device, n, size, reps = cfg["device"], cfg["n"], cfg["size"], cfg["reps"]
    os.environ["GEN3D_NATIVE"] = "1" if cfg.get("path", "native") == "native" else "0"
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    scene = make_scene(n, size, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = dict(cfg)

    def ours(*a):
        return rasterization(*a, backend=cfg["backend"])

    (out["fwd_ms"], out["fwd_cpu_ms"]), (out["fwdbwd_ms"], out["fwdbwd_cpu_ms"]) = _timings(ours, scene, size, reps, device)
    if device.startswith("cuda"):
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    with torch.no_grad():
        _, _, meta = rasterization(*scene, size, size, backend="torch")
    visible = int((meta["radii"] > 0).all(-1).sum())
    out["isects"] = int(meta["flatten_ids"].numel())
    out["visible"] = visible
    if cfg["dense"] and visible * size * size <= DENSE_MAX_PAIRS:
        (out["dense_fwd_ms"], out["dense_fwd_cpu_ms"]), (out["dense_fwdbwd_ms"], out["dense_fwdbwd_cpu_ms"]) = \
            _timings(dense_render, scene, size, max(1, reps // 2), device)
    return out


def _peer_step(peer_dir: Path):
    """fwd+bwd of gsplat-pytorch (imported from a checkout) on our scene: its projection and tiled rasterizer."""
    if "jaxtyping" not in sys.modules and importlib.util.find_spec("jaxtyping") is None:
        shim = types.ModuleType("jaxtyping")  # its annotations only
        shim.Float = shim.Bool = shim.Int = collections.defaultdict(lambda: object)
        sys.modules["jaxtyping"] = shim
    sys.path.insert(0, str(peer_dir))
    from gsplat.project_gaussians import project_gaussians as peer_project
    from gsplat.rasterize import rasterize_gaussians as peer_rasterize

    def render(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
        K = Ks[0].tolist()
        xys, depths, radii, conics, _, _ = peer_project(means, scales, 1.0, quats, viewmats[0], K[0][0], K[1][1],
                                                        K[0][2], K[1][2], height, width)
        img = peer_rasterize(xys, depths, radii, conics, colors, opacities, height, width, 16,
                             torch.zeros(colors.shape[-1]))
        return img[None], None

    return render


def compare(n: int, size: int, reps: int, peer: Path | None):
    """Median fwd+bwd of each path, timed round-robin in this process, and the ratios to the native path."""
    scene = make_scene(n, size)
    weights = torch.rand(size, size, 3)
    leaves = [t.clone().requires_grad_(True) for t in scene[:5]]
    paths = {"native": lambda *a: rasterization(*a), "torch": lambda *a: rasterization(*a)}
    if peer is not None:
        paths["gsplat-pytorch"] = _peer_step(peer)

    def step(name):
        os.environ["GEN3D_NATIVE"] = "0" if name == "torch" else "1"
        img = paths[name](*leaves, scene[5], scene[6], size, size)[0]
        (img[0] * weights).sum().backward()

    times = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    for name in paths:
        step(name)  # warm up (and build the native kernels once)
    for _ in range(reps):
        for name in paths:
            t0, c0 = time.perf_counter(), time.process_time()
            step(name)
            times[name].append(1e3 * (time.perf_counter() - t0))
            cpu[name].append(1e3 * (time.process_time() - c0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {n} Gaussians at {size}x{size}, fwd+bwd, "
          f"median of {reps} interleaved rounds")
    base, base_cpu = statistics.median(times["native"]), statistics.median(cpu["native"])
    for name, ts in times.items():
        med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
        print(f"  {name:15} wall {med:9.1f} ms = {med / base:6.2f}x native; process CPU {med_cpu:9.1f} ms = "
              f"{med_cpu / base_cpu:6.2f}x native   (wall rounds: {', '.join(f'{t:.0f}' for t in ts)})")


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2k and 20k Gaussians at 128 and 256 px, fewer reps")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    ap.add_argument("--devices", default=None, help="comma list (default: every available device)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--compare", nargs=2, type=int, metavar=("N", "SIZE"),
                    help="interleaved fwd+bwd timing of native / torch / --peer in one process")
    ap.add_argument("--peer", type=Path, help="a gsplat-pytorch checkout (for --compare)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.compare:
        compare(*args.compare, reps=args.reps or 3, peer=args.peer)
        return
    ns = [2_000, 20_000] if args.quick else [2_000, 20_000, 100_000]
    sizes = [128, 256] if args.quick else [128, 256, 512]
    reps = args.reps or (3 if args.quick else 5)
    devices = args.devices.split(",") if args.devices else _devices()
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} CPU threads, cpu count {os.cpu_count()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("times are medians in ms: wall (cpu = process CPU time); speedup = dense / ours, fwd+bwd wall")
    head = (f"{'device':6} {'path':6} {'N':>7} {'size':>5} {'isects':>8} {'fwd':>15} {'fwd+bwd':>15} {'peak MB':>8} "
            f"{'dense fwd':>15} {'dense fwd+bwd':>15} {'speedup':>8}")
    print(head)
    print("-" * len(head))

    def cell(r, key):
        return f"{r[key]:7.0f} ({r[key.replace('_ms', '_cpu_ms')]:5.0f})" if key in r else f"{'-':>15}"

    for device, n, size, path in itertools.product(devices, ns, sizes, ("native", "torch")):
        cfg = {"device": device, "n": n, "size": size, "reps": reps, "backend": "torch", "path": path,
               "dense": not args.no_dense and path == "native", "threads": args.threads}
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            print(f"{device:6} {path:6} {n:>7} {size:>5}  failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        speed = f"{r['dense_fwdbwd_ms'] / r['fwdbwd_ms']:7.1f}x" if "dense_fwdbwd_ms" in r else f"{'-':>8}"
        print(f"{device:6} {path:6} {n:>7} {size:>5} {r['isects']:>8} {cell(r, 'fwd_ms')} {cell(r, 'fwdbwd_ms')} "
              f"{r['peak_mb']:8.0f} {cell(r, 'dense_fwd_ms')} {cell(r, 'dense_fwdbwd_ms')} {speed}", flush=True)


if __name__ == "__main__":
    main()
