"""The registry of published checkpoints: where they live, how to fetch them, and tiny stand-ins for tests.

Each :class:`WeightsEntry` names a Hugging Face hub repository, the revision and the files we use, its licence,
its approximate download size, the methods that need it and a ``tiny_factory``: the dotted path
``"package.module:function"`` of a function ``factory(out_dir: Path, entry: WeightsEntry) -> None`` that writes a
tiny randomly initialised model in the entry's real on-disk layout (so tests and smoke runs exercise the same
loader code as real weights). Helpers owning other model families register their factory by adding that string.

Resolution order (:func:`resolve`): an explicit path, then ``$GEN3D_WEIGHTS_DIR/<name>``, then the Hugging Face
cache (``snapshot_download(..., local_files_only=True)``). Nothing is ever downloaded implicitly: a missing
entry raises :class:`~backend.errors.MissingWeights` naming ``python -m gen3d weights download NAME``.

A folder written by :func:`write_tiny` carries the marker file :data:`TINY_MARKER`; :func:`status` then reports
``"tiny"`` so nobody mistakes smoke-test output for real generation.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .errors import BadInput, DownloadFailed, MissingWeights, NotFound
from .files import atomic_dir

log = logging.getLogger(__name__)

#: marker written into every tiny model folder
TINY_MARKER = "GEN3D_TINY.json"
#: environment variable naming the folder that holds one sub-folder per entry
WEIGHTS_DIR_ENV = "GEN3D_WEIGHTS_DIR"

Status = Literal["present", "missing", "tiny"]

#: diffusers-folder patterns: configs, tokenizers and the fp16 safetensors (what fp16-on-CUDA and fp32-on-CPU load)
_DIFFUSERS_FP16 = ("model_index.json", "*/*.json", "*/*.txt", "*/*.fp16.safetensors")
#: Zero123 components (the kxhit repositories also carry a safety checker we never load)
_ZERO123 = ("model_index.json", "scheduler/*", "feature_extractor/*", "image_encoder/*", "vae/*", "unet/*")


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint. ``files`` are ``allow_patterns`` for ``snapshot_download`` (``()`` = all files)."""

    name: str
    repo: str
    description: str
    license: str
    size_gb: float
    methods: tuple[str, ...]
    files: tuple[str, ...] = ()
    revision: str = "main"
    #: non-commercial or otherwise restrictive: ``download`` shows the licence and needs ``--accept-license``
    restrictive: bool = False
    license_url: str = ""
    #: ``"package.module:function"`` writing a tiny model in this layout, or ``""`` when none exists yet
    tiny_factory: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def download_command(self) -> str:
        """How to get it: ``weights download``, or ``extra["command"]`` for weights the user trains (no ``repo``)."""
        return self.extra.get("command") or f"python -m gen3d weights download {self.name}"


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}"


_GUIDANCE_TINY = "gen3d.backend.guidance.tiny"
_LRM_TINY = "gen3d.backend.models.lrm.tiny:write_tiny"

