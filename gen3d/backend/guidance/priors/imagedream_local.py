"""ImageDream's ``local`` checkpoint as a diffusers folder (registry entry ``imagedream-local``).

bytedance publishes two ImageDream UNets on ``Peng-Wang/ImageDream``: ``sd-v2.1-base-4view-ipmv.pt`` (the pixel
controller: the reference latent as a 5th frame plus image tokens; converted by the diffusers port into
``ashawkey/imagedream-ipmv-diffusers``, our ``imagedream``) and ``sd-v2.1-base-4view-ipmv-local.pt`` (image tokens
only, 4 frames), which no one converted. Both are original LDM checkpoints with the same names: the UNet under
``model.diffusion_model.`` (exactly the port's 773 UNet names), the VAE under ``vae_model.`` and OpenCLIP under
``clip_model.``. ImageDream trains only the UNet (LDM keeps the autoencoder and the encoders frozen), and the port
takes its text encoder from SD 2.1 and its image encoder from laion's ViT-H/14 in any case, so the ``local`` folder is
the ``imagedream`` folder with the UNet's weights replaced: :func:`convert_local`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ...errors import BadInput
from ...files import atomic_dir

#: where the original checkpoint keeps the UNet
UNET_PREFIX = "model.diffusion_model."
CHECKPOINT = "sd-v2.1-base-4view-ipmv-local.pt"
SOURCE = "https://huggingface.co/Peng-Wang/ImageDream"


def _unet_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The ``model.diffusion_model.*`` tensors of an original LDM checkpoint, prefix removed."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects beyond plain tensors
        raise BadInput(f"cannot read {checkpoint.name} as a PyTorch checkpoint: {type(e).__name__}",
                       {"field": "checkpoint", "value": checkpoint.name}) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    unet = {k[len(UNET_PREFIX):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(UNET_PREFIX)}
    if not unet:
        raise BadInput(f"{checkpoint.name} holds no '{UNET_PREFIX}*' tensors: not an ImageDream checkpoint",
                       {"field": "checkpoint", "value": checkpoint.name})
    return unet


def _check_against(unet: dict[str, torch.Tensor], config: dict, name: str) -> None:
    """Every name and shape of the UNet ``config`` builds (on the meta device), or one error saying what differs."""
    from ...models.mvdream_unet import MultiViewUNetModel

    with torch.device("meta"):
        expected = {k: v.shape for k, v in MultiViewUNetModel.from_config(config).state_dict().items()}
    missing = sorted(set(expected) - set(unet))
    unexpected = sorted(set(unet) - set(expected))
    wrong = sorted(k for k in set(expected) & set(unet) if tuple(unet[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if v]
        raise BadInput(f"{name} does not match the installed ImageDream UNet: {'; '.join(parts)}",
                       {"field": "checkpoint", "missing": len(missing), "unexpected": len(unexpected),
                        "shape": len(wrong)})


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the multi-GB encoders are not duplicated where the filesystem allows
    except OSError:
        shutil.copy2(src, dst)


def convert_local(checkpoint: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out``: the ImageDream folder ``base`` with ``unet/`` weights from ``checkpoint`` (the original
    ``-local`` ``.pt``), in ``base``'s UNet dtype. Checked name by name first; ``out`` appears only when complete."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ...models.mvdream_unet import MultiViewUNetModel

    checkpoint, base, out = Path(checkpoint), Path(base), Path(out)
    if not checkpoint.is_file():
        raise BadInput(f"checkpoint {checkpoint} does not exist", {"field": "checkpoint", "path": str(checkpoint)})
    weights = sorted((base / "unet").glob("*.safetensors"))
    if not weights:
        raise BadInput(f"{base} is not an ImageDream diffusers folder (no unet/*.safetensors)",
                       {"field": "base", "path": str(base)})
    with safe_open(weights[0], "pt") as f:
        dtype = f.get_slice(next(iter(f.keys()))).get_dtype()
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(dtype, torch.float32)
    unet = _unet_state(checkpoint)
    _check_against(unet, MultiViewUNetModel.load_config(base / "unet"), checkpoint.name)

    with atomic_dir(out) as tmp:
        for src in base.rglob("*"):
            rel = src.relative_to(base)
            if src.is_file() and not (rel.parts[0] == "unet" and src.suffix in (".safetensors", ".bin")):
                _link_or_copy(src, tmp / rel)
        save_file({k: v.to(dtype).contiguous() for k, v in unet.items()},
                  str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
    return out
