"""The checks of a job's input files, shared by every method (``Pipeline.validate``, so the CLI and the API alike).

Before anything is queued or written, each file a request names is opened as what its role says it is (``image``:
a decodable image, with a mask when the method needs one; ``mesh``: a loadable triangle mesh; ``views``: a readable
``transforms.json`` folder), and a role the method does not take is refused. Errors carry the input's role as
``detail["field"]``; messages name the file as the caller gave it (the server renames its own upload paths to the
field, see :meth:`~gen3d.backend.errors.Gen3DError.naming`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput

#: how every single-image method describes its ``image`` input
IMAGE_INPUT = "one image of an object: RGBA (alpha = mask), or RGB when rembg and its model are installed"
#: how every text method describes its ``prompt`` input
PROMPT_INPUT = "what to generate"


def check_image(path: Path, field: str, needs_mask: bool, rembg_model: str = "u2net") -> None:
    """A decodable RGB(A) image; with ``needs_mask``, one whose alpha is a mask unless rembg can make one."""
    from ..geometry.image_prep import ensure_mask, has_mask, read_image, rembg_available

    try:
        image = read_image(path)
    except BadInput:  # PIL's reasons repeat the path and say little more
        raise BadInput(f"{path}: not a readable image (PNG, JPEG, WebP, ...)", {"field": field}) from None
    if needs_mask and not has_mask(image) and not rembg_available(rembg_model):
        ensure_mask(image, path.name, rembg_model)  # raises the message that says how to give a mask


def check_mesh(path: Path, field: str) -> None:
    """A mesh file that loads with at least one triangle of non-zero area and finite vertices."""
    import torch

    from ..representations.mesh import load_glb, load_mesh

    mesh = load_glb(path, pack_textures=False) if path.suffix.lower() in (".glb", ".gltf") else load_mesh(path)
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise BadInput(f"{path}: the mesh has no triangles", {"field": field})
    if not torch.isfinite(mesh.vertices).all():
        raise BadInput(f"{path}: vertex positions are not finite", {"field": field})


def check_views(path: Path) -> None:
    """A ``transforms.json`` folder whose frames and images all read."""
    from ..geometry.transforms import load_transforms

    load_transforms(path)


def check_files(pipeline, request, options) -> None:
    """Refuse files of roles ``pipeline`` does not take, then open each file as its role says (see the module)."""
    for role in request.files:
        if role not in pipeline.inputs:
            raise BadInput(f"method {pipeline.name!r} takes no {role!r} input; it takes: "
                           f"{', '.join(pipeline.inputs) or 'nothing'}", {"field": role})
    for role, path in request.files.items():
        path = Path(path)
        if not path.exists():
            raise BadInput(f"{path}: no such file ({role})", {"field": role})
        try:
            if role == "image":
                check_image(path, role, pipeline.needs_mask, getattr(options, "rembg_model", "u2net"))
            elif role == "mesh":
                check_mesh(path, role)
            elif role == "views":
                check_views(path)
        except BadInput as e:
            e.detail["field"] = role
            raise
