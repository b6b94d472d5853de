"""Feed-forward triplane -> textured mesh, shared by the ``lrm`` and ``instant3d`` methods: marching cubes of the
field's density at the model's level, cleanup, UV unwrap, and the field's colour baked into the UV texture."""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import numpy as np
import torch

from ...errors import NumericalError
from ..base import RunContext

log = logging.getLogger(__name__)


def autocast(device: torch.device, enabled: bool):
    """bf16 (else fp16) autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_grid(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Equal-sized ``[h, w, 3]`` images tiled row-major on white, ``cols`` per row."""
    rows = -(-len(images) // cols)
    h, w = images[0].shape[:2]
    out = np.ones((rows * h, cols * w, 3), dtype=np.float32)
    for i, im in enumerate(images):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im[..., :3]
    return out


def triplane_mesh(field, resolution: int, level: float, smooth_iterations: int, target_faces: int):
    """Marching cubes (PyMCubes) of ``field``'s density at ``level`` on a ``resolution^3`` grid over its box, then
    cleanup -> a ``trimesh.Trimesh`` in the world frame with outward normals."""
    import mcubes
    import trimesh

    from .extract_mesh import cleanup_mesh

    grid = field.density_grid(resolution)
    if not np.isfinite(grid).all():
        raise NumericalError("the predicted density has NaN/inf values", {"stage": "mesh"})
    verts, faces = mcubes.marching_cubes(grid, level)
    if len(faces) == 0:
        raise NumericalError(f"no surface: the predicted density never reaches the level {level} "
                             f"(max {float(grid.max()):.3g}); try a lower mesh_level",
                             {"max_density": float(grid.max()), "level": level})
    r = field.radius
    verts = torch.from_numpy(verts.astype(np.float32) / (resolution - 1) * 2 * r - r)
    if field.model_from_world is not None:  # model -> world
        verts = verts @ field.model_from_world.cpu()
    mesh = trimesh.Trimesh(verts.numpy(), faces.astype(np.int64), process=False)
    voxel = 2 * r / (resolution - 1)
    cleaned = cleanup_mesh(mesh, 0.01 * voxel, 0.02, smooth_iterations, target_faces)
    log.info("triplane mesh: %d faces at level %g on %d^3, %d after cleanup", len(faces), level, resolution,
             len(cleaned.faces))
    return cleaned


def bake_colour_field(mesh, colour_fn: Callable[[torch.Tensor], torch.Tensor], resolution: int) -> torch.Tensor:
    """Bake a colour *field* into ``mesh``'s UV texture: each covered texel gets ``colour_fn(points [N, 3]) ->
    [N, 3]`` at its surface point (the shared stage's UV-space rasterisation), empty texels are filled pull-push
    from their neighbours. Returns ``[R, R, 3]`` float32 in [0, 1]. Any colour field works (triplane, SDF colour)."""
    from .bake_texture import pull_push_fill, uv_space_surface

    surface = uv_space_surface(mesh, resolution)
    colour = torch.zeros(resolution, resolution, 3)
    if surface.valid.any():
        colour[surface.valid.cpu()] = colour_fn(surface.position[surface.valid]).float().cpu().clamp(0, 1)
    return pull_push_fill(colour, surface.valid.cpu()).clamp(0, 1)


def textured_mesh_from_field(field, ctx: RunContext, resolution: int, level: float, smooth_iterations: int,
                             target_faces: int, texture_size: int, half_precision: bool):
    """Stages ``mesh``, ``uv_unwrap`` and ``bake`` of a triplane field -> a
    :class:`~backend.representations.mesh.TexturedMesh` (world frame, on the CPU)."""
    from ...representations.mesh import TexturedMesh
    from .uv_unwrap import UnwrapConfig, uv_unwrap

    dev = ctx.device
    with ctx.stage("mesh"), torch.no_grad(), autocast(dev, half_precision):
        ctx.progress("mesh", 0, 1)
        tm = triplane_mesh(field, resolution, level, smooth_iterations, target_faces)
        ctx.progress("mesh", 1, 1)
    ctx.progress("uv_unwrap", 0, 1)
    with ctx.stage("uv_unwrap"):
        mesh = uv_unwrap(np.asarray(tm.vertices), np.asarray(tm.faces), UnwrapConfig(resolution=texture_size))
    ctx.progress("bake", 0, 1)
    with ctx.stage("bake"), torch.no_grad(), autocast(dev, half_precision):
        texture = bake_colour_field(mesh.to(dev), field.colour, texture_size)
    return TexturedMesh(mesh.vertices, mesh.faces, mesh.normals, mesh.uvs, texture)
