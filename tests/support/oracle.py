"""Oracle priors: weight-free diffusion priors that know one asymmetric object, for end-to-end convention tests.

An oracle prior is a real prior class (:class:`Zero123Prior`, :class:`MVDreamPrior`, :class:`StableDiffusionPrior`)
whose networks are replaced: its ``condition(...)`` is the real one (the same relative pose, MVDream camera
matrices, view-dependent prompts), and its noise prediction reads back **the camera implied by that conditioning**
and renders :func:`oracle_object` there with our mesh kernel. The predicted ε is the one whose x0 estimate is that
render, ``ε = (z_t − √ᾱ·x0) / √(1 − ᾱ)``, in pixel space (``encode`` = resize to ``image_size`` and ``2x − 1``,
``decode`` its inverse; 3 channels). Score distillation (SDS, x0 reconstruction) and SDEdit (``refine``) with an
oracle therefore reconstruct the object if and only if every convention between the render camera, the
conditioning and the prior agrees; a flipped azimuth or elevation, or a shuffled 4-view batch, makes the prior
describe another view than the one rendered.

Every branch (``cond``, ``negative``, ``null``, ...) predicts the same ε (the cond branch's), so classifier-free
guidance is neutral at any scale; CSD, which differences the branches, sees no signal from an oracle.

How each oracle reads its camera (the published semantics, written here independently of the code under test):

- :class:`OracleZero123`: Zero123's pose ``[Δpolar, sin Δaz, cos Δaz, Δradius]`` relative to the reference view
  given to ``set_reference`` (polar = 90° − elevation, so elevation = ref − Δpolar; azimuth counter-clockwise seen
  from above = ours; Stable Zero123's 4th entry is the reference polar angle, the radius then is the reference's).
- :class:`OracleMVDream`: MVDream's camera input, a flattened OpenGL camera-to-world in the Z-up world with a unit
  translation; the oracle puts that camera at ``radius``.
- :class:`OracleImageDream`: as MVDream's, behind ImageDream's real ``_eps``; in ``pixel`` mode the reference
  frame must be each group's last, with an all-zero camera (its stand-in UNet refuses anything else).
- :class:`OracleAGP`: SweetDreamer's 12-number camera, an OpenGL camera-to-world ``[:3,:4]`` in the Z-up world at
  its true distance; its x0 is the canonical coordinate map (4 channels) of the object, not a colour render.
- :class:`OracleText`: the prompt's view suffix (``", front view"`` ...), the only view information a text prior
  gets; each direction has one canonical camera (:data:`TEXT_DIRECTIONS`), a prompt without suffix is the front.

API (for the score-distillation methods to come)::

    prior = OracleZero123(size=32, radius=2.0, fovy=49.1)   # or OracleMVDream, OracleImageDream, OracleText
    # size: the "model's" resolution; radius, fovy: the orbit cameras it "was trained on" (match the method's)
    image = render_oracle(orbit_cameras(15.0, 0.0, 2.0, 49.1, 64, 64))[0]   # [H,W,4] a reference image
    use_oracle(monkeypatch, prior)   # every load_prior(...) of the methods returns it; then run the method for real
    use_oracle_agp(monkeypatch, OracleAGP(size=32))   # SweetDreamer's AGP (load_agp), beside an OracleText
    cams, ref = oracle_views(elevations, azimuths, 2.0, 49.1, 48)           # held-out views, [N,H,W,4]
    silhouette_iou(alpha, ref[..., 3:]), colour_error(rgba, ref)             # against the method's renders

``prior.seen`` lists the cameras (OpenCV c2w) each call was conditioned on. A new prior class gets its oracle as
``class OracleNew(OraclePrior, NewPrior)`` with ``target_cameras(**unet_inputs) -> Cameras`` reading that prior's
conditioning (its real ``condition`` stays in use; replace only the encoders it calls, as ``_TextIndex`` does).

The object (:func:`oracle_object`): a box body with an arm towards +X and a chimney on top at the front left, centred
and scaled to :data:`OBJECT_RADIUS`; each face is flat-coloured by its outward normal (+X red, −X green, −Y = front
blue, +Y = back yellow, +Z = top magenta, −Z = bottom cyan), unlit, with a UV atlas (one cell per face).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from gen3d.backend.geometry.cameras import Cameras, intrinsics_from_fov, orbit_cameras
from gen3d.backend.geometry.ccm import agp_input, ccm_frame
from gen3d.backend.guidance.priors.agp import AGPPrior
from gen3d.backend.guidance.priors.base import Condition, DiffusionPrior
from gen3d.backend.guidance.priors.mvdream import ImageDreamPrior, MVDreamPrior
from gen3d.backend.guidance.priors.sd import StableDiffusionPrior
from gen3d.backend.guidance.priors.zero123 import Zero123Prior
from gen3d.backend.representations.mesh import TexturedMesh

#: the oracle object's parts, (min corner, max corner) in world metres (Z up, front faces -Y)
BOXES = (((-0.35, -0.25, -0.30), (0.35, 0.25, 0.20)),    # body
         ((0.35, -0.10, -0.12), (0.62, 0.10, 0.08)),     # arm towards +X
         ((-0.30, -0.22, 0.20), (-0.08, 0.00, 0.48)))    # chimney, top front left
#: the object is scaled to this bounding-sphere radius around its bounding-box centre, the frame that ``texture``
#: normalises meshes to, so its input mesh and the oracle agree
OBJECT_RADIUS = 0.75
#: flat colour of each outward face normal
FACE_COLOURS = {(1, 0, 0): (0.90, 0.15, 0.10), (-1, 0, 0): (0.15, 0.75, 0.15), (0, -1, 0): (0.15, 0.25, 0.90),
                (0, 1, 0): (0.90, 0.80, 0.10), (0, 0, 1): (0.80, 0.15, 0.80), (0, 0, -1): (0.10, 0.70, 0.70)}
#: canonical (elevation, azimuth) of each view-prompt direction (threestudio's directions, our orbit convention)
TEXT_DIRECTIONS = {"front": (0.0, 0.0), "side": (0.0, 90.0), "back": (0.0, 180.0), "overhead": (89.9, 0.0)}

_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def oracle_object() -> TexturedMesh:
    """The oracle object (module docstring): 4 vertices and 2 triangles per box face, vertex colours, UV atlas."""
    verts, faces, colours, uvs = [], [], [], []
    cells = 6 * len(BOXES)
    cols = int(np.ceil(np.sqrt(cells)))
    for lo, hi in BOXES:
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        for axis in range(3):
            for sign in (-1, 1):
                u_axis, v_axis = [a for a in range(3) if a != axis]
                if sign < 0:  # counter-clockwise seen from outside
                    u_axis, v_axis = v_axis, u_axis
                quad = []
                for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                    p = np.where(np.arange(3) == axis, hi if sign > 0 else lo, 0.0).astype(np.float32)
                    p[u_axis] = (lo, hi)[du][u_axis]
                    p[v_axis] = (lo, hi)[dv][v_axis]
                    quad.append(p)
                cell = len(verts) // 4
                u0, v0 = (cell % cols) / cols, (cell // cols) / cols
                base = len(verts)
                verts += quad
                uvs += [(u0 + (0.1 + 0.8 * du) / cols, v0 + (0.1 + 0.8 * dv) / cols)
                        for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1))]
                normal = tuple(int(sign) if a == axis else 0 for a in range(3))
                colours += [FACE_COLOURS[normal]] * 4
                faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    verts = np.array(verts)
    lo, hi = verts.min(0), verts.max(0)
    verts = (verts - (lo + hi) / 2) * (OBJECT_RADIUS / (np.linalg.norm(hi - lo) / 2))
    return TexturedMesh(verts, np.array(faces), uvs=np.array(uvs, np.float32),
                        vertex_colors=np.array(colours, np.float32))


@functools.cache
def _object() -> TexturedMesh:
    return oracle_object()


def render_oracle(cameras: Cameras, background: float = 1.0) -> torch.Tensor:
    """``[N,H,W,4]`` straight RGBA of the oracle object from ``cameras`` (our mesh kernel; colour on
    ``background`` where the coverage is partial, 0 alpha outside)."""
    from gen3d.backend.pipelines.stages.mesh_render import render_mesh

    with torch.no_grad():
        out = render_mesh(_object(), cameras.to("cpu"), torch.full((len(cameras), 3), float(background)))
    return torch.cat([out.rgb, out.alpha], -1)


def silhouette_iou(alpha: torch.Tensor, alpha_ref: torch.Tensor) -> float:
    """IoU of the silhouettes ``alpha > 0.5`` of two ``[N,H,W,1]`` coverages."""
    a, b = alpha > 0.5, alpha_ref > 0.5
    return float((a & b).sum() / (a | b).sum().clamp_min(1))


def colour_error(rgba: torch.Tensor, rgba_ref: torch.Tensor) -> float:
    """Mean absolute colour difference over the pixels both ``[N,H,W,4]`` views cover (alpha > 0.5)."""
    both = ((rgba[..., 3] > 0.5) & (rgba_ref[..., 3] > 0.5))
    return float((rgba[..., :3] - rgba_ref[..., :3]).abs().mean(-1)[both].mean()) if both.any() else 1.0


class _TextIndex:
    """Stands in for the CLIP text encoder: ``embed(texts)`` -> ``[N,1,1]`` indices into ``texts``, so the oracle
    reads back the exact prompt the real prior would have embedded."""

    def __init__(self):
        self.texts: list[str] = []

    def embed(self, texts) -> torch.Tensor:
        for t in texts:
            if t not in self.texts:
                self.texts.append(t)
        return torch.tensor([float(self.texts.index(t)) for t in texts]).view(-1, 1, 1)


class OraclePrior(DiffusionPrior):
    """Pixel-space oracle base (module docstring); subclasses say which cameras their UNet inputs imply."""

    scale_latents = False

    def __init__(self, size: int = 32, radius: float = 2.0, fovy: float = 49.1, guidance_scale: float | None = None):
        from diffusers import DDIMScheduler

        DiffusionPrior.__init__(self, None, None, DDIMScheduler(**_SCHEDULER), "cpu", torch.float32)  # no weights
        self.size, self.radius, self.fovy = size, radius, fovy
        if guidance_scale is not None:
            self.guidance_scale = guidance_scale
        #: every camera the oracle was asked about, ``[N,4,4]`` OpenCV c2w per call (for tests' own checks)
        self.seen: list[torch.Tensor] = []

    @property
    def image_size(self) -> int:
        return self.size

    #: pixel space: no VAE, RGB "latents" at full size
    vae_scale = 1
    latent_channels = 3

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.resize(images).float() * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.float() * 0.5 + 0.5).clamp(0, 1)

    def target_cameras(self, **inputs) -> Cameras:
        raise NotImplementedError

    def oracle_x0(self, cameras: Cameras) -> torch.Tensor:
        """The x0 the oracle predicts at ``cameras``: its render in the model's space, ``[B,C,S,S]``."""
        return render_oracle(cameras)[..., :3].permute(0, 3, 1, 2) * 2 - 1

    def predict(self, z_t, t, cond: Condition, branches) -> list[torch.Tensor]:
        """The ε of the cond branch's oracle render, for every requested branch (module docstring)."""
        return [self.oracle_eps(z_t, t, self.target_cameras(**cond.branches["cond"]))] * len(branches)

    def oracle_eps(self, z_t: torch.Tensor, t: torch.Tensor, cams: Cameras) -> torch.Tensor:
        """``ε = (z_t − √ᾱ·x0) / √(1 − ᾱ)`` with x0 the oracle's render from ``cams`` (recorded in ``seen``)."""
        self.seen.append(cams.c2w)
        x0 = self.oracle_x0(cams).to(z_t)
        a = self.alphas_cumprod[t.reshape(-1).expand(z_t.shape[0]).to(self.device)].view(-1, 1, 1, 1)
        return (z_t.float() - a.sqrt() * x0) / (1 - a).sqrt()

    def _orbit(self, elevation, azimuth, radius) -> Cameras:
        return orbit_cameras(elevation, azimuth, radius, self.fovy, self.size, self.size)


