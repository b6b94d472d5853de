"""Speed and memory of kernels.mesh: rasterize + interpolate + texture, forward and forward+backward.

Meshes: Spot (gen3d/backend/data/spot, 5.8k faces, its 1024^2 texture) and a ~200k-face UV sphere (spherical UVs, the same
texture), at 512^2 and 1024^2, on every available device (CPU always; CUDA and MPS when present; on CUDA both the
torch backend and nvdiffrast when it imports). Each configuration runs in a fresh subprocess so that the peak memory
(CPU: peak RSS growth over the set-up; CUDA: max allocated) belongs to it alone.

    python benchmarks/bench_mesh.py [--reps 5] [--threads N] [--quick] [--no-dense]

Columns ``raster``, ``interp`` and ``texture`` split one forward+backward step into the cost of each op (its
forward plus its share of the backward, timed with torch.profiler in a separate step). The baseline ("dense") is
a pure-torch rasterizer that tests every triangle at every pixel (chunked; same edge functions, same
differentiable barycentrics, same interpolate and texture), run in the same process, its rounds interleaved with
ours; where its pixel x triangle count passes ``DENSE_MAX_PAIRS`` it runs on a band of rows and its visibility time
is scaled to the full image (marked ``~``).
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
DENSE_MAX_PAIRS = 4e9  # pixels x faces the dense baseline runs in full; beyond: a band of rows, scaled


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


def dense_visibility(v, H: int, W: int, rows=None):
    """Nearest triangle per pixel ``[H*W]`` (-1 = none) by testing every triangle ``v [F,3,4]`` at every pixel
    centre of ``rows`` (default all), in chunks of about 4M (pixel, triangle) pairs."""
    import torch

    from gen3d.kernels._mesh_raster import _setup

    coef, _, zplane, ok, _ = _setup(v, H, W)
    rows = range(H) if rows is None else rows
    pix = torch.cat([torch.arange(W) + r * W for r in rows]).to(v.device)
    out = torch.full((H * W,), -1, dtype=torch.long, device=v.device)
    chunk = max(1, int(4e6 // max(len(v), 1)))
    for s in range(0, len(pix), chunk):
        p = pix[s:s + chunk]
        X, Y = (p % W).to(v.dtype)[:, None], (p // W).to(v.dtype)[:, None]
        inside = ok[None].expand(len(p), -1).clone()
        for i in range(3):
            inside &= coef[None, :, i, 0] + coef[None, :, i, 1] * X + coef[None, :, i, 2] * Y >= 0
        depth = zplane[None, :, 0] + zplane[None, :, 1] * X + zplane[None, :, 2] * Y
        inside &= (depth >= -1) & (depth <= 1)
        best = torch.where(inside, depth, torch.full_like(depth, float("inf"))).min(1)
        out[p] = torch.where(torch.isinf(best.values), -1, best.indices)
    return out


def dense_rasterize(pos, tri, resolution, rows=None):
    """``mesh.rasterize`` (one view, no ranges) with the visibility done densely (see dense_visibility)."""
    import torch

    from gen3d.kernels import _mesh_raster as mr

    H, W = resolution
    tri = tri.long()
    B, batch, face = mr.primitives(pos, tri, None)
    with torch.no_grad():
        prim = dense_visibility(mr.prim_vertices(pos.detach(), tri, batch, face), H, W, rows)
    pix = (prim >= 0).nonzero().squeeze(1)
    p = prim.index_select(0, pix)
    k = mr.plane_coefficients(mr.prim_vertices(pos, tri, batch, face), H, W)
    uvz, db = mr.barycentrics(k.index_select(0, p), pix, H, W, True)
    tid = (face.index_select(0, p) + 1).to(pos.dtype)
    out = pos.new_zeros(B * H * W, 4).index_put((pix,), torch.cat([uvz, tid[:, None]], 1))
    return out.view(B, H, W, 4), pos.new_zeros(B * H * W, 4).index_put((pix,), db).view(B, H, W, 4)


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

    def step(backward: bool, raster=None):
        pos = vh[None].clone().requires_grad_(backward)
        uvs = uv.clone().requires_grad_(backward)
        tx = tex.clone().requires_grad_(backward)
        with torch.profiler.record_function("raster"):
            rast, _ = (raster or (lambda *a: mesh.rasterize(*a, backend=backend)))(pos, f, (R, R))
        with torch.profiler.record_function("interp"):
            tuv, _ = mesh.interpolate(uvs, rast, f, backend=backend)
        with torch.profiler.record_function("texture"):
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
    if dev.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    out.update(_op_breakdown(lambda: step(True)))
    if cfg.get("dense") and dev.type == "cpu":
        out.update(_dense_ratio(cfg, step, vh, f, R))
    out["covered"] = int((rast[..., 3] > 0).sum())
    out["faces"] = int(f.shape[0])
    if dev.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return out


def _op_breakdown(run) -> dict:
    """ms of one fwd+bwd step by part: each op's forward (its profiler range) and the whole backward."""
    import torch

    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    total = 1000 * (time.perf_counter() - t0)
    parts = {name: 0.0 for name in ("raster", "interp", "texture")}
    for evt in prof.events():
        if evt.name in parts:
            parts[evt.name] += evt.cpu_time_total / 1000
    parts["backward"] = total - sum(parts.values())
    return {f"{k}_ms": v for k, v in parts.items()}


