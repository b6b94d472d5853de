"""Benchmark of ``reconstruct``: Spot rendered by Blender (Workbench, flat texture colour; not our renderer) at
256 x 256 from 16 cameras on two rings; 8 more bpy renders between the rings are held out.

Reports, per preset: PSNR over the object's mask and mask IoU of the textured mesh at the held-out cameras,
Chamfer-L1 between the extracted mesh and Spot's mesh (% of Spot's bounding-box diagonal), each stage's time,
total time and peak memory (max RSS of the reconstructing process), and the same quality figures for the
Gaussians alone (before meshing; Chamfer from the centres of opaque Gaussians).

    .venv/bin/python benchmarks/bench_reconstruct.py [--presets fast standard] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def render_spot_with_bpy(cameras, size: int, folder: Path):
    """``[N,H,W,4]`` straight RGBA float renders of Spot at ``cameras`` by Blender."""
    import numpy as np
    import torch
    from PIL import Image

    data = REPO / "backend" / "data" / "spot"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"obj": str(data / "spot_triangulated.obj"), "texture": str(data / "spot_texture.png"), "width": size,
            "height": size, "K": cameras.K.tolist(), "c2w": cameras.c2w.tolist(), "out": str(folder)}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "backend.blender.unlit", str(spec_path)], check=True,
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


def run_preset(preset: str, views: Path, out: Path, held_cams, held_imgs, spot_points, diag: float,
               overrides: dict) -> dict:
    import numpy as np
    import torch
    import trimesh

    from backend.pipelines import JobRequest, RunContext
    from backend.pipelines.runner import run_job
    from backend.pipelines.stages.fit_gaussians import render_gaussians
    from backend.pipelines.stages.mesh_render import render_mesh
    from backend.representations.gaussians import load_ply
    from backend.representations.mesh import load_glb

    t0 = time.perf_counter()
    ctx = RunContext(out_dir=out)
    run_job(JobRequest(method="reconstruct", preset=preset, options=overrides, files={"views": str(views)}), ctx)
    wall = time.perf_counter() - t0
    meta = json.loads((out / "meta.json").read_text())
    mesh = load_glb(out / "mesh.glb")
    g = load_ply(out / "gaussians.ply")
    row = {"preset": preset + (f" {overrides}" if overrides else ""), "wall_s": round(wall, 1), "timings": meta["timings"], "faces": len(mesh.faces),
           "gaussians": len(g)}
    with torch.no_grad():
        ps, ious, gps, gious = [], [], [], []
        for i in range(len(held_cams)):
            r = render_mesh(mesh, held_cams[i])
            p, iou = image_metrics(r.rgb[0], r.alpha[0], held_imgs[i])
            ps.append(p), ious.append(iou)
            rgb, alpha, _ = render_gaussians(g, held_cams[i], torch.zeros(1, 3))
            p, iou = image_metrics(rgb[0] / alpha[0].clamp_min(1e-6), alpha[0], held_imgs[i])
            gps.append(p), gious.append(iou)
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    mesh_pts = tm.sample(100_000, seed=0) if hasattr(tm, "sample") else trimesh.sample.sample_surface(tm, 100_000)[0]
    opaque = g.means[g.opacities > 0.5].numpy()
    row.update(psnr=float(np.mean(ps)), iou=float(np.mean(ious)), gs_psnr=float(np.mean(gps)),
               gs_iou=float(np.mean(gious)),
               chamfer_pct=100 * chamfer_l1(np.asarray(mesh_pts), spot_points) / diag,
               gs_chamfer_pct=100 * chamfer_l1(opaque, spot_points) / diag)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["fast", "standard"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--keep", help="folder to keep inputs and results in (default: a temporary one)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="option override for every preset")
    args = ap.parse_args()

    import platform

    import torch
    import trimesh

    from backend.commands.demo import ring_cameras, spot_mesh
    from backend.commands.run import parse_set
    from backend.geometry.transforms import save_transforms

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_reconstruct_"))
    spot = spot_mesh()
    lo, hi = spot.vertices.min(0).values, spot.vertices.max(0).values
    center, diag = (lo + hi) / 2, float((hi - lo).norm())
    train = ring_cameras(center, diag, args.size)                       # 2 rings x 8, elevations 15 and 45
    held = ring_cameras(center, diag, args.size, elevations=(30.0,), per_ring=8, offset_deg=22.5 / 2)
    t = time.perf_counter()
    views = root / "views"
    if not (views / "transforms.json").exists():  # --keep reuses earlier renders
        save_transforms(views, train, render_spot_with_bpy(train, args.size, root / "bpy_train"))
    held_imgs = render_spot_with_bpy(held, args.size, root / "bpy_held")
    print(f"bpy renders: {time.perf_counter() - t:.1f} s", flush=True)
    spot_tm = trimesh.Trimesh(spot.vertices.numpy(), spot.faces.numpy(), process=False)
    spot_points = trimesh.sample.sample_surface(spot_tm, 100_000, seed=0)[0]

    rows = []
    for preset in args.presets:
        rows.append(run_preset(preset, views, root / f"out_{preset}", held, held_imgs, spot_points, diag,
                               parse_set(args.set)))
        print(json.dumps(rows[-1]), flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; peak RSS of this process (all presets) {peak_gb:.2f} GB; files in {root}")
    stages = ["load", "fit", "mesh", "uv", "bake", "refine", "export"]
    print("| preset | PSNR mask (dB) | IoU | Chamfer-L1 (% diag) | GS PSNR | GS IoU | GS Chamfer | faces | Gaussians | "
          + " | ".join(f"{s} s" for s in stages) + " | total s |")
    print("|" + "---|" * (10 + len(stages)))
    for r in rows:
        print(f"| {r['preset']} | {r['psnr']:.2f} | {r['iou']:.4f} | {r['chamfer_pct']:.3f} | {r['gs_psnr']:.2f} | "
              f"{r['gs_iou']:.4f} | {r['gs_chamfer_pct']:.3f} | {r['faces']} | {r['gaussians']} | "
              + " | ".join(f"{r['timings'].get(s, 0):.1f}" for s in stages) + f" | {r['timings']['total']:.1f} |")


if __name__ == "__main__":
    main()