class OracleZero123(OraclePrior, Zero123Prior):
    """Zero123 / Stable Zero123 oracle: the real ``condition`` (relative pose); the projection passes the pose
    through as the cross-attention token, so ``_eps`` reads it back."""

    def __init__(self, size: int = 32, radius: float = 2.0, fovy: float = 49.1, stable: bool = False,
                 guidance_scale: float | None = None):
        super().__init__(size, radius, fovy, guidance_scale)
        self.stable = stable
        self.projection = nn.Identity()
        self.reference = None

    def set_reference(self, image: torch.Tensor, elevation: float, azimuth: float = 0.0, radius: float = 0.0,
                      **_) -> None:
        self.reference = {"clip": torch.zeros(1, 0), "latent": torch.zeros(1, 0, 1, 1), "elevation": float(elevation),
                          "azimuth": float(azimuth), "radius": float(radius)}

    def target_cameras(self, encoder_hidden_states, concat) -> Cameras:
        pose = encoder_hidden_states[:, 0].float()                       # [B,4]
        ref = self.reference
        elevation = ref["elevation"] - torch.rad2deg(pose[:, 0])
        azimuth = ref["azimuth"] + torch.rad2deg(torch.atan2(pose[:, 1], pose[:, 2]))
        radius = (ref["radius"] or self.radius) + (0.0 if self.stable else pose[:, 3])
        return self._orbit(elevation, azimuth, radius)


