"""Does a DMV3D trained with ``gen3d train dmv3d`` generate its training object from noise, given one unseen view?

    python benchmarks/bench_dmv3d.py                          # trains tiny on Spot (16 views, 64 px), then samples
    python benchmarks/bench_dmv3d.py --run OUT                # samples from an existing run's OUT/weights/dmv3d

Spot is rendered (gen3d.kernels.mesh) from 16 cameras on two rings (elevations 15/45) for training. Held out: 16
other cameras on the same rings rotated by 11.25 degrees, never seen in training. Held-out view 0 is the input;
held-out views 2, 4, 6 and 10 are the noisy views (their cameras' Plücker rays, pure noise in their pixels); the
DDIM sample's final triplane is rendered at the remaining held-out views and compared with the ground truth: PSNR
inside the object's mask ("masked PSNR"), PSNR of whole images on white, and silhouette IoU (opacity and alpha cut at
0.5). The same numbers for the untrained network are the baseline. Each DDIM step's x0 renders (at the noisy views)
are scored against those views' ground truth, which shows whether x0 sharpens as t falls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen3d.backend.commands.demo import make_spot_views, render_views, ring_cameras, spot_mesh  # noqa: E402
from gen3d.backend.geometry.transforms import save_transforms, scan_transforms  # noqa: E402
from gen3d.backend.models.dmv3d import (fresh_dmv3d, load_dmv3d, render_views as render_triplane,  # noqa: E402
                                        sample_triplane)
from gen3d.backend.training import prepare, train  # noqa: E402
from gen3d.backend.training.data import ObjectViews  # noqa: E402
from gen3d.backend.training.recipes.dmv3d import DMV3DTrainConfig, DMV3DViews  # noqa: E402

NOISY = [2, 4, 6, 10]


def held_out(folder: Path, resolution: int) -> Path:
    mesh = spot_mesh()
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    cams = ring_cameras((lo + hi) / 2, float((hi - lo).norm()), resolution, per_ring=8, offset_deg=11.25)
    save_transforms(folder, cams, render_views(mesh, cams))
    return folder


def scores(pred_rgb, pred_alpha, rgb, alpha) -> dict[str, float]:
    mask = alpha > 0.5
    se = (pred_rgb - rgb).pow(2)
    inter = ((pred_alpha > 0.5) & mask).sum().item()
    union = ((pred_alpha > 0.5) | mask).sum().item()
    return {"masked_psnr": float(-10 * torch.log10(se[mask].mean())), "psnr": float(-10 * torch.log10(se.mean())),
            "iou": inter / max(union, 1)}


def evaluate(model, views: DMV3DViews, steps: int, samples: int) -> tuple[dict, list, np.ndarray]:
    S = model.cfg.image_size
    order = [0, *NOISY] + [i for i in range(1, 16) if i not in NOISY]
    item = views.views(0, order, S, torch.zeros(16, 2, dtype=torch.long), S, torch.ones(16))
    V = model.config.views
    per_step = []

    def on_step(i, t, x0):
        gt = item["rgb"][1:V]
        per_step.append(f"t={t}: {float(-10 * torch.log10((x0 - gt).pow(2).mean())):.2f} dB")

    planes = sample_triplane(model, item["rgb"][:1].permute(0, 3, 1, 2), steps, torch.Generator().manual_seed(0),
                             rays=(item["origins"][:V], item["dirs"][:V]), samples_per_ray=samples, on_step=on_step)
    settings = model.render_settings(jitter=False, ray_chunk=1 << 16)
    settings.n_coarse, settings.n_importance = samples - samples // 2, samples // 2
    with torch.no_grad():
        rgb, alpha = render_triplane(model, planes, item["origins"][None, V:], item["dirs"][None, V:], settings)
    sc = scores(rgb[0], alpha[0], item["rgb"][V:], item["alpha"][V:])
    grid = np.concatenate([np.concatenate(list(item["rgb"][V:].numpy()), 1),
                           np.concatenate(list(rgb[0].clamp(0, 1).numpy()), 1)], 0)
    return sc, per_step, grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing gen3d train dmv3d output folder (skip training)")
    ap.add_argument("--steps", type=int, default=500, help="training steps (tiny preset otherwise)")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=16, help="ray samples of the renders")
    ap.add_argument("--png", help="write held-out ground truth (top) and sample renders (bottom) here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_dmv3d_"))
    train_s = None
    if args.run:
        out = Path(args.run)
    else:
        make_spot_views(tmp / "data" / "spot", resolution=64, per_ring=8)
        out = tmp / "run"
        run = prepare("dmv3d", tmp / "data", out, "tiny", {"steps": args.steps, "warmup_steps": 20,
                                                              "eval_every": args.steps, "log_every": 10})
        t0 = time.perf_counter()
        train(run)
        train_s = time.perf_counter() - t0
    model = load_dmv3d(out / "weights" / "dmv3d")
    cfg = DMV3DTrainConfig.resolve("tiny")
    views = DMV3DViews([ObjectViews("spot", scan_transforms(held_out(tmp / "held", 64)))], model.cfg, cfg)
    rows = {}
    for name, m in (("untrained", fresh_dmv3d(model.config, 0).eval()), ("trained", model)):
        sc, per_step, grid = evaluate(m, views, args.sampling_steps, args.samples)
        rows[name] = {**sc, "x0_psnr_by_t": per_step}
        if name == "trained" and args.png:
            from PIL import Image

            Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)).save(args.png)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"train_steps": metrics[-1]["step"], "train_seconds": train_s,
                      "final_loss": metrics[-1]["loss"], **rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
