"""Small upload payloads built in memory: PNGs (and a decompression bomb header), OBJ meshes, views zips."""

from __future__ import annotations

import io
import json
import stat
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def png_bytes(w: int = 16, h: int = 16, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(w: int = 100_000, h: int = 100_000) -> bytes:
    """A PNG whose header claims ``w x h`` pixels (tens of GB decoded) with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def obj_bytes() -> bytes:
    return b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def transforms(n: int = 2) -> dict:
    return {"camera_angle_x": 0.8, "frames": [{"file_path": f"images/{i:03d}.png",
                                              "transform_matrix": np.eye(4).tolist()} for i in range(n)]}


def views_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip with the given members (names used verbatim, so hostile names can be written) and symlinks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def good_views(n: int = 2, folder: str = "scene/") -> bytes:
    members = {f"{folder}transforms.json": json.dumps(transforms(n)).encode()}
    members.update({f"{folder}images/{i:03d}.png": png_bytes(8, 8, i) for i in range(n)})
    return views_zip(members)
