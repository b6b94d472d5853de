"""Stage 1: fit 3D Gaussians to posed RGBA views.

Initialisation on the surface the views show: their plane-sweep stereo depth inside the visual hull (a voxel grid
carved with the masks), which looks through openings the hull closes, plus the hull's surface where stereo does not
contradict it (:func:`init_gaussians`); per-attribute Adam learning rates with a log-linear decay of the position rate
(3DGS/DreamGaussian), L1 + D-SSIM photometric loss on images composited over a random background plus an L1
alpha/mask loss, densification (clone small / split large Gaussians whose screen-space mean gradient, averaged over
the views that saw them, is high) and pruning (transparent or huge; with ``carve``, in the stereo depth's free
space), SH degree growth and progressive resolution (each level with the input's screen-space low-pass,
:func:`level_eps2d`; the last one optionally supersampled, its low-pass then in sample pixels). With ``two_sided``
the Gaussians are two-sided surfels (:mod:`.surfels`). With ``stereo_depth_weight`` an L1 term (divided by the
object's radius; pixels where the two differ by more than the carving margin left out) pulls the rendered expected
depth towards the kept stereo depth: without it the fit paints a dome's inside on a second layer of large surfels
2-5 voxels in front of the inner surface, whatever the start (stereo points moved onto the true sphere: the same),
densification (off: worse), position rate, views per step, mask or SSIM weight; the images alone do not pin that
depth down.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from gen3d.kernels.gaussians import rasterization

from ...errors import BadInput, NumericalError
from ...geometry.cameras import Cameras, sample_pixels
from .views import ShuffledViews, resized_views
from ...representations.gaussians import Gaussians
from .extract_mesh import quat_to_rotmat
from .stereo import StereoConfig, StereoDepth, stereo_points, surface_cells
from .surfels import as_surfels, flatten_, point_normals, two_sided_colors
from .visual_hull import scene_box, visual_hull

log = logging.getLogger(__name__)

#: ``progress(step, total, preview)``, ``check_cancelled()``
StepFn = Callable[[int, int, "torch.Tensor | None"], None]
#: points ``[P,3]`` -> ``[P]`` bool: seen in free space
FreeSpace = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FitConfig:
    steps: int = 500
    num_points: int = 5000           #: initial Gaussians
    max_gaussians: int = 100_000
    sh_degree: int = 1               #: final SH degree (grown one band every ``sh_every`` steps)
    sh_every: int = 150
    resolutions: tuple[float, ...] = (0.25, 0.5, 1.0)  #: fractions of the input size, equal shares of the steps
    views_per_step: int = 1
    lr_means: float = 0.005          #: x object radius; decays log-linearly to 1 % of that
    lr_sh: float = 0.01              #: DC band; higher bands get 1/20
    lr_opacity: float = 0.05
    lr_scales: float = 0.005
    lr_quats: float = 0.002
    ssim_weight: float = 0.2
    mask_weight: float = 1.0
    densify_from: int = 50
    densify_until_frac: float = 0.7
    densify_every: int = 50
    grad_threshold: float = 0.0002   #: NDC units (3DGS)
    percent_dense: float = 0.01      #: x object radius: larger Gaussians split, smaller ones clone
    min_opacity: float = 0.005
    max_scale_frac: float = 0.2      #: x object radius: larger Gaussians are pruned
    hull_resolution: int = 64
    stereo: bool = False             #: start on the views' stereo depth inside the hull (see :mod:`.stereo`)
    two_sided: bool = False          #: fit two-sided flat Gaussians (:mod:`.surfels`): a sheet becomes one layer
    flat_ratio: float = 0.1          #: surfels: z scale / smaller in-plane scale
    carve: bool = False              #: with ``stereo``: prune Gaussians in the stereo depth's free space
    stereo_depth_weight: float = 0.0  #: with ``stereo``: L1 of the rendered depth against the stereo depth / radius
    random_background: bool = True
    supersample: int = 1             #: the last level averages k x k samples a pixel, its low-pass in sample pixels


# --- initialisation ------------------------------------------------------------------------------------------------
def check_views(cameras: Cameras, images: torch.Tensor) -> None:
    """Raise :class:`BadInput` naming the frame when views cannot be reconstructed from."""
    if len(cameras) < 2:
        raise BadInput(f"reconstruction needs at least 2 views, got {len(cameras)}", {"views": len(cameras)})
    if images.ndim != 4 or images.shape[-1] != 4:
        raise BadInput(f"views must be RGBA images [N,H,W,4], got {list(images.shape)}", {})
    for i in range(len(cameras)):
        if not (torch.isfinite(cameras.c2w[i]).all() and torch.isfinite(cameras.K[i]).all()):
            raise BadInput(f"frame {i}: camera has non-finite values", {"frame": i})
        R = cameras.c2w[i, :3, :3]
        if abs(float(torch.det(R)) - 1) > 1e-2 or float(cameras.K[i, 0, 0]) <= 0 or float(cameras.K[i, 1, 1]) <= 0:
            raise BadInput(f"frame {i}: degenerate camera (rotation not orthonormal or focal length <= 0)",
                           {"frame": i})
        alpha = images[i, ..., 3]
        if float(alpha.min()) >= 1.0:
            raise BadInput(f"frame {i}: image has neither alpha nor a mask (the object must be masked)",
                           {"frame": i})
        if float(alpha.max()) < 0.5:
            raise BadInput(f"frame {i}: the mask is empty (no object in the view)", {"frame": i})
    d = torch.cdist(cameras.centers, cameras.centers) + torch.eye(len(cameras)) * 1e9
    if float(d.min()) < 1e-6:
        i, j = divmod(int(d.argmin()), len(cameras))
        raise BadInput(f"frame {j}: camera at the same place as frame {i}", {"frame": j})


def init_gaussians(cameras: Cameras, images: torch.Tensor, num_points: int, hull_resolution: int,
                   sh_degree: int, generator: torch.Generator, stereo: StereoConfig | None = None,
                   flat_ratio: float | None = None) -> tuple[Gaussians, float, dict, StereoDepth | None]:
    """Gaussians on the object's surface as the views show it; returns them, the object's radius, metrics and,
    with ``stereo``, the views' kept stereo depth (its free space with the same margin and views as for the hull's
    points).

    The surface: the points of the views' stereo depth (:mod:`.stereo`, coloured by their pixel; when ``stereo``
    is given), one per hull voxel (their mean) where enough of them and of their neighbours agree, and the visual
    hull's surface voxels (coloured by the mean of the views) elsewhere, unless the stereo depth of
    ``stereo.free_views`` views puts them in free space (the cap across an opening); a sphere when the masks carve
    nothing. With ``flat_ratio`` they are surfels (:mod:`.surfels`) facing the normals of that surface."""
    hull = visual_hull(cameras, images[..., 3], hull_resolution)
    voxel = hull.voxel
    pts = hull.centers()[hull.surface().reshape(-1)]
    metrics, colors, kept = {}, None, None
    if len(pts) < 8:
        log.warning("the masks carve an empty visual hull; starting from a sphere")
        center, half = scene_box(cameras)
        d = F.normalize(torch.randn(num_points, 3, generator=generator), dim=-1)
        pts, voxel = center + 0.5 * half * d, half / hull_resolution
    elif stereo is not None:
        colors = _mean_colors(cameras, images, pts)
        seen, seen_colors, cams, depth = stereo_points(cameras, images, hull, stereo)
        seen, seen_colors, taken = surface_cells(seen, seen_colors, hull, stereo)
        kept = StereoDepth(cams, depth, 2 * voxel, stereo.free_views)
        free = kept.free_space(pts)
        rest = ~free & ~taken.contains(pts)
        metrics = {"init_stereo_points": len(seen), "init_hull_points": int(rest.sum()),
                   "init_hull_free": int(free.sum())}
        if len(seen) + int(rest.sum()) >= 8:
            pts, colors = torch.cat([seen, pts[rest]]), torch.cat([seen_colors, colors[rest]])
    idx = torch.randint(len(pts), (num_points,), generator=generator)
    means = pts[idx] + (torch.rand(num_points, 3, generator=generator) - 0.5) * voxel
    colors = _mean_colors(cameras, images, means) if colors is None else colors[idx]
    radius = float((pts - pts.mean(0)).norm(dim=-1).max()) + voxel
    g = Gaussians.from_activated(means, torch.full((num_points, 3), 0.7 * voxel), _identity_quats(num_points),
                                 torch.full((num_points,), 0.5), colors.clamp(0.02, 0.98), sh_degree)
    if flat_ratio is not None:
        g = as_surfels(g, point_normals(pts)[idx], flat_ratio)
    return g, radius, metrics, kept


def _mean_colors(cameras: Cameras, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``[P,3]``: the mean over the views of the colour at each point's projection (no visibility)."""
    colors = torch.zeros(len(points), 3)
    for i in range(len(cameras)):
        uv, _ = cameras[i].project(points)
        colors += sample_pixels(images[i][None], uv)[0, :, :3]
    return colors / len(cameras)


