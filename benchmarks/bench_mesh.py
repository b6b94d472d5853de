"""Speed and memory of kernels.mesh: rasterize + interpolate + texture, forward and forward+backward.

Meshes: Spot (gen3d/backend/data/spot, 5.8k faces, its 1024^2 texture) and a ~200k-face UV sphere (spherical UVs, the same
texture), at 512^2 and 1024^2, on every available device (CPU always; CUDA and MPS when present; on CUDA both the
torch backend and nvdiffrast when it imports). Each configuration runs in a fresh subprocess so that the peak memory
(CPU: peak RSS growth over the set-up; CUDA: max allocated) belongs to it alone.

    python benchmarks/bench_mesh.py [--reps 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, device):
    import numpy as np
    import torch
    import trimesh
    from PIL import Image

    from gen3d.backend.commands.demo import SPOT_DIR

    if name == "spot":
        m = trimesh.load(SPOT_DIR / "spot_triangulated.obj", process=False)
        v = torch.tensor(m.vertices, dtype=torch.float32)
        uv = torch.tensor(np.asarray(m.visual.uv), dtype=torch.float32)
        uv[:, 1] = 1 - uv[:, 1]
        f = torch.tensor(m.faces, dtype=torch.int32)
    else:  # ~200k faces
        n = int(math.sqrt(200_000 / 4))
        m = trimesh.creation.uv_sphere(radius=0.8, count=[n, n])
        v = torch.tensor(m.vertices, dtype=torch.float32)
        d = torch.nn.functional.normalize(v, dim=-1)
        uv = torch.stack([torch.atan2(d[:, 1], d[:, 0]) / (2 * math.pi) + 0.5, torch.acos(d[:, 2].clamp(-1, 1)) / math.pi], 1)
        f = torch.tensor(m.faces, dtype=torch.int32)
    tex = torch.tensor(np.asarray(Image.open(SPOT_DIR / "spot_texture.png").convert("RGB")), dtype=torch.float32)[None] / 255
    return v.to(device), f.to(device), uv.to(device), tex.to(device)


def _run_one(cfg: dict) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from gen3d.kernels import mesh

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev = torch.device(cfg["device"])
    v, f, uv, tex = _load(cfg["mesh"], dev)
    R = cfg["res"]
    # camera looking at the origin from 2.2 units, 45 degree fov (clip space built here: kernels never import backend)
    t = 1 / math.tan(math.radians(45) / 2)
    near, far = 0.1, 10.0
    P = torch.tensor([[t, 0, 0, 0], [0, -t, 0, 0], [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)],
                      [0, 0, 1, 0]], device=dev)
    V = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0.05], [0, 1, 0, 2.2], [0, 0, 0, 1]], dtype=torch.float32, device=dev)
    vh = torch.cat([v, torch.ones(len(v), 1, device=dev)], 1) @ (P @ V).T
    backend = cfg["backend"]

    def step(backward: bool):
        pos = vh[None].clone().requires_grad_(backward)
        uvs = uv.clone().requires_grad_(backward)
        tx = tex.clone().requires_grad_(backward)
        rast, _ = mesh.rasterize(pos, f, (R, R), backend=backend)
        tuv, _ = mesh.interpolate(uvs, rast, f, backend=backend)
        col = mesh.texture(tx, tuv, filter_mode="linear", backend=backend)
        if backward:
            col.sum().backward()
        return rast

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elif dev.type == "mps":
            torch.mps.synchronize()

    out = {}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for backward in (False, True):
        rast = step(backward)  # warm-up
        sync()
        times, cpu = [], []
        for _ in range(cfg["reps"]):
            t0, c0 = time.perf_counter(), time.process_time()
            step(backward)
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        name = "fwd_bwd" if backward else "fwd"
        out[name + "_ms"] = 1000 * statistics.median(times)
        out[name + "_cpu_ms"] = 1000 * statistics.median(cpu)
    out["covered"] = int((rast[..., 3] > 0).sum())
    out["faces"] = int(f.shape[0])
    if dev.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return out


def _configs(args):
    import torch

    sys.path.insert(0, str(REPO))
    from gen3d.kernels import mesh

    devices = [("cpu", "torch")]
    if torch.cuda.is_available():
        devices.append(("cuda", "torch"))
        if mesh.nvdiffrast_available():
            devices.append(("cuda", "nvdiffrast"))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append(("mps", "torch"))
    meshes = ["spot"] if args.quick else ["spot", "sphere200k"]
    for dev, backend in devices:
        for name in meshes:
            for res in (512, 1024):
                yield dict(device=dev, backend=backend, mesh=name, res=res, reps=args.reps, threads=args.threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="Spot only")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads={args.threads or torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("median wall ms (and process CPU ms: on a loaded machine the better guide to idle wall time with one "
          "thread)")
    print(f"{'device':6} {'backend':10} {'mesh':11} {'faces':>7} {'res':>5} {'covered':>8} {'fwd ms':>8} "
          f"{'fwd cpu':>8} {'f+b ms':>8} {'f+b cpu':>8} {'peak MB':>8}")
    for cfg in _configs(args):
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
        if proc.returncode:
            print(f"{cfg['device']:6} {cfg['backend']:10} {cfg['mesh']:11} failed: {proc.stderr.strip()[-300:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{cfg['device']:6} {cfg['backend']:10} {cfg['mesh']:11} {r['faces']:7d} {cfg['res']:5d} "
              f"{r['covered']:8d} {r['fwd_ms']:8.1f} {r['fwd_cpu_ms']:8.1f} {r['fwd_bwd_ms']:8.1f} "
              f"{r['fwd_bwd_cpu_ms']:8.1f} {r['peak_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
