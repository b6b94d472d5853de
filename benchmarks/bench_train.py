"""Does ``gen3d train lrm`` teach a model its job? Held-out views of the training object, trained vs untrained.

    python benchmarks/bench_train.py                  # tiny architecture, 300 steps (a few minutes on a CPU)
    python benchmarks/bench_train.py --steps 1000 --set render_min=48 --set render_max=64 --set render_region=32

Spot is rendered (gen3d.kernels.mesh, textured) from 16 cameras on two rings at 64 x 64. The model trains on the 8
even-numbered views; from input view 0 it then renders the 8 odd-numbered views, which it never saw, and those
renders are compared with the ground truth: PSNR on white (whole images), silhouette IoU (opacity and alpha cut at
0.5) and the mean rendered opacity on and off the object. The same seeded network before training is a baseline,
and so is a blank white image (the object covers a small part of each view, so PSNR is mostly background). Printed:
one row per model with steps, wall time and samples/s, the held-out scores and the PSNR on the training views.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen3d.backend.commands.demo import make_spot_views  # noqa: E402
from gen3d.backend.commands.run import parse_set  # noqa: E402
from gen3d.backend.geometry.transforms import scan_transforms  # noqa: E402
from gen3d.backend.models.lrm import load_lrm  # noqa: E402
from gen3d.backend.training import get_recipe, prepare, train  # noqa: E402
from gen3d.backend.training.data import ObjectViews  # noqa: E402
from gen3d.backend.training.recipes.lrm import LRMViews, LRMWithLoss  # noqa: E402


def subset(src: Path, dst: Path, keep) -> Path:
    """A transforms.json folder with the frames ``keep`` of ``src`` (images shared by path)."""
    meta = json.loads((src / "transforms.json").read_text())
    meta["frames"] = [dict(f, file_path=str((src / f["file_path"]).resolve())) for i, f in enumerate(meta["frames"])
                      if i in keep]
    dst.mkdir(parents=True)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


@torch.no_grad()
def scores(model: LRMWithLoss | None, views: LRMViews, targets: list[int], size: int) -> dict[str, float]:
    """PSNR (on white), silhouette IoU (opacity vs alpha at 0.5) and the mean opacity on and off the object of
    ``model``'s renders of views ``targets`` from input view 0; ``None`` predicts a blank white image."""
    item = views.views(0, [0, *targets], size, torch.zeros(len(targets) + 1, 2, dtype=torch.long), size,
                       torch.ones(len(targets) + 1))
    rgb, opacity = torch.ones(1, *item["rgb"][1:].shape), torch.zeros(1, *item["alpha"][1:].shape)
    if model is not None:
        planes = model.lrm.forward_planes(item["source"][None], item["source_camera"][None])
        rgb, opacity = model.render(planes, item["origins"][None, 1:], item["dirs"][None, 1:],
                                    item["background"][None, 1:], [0], jitter=False)
    mse = ((rgb[0].clamp(0, 1) - item["rgb"][1:]) ** 2).mean()
    pred, gt = opacity[0] > 0.5, item["alpha"][1:] > 0.5
    return {"psnr": float(-10 * torch.log10(mse)), "iou": float((pred & gt).sum() / (pred | gt).sum()),
            "on": float(opacity[0][gt].mean()), "off": float(opacity[0][~gt].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=64, help="render and evaluation resolution")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe option")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        make_spot_views(work / "all", resolution=args.size, per_ring=8)
        train_dir = subset(work / "all", work / "data" / "spot", set(range(0, 16, 2)))
        overrides = {"steps": args.steps, "eval_every": args.steps, "checkpoint_every": args.steps,
                     "log_every": max(1, args.steps // 10), "eval_size": args.size, **parse_set(args.set)}
        run = prepare("lrm", train_dir.parent, work / "out", args.preset, overrides)
        recipe = get_recipe("lrm")
        everything = LRMViews([ObjectViews("spot", scan_transforms(work / "all"))], run.dataset.model_cfg, run.cfg)
        held_out, seen = list(range(1, 16, 2)), list(range(2, 16, 2))

        untrained = recipe.model(run.cfg).eval()
        t0 = time.perf_counter()
        train(run)
        seconds = time.perf_counter() - t0
        trained = LRMWithLoss(load_lrm(work / "out" / "weights" / run.cfg.model), run.cfg, {}).eval()
        rate = [json.loads(x)["samples_per_s"] for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]

        options = "".join(" " + x for x in args.set)
        print(f"\nlrm recipe, preset {args.preset}{options}, Spot {args.size} px, 8 training views, 8 held-out views, "
              f"device cpu ({torch.get_num_threads()} threads)")
        print(f"{'model':<12} {'steps':>6} {'time s':>7} {'samples/s':>9} {'held-out PSNR':>14} {'IoU':>6} "
              f"{'opacity on/off object':>22} {'train-view PSNR':>16}")
        rows = (("blank white", None, 0, 0.0), ("untrained", untrained, 0, 0.0),
                ("trained", trained, args.steps, seconds))
        for name, model, steps, secs in rows:
            out, seen_views = scores(model, everything, held_out, args.size), scores(model, everything, seen, args.size)
            print(f"{name:<12} {steps:>6} {secs:>7.1f} {(sum(rate) / len(rate) if steps else 0):>9.1f} "
                  f"{out['psnr']:>14.2f} {out['iou']:>6.3f} {out['on']:>14.2f} / {out['off']:<5.2f} "
                  f"{seen_views['psnr']:>16.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