def _identity_quats(n: int) -> torch.Tensor:
    q = torch.zeros(n, 4)
    q[:, 0] = 1
    return q


# --- losses --------------------------------------------------------------------------------------------------------
def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images ``[B,C,H,W]`` in [0,1] with a Gaussian window (zero padded).

    The window is separable, so the five local moments are blurred by one row and one column pass over all of
    them at once (22 taps instead of 121)."""
    x = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    n = 5 * a.shape[1]
    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    blurred = F.conv2d(moments, g.view(1, 1, 1, window).expand(n, 1, 1, window), padding=(0, window // 2), groups=n)
    blurred = F.conv2d(blurred, g.view(1, 1, window, 1).expand(n, 1, window, 1), padding=(window // 2, 0), groups=n)
    mu_a, mu_b, e_aa, e_bb, e_ab = blurred.chunk(5, dim=1)
    s_aa, s_bb, s_ab = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.mean()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [0,1]; over ``mask`` (broadcastable, > 0.5) when given."""
    err = (a - b) ** 2
    if mask is not None:
        m = (mask > 0.5).expand_as(err)
        err = err[m]
    return float(-10 * torch.log10(err.mean().clamp_min(1e-10)))


# --- rendering -----------------------------------------------------------------------------------------------------
def render_gaussians(g: Gaussians, cameras: Cameras, background: torch.Tensor | None = None,
                     sh_degree: int | None = None, render_mode: str = "RGB", eps2d: float = 0.3,
                     supersample: int = 1):
    """Render ``g`` into ``cameras``: ``(rgb [C,H,W,3], alpha [C,H,W,1], meta)``; ``background [C,3]`` or None.
    ``render_mode="RGB+ED"`` appends the expected camera depth as a fourth channel. Two-sided Gaussians
    (``g.sh_back``) show each camera the colour of its side. ``eps2d``: the screen-space low-pass (pixels^2) added
    to every splat's 2D covariance. ``supersample`` k: each pixel is the mean of k x k samples (a render at k times
    the size, ``eps2d`` in its pixels; ``meta`` is that render's)."""
    deg = g.sh_degree if sh_degree is None else sh_degree
    colors, colors_deg = g.sh[:, :(deg + 1) ** 2], deg
    if g.sh_back is not None:
        colors, colors_deg = two_sided_colors(g, cameras, deg), None
    k = supersample
    sampled = cameras.resized(cameras.width * k, cameras.height * k) if k > 1 else cameras
    rgb, alpha, meta = rasterization(g.means, g.quats, g.scales, g.opacities, colors, sampled.viewmats().to(g.device),
                                     sampled.K.to(g.device), sampled.width, sampled.height, sh_degree=colors_deg,
                                     backgrounds=background, render_mode=render_mode, eps2d=eps2d)
    if k > 1:
        rgb, alpha = (F.avg_pool2d(t.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1) for t in (rgb, alpha))
    return rgb, alpha, meta


