"""Benchmark of ``reconstruct``: Spot rendered by Blender (Workbench, flat texture colour; not our renderer) at
256 x 256 from 16 cameras on two rings; 8 more bpy renders between the rings are held out.

Reports, per preset: PSNR over the object's mask and mask IoU of the textured mesh (``mesh.obj`` + ``mesh.png``)
rendered by the same Blender set-up at the held-out cameras (so both sides share one pixel filter; "PSNR ours" is
the same mesh rendered by ``gen3d.kernels.mesh``, which filters differently: Spot itself scores ~25 dB that way),
Chamfer-L1 between the extracted mesh and Spot's mesh (% of Spot's bounding-box diagonal), each stage's time,
total time and peak memory (max RSS of the reconstructing process), and the same quality figures for the
Gaussians alone (before meshing; Chamfer from the centres of opaque Gaussians).

    .venv/bin/python benchmarks/bench_reconstruct.py [--presets fast standard] [--size 256] [--seed N]

``--baseline DIR`` compares with another checkout of the project (e.g. ``git worktree add /tmp/old COMMIT``): each
round runs the baseline, then this checkout, on the same inputs, each ``reconstruct`` in its own process
(``python -m gen3d run`` with ``PYTHONPATH`` on its checkout; the same environment, so the same
``OMP_NUM_THREADS``), both judged by this checkout's evaluation; the table gets the 1-minute load average before
each run and the new/old ratio of the total per round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def render_with_bpy(obj: Path, texture: Path, cameras, size: int, folder: Path):
    """``[N,H,W,4]`` straight RGBA float renders by Blender of a Y-up ``obj`` with its ``texture`` (unlit)."""
    import numpy as np
    import torch
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"obj": str(obj), "texture": str(texture), "width": size, "height": size, "K": cameras.K.tolist(),
            "c2w": cameras.c2w.tolist(), "out": str(folder)}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "gen3d.backend.blender.unlit", str(spec_path)], check=True,
                   stdout=subprocess.DEVNULL)
    imgs = [np.asarray(Image.open(folder / f"{i:03d}.png").convert("RGBA"), dtype=np.float32) / 255.0
            for i in range(len(cameras))]
    return torch.from_numpy(np.stack(imgs))


def chamfer_l1(a, b) -> float:
    """Symmetric mean nearest-neighbour distance between point sets ``[P,3]`` and ``[Q,3]`` (numpy)."""
    from scipy.spatial import cKDTree

    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def image_metrics(rgb, alpha, gt) -> tuple[float, float]:
    """PSNR over the reference mask (colours premultiplied by coverage, both sides) and mask IoU (alpha > 0.5)."""
    import torch

    m_gt, m_pred = gt[..., 3] > 0.5, alpha[..., 0] > 0.5
    iou = float((m_gt & m_pred).sum()) / float((m_gt | m_pred).sum())
    pred, ref = rgb * alpha.clamp(0, 1), gt[..., :3] * gt[..., 3:]
    mse = ((pred - ref) ** 2)[m_gt].mean()
    return float(-10 * torch.log10(mse)), iou


def evaluate(out: Path, held_cams, held_imgs, spot_points, diag: float) -> dict:
    """Quality of the results in ``out`` at the held-out cameras (module docstring)."""
    import numpy as np
    import torch
    import trimesh

    from gen3d.backend.pipelines.stages.fit_gaussians import render_gaussians
    from gen3d.backend.pipelines.stages.mesh_render import render_mesh
    from gen3d.backend.representations.gaussians import load_ply
    from gen3d.backend.representations.mesh import load_glb

    mesh = load_glb(out / "mesh.glb")
    g = load_ply(out / "gaussians.ply")
    bpy_imgs = render_with_bpy(out / "mesh.obj", out / "mesh.png", held_cams, held_cams.width, out / "bpy_held")
    ps, ious, ops, gps, gious = [], [], [], [], []
    with torch.no_grad():
        for i in range(len(held_cams)):
            p, iou = image_metrics(bpy_imgs[i, ..., :3], bpy_imgs[i, ..., 3:], held_imgs[i])
            ps.append(p), ious.append(iou)
            r = render_mesh(mesh, held_cams[i])
            ops.append(image_metrics(r.rgb[0], r.alpha[0], held_imgs[i])[0])
            rgb, alpha, _ = render_gaussians(g, held_cams[i], torch.zeros(1, 3))
            p, iou = image_metrics(rgb[0] / alpha[0].clamp_min(1e-6), alpha[0], held_imgs[i])
            gps.append(p), gious.append(iou)
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    mesh_pts = trimesh.sample.sample_surface(tm, 100_000, seed=0)[0]
    opaque = g.means[g.opacities > 0.5].numpy()
    return dict(faces=len(mesh.faces), gaussians=len(g), psnr=float(np.mean(ps)), iou=float(np.mean(ious)),
                psnr_ours=float(np.mean(ops)), gs_psnr=float(np.mean(gps)), gs_iou=float(np.mean(gious)),
                chamfer_pct=100 * chamfer_l1(np.asarray(mesh_pts), spot_points) / diag,
                gs_chamfer_pct=100 * chamfer_l1(opaque, spot_points) / diag)


def run_preset(preset: str, views: Path, out: Path, overrides: dict, seed: int = 0) -> dict:
    """Run ``reconstruct`` on ``views`` into ``out``; returns the preset's name, wall time and stage timings."""
    from gen3d.backend.pipelines import JobRequest, RunContext
    from gen3d.backend.pipelines.runner import run_job

    t0 = time.perf_counter()
    run_job(JobRequest(method="reconstruct", preset=preset, seed=seed, options=overrides, files={"views": str(views)}),
            RunContext(out_dir=out))
    meta = json.loads((out / "meta.json").read_text())
    return {"preset": preset + (f" {overrides}" if overrides else ""), "wall_s": round(time.perf_counter() - t0, 1),
            "timings": meta["timings"]}


