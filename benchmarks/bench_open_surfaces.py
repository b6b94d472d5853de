"""Benchmark of ``reconstruct`` on open and thin surfaces, before (``surface=closed``: the density iso-surface) and
after (``surface=auto``), plus the shipped Spot.

Test objects with known geometry and texture are generated here: an open box, a hemispherical shell (opening
down), a thin curved sheet, an ellipsoidal shell with window holes (a car body) and a closed ball beside a sheet.
Each is a sheet of thickness ``THICKNESS`` x its size: two layers with outward normals, the outer one textured with
a warm checker, the inner one with a cool one, so a view through a hole or from below shows the inside colours.
Blender renders them (Workbench, flat texture colour, no back-face culling: ``gen3d.backend.blender.unlit``) from
16 cameras on rings at +-35 degrees elevation at 256 x 256 (``--rings``, ``--per-ring``: other input views, in a
fresh ``--keep`` folder); 8 cameras at +-20 degrees between them are held out. Spot uses ``bench_reconstruct``'s
set-up (rings at 15 and 45 degrees, held out at 30).

Per object, ``reconstruct`` runs once with ``surface=auto`` (the whole method, timed: with ``auto`` the fit uses
two-sided surfels from the stereo start); the "before" row meshes the same fitted Gaussians (``gaussians.ply``)
with ``surface=closed`` through the same later stages, so the two rows differ only by the surface extraction (where
``auto`` chose closed, the two rows are the same run). To compare with the default method (a closed extraction of
volumetric Gaussians from the hull start), run this script from the older checkout too. Quality as in
``bench_reconstruct``: PSNR over the reference mask and mask IoU of Blender renders of ``mesh.obj`` at the held-out
cameras, Chamfer-L1 between the mesh and the true (middle) surface in % of the bounding-box diagonal.

``--ceiling`` adds what the input views allow at most: the true mesh, textured by the same bake from the input
views (no fit, no extraction), judged the same way. A target close to that ceiling needs near-exact geometry.

    .venv/bin/python benchmarks/bench_open_surfaces.py [--objects open_box hemisphere sheet window_shell
        ball_and_sheet spot]
        [--preset standard] [--size 256] [--keep DIR] [--rings 35 -35] [--per-ring 8] [--ceiling]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

THICKNESS = 0.004   #: sheet thickness, x the object's bounding-box diagonal
CELL = 128          #: texels per side of each patch's texture cell
OBJECTS = ("open_box", "hemisphere", "sheet", "window_shell", "ball_and_sheet")


# --- test objects: parametric patches (u, v in [0, 1]) -> points [n, n, 3] and a keep mask over the grid cells --
def _box_patches(n: int):
    """An open box (no top), 1 x 1 x 0.7: bottom and four walls."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    o, z = np.zeros_like(u), 0.7 * v
    walls = [np.stack([u - 0.5, o - 0.5, z], -1), np.stack([o + 0.5, u - 0.5, z], -1),
             np.stack([0.5 - u, o + 0.5, z], -1), np.stack([o - 0.5, 0.5 - u, z], -1)]
    bottom = np.stack([v - 0.5, u - 0.5, o], -1)
    return [(p, None) for p in walls + [bottom]]


def _ellipsoid(n: int, radii, theta_max: float):
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    phi, theta = 2 * np.pi * u, theta_max * v   # theta from the top pole
    return np.stack([radii[0] * np.sin(theta) * np.cos(phi), radii[1] * np.sin(theta) * np.sin(phi),
                     radii[2] * np.cos(theta)], -1), u, v


def _hemisphere_patches(n: int):
    """A hemispherical shell of radius 0.6, opening down."""
    p, _, _ = _ellipsoid(n, (0.6, 0.6, 0.6), np.pi / 2)
    return [(p, None)]


