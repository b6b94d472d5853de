"""SweetDreamer evidence and speed on this machine.

    python benchmarks/bench_sweetdreamer.py                 # the shape pull (tiny AGP overfit to Spot) + speed
    python benchmarks/bench_sweetdreamer.py --skip-speed    # the shape pull only

1. **Shape pull.** ``dataset multiview --passes rgba,ccm`` renders Spot (WORKBENCH, ``--views`` random views at 32
   px, SweetDreamer's elevations -10..45°, distance 1.8-2.2); ``train agp --preset tiny`` overfits the tiny AGP
   (initialised from the tiny SD 2.1) to them for ``--train-steps`` steps at ``--resolution``; then Gaussians from
   DreamGaussian's ball (radius 0.5) are optimised by CCM-SDS from that AGP **alone** (no appearance prior, prompt
   "a 3D model of a cow", weight 20, the method's t anneal and box updates) for ``--steps`` steps, at each
   ``--guidance-scale``. Controls: the untrained tiny AGP, and the oracle AGP of ``tests/support/oracle.py`` (its
   x0 is Spot's exact CCM at the conditioned camera: the best any AGP can do). Scores (:func:`shape_scores`):
   silhouette IoU from 8 held-out views and the Chamfer distance between the surface the method would extract and
   Spot's (world units; Spot's longest side is 1).
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


def spot_mesh(folder: Path):
    """Spot in the renders' world (trimesh's OBJ, Y up -> Z up, the recorded normalisation)."""
    import trimesh

    meta = json.loads((folder / "transforms.json").read_text())["normalization"]
    mesh = trimesh.load(folder.parents[2] / "models" / "cow" / "spot.obj", force="mesh", process=False)
    v = mesh.vertices
    mesh.vertices = meta["scale"] * (np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1) + np.array(meta["offset"]))
    return mesh


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the two mean nearest-neighbour distances between point sets ``a [N,3]`` and ``b [M,3]``."""
    from scipy.spatial import cKDTree

    return float((cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2)


#: held-out (elevation, azimuth) views for the silhouette score: the sides, front, back, above, below
HELD_OUT = [(0.0, 90.0), (0.0, -90.0), (0.0, 180.0), (0.0, 0.0), (40.0, 135.0), (30.0, -60.0), (60.0, 0.0),
            (-10.0, 45.0)]


def shape_scores(g, mesh) -> dict:
    """The Gaussians against Spot: silhouette IoU (alpha > 0.5 against the mesh's coverage) from the held-out views
    (mean and worst), and the symmetric Chamfer distance between the surface of the mesh the method extracts from
    them (:func:`extract_mesh`, 64 voxels) and Spot's surface (20k samples each; world units, Spot's longest side
    is 1). Gaussian centres are not scored: a perfect solid Spot of centres is 0.042 from Spot's surface."""
    import trimesh

    from gen3d.backend.geometry.cameras import orbit_cameras
    from gen3d.backend.pipelines.stages.ccm_render import mesh_ccm
    from gen3d.backend.pipelines.stages.extract_mesh import MeshExtractConfig, extract_mesh
    from gen3d.backend.pipelines.stages.fit_gaussians import render_gaussians

    el, az = (torch.tensor(x) for x in zip(*HELD_OUT))
    cams = orbit_cameras(el, az, 2.0, 49.1, 48, 48)
    with torch.no_grad():
        _, alpha, _ = render_gaussians(g, cams, torch.ones(len(cams), 3))
        _, covered = mesh_ccm(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), cams,
                              torch.zeros(3), torch.ones(3))
    a, b = alpha > 0.5, covered > 0.5
    iou = ((a & b).sum((1, 2, 3)) / (a | b).sum((1, 2, 3)).clamp_min(1)).numpy()
    surface, _ = trimesh.sample.sample_surface(mesh, 20_000, seed=0)
    extracted = extract_mesh(g.means, g.quats, g.scales, g.opacities, MeshExtractConfig(resolution=64, target_faces=0))
    points, _ = trimesh.sample.sample_surface(extracted, 20_000, seed=0)
    return {"iou_mean": float(iou.mean()), "iou_min": float(iou.min()), "mesh_chamfer": chamfer(points, surface)}