class OracleMVDream(OraclePrior, MVDreamPrior):
    """MVDream oracle: the real ``condition`` (camera matrices, text branches); ``_eps`` reads the cameras."""

    def __init__(self, size: int = 32, radius: float = 2.5, fovy: float = 49.1, guidance_scale: float | None = None):
        super().__init__(size, radius, fovy, guidance_scale)
        self.text = _TextIndex()

    def target_cameras(self, context, camera) -> Cameras:
        return self._mvdream_cameras(camera)

    def _mvdream_cameras(self, camera: torch.Tensor) -> Cameras:
        """MVDream's camera rows ``[N,16]`` (module docstring) -> our cameras at ``radius``."""
        gl = camera.float().view(-1, 4, 4).clone()
        gl[:, :3, 3] = gl[:, :3, 3] / gl[:, :3, 3].norm(dim=-1, keepdim=True) * self.radius
        c2w = gl @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))     # OpenGL -> OpenCV camera axes
        return Cameras(intrinsics_from_fov(self.fovy, self.size, self.size).expand(len(c2w), 3, 3), c2w,
                       self.size, self.size)


class _PixelVAE:
    """Stands in for ImageDream's VAE in its real ``set_reference``: the "latent" is the pixels (scale 1)."""

    config = type("Config", (), {"scaling_factor": 1.0})()

    def encode(self, x: torch.Tensor):
        posterior = type("Posterior", (), {"sample": lambda _self, generator=None: x})()
        return type("Encoded", (), {"latent_dist": posterior})()


