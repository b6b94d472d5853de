"""SweetDreamer evidence and speed on this machine.

    python benchmarks/bench_sweetdreamer.py                 # the shape pull (tiny AGP overfit to Spot) + speed
    python benchmarks/bench_sweetdreamer.py --skip-speed    # the shape pull only

1. **Shape pull.** ``dataset multiview --passes rgba,ccm`` renders Spot (WORKBENCH, ``--views`` random views at
   ``--resolution``, SweetDreamer's elevations -10..45°, distance 1.8-2.2); ``train agp --preset tiny`` overfits the
   tiny AGP (initialised from the tiny SD 2.1) to them for ``--train-steps`` steps; then Gaussians from
   DreamGaussian's ball (radius 0.5) are optimised by CCM-SDS from that AGP **alone** (no appearance prior, prompt
   "a 3D model of a cow", the method's t anneal and box updates) for ``--steps`` steps. Reported: the symmetric
   Chamfer distance (mean of both directions) between the opaque Gaussians' centres and points sampled on Spot's
   surface, before and after, and the same for an untrained AGP (the control): in the canonical frame of each
   set's own box (the AGP constrains shape only up to a per-axis scale and shift: the CCM is normalised per axis)
   and in world units (Spot's longest side is 1).
2. **Speed** (``--skip-speed`` to skip; about 18 GB of memory): one optimiser step of the ``agp`` recipe and one
   CCM-SDS step of the method at real size (SD 2.1's UNet shape at 64x64 with 4 channels and the camera
   embedding, random weights, batch 1 for the method and ``--batch`` for the recipe), on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "a 3D model of a cow"


def gen3d(*args: str, env: dict | None = None) -> None:
    r = subprocess.run([sys.executable, "-m", "gen3d", *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})})
    if r.returncode:
        raise SystemExit(f"gen3d {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def render_spot(out: Path, views: int, resolution: int) -> Path:
    """Spot's RGBA + CCM renders; returns the object folder."""
    from gen3d.backend.commands.demo import SPOT_DIR

    models = out / "models" / "cow"
    models.mkdir(parents=True, exist_ok=True)
    (models / "spot.obj").write_bytes((SPOT_DIR / "spot_triangulated.obj").read_bytes())
    gen3d("dataset", "multiview", "--models", str(out / "models"), "--out", str(out / "renders"),
          "--views-per-model", str(views), "--resolution", str(resolution), "--passes", "rgba,ccm",
          "--elevation", "-10", "45", "--distance", "1.8", "2.2", "--engine", "WORKBENCH", "--seed", "0")
    return out / "renders" / "cow" / "spot"


def spot_surface(folder: Path, n: int = 20_000) -> torch.Tensor:
    """Points on Spot's surface in the renders' world (trimesh's OBJ, Y up -> Z up, the recorded normalisation)."""
    import trimesh

    meta = json.loads((folder / "transforms.json").read_text())["normalization"]
    mesh = trimesh.load(folder.parents[2] / "models" / "cow" / "spot.obj", force="mesh", process=False)
    v = mesh.vertices
    mesh.vertices = meta["scale"] * (np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1) + np.array(meta["offset"]))
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    return torch.tensor(points, dtype=torch.float32)


def chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of the two mean nearest-neighbour distances between point sets ``a [N,3]`` and ``b [M,3]``."""
    from scipy.spatial import cKDTree

    da, _ = cKDTree(b.numpy()).query(a.numpy())
    db, _ = cKDTree(a.numpy()).query(b.numpy())
    return float((da.mean() + db.mean()) / 2)


def canonical(points: torch.Tensor) -> torch.Tensor:
    """``points [N,3]`` in the CCM frame of their own box (0.5 % / 99.5 % quantiles per axis, margin 1.1): the AGP
    sees shapes only up to a per-axis scale and shift, so its pull is measured there."""
    from gen3d.backend.geometry.ccm import canonical_coordinates, ccm_frame

    lo, hi = torch.quantile(points, 0.005, dim=0), torch.quantile(points, 0.995, dim=0)
    return canonical_coordinates(points, *(torch.tensor(v, dtype=torch.float32) for v in ccm_frame(lo, hi)))


def opaque_centres(g, min_opacity: float = 0.5) -> torch.Tensor:
    keep = g.opacities >= min_opacity
    return g.means[keep].detach() if int(keep.sum()) >= 16 else g.means.detach()


def pull(agp_folder: Path, steps: int, seed: int = 0, guidance_scale: float = 21.0,
         num_pts: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussians from the ball optimised by CCM-SDS alone: ``(centres before, opaque centres after)``."""
    from gen3d.backend.guidance.priors.agp import AGPPrior
    from gen3d.backend.guidance.schedules import Uniform
    from gen3d.backend.pipelines.base import RunContext
    from gen3d.backend.pipelines.dreamgaussian_guidance import Guide, OrbitSampler
    from gen3d.backend.pipelines.stages.ccm_guidance import CCMGuidance
    from gen3d.backend.pipelines.stages.distill_gaussians import (GaussianDistillOptions, ball_gaussians,
                                                                  distill_gaussians)
    from gen3d.backend.pipelines.sweetdreamer import SweetDreamerOptions

    sd = SweetDreamerOptions()
    opts = GaussianDistillOptions(iters=steps, num_pts=num_pts, render_sizes=(32, 32, 32), position_lr_max_steps=steps,
                                  density_start_iter=0, densification_interval=max(steps // 10, 1))
    prior = AGPPrior(agp_folder)
    prior.guidance_scale = guidance_scale
    gen = torch.Generator().manual_seed(seed)
    sampler = OrbitSampler(0.0, sd.radius, sd.fovy, sd.min_ver, sd.max_ver)
    schedule = Uniform(0.02, 0.98, t_max_end=sd.t_max_end, anneal_end=sd.t_anneal_end)
    extra = CCMGuidance(prior, PROMPT, "", sampler, schedule, gen, init_radius=opts.init_radius,
                        box_every=max(steps // 30, 1))
    before = ball_gaussians(num_pts, opts.init_radius, torch.Generator().manual_seed(seed)).means
    g, _ = distill_gaussians(opts, Guide([], schedule, gen), sampler, gen, RunContext(Path(tempfile.gettempdir())),
                             extra_loss=extra)
    return before, opaque_centres(g)


def shape_pull(args) -> dict:
    from gen3d.backend import weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights.write_tiny("sd21-base", tmp / "w")
        weights.write_tiny("agp", tmp / "w")
        t0 = time.perf_counter()
        folder = render_spot(tmp, args.views, args.resolution)
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen3d("train", "agp", "--data", str(tmp / "renders"), "--out", str(tmp / "run"), "--preset", "tiny",
              "--set", f"steps={args.train_steps}", "--set", f"resolution={args.resolution}",
              "--set", "batch_size=8", "--set", f"eval_every={args.train_steps}",
              "--set", f"checkpoint_every={args.train_steps}", "--set", "warmup_steps=20",
              env={"GEN3D_WEIGHTS_DIR": str(tmp / "w")})
        t_train = time.perf_counter() - t0
        losses = [json.loads(x)["loss"] for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        surface = spot_surface(folder)
        t0 = time.perf_counter()
        ball, trained = pull(tmp / "run" / "weights" / "agp", args.steps, args.seed)
        t_pull = time.perf_counter() - t0
        _, control = pull(tmp / "w" / "agp", args.steps, args.seed)
    k = max(len(losses) // 10, 1)
    target = canonical(surface)
    return {"train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
            **{f"canonical_chamfer_{name}": chamfer(canonical(points), target)
               for name, points in (("ball", ball), ("trained_agp", trained), ("untrained_agp", control))},
            **{f"world_chamfer_{name}": chamfer(points, surface)
               for name, points in (("ball", ball), ("trained_agp", trained), ("untrained_agp", control))},
            "gaussians_kept": len(trained), "render_s": t_render, "train_s": t_train, "pull_s": t_pull}


def speed(args) -> dict:
    """Seconds per step at real size with random weights."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from gen3d.backend.guidance import tiny
    from gen3d.backend.models.agp import AGPUNet, save_agp
    from gen3d.backend.training.recipes.agp import AGPWithLoss

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_dreamgaussian import SD21_UNET

    torch.manual_seed(0)
    unet = AGPUNet(**SD21_UNET, in_channels=4)
    # the real text encoder runs once per prompt (cached) in the method and under no_grad in the recipe: a small
    # one with SD 2.1's 1024 width keeps the UNet's cross-attention at real size
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=1024,
                                        num_hidden_layers=1, num_attention_heads=16, max_position_embeddings=77))
    scheduler = DDIMScheduler(**tiny._SD_SCHEDULER)
    out = {}
    model = AGPWithLoss(unet.train(), text, scheduler.alphas_cumprod)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b = args.batch
    batch = {"x0": torch.rand(b, 4, 64, 64) * 2 - 1, "camera": torch.randn(b, 12),
             "input_ids": torch.randint(0, 49408, (b, 77)), "t": torch.randint(0, 1000, (b,)),
             "noise": torch.randn(b, 4, 64, 64)}
    times = []
    for _ in range(2):  # the first step warms up
        t0 = time.perf_counter()
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    out[f"recipe_step_s_batch{b}"] = times[-1]
    print(f"recipe_step_s_batch{b:<16} {times[-1]:.4g}", flush=True)
    del model, opt, batch  # AdamW's moments: free them before the method's copy of the UNet is loaded
    unet.zero_grad(set_to_none=True)

    from gen3d.backend.guidance.priors.agp import AGPPrior
    from gen3d.backend.guidance.schedules import Uniform
    from gen3d.backend.pipelines.dreamgaussian_guidance import OrbitSampler
    from gen3d.backend.pipelines.stages.ccm_guidance import CCMGuidance
    from gen3d.backend.pipelines.stages.distill_gaussians import ball_gaussians

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "agp"
        tiny.write_tokenizer(folder / "tokenizer", pad_token="!")
        tiny._text_encoder(tiny._vocab_size(folder / "tokenizer")).save_pretrained(folder / "text_encoder")
        save_agp(folder, unet.eval(), scheduler)
        prior = AGPPrior(folder)
        # the tiny CLIP's 32-wide states replaced by SD 2.1's width for the real UNet's cross-attention
        prior.text.embed = lambda texts: torch.zeros(len(texts), 77, 1024)
        gen = torch.Generator().manual_seed(0)
        g = ball_gaussians(5000, 0.5, gen)
        for k in ("means", "quats", "log_scales", "opacity_logits", "sh"):
            getattr(g, k).requires_grad_(True)
        ccm = CCMGuidance(prior, PROMPT, "", OrbitSampler(0.0, 2.0, 49.1, -45, 10), Uniform(0.02, 0.98), gen)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            loss, _ = ccm(g, 0.5)
            loss.backward()
            times.append(time.perf_counter() - t0)
        out["method_ccm_sds_step_s"] = times[-1]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=300, help="Gaussian optimisation steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2, help="recipe batch for the speed row (BatchNorm: at least 2)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-pull", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = {}
    if not args.skip_pull:
        results.update(shape_pull(args))
    if not args.skip_speed:
        results.update(speed(args))
    for k, v in results.items():
        print(f"{k:<28} {v:.4g}" if isinstance(v, float) else f"{k:<28} {v}")


if __name__ == "__main__":
    main()
