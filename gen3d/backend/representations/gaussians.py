"""3D Gaussians and the standard 3DGS PLY file (the layout of the Inria code, read by common splat viewers).

PLY layout (``binary_little_endian``, one ``vertex`` element, every property ``float``), in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3`` where ``K = (degree+1)**2``.
``f_rest`` is channel-major, as the Inria ``save_ply`` writes ``features_rest [N,K-1,3]`` transposed to
``[N,3,K-1]`` and flattened: all higher-order coefficients of R, then of G, then of B. ``opacity`` is the logit,
``scale_*`` are log-scales and ``rot_*`` the (unnormalised) quaternion ``w x y z``; normals are written as zeros.
Two-sided Gaussians append their back colours as ``back_dc_0..2 back_rest_*`` (same layout), which splat viewers
ignore (they show the front colours).
Positions are stored in the backend's world frame (Blender's, Z up) unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from ..files import atomic_path

#: SH band-0 constant: colour = 0.5 + SH_C0 * f_dc
SH_C0 = 0.28209479177387814


@dataclass
class Gaussians:
    """A set of ``N`` 3D Gaussians (raw, optimisable parameters; see the properties for activated values).

    ``means [N,3]`` world positions; ``quats [N,4]`` rotations ``w x y z`` (any norm);
    ``log_scales [N,3]``; ``opacity_logits [N]``; ``sh [N,K,3]`` colour SH coefficients with ``K = (d+1)**2``
    for degree ``d`` in 0..3 (``sh[:, 0]`` is the DC term: colour = 0.5 + SH_C0 * sh[:, 0]); ``sh_back``
    (same shape, or None) makes them two-sided surfels: the colour seen from behind the local z axis
    (:mod:`gen3d.backend.pipelines.stages.surfels`).
    All float32 on one device.
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor
    sh_back: torch.Tensor | None = None

    def __post_init__(self):
        n = len(self.means)
        for name, shape in (("means", (n, 3)), ("quats", (n, 4)), ("log_scales", (n, 3)), ("opacity_logits", (n,))):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float32)
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be {list(shape)}, got {list(value.shape)}")
            setattr(self, name, value)
        self.sh = torch.as_tensor(self.sh, dtype=torch.float32)
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or self.sh.shape[1] not in (1, 4, 9, 16):
            raise ValueError(f"sh must be [N,K,3] with K in 1, 4, 9, 16, got {list(self.sh.shape)}")
        if self.sh_back is not None:
            self.sh_back = torch.as_tensor(self.sh_back, dtype=torch.float32)
            if self.sh_back.shape != self.sh.shape:
                raise ValueError(f"sh_back must be shaped as sh {list(self.sh.shape)}, got {list(self.sh_back.shape)}")

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[1]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device) -> "Gaussians":
        return replace(self, **{k: v.to(device) for k, v in vars(self).items() if v is not None})

    # --- activated values ---------------------------------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        """``[N,3]`` standard deviations along the local axes (``exp(log_scales)``)."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        """``[N]`` in (0, 1) (``sigmoid(opacity_logits)``)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> torch.Tensor:
        """``[N,4]`` unit quaternions ``w x y z``."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def colors(self) -> torch.Tensor:
        """``[N,3]`` view-independent base colour from the DC term (may leave [0, 1])."""
        return 0.5 + SH_C0 * self.sh[:, 0]

    @classmethod
    def from_activated(cls, means, scales, quats, opacities, colors, sh_degree: int = 0) -> "Gaussians":
        """Gaussians from activated values (``scales > 0``, ``opacities`` in (0, 1), base ``colors [N,3]``);
        higher SH bands start at zero."""
        colors = torch.as_tensor(colors, dtype=torch.float32)
        sh = torch.zeros(len(colors), (sh_degree + 1) ** 2, 3, dtype=torch.float32, device=colors.device)
        sh[:, 0] = (colors - 0.5) / SH_C0
        opacities = torch.as_tensor(opacities, dtype=torch.float32)
        return cls(means, quats, torch.as_tensor(scales, dtype=torch.float32).log(), torch.logit(opacities), sh)


# --- 3DGS PLY ----------------------------------------------------------------------------------------------------
def ply_property_names(sh_degree: int, two_sided: bool = False) -> list[str]:
    """Property names of the standard 3DGS PLY for SH ``sh_degree``, in file order (plus the back colours)."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    back = ([f"back_dc_{i}" for i in range(3)] + [f"back_rest_{i}" for i in range(n_rest)]) if two_sided else []
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"] + back)


