"""Tiny real pipelines that the add-on tests load into the backend (``GEN3D_EXTRA_METHODS``) to exercise
re-import without a generative model:

- ``box_glb`` (a generate method): a textured, UV-mapped box of ``size`` metres centred at the origin, written as
  ``mesh.glb`` through the backend's own GLB writer; the add-on must put it at the 3D cursor.
- ``mesh_echo`` (a texture method, it needs a mesh): reads the uploaded GLB with the backend's reader and writes it
  back as ``mesh.glb``; the add-on's Refine texture must bring it back in place.
- ``image_box`` (a generate method that takes only an image): a box; the add-on must send the image, no prompt.

No tests here: this module is imported by the backend's worker.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from gen3d.backend.pipelines import Options, Pipeline, register
from gen3d.backend.pipelines.base import JobRequest, RunContext
from gen3d.backend.representations.mesh import TexturedMesh, load_glb, save_glb


class BoxOptions(Options):
    size: float = Field(1.0, gt=0.0, le=100.0, description="edge length in metres")


def textured_box(size: float) -> TexturedMesh:
    """A cube with 4 vertices per face (so every face has its own UV square) and a 2x2 colour texture."""
    verts, faces, uvs = [], [], []
    h = size / 2
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u_ax, v_ax = [a for a in range(3) if a != axis]
            if sign < 0:
                u_ax, v_ax = v_ax, u_ax  # keep the winding outward
            base = len(verts)
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = [0.0, 0.0, 0.0]
                p[axis], p[u_ax], p[v_ax] = sign * h, du * h, dv * h
                verts.append(p)
                uvs.append([(du + 1) / 2, (dv + 1) / 2])
            faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    texture = torch.tensor([[[1.0, 0.1, 0.1], [0.1, 1.0, 0.1]], [[0.1, 0.1, 1.0], [1.0, 1.0, 0.1]]])
    return TexturedMesh(vertices=torch.tensor(verts), faces=torch.tensor(faces), uvs=torch.tensor(uvs),
                        texture=texture)


@register
class BoxGLB(Pipeline):
    name = "box_glb"
    title = "Box (test)"
    description = "a textured box as mesh.glb"
    inputs = {"prompt": "ignored"}
    required_inputs = ("prompt",)
    Options = BoxOptions

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        ctx.progress("box", 1, 1)
        return {"mesh.glb": save_glb(textured_box(request.options["size"]), ctx.out_dir / "mesh.glb")}


@register
class MeshEcho(Pipeline):
    name = "mesh_echo"
    title = "Mesh echo (test)"
    description = "returns the uploaded mesh"
    inputs = {"mesh": "a GLB", "prompt": "ignored"}
    required_inputs = ("mesh",)

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        ctx.progress("echo", 1, 1)
        return {"mesh.glb": save_glb(load_glb(request.files["mesh"]), ctx.out_dir / "mesh.glb")}


@register
class ImageBox(Pipeline):
    """An image-only generate method: the add-on must ask for the reference image and send no prompt."""

    name = "image_box"
    title = "Image box (test)"
    description = "a textured box from a reference image"
    inputs = {"image": "a reference image"}
    required_inputs = ("image",)
    Options = BoxOptions

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        ctx.progress("box", 1, 1)
        return {"mesh.glb": save_glb(textured_box(request.options["size"]), ctx.out_dir / "mesh.glb")}
