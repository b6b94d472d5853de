"""``python -m gen3d train RECIPE --data DIR --out DIR [--preset tiny|small|full] [--set KEY=VALUE ...]
[--num-processes N] [--resume]``: train a method's model (see ``gen3d/backend/training``).

``--num-processes N`` starts N local processes through Accelerate's own launcher (``accelerate launch
--multi_gpu``: torchrun underneath; gloo on CPU, NCCL on CUDA). Several machines: run ``accelerate launch
--num_machines M --machine_rank R --main_process_ip HOST --num_processes TOTAL -m gen3d train ...`` on each.
The request is checked here first, so a bad one fails once, with nothing written.
"""

from __future__ import annotations

import socket

from ..errors import InternalError
from .run import parse_set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(args, n: int, mixed_precision: str) -> None:
    """Re-run this command (without ``--num-processes``) in ``n`` processes via ``accelerate launch``."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    argv = [args.recipe, "--data", args.data, "--out", args.out, "--preset", args.preset]
    argv += [x for pair in args.set for x in ("--set", pair)] + (["--resume"] if args.resume else [])
    launch = launch_command_parser().parse_args(
        ["--multi_gpu", "--num_processes", str(n), "--num_machines", "1", "--main_process_port", str(_free_port()),
         "--mixed_precision", mixed_precision, "--dynamo_backend", "no", "--module", "gen3d", "train", *argv])
    try:
        launch_command(launch)
    except Exception as e:  # a child failed; its own traceback was printed above
        raise InternalError(f"training processes failed ({type(e).__name__}); see their output above") from None


def _train(args) -> int:
    from ..training import prepare, train
    from ..training.trainer import mixed_precision

    run = prepare(args.recipe, args.data, args.out, args.preset, parse_set(args.set), args.resume)
    if args.num_processes > 1:
        launch_local(args, args.num_processes, mixed_precision(run.cfg) or "no")
        return 0
    summary = train(run)
    if summary["weights"] is not None:  # the main process
        print(f"trained {summary['steps']} steps; weights in {summary['weights']}; metrics, checkpoints and "
              f"evaluation renders in {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a method's model from multi-view renders (Hugging Face Accelerate)")
    p.add_argument("recipe", help="what to train: lrm")
    p.add_argument("--data", required=True, help="folder of object folders (transforms.json + RGBA PNGs)")
    p.add_argument("--out", required=True, help="output folder: metrics, checkpoints, eval renders, weights")
    p.add_argument("--preset", default="full", help="tiny (CPU smoke run), small (one GPU), full (published)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one option")
    p.add_argument("--num-processes", type=int, default=1, help="local processes (one per GPU)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=_train)