def _sh_columns(sh: np.ndarray) -> list[np.ndarray]:
    """``[N,K,3]`` -> the dc columns ``[N,3]`` and the channel-major rest ``[N,3(K-1)]`` (all of R, then G, B)."""
    return [sh[:, 0, :], sh[:, 1:, :].transpose(0, 2, 1).reshape(len(sh), -1)]


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write the standard 3DGS PLY (layout in the module docstring), atomically."""
    g = gaussians.to("cpu")
    n = len(g)
    back = _sh_columns(g.sh_back.detach().numpy()) if g.sh_back is not None else []
    columns = np.concatenate([
        g.means.detach().numpy(), np.zeros((n, 3), np.float32), *_sh_columns(g.sh.detach().numpy()),
        g.opacity_logits.detach().numpy()[:, None], g.log_scales.detach().numpy(), g.quats.detach().numpy(), *back],
        axis=1).astype("<f4")
    names = ply_property_names(g.sh_degree, g.sh_back is not None)
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
                       + [f"property float {name}" for name in names] + ["end_header"]) + "\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(columns).tobytes())
    return Path(path)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _read_header(f, path: Path) -> tuple[int, list[tuple[str, str]], str]:
    """``(vertex count, [(name, numpy dtype)], byte order)`` of a binary PLY whose first element is ``vertex``."""
    if f.readline().strip() != b"ply":
        raise BadInput(f"{path}: not a PLY file", {"file": str(path)})
    count, props, order, element = None, [], None, None
    while True:
        line = f.readline()
        if not line:
            raise BadInput(f"{path}: PLY header has no end_header", {"file": str(path)})
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(words[1])
            if order is None:
                raise BadInput(f"{path}: PLY format {words[1]} is not supported (binary only)", {"file": str(path)})
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
            elif count is None:
                raise BadInput(f"{path}: PLY element {element!r} before 'vertex'", {"file": str(path)})
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise BadInput(f"{path}: unsupported vertex property {' '.join(words[1:])!r}", {"file": str(path)})
            props.append((words[2], _PLY_TYPES[words[1]]))
    if count is None or order is None:
        raise BadInput(f"{path}: PLY header lacks a format or a vertex element", {"file": str(path)})
    return count, props, order


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (any property order, any SH degree 0..3, float or double properties)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: file not found", {"file": str(path)})
    with open(path, "rb") as f:
        count, props, order = _read_header(f, path)
        dtype = np.dtype([(name, order + t) for name, t in props])
        data = np.fromfile(f, dtype=dtype, count=count)
    if len(data) != count:
        raise BadInput(f"{path}: truncated, {len(data)} of {count} Gaussians", {"file": str(path)})
    names = set(dtype.names)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in names]
    if missing:
        raise BadInput(f"{path}: not a 3DGS PLY, missing properties {missing}", {"file": str(path)})
    n_rest = sum(1 for name in names if name.startswith("f_rest_"))
    if n_rest not in (0, 9, 24, 45) or any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise BadInput(f"{path}: {n_rest} f_rest properties (expected f_rest_0.. with 0, 9, 24 or 45 of them)",
                       {"file": str(path)})

    def cols(*keys):
        return np.stack([data[k].astype(np.float32) for k in keys], axis=1)

    def read_sh(dc: str, rest: str) -> torch.Tensor:
        k = n_rest // 3 + 1
        sh = np.zeros((count, k, 3), np.float32)
        sh[:, 0] = cols(*(f"{dc}{i}" for i in range(3)))
        if n_rest:
            sh[:, 1:] = cols(*(f"{rest}{i}" for i in range(n_rest))).reshape(count, 3, k - 1).transpose(0, 2, 1)
        return torch.from_numpy(sh)

    back = [f"back_dc_{i}" for i in range(3)] + [f"back_rest_{i}" for i in range(n_rest)]
    return Gaussians(torch.from_numpy(cols("x", "y", "z")), torch.from_numpy(cols("rot_0", "rot_1", "rot_2", "rot_3")),
                     torch.from_numpy(cols("scale_0", "scale_1", "scale_2")),
                     torch.from_numpy(data["opacity"].astype(np.float32)), read_sh("f_dc_", "f_rest_"),
                     read_sh("back_dc_", "back_rest_") if all(name in names for name in back) else None)