def _sheet_patches(n: int):
    """A thin curved sheet 1.4 x 1.0, bent along x and twisted."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    x, y = 1.4 * (u - 0.5), (v - 0.5)
    return [(np.stack([x, y, 0.25 * np.cos(2.2 * x) + 0.15 * x * y], -1), None)]


def _window_shell_patches(n: int):
    """An ellipsoidal shell 1.6 x 1.0 x 0.8 with six window holes (two per side, windscreen, rear window)."""
    p, u, v = _ellipsoid(n, (0.8, 0.5, 0.4), np.pi)
    uc, vc = 0.5 * (u[1:, 1:] + u[:-1, :-1]), 0.5 * (v[1:, 1:] + v[:-1, :-1])
    windows = [(0.25 - 0.07, 0.25 + 0.07, 0.3, 0.5), (0.75 - 0.07, 0.75 + 0.07, 0.3, 0.5),   # side windows
               (0.37 - 0.06, 0.37 + 0.06, 0.3, 0.5), (0.63 - 0.06, 0.63 + 0.06, 0.3, 0.5),
               (0.9, 1.0, 0.25, 0.42), (0.0, 0.1, 0.25, 0.42), (0.45, 0.55, 0.25, 0.42)]     # front, rear
    hole = np.zeros_like(uc, dtype=bool)
    for u0, u1, v0, v1 in windows:
        hole |= (uc >= u0) & (uc <= u1) & (vc >= v0) & (vc <= v1)
    return [(p, ~hole)]


def _ball_and_sheet_patches(n: int):
    """A closed ball of radius 0.4 and, 0.25 beside it, a bent sheet 0.9 x 0.8: a closed body next to an open part
    (``auto`` should mesh each its own way)."""
    ball, _, _ = _ellipsoid(n, (0.4, 0.4, 0.4), np.pi)
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    x, y = 0.9 * (u - 0.5), 0.8 * (v - 0.5)
    sheet = np.stack([x + 0.6, y, 0.15 * np.cos(3.0 * x) + 0.1 * x * y], -1)
    return [(ball + np.array([-0.55, 0.0, 0.0]), None), (sheet, None)]


PATCHES = {"open_box": _box_patches, "hemisphere": _hemisphere_patches, "sheet": _sheet_patches,
           "window_shell": _window_shell_patches, "ball_and_sheet": _ball_and_sheet_patches}


def _pattern(u: np.ndarray, v: np.ndarray, warm: bool) -> np.ndarray:
    """A 6 x 6 two-colour checker with a smooth gradient: warm (outer side) or cool (inner side) ``[..., 3]``."""
    check = ((np.floor(6 * u) + np.floor(6 * v)) % 2)[..., None]
    a, b = (np.array([0.85, 0.35, 0.2]), np.array([0.95, 0.8, 0.3])) if warm else \
        (np.array([0.2, 0.45, 0.85]), np.array([0.3, 0.8, 0.6]))
    return np.clip(a + (b - a) * check + 0.1 * (u - 0.5)[..., None], 0, 1)


def make_object(name: str, n: int = 65):
    """``(TexturedMesh of the two-layer sheet, trimesh of its middle surface)`` in the Z-up world."""
    import torch
    import trimesh

    from gen3d.backend.representations.mesh import TexturedMesh

    patches = PATCHES[name](n)
    cells = 2 * len(patches)
    tex_u, tex_v = np.meshgrid((np.arange(CELL) + 0.5) / CELL, 1 - (np.arange(CELL) + 0.5) / CELL, indexing="xy")
    texture = np.concatenate([_pattern(tex_u, tex_v, warm=k % 2 == 0) for k in range(cells)], 1)
    middles, verts, faces, uvs = [], [], [], []
    ij = np.arange(n * n).reshape(n, n)
    quads = np.stack([ij[:-1, :-1], ij[1:, :-1], ij[1:, 1:], ij[:-1, 1:]], -1)          # [n-1, n-1, 4]
    grid_u, grid_v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    diag = None
    for k, (p, keep) in enumerate(patches):
        q = quads.reshape(-1, 4) if keep is None else quads[keep]
        tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
        mid = trimesh.Trimesh(p.reshape(-1, 3), tri, process=False)
        middles.append(mid)
    whole = trimesh.util.concatenate(middles)
    for mid in middles:  # outer side (warm, first layer) facing away from the object's centre
        if (np.asarray(mid.face_normals) * (mid.triangles_center - whole.vertices.mean(0))).sum(-1).mean() < 0:
            mid.faces = mid.faces[:, ::-1]
    lo, hi = whole.bounds
    diag = float(np.linalg.norm(hi - lo))
    half = 0.5 * THICKNESS * diag
    count = 0
    for k, mid in enumerate(middles):
        normals = np.asarray(mid.vertex_normals)
        inset = 1.5 / CELL  # keep bilinear lookups inside the cell
        uv = np.stack([grid_u.ravel(), grid_v.ravel()], -1) * (1 - 2 * inset) + inset
        for side, sign in ((0, 1.0), (1, -1.0)):
            verts.append(mid.vertices + sign * half * normals)
            faces.append((mid.faces if sign > 0 else mid.faces[:, ::-1]) + count)
            cell = 2 * k + side
            uvs.append(np.stack([(cell + uv[:, 0]) / cells, uv[:, 1]], -1))
            count += len(mid.vertices)
    mesh = TexturedMesh(torch.from_numpy(np.concatenate(verts)).float(), torch.from_numpy(np.concatenate(faces)),
                        None, torch.from_numpy(np.concatenate(uvs)).float(), torch.from_numpy(texture).float())
    return mesh, whole


# --- benchmark --------------------------------------------------------------------------------------------------
def prepare(name: str, root: Path, size: int, rings: tuple[float, ...] = (35.0, -35.0), per_ring: int = 8):
    """Render the object's training views (``per_ring`` on each of the ``rings``' elevations; Spot: its own) and
    held-out views with bpy; returns ``(views folder, held cameras, held images, true surface points, diagonal)``."""
    import torch
    import trimesh

    from bench_reconstruct import render_with_bpy
    from gen3d.backend.commands.demo import SPOT_DIR, ring_cameras, spot_mesh
    from gen3d.backend.geometry.transforms import save_transforms
    from gen3d.backend.representations.mesh import save_obj

    folder = root / name
    if name == "spot":
        mesh = spot_mesh()
        obj, tex = SPOT_DIR / "spot_triangulated.obj", SPOT_DIR / "spot_texture.png"
        truth = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
        rings, per_ring, held_rings = (15.0, 45.0), 8, (30.0,)
    else:
        mesh, truth = make_object(name)
        folder.mkdir(parents=True, exist_ok=True)
        save_obj(mesh, folder / "truth.obj")
        obj, tex = folder / "truth.obj", folder / "truth.png"
        held_rings = (20.0, -20.0)
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    center, diag = (lo + hi) / 2, float((hi - lo).norm())
    train = ring_cameras(center, diag, size, elevations=rings, per_ring=per_ring)
    held = ring_cameras(center, diag, size, elevations=held_rings, per_ring=8 // len(held_rings),
                        offset_deg=22.5 / 2)
    views = folder / "views"
    if not (views / "transforms.json").exists():
        save_transforms(views, train, render_with_bpy(obj, tex, train, size, folder / "bpy_train"))
    held_imgs = render_with_bpy(obj, tex, held, size, folder / "bpy_held")
    points = trimesh.sample.sample_surface(truth, 100_000, seed=0)[0]
    return views, held, held_imgs, torch.as_tensor(points).numpy(), diag


def ceiling(name: str, views: Path, out: Path, held, held_imgs) -> float:
    """Mean held-out PSNR of the true mesh of ``name`` textured by ``bake_texture`` from the input ``views``; its
    renders and files go to ``out``."""
    from bench_reconstruct import image_metrics, render_with_bpy

    from gen3d.backend.commands.demo import spot_mesh
    from gen3d.backend.geometry.transforms import load_transforms
    from gen3d.backend.pipelines.stages.bake_texture import bake_texture
    from gen3d.backend.pipelines.stages.export import export_obj
    from gen3d.backend.representations.mesh import TexturedMesh

    truth = spot_mesh() if name == "spot" else make_object(name)[0]
    untextured = TexturedMesh(truth.vertices, truth.faces, None, truth.uvs, None)
    texture, _ = bake_texture(untextured, *load_transforms(views))
    out.mkdir(parents=True, exist_ok=True)
    export_obj(out, TexturedMesh(truth.vertices, truth.faces, None, truth.uvs, texture))
    renders = render_with_bpy(out / "mesh.obj", out / "mesh.png", held, held.width, out / "bpy_held")
    return float(np.mean([image_metrics(r[..., :3], r[..., 3:], ref)[0] for r, ref in zip(renders, held_imgs)]))


def from_same_fit(auto_out: Path, views: Path, out: Path, preset: str, surface: str = "closed",
                  overrides: dict | None = None) -> dict:
    """Another row on the Gaussians of the ``auto`` run, through the same later stages: ``surface=closed`` is the
    "before" row, ``open`` shows the fused surface where ``auto`` did not choose it."""
    import torch

    from gen3d.backend.geometry.transforms import load_transforms
    from gen3d.backend.pipelines.base import RunContext
    from gen3d.backend.pipelines.reconstruct import ReconstructOptions, mesh_from_gaussians
    from gen3d.backend.pipelines.stages.export import export_results
    from gen3d.backend.representations.gaussians import load_ply

    opts = ReconstructOptions(**{**ReconstructOptions.presets[preset], **(overrides or {}), "surface": surface})
    cameras, images = load_transforms(views)
    gaussians = load_ply(auto_out / "gaussians.ply")
    ctx = RunContext(out_dir=out)
    out.mkdir(parents=True, exist_ok=True)
    mesh = mesh_from_gaussians(gaussians, cameras, images, opts, ctx, torch.Generator().manual_seed(0))
    with ctx.stage("export"):
        export_results(out, mesh, gaussians, preview_size=opts.preview_size)
    return {"timings": dict(ctx.timings), "metrics": dict(ctx.cache.get("_metrics", {}))}


def surfels_on(mesh, count: int = 40_000, seed: int = 0):
    """Oracle Gaussians: flat opaque discs on the true (two-layer) surface, coloured from its texture; isolate the
    surface extraction from the fit."""
    import torch
    import trimesh

    from gen3d.backend.pipelines.stages.surfels import quats_from_normals
    from gen3d.backend.representations.gaussians import Gaussians

    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    pts, face = trimesh.sample.sample_surface(tm, count, seed=seed)
    bary = trimesh.triangles.points_to_barycentric(tm.triangles[face], pts)
    uv = (mesh.uvs[mesh.faces[torch.from_numpy(face)]] * torch.from_numpy(bary).float()[..., None]).sum(1)
    H, W = mesh.texture.shape[:2]
    colors = mesh.texture[((1 - uv[:, 1]) * H).long().clamp(0, H - 1), (uv[:, 0] * W).long().clamp(0, W - 1)]
    q = quats_from_normals(torch.from_numpy(np.asarray(tm.face_normals)[face]).float())
    spacing = math.sqrt(tm.area / count)
    scales = torch.tensor([spacing, spacing, 0.05 * spacing]).expand(count, 3)
    return Gaussians.from_activated(torch.from_numpy(pts).float(), scales, q,
                                    torch.full((count,), 0.95), colors)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", nargs="+", default=list(OBJECTS) + ["spot"])
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--keep", help="folder to keep inputs and results in (default: a temporary one)")
    ap.add_argument("--rings", type=float, nargs="+", default=[35.0, -35.0], help="input view elevations")
    ap.add_argument("--per-ring", type=int, default=8, help="input views on each ring")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="option override for every run")
    ap.add_argument("--oracle", action="store_true", help="Gaussians laid on the true surface instead of fitted "
                    "ones: judges the surface extraction alone")
    ap.add_argument("--forced-open", action="store_true", help="also mesh with surface=open where auto chose closed")
    ap.add_argument("--ceiling", action="store_true", help="also the true mesh baked from the input views: the "
                    "most the views allow")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from bench_reconstruct import evaluate, run_preset

    from gen3d.backend.commands.run import parse_set

    sets = parse_set(args.set)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_open_surfaces_"))
    rows = []
    for name in args.objects:
        t = time.perf_counter()
        views, held, held_imgs, points, diag = prepare(name, root, args.size, tuple(args.rings), args.per_ring)
        print(f"{name}: bpy renders {time.perf_counter() - t:.1f} s", flush=True)
        auto = root / name / "out_auto"
        if args.oracle:  # no fit: the oracle Gaussians stand in for gaussians.ply
            from gen3d.backend.representations.gaussians import save_ply
            auto.mkdir(parents=True, exist_ok=True)
            save_ply(surfels_on(make_object(name)[0]), auto / "gaussians.ply")
            oracle = from_same_fit(auto, views, auto, args.preset, "auto", sets)
            (auto / "meta.json").write_text(json.dumps({"metrics": oracle["metrics"]}))
            run = {"timings": {**oracle["timings"], "fit": 0.0, "total": sum(oracle["timings"].values())}}
        else:
            run = run_preset(args.preset, views, auto, {**sets, "surface": "auto"})
        meta = json.loads((auto / "meta.json").read_text())
        after = {**evaluate(auto, held, held_imgs, points, diag), "total_s": run["timings"]["total"],
                 "surface": meta.get("metrics", {}).get("surface"),
                 "thin_share": meta.get("metrics", {}).get("thin_share")}
        if after["surface"] == "closed":  # the same mesh: no second run
            before, before_run = {**after}, {"timings": {k: v for k, v in run["timings"].items()
                                                         if k not in ("load", "fit", "total")}}
        else:
            closed = root / name / "out_closed"
            before_run = from_same_fit(auto, views, closed, args.preset, "closed", sets)
            before = {**evaluate(closed, held, held_imgs, points, diag),
                      "total_s": run["timings"].get("load", 0) + run["timings"]["fit"]
                      + sum(before_run["timings"].values())}
        if args.ceiling:
            after["ceiling_psnr"] = ceiling(name, views, root / name / "out_ceiling", held, held_imgs)
        rows.append((name, before, after, run["timings"], before_run["timings"]))
        print(json.dumps({"object": name, "before": before, "after": after, "timings_after": run["timings"],
                          "timings_before_after_fit": before_run["timings"]}), flush=True)
        if args.forced_open and after["surface"] != "open":
            forced = root / name / "out_open"
            open_run = from_same_fit(auto, views, forced, args.preset, "open", sets)
            opened = evaluate(forced, held, held_imgs, points, diag)
            print(json.dumps({"object": name, "forced_open": opened, "timings": open_run["timings"]}), flush=True)

    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; preset {args.preset} {sets or ''}"
          f"{' oracle Gaussians' if args.oracle else ''}; files in {root}")
    print("| object | surface (auto) | thin share | PSNR before | PSNR after | IoU before | IoU after "
          "| Chamfer % before | Chamfer % after | GS PSNR | PSNR ceiling | mesh s before | mesh s after "
          "| total s before | total s after |")
    print("|" + "---|" * 15)
    for name, b, a, ta, tb in rows:
        print(f"| {name} | {a['surface']} | {a['thin_share']} | {b['psnr']:.2f} | {a['psnr']:.2f} | {b['iou']:.4f} | "
              f"{a['iou']:.4f} | {b['chamfer_pct']:.3f} | {a['chamfer_pct']:.3f} | {a['gs_psnr']:.2f} | "
              f"{a.get('ceiling_psnr', math.nan):.2f} | {tb.get('mesh', math.nan):.1f} | "
              f"{ta.get('mesh', math.nan):.1f} | {b['total_s']:.1f} | {a['total_s']:.1f} |")


if __name__ == "__main__":
    main()
