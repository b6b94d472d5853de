"""kernels.gaussians.rasterization against an independent dense brute-force renderer (float64).

The reference below is written from the 3DGS / gsplat image formation, not from the kernel: quaternions
rotate by quaternion products, the 2D covariance is inverted by linalg.inv, and every pixel composites
every Gaussian front to back in a plain loop with the 1/255 skip, the 0.99 clamp and the 1e-4 early stop.
Every test runs on both CPU paths: the compiled kernels (gen3d.kernels._native) and the pure-torch fallback.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from gen3d.kernels import _native
from gen3d.kernels._gaussians_raster import native_library
from gen3d.kernels.gaussians import rasterization, rasterize_projected, sh_basis
from support.kernels import both_kernel_paths

DT = torch.float64


kernel_path = both_kernel_paths("gaussians")


# ----------------------------------------------------------------------------- the dense reference
def _quat_rotate(q, v):
    """Rotate vectors v [...,3] by unit quaternions q [...,4] (wxyz): q v q*."""
    w, u = q[..., :1], q[..., 1:]
    t = 2 * torch.cross(u, v, dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


def _dense_render(means, quats, scales, opacities, colors, viewmat, K, W, H, near=0.01, far=1e10, eps2d=0.3,
                  antialiased=False):
    """One camera, every Gaussian x every pixel. Returns colours [H,W,D], alpha [H,W,1], depth D [H,W,1]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=means.dtype).expand(len(means), 3, 3)
    cols = torch.stack([_quat_rotate(q, eye[:, :, i]) for i in range(3)], dim=-1)  # rotation matrix columns
    cov = cols @ torch.diag_embed(scales**2) @ cols.transpose(1, 2)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = means @ R.T + t
    covc = R @ cov @ R.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    limx = (-(cx / fx) - 0.3 * W / (2 * fx), (W - cx) / fx + 0.3 * W / (2 * fx))
    limy = (-(cy / fy) - 0.3 * H / (2 * fy), (H - cy) / fy + 0.3 * H / (2 * fy))
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means.dtype) + 0.5, torch.arange(W, dtype=means.dtype) + 0.5,
                            indexing="ij")
    T = torch.ones(H, W, dtype=means.dtype)
    done = torch.zeros(H, W, dtype=torch.bool)
    out = torch.zeros(H, W, colors.shape[-1], dtype=means.dtype)
    depth = torch.zeros(H, W, dtype=means.dtype)
    for i in torch.argsort(pc[:, 2], stable=True).tolist():
        x, y, z = pc[i]
        if not (near <= z <= far):
            continue
        u = torch.clamp(x / z, *limx)
        v = torch.clamp(y / z, *limy)
        J = torch.stack([torch.stack([fx / z, 0 * z, -fx * u / z]), torch.stack([0 * z, fy / z, -fy * v / z])])
        c2 = J @ covc[i] @ J.T
        c2b = c2 + eps2d * torch.eye(2, dtype=means.dtype)
        op = opacities[i]
        if antialiased:
            op = op * torch.sqrt(torch.clamp(torch.det(c2) / torch.det(c2b), min=0.005**2))
        conic = torch.linalg.inv(c2b)
        dx = xs - (fx * x / z + cx)
        dy = ys - (fy * y / z + cy)
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = torch.clamp(op * torch.exp(-sigma), max=0.99)
        live = (alpha >= 1 / 255) & ~done
        nxt = T * (1 - alpha)
        stop = live & (nxt <= 1e-4)
        done = done | stop
        use = live & ~stop
        wgt = torch.where(use, alpha * T, torch.zeros_like(T))
        out = out + wgt[..., None] * colors[i]
        depth = depth + wgt * z
        T = torch.where(use, nxt, T)
    return out, (1 - T)[..., None], depth[..., None]


# ----------------------------------------------------------------------------- scenes
def _look_at(eye, target=(0.0, 0.0, 0.0)):
    """World-to-camera (OpenCV) for a camera at ``eye`` looking at ``target`` (world z up)."""
    eye, target = torch.tensor(eye, dtype=DT), torch.tensor(target, dtype=DT)
    fwd = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=DT))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])
    vm = torch.eye(4, dtype=DT)
    vm[:3, :3], vm[:3, 3] = R, -R @ eye
    return vm


