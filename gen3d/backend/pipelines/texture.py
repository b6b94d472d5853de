"""Method ``texture``: (re)texture an existing mesh with a diffusion prior, DreamGaussian's stage 2 as a method.

Input: a mesh (the evaluated object in world space, GLB/OBJ/PLY, with or without UVs and a base-colour texture), a
prompt and/or a reference image with the camera it was taken from (a wire camera with role ``reference``, else the
first one). Steps:

1. **UVs.** The mesh's own UVs are kept when they are usable (in [0, 1], not degenerate); the vertices, faces and
   UVs then come back exactly as they came. Otherwise xatlas unwraps the mesh, which splits vertices along the
   seams: the output then has more vertices than the input (faces keep their order; ``vertex_map.json`` gives each
   output vertex's input vertex) and meta.json says ``"vertices_changed": true``.
2. **Initial texture**: the existing one, else the reference image projected from its camera onto the texels it
   sees (visibility by depth test, cosine weighting, the rest filled from its neighbours), else a neutral grey.
3. **Refinement** (:mod:`.stages.prior_refine`): random orbit views around the mesh (and the reference view, whose
   target stays the reference image), SDEdit targets from the prior (SD 2.1 for a prompt, Zero123 for an image,
   MVDream's four views when chosen), Adam on the texture; DreamGaussian's 50 steps, lr 0.2 and strength schedule.
4. **Output**: ``mesh.glb`` (the mesh with its UVs and the new texture), ``texture.png`` (gutters padded),
   ``preview.png`` (turntables before and after), ``meta.json``.

The mesh is rendered in a normalised frame (bounding-box centre at the origin, bounding sphere of radius
:data:`OBJECT_RADIUS`), the frame of DreamGaussian's cameras (radius 2 / 2.5, fovy 49.1); outputs are in the
input's frame.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import BadInput, InternalError
from ..files import write_json
from ..geometry.cameras import Cameras, orbit_angles
from ..representations.mesh import TexturedMesh, load_glb, load_mesh, save_glb
from . import register
from .base import JobRequest, Options, Pipeline, RunContext

log = logging.getLogger(__name__)

#: bounding-sphere radius of the mesh in the normalised frame: fits DreamGaussian's views (radius 2, fovy 49.1
#: see a sphere of up to 0.83) with a margin
OBJECT_RADIUS = 0.75
#: UVs may leave [0, 1] by at most this much, at no more than UV_OUTSIDE_SHARE of the vertices (Spot's UVs reach
#: -0.05 at 4 of 3225 vertices); the renderer clamps them to the border
UV_TOLERANCE = 0.1
UV_OUTSIDE_SHARE = 0.01
#: more than this share of faces without UV area makes the UVs unusable
MAX_DEGENERATE_UV_FACES = 0.05

IMAGE_PRIORS = {"zero123-xl": "zero123", "stable-zero123": "zero123"}
TEXT_PRIORS = {"sd21-base": "sd", "mvdream": "mvdream"}


class TextureOptions(Options):
    prior: Literal["auto", "zero123-xl", "stable-zero123", "sd21-base", "mvdream"] = Field(
        "auto", description=("diffusion prior: auto = Zero123-XL with a reference image (a prompt then counts only "
                             "with lambda_sd > 0), else SD 2.1-base; MVDream refines four views at once; Stable "
                             "Zero123 is non-commercial"))
    weights_path: str | None = Field(None, description="explicit folder of the prior (else the registry)")
    lambda_sd: float = Field(0.0, ge=0, description=(
        "with Zero123 and a prompt: weight of the SD 2.1 text prior mixed in (DreamGaussian's lambda_sd)"))
    guidance_scale: float | None = Field(None, gt=0, description="CFG scale (default: the prior's, 5 / 100)")
    reference_latent: Literal["mode", "sample"] = Field("mode", description=(
        "Zero123's reference latent: the VAE posterior's mode (diffusers, zero123) or one sample seeded by the "
        "job's seed (DreamGaussian)"))
    strength: float = Field(0.2, ge=0.0, le=1.0, description=(
        "how much the prior may change each render at the first step (share of the DDIM trajectory re-run, "
        "annealed to a quarter of it by the last step; DreamGaussian's 0.8 -> 0.95 is 0.2)"))
    init: Literal["auto", "existing", "reference", "neutral"] = Field(
        "auto", description=("initial texture: auto = the mesh's own, else the reference image projected from its "
                             "camera, else neutral grey"))
    neutral_color: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="the neutral initial colour")
    texture_size: int = Field(1024, ge=64, le=2048, description="texture side in pixels")
    iters_refine: int = Field(50, ge=0, le=2000, description="refinement steps (0 = only the initial texture)")
    texture_lr: float = Field(0.2, gt=0, description="learning rate of the raw (pre-sigmoid) texture")
    refine_size: int = Field(512, ge=32, le=2048, description="render size of the refinement views")
    refine_steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the SDEdit trajectory")
    radius: float | None = Field(None, gt=0.5, le=10, description=(
        "orbit radius in the normalised frame (default DreamGaussian's: 2 with an image prior, 2.5 with a text prior)"))
    fovy: float = Field(49.1, gt=5, lt=120, description="vertical field of view of the orbit views, degrees")
    min_ver: int = Field(-30, ge=-90, le=0, description="lowest elevation offset of the orbit views, degrees")
    max_ver: int = Field(30, ge=0, le=90, description="highest elevation offset of the orbit views, degrees")
    preview_views: int = Field(4, ge=1, le=16, description="turntable views per row of preview.png")
    preview_size: int = Field(256, ge=32, le=1024, description="turntable view size")

    main = ('prior', 'strength', 'texture_size', 'iters_refine')
    presets = {
        "fast": {"iters_refine": 20, "texture_size": 512, "refine_size": 256, "preview_size": 128},
        "standard": {},
        "high": {"texture_size": 2048, "iters_refine": 100, "preview_size": 512},
    }


# --- the mesh ------------------------------------------------------------------------------------------------------
def read_mesh(path: str) -> TexturedMesh:
    """Load the input mesh (a GLB's primitives merged keeping their own UVs); :class:`BadInput` when it has no
    usable triangles."""
    mesh = load_glb(path, pack_textures=False) if Path(path).suffix.lower() in (".glb", ".gltf") else load_mesh(path)
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise BadInput(f"mesh {Path(path).name}: no triangles", {"field": "mesh"})
    if not torch.isfinite(mesh.vertices).all():
        raise BadInput(f"mesh {Path(path).name}: vertex positions are not finite", {"field": "mesh"})
    v, f = mesh.vertices.double(), mesh.faces
    area = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1).norm(dim=-1)
    if not bool((area > 0).any()):
        raise BadInput(f"mesh {Path(path).name}: every triangle has zero area", {"field": "mesh"})
    return mesh


def uv_problem(mesh: TexturedMesh) -> str | None:
    """Why the mesh's UVs cannot be used (None when they can): missing, outside [0, 1] or degenerate."""
    if mesh.uvs is None:
        return "the mesh has no UVs"
    uv = mesh.uvs.double()
    if not torch.isfinite(uv).all():
        return "the UVs are not finite"
    outside = float(((uv < 0) | (uv > 1)).any(-1).double().mean())
    if float(uv.min()) < -UV_TOLERANCE or float(uv.max()) > 1 + UV_TOLERANCE or outside > UV_OUTSIDE_SHARE:
        return "the UVs leave [0, 1] (tiled or unnormalised)"
    a, b, c = (uv[mesh.faces[:, i]] for i in range(3))
    area = 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).abs()
    degenerate = float((area <= 1e-12).double().mean())
    if degenerate > MAX_DEGENERATE_UV_FACES:
        return f"{100 * degenerate:.0f} % of the faces have no area in UV space"
    return None


