"""``python -m gen3d dataset render|multiview|generate ...``: geometry-controlled training data from CAD models
(3D-DST style) and multi-view renders for training (nerfstudio folders)."""

from __future__ import annotations

import os
from pathlib import Path


def _render(args) -> int:
    from ..blender.render import RenderSettings

    settings = RenderSettings(size=args.size, engine=args.engine, samples=args.samples, views=args.views_per_model,
                              pose_mode=args.pose_mode, distance=args.distance, random_distance=args.random_distance,
                              roll_sd=args.roll_sd, canny_low=args.canny[0], canny_high=args.canny[1],
                              canny_aperture=args.canny[2], geometry_passes=not args.no_geometry_passes,
                              up_axis=args.up_axis, seed=args.seed)
    _run(args, settings)
    return 0


def _multiview(args) -> int:
    from ..blender.multiview import MultiviewSettings
    from ..blender.shards import write_shards
    from ..errors import BadInput

    if args.views_per_model < 1 or args.resolution < 8 or args.shards < 0 or args.workers < 1:
        raise BadInput("--views-per-model and --workers must be >= 1, --resolution >= 8, --shards >= 0",
                       {"field": "options"})
    try:
        settings = MultiviewSettings(size=args.resolution, engine=args.engine, samples=args.samples,
                                     views=args.views_per_model, orbit=args.orbit, elevation=tuple(args.elevation),
                                     distance=tuple(args.distance), ring_elevation=args.ring_elevation,
                                     passes=tuple(p.strip() for p in args.passes.split(",")), fov_deg=args.fov,
                                     up_axis=args.up_axis, seed=args.seed)
    except ValueError as e:
        raise BadInput(f"dataset multiview: {e}", {"field": "options"}) from None
    _run(args, settings)
    if args.shards:
        paths = write_shards(Path(args.out), args.shards)
        print(f"{len(paths)} webdataset shards in {paths[0].parent}")
    return 0


def _run(args, settings) -> None:
    """Render with a progress bar and print the counts."""
    from tqdm import tqdm

    from ..blender.dataset import discover_models, render_dataset

    bar = tqdm(total=len(discover_models(Path(args.models))), desc="models", unit="model")

    def on_result(r):
        bar.update(1)
        if r["status"] != "ok":
            tqdm.write(f"skipped {r['model_id']}: {r['error']}")

    try:
        counts = render_dataset(Path(args.models), Path(args.out), settings, workers=args.workers,
                                ray_address=args.ray, on_result=on_result)
    finally:
        bar.close()
    print(f"rendered {counts['ok']} models ({counts['views']} views in all), {counts['skipped']} already done, "
          f"{counts['failed']} failed; manifest: {Path(args.out) / 'manifest.jsonl'}")


