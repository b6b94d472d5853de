"""A Hugging Face hub on loopback for download tests: real HTTP, real ``huggingface_hub`` client, local files.

``HubServer(root)`` serves every folder ``root/ORG/NAME`` as the model repository ``ORG/NAME`` at one commit: the
routes ``huggingface_hub.snapshot_download`` uses (repository info, recursive tree listing, ``resolve`` with HEAD,
GET and byte ranges). ``chunk_s`` sleeps between 1 MB chunks of a file, so that a client sees a download in
progress. Point the client at it with ``HF_ENDPOINT=server.url`` (and ``HF_HUB_OFFLINE=0``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


class HubServer:
    def __init__(self, root: Path, chunk_s: float = 0.0):
        self.root, self.chunk_s = Path(root), chunk_s
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.handle(self, body=False)

            def do_GET(self):
                server.handle(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo: str) -> list[Path]:
        folder = self.root / repo
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    def handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        self.requests.append(f"{h.command} {path}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/[^/]+", path):
            files = self.files(m[1])
            return self.json(h, {"id": m[1], "sha": COMMIT, "siblings": [
                {"rfilename": p.relative_to(self.root / m[1]).as_posix()} for p in files]} if files else None)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(/.*)?", path):
            files = self.files(m[1])
            return self.json(h, [{"type": "file", "path": p.relative_to(self.root / m[1]).as_posix(),
                                  "size": p.stat().st_size, "oid": _oid(p)} for p in files] if files else None)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            file = self.root / m[1] / m[2]
            if not file.is_file():
                return self.json(h, None)
            return self.send_file(h, file, body)
        self.json(h, None)

    @staticmethod
    def json(h: BaseHTTPRequestHandler, doc) -> None:
        data = json.dumps(doc if doc is not None else {"error": "Repository not found"}).encode()
        h.send_response(200 if doc is not None else 404)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if doc is None:
            h.send_header("X-Error-Code", "RepoNotFound")
        h.end_headers()
        h.wfile.write(data)

    def send_file(self, h: BaseHTTPRequestHandler, file: Path, body: bool) -> None:
        size = file.stat().st_size
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "")):
            start = int(m[1])
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(size - start))
        h.send_header("ETag", f'"{_oid(file)}"')
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.end_headers()
        if not body:
            return
        with open(file, "rb") as f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                h.wfile.write(chunk)
                h.wfile.flush()
                time.sleep(self.chunk_s)


def _oid(file: Path) -> str:
    return hashlib.sha1(file.read_bytes()).hexdigest()