def level_eps2d(frac: float, full: float = 0.3) -> float:
    """The screen-space low-pass (pixels^2) for renders at ``frac`` of the input size: ``full`` input pixels^2
    at every level. The standard 0.3 px^2 at a quarter of the size is ~2 input pixels of extra blur at each
    silhouette, and fitting that pulled every surface ~3 input pixels inwards, which the later full-size steps
    (at a decayed position rate) did not undo."""
    return full * frac ** 2


# --- optimisation --------------------------------------------------------------------------------------------------
_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh", "sh_back")


class GaussianOptimizer:
    """Adam over a Gaussians' fields that survives densification (moments follow the Gaussians they belong to).
    ``sh_back`` (two-sided Gaussians) shares the ``sh`` learning rate."""

    def __init__(self, g: Gaussians, lrs: dict[str, float]):
        self.params = {k: torch.nn.Parameter(getattr(g, k).detach().clone()) for k in _FIELDS
                       if getattr(g, k) is not None}
        self.lrs = lrs
        self.opt = torch.optim.Adam([{"params": [p], "lr": lrs[k.removesuffix("_back")], "name": k}
                                     for k, p in self.params.items()], eps=1e-15)

    def gaussians(self) -> Gaussians:
        return Gaussians(**self.params)

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.opt.param_groups:
            if group["name"] == name:
                group["lr"] = lr

    def scale_sh_grad(self, factor_rest: float) -> None:
        for name in ("sh", "sh_back"):
            grad = self.params[name].grad if name in self.params else None
            if grad is not None and grad.shape[1] > 1:
                grad[:, 1:] *= factor_rest

    def edit(self, keep: torch.Tensor, new: dict[str, torch.Tensor]) -> None:
        """Keep the Gaussians where ``keep`` and append ``new`` (fresh Adam moments)."""
        for group in self.opt.param_groups:
            name = group["name"]
            old = group["params"][0]
            value = torch.cat([old.detach()[keep], new[name]])
            param = torch.nn.Parameter(value)
            state = self.opt.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = torch.zeros_like(new[name])
                    state[key] = torch.cat([state[key][keep], pad])
                self.opt.state[param] = state
            group["params"][0] = param
            self.params[name] = param


