"""Service benchmark: a real ``python -m gen3d serve`` on loopback with the test pipeline ``sleepy``.

Prints a table of
- submit-to-first-event latency: from starting ``POST /v1/jobs`` to reading the job's first ``progress`` event
  on its SSE stream (the job starts on an idle worker);
- SSE delivery latency: client receive time minus the worker's ``time.time()`` when the pipeline reported
  (``emitted_at``; same machine, same clock), over every progress event of a 100-step job;
- status polls: sequential ``GET /v1/jobs/{id}`` on one keep-alive connection, polls/s and latency, and the
  server process's CPU time per poll (what the latency would be without other load, less the client's share);
- a floor for the polls: an unknown route (a structured 404 through the same server, middleware and client);
- tiny-job throughput: 50 one-step jobs submitted at once, jobs/s from the first submit to the last finish.

Targets (issue 6): a status poll under 5 ms median, SSE events within 100 ms of the worker emitting them.
Run: ``.venv/bin/python benchmarks/bench_service.py [--jobs 50] [--poll-s 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server import Server, read_sse  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def sleepy(**options) -> dict:
    return {"method": "sleepy", "prompt": "bench", "options": options}


def first_event_latency(srv: Server, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.time()
        job = srv.submit(sleepy(steps=1, step_s=0.0))
        with srv.client.stream("GET", job["urls"]["events"]) as r:
            for name, _, data in read_sse(r):
                if name == "progress" or (name == "job" and data["state"] != "queued" and data["step"]):
                    out.append(time.time() - t0)
                    break
        srv.wait(job["id"])
    return out


def sse_delivery(srv: Server, steps: int = 100) -> list[float]:
    job = srv.submit(sleepy(steps=steps, step_s=0.06))
    lat = []
    with srv.client.stream("GET", job["urls"]["events"]) as r:
        for name, _, data in read_sse(r):
            if name == "progress":
                lat.append(time.time() - data["emitted_at"])
    return lat


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def polls(srv: Server, seconds: float, url: str | None = None) -> tuple[list[float], float | None]:
    """Poll latencies of ``url`` (default: a finished job's status), and the server's CPU time per poll."""
    if url is None:
        url = srv.wait(srv.submit(sleepy(steps=1))["id"])["urls"]["self"]
    lat = []
    cpu0 = cpu_seconds(srv.proc.pid)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        r = srv.client.get(url)
        lat.append(time.perf_counter() - t)
        assert r.status_code in (200, 404)
    cpu1 = cpu_seconds(srv.proc.pid)
    return lat, (cpu1 - cpu0) / len(lat) if cpu0 is not None and cpu1 is not None else None


def throughput(srv: Server, n: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: srv.submit({**sleepy(steps=1, step_s=0.0), "seed": i})["id"], range(n)))
    for job_id in ids:
        srv.wait(job_id, timeout=600)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--poll-s", type=float, default=3.0)
    ap.add_argument("--first-events", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "data", token="bench") as srv:
        srv.wait(srv.submit(sleepy(steps=1))["id"])  # warm the worker
        first = first_event_latency(srv, args.first_events)
        sse = sse_delivery(srv)
        poll, poll_cpu = polls(srv, args.poll_s)
        floor, floor_cpu = polls(srv, args.poll_s, url="/v1/no-such-route")
        tput = throughput(srv, args.jobs)
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}")
    print()
    print("| measure | median | p95 | max | n | target |")
    print("|---|---|---|---|---|---|")
    print(f"| submit -> first progress event (ms) | {ms(statistics.median(first))} | {ms(pct(first, .95))} | "
          f"{ms(max(first))} | {len(first)} | |")
    print(f"| worker emit -> SSE received (ms) | {ms(statistics.median(sse))} | {ms(pct(sse, .95))} | "
          f"{ms(max(sse))} | {len(sse)} | < 100 |")
    print(f"| status poll GET /v1/jobs/{{id}} (ms) | {ms(statistics.median(poll))} | {ms(pct(poll, .95))} | "
          f"{ms(max(poll))} | {len(poll)} | < 5 median |")
    print(f"| status polls per second (one client) | {len(poll) / args.poll_s:.0f} | | | | |")
    if poll_cpu is not None:
        print(f"| server CPU per status poll (ms) | {ms(poll_cpu)} | | | {len(poll)} | |")
    print(f"| floor: unknown route, same server and client (ms) | {ms(statistics.median(floor))} | "
          f"{ms(pct(floor, .95))} | {ms(max(floor))} | {len(floor)} | |")
    if floor_cpu is not None:
        print(f"| floor: server CPU per request (ms) | {ms(floor_cpu)} | | | {len(floor)} | |")
    print(f"| tiny-job throughput (jobs/s, {args.jobs} one-step jobs) | {tput:.1f} | | | | |")
    print(json.dumps({"first_event_ms": statistics.median(first) * 1000, "sse_ms": statistics.median(sse) * 1000,
                      "poll_ms": statistics.median(poll) * 1000, "polls_per_s": len(poll) / args.poll_s,
                      "jobs_per_s": tput}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