class _PixelTokens:
    """Stands in for ImageDream's CLIP image encoder: the "tokens" ``[B,S·S,3]`` are the CLIP pixels themselves."""

    def __call__(self, pixels: torch.Tensor, output_hidden_states: bool = True):
        tokens = pixels.flatten(2).transpose(1, 2)
        return type("Out", (), {"hidden_states": (tokens, tokens)})()


class _OracleMultiViewUNet(nn.Module):
    """Stands in for ImageDream's multi-view UNet behind the prior's real ``_eps``: in ``pixel`` mode each group of
    ``num_frames = 5`` must end with the reference frame (all-zero camera; its input is ``ip_img``), which comes
    back as zeros (``_eps`` drops it); every other frame gets the oracle ε of the camera its row describes. A
    reference frame anywhere else, a missing one or a zero camera among the views raises."""

    def __init__(self, oracle: "OracleImageDream"):
        super().__init__()
        self.oracle = oracle

    def forward(self, x, t, camera, num_frames, context=None, ip=None, ip_img=None):
        f = num_frames
        rows = camera.float().reshape(-1, f, 16)
        views = torch.ones(f, dtype=torch.bool)
        if ip_img is not None:                                            # pixel mode: reference frame last
            views[-1] = False
            if rows[:, -1].abs().amax() > 0 or ip_img.shape[0] != rows.shape[0] or ip is None:
                raise ValueError("ImageDream oracle: the reference frame must be each group's last, with a zero "
                                 "camera and one ip_img per group")
        if (rows[:, views].abs().amax(-1) == 0).any():
            raise ValueError("ImageDream oracle: a view without a camera")
        out = torch.zeros_like(x).reshape(-1, f, *x.shape[1:])
        pick = lambda a: a.reshape(-1, f, *a.shape[1:])[:, views].flatten(0, 1)  # noqa: E731
        out[:, views] = self.oracle.oracle_eps(pick(x), pick(t), self.oracle._mvdream_cameras(
            pick(camera))).reshape(out.shape[0], -1, *x.shape[1:]).to(out)
        return out.flatten(0, 1)