def _intrinsics(W, H, f, cx=None, cy=None):
    return torch.tensor([[f, 0, W / 2 if cx is None else cx], [0, f, H / 2 if cy is None else cy], [0, 0, 1]], dtype=DT)


def _scene(seed, n=80, extremes=True, opacity=(0.05, 0.95)):
    """Random Gaussians around the origin, plus behind-camera, off-screen, degenerate and huge ones."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=DT) - 0.5) * 1.6
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=DT) * 2.5 - 4.0)
    quats = torch.randn(n, 4, generator=g, dtype=DT)
    opac = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=g, dtype=DT)
    colors = torch.rand(n, 3, generator=g, dtype=DT)
    if extremes:
        means[0] = torch.tensor([0.0, -5.0, 0.1])  # behind the first camera (which sits at y = -3)
        means[1] = torch.tensor([1.4, 0.0, 0.3])  # partly off screen
        scales[2] = torch.tensor([0.3, 1e-7, 1e-7])  # nearly degenerate: a needle
        scales[3] = torch.tensor([2.0, 1.5, 2.5])  # huge: covers every pixel
        opac[3] = 0.3
        means[4] = torch.tensor([0.0, -2.995, 0.0])  # just in front of the first camera, inside the near plane
    return means, quats, scales, opac, colors


def _cameras(W, H, f=40.0):
    vms = torch.stack([_look_at((0.0, -3.0, 0.0)), _look_at((2.2, -1.5, 1.0))])
    Ks = torch.stack([_intrinsics(W, H, f), _intrinsics(W, H, 0.8 * f, W * 0.4, H * 0.6)])
    return vms, Ks


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("seed,W,H,tile", [(0, 48, 40, 16), (1, 45, 37, 16), (2, 40, 33, 8)])
def test_matches_dense_reference(seed, W, H, tile):
    means, quats, scales, opac, colors = _scene(seed)
    vms, Ks = _cameras(W, H)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]], dtype=DT)
    rgbd, alphas, meta = rasterization(means, quats, scales, opac, colors, vms, Ks, W, H, backgrounds=bg,
                                       render_mode="RGB+D", tile_size=tile)
    assert rgbd.shape == (2, H, W, 4) and alphas.shape == (2, H, W, 1)
    assert meta["means2d"].shape == (2, len(means), 2) and meta["radii"].shape == (2, len(means), 2)
    assert (meta["radii"][0, 0] == 0).all() and (meta["radii"][0, 4] == 0).all()  # behind / too near: culled
    for c in range(2):
        ref_rgb, ref_a, ref_d = _dense_render(means, quats, scales, opac, colors, vms[c], Ks[c], W, H)
        ref_rgb = ref_rgb + (1 - ref_a) * bg[c]
        assert ref_a.max() > 0.9 and ref_a.min() < 0.5  # the scene is neither empty nor all opaque
        torch.testing.assert_close(alphas[c], ref_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(rgbd[c, ..., :3], ref_rgb, atol=1e-5, rtol=0)
        torch.testing.assert_close(rgbd[c, ..., 3:], ref_d, atol=1e-5, rtol=0)


def test_opaque_layers_early_stop_and_clamp():
    """Many nearly opaque layers: the 0.99 clamp and the 1e-4 early stop decide most pixels."""
    means, quats, scales, opac, colors = _scene(5, n=120, extremes=False, opacity=(0.9, 1.0))
    scales = scales * 3
    vms, Ks = _cameras(32, 32)
    _, alphas, _ = rasterization(means, quats, scales, opac, colors, vms[:1], Ks[:1], 32, 32, render_mode="RGB")
    rgb, _, _ = rasterization(means, quats, scales, opac, colors, vms[:1], Ks[:1], 32, 32)
    ref_rgb, ref_a, _ = _dense_render(means, quats, scales, opac, colors, vms[0], Ks[0], 32, 32)
    assert (ref_a > 0.999).float().mean() > 0.3  # transmittance near the 1e-4 stop in many pixels
    torch.testing.assert_close(alphas[0], ref_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb[0], ref_rgb, atol=1e-5, rtol=0)


def test_antialiased_matches_dense_reference():
    means, quats, scales, opac, colors = _scene(3)
    vms, Ks = _cameras(40, 32)
    rgb, alphas, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 40, 32, rasterize_mode="antialiased")
    for c in range(2):
        ref_rgb, ref_a, _ = _dense_render(means, quats, scales, opac, colors, vms[c], Ks[c], 40, 32, antialiased=True)
        torch.testing.assert_close(alphas[c], ref_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb[c], ref_rgb, atol=1e-5, rtol=0)


def test_render_modes_and_depth_only():
    means, quats, scales, opac, colors = _scene(4)
    vms, Ks = _cameras(32, 24)
    args = (means, quats, scales, opac, colors, vms, Ks, 32, 24)
    rgbd, alphas, _ = rasterization(*args, render_mode="RGB+D")
    rgb, _, _ = rasterization(*args, render_mode="RGB")
    d, _, _ = rasterization(means, quats, scales, opac, None, vms, Ks, 32, 24, render_mode="D")
    ed, _, _ = rasterization(means, quats, scales, opac, None, vms, Ks, 32, 24, render_mode="ED")
    rgbed, _, _ = rasterization(*args, render_mode="RGB+ED")
    assert rgb.shape[-1] == 3 and d.shape[-1] == 1 and ed.shape[-1] == 1 and rgbed.shape[-1] == 4
    torch.testing.assert_close(rgbd[..., :3], rgb)
    torch.testing.assert_close(rgbd[..., 3:], d)
    torch.testing.assert_close(ed, d / alphas.clamp_min(1e-10))
    torch.testing.assert_close(rgbed, torch.cat([rgb, ed], dim=-1))
    with pytest.raises(ValueError, match="render_mode"):
        rasterization(*args, render_mode="normals")


def test_camera_batch_equals_single_calls():
    means, quats, scales, opac, colors = _scene(6)
    vms, Ks = _cameras(36, 28)
    leaf = means.clone().requires_grad_(True)
    both, both_a, meta = rasterization(leaf, quats, scales, opac, colors, vms, Ks, 36, 28)
    meta["means2d"].retain_grad()
    (both * torch.arange(3, dtype=DT)).sum().backward()
    grad_batch, g2d_batch = leaf.grad.clone(), meta["means2d"].grad.clone()
    grad_single = torch.zeros_like(means)
    for c in range(2):
        leaf.grad = None
        one, one_a, meta1 = rasterization(leaf, quats, scales, opac, colors, vms[c:c + 1], Ks[c:c + 1], 36, 28)
        meta1["means2d"].retain_grad()
        (one * torch.arange(3, dtype=DT)).sum().backward()
        grad_single += leaf.grad
        torch.testing.assert_close(both[c:c + 1], one, atol=1e-12, rtol=0)
        torch.testing.assert_close(both_a[c:c + 1], one_a, atol=1e-12, rtol=0)
        torch.testing.assert_close(g2d_batch[c:c + 1], meta1["means2d"].grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad_batch, grad_single, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- spherical harmonics
def _sh_closed_form(degree, dirs):
    """3DGS's real SH from scipy's complex Y_l^m (Condon-Shortley phase): sqrt2 Re / Im for m > 0 / m < 0."""
    x, y, z = dirs.numpy().T
    theta, phi = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)
    cols = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            Y = sph_harm_y(l, abs(m), theta, phi)
            cols.append(Y.real if m == 0 else math.sqrt(2) * (Y.imag if m < 0 else Y.real))
    return torch.tensor(np.stack(cols, axis=-1), dtype=DT)


def test_sh_basis_degree3_matches_closed_form():
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, dtype=DT, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.testing.assert_close(sh_basis(3, dirs), _sh_closed_form(3, dirs), atol=1e-12, rtol=0)
    torch.testing.assert_close(sh_basis(1, dirs), _sh_closed_form(1, dirs), atol=1e-12, rtol=0)


def test_sh_colors_are_evaluated_per_view():
    means, quats, scales, opac, _ = _scene(7)
    vms, Ks = _cameras(32, 24)
    sh = torch.randn(len(means), 16, 3, dtype=DT, generator=torch.Generator().manual_seed(1)) * 0.3
    rgb, _, _ = rasterization(means, quats, scales, opac, sh, vms, Ks, 32, 24, sh_degree=3)
    for c in range(2):
        R, t = vms[c, :3, :3], vms[c, :3, 3]
        dirs = torch.nn.functional.normalize(means + R.T @ t, dim=-1)  # camera centre = -R^T t
        per_view = torch.clamp_min(torch.einsum("nk,nkd->nd", _sh_closed_form(3, dirs), sh) + 0.5, 0.0)
        ref, _, _ = _dense_render(means, quats, scales, opac, per_view, vms[c], Ks[c], 32, 24)
        torch.testing.assert_close(rgb[c], ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- gradients
def _tiny_scene():
    """Three soft Gaussians well inside the view, opacities far from the clamp, no early stop."""
    means = torch.tensor([[0.05, 0.0, 0.02], [-0.1, 0.2, 0.08], [0.12, -0.15, -0.06]], dtype=DT)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.5, 0.5, 0.1, -0.4], [1.0, 0.0, 0.2, 0.1]], dtype=DT)
    scales = torch.tensor([[0.12, 0.06, 0.08], [0.05, 0.1, 0.07], [0.09, 0.09, 0.04]], dtype=DT)
    opac = torch.tensor([0.6, 0.45, 0.7], dtype=DT)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=DT)
    vms = _look_at((0.0, -2.0, 0.3))[None]
    Ks = _intrinsics(16, 12, 20.0)[None]
    return means, quats, scales, opac, colors, vms, Ks


@pytest.mark.parametrize("mode", ["RGB+D", "RGB+ED"])
def test_gradcheck_every_input(mode):
    means, quats, scales, opac, colors, vms, Ks = _tiny_scene()
    bg = torch.tensor([[0.3, 0.5, 0.7]], dtype=DT)

    def fn(m, q, s, o, c, b):
        img, a, _ = rasterization(m, q, s, o, c, vms, Ks, 16, 12, backgrounds=b, render_mode=mode, tile_size=8)
        return img, a

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors, bg)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradcheck_sh_and_antialiased():
    means, quats, scales, opac, _, vms, Ks = _tiny_scene()
    sh = torch.randn(3, 16, 3, dtype=DT, generator=torch.Generator().manual_seed(2)) * 0.2

    def fn(m, s, o, c):
        img, a, _ = rasterization(m, quats, s, o, c, vms, Ks, 16, 12, sh_degree=3, rasterize_mode="antialiased")
        return img, a

    inputs = [t.clone().requires_grad_(True) for t in (means, scales, opac, sh)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradients_match_dense_reference_on_a_random_scene():
    """Autograd through the dense loop vs the kernel's explicit backward, clamps and early stops included."""
    means, quats, scales, opac, colors = _scene(8, n=60, opacity=(0.3, 1.0))
    vms, Ks = _cameras(32, 28)
    w_img = torch.rand(28, 32, 3, dtype=DT, generator=torch.Generator().manual_seed(3))
    w_a = torch.rand(28, 32, 1, dtype=DT, generator=torch.Generator().manual_seed(4))

    def grads(render):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        img, a = render(*leaves)
        ((img * w_img).sum() + (a * w_a).sum()).backward()
        return [t.grad for t in leaves]

    got = grads(lambda m, q, s, o, c: tuple(x[0] for x in rasterization(m, q, s, o, c, vms[:1], Ks[:1], 32, 28)[:2]))
    ref = grads(lambda m, q, s, o, c: _dense_render(m, q, s, o, c, vms[0], Ks[0], 32, 28)[:2])
    for name, g, r in zip(("means", "quats", "scales", "opacities", "colors"), got, ref):
        torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-6, msg=lambda m: f"{name}: {m}")


