"""Reference images for image-conditioned methods: read, mask, recentre.

An image becomes an RGBA array ``[H, W, 4]`` float32 in [0, 1] whose alpha is the object's mask:

- an image with a real alpha channel (some pixel below 0.99) is used as it is;
- an opaque image (RGB, or RGBA with alpha 1 everywhere) gets its mask from rembg when rembg is installed *and* its
  model file is already on disk (``$U2NET_HOME`` or ``~/.u2net``, rembg's own rule); nothing is downloaded. Without
  them it is a :class:`~backend.errors.BadInput` that says how to provide a mask.

:func:`recentre` crops to the mask's bounding box and pads to a square in which the object's longer side is
``1 - border_ratio`` of the side (DreamGaussian's ``process.py``: border ratio 0.2).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInput

log = logging.getLogger(__name__)

#: DreamGaussian's process.py border: the object spans 80 % of the square
DEFAULT_BORDER_RATIO = 0.2


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> ``[H, W, 3|4]`` float32 in [0, 1] (RGBA when the file has alpha or a transparent colour)."""
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # PIL raises many types for unreadable files
        raise BadInput(f"image {path}: cannot be read ({e})", {"field": "image", "path": str(path)}) from e
    mode = "RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB"
    return np.asarray(im.convert(mode), dtype=np.float32) / 255.0


def has_mask(image: np.ndarray) -> bool:
    """True when ``image [H, W, 4]`` carries a real alpha mask (not alpha 1 everywhere)."""
    return image.ndim == 3 and image.shape[-1] == 4 and float(image[..., 3].min()) < 0.99


def rembg_model_path(model: str = "u2net") -> Path:
    """Where rembg looks for ``model`` (``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else ``~/.u2net``)."""
    home = os.getenv("U2NET_HOME", os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net"))
    return Path(os.path.expanduser(home)) / f"{model}.onnx"


def rembg_available(model: str = "u2net") -> bool:
    """rembg importable and ``model``'s file present locally (so masking never triggers a download)."""
    import importlib.util

    return importlib.util.find_spec("rembg") is not None and rembg_model_path(model).is_file()


def rembg_mask(rgb: np.ndarray, model: str = "u2net") -> np.ndarray:
    """Foreground alpha ``[H, W]`` float32 in [0, 1] of ``rgb [H, W, 3]`` from rembg's ``model``."""
    import rembg

    session = rembg.new_session(model)
    pil = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    mask = rembg.remove(pil, session=session, only_mask=True)
    return np.asarray(mask, dtype=np.float32) / 255.0


def ensure_mask(image: np.ndarray, what: str = "image", rembg_model: str = "u2net") -> np.ndarray:
    """``image [H, W, 3|4]`` -> RGBA ``[H, W, 4]`` with the object's mask in alpha (see the module docstring)."""
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise BadInput(f"{what}: expected an RGB or RGBA image, got shape {list(image.shape)}", {"field": "image"})
    if has_mask(image):
        return image.astype(np.float32)
    if not rembg_available(rembg_model):
        raise BadInput(
            f"{what} has no transparency, so the object's mask is unknown. Give an RGBA image whose alpha is the "
            f"object's mask (cut the background out in any image editor), or install rembg (pip install rembg "
            f"onnxruntime) and put its {rembg_model} model at {rembg_model_path(rembg_model)}",
            {"field": "image", "needs": "alpha mask", "rembg_model": str(rembg_model_path(rembg_model))})
    log.info("%s: masking with rembg (%s)", what, rembg_model)
    rgb = image[..., :3].astype(np.float32)
    return np.concatenate([rgb, rembg_mask(rgb, rembg_model)[..., None]], -1)


def recentre(rgba: np.ndarray, ratio: float, what: str = "image") -> np.ndarray:
    """Crop ``rgba [H, W, 4]`` (float in [0, 1]) to the alpha's bounding box and pad it to a square in which the
    box's longer side is ``ratio`` of the side, centred. Returns ``[S, S, 4]`` at the input's pixel scale."""
    ys, xs = np.nonzero(rgba[..., 3] > 0.5 / 255)
    if len(ys) == 0:
        raise BadInput(f"{what}: the foreground mask is empty (fully transparent image, or no object found on the "
                       f"backdrop)", {"field": "image"})
    crop = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape[:2]
    side = max(int(round(max(h, w) / ratio)), max(h, w))
    out = np.zeros((side, side, 4), dtype=np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = crop
    return out


def square(rgba: np.ndarray) -> np.ndarray:
    """Pad ``rgba [H, W, 4]`` with transparent pixels to a centred square (no recentring of the object)."""
    h, w = rgba.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side, 4), dtype=np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = rgba
    return out


def resize_rgba(rgba: np.ndarray, size: int) -> np.ndarray:
    """Area-resize a square ``rgba [S, S, 4]`` to ``[size, size, 4]`` with premultiplied alpha (no dark fringes)."""
    import cv2

    premul = np.concatenate([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], -1)
    interp = cv2.INTER_AREA if rgba.shape[0] >= size else cv2.INTER_LINEAR
    out = cv2.resize(premul, (size, size), interpolation=interp)
    alpha = out[..., 3:]
    rgb = np.where(alpha > 1e-6, out[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return np.concatenate([np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)], -1).astype(np.float32)


def prepare_reference(path: str | os.PathLike, size: int, border_ratio: float = DEFAULT_BORDER_RATIO,
                      recenter: bool = True, rembg_model: str = "u2net") -> np.ndarray:
    """Read ``path``, mask it, recentre it (object spans ``1 - border_ratio``) and resize -> ``[size, size, 4]``
    float32 in [0, 1], straight (not premultiplied) colour."""
    what = Path(path).name
    rgba = ensure_mask(read_image(path), what, rembg_model)
    rgba = recentre(rgba, 1.0 - border_ratio, what) if recenter else square(rgba)
    return resize_rgba(rgba, size)