def pull(prior, steps: int, seed: int = 0, num_pts: int = 2000, size: int = 32):
    """Gaussians from the ball optimised by CCM-SDS from ``prior`` alone (the method's sampler, t anneal, weight 20
    and box updates; no appearance prior); returns them."""
    from gen3d.backend.guidance.schedules import Uniform
    from gen3d.backend.pipelines.base import RunContext
    from gen3d.backend.pipelines.dreamgaussian_guidance import Guide, OrbitSampler
    from gen3d.backend.pipelines.stages.ccm_guidance import CCMGuidance
    from gen3d.backend.pipelines.stages.distill_gaussians import GaussianDistillOptions, distill_gaussians
    from gen3d.backend.pipelines.sweetdreamer import SweetDreamerOptions

    sd = SweetDreamerOptions()
    opts = GaussianDistillOptions(iters=steps, num_pts=num_pts, render_sizes=(size,) * 3, position_lr_max_steps=steps,
                                  density_start_iter=0, densification_interval=max(steps // 10, 1))
    gen = torch.Generator().manual_seed(seed)
    sampler = OrbitSampler(0.0, sd.radius, sd.fovy, sd.min_ver, sd.max_ver)
    schedule = Uniform(0.02, 0.98, t_max_end=sd.t_max_end, anneal_end=sd.t_anneal_end)
    extra = CCMGuidance(prior, PROMPT, "", sampler, schedule, gen, weight=lambda progress: sd.agp_weight_early,
                        init_radius=opts.init_radius, box_every=max(steps // 30, 1))
    g, _ = distill_gaussians(opts, Guide([], schedule, gen), sampler, gen, RunContext(Path(tempfile.gettempdir())),
                             extra_loss=extra)
    return g


def shape_pull(args) -> dict:
    from gen3d.backend import weights
    from gen3d.backend.guidance.priors.agp import AGPPrior
    from gen3d.backend.pipelines.stages.distill_gaussians import ball_gaussians
    from gen3d.backend.representations.mesh import TexturedMesh
    from tests.support.oracle import OracleAGP

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights.write_tiny("sd21-base", tmp / "w")
        weights.write_tiny("agp", tmp / "w")
        t0 = time.perf_counter()
        folder = render_spot(tmp, args.views, max(32, args.resolution))  # area-resized by the recipe
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen3d("train", "agp", "--data", str(tmp / "renders"), "--out", str(tmp / "run"), "--preset", "tiny",
              "--set", f"steps={args.train_steps}", "--set", f"resolution={args.resolution}",
              "--set", "batch_size=8", "--set", f"eval_every={args.train_steps}",
              "--set", f"checkpoint_every={args.train_steps}", "--set", "warmup_steps=20",
              env={"GEN3D_WEIGHTS_DIR": str(tmp / "w")})
        t_train = time.perf_counter() - t0
        losses = [json.loads(x)["loss"] for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        mesh = spot_mesh(folder)
        first = args.guidance_scale[0]
        priors = {**{(f"trained_agp_cfg{s:g}", s): AGPPrior(tmp / "run" / "weights" / "agp")
                     for s in args.guidance_scale},
                  (f"untrained_agp_cfg{first:g}", first): AGPPrior(tmp / "w" / "agp"),
                  ("oracle_agp", first): OracleAGP(args.resolution, 49.1, TexturedMesh(mesh.vertices, mesh.faces))}
        results = {"ball": shape_scores(ball_gaussians(2000, 0.5, torch.Generator().manual_seed(args.seed)), mesh)}
        t0 = time.perf_counter()
        for (name, scale), prior in priors.items():
            prior.guidance_scale = scale
            results[name] = shape_scores(pull(prior, args.steps, args.seed, size=args.resolution), mesh)
            print(name, results[name], flush=True)
        t_pull = (time.perf_counter() - t0) / len(priors)
    k = max(len(losses) // 10, 1)
    return {"train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
            **{f"{metric}_{name}": value for name, scores in results.items() for metric, value in scores.items()},
            "render_s": t_render, "train_s": t_train, "pull_s_each": t_pull}


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
    p.add_argument("--resolution", type=int, default=16, help="render, AGP and CCM-SDS size")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, default=200, help="Gaussian optimisation steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0, 21.0],
                   help="AGP CFG scales of the trained AGP's pulls (the first also for the controls)")
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