ENTRIES: dict[str, WeightsEntry] = {e.name: e for e in [
    WeightsEntry("sd21-base", "stabilityai/stable-diffusion-2-1-base",
                 "Stable Diffusion 2.1-base (512 px, epsilon prediction): text prior for SDS/CSD/VSD",
                 "CreativeML Open RAIL++-M", 2.6, ("dreamgaussian-text", "prolificdreamer", "csd", "dreamtime"),
                 files=_DIFFUSERS_FP16,
                 license_url=_hf("stabilityai/stable-diffusion-2-1-base") + "/blob/main/LICENSE.md",
                 tiny_factory=f"{_GUIDANCE_TINY}:write_sd21_base"),
    WeightsEntry("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "Stable Diffusion 1.5 (512 px): Magic123's 2D prior and the ControlNet SD1.5 base",
                 "CreativeML Open RAIL-M", 2.7, ("magic123", "controlnet-dataset"),
                 files=_DIFFUSERS_FP16, license_url=_hf("stable-diffusion-v1-5/stable-diffusion-v1-5"),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_sd15"),
    WeightsEntry("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0",
                 "Stable Diffusion XL base 1.0: base model of the ControlNet canny SDXL dataset renderer",
                 "CreativeML Open RAIL++-M", 7.0, ("controlnet-dataset",),
                 files=_DIFFUSERS_FP16, license_url=_hf("stabilityai/stable-diffusion-xl-base-1.0"),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_sdxl_base"),
    WeightsEntry("zero123-xl", "ashawkey/zero123-xl-diffusers",
                 "Zero123-XL, diffusers layout with clip_camera_projection (DreamGaussian's image prior)",
                 "MIT (model card; the upstream zero123-xl weight licence is unverified)", 5.9,
                 ("dreamgaussian", "magic123", "dreamcraft3d"),
                 files=_ZERO123 + ("clip_camera_projection/*",),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_zero123_clip_camera_projection"),
    WeightsEntry("zero123-105000", "kxic/zero123-105000",
                 "Zero123 (105000 steps), kxhit layout with cc_projection (Magic123's 3D prior)",
                 "MIT", 5.9, ("magic123",),
                 files=_ZERO123 + ("cc_projection/*",), tiny_factory=f"{_GUIDANCE_TINY}:write_zero123_cc_projection"),
    WeightsEntry("stable-zero123", "ashawkey/stable-zero123-diffusers",
                 "Stable Zero123, diffusers layout with clip_camera_projection",
                 "Stability AI Non-Commercial Research Community License (non-commercial use only)", 5.9,
                 ("dreamgaussian", "dreamcraft3d"), files=_ZERO123 + ("clip_camera_projection/*",),
                 restrictive=True, license_url=_hf("stabilityai/stable-zero123") + "/blob/main/LICENSE.md",
                 tiny_factory=f"{_GUIDANCE_TINY}:write_stable_zero123", extra={"stable": True}),
    WeightsEntry("mvdream", "ashawkey/mvdream-sd2.1-diffusers",
                 "MVDream sd-v2.1-base-4view, diffusers port (UNet with the original LDM parameter names)",
                 "OpenRAIL (the hub tag; MVDream's weights are released under CreativeML Open RAIL-M, its code MIT). "
                 "The port's repository ashawkey/mvdream_diffusers has no LICENSE file", 5.2,
                 ("mvdream", "dreamgaussian-text"),
                 files=("model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"),
                 license_url=_hf("MVDream/MVDream"), tiny_factory=f"{_GUIDANCE_TINY}:write_mvdream"),
    WeightsEntry("imagedream", "ashawkey/imagedream-ipmv-diffusers",
                 "ImageDream sd-v2.1-base-4view-ipmv (pixel controller), diffusers port with the CLIP ViT-H/14 "
                 "image encoder", "OpenRAIL (the hub tag of ashawkey/imagedream-ipmv-diffusers; the original "
                 "card Peng-Wang/ImageDream was not read here). ImageDream code Apache-2.0; the port's repository "
                 "ashawkey/mvdream_diffusers has no LICENSE file", 6.6, ("imagedream",),
                 files=("model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"),
                 license_url=_hf("Peng-Wang/ImageDream"), tiny_factory=f"{_GUIDANCE_TINY}:write_imagedream"),
    WeightsEntry("imagedream-local", "",
                 "ImageDream sd-v2.1-base-4view-ipmv-local (image tokens only, --set ip_mode=local): the original "
                 "checkpoint's UNet converted onto the imagedream folder", "as imagedream", 6.6, ("imagedream",),
                 license_url=_hf("Peng-Wang/ImageDream"),
                 extra={"verb": "convert", "origin": "converted from Peng-Wang/ImageDream",
                        "command": "python -m gen3d weights convert imagedream-local "
                                   "sd-v2.1-base-4view-ipmv-local.pt (from huggingface.co/Peng-Wang/ImageDream)"}),
    WeightsEntry("controlnet-canny-sd15", "lllyasviel/control_v11p_sd15_canny",
                 "ControlNet 1.1 canny for SD 1.5 (needs sd15)", "CreativeML Open RAIL-M", 1.45,
                 ("controlnet-dataset",), files=("config.json", "diffusion_pytorch_model.fp16.safetensors"),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_controlnet_sd15"),
    WeightsEntry("controlnet-canny-sdxl", "diffusers/controlnet-canny-sdxl-1.0",
                 "ControlNet canny for SDXL 1.0 (needs sdxl-base)", "CreativeML Open RAIL++-M", 2.5,
                 ("controlnet-dataset",), files=("config.json", "diffusion_pytorch_model.fp16.safetensors"),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_controlnet_sdxl"),
    WeightsEntry("openlrm-small", "zxhezexin/openlrm-mix-small-1.1", "OpenLRM mix small 1.1 (446 MB)",
                 "CC BY-NC 4.0 (non-commercial use only)", 0.45, ("lrm",), restrictive=True,
                 files=("config.json", "model.safetensors"), license_url=_hf("zxhezexin/openlrm-mix-small-1.1"),
                 tiny_factory=_LRM_TINY),
    WeightsEntry("openlrm-base", "zxhezexin/openlrm-mix-base-1.1", "OpenLRM mix base 1.1 (1.04 GB)",
                 "CC BY-NC 4.0 (non-commercial use only)", 1.04, ("lrm",), restrictive=True,
                 files=("config.json", "model.safetensors"), license_url=_hf("zxhezexin/openlrm-mix-base-1.1"),
                 tiny_factory=_LRM_TINY),
    WeightsEntry("openlrm-large", "zxhezexin/openlrm-mix-large-1.1", "OpenLRM mix large 1.1 (1.81 GB)",
                 "CC BY-NC 4.0 (non-commercial use only)", 1.81, ("lrm",), restrictive=True,
                 files=("config.json", "model.safetensors"), license_url=_hf("zxhezexin/openlrm-mix-large-1.1"),
                 tiny_factory=_LRM_TINY),
    WeightsEntry("triposr", "stabilityai/TripoSR", "TripoSR (config.yaml + model.ckpt, 1.7 GB)", "MIT", 1.68,
                 ("lrm",), files=("config.yaml", "model.ckpt"), tiny_factory=_LRM_TINY),
    WeightsEntry("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small-hf",
                 "Depth Anything V2 Small (relative inverse depth): Magic123's monocular depth prior",
                 "Apache-2.0", 0.1, ("magic123",),
                 files=("config.json", "preprocessor_config.json", "model.safetensors"),
                 tiny_factory="gen3d.backend.guidance.depth:write_tiny_depth_anything"),
    WeightsEntry("instantmesh-nerf-base", "TencentARC/InstantMesh",
                 "InstantMesh NeRF reconstructor, base (6 Zero123++ views -> triplane; Lightning .ckpt, 1.25 GB)",
                 "Apache-2.0", 1.25, ("instant3d",), files=("instant_nerf_base.ckpt",),
                 license_url=_hf("TencentARC/InstantMesh"),
                 tiny_factory="gen3d.backend.models.instant3d.tiny:write_tiny"),
    WeightsEntry("instantmesh-nerf-large", "TencentARC/InstantMesh",
                 "InstantMesh NeRF reconstructor, large (Lightning .ckpt, 1.51 GB)", "Apache-2.0", 1.51,
                 ("instant3d",), files=("instant_nerf_large.ckpt",), license_url=_hf("TencentARC/InstantMesh"),
                 tiny_factory="gen3d.backend.models.instant3d.tiny:write_tiny"),
    WeightsEntry("zero123plus-v1.2", "sudo-ai/zero123plus-v1.2",
                 "Zero123++ v1.2 (image -> six 320-px views in a 3x2 image; diffusers folder run by our "
                 "Zero123PlusPipeline): instant3d's image front", "CC BY-NC 4.0 (weights, per the SUDO-AI-3D/zero123plus "
                 "README; code Apache-2.0; the hub card's former 'openrail' tag was deleted with its README)", 5.58,
                 ("instant3d",), files=("model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"),
                 restrictive=True, license_url="https://github.com/SUDO-AI-3D/zero123plus#license",
                 tiny_factory="gen3d.backend.models.zero123plus.tiny:write_tiny_zero123plus"),
    WeightsEntry("instantmesh-zero123plus-unet", "TencentARC/InstantMesh",
                 "InstantMesh's white-background fine-tune of the Zero123++ v1.2 UNet (state dict, fp16, 1.73 GB; "
                 "needs zero123plus-v1.2)", "CC BY-NC 4.0 (a fine-tune of the Zero123++ v1.2 weights; the "
                 "InstantMesh repository itself is Apache-2.0)", 1.73, ("instant3d",),
                 files=("diffusion_pytorch_model.bin",), restrictive=True,
                 license_url="https://github.com/SUDO-AI-3D/zero123plus#license",
                 tiny_factory="gen3d.backend.models.zero123plus.tiny:write_tiny_instantmesh_unet"),
    WeightsEntry("syncdreamer", "liuyuan-pal/SyncDreamer",
                 "SyncDreamer syncdreamer-pretrain.ckpt (5.6 GB Lightning checkpoint; holds its own CLIP ViT-L/14 "
                 "image tower and SD VAE)",
                 "no licence stated for the checkpoint (code: MIT); fine-tuned from Zero123-XL, whose weights "
                 "derive from Stable Diffusion 1.x (CreativeML Open RAIL-M)", 5.57, ("syncdreamer",),
                 files=("syncdreamer-pretrain.ckpt",), license_url="https://github.com/liuyuan-pal/SyncDreamer",
                 tiny_factory="gen3d.backend.models.syncdreamer.tiny:write_tiny",
                 extra={"manual_url": "https://drive.google.com/file/d/1ypyD5WXxAnsWjnHgAfOAGolV0Zd9kpam/view"}),
    WeightsEntry("agp", "", "SweetDreamer's aligned geometric prior (CCM UNet), trained by the user: the official "
                 "checkpoint is unreleased", "ours (trained by the user; its SD 2.1-base initialisation is "
                 "CreativeML Open RAIL++-M)", 3.5, ("sweetdreamer", "dreamgaussian-text"),
                 files=("model_index.json", "unet/*", "scheduler/*", "tokenizer/*", "text_encoder/*"),
                 tiny_factory=f"{_GUIDANCE_TINY}:write_agp",
                 extra={"command": "python -m gen3d train agp --data RENDERS --out RUN, then use "
                                   "GEN3D_WEIGHTS_DIR=RUN/weights"}),
]}


def get_entry(name: str) -> WeightsEntry:
    if name not in ENTRIES:
        raise NotFound(f"unknown weights {name!r}; known: {', '.join(sorted(ENTRIES))}",
                       {"field": "weights", "value": name})
    return ENTRIES[name]


def weights_dir() -> Path | None:
    """``$GEN3D_WEIGHTS_DIR`` as a path, or None."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def _hf_cache_path(entry: WeightsEntry) -> Path | None:
    from huggingface_hub import snapshot_download

    if not entry.repo:  # trained by the user: only in the weights folder
        return None
    try:
        path = Path(snapshot_download(entry.repo, revision=entry.revision, local_files_only=True,
                                      allow_patterns=list(entry.files) or None))
    except Exception:  # any "not cached" flavour (LocalEntryNotFoundError, offline mode, ...)
        return None
    return path if path.is_dir() and any(path.iterdir()) else None


def find(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder holding ``name``'s files, or None (explicit path, then the weights folder, then the HF cache)."""
    entry = get_entry(name)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise BadInput(f"weights path {path} for {name!r} does not exist", {"field": "weights", "path": str(path)})
        return path
    root = weights_dir()
    if root is not None and (root / name).is_dir() and any((root / name).iterdir()):
        return root / name
    return _hf_cache_path(entry)


def resolve(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """Like :func:`find` but a missing entry raises :class:`MissingWeights` naming the download command."""
    path = find(name, explicit)
    if path is None:
        entry = get_entry(name)
        where = f"{weights_dir() / name} or the Hugging Face cache" if weights_dir() else "the Hugging Face cache"
        origin = entry.repo or entry.extra.get("origin", "trained by the user")
        verb = entry.extra.get("verb", "fetch" if entry.repo else "train")
        raise MissingWeights(f"weights {name!r} ({origin}) are not in {where}; {verb} them with: "
                             f"{entry.download_command}",
                             {"weights": name, "repo": entry.repo, "command": entry.download_command})
    return path


def is_tiny(path: str | os.PathLike) -> bool:
    return (Path(path) / TINY_MARKER).exists()


def status(name: str, explicit: str | os.PathLike | None = None) -> Status:
    """``"present"``, ``"missing"`` or ``"tiny"`` (a smoke-test model written by :func:`write_tiny`)."""
    path = find(name, explicit)
    if path is None:
        return "missing"
    return "tiny" if is_tiny(path) else "present"


def describe(name: str) -> dict:
    """What ``weights list`` and ``/v1/methods`` show for one entry."""
    e = get_entry(name)
    path = find(name)
    st: Status = "missing" if path is None else ("tiny" if is_tiny(path) else "present")
    return {"name": e.name, "repo": e.repo, "revision": e.revision, "description": e.description,
            "license": e.license, "restrictive": e.restrictive, "size_gb": e.size_gb, "methods": list(e.methods),
            "status": st, "tiny": st == "tiny", "path": str(path) if path else None,
            "command": e.download_command}


def uses_tiny(names) -> bool:
    """True when any of ``names`` resolves to tiny smoke-test weights (for meta.json and /v1/methods)."""
    return any(status(n) == "tiny" for n in names)


def load_factory(entry: WeightsEntry) -> Callable[[Path, WeightsEntry], None] | None:
    """The entry's tiny factory function, imported from its dotted path, or None when it has none."""
    if not entry.tiny_factory:
        return None
    module, _, func = entry.tiny_factory.partition(":")
    return getattr(importlib.import_module(module), func)


def write_tiny(name: str, root: str | os.PathLike) -> Path | None:
    """Write the tiny model of ``name`` to ``root/name`` (replacing it) with the tiny marker; None if no factory."""
    entry = get_entry(name)
    factory = load_factory(entry)
    if factory is None:
        return None
    out = Path(root) / name
    with atomic_dir(out) as tmp:
        factory(tmp, entry)
        (tmp / TINY_MARKER).write_text(json.dumps({"name": name, "repo": entry.repo, "note":
                                                   "randomly initialised smoke-test model, not real weights"}) + "\n")
    return out


def folder_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def download(name: str, accept_license: bool = False, dest: str | os.PathLike | None = None,
             progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Fetch ``name`` with huggingface_hub (resumes partial files); ``progress(done, total, unit)`` hears the bytes
    written (:func:`gen3d.backend.transfer.byte_bars`), else the hub shows its own bars.

    Goes to ``dest``, else ``$GEN3D_WEIGHTS_DIR/<name>``, else the Hugging Face cache. Restrictive (e.g.
    non-commercial) licences need ``accept_license=True``; otherwise :class:`BadInput` shows the licence.
    """
    from huggingface_hub import snapshot_download

    from .transfer import byte_bars, planned_bytes

    entry = get_entry(name)
    if entry.extra.get("manual_url"):  # not on the Hugging Face hub
        raise BadInput(f"{name} is not on the Hugging Face hub: download {entry.files[0]} from "
                       f"{entry.extra['manual_url']} and put it in {(weights_dir() or Path('WEIGHTS_DIR')) / name}/ "
                       f"(or pass its path as weights_path)", {"weights": name, "url": entry.extra["manual_url"]})
    if not entry.repo:
        raise BadInput(f"{name} is not published as a folder; {entry.extra.get('verb', 'train')} it with: "
                       f"{entry.download_command}", {"weights": name})
    if entry.restrictive and not accept_license:
        raise BadInput(f"{name} ({entry.repo}) is released under a restrictive licence: {entry.license}"
                       f"{' (' + entry.license_url + ')' if entry.license_url else ''}. Read it, then rerun with "
                       f"--accept-license", {"weights": name, "license": entry.license, "url": entry.license_url})
    root = Path(dest) if dest else (weights_dir() / name if weights_dir() else None)
    log.info("downloading %s from %s@%s (about %.1f GB, licence: %s)", name, entry.repo, entry.revision,
             entry.size_gb, entry.license)
    try:
        where = dict(revision=entry.revision, allow_patterns=list(entry.files) or None,
                     local_dir=str(root) if root else None)
        bars = byte_bars(progress, planned_bytes(snapshot_download, entry.repo, **where)) if progress else None
        path = snapshot_download(entry.repo, tqdm_class=bars, **where)
    except Exception as e:  # no network, offline mode, gated or moved repository, disk full: one line says which
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DownloadFailed(f"cannot download {name} from {entry.repo}: {reason}",
                             {"weights": name, "repo": entry.repo, "exception": type(e).__name__}) from None
    return Path(path)


def verify(name: str, explicit: str | os.PathLike | None = None) -> list[str]:
    """Problems with an entry on disk (empty list = fine): each file pattern matches, safetensors headers read."""
    from fnmatch import fnmatch

    from safetensors import safe_open

    path = find(name, explicit)
    if path is None:
        return [f"missing; fetch with: {get_entry(name).download_command}"]
    files = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    problems = [] if is_tiny(path) else [f"no file matches {pat!r}" for pat in get_entry(name).files
                                         if not any(fnmatch(f, pat) for f in files)]
    for f in files:
        if f.endswith(".safetensors"):
            try:
                with safe_open(str(path / f), "pt") as fh:
                    fh.keys()
            except Exception as e:  # a truncated download or a pointer file
                problems.append(f"{f}: unreadable safetensors ({e})")
    return problems
