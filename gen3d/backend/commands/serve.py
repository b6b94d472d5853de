"""``python -m gen3d serve``: the local job server (HTTP API v1, OpenAPI at /docs).

It listens on 127.0.0.1 by default and refuses any non-loopback address unless a token is set (``--token`` or
``$GEN3D_TOKEN``, which keeps it out of the process list).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from ..errors import BadInput

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def default_data_dir() -> Path:
    """``$GEN3D_DATA_DIR``, else ``$XDG_DATA_HOME/gen3d`` (``~/.local/share/gen3d``)."""
    if os.environ.get("GEN3D_DATA_DIR"):
        return Path(os.environ["GEN3D_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gen3d"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise BadInput(f"refusing to listen on {host} without a token: anyone who can reach it could run jobs; "
                       "pass --token (or set GEN3D_TOKEN), or use --host 127.0.0.1", {"field": "--host", "host": host})


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, before anything starts (uvicorn would only say so after the
    worker process is up)."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadInput(f"--host {host}: cannot resolve it ({e.strerror})", {"field": "--host", "host": host}) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind(address)
        except OSError as e:
            raise BadInput(f"port {port} on {host} is not available ({e.strerror}): another Gen3D server or "
                           f"program uses it; choose another with --port", {"field": "--port", "port": port}) from None


def _run(args) -> int:
    token = args.token or os.environ.get("GEN3D_TOKEN") or None
    check_host(args.host, token)
    check_port(args.host, args.port)
    import uvicorn

    from ..api.app import create_app
    from ..api.settings import Settings

    weights_dir = Path(args.weights_dir).expanduser().resolve() if args.weights_dir else None
    if weights_dir is not None:  # the server (for /v1/methods) and the worker resolve weights the same way
        os.environ["GEN3D_WEIGHTS_DIR"] = str(weights_dir)
    settings = Settings(data_dir=Path(args.data_dir).expanduser().resolve(), token=token, weights_dir=weights_dir,
                        device=args.device, max_upload_bytes=args.max_upload_mb << 20,
                        cancel_grace_s=args.cancel_grace_s)
    log.info("Gen3D server on http://%s:%d (data in %s%s)", args.host, args.port, settings.data_dir,
             ", token required" if token else "")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=3)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the local job server (HTTP API v1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--data-dir", default=str(default_data_dir()), help="job database and results (default %(default)s)")
    p.add_argument("--token", help="require this token (Authorization: Bearer TOKEN); default $GEN3D_TOKEN")
    p.add_argument("--weights-dir", help="folder of weights (overrides GEN3D_WEIGHTS_DIR)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest accepted request body (default 1024)")
    p.add_argument("--cancel-grace-s", type=float, default=10.0,
                   help="stop the worker when a cancelled job has not stopped after this long (default 10)")
    p.set_defaults(func=_run)