class OracleImageDream(OracleMVDream, ImageDreamPrior):
    """ImageDream oracle: the real ``set_reference`` (CLIP pixels, posterior sample), ``condition`` (camera rows,
    image tokens ``ip`` and reference latent ``ip_img`` on the positive branch) and ``_eps`` (the reference as a
    5th frame with a zero camera in ``pixel`` mode); only the encoders and the UNet are stand-ins
    (:class:`_OracleMultiViewUNet` checks the frame layout and renders the 4 views' cameras)."""

    def __init__(self, size: int = 32, radius: float = 2.5, fovy: float = 49.1, guidance_scale: float | None = None,
                 ip_mode: str = "pixel"):
        from gen3d.backend.guidance.clip_image import load_clip_processor

        super().__init__(size, radius, fovy, guidance_scale)
        self.ip_mode, self.reference = ip_mode, None
        self.processor = load_clip_processor("/nonexistent", 16)        # no folder: OpenAI CLIP's, 16 px
        self.image_encoder, self.vae, self.unet = _PixelTokens(), _PixelVAE(), _OracleMultiViewUNet(self)

    predict = DiffusionPrior.predict                                     # through the real _eps


class OracleText(OraclePrior, StableDiffusionPrior):
    """Text-prior oracle (SD with view-dependent prompts): the real ``condition``; the camera is the canonical
    one of the prompt's view direction (:data:`TEXT_DIRECTIONS`)."""

    def __init__(self, size: int = 32, radius: float = 2.5, fovy: float = 49.1, guidance_scale: float | None = None):
        super().__init__(size, radius, fovy, guidance_scale)
        self.text = _TextIndex()

    def direction(self, text: str) -> str:
        suffix = text.rsplit(", ", 1)[-1]
        word = suffix[:-len(" view")] if suffix.endswith(" view") else "front"
        return word if word in TEXT_DIRECTIONS else "front"

    def target_cameras(self, encoder_hidden_states) -> Cameras:
        texts = [self.text.texts[int(i)] for i in encoder_hidden_states.reshape(-1)]
        angles = torch.tensor([TEXT_DIRECTIONS[self.direction(t)] for t in texts])
        return self._orbit(angles[:, 0], angles[:, 1], self.radius)


