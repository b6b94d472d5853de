"""Does a DMV3D trained with ``gen3d train dmv3d`` generate its training objects from noise, given one unseen view?

    python benchmarks/bench_dmv3d.py                  # trains the bench config on 3 objects (16 views, 64 px):
                                                      # 12000 steps, then resumed to 22000 (--steps)
    python benchmarks/bench_dmv3d.py --config tiny    # the CI architecture instead
    python benchmarks/bench_dmv3d.py --run OUT        # samples from an existing run's OUT/weights/dmv3d
    python benchmarks/bench_dmv3d.py --text --steps 12000   # the text variant on CAPTIONS (a tiny random CLIP)
    python benchmarks/bench_dmv3d.py --free-fit       # can the render setting represent the objects at all?
    python benchmarks/bench_dmv3d.py --speed [CONFIG ...]  # per config: seconds and peak memory of a step

Objects: Spot (textured), a textured 1.0 x 0.5 x 0.3 box and a ball coloured by direction, each rendered
(gen3d.kernels.mesh) from 16 cameras on two rings (elevations 15/45) for training. Held out: 16 other cameras on
the same rings rotated by 11.25 degrees, never seen in training. Per object, held-out view 0 is the input; held-out
views 2, 4, 6 and 10 are the noisy views (their cameras' Plücker rays, pure noise in their pixels); the DDIM sample's
final triplane is rendered at the remaining 11 held-out views and compared with the ground truth: PSNR inside the
object's mask ("masked PSNR"), PSNR of whole images on white, and silhouette IoU (opacity and alpha cut at 0.5). The
same numbers for the untrained network are the baseline (its faint uniform fog stays under opacity 0.5 in the 0.6
box: IoU 0). ``iou_vs`` scores each sample's silhouettes against every
object's held-out silhouettes (the sample should match the object whose view it was given). Each DDIM step's x0
renders (at the noisy views) are scored against those views' ground truth (PSNR, whole images), which shows whether
x0 sharpens as t falls. Three unconditional samples (blank input view, seeds 0-2) are scored against every object,
their silhouettes at the end and their x0 renders at each step. ``--free-fit`` instead fits a free triplane (no
network) per object and config: the ceiling of the render setting itself.

``--text`` trains (or, with ``--run``, reads) the text variant: the recipe's world frame (each object in its own
world pose, the blank input slot at the world's front) and :data:`CAPTIONS`. Each caption is sampled at each
guidance of :data:`GUIDANCE` with seeds 0-2 at the same held-out cameras (its input slot the canonical camera) and
scored against every object's silhouettes (which object it is) and its own object's pixels; the empty caption is
the unconditional path. The untrained network per caption is the baseline.

``--speed`` prints a table per config, batch 1, fresh weights: the denoiser network alone (``forward_planes``), one
DDIM sampling step (network + x0 render at the 4 noisy views, the config's ray samples) and, for ``tiny`` and
``bench``, one training step (the recipe's forward, backward, AdamW; ``tiny`` preset with whole images, ``bench``
with :data:`BENCH`, i.e. 256 rays a view), each with its peak resident memory (measured in a forked process).
``small`` and ``base`` get no training row: with whole images the recipe renders 7 x 256^2 rays x 96-128 samples
under autograd, tens of GB (``rays_per_view`` would cut that; not measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen3d.backend import weights  # noqa: E402
from gen3d.backend.commands.demo import render_views, ring_cameras, spot_mesh  # noqa: E402
from gen3d.backend.geometry.transforms import save_transforms, scan_transforms  # noqa: E402
from gen3d.backend.models.dmv3d import (CONFIGS, DMV3D, DMV3DConfig, fresh_dmv3d, load_dmv3d,  # noqa: E402
                                        plucker_rays, render_views as render_triplane, sample_triplane,
                                        view_cameras)
from gen3d.backend.models.dmv3d.text import PromptEncoder  # noqa: E402
from gen3d.backend.representations.mesh import TexturedMesh  # noqa: E402
from gen3d.backend.training import prepare, train  # noqa: E402
from gen3d.backend.training.data import ObjectViews  # noqa: E402
from gen3d.backend.training.recipes.dmv3d import DMV3DTrainConfig, DMV3DViews, balanced_mask_loss  # noqa: E402
from bench_magic123 import timed  # noqa: E402

NOISY = [2, 4, 6, 10]
#: ``--set`` overrides of the tiny preset for the ``bench`` architecture (models/dmv3d/config.py): batches of 3, i.e.
#: every object once a step (the keyed sampler's epochs are permutations of the 3 objects), 2 extra supervision views,
#: 16 ray samples, the condition dropped one item in 5 (the unconditional path has 3 objects to learn), and 256 of each
#: view's 1024 pixels rendered, half on the object and half on the background (``rays_per_view``: a step 3.3x faster,
#: and colour weighed like the mask). Batches of one object at a time (session 5) took ~2000 steps to tell the box from
#: the rest; batches of 3 tell it apart by step 400. 2000 whole-image steps of 3 (58 min here, session 6): ball IoU
#: 0.91, box 0.68, Spot the ball's blob, colours averages (masked PSNR 10-14 dB). 12000 steps at 256 rays (94 min,
#: session 7): ball IoU 0.98 and masked PSNR 20.9 dB (its normal colours), box IoU 0.84 (cyan top, brown sides), Spot
#: a Spot-coloured blob whose silhouette still matches the ball's best (IoU 0.54 own, 0.77 vs ball). Resumed to 22000
#: steps (``--steps 12000 22000``, the default: the cosine restarts at its 12000/22000 point, lr 4.3e-4, and decays to
#: 0; 69 min more, session 8): Spot's sample an elongated Spot-coloured shape turning with the view, IoU 0.70 own, 0.65
#: vs ball (legs, head and black patches not there); ball 0.99 / 22.5 dB, box 0.84. Spot needed the extra steps: with
#: clean views at t = 0 the 12000-step network rendered the same blob, and a fine-tune with one fixed input view fits
#: Spot in 100 steps (IoU 0.81), so it was learning to read Spot's pose from a 32 px view (half of Spot's pixels are
#: within 0.1 of the white background), not the triplane's capacity. The same run by hand: ``python -m gen3d train
#: dmv3d --data DATA --out OUT --preset tiny --set config=bench --set steps=12000 --set batch_size=3 --set lr=1e-3
#: --set warmup_steps=50 --set extra_views=2 --set samples_per_ray=16 --set uncond_prob=0.2 --set rays_per_view=256``,
#: then the same command with ``--resume`` and ``--set steps=22000``, DATA holding the 3 objects' training renders
#: (``write_views``), then ``--run OUT``
#: ``--text``: the text variant's captions (by object folder name) and guidance scales; its prompt encoder is the tiny
#: random CLIP of ``python -m gen3d weights tiny`` (SD 2.1's layout): frozen and random, it still maps different
#: captions to different tokens, which is all this test of the denoiser needs (no language understanding is claimed).
#: ``--text --steps 12000`` with :data:`BENCH` (91 min here, session 9): each caption gives its own object at every
#: seed (IoU at guidance 1: Spot 0.90 with legs, head and patches, box 0.95, ball 0.99; guidance 3 overshoots: 0.78 /
#: 0.95 / 0.98) and the empty caption gives a training object, which one depending on the seed (8 seeds: 2 Spot, 3
#: box, 3 ball, IoU 0.90-0.99 against it), its x0 sharpening from ~15-18 dB at t = 900 to 25-33 dB
CAPTIONS = {"spot": "a spotted cow", "box": "a box", "ball": "a ball"}
GUIDANCE = (1.0, 3.0)
BENCH = {"config": "bench", "batch_size": 3, "lr": 1e-3, "warmup_steps": 50, "extra_views": 2, "samples_per_ray": 16,
         "uncond_prob": 0.2, "rays_per_view": 256, "log_every": 50}


def box_mesh(size=(1.0, 0.5, 0.3)) -> TexturedMesh:
    """A box with 4 vertices per face, each face its own colour (vertex colours)."""
    colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9), (0.9, 0.8, 0.1), (0.8, 0.2, 0.8), (0.1, 0.8, 0.8)]
    verts, faces, cols = [], [], []
    h = [s / 2 for s in size]
    for axis in range(3):
        for k, sign in enumerate((-1.0, 1.0)):
            u, v = [a for a in range(3) if a != axis]
            if sign < 0:
                u, v = v, u  # keep the winding outward
            base = len(verts)
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = [0.0, 0.0, 0.0]
                p[axis], p[u], p[v] = sign * h[axis], du * h[u], dv * h[v]
                verts.append(p)
                cols.append(colours[2 * axis + k])
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return TexturedMesh(torch.tensor(verts), torch.tensor(faces), vertex_colors=torch.tensor(cols))


def ball_mesh(rings: int = 16, segments: int = 32) -> TexturedMesh:
    """A UV sphere of radius 0.4 coloured by its normal, ``(n + 1) / 2``."""
    th = torch.linspace(0, math.pi, rings + 1)
    ph = torch.arange(segments) * 2 * math.pi / segments
    n = torch.stack([th.sin()[:, None] * ph.cos(), th.sin()[:, None] * ph.sin(),
                     th.cos()[:, None].expand(-1, segments)], -1).reshape(-1, 3)
    faces = []
    for i in range(rings):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            faces += [[a, a + segments, b], [b, a + segments, b + segments]]
    return TexturedMesh(0.4 * n, torch.tensor(faces), normals=n, vertex_colors=(n + 1) / 2)


def objects() -> dict[str, TexturedMesh]:
    return {"spot": spot_mesh(), "box": box_mesh(), "ball": ball_mesh()}


def write_views(folder: Path, mesh: TexturedMesh, resolution: int, offset_deg: float) -> Path:
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    cams = ring_cameras((lo + hi) / 2, float((hi - lo).norm()), resolution, per_ring=8, offset_deg=offset_deg)
    save_transforms(folder, cams, render_views(mesh, cams))
    return folder


def scores(pred_rgb, pred_alpha, rgb, alpha) -> dict[str, float]:
    mask = alpha > 0.5
    se = (pred_rgb - rgb).pow(2)
    return {"masked_psnr": float(-10 * torch.log10(se[mask].mean())), "psnr": float(-10 * torch.log10(se.mean())),
            "iou": iou(pred_alpha, alpha)}


def iou(pred_alpha, alpha) -> float:
    p, a = pred_alpha > 0.5, alpha > 0.5
    return (p & a).sum().item() / max((p | a).sum().item(), 1)


def held_item(views: DMV3DViews, index: int, V: int) -> dict[str, torch.Tensor]:
    S = views.model_cfg.image_size
    order = [0, *NOISY] + [i for i in range(1, 16) if i not in NOISY]
    return views.views(index, order, S, torch.zeros(16, 2, dtype=torch.long), S, torch.ones(16))


def evaluate(model, views: DMV3DViews, index: int, steps: int, samples: int, conditional: bool = True,
             seed: int = 0, text: tuple[torch.Tensor, torch.Tensor] | None = None, guidance: float = 1.0):
    """Sample object ``index`` from its held-out view 0 (``conditional=False``: a blank input view, at the same
    cameras; ``text``: the text variant's prompt and empty-prompt tokens ``[1, L, D]``, blank input view at the
    canonical camera, classifier-free ``guidance``) -> (scores, x0 PSNR per step against every object's noisy-view
    ground truth ``[(t, [psnr per object])]``, sample's opacity, grid). The held-out cameras of all objects coincide
    after the recipe's normalisation (same rings, distance 2; in the text variant's world frame too), so every
    object's ground truth is comparable at them."""
    V = model.config.views
    item = held_item(views, index, V)
    truths = [held_item(views, k, V)["rgb"][1:V] for k in range(len(views.objects))]
    per_step = []

    def on_step(i, t, x0):
        per_step.append((t, [float(-10 * torch.log10((x0 - gt).pow(2).mean())) for gt in truths]))

    source = item["rgb"][:1].permute(0, 3, 1, 2) if conditional and text is None else None
    origins, dirs = views.denoiser_rays(index, 0, item["origins"][:V], item["dirs"][:V])
    prompt = {} if text is None else {"text": text[0], "null_text": text[1], "guidance": guidance}
    planes = sample_triplane(model, source, steps, torch.Generator().manual_seed(seed), rays=(origins, dirs),
                             samples_per_ray=samples, on_step=on_step, **prompt)
    settings = model.render_settings(jitter=False, ray_chunk=1 << 16)
    settings.n_coarse, settings.n_importance = samples - samples // 2, samples // 2
    with torch.no_grad():
        rgb, alpha = render_triplane(model, planes, item["origins"][None, V:], item["dirs"][None, V:], settings)
    sc = scores(rgb[0], alpha[0], item["rgb"][V:], item["alpha"][V:])
    grid = np.concatenate([np.concatenate(list(item["rgb"][V:].numpy()), 1),
                           np.concatenate(list(rgb[0].clamp(0, 1).numpy()), 1)], 0)
    return sc, per_step, alpha[0], grid