def test_means2d_gradient_equals_finite_differences():
    """meta['means2d'].grad (what densification reads) is d loss / d projected 2D means."""
    means, quats, scales, opac, colors, vms, Ks = _tiny_scene()
    w_img = torch.rand(12, 16, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    img, alphas, meta = rasterization(means.requires_grad_(True), quats, scales, opac, colors, vms, Ks, 16, 12)
    meta["means2d"].retain_grad()
    (img[0] * w_img).sum().backward()
    analytic = meta["means2d"].grad

    fixed = {k: meta[k].detach() for k in ("conics", "opacities", "depths", "radii")}

    def loss(m2d):
        out, _, _ = rasterize_projected(m2d, fixed["conics"], colors[None], fixed["opacities"], fixed["depths"],
                                        fixed["radii"], 16, 12)
        return (out[0] * w_img).sum()

    base = meta["means2d"].detach()
    fd = torch.zeros_like(base)
    h = 1e-6
    for i in range(base.shape[1]):
        for j in range(2):
            e = torch.zeros_like(base)
            e[0, i, j] = h
            fd[0, i, j] = (loss(base + e) - loss(base - e)) / (2 * h)
    assert fd.abs().max() > 1e-2
    torch.testing.assert_close(analytic, fd, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- edges and backends
def test_nothing_visible_gives_background_and_zero_gradients():
    means, quats, scales, opac, colors = _scene(9, n=5, extremes=False)
    means = (means - torch.tensor([0.0, 10.0, 0.0], dtype=DT)).requires_grad_(True)  # all behind the camera
    vms, Ks = _cameras(20, 16)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=DT)
    img, a, meta = rasterization(means, quats, scales, opac, colors, vms[:1], Ks[:1], 20, 16, backgrounds=bg[:1])
    assert (meta["radii"] == 0).all() and (a == 0).all()
    torch.testing.assert_close(img[0], bg[0].expand(16, 20, 3))
    img.sum().backward()
    assert (means.grad == 0).all()


def test_float32_close_to_float64():
    means, quats, scales, opac, colors = _scene(10)
    vms, Ks = _cameras(48, 40)
    ref, ref_a, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 48, 40)
    f32 = [t.float() for t in (means, quats, scales, opac, colors, vms, Ks)]
    img, a, _ = rasterization(*f32, 48, 40)
    assert (img.double() - ref).abs().max() < 1e-4 and (a.double() - ref_a).abs().max() < 1e-4