def densify_and_prune(opt: GaussianOptimizer, grad_avg: torch.Tensor, cfg: FitConfig, radius: float,
                      generator: torch.Generator, free_space: FreeSpace | None = None) -> tuple[int, int, int]:
    """Clone / split the Gaussians with a high screen-space gradient, prune the transparent, huge (and, with
    ``free_space``, those seen in free space); returns the counts."""
    p = {k: v.detach() for k, v in opt.params.items()}
    scales = p["log_scales"].exp()
    n = len(scales)
    big = scales.max(-1).values > cfg.percent_dense * radius
    hot = grad_avg >= cfg.grad_threshold
    room = max(cfg.max_gaussians - n, 0)
    clone = hot & ~big
    split = hot & big
    if int(clone.sum() + split.sum()) > room:  # keep the hottest ones within the budget
        order = torch.argsort(grad_avg * hot, descending=True)
        allowed = torch.zeros(n, dtype=torch.bool, device=grad_avg.device)
        allowed[order[:room]] = True
        clone &= allowed
        split &= allowed
    new = {k: torch.cat([p[k][clone], p[k][split], p[k][split]]) for k in p}
    if split.any():
        # split: two samples from the Gaussian, each 1/1.6 its size
        s = scales[split].repeat(2, 1)
        R = quat_to_rotmat(p["quats"][split]).repeat(2, 1, 1)
        offset = (R @ (torch.randn(s.shape, generator=generator).to(s.device) * s)[..., None])[..., 0]
        k = int(clone.sum())
        new["means"][k:] = new["means"][k:] + offset
        new["log_scales"][k:] = (s / 1.6).log()
    opacity = torch.sigmoid(p["opacity_logits"])
    prune = (opacity < cfg.min_opacity) | (scales.max(-1).values > cfg.max_scale_frac * radius) | split
    if free_space is not None:
        prune |= free_space(p["means"])
    opt.edit(~prune, new)
    return int(clone.sum()), int(split.sum()), int((prune & ~split).sum())