def text_samples(model, views: DMV3DViews, encode, names: list[str], steps: int, samples: int, seeds: int = 3,
                 empty_seeds: int = 8):
    """The text variant: each object's caption (:data:`CAPTIONS`) at each guidance of :data:`GUIDANCE` and
    ``seeds`` seeds, and the empty caption (unconditional, guidance 1, ``empty_seeds`` seeds: does it ever give
    another object?) -> (rows, PNG rows: per caption its object's ground truth, guidance 1 seed 0, the last guidance
    seeds 0-2; then the empty caption's seeds 0-2). Each sample's
    silhouettes are scored against every object's held-out silhouettes (``iou_vs``, ``best``); a caption's sample
    also against its own object (masked PSNR, PSNR, IoU, x0 PSNR per step); the empty caption's x0 against each."""
    V = model.config.views
    held_alpha = [held_item(views, k, V)["alpha"][V:] for k in range(len(names))]
    null = encode([""])
    rows, grids, untrained = {}, [], fresh_dmv3d(model.config, 0).eval()
    for k, name in [*enumerate(names), (0, None)]:
        caption = CAPTIONS[name] if name else ""
        tokens = encode([caption])
        runs = [(untrained, "untrained", 1.0, 0)] if name else []
        runs += [(model, "text", w, seed) for w in (GUIDANCE if name else (1.0,))
                 for seed in range(seeds if name else empty_seeds)]
        for m, label, w, seed in runs:
            sc, per_step, alpha, grid = evaluate(m, views, k, steps, samples, seed=seed, text=(tokens, null),
                                                 guidance=w)
            iou_vs = {other: round(iou(alpha, a), 3) for other, a in zip(names, held_alpha)}
            row = {"iou_vs": iou_vs, "best": max(iou_vs, key=iou_vs.get) if max(iou_vs.values()) > 0 else None}
            if name:
                row |= sc | {"x0_psnr_by_t": [f"t={t}: {p[k]:.2f}" for t, p in per_step]}
            else:
                row["x0_psnr_vs_each_by_t"] = [f"t={t}: " + " / ".join(f"{x:.2f}" for x in p) for t, p in per_step]
            rows[f"{label}/{caption or '(empty)'}/w={w:g}/seed={seed}"] = row
            if label == "text" and (seed == 0 or w == GUIDANCE[-1] or not name) and seed < 3:
                grids.append(grid if name and w == 1.0 and seed == 0 else grid[grid.shape[0] // 2:])
    return rows, grids


def text_summary(rows: dict) -> dict[str, dict]:
    """Per caption and guidance over the seeds: mean IoU against each object and how many seeds match each best."""
    groups: dict[str, list[dict]] = {}
    for key, row in rows.items():
        if key.startswith("text/"):
            groups.setdefault(key.rsplit("/", 1)[0], []).append(row)
    return {g: {"mean_iou_vs": {o: round(float(np.mean([r["iou_vs"][o] for r in rs])), 3) for o in rs[0]["iou_vs"]},
                "best_counts": {o: sum(r["best"] == o for r in rs) for o in rs[0]["iou_vs"]}}
            for g, rs in groups.items()}


def free_fit(config: DMV3DConfig, mesh: TexturedMesh, steps: int = 300, seed: int = 0) -> dict[str, float]:
    """The ceiling of a render setting: a free triplane (``[3, C, 2r, 2r]`` parameters, no network) and a fresh NeRF
    MLP of ``config``, rendered by the model's own field and settings, fitted (Adam, the recipe's loss: MSE over a
    random grey + balanced mask) to the even views of the object's 16 and scored at the odd ones."""
    torch.manual_seed(seed)
    model = fresh_dmv3d(config, seed)
    S, folder = config.lrm.image_size, Path(tempfile.mkdtemp(prefix="bench_dmv3d_fit_"))
    views = DMV3DViews([ObjectViews("obj", scan_transforms(write_views(folder, mesh, 64, 0.0)))], config.lrm,
                       DMV3DTrainConfig.resolve("tiny"))
    item = views.views(0, list(range(16)), S, torch.zeros(16, 2, dtype=torch.long), S, torch.ones(16))
    r, C = 2 * config.lrm.triplane_low_res, config.lrm.triplane_dim
    planes = torch.nn.Parameter(0.1 * torch.randn(1, 3, C, r, r))
    opt = torch.optim.Adam([{"params": [planes], "lr": 0.05}, {"params": model.nerf.parameters(), "lr": 5e-3}])
    fit, held = list(range(0, 16, 2)), list(range(1, 16, 2))
    for _ in range(steps):
        ids = [fit[i] for i in torch.randperm(len(fit))[:4]]
        bg = float(torch.randint(0, 3, ())) / 2
        rgb, opacity = render_triplane(model, planes, item["origins"][None, ids], item["dirs"][None, ids],
                                       model.render_settings(jitter=True, ray_chunk=1 << 16), background=bg)
        target = item["rgb"][ids] - (1 - item["alpha"][ids][..., None]) * (1 - bg)
        loss = (rgb[0] - target).pow(2).mean() + balanced_mask_loss(opacity[0], item["alpha"][ids])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rgb, opacity = render_triplane(model, planes, item["origins"][None, held], item["dirs"][None, held],
                                       model.render_settings(jitter=False, ray_chunk=1 << 16))
    return scores(rgb[0], opacity[0], item["rgb"][held], item["alpha"][held])


def free_fit_table(steps: int) -> dict[str, dict[str, float]]:
    """:func:`free_fit` of each object at the ``tiny`` and ``bench`` settings and at ``tiny`` in OpenLRM's unit box
    with 8 ray samples (the setting before the CPU configs' 0.6 box)."""
    unit_box = dataclasses.replace(CONFIGS["tiny"], lrm=CONFIGS["tiny"].lrm.replace(radius=1.0, samples_per_ray=8,
                                                                                      importance_samples=4))
    settings = {"tiny, radius 1, 8 samples": unit_box, "tiny": CONFIGS["tiny"], "bench": CONFIGS["bench"]}
    rows = {}
    for label, config in settings.items():
        for name, mesh in objects().items():
            t0 = time.perf_counter()
            sc = free_fit(config, mesh, steps)
            rows[f"{label}/{name}"] = {k: round(v, 3) for k, v in sc.items()} | {
                "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{label}/{name}", rows[f"{label}/{name}"], flush=True)
    return rows


def in_child(fn, *args):
    """``fn(*args)`` in a forked process -> (its result, the process's peak resident memory above its start, MiB;
    Linux's VmHWM, reset at the start by ``clear_refs``)."""
    import multiprocessing as mp

    def child(conn):
        Path("/proc/self/clear_refs").write_text("5")
        status = Path("/proc/self/status")

        def kb(key: str) -> int:
            return int(next(ln for ln in status.read_text().splitlines() if ln.startswith(key)).split()[1])

        start = kb("VmRSS:")
        result = fn(*args)
        conn.send((result, (kb("VmHWM:") - start) / 1024))

    ctx = mp.get_context("fork")
    parent, end = ctx.Pipe()
    proc = ctx.Process(target=child, args=(end,))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def speed_network(name: str, repeats: int) -> dict[str, float]:
    """Config ``name``, batch 1, no gradients: the denoiser network alone (``forward_planes`` over the input and
    noisy views) and one DDIM sampling step (that network plus the x0 render at the noisy views with the config's
    ray samples, as :func:`sample_triplane` does it)."""
    torch.manual_seed(0)
    model = fresh_dmv3d(CONFIGS[name]).eval()
    V, S = model.config.views, model.cfg.image_size
    rays = plucker_rays(*view_cameras(model).pixel_rays())[None]
    images, t = torch.rand(1, V, 3, S, S) * 2 - 1, torch.tensor([500])
    source = torch.rand(1, 3, S, S)
    with torch.no_grad():
        network = timed(lambda: model.forward_planes(images, rays, t), repeats)
    step = timed(lambda: sample_triplane(model, source, 1, torch.Generator().manual_seed(0)), repeats)
    return {"network_s": network, "sampling_step_s": step}


def speed_train(name: str, repeats: int) -> dict[str, float]:
    """Config ``name`` (``tiny``: the tiny preset; ``bench``: with :data:`BENCH`), one training step at batch 1 on
    Spot's views: the recipe's forward (denoiser + renders of every view), backward and AdamW step."""
    from gen3d.backend.training.recipes.dmv3d import DMV3DWithLoss

    cfg = DMV3DTrainConfig.resolve("tiny", {**(BENCH if name == "bench" else {}), "config": name})
    folder = write_views(Path(tempfile.mkdtemp(prefix="bench_dmv3d_speed_")), spot_mesh(), 64, 0.0)
    views = DMV3DViews([ObjectViews("spot", scan_transforms(folder))], cfg.architecture.lrm, cfg)
    batch = {k: v[None] for k, v in views[(0, 0)].items()}
    model = DMV3DWithLoss(fresh_dmv3d(cfg.architecture, 0).train(), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"train_step_s": timed(step, repeats)}


SPEED_COLUMNS = ("params_M", "network_s", "sampling_step_s", "sampling_peak_MiB", "train_step_s", "train_peak_MiB")


def speed_table(names: list[str]) -> dict[str, dict[str, float]]:
    """Per config: parameters, seconds and peak memory (each measurement in its own forked process) of the denoiser
    network, of one DDIM sampling step and, where this CPU's memory allows, of one training step."""
    rows = {}
    for name in names:
        small = name in ("tiny", "bench")
        with torch.device("meta"):
            params = sum(p.numel() for p in DMV3D(CONFIGS[name]).parameters())
        row = {"params_M": round(params / 1e6, 2)}
        result, peak = in_child(speed_network, name, 5 if small else 1)
        row |= {k: round(v, 3) for k, v in result.items()} | {"sampling_peak_MiB": round(peak)}
        if small:
            result, peak = in_child(speed_train, name, 5)
            row |= {k: round(v, 3) for k, v in result.items()} | {"train_peak_MiB": round(peak)}
        rows[name] = row
        print(name, row, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing gen3d train dmv3d output folder (skip training)")
    ap.add_argument("--config", choices=("bench", "tiny"), default="bench", help="architecture trained")
    ap.add_argument("--steps", type=int, nargs="+", default=[12000, 22000],
                    help="training steps; several (increasing): train to the first, then resume the run to each "
                    "next (gen3d train --resume: the longer run's cosine schedule picks up at the step reached)")
    ap.add_argument("--sampling-steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=16, help="ray samples of the renders")
    ap.add_argument("--text", action="store_true", help="the text variant: train on CAPTIONS with a tiny random "
                    "CLIP (or --run a text-variant run) and sample each caption and the empty one")
    ap.add_argument("--png", help="write held-out ground truth and sample renders (pairs of rows per object) here")
    ap.add_argument("--free-fit", type=int, metavar="STEPS", nargs="?", const=300,
                    help="only fit free triplanes (no network) at each config's render setting")
    ap.add_argument("--speed", nargs="*", choices=tuple(CONFIGS), metavar="CONFIG",
                    help="only time these configs' (default: all) network, sampling step and training step (tiny, "
                    "bench) and their peak memory")
    args = ap.parse_args()
    if any(b <= a for a, b in zip(args.steps, args.steps[1:])):
        ap.error(f"--steps must increase, got {args.steps}")
    if args.speed is not None:
        rows = speed_table(args.speed or list(CONFIGS))
        cols = sorted({c for row in rows.values() for c in row}, key=list(SPEED_COLUMNS).index)
        print("| config | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
        for name, row in rows.items():
            print(f"| {name} | " + " | ".join(str(row.get(c, "-")) for c in cols) + " |")
        return 0
    if args.free_fit:
        print(json.dumps(free_fit_table(args.free_fit), indent=1))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_dmv3d_"))
    meshes = objects()
    train_s = None
    if args.run:
        out = Path(args.run)
    else:
        for name, mesh in meshes.items():
            write_views(tmp / "data" / name, mesh, 64, 0.0)
        out = tmp / "run"
        overrides = BENCH if args.config == "bench" else {}
        if args.text:
            (tmp / "captions.json").write_text(json.dumps(CAPTIONS))
            overrides = {**overrides, "text_encoder": str(weights.write_tiny("sd21-base", tmp)),
                         "captions": str(tmp / "captions.json")}
        t0 = time.perf_counter()
        for phase, steps in enumerate(args.steps):
            train(prepare("dmv3d", tmp / "data", out, "tiny", {**overrides, "steps": steps, "eval_every": steps,
                                                                "checkpoint_every": 500}, resume=phase > 0))
        train_s = time.perf_counter() - t0
    model = load_dmv3d(out / "weights" / "dmv3d")
    cfg = DMV3DTrainConfig.resolve("tiny")
    encode = PromptEncoder(out / "weights" / "dmv3d") if args.text else None
    views = DMV3DViews([ObjectViews(name, scan_transforms(write_views(tmp / "held" / name, mesh, 64, 11.25)))
                        for name, mesh in meshes.items()], model.cfg, cfg, encode.tokenizer if encode else None)
    if args.text:
        rows, grids = text_samples(model, views, encode, list(meshes), args.sampling_steps, args.samples)
        rows = {"summary": text_summary(rows), **rows}
        return report(out, train_s, rows, grids, args.png)
    V = model.config.views
    held_alpha = [held_item(views, k, V)["alpha"][V:] for k in range(len(meshes))]
    rows, grids = {}, []
    for label, m in (("untrained", fresh_dmv3d(model.config, 0).eval()), ("trained", model)):
        for k, name in enumerate(meshes):
            sc, per_step, alpha, grid = evaluate(m, views, k, args.sampling_steps, args.samples)
            sc["iou_vs"] = {other: round(iou(alpha, a), 3) for other, a in zip(meshes, held_alpha)}
            rows[f"{label}/{name}"] = {**sc, "x0_psnr_by_t": [f"t={t}: {p[k]:.2f}" for t, p in per_step]}
            if label == "trained":
                grids.append(grid)
    for seed in range(3):  # unconditional samples (blank input view) at object 0's held-out cameras
        sc, per_step, alpha, grid = evaluate(model, views, 0, args.sampling_steps, args.samples, False, seed)
        rows[f"unconditional/{seed}"] = {"iou_vs": {other: round(iou(alpha, a), 3)
                                                    for other, a in zip(meshes, held_alpha)},
                                         "x0_psnr_vs_each_by_t": [f"t={t}: " + " / ".join(f"{x:.2f}" for x in p)
                                                                  for t, p in per_step]}
        grids.append(grid[grid.shape[0] // 2:])
    return report(out, train_s, rows, grids, args.png)


def report(out: Path, train_s: float | None, rows: dict, grids: list[np.ndarray], png: str | None) -> int:
    """Print the JSON (training steps, time and last loss of run ``out``, then ``rows``); write the grids' PNG."""
    if png:
        from PIL import Image

        Image.fromarray((np.clip(np.concatenate(grids, 0), 0, 1) * 255 + 0.5).astype(np.uint8)).save(png)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"train_steps": metrics[-1]["step"], "train_seconds": train_s,
                      "final_loss": metrics[-1]["loss"], **rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
