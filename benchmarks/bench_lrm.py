"""Speed of the LRM stages for the real-size OpenLRM (small, base, large) and TripoSR architectures.

    python benchmarks/bench_lrm.py                 # all four, model-default render size and mesh grid
    python benchmarks/bench_lrm.py --quick         # openlrm-small, 64^2 render, 96^3 grid (about a minute on CPU)
    python benchmarks/bench_lrm.py --models triposr --device cuda --render 256 --grid 256

Weights are random (the real ones are used when the registry finds them, with ``--real``); speed does not depend on
them, except marching cubes, whose cost grows with the surface found (random weights give little or none: the
meshing column is then the density-grid query plus an almost empty marching cubes).
Columns: encoder (image -> tokens), decoder (transformer + upsampler -> planes), render (one view of the given
size with the model's samples per ray), grid (density on grid^3), mcubes (PyMCubes at the model's level).
On CUDA everything runs under fp16/bf16 autocast, as the ``lrm`` method does, with synchronisation around timers.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen3d.backend.device import pick_device  # noqa: E402
from gen3d.backend.geometry.cameras import orbit_cameras  # noqa: E402
from gen3d.backend.models.lrm import (LRM, OPENLRM_HUB_CONFIGS, TRIPOSR_HUB_CONFIG, from_openlrm_config,  # noqa: E402
                                from_triposr_config, load_lrm)

NAMES = ("openlrm-small", "openlrm-base", "openlrm-large", "triposr")


def build(name: str, device: torch.device, real: bool) -> LRM:
    if real:
        from gen3d.backend.weights import find

        path = find(name)
        if path is not None:
            return load_lrm(path).to(device)
        print(f"# {name}: real weights not found, random weights", flush=True)
    cfg = (from_triposr_config(TRIPOSR_HUB_CONFIG) if name == "triposr"
           else from_openlrm_config(OPENLRM_HUB_CONFIGS[name.split("-")[1]]))
    with torch.device("meta"):
        model = LRM(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            value = torch.ones(p.shape) if pname.endswith("norm.weight") else torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(value)
    return model.eval()


def timed(fn, device, reps: int):
    best, out = float("inf"), None
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=NAMES, default=None)
    ap.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    ap.add_argument("--render", type=int, default=None, help="render size (default: the model's)")
    ap.add_argument("--grid", type=int, default=None, help="mesh grid per side (default: the model's)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real", action="store_true", help="use the registry's real weights when present")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    models = args.models or (["openlrm-small"] if args.quick else list(NAMES))
    reps = args.reps or (1 if args.quick or device.type == "cpu" else 3)
    render = args.render or (64 if args.quick else None)
    grid = args.grid or (96 if args.quick else None)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
           if device.type == "cuda" else contextlib.nullcontext())
    import mcubes

    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, best of {reps}", flush=True)
    print(f"{'model':<14} {'params':>7} {'img':>4} {'encoder':>9} {'decoder':>9} {'render':>15} {'grid':>14} "
          f"{'mcubes':>8} {'total':>8}", flush=True)
    for name in models:
        model = build(name, device, args.real)
        cfg = model.cfg
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        image = torch.rand(1, 3, cfg.image_size, cfg.image_size, device=device)
        r = render or cfg.render_size
        g = grid or cfg.mesh_resolution
        with torch.inference_mode(), amp:
            t_enc, tokens = timed(lambda: model.encoder(image), device, reps)

            def decode():
                mod = model.camera_embedder(model.source_camera(1, device)) if model.camera_embedder else None
                return model.upsample(model.transformer(tokens, mod))

            t_dec, planes = timed(decode, device, reps)
            field = model.field(planes[0].float())
            cams = orbit_cameras(15.0, 0.0, 2.4 * cfg.radius, 40.0, r, r).to(device)
            o, d = (x.reshape(-1, 3) for x in cams.pixel_rays())
            settings = model.render_settings(ray_chunk=16384 if device.type == "cuda" else 4096)
            t_ren, _ = timed(lambda: field.render_rays(o, d, settings), device, reps)
            t_grid, dens = timed(lambda: field.density_grid(g), device, 1)
        t_mc, (v, f) = timed(lambda: mcubes.marching_cubes(dens, cfg.mesh_level), device, 1)
        total = t_enc + t_dec + t_ren + t_grid + t_mc
        print(f"{name:<14} {n_params:>6.0f}M {cfg.image_size:>4} {t_enc:>8.3f}s {t_dec:>8.3f}s "
              f"{t_ren:>7.3f}s @{r:>4}² {t_grid:>7.3f}s @{g:>3}³ {t_mc:>7.3f}s {total:>7.2f}s"
              f"  ({len(f)} faces)", flush=True)
        del model, planes, field, dens
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
