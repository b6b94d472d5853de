"""Run independent tasks locally (spawned worker processes) or on a Ray cluster, with one code path.

``fn`` must be a module-level function taking and returning plain (picklable) dicts.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Iterable

from .errors import BadInput


def map_tasks(fn: Callable[[dict], dict], tasks: list[dict], workers: int = 1,
              ray_address: str | None = None) -> Iterable[dict]:
    """Yield ``fn(task)`` for every task, in completion order.

    ``ray_address``: ``"local"`` starts a private local Ray instance, anything else is passed to ``ray.init``
    (``"auto"``, ``"ray://host:10001"``); otherwise ``workers`` spawned processes (1 = in this process).
    """
    if ray_address:
        yield from _ray(fn, tasks, ray_address)
    elif workers <= 1:
        yield from map(fn, tasks)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(fn, tasks)


def _ray(fn, tasks, address: str) -> Iterable[dict]:
    try:
        import ray
    except ImportError:
        raise BadInput("--ray needs the 'ray' package: pip install 'gen3d[cluster]'", {"field": "ray"}) from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()