def normaliser(vertices: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(centre [3], scale)`` mapping the bounding box's centre to the origin and its half-diagonal to
    :data:`OBJECT_RADIUS`."""
    lo, hi = vertices.min(0).values, vertices.max(0).values
    return (lo + hi) / 2, OBJECT_RADIUS / max(float((hi - lo).norm()) / 2, 1e-12)


def normalised_camera(cams: Cameras, centre: torch.Tensor, scale: float) -> Cameras:
    c2w = cams.c2w.clone()
    c2w[:, :3, 3] = (c2w[:, :3, 3] - centre) * scale
    return Cameras(cams.K, c2w, cams.width, cams.height)


def resized_texture(texture: torch.Tensor, size: int) -> torch.Tensor:
    """``[H,W,3]`` -> ``[size,size,3]`` (antialiased when shrinking)."""
    if texture.shape[:2] == (size, size):
        return texture.clone()
    x = texture.permute(2, 0, 1)[None]
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=size < max(texture.shape[:2]))
    return x[0].permute(1, 2, 0).clamp(0, 1)


# --- the reference view ---------------------------------------------------------------------------------------------
def reference_camera(request: JobRequest, width: int, height: int) -> Cameras:
    """The camera of the reference image: the wire camera with role ``reference``, else the first; rescaled when the
    image has another resolution of the same aspect."""
    if not request.cameras:
        raise BadInput("a reference image needs the camera it was taken from (a camera with role 'reference')",
                       {"field": "cameras"})
    wire = next((c for c in request.cameras if c.role == "reference"), request.cameras[0])
    cam = Cameras.from_wire([wire])
    if (cam.width, cam.height) != (width, height):
        if abs(cam.width / cam.height - width / height) > 0.01 * width / height:
            raise BadInput(f"the reference image is {width}x{height} but its camera renders {cam.width}x{cam.height}",
                           {"field": "cameras"})
        cam = cam.resized(width, height)
    return cam


def square_view(cam: Cameras, rgba: torch.Tensor, size: int) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
    """Pad a view to a centred square (the camera's principal point moves with it) and resize to ``size``:
    ``(camera, rgba [1,size,size,4], inside [1,size,size,1])``, ``inside`` marking the original image."""
    H, W = rgba.shape[:2]
    S = max(H, W)
    y0, x0 = (S - H) // 2, (S - W) // 2
    K = cam.K.clone()
    K[:, 0, 2] += x0
    K[:, 1, 2] += y0
    canvas = torch.zeros(S, S, 5)
    canvas[y0:y0 + H, x0:x0 + W, :4] = rgba
    canvas[y0:y0 + H, x0:x0 + W, 4] = 1
    x = F.interpolate(canvas.permute(2, 0, 1)[None], (size, size), mode="bilinear", align_corners=False,
                      antialias=size < S)[0].permute(1, 2, 0)
    return Cameras(K, cam.c2w, S, S).resized(size, size), x[None, ..., :4], x[None, ..., 4:] > 0.99


def seen_mask(mesh: TexturedMesh, cam: Cameras, rgba: torch.Tensor) -> torch.Tensor:
    """``[1,H,W,1]`` bool: pixels of ``rgba [1,H,W,4]`` on the mesh (as ``cam`` sees it) and in the image's mask."""
    from .stages.mesh_render import render_mesh

    with torch.no_grad():
        cover = render_mesh(mesh, cam, antialias=False).alpha
    return (cover > 0.5) & (rgba[..., 3:] > 0.5)


def zero123_reference(image: torch.Tensor, known: torch.Tensor, size: int) -> torch.Tensor:
    """Zero123's conditioning image ``[1,3,size,size]`` from ``image [H,W,4]``: the object (``known [1,H,W,1]``)
    cropped, recentred as DreamGaussian's ``process.py`` (border 0.2) and put on white."""
    from ..geometry.image_prep import DEFAULT_BORDER_RATIO, recentre, resize_rgba

    obj = torch.cat([image[..., :3], known[0].float()], -1).numpy()
    out = resize_rgba(recentre(obj, 1.0 - DEFAULT_BORDER_RATIO, "reference image"), size)
    rgb = out[..., :3] * out[..., 3:] + (1 - out[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()


# --- guidance -------------------------------------------------------------------------------------------------------
def choose_prior(opts: TextureOptions, prompt: str, has_image: bool) -> str:
    name = opts.prior if opts.prior != "auto" else ("zero123-xl" if has_image else "sd21-base")
    if name in IMAGE_PRIORS and not has_image:
        raise BadInput(f"the prior {name} needs a reference image (and its camera)", {"field": "image"})
    if name in TEXT_PRIORS and not prompt:
        raise BadInput(f"the prior {name} needs a prompt", {"field": "prompt"})
    return name


@register
class TexturePipeline(Pipeline):
    name = "texture"
    title = "Texture a mesh"
    description = ("Texture an existing mesh with a diffusion prior (DreamGaussian's UV-space refinement, ICLR 2024): "
                   "SD 2.1 from a prompt, Zero123 from a reference image and its camera, or MVDream. The mesh's "
                   "vertices and UVs are kept (meshes without usable UVs are unwrapped with xatlas).")
    inputs = {"mesh": "the mesh to texture (GLB, OBJ or PLY) in world space, with or without UVs and a texture",
              "prompt": "what the texture should show (SD 2.1 / MVDream)",
              "image": "optional reference image (Zero123); needs the camera it was taken from",
              "cameras": "the reference image's camera (role 'reference', else the first)"}
    required_inputs = ("mesh",)
    Options = TextureOptions
    #: the default text prior; Zero123-XL, Stable Zero123 and MVDream are resolved when chosen
    weights = ("sd21-base",)
    #: from meta.json stage timings of a ``fast`` run on smoke-test weights (2-core CPU, one thread; issue 28)
    #: (the test mesh, Spot, has usable UVs: a mesh that needs xatlas spends longer in uv_unwrap)
    stage_shares = {"load_mesh": 0.003, "uv_unwrap": 0.001, "reference": 0.001, "init_texture": 0.004, "load": 0.35,
                    "refine": 0.546, "export": 0.095}

    def validate(self, request: JobRequest) -> Options:
        opts = super().validate(request)
        if "image" in request.files and not request.cameras:
            raise BadInput("a reference image needs the camera it was taken from (a camera with role 'reference')",
                           {"field": "cameras"})
        if not request.prompt and "image" not in request.files:
            raise BadInput("method 'texture' needs a prompt or a reference image", {"field": "prompt"})
        choose_prior(opts, request.prompt or "", "image" in request.files)
        return opts

    def run(self, request: JobRequest, ctx: RunContext) -> dict[str, Path]:
        from ..geometry.image_prep import read_image
        from .dreamgaussian_guidance import OrbitSampler
        from .stages.bake_texture import BakeConfig, bake_texture, pull_push_fill, uv_space_surface
        from .stages.export import export_obj, turntable_preview, write_png
        from .stages.prior_refine import PriorRefineConfig, ReferenceView, refine_with_prior
        from .stages.uv_unwrap import UnwrapConfig, uv_unwrap

        opts = self.Options(**request.options)
        gen = torch.Generator().manual_seed(request.seed)
        R = opts.texture_size
        out: dict[str, Path] = {}
        extra: dict = {}

        with ctx.stage("load_mesh"):
            source = read_mesh(request.files["mesh"])
        with ctx.stage("uv_unwrap"):
            ctx.progress("uv_unwrap", 0, 1)
            problem, vmap = uv_problem(source), None
            if problem is None:
                mesh = replace(source, texture=None, vertex_colors=None)
                extra.update(uv_source="input", vertices_changed=False)
            else:
                log.info("texture: unwrapping with xatlas: %s", problem)
                v, f = source.vertices.numpy(), source.faces.numpy()
                unwrapped = uv_unwrap(v, f, UnwrapConfig(resolution=R))
                vmap = _vertex_map(source, unwrapped)
                normals = source.normals[vmap] if source.normals is not None else unwrapped.normals
                mesh = TexturedMesh(source.vertices[vmap], unwrapped.faces, normals, unwrapped.uvs)
                extra.update(uv_source="xatlas", uv_problem=problem, vertices_changed=True)
        centre, scale = normaliser(mesh.vertices)
        unit = replace(mesh, vertices=(mesh.vertices - centre) * scale)
        if unit.normals is None:  # for rendering and baking only; the output keeps the input's (or none)
            unit = unit.with_vertex_normals()

        reference = None
        with ctx.stage("reference"):
            if "image" in request.files:
                image = torch.from_numpy(read_image(request.files["image"]))
                if image.shape[-1] == 3:
                    image = torch.cat([image, torch.ones_like(image[..., :1])], -1)
                H, W = image.shape[:2]
                cam = normalised_camera(reference_camera(request, W, H), centre, scale)
                known = seen_mask(unit, cam, image[None])
                if not bool(known.any()):
                    raise BadInput("the mesh is not in view of the reference camera (or outside the image's mask)",
                                   {"field": "cameras"})
                reference = (cam, image, known)
                extra["reference_elevation_azimuth"] = [round(float(x), 2) for x in orbit_angles(cam.c2w)[0, :2]]

        with ctx.stage("init_texture"):
            ctx.progress("init_texture", 0, 1)
            init = opts.init
            if init == "auto":
                init = "existing" if source.texture is not None else "reference" if reference else "neutral"
            if init == "existing":
                if source.texture is None:
                    raise BadInput("init 'existing': the mesh has no base-colour texture", {"field": "options.init"})
                if problem is not None:
                    raise BadInput(f"init 'existing': the mesh's UVs are unusable ({problem})",
                                   {"field": "options.init"})
                texture = resized_texture(source.texture, R)
            elif init == "reference":
                if reference is None:
                    raise BadInput("init 'reference' needs a reference image", {"field": "image"})
                cam, image, known = reference
                bake_img = torch.cat([image[..., :3], known[0].float()], -1)[None]
                texture, bake_metrics = bake_texture(unit, cam, bake_img, BakeConfig(resolution=R), ctx.device)
                extra.update(bake_metrics)
            else:
                texture = torch.tensor(opts.neutral_color, dtype=torch.float32).expand(R, R, 3).clone()
            extra["init"] = init
            before = replace(unit, texture=texture)

        with ctx.stage("load"):
            ctx.progress("load", 0, 1)
            guide, sampler_elevation, radius, info = self._guide(opts, request, ctx, gen, reference)
        extra["weights"] = info
        with ctx.stage("refine"):
            ref_view = None
            if reference is not None:
                cam, image, known = reference
                rcam, rgba, inside = square_view(cam, image, opts.refine_size)
                rknown = seen_mask(unit, rcam, rgba) & inside
                ref_view = ReferenceView(rcam, torch.cat([rgba[..., :3], torch.ones_like(rgba[..., 3:])], -1), rknown)
            sampler = OrbitSampler(sampler_elevation, radius, opts.fovy, opts.min_ver, opts.max_ver,
                                   views=guide.terms[0].prior.num_frames)
            cfg = PriorRefineConfig(steps=opts.iters_refine, size=opts.refine_size, ddim_steps=opts.refine_steps,
                                    strength=(1.0 - opts.strength, 1.0 - opts.strength / 4), lr=opts.texture_lr)
            after, metrics = refine_with_prior(before, guide, sampler, cfg, gen, ctx, ref_view)
        with ctx.stage("export"):
            ctx.progress("export", 0, 1)
            if vmap is not None:
                out["vertex_map.json"] = write_json(ctx.out_dir / "vertex_map.json", {
                    "source_vertex": vmap.tolist(),
                    "note": "faces keep their order; output vertex i is input vertex source_vertex[i]"})
            surface = uv_space_surface(unit, R)
            texture = pull_push_fill(after.texture.detach().cpu(), surface.valid.cpu()).clamp(0, 1)
            result = replace(mesh, texture=texture)
            out["mesh.glb"] = save_glb(result, ctx.out_dir / "mesh.glb")
            out.update(export_obj(ctx.out_dir, result))
            out["texture.png"] = write_png(ctx.out_dir / "texture.png",
                                           (texture.numpy() * 255 + 0.5).astype(np.uint8))
            after = replace(unit, texture=texture)
            rows = [turntable_preview(m, opts.preview_views, opts.preview_size, opts.preview_views)
                    for m in (before, after)]
            out["preview.png"] = write_png(ctx.out_dir / "preview.png", np.concatenate(rows, 0))
        ctx.cache.setdefault("_metrics", {}).update(metrics, vertices=int(len(result.vertices)),
                                                    faces=int(len(result.faces)))
        ctx.cache["_meta_extra"] = extra
        return out

    def _guide(self, opts: TextureOptions, request: JobRequest, ctx: RunContext, gen: torch.Generator, reference):
        """``(Guide, sampler elevation, orbit radius, weights info)`` for the chosen prior (DreamGaussian's terms)."""
        from ..guidance.schedules import make_schedule
        from .dreamgaussian_guidance import load_prior
        from .dreamgaussian_guidance import Guide, Term

        prompt, negative = request.prompt or "", request.negative_prompt or ""
        name = choose_prior(opts, prompt, reference is not None)
        elevation = 0.0
        if name in IMAGE_PRIORS:
            radius = opts.radius or 2.0
            cam, image, known = reference
            prior, w = load_prior(ctx, "zero123", name, opts.weights_path, opts.guidance_scale)
            elevation, azimuth, _ = orbit_angles(cam.c2w)[0].tolist()
            prior.set_reference(zero123_reference(image, known, prior.image_size), elevation=elevation,
                                azimuth=azimuth, radius=radius, latent=opts.reference_latent,
                                generator=torch.Generator().manual_seed(request.seed))
            terms, info = [Term("zero123", prior, 1.0, radius=radius)], [w]
            if opts.lambda_sd > 0:
                if not prompt:
                    raise BadInput("lambda_sd > 0 mixes in the SD text prior, which needs a prompt",
                                   {"field": "prompt"})
                sd, w = load_prior(ctx, "sd", "sd21-base", None, opts.guidance_scale)
                terms.append(Term("sd", sd, opts.lambda_sd, prompt=prompt, negative_prompt=negative))
                info.append(w)
        else:
            radius = opts.radius or 2.5
            kind = TEXT_PRIORS[name]
            prior, w = load_prior(ctx, kind, name, opts.weights_path, opts.guidance_scale)
            terms, info = [Term(kind, prior, 1.0, prompt=prompt, negative_prompt=negative)], [w]
            if reference is not None:
                elevation = float(orbit_angles(reference[0].c2w)[0, 0])
        # the schedule is unused by SDEdit targets; Guide wants one
        schedule = make_schedule("linear", num_train_timesteps=prior.num_train_timesteps)
        return Guide(terms, schedule, gen), elevation, radius, info


def _vertex_map(source: TexturedMesh, unwrapped: TexturedMesh) -> torch.Tensor:
    """``[V']`` int64: the input vertex behind each vertex of the xatlas-split mesh, read off the corners of the
    faces (xatlas keeps the faces and their order)."""
    if unwrapped.faces.shape != source.faces.shape:
        raise InternalError("xatlas changed the number of faces", {"faces": len(source.faces),
                                                                  "unwrapped": len(unwrapped.faces)})
    vmap = torch.full((len(unwrapped.vertices),), -1, dtype=torch.int64)
    vmap[unwrapped.faces.reshape(-1)] = source.faces.reshape(-1)
    if bool((vmap < 0).any()) or not torch.equal(source.vertices[vmap.clamp_min(0)], unwrapped.vertices):
        raise InternalError("xatlas reordered the faces", {"stage": "uv_unwrap"})
    return vmap

