"""Stage 5: refine a baked texture (and optionally small vertex offsets) in UV space by differentiable mesh
rendering (``gen3d.kernels.mesh``) against target images.

The targets come from a callback, so the same loop serves reconstruction (targets = the input views) and,
later, a diffusion prior (targets = SDEdit-refined renders, as DreamGaussian's second stage):
``targets_fn(step, view_ids, cameras, renders) -> [B,H,W,4]`` straight RGBA targets in [0,1]. The views are a
fixed set cycled through in random order, or come from a sampler ``cameras(step) -> (view_ids, Cameras)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import NumericalError
from ...geometry.cameras import Cameras
from ...representations.mesh import TexturedMesh
from .mesh_render import mesh_topology, render_mesh
from .views import ShuffledViews

log = logging.getLogger(__name__)

TargetsFn = Callable[[int, list, Cameras, torch.Tensor], torch.Tensor]
#: a custom camera sampler: ``step -> (view ids, cameras of that step's views)``
CamerasFn = Callable[[int], "tuple[list, Cameras]"]


@dataclass
class RefineConfig:
    steps: int = 100
    views_per_step: int = 2
    lr_texture: float = 0.02       #: Adam on the texture's logits
    train_vertices: bool = False
    lr_vertices: float = 1e-4      #: x mesh bounding-box diagonal
    max_offset: float = 0.01       #: x mesh bounding-box diagonal, offsets are clamped to this
    laplacian_weight: float = 10.0  #: keeps vertex offsets smooth
    mask_weight: float = 1.0       #: silhouette loss (only acts with train_vertices)
    background: tuple[float, float, float] | None = None  #: one fixed background colour; None = random per view
    supersample: int = 1           #: render k x k samples a pixel and average them, as a camera integrates a pixel


def images_as_targets(images: torch.Tensor) -> TargetsFn:
    """The reconstruction target: the input views themselves."""
    def targets(step: int, view_ids: list, cameras: Cameras, renders: torch.Tensor) -> torch.Tensor:
        return images[view_ids]
    return targets


def photometric_error(mesh: TexturedMesh, cameras: Cameras, images: torch.Tensor, chunk: int = 4) -> float:
    """Mean squared error over the masks (straight RGBA targets), renders on black."""
    err, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(cameras), chunk):
            r = render_mesh(mesh, cameras[s:s + chunk])
            tgt = images[s:s + chunk]
            m = (tgt[..., 3:] > 0.5).expand_as(r.rgb)
            err += float(((r.rgb - tgt[..., :3] * tgt[..., 3:]) ** 2)[m].sum())
            count += int(m.sum())
    return err / max(count, 1)


def _box_downsample(images: torch.Tensor, k: int) -> torch.Tensor:
    """``[C,kH,kW,ch] -> [C,H,W,ch]``: the mean of each ``k x k`` block."""
    return images if k == 1 else F.avg_pool2d(images.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)


def _uniform_laplacian(faces: torch.Tensor, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The operator ``L x = x - mean(neighbours of x)`` on vertex values ``x [V, C]`` (a gather and a scatter over
    the edges, cheaper than a sparse matrix product on a CPU)."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = torch.cat([e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0]]).unique()  # both directions, each edge once
    src, dst = key // n, key % n
    inv_deg = 1.0 / torch.bincount(src, minlength=n).float().clamp_min(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return x - torch.zeros_like(x).index_add(0, src, x.index_select(0, dst)) * inv_deg[:, None]
    return apply


def refine_texture(mesh: TexturedMesh, cameras: Cameras | CamerasFn, targets_fn: TargetsFn, cfg: RefineConfig,
                   generator: torch.Generator, progress: Callable[[int, int, object], None] | None = None,
                   check_cancelled: Callable[[], None] | None = None) -> tuple[TexturedMesh, dict]:
    """Optimise ``mesh.texture`` (and vertex offsets with ``cfg.train_vertices``) so renders at ``cameras``
    match ``targets_fn``'s images; L1 over the target mask, renders and targets composited on one random
    background per view (or ``cfg.background``). ``cameras`` may be a sampler (module docstring).
    Returns the refined mesh and metrics."""
    tex = mesh.texture.clamp(1e-3, 1 - 1e-3)
    logits = torch.nn.Parameter(torch.logit(tex))
    params = [{"params": [logits], "lr": cfg.lr_texture}]
    diag = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).norm())
    offsets = None
    if cfg.train_vertices:
        offsets = torch.nn.Parameter(torch.zeros_like(mesh.vertices))
        params.append({"params": [offsets], "lr": cfg.lr_vertices * diag})
        lap = _uniform_laplacian(mesh.faces, len(mesh.vertices))
    opt = torch.optim.Adam(params, fused=mesh.device.type == "cpu")  # one kernel per tensor, not ~10 passes
    topology = mesh_topology(mesh)
    sampler = cameras if callable(cameras) else None
    shuffled = None if sampler else ShuffledViews(len(cameras), generator)
    losses = []
    for step in range(cfg.steps):
        if check_cancelled:
            check_cancelled()
        if sampler:
            ids, cams = sampler(step)
        else:
            ids = shuffled.take(min(cfg.views_per_step, len(cameras)))
            cams = cameras[ids]
        bg = (torch.rand(len(ids), 3, generator=generator) if cfg.background is None
              else torch.tensor(cfg.background).expand(len(ids), 3)).to(mesh.device)
        verts = None
        if offsets is not None:
            verts = mesh.vertices + offsets.clamp(-cfg.max_offset * diag, cfg.max_offset * diag)
        k = cfg.supersample
        r = render_mesh(mesh, cams if k == 1 else cams.resized(cams.width * k, cams.height * k), bg,
                        texture=torch.sigmoid(logits), vertices=verts, topology=topology)
        rgb, alpha = _box_downsample(r.rgb, k), _box_downsample(r.alpha, k)
        target = targets_fn(step, ids, cams, rgb.detach())
        a = target[..., 3:]
        gt = target[..., :3] * a + bg[:, None, None, :] * (1 - a)
        loss = (rgb - gt).abs().mean()
        if offsets is not None:
            loss = loss + cfg.mask_weight * (alpha - a).abs().mean()
            loss = loss + cfg.laplacian_weight * (lap(offsets) ** 2).sum(-1).mean() / diag ** 2
        if not torch.isfinite(loss):
            raise NumericalError(f"texture refinement diverged at step {step}", {"stage": "refine", "step": step})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, cfg.steps, None)
    with torch.no_grad():
        out = TexturedMesh(mesh.vertices, mesh.faces, mesh.normals, mesh.uvs, torch.sigmoid(logits).detach())
        if offsets is not None:
            out.vertices = mesh.vertices + offsets.clamp(-cfg.max_offset * diag, cfg.max_offset * diag)
            out = out.with_vertex_normals()
    k = max(1, len(losses) // 10)
    metrics = {"refine_loss_first": round(sum(losses[:k]) / k, 5) if losses else None,
               "refine_loss_last": round(sum(losses[-k:]) / k, 5) if losses else None}
    return out, metrics