def _dense_ratio(cfg, step, vh, f, R) -> dict:
    """Dense baseline fwd+bwd ms (rounds interleaved with ours) and the fraction of pixels where both pick the
    same triangle. On a band of rows, the step is timed on the band and its visibility time scaled up."""
    import torch

    from gen3d.kernels import _mesh_raster as mr

    full = R * R * len(f) <= DENSE_MAX_PAIRS
    rows = None if full else range(R // 2 - 8, R // 2 + 8)
    tri = f.long()
    _, batch, face = mr.primitives(vh[None], tri, None)
    verts = mr.prim_vertices(vh[None], tri, batch, face)
    ours, base = [], []
    for _ in range(max(1, cfg["reps"] // 2)):
        t0 = time.perf_counter()
        mine = step(True)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = step(True, raster=lambda *a: dense_rasterize(*a, rows=rows))
        t_step = time.perf_counter() - t0
        if not full:
            t0 = time.perf_counter()
            with torch.no_grad():
                dense_visibility(verts, R, R, rows)
            t_step += (R / len(rows) - 1) * (time.perf_counter() - t0)
        base.append(t_step)
    sel = torch.arange(R * R) if full else torch.cat([torch.arange(R) + r * R for r in rows])
    a, b = mine[0, ..., 3].reshape(-1)[sel], theirs[0, ..., 3].reshape(-1)[sel]
    return {"dense_fwd_bwd_ms": 1000 * statistics.median(base), "ours_interleaved_ms": 1000 * statistics.median(ours),
            "dense_scaled": not full, "same_triangle": float((a == b).float().mean())}


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
                yield dict(device=dev, backend=backend, mesh=name, res=res, reps=args.reps, threads=args.threads,
                           dense=not args.no_dense)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="Spot only")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads={args.threads or torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("median wall ms (and process CPU ms: on a loaded machine the better guide to idle wall time with one "
          "thread); raster/interp/texture = forward ms of each op in one fwd+bwd step, bwd = its backward; dense = "
          "the dense per-triangle baseline (~ = scaled from a band of rows), ratio = dense / ours (same rounds), "
          "same tri = pixels where both pick the same triangle")
    print(f"{'device':6} {'backend':10} {'mesh':11} {'faces':>7} {'res':>5} {'covered':>8} {'fwd ms':>8} "
          f"{'fwd cpu':>8} {'f+b ms':>8} {'f+b cpu':>8} {'peak MB':>8} {'raster':>7} {'interp':>7} {'texture':>7} "
          f"{'bwd':>7} {'dense f+b':>10} {'ours f+b':>9} {'ratio':>7} {'same tri':>8}")
    for cfg in _configs(args):
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
        if proc.returncode:
            print(f"{cfg['device']:6} {cfg['backend']:10} {cfg['mesh']:11} failed: {proc.stderr.strip()[-300:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{cfg['device']:6} {cfg['backend']:10} {cfg['mesh']:11} {r['faces']:7d} {cfg['res']:5d} "
              f"{r['covered']:8d} {r['fwd_ms']:8.1f} {r['fwd_cpu_ms']:8.1f} {r['fwd_bwd_ms']:8.1f} "
              f"{r['fwd_bwd_cpu_ms']:8.1f} {r['peak_mb']:8.0f} {r['raster_ms']:7.1f} {r['interp_ms']:7.1f} "
              f"{r['texture_ms']:7.1f} {r['backward_ms']:7.1f} {_dense_cells(r)}", flush=True)


def _dense_cells(r: dict) -> str:
    if "dense_fwd_bwd_ms" not in r:
        return f"{'-':>10} {'-':>9} {'-':>7} {'-':>8}"
    mark = "~" if r["dense_scaled"] else " "
    return (f"{mark}{r['dense_fwd_bwd_ms']:9.0f} {r['ours_interleaved_ms']:9.1f} "
            f"{r['dense_fwd_bwd_ms'] / r['ours_interleaved_ms']:6.1f}x {100 * r['same_triangle']:7.2f}%")


if __name__ == "__main__":
    main()
