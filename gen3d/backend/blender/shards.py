"""webdataset shards of a multi-view dataset, for streaming it from object storage.

``OUT/shards/shard-00000.tar`` ... : every finished object of ``manifest.jsonl`` (in its order) is one sample,
objects dealt to the shards in turn. A sample's key is ``<class>/<model_id>`` (dots replaced by ``_``, since
webdataset splits a name at its first dot); its entries are the object folder's files, each named by its path
in the folder with ``/`` turned into ``.``: ``transforms.json``, ``rgba.000.png``, ``depth.000.npy``, ... So
``sample[frame["file_path"].replace("/", ".")]`` is a frame's image. Written deterministically (sorted entries,
fixed times and owners; no ``done.json`` or unfinished ``.*.part`` files), each tar atomically.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from ..files import atomic_path


def shard_key(line: dict) -> str:
    return f"{line['class']}/{line['model_id']}".replace(".", "_")


def write_shards(out: Path, n: int) -> list[Path]:
    """Write ``n`` tar shards of the finished objects listed in ``out/manifest.jsonl``; returns their paths."""
    out = Path(out)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    objects = [x for x in lines if x["status"] == "ok"]
    paths = []
    for s in range(n):
        path = out / "shards" / f"shard-{s:05d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for line in objects[s::n]:
                folder = out / line["path"]
                for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "done.json"
                                and not p.name.startswith(".")):
                    data = f.read_bytes()
                    info = tarfile.TarInfo(f"{shard_key(line)}.{f.relative_to(folder).as_posix().replace('/', '.')}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