def fit_gaussians(cameras: Cameras, images: torch.Tensor, cfg: FitConfig, generator: torch.Generator,
                  progress: StepFn | None = None, check_cancelled: Callable[[], None] | None = None,
                  device: torch.device | str = "cpu") -> tuple[Gaussians, dict]:
    """Fit Gaussians to ``images [N,H,W,4]`` (straight RGBA in [0,1]) seen by ``cameras``.

    Returns the Gaussians (on ``device``) and metrics: PSNR of the fit over the masks (last resolution level,
    up to 8 views), the
    number of Gaussians, the object's radius. Raises :class:`NumericalError` when the loss stops being finite.
    """
    check_views(cameras, images)
    device = torch.device(device)
    g, radius, init_metrics, kept = init_gaussians(
        cameras, images, cfg.num_points, cfg.hull_resolution, cfg.sh_degree, generator,
        StereoConfig() if cfg.stereo else None, cfg.flat_ratio if cfg.two_sided else None)
    g = g.to(device)
    lr_means0 = cfg.lr_means * radius
    opt = GaussianOptimizer(g, {"means": lr_means0, "quats": cfg.lr_quats, "log_scales": cfg.lr_scales,
                         "opacity_logits": cfg.lr_opacity, "sh": cfg.lr_sh})
    n_views = len(cameras)
    use_depth = cfg.stereo_depth_weight > 0 and kept is not None
    # progressive resolution: one (cameras, images, low-pass, stereo depth or None) per level, each used for an
    # equal share of the steps
    levels = []
    for frac in cfg.resolutions:
        cams, imgs = resized_views(cameras, images, frac)
        depth = kept.at(cams.height, cams.width).to(device) if use_depth else None
        ss = cfg.supersample if frac == cfg.resolutions[-1] else 1
        levels.append((cams.to(device), imgs.to(device), level_eps2d(cams.width / cameras.width), depth, ss))
    densify_until = int(cfg.densify_until_frac * cfg.steps)
    grad_sum = torch.zeros(len(g), device=device)
    grad_cnt = torch.zeros(len(g), device=device)
    shuffled = ShuffledViews(n_views, generator)
    for step in range(cfg.steps):
        if check_cancelled:
            check_cancelled()
        level = min(step * len(levels) // cfg.steps, len(levels) - 1)
        cams, imgs, eps2d, level_depth, ss = levels[level]
        # position learning rate: log-linear from lr_means0 to 1 % of it
        t = step / max(cfg.steps - 1, 1)
        opt.set_lr("means", math.exp((1 - t) * math.log(lr_means0) + t * math.log(lr_means0 * 0.01)))
        deg = min(step // cfg.sh_every, cfg.sh_degree)
        views = shuffled.take(cfg.views_per_step)
        sub = cams[views]
        target = imgs[views]
        if cfg.random_background:
            bg = torch.rand(len(views), 3, generator=generator).to(device)
        else:
            bg = torch.ones(len(views), 3, device=device)
        gs = opt.gaussians()
        rgb, alpha, meta = render_gaussians(gs, sub, bg, deg, eps2d=eps2d,
                                            render_mode="RGB+ED" if use_depth else "RGB", supersample=ss)
        if use_depth:
            rgb, depth = rgb[..., :3], rgb[..., 3]
        meta["means2d"].retain_grad()
        a = target[..., 3:]
        gt = target[..., :3] * a + bg[:, None, None, :] * (1 - a)
        l1 = (rgb - gt).abs().mean()
        loss = (1 - cfg.ssim_weight) * l1 + cfg.mask_weight * (alpha - a).abs().mean()
        if use_depth:  # where the view's stereo depth was kept and both the mask and the render are opaque
            stereo_depth = level_depth[views]
            on = torch.isfinite(stereo_depth) & (a[..., 0] > 0.5) & (alpha[..., 0].detach() > 0.5)
            on &= (depth.detach() - stereo_depth).abs() < kept.margin  # a stereo mismatch must not pull
            if on.any():
                loss = loss + cfg.stereo_depth_weight * (depth[on] - stereo_depth[on]).abs().mean() / radius
        if cfg.ssim_weight > 0:
            loss = loss + cfg.ssim_weight * (1 - ssim(rgb.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)))
        if not torch.isfinite(loss):
            raise NumericalError(f"Gaussian fit diverged at step {step} (loss {float(loss)})",
                                 {"stage": "fit", "step": step})
        opt.opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.scale_sh_grad(1 / 20)
        opt.opt.step()
        if cfg.two_sided:
            flatten_(opt.params["log_scales"], cfg.flat_ratio)
        # densification statistics: screen-space mean gradient in NDC units, over the views that saw each Gaussian
        if step < densify_until:
            grad2d = meta["means2d"].grad
            if grad2d is not None:
                scale = torch.tensor([ss * sub.width / 2, ss * sub.height / 2], device=device)
                norm = (grad2d * scale).norm(dim=-1)                       # [C,N]
                seen = (meta["radii"] > 0).all(-1) if meta["radii"].ndim == 3 else meta["radii"] > 0
                grad_sum += (norm * seen).sum(0)
                grad_cnt += seen.sum(0)
            if step >= cfg.densify_from and (step + 1) % cfg.densify_every == 0:
                with torch.no_grad():
                    c, s, pr = densify_and_prune(opt, grad_sum / grad_cnt.clamp_min(1), cfg, radius, generator,
                                                 kept.free_space if cfg.carve and kept else None)
                log.debug("step %d: cloned %d, split %d, pruned %d -> %d Gaussians", step, c, s, pr,
                          len(opt.params["means"]))
                grad_sum = torch.zeros(len(opt.params["means"]), device=device)
                grad_cnt = torch.zeros_like(grad_sum)
        if progress:
            progress(step + 1, cfg.steps, None)
    with torch.no_grad():
        g = opt.gaussians()
        keep = g.opacities > cfg.min_opacity
        g = Gaussians(**{k: v[keep].detach() for k, v in opt.params.items()})
        cams, imgs = levels[-1][:2]
        some = torch.linspace(0, n_views - 1, min(n_views, 8)).round().long().tolist()
        metrics = {**init_metrics, "gaussians": len(g), "object_radius": round(radius, 4),
                   "fit_psnr_masked": round(evaluate_fit(g, cams[some], imgs[some]), 3)}
    log.info("fit: %d Gaussians, PSNR %.2f dB over the masks", len(g), metrics["fit_psnr_masked"])
    return g, metrics


def evaluate_fit(g: Gaussians, cameras: Cameras, images: torch.Tensor, chunk: int = 4) -> float:
    """PSNR (dB) of renders on white vs ``images`` composited on white, over the union of the masks."""
    errs, counts = 0.0, 0
    for s in range(0, len(cameras), chunk):
        sub = cameras[s:s + chunk]
        rgb, alpha, _ = render_gaussians(g, sub, torch.ones(len(sub), 3, device=g.device))
        tgt = images[s:s + chunk]
        gt = tgt[..., :3] * tgt[..., 3:] + (1 - tgt[..., 3:])
        m = ((tgt[..., 3:] > 0.5) | (alpha > 0.5)).expand_as(rgb)
        errs += float(((rgb - gt) ** 2)[m].sum())
        counts += int(m.sum())
    return -10 * math.log10(max(errs / max(counts, 1), 1e-10))