class OracleAGP(OraclePrior, AGPPrior):
    """SweetDreamer's AGP oracle: the real ``condition`` (view-dependent prompts and the 12-number camera,
    :func:`~gen3d.backend.geometry.ccm.agp_camera`); its x0 is the canonical coordinate map (4 channels, the AGP's
    :func:`~gen3d.backend.geometry.ccm.agp_input`) of ``mesh`` (default :func:`oracle_object`) in the CCM box of
    its own bounds, seen from the camera those 12 numbers are (OpenGL c2w ``[:3,:4]``, read back as written in the
    paper: Blender's world, unit scale) at ``fovy``."""

    encode, decode = AGPPrior.encode, AGPPrior.decode
    latent_channels = 4

    def __init__(self, size: int = 32, fovy: float = 49.1, mesh: TexturedMesh | None = None,
                 guidance_scale: float | None = None):
        super().__init__(size, 0.0, fovy, guidance_scale)
        self.text = _TextIndex()
        self.mesh = mesh or _object()
        lo, hi = self.mesh.vertices.min(0).values, self.mesh.vertices.max(0).values
        self.box = tuple(torch.tensor(v, dtype=torch.float32) for v in ccm_frame(lo.numpy(), hi.numpy()))

    def target_cameras(self, encoder_hidden_states, class_labels) -> Cameras:
        gl = torch.eye(4).repeat(len(class_labels), 1, 1)
        gl[:, :3, :4] = class_labels.float().cpu().view(-1, 3, 4)
        c2w = gl @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))     # OpenGL -> OpenCV camera axes
        return Cameras(intrinsics_from_fov(self.fovy, self.size, self.size).expand(len(c2w), 3, 3), c2w,
                       self.size, self.size)

    def oracle_x0(self, cameras: Cameras) -> torch.Tensor:
        from gen3d.backend.pipelines.stages.ccm_render import mesh_ccm

        with torch.no_grad():
            rgb, covered = mesh_ccm(self.mesh.vertices, self.mesh.faces, cameras, *self.box)
        return agp_input((rgb * covered).permute(0, 3, 1, 2), covered.permute(0, 3, 1, 2))


def use_oracle(monkeypatch, prior: OraclePrior) -> None:
    """Every prior the methods load through ``dreamgaussian_guidance.load_prior`` becomes ``prior`` (for this test):
    the function is replaced in every method module holding it (they import it by name); meta.json then names
    ``oracle-<kind>``."""
    import sys

    from gen3d.backend import pipelines
    from gen3d.backend.pipelines import dreamgaussian_guidance

    pipelines.names()                                      # import every method module
    original = dreamgaussian_guidance.load_prior

    def load_prior(ctx, kind, name, path, guidance_scale):
        prior.guidance_scale = guidance_scale or type(prior).guidance_scale
        return prior, {"name": f"oracle-{kind}", "path": "", "tiny": False, "license": "test"}

    for name, module in list(sys.modules.items()):
        if name.startswith("gen3d.backend.pipelines") and getattr(module, "load_prior", None) is original:
            monkeypatch.setattr(module, "load_prior", load_prior)


def use_oracle_agp(monkeypatch, prior: OracleAGP) -> None:
    """SweetDreamer's AGP (``stages.ccm_guidance.load_agp``, used by ``sweetdreamer`` and ``dreamgaussian-text``'s
    ``agp_weight``) becomes ``prior`` for this test; meta.json then names ``oracle-agp``."""
    from gen3d.backend.pipelines.stages import ccm_guidance

    def load_agp(ctx, path, guidance_scale):
        prior.guidance_scale = guidance_scale or type(prior).guidance_scale
        return prior, {"name": "oracle-agp", "path": "", "tiny": False, "license": "test"}

    monkeypatch.setattr(ccm_guidance, "load_agp", load_agp)


def oracle_views(elevations, azimuths, radius: float, fovy: float, size: int) -> tuple[Cameras, torch.Tensor]:
    """Held-out evaluation views: ``(cameras, rgba [N,size,size,4])`` of the oracle object on white."""
    cams = orbit_cameras(torch.as_tensor(elevations, dtype=torch.float32),
                         torch.as_tensor(azimuths, dtype=torch.float32), radius, fovy, size, size)
    return cams, render_oracle(cams)


__all__ = ["use_oracle", "use_oracle_agp", "OracleZero123", "OracleMVDream", "OracleImageDream", "OracleText",
           "OracleAGP", "OraclePrior", "oracle_object", "render_oracle", "oracle_views", "silhouette_iou",
           "colour_error", "TEXT_DIRECTIONS"]