def _generate(args) -> int:
    from tqdm import tqdm

    from ..pipelines.controlnet_dataset import GenerateSettings, generate_dataset, load_prompts

    if args.weights_dir:
        os.environ["GEN3D_WEIGHTS_DIR"] = str(Path(args.weights_dir).resolve())
    settings = GenerateSettings(base=args.controlnet, steps=args.steps, guidance_scale=args.guidance_scale,
                                images_per_view=args.images_per_view, seed=args.seed, device=args.device,
                                prompts=load_prompts(args.prompts),
                                **({"negative_prompt": args.negative_prompt} if args.negative_prompt is not None else {}))
    with tqdm(desc="models", unit="model") as bar:
        counts = generate_dataset(Path(args.data), settings, workers=args.workers, ray_address=args.ray,
                                  on_result=lambda r: bar.update(1))
    print(f"{counts['images']} images for {counts['models']} models; list: {Path(args.data) / 'generated.jsonl'}")
    if counts["tiny_weights"]:
        from ..pipelines.runner import SMOKE_NOTICE

        print(f"note: {SMOKE_NOTICE} (each image's JSON says so too)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="render CAD models into edge-map datasets with 3D annotations")
    dsub = p.add_subparsers(dest="dataset_command", required=True, metavar="SUBCOMMAND")
    r = dsub.add_parser("render", help="render RGBA, Canny edges, depth, normals, masks and annotations")
    r.add_argument("--models", required=True, help="folder of OBJ/GLB/PLY files or ShapeNet-style model folders")
    r.add_argument("--out", required=True)
    r.add_argument("--views-per-model", type=int, default=8)
    r.add_argument("--workers", type=int, default=1, help="local worker processes, one bpy each")
    r.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster ('auto', an address, or 'local')")
    r.add_argument("--size", type=int, default=512, help="square image side in pixels (default 512)")
    r.add_argument("--engine", default="CYCLES", choices=["CYCLES", "WORKBENCH"])
    r.add_argument("--samples", type=int, default=32, help="Cycles samples")
    r.add_argument("--pose-mode", type=int, default=1, choices=[1, 2, 3, 4, 5],
                   help="3D-DST pose sampling (degrees): 1 azimuth 0-360, elevation ~ N(0, 30); 2 azimuth -195-15, "
                        "elevation ~ N(0, 30); 3 azimuth 0-360, elevation ~ N(30, 20); 4 azimuth -195-15, elevation "
                        "~ N(30, 20); 5 uniform on the sphere (default 1)")
    r.add_argument("--distance", type=float, default=2.5,
                   help="camera distance in units of the object's longest side (default 2.5)")
    r.add_argument("--random-distance", action="store_true",
                   help="draw each view's distance from N(distance, 0.5) within [distance - 0.5, distance + 1.5]")
    r.add_argument("--roll-sd", type=float, default=0.0, help="in-plane rotation sd in degrees (0 = none)")
    r.add_argument("--canny", type=int, nargs=3, default=[100, 200, 3], metavar=("LOW", "HIGH", "APERTURE"))
    r.add_argument("--no-geometry-passes", action="store_true", help="skip depth and normal maps")
    r.add_argument("--up-axis", default="Y", choices=["Y", "Z"], help="up axis of OBJ/PLY files")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_render)

    m = dsub.add_parser("multiview", help="multi-view training renders: a nerfstudio transforms.json folder per "
                        "object (RGBA, depth, normals, canonical coordinate maps), optional webdataset shards")
    m.add_argument("--models", required=True, help="folder of OBJ/GLB/PLY files or ShapeNet-style model folders")
    m.add_argument("--out", required=True)
    m.add_argument("--views-per-model", type=int, default=32, help="views of a random orbit (a ring has its own)")
    m.add_argument("--resolution", type=int, default=512)
    m.add_argument("--passes", default="rgba", help="comma-separated: rgba (always), depth, normal, ccm")
    m.add_argument("--orbit", default="random", choices=["random", "instant3d", "mvdream", "syncdreamer", "zero123pp"],
                   help="random orbit (Zero123/LRM style) or a published fixed ring")
    m.add_argument("--elevation", type=float, nargs=2, default=[-90.0, 90.0], metavar=("LOW", "HIGH"),
                   help="random orbit: elevation range in degrees")
    m.add_argument("--distance", type=float, nargs=2, default=[1.5, 2.2], metavar=("LOW", "HIGH"),
                   help="random orbit: camera distance range (the object's longest side is 1)")
    m.add_argument("--ring-elevation", type=float, help="elevation of a single-elevation ring (e.g. syncdreamer)")
    m.add_argument("--fov", type=float, default=0.0, help="vertical field of view in degrees (0: the orbit's own)")
    m.add_argument("--workers", type=int, default=1, help="local worker processes, one bpy each")
    m.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster ('auto', an address, or 'local')")
    m.add_argument("--engine", default="CYCLES", choices=["CYCLES", "WORKBENCH", "EEVEE"])
    m.add_argument("--samples", type=int, default=32, help="Cycles/EEVEE samples")
    m.add_argument("--shards", type=int, default=0, help="also write N webdataset tar shards under OUT/shards")
    m.add_argument("--up-axis", default="Y", choices=["Y", "Z"], help="up axis of OBJ/PLY files")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_multiview)

    g = dsub.add_parser("generate", help="ControlNet images from the rendered edge maps, next to their annotations")
    g.add_argument("--data", required=True, help="a folder written by 'dataset render'")
    g.add_argument("--controlnet", default="sd15", choices=["sd15", "sdxl-base"], help="canny ControlNet base model")
    g.add_argument("--prompts", help="JSON mapping class names or model ids to captions (default: class template)")
    g.add_argument("--negative-prompt")
    g.add_argument("--images-per-view", type=int, default=1)
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--guidance-scale", type=float, default=9.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--ray", metavar="ADDRESS")
    g.add_argument("--weights-dir", help="folder of weights (overrides GEN3D_WEIGHTS_DIR)")
    g.set_defaults(func=_generate)