def run_checkout(repo: Path, preset: str, views: Path, out: Path, sets: list[str] | None, seed: int = 0) -> dict:
    """``reconstruct`` by the code of checkout ``repo`` in its own process; the same fields as :func:`run_preset`."""
    cmd = [sys.executable, "-m", "gen3d", "run", "reconstruct", "--views", str(views), "--out", str(out),
           "--preset", preset, "--seed", str(seed), "--device", "cpu"]
    for kv in sets or []:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), stdout=subprocess.DEVNULL)
    meta = json.loads((out / "meta.json").read_text())
    return {"preset": preset + (f" {sets}" if sets else ""), "wall_s": round(time.perf_counter() - t0, 1),
            "timings": meta["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["fast", "standard"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--keep", help="folder to keep inputs and results in (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="option override for every preset")
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with, run first in each round")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (baseline, this checkout) with --baseline")
    args = ap.parse_args()

    import platform

    import torch
    import trimesh

    from gen3d.backend.commands.demo import SPOT_DIR, ring_cameras, spot_mesh
    from gen3d.backend.commands.run import parse_set
    from gen3d.backend.geometry.transforms import save_transforms

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_reconstruct_"))
    spot = spot_mesh()
    lo, hi = spot.vertices.min(0).values, spot.vertices.max(0).values
    center, diag = (lo + hi) / 2, float((hi - lo).norm())
    train = ring_cameras(center, diag, args.size)                       # 2 rings x 8, elevations 15 and 45
    held = ring_cameras(center, diag, args.size, elevations=(30.0,), per_ring=8, offset_deg=22.5 / 2)
    t = time.perf_counter()
    views = root / "views"
    if not (views / "transforms.json").exists():  # --keep reuses earlier renders
        save_transforms(views, train, render_with_bpy(SPOT_DIR / "spot_triangulated.obj", SPOT_DIR / "spot_texture.png",
                                                      train, args.size, root / "bpy_train"))
    held_imgs = render_with_bpy(SPOT_DIR / "spot_triangulated.obj", SPOT_DIR / "spot_texture.png", held, args.size,
                                root / "bpy_held")
    print(f"bpy renders: {time.perf_counter() - t:.1f} s", flush=True)
    spot_tm = trimesh.Trimesh(spot.vertices.numpy(), spot.faces.numpy(), process=False)
    spot_points = trimesh.sample.sample_surface(spot_tm, 100_000, seed=0)[0]

    rows = []
    for preset in args.presets:
        if args.baseline is None:
            out = root / f"out_{preset}"
            rows.append(run_preset(preset, views, out, parse_set(args.set), args.seed))
            rows[-1].update(evaluate(out, held, held_imgs, spot_points, diag))
            print(json.dumps(rows[-1]), flush=True)
            continue
        for r in range(args.rounds):
            for label, repo in (("old", args.baseline.resolve()), ("new", REPO)):
                out = root / f"out_{preset}_{label}{r}"
                load = os.getloadavg()[0]
                rows.append(run_checkout(repo, preset, views, out, args.set, args.seed))
                rows[-1].update(evaluate(out, held, held_imgs, spot_points, diag), load=load)
                rows[-1]["preset"] = f"{label} {rows[-1]['preset']} (round {r + 1}, load {load:.1f})"
                print(json.dumps(rows[-1]), flush=True)
            ratio = rows[-1]["timings"]["total"] / rows[-2]["timings"]["total"]
            print(f"round {r + 1}: new / old total time = {ratio:.2f}", flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; peak RSS of this process (all presets) {peak_gb:.2f} GB; files in {root}"
          + (f"; load average now {os.getloadavg()[0]:.1f}" if args.baseline else ""))
    stages = ["load", "fit", "mesh", "uv", "bake", "refine", "export"]
    print("| preset | PSNR mask (dB) | IoU | PSNR ours | Chamfer-L1 (% diag) | GS PSNR | GS IoU | GS Chamfer | faces "
          "| Gaussians | " + " | ".join(f"{s} s" for s in stages) + " | total s |")
    print("|" + "---|" * (11 + len(stages)))
    for r in rows:
        print(f"| {r['preset']} | {r['psnr']:.2f} | {r['iou']:.4f} | {r['psnr_ours']:.2f} | {r['chamfer_pct']:.3f} | "
              f"{r['gs_psnr']:.2f} | "
              f"{r['gs_iou']:.4f} | {r['gs_chamfer_pct']:.3f} | {r['faces']} | {r['gaussians']} | "
              + " | ".join(f"{r['timings'].get(s, 0):.1f}" for s in stages) + f" | {r['timings']['total']:.1f} |")


if __name__ == "__main__":
    main()
