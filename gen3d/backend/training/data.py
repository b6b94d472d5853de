"""Training data: folders of multi-view renders, one object per folder, and keyed sampling.

A data folder ``DIR`` holds one folder per object (at any depth, e.g. ``DIR/<class>/<id>/`` as ``dataset
multiview`` writes them), each a nerfstudio ``transforms.json`` folder with RGBA PNGs (see
:mod:`backend.geometry.transforms`; ``reconstruct`` reads the same). An optional ``DIR/manifest.jsonl`` (one JSON
object per line: ``path``, the object's folder relative to ``DIR``, or ``id``/``model_id`` naming a direct
sub-folder; and a ``status``) selects the objects: lines whose status is not ``"ok"`` are skipped. Without a
manifest every folder below ``DIR`` holding a ``transforms.json`` is an object; ``DIR`` may itself be one.

Sampling is *keyed*: :class:`KeyedSampler` yields keys ``(epoch, index)``, the epochs' seeded permutations laid end
to end, and a dataset derives every random choice of an item (which views, crops, backgrounds) from
:func:`item_generator` of its key. An item is then the same whatever the number of processes, data-loader workers or
the step a run was resumed at, which is what makes N processes equal one process with an N-times batch, and a
resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import BadInput
from ..geometry.transforms import FILENAME, TransformsFolder, scan_transforms

MANIFEST = "manifest.jsonl"


@dataclass
class ObjectViews:
    """One object: its name (its folder relative to the data folder) and its scanned views."""

    name: str
    views: TransformsFolder

    def __len__(self) -> int:
        return len(self.views.image_paths)


def _manifest_folders(root: Path) -> list[Path]:
    folders, seen = [], set()
    path = root / MANIFEST
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name = entry.get("path", entry.get("id", entry.get("model_id")))
        except (json.JSONDecodeError, AttributeError):
            raise BadInput(f"{path}, line {n}: not a JSON object", {"file": str(path), "line": n}) from None
        if entry.get("status", "ok") != "ok":
            continue
        if not isinstance(name, str) or not name:
            raise BadInput(f"{path}, line {n}: no 'path' or 'id' naming the object's folder",
                           {"file": str(path), "line": n})
        if name not in seen:
            seen.add(name)
            folders.append(root / name)
    return folders


def object_folders(root: str | Path) -> list[Path]:
    """The object folders of a data folder (see the module docstring), in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"--data {root}: not a folder", {"field": "data", "path": str(root)})
    if (root / FILENAME).is_file():
        return [root]
    if (root / MANIFEST).is_file():
        return _manifest_folders(root)
    return sorted(p.parent for p in root.rglob(FILENAME))


def scan_objects(root: str | Path, min_views: int) -> list[ObjectViews]:
    """Scan every object folder (json and image headers only); each needs ``min_views`` views. Raises one
    :class:`BadInput` naming the first problem (an empty or wrong folder, a broken object)."""
    root = Path(root)
    folders = object_folders(root)
    if not folders:
        raise BadInput(f"--data {root}: no object folders (sub-folders with a {FILENAME}, or a {MANIFEST} "
                       f"listing them)", {"field": "data", "path": str(root)})
    objects = []
    for folder in folders:
        views = scan_transforms(folder)
        if len(views.image_paths) < min_views:
            raise BadInput(f"{folder / FILENAME}: {len(views.image_paths)} views, the recipe needs at least "
                           f"{min_views}", {"field": "data", "path": str(folder)})
        objects.append(ObjectViews(folder.relative_to(root).as_posix() if folder != root else root.name, views))
    return objects


def caption_ids(tokenizer, caption: str) -> torch.Tensor:
    """CLIP token ids ``[max_length]`` of ``caption``, padded and truncated to the tokenizer's length."""
    return tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids[0]


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one item's random choices, a function of ``(seed, epoch, index)`` only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index & (2 ** 63 - 1))


class KeyedSampler(Sampler):
    """The first ``total`` keys ``(epoch, index)`` of the endless sequence of seeded permutations of
    ``range(length)``, one per epoch."""

    def __init__(self, length: int, total: int, seed: int):
        self.length, self.total, self.seed = length, total, seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, epoch = None, -1
        for k in range(self.total):
            e, i = divmod(k, self.length)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + e)).tolist()
            yield epoch, perm[i]