def test_backend_selection_on_cpu():
    means, quats, scales, opac, colors, vms, Ks = _tiny_scene()
    auto, _, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12, backend="auto")
    torch_, _, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12, backend="torch")
    torch.testing.assert_close(auto, torch_)
    with pytest.raises((ImportError, ValueError), match="gsplat"):
        rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12, backend="gsplat")
    with pytest.raises(NotImplementedError, match="absgrad"):
        rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12, absgrad=True)


def test_native_switch_and_fallback_when_the_build_fails(kernel_path, monkeypatch, tmp_path, caplog):
    x = torch.zeros(3, dtype=DT)
    assert (native_library(x) is not None) == (kernel_path == "native")
    assert native_library(x.float(), x) is None  # mixed dtypes: torch path
    # a compiler that fails: one warning, then the pure-torch kernels, and the images are unchanged
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_compiler", lambda: "false")
    monkeypatch.setenv("GEN3D_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("GEN3D_NATIVE", "1")
    means, quats, scales, opac, colors, vms, Ks = _tiny_scene()
    with caplog.at_level("WARNING", logger=_native.__name__):
        img, _, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12)
    assert native_library(x) is None and "using pure torch" in caplog.text
    monkeypatch.setenv("GEN3D_NATIVE", "0")
    ref, _, _ = rasterization(means, quats, scales, opac, colors, vms, Ks, 16, 12)
    torch.testing.assert_close(img, ref)
