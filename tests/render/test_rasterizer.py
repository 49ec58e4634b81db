"""Tests for itergen_ns.render: the pure-PyTorch Gaussian rasterizer and its gsplat dispatcher (CPU)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from itergen_ns.render import rasterization, resolve_backend, spherical_harmonics, torch_rasterization
from itergen_ns.render.binning import build_tile_plan
from itergen_ns.render.composite import rasterize_to_pixels
from itergen_ns.render.sh import SH_C0, SH_C1

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _camera(width: int, height: int, f: float = 100.0, cx: float | None = None, cy: float | None = None, dtype=F64):
    """Identity OpenCV camera at the origin looking down +z, and its intrinsics (batched, C=1)."""
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)[None]
    return torch.eye(4, dtype=dtype)[None], K


def _identity_quats(n: int, dtype=F64) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).repeat(n, 1)


def _random_scene(n: int, seed: int, dtype=torch.float32, depth=(2.5, 4.0), spread=0.6, scale=(0.02, 0.08)):
    """Random Gaussians in front of the identity camera: means, quats, log-free scales, opacities, colours."""
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(n, 3, dtype=dtype)
    means[:, :2] = (torch.rand(n, 2, generator=g, dtype=dtype) * 2 - 1) * spread
    means[:, 2] = depth[0] + torch.rand(n, generator=g, dtype=dtype) * (depth[1] - depth[0])
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = scale[0] + torch.rand(n, 3, generator=g, dtype=dtype) * (scale[1] - scale[0])
    opacities = 0.2 + 0.7 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opacities, colors


def _orbit_viewmats(n_cams: int, dtype=F64) -> torch.Tensor:
    """OpenCV world-to-camera matrices of cameras slightly rotated/translated around the identity."""
    mats = []
    for i in range(n_cams):
        a = 0.08 * i
        rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=dtype)
        m = torch.eye(4, dtype=dtype)
        m[:3, :3] = rot
        m[:3, 3] = torch.tensor([0.05 * i, -0.03 * i, 0.1 * i], dtype=dtype)
        mats.append(m)
    return torch.stack(mats)


def _reference_render(means2d, conics, colors, opacities, depths, radii, width, height, tile_size=16, bg=None):
    """Dense brute-force compositing of one camera with gsplat's per-pixel rules (independent of binning)."""
    order = torch.sort(depths, stable=True).indices
    order = order[radii[order] > 0]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = xs.reshape(-1).to(means2d.dtype) + 0.5, ys.reshape(-1).to(means2d.dtype) + 0.5
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    out = torch.zeros(height * width, colors.shape[-1], dtype=means2d.dtype)
    trans = torch.ones(height * width, dtype=means2d.dtype)
    done = torch.zeros(height * width, dtype=torch.bool)
    for i in order.tolist():
        mx, my = means2d[i]
        r = float(radii[i]) / tile_size
        tx0, tx1 = min(max(math.floor(mx / tile_size - r), 0), tw), min(max(math.ceil(mx / tile_size + r), 0), tw)
        ty0, ty1 = min(max(math.floor(my / tile_size - r), 0), th), min(max(math.ceil(my / tile_size + r), 0), th)
        in_tiles = (px >= tx0 * tile_size) & (px < tx1 * tile_size) & (py >= ty0 * tile_size) & (py < ty1 * tile_size)
        dx, dy = mx - px, my - py
        a, b, c = conics[i]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=0.999)
        use = in_tiles & (sigma >= 0) & (alpha >= 1 / 255) & ~done
        next_t = trans * (1 - alpha)
        stop = use & (next_t <= 1e-4)
        done |= stop
        use &= ~stop
        out[use] += (alpha * trans)[use, None] * colors[i]
        trans = torch.where(use, next_t, trans)
    if bg is not None:
        out = out + trans[:, None] * bg
    return out.reshape(height, width, -1), (1 - trans).reshape(height, width, 1)


# --------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_isotropic_gaussian_matches_analytic(mode):
    w = h = 32
    f, z, s, o = 100.0, 2.0, 0.03, 0.8
    viewmats, Ks = _camera(w, h, f, cx=16.5, cy=16.5)  # the mean projects onto pixel (16, 16)'s centre
    means = torch.tensor([[0.0, 0.0, z]], dtype=F64)
    color = torch.tensor([[0.2, 0.5, 1.0]], dtype=F64)
    rgb, alpha, info = rasterization(
        means, _identity_quats(1), torch.full((1, 3), s, dtype=F64), torch.tensor([o], dtype=F64), color,
        viewmats, Ks, w, h, rasterize_mode=mode, packed=False, backend="torch",
    )  # fmt: skip
    var_true = (s * f / z) ** 2
    var = var_true + 0.3  # eps2d blur
    opac = o * (var_true / var if mode == "antialiased" else 1.0)
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([16.5, 16.5], dtype=F64))
    assert int(info["radii"][0, 0]) == math.ceil(3 * math.sqrt(var + math.sqrt(0.01)))
    assert torch.allclose(info["conics"][0, 0], torch.tensor([1 / var, 0.0, 1 / var], dtype=F64))

    ys, xs = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
    d2 = (xs - 16) ** 2 + (ys - 16) ** 2
    expected_alpha = opac * torch.exp(-0.5 * d2 / var)
    expected_alpha = torch.where(expected_alpha >= 1 / 255, expected_alpha, torch.zeros_like(expected_alpha))
    assert alpha[0, 16, 16, 0].item() == pytest.approx(opac, rel=1e-12)
    assert torch.allclose(alpha[0, ..., 0], expected_alpha, atol=1e-12)
    assert torch.allclose(rgb[0], expected_alpha[..., None] * color[0], atol=1e-12)
    # falloff along a row follows exp(-k^2 / (2 var))
    ratio = alpha[0, 16, 18, 0] / alpha[0, 16, 16, 0]
    assert ratio.item() == pytest.approx(math.exp(-4 / (2 * var)), rel=1e-10)


def test_two_overlapping_gaussians_composite_front_to_back():
    w = h = 16
    viewmats, Ks = _camera(w, h, 50.0, cx=8.5, cy=8.5)
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    colors = torch.tensor([red, blue], dtype=F64)
    opac = torch.tensor([0.7, 0.6], dtype=F64)

    def render(z_red, z_blue):
        means = torch.tensor([[0.0, 0.0, z_red], [0.0, 0.0, z_blue]], dtype=F64)
        scales = torch.tensor([[0.1 * z_red] * 3, [0.1 * z_blue] * 3], dtype=F64)  # same size on screen
        rgb, alpha, _ = rasterization(
            means, _identity_quats(2), scales, opac, colors, viewmats, Ks, w, h, backend="torch"
        )
        return rgb[0, 8, 8], alpha[0, 8, 8, 0]

    front_red, a1 = render(2.0, 3.0)
    assert torch.allclose(front_red, torch.tensor([0.7, 0.0, 0.3 * 0.6], dtype=F64), atol=1e-12)
    front_blue, a2 = render(3.0, 2.0)
    assert torch.allclose(front_blue, torch.tensor([0.4 * 0.7, 0.0, 0.6], dtype=F64), atol=1e-12)
    assert a1.item() == pytest.approx(1 - 0.3 * 0.4) and a2.item() == pytest.approx(1 - 0.3 * 0.4)


def test_background_and_empty_scene():
    w, h = 20, 12
    viewmats, Ks = _camera(w, h, 40.0)
    bg = torch.tensor([[0.1, 0.7, 0.3]], dtype=F64)
    # behind the camera: culled, so the image is pure background with zero alpha
    means = torch.tensor([[0.0, 0.0, -1.0]], dtype=F64)
    args = (means, _identity_quats(1), torch.full((1, 3), 0.1, dtype=F64), torch.tensor([0.9], dtype=F64))
    rgb, alpha, info = rasterization(
        *args, torch.ones(1, 3, dtype=F64), viewmats, Ks, w, h, backgrounds=bg, backend="torch"
    )
    assert int(info["radii"].sum()) == 0
    assert torch.equal(rgb, bg[:, None, None, :].expand(1, h, w, 3)) and torch.equal(
        alpha, torch.zeros(1, h, w, 1, dtype=F64)
    )
    # in front: colour = c * alpha + (1 - alpha) * bg
    means = torch.tensor([[0.0, 0.0, 2.0]], dtype=F64)
    col = torch.tensor([[0.9, 0.2, 0.4]], dtype=F64)
    args = (means, _identity_quats(1), torch.full((1, 3), 0.1, dtype=F64), torch.tensor([0.9], dtype=F64))
    rgb_bg, alpha, _ = rasterization(*args, col, viewmats, Ks, w, h, backgrounds=bg, backend="torch")
    rgb_nobg, _, _ = rasterization(*args, col, viewmats, Ks, w, h, backend="torch")
    assert alpha.max() > 0.8
    assert torch.allclose(rgb_bg, alpha * col + (1 - alpha) * bg, atol=1e-12)
    assert torch.allclose(rgb_nobg, alpha * col, atol=1e-12)


def test_transmittance_cutoff_and_alpha_clamp():
    w = h = 16
    viewmats, Ks = _camera(w, h, 50.0, cx=8.5, cy=8.5)
    n = 6
    means = torch.tensor([[0.0, 0.0, 2.0 + 0.1 * i] for i in range(n)], dtype=F64)
    scales = means[:, 2:3].repeat(1, 3) * 0.2
    colors = torch.eye(n, dtype=F64)  # one channel per layer
    rgb, alpha, _ = rasterization(
        means,
        _identity_quats(n),
        scales,
        torch.full((n,), 0.95, dtype=F64),
        colors,
        viewmats,
        Ks,
        w,
        h,
        backend="torch",
    )
    # T after 3 layers is 1.25e-4 > 1e-4; the 4th would bring it to 6.25e-6 <= 1e-4, so gsplat stops there
    px = rgb[0, 8, 8]
    assert torch.allclose(px[:3], torch.tensor([0.95, 0.05 * 0.95, 0.05**2 * 0.95], dtype=F64), atol=1e-12)
    assert torch.all(px[3:] == 0)
    assert alpha[0, 8, 8, 0].item() == pytest.approx(1 - 0.05**3, abs=1e-12)
    # opacity 1 is clamped to alpha 0.999
    _, alpha1, _ = rasterization(
        means[:1],
        _identity_quats(1),
        scales[:1],
        torch.ones(1, dtype=F64),
        colors[:1],
        viewmats,
        Ks,
        w,
        h,
        backend="torch",
    )
    assert alpha1[0, 8, 8, 0].item() == pytest.approx(0.999, abs=1e-12)


def test_expected_depth_of_a_fronto_parallel_plane():
    w = h = 24
    viewmats, Ks = _camera(w, h, 30.0)
    z = 3.0
    g = torch.linspace(-1.6, 1.6, 17, dtype=F64)
    xy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    means = torch.cat([xy, torch.full((xy.shape[0], 1), z, dtype=F64)], dim=1)
    n = means.shape[0]
    args = (means, _identity_quats(n), torch.full((n, 3), 0.15, dtype=F64), torch.full((n,), 0.8, dtype=F64))
    colors = torch.rand(n, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    bg = torch.tensor([[0.5, 0.5, 0.5]], dtype=F64)
    out_ed, alpha, _ = rasterization(
        *args, colors, viewmats, Ks, w, h, render_mode="RGB+ED", backgrounds=bg, backend="torch"
    )
    out_d, _, _ = rasterization(*args, colors, viewmats, Ks, w, h, render_mode="RGB+D", backgrounds=bg, backend="torch")
    only_ed, _, _ = rasterization(*args, colors, viewmats, Ks, w, h, render_mode="ED", backend="torch")
    rgb, _, _ = rasterization(*args, colors, viewmats, Ks, w, h, backgrounds=bg, backend="torch")
    assert out_ed.shape == (1, h, w, 4) and only_ed.shape == (1, h, w, 1)
    assert alpha.min() > 0.95  # the plane covers the whole view
    assert torch.allclose(out_ed[..., 3], torch.full((1, h, w), z, dtype=F64), atol=1e-9)
    assert torch.allclose(only_ed, out_ed[..., 3:], atol=1e-12)
    assert torch.allclose(out_d[..., 3:], alpha * z, atol=1e-9)  # accumulated depth; background adds 0 to depth
    assert torch.allclose(out_ed[..., :3], rgb, atol=1e-12)


def test_matches_dense_reference_compositor():
    """Binned, chunked compositing equals a brute-force per-Gaussian loop with gsplat's per-pixel rules."""
    w, h = 40, 28  # not a multiple of the tile size
    means, quats, scales, opac, colors = _random_scene(120, seed=3, dtype=F64)
    viewmats, Ks = _camera(w, h, 45.0, dtype=F64)
    bg = torch.tensor([[0.2, 0.3, 0.4]], dtype=F64)
    rgb, alpha, info = rasterization(
        means, quats, scales, opac, colors, viewmats, Ks, w, h, backgrounds=bg, packed=False, backend="torch",
        chunk_elems=2048,
    )  # fmt: skip
    ref_rgb, ref_alpha = _reference_render(
        info["means2d"][0], info["conics"][0], colors, info["opacities"][0], info["depths"][0], info["radii"][0], w, h,
        bg=bg[0],
    )  # fmt: skip
    assert int((info["radii"] > 0).sum()) > 60
    assert torch.allclose(rgb[0], ref_rgb, atol=1e-10) and torch.allclose(alpha[0], ref_alpha, atol=1e-10)


# ----------------------------------------------------------------------------------------- SH colours


def test_spherical_harmonics_degree_0_and_1_formula():
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(50, 3, dtype=F64, generator=g)
    coeffs = torch.randn(50, 4, 3, dtype=F64, generator=g)
    x, y, z = (dirs / dirs.norm(dim=-1, keepdim=True)).unbind(-1)
    deg0 = SH_C0 * coeffs[:, 0]
    deg1 = deg0 + SH_C1 * (-y[:, None] * coeffs[:, 1] + z[:, None] * coeffs[:, 2] - x[:, None] * coeffs[:, 3])
    assert torch.allclose(spherical_harmonics(0, dirs, coeffs), deg0, atol=1e-14)
    assert torch.allclose(spherical_harmonics(1, dirs, coeffs), deg1, atol=1e-14)
    assert torch.allclose(spherical_harmonics(1, dirs * 7.0, coeffs), deg1, atol=1e-14)  # scale-invariant


def test_spherical_harmonics_match_gsplat_reference_bases():
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast  # pure torch, no CUDA build

    from itergen_ns.render.sh import eval_sh_bases

    dirs = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    unit = dirs / dirs.norm(dim=-1, keepdim=True)
    for degree in range(5):
        k = (degree + 1) ** 2
        assert torch.allclose(eval_sh_bases(degree, dirs), _eval_sh_bases_fast(k, unit), atol=1e-14)


@pytest.mark.parametrize("degree", [0, 1])
def test_sh_colour_uses_view_direction_from_camera_centre(degree):
    w = h = 16
    _, Ks = _camera(w, h, 40.0, cx=8.5, cy=8.5)
    # camera translated and looking down +z: world point (0.3, -0.2, 3) is on its optical axis
    cam_centre = torch.tensor([0.3, -0.2, -1.0], dtype=F64)
    viewmats = torch.eye(4, dtype=F64)[None].clone()
    viewmats[0, :3, 3] = -cam_centre
    means = torch.tensor([[0.3, -0.2, 3.0]], dtype=F64)
    sh = torch.tensor([[[0.4, -0.2, 0.1], [0.3, 0.5, -0.6], [0.7, -0.1, 0.2], [-0.3, 0.2, 0.9]]], dtype=F64)
    rgb, alpha, _ = rasterization(
        means, _identity_quats(1), torch.full((1, 3), 0.2, dtype=F64), torch.tensor([0.9], dtype=F64), sh,
        viewmats, Ks, w, h, sh_degree=degree, backend="torch",
    )  # fmt: skip
    x, y, z = 0.0, 0.0, 1.0  # unit direction from the camera centre to the mean
    value = SH_C0 * sh[0, 0]
    if degree == 1:
        value = value + SH_C1 * (-y * sh[0, 1] + z * sh[0, 2] - x * sh[0, 3])
    expected = torch.clamp(value + 0.5, min=0.0)
    assert alpha[0, 8, 8, 0].item() == pytest.approx(0.9)
    assert torch.allclose(rgb[0, 8, 8], 0.9 * expected, atol=1e-12)


# ---------------------------------------------------------------------------------------- gradients


def test_composite_gradcheck_float64():
    """The hand-written compositing backward against finite differences, on a plan that stays fixed."""
    means, quats, scales, opac, colors = _random_scene(12, seed=5, dtype=F64, scale=(0.05, 0.12))
    viewmats, Ks = _camera(16, 12, 20.0)
    _, _, info = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 12, packed=False, backend="torch")
    plan = info["tile_plan"]
    m2 = info["means2d"].detach().reshape(-1, 2).requires_grad_(True)
    con = info["conics"].detach().reshape(-1, 3).requires_grad_(True)
    op = info["opacities"].detach().reshape(-1).requires_grad_(True)
    col = colors.detach().clone().requires_grad_(True)
    bg = torch.tensor([[0.3, 0.1, 0.8]], dtype=F64, requires_grad=True)
    assert plan.n_pairs > 20

    proj = torch.randn(1, 12, 16, 3, dtype=F64, generator=torch.Generator().manual_seed(6))

    def fn(m2, con, col, op, bg):  # a few random projections of the images keep gradcheck quick
        rgb, alpha = rasterize_to_pixels(m2, con, col, op, plan, backgrounds=bg)
        return (rgb * proj).sum(dim=(1, 2)), (alpha[..., 0] * proj[..., 0]).sum(dim=(1, 2)), rgb[0, 5, 7]

    assert torch.autograd.gradcheck(fn, (m2, con, col, op, bg), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode,sh_degree", [("classic", None), ("antialiased", 1)])
def test_end_to_end_gradcheck_float64(mode, sh_degree):
    """Gradients w.r.t. 3D means, quats, scales, opacities and colours / SH vs finite differences."""
    means, quats, scales, opac, colors = _random_scene(6, seed=7, dtype=F64, scale=(0.05, 0.12))
    if sh_degree is not None:
        colors = torch.randn(6, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(8)) * 0.3
    viewmats = _orbit_viewmats(2)
    _, Ks = _camera(14, 10, 18.0)
    Ks = Ks.repeat(2, 1, 1)
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    proj = torch.randn(2, 10, 14, 4, dtype=F64, generator=torch.Generator().manual_seed(9))

    def fn(means, quats, scales, opac, colors):
        rgb, alpha, _ = rasterization(
            means, quats, scales, opac, colors, viewmats, Ks, 14, 10, sh_degree=sh_degree, rasterize_mode=mode,
            render_mode="RGB+ED", backend="torch",
        )  # fmt: skip
        return (rgb * proj).sum(dim=(1, 2)), (alpha[..., 0] * proj[..., 0]).sum(dim=(1, 2))

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-7, atol=1e-5, rtol=1e-3)


def test_means2d_grad_is_pixel_space_gradient():
    means, quats, scales, opac, colors = _random_scene(40, seed=11, dtype=F64)
    means.requires_grad_(True)
    viewmats, Ks = _camera(24, 20, 30.0)
    weights = torch.rand(1, 20, 24, 3, dtype=F64, generator=torch.Generator().manual_seed(12))
    rgb, alpha, info = rasterization(
        means, quats, scales, opac, colors, viewmats, Ks, 24, 20, packed=False, backend="torch"
    )
    means2d = info["means2d"]
    assert means2d.grad_fn is not None and means2d.shape == (1, 40, 2)
    means2d.retain_grad()
    ((rgb * weights).sum() + alpha.sum()).backward()
    grad = means2d.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.all(grad[info["radii"] == 0] == 0)

    # central finite differences of the same loss with means2d moved directly (pixel units)
    plan = info["tile_plan"]
    base = info["means2d"].detach().reshape(-1, 2)
    con, op = info["conics"].detach().reshape(-1, 3), info["opacities"].detach().reshape(-1)
    col = colors.detach()

    def loss(m2):
        r, a = rasterize_to_pixels(m2, con, col, op, plan)
        return ((r * weights).sum() + a.sum()).item()

    visible = torch.nonzero(info["radii"][0] > 0).squeeze(1)[:8]
    eps = 1e-6
    for i in visible.tolist():
        for axis in range(2):
            plus, minus = base.clone(), base.clone()
            plus[i, axis] += eps
            minus[i, axis] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            assert grad[0, i, axis].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_absgrad_is_populated():
    means, quats, scales, opac, colors = _random_scene(30, seed=13)
    means.requires_grad_(True)
    viewmats, Ks = _camera(24, 20, 30.0, dtype=torch.float32)
    rgb, _, info = rasterization(
        means, quats, scales, opac, colors, viewmats, Ks, 24, 20, packed=False, absgrad=True, backend="torch"
    )
    info["means2d"].retain_grad()
    (rgb * torch.linspace(-1, 1, 24)[None, None, :, None]).sum().backward()
    absgrad = info["means2d"].absgrad
    assert absgrad.shape == info["means2d"].shape
    assert torch.all(absgrad >= info["means2d"].grad.abs() - 1e-6)
    assert absgrad.sum() > info["means2d"].grad.abs().sum()  # signed per-pixel terms cancel somewhere


# ------------------------------------------------------------------------------- contracts & variants


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("D", 1), ("ED", 1), ("RGB+D", 4), ("RGB+ED", 4)])
def test_output_shapes_and_info_contract(mode, channels):
    means, quats, scales, opac, colors = _random_scene(50, seed=17)
    means.requires_grad_(True)
    viewmats = _orbit_viewmats(2, torch.float32)
    Ks = _camera(32, 24, 30.0, dtype=torch.float32)[1].repeat(2, 1, 1)
    rgb, alpha, info = rasterization(
        means, quats, scales, opac, colors, viewmats, Ks, 32, 24, packed=False, render_mode=mode, backend="torch"
    )
    assert rgb.shape == (2, 24, 32, channels) and rgb.dtype == torch.float32
    assert alpha.shape == (2, 24, 32, 1) and alpha.dtype == torch.float32
    assert info["radii"].shape == (2, 50) and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (2, 50, 2) and info["means2d"].requires_grad and not info["means2d"].is_leaf
    assert info["depths"].shape == (2, 50) and info["conics"].shape == (2, 50, 3) and info["opacities"].shape == (2, 50)
    assert info["gaussian_ids"] is None and info["camera_ids"] is None
    assert (info["width"], info["height"], info["n_cameras"], info["tile_size"]) == (32, 24, 2, 16)
    assert (info["tile_width"], info["tile_height"]) == (2, 2)
    assert torch.all((info["tiles_per_gauss"] > 0) == (info["radii"] > 0))


def test_packed_matches_unpacked():
    means, quats, scales, opac, colors = _random_scene(80, seed=19, spread=2.5)  # some Gaussians off-screen
    viewmats = _orbit_viewmats(2, torch.float32)
    Ks = _camera(32, 24, 30.0, dtype=torch.float32)[1].repeat(2, 1, 1)
    args = (means, quats, scales, opac, colors, viewmats, Ks, 32, 24)
    rgb_u, alpha_u, info_u = rasterization(*args, packed=False, backend="torch")
    rgb_p, alpha_p, info_p = rasterization(*args, packed=True, backend="torch")
    assert torch.allclose(rgb_u, rgb_p, atol=1e-6) and torch.allclose(alpha_u, alpha_p, atol=1e-6)
    nnz = int((info_u["radii"] > 0).sum())
    assert 0 < nnz < 160
    assert info_p["means2d"].shape == (nnz, 2) and info_p["radii"].shape == (nnz,)
    assert torch.equal(info_p["radii"], info_u["radii"][info_p["camera_ids"], info_p["gaussian_ids"]])


def test_multiple_cameras_equal_single_camera_renders():
    means, quats, scales, opac, colors = _random_scene(60, seed=23)
    viewmats = _orbit_viewmats(3, torch.float32)
    Ks = _camera(28, 20, 25.0, dtype=torch.float32)[1].repeat(3, 1, 1)
    Ks[1, 0, 0] = 30.0
    bgs = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.4, 0.6]])
    sh = torch.randn(60, 4, 3, generator=torch.Generator().manual_seed(24)) * 0.3
    rgb, alpha, info = rasterization(
        means, quats, scales, opac, sh, viewmats, Ks, 28, 20, sh_degree=1, backgrounds=bgs, packed=False,
        render_mode="RGB+ED", backend="torch",
    )  # fmt: skip
    assert rgb.shape == (3, 20, 28, 4) and info["n_cameras"] == 3
    for c in range(3):
        rgb_c, alpha_c, info_c = rasterization(
            means, quats, scales, opac, sh, viewmats[c : c + 1], Ks[c : c + 1], 28, 20, sh_degree=1,
            backgrounds=bgs[c : c + 1], packed=False, render_mode="RGB+ED", backend="torch",
        )  # fmt: skip
        assert torch.allclose(rgb[c], rgb_c[0], atol=1e-5) and torch.allclose(alpha[c], alpha_c[0], atol=1e-6)
        assert torch.equal(info["radii"][c], info_c["radii"][0])
    assert not torch.allclose(rgb[0], rgb[1])


def test_explicit_covariances_radius_clip_and_ortho_camera():
    from itergen_ns.render.projection import quat_scale_to_covar

    means, quats, scales, opac, colors = _random_scene(40, seed=27, dtype=F64)
    viewmats, Ks = _camera(24, 20, 30.0)
    args = (means, quats, scales, opac, colors, viewmats, Ks, 24, 20)
    rgb, alpha, info = rasterization(*args, packed=False, backend="torch")
    rgb_cov, alpha_cov, _ = rasterization(
        *args, packed=False, covars=quat_scale_to_covar(quats, scales), backend="torch"
    )
    assert torch.allclose(rgb, rgb_cov, atol=1e-12) and torch.allclose(alpha, alpha_cov, atol=1e-12)
    # radius_clip drops Gaussians whose integer radius is <= the clip
    clip = float(info["radii"][info["radii"] > 0].float().median())
    _, _, info_clip = rasterization(*args, packed=False, radius_clip=clip, backend="torch")
    assert torch.equal(info_clip["radii"] > 0, info["radii"] > clip)
    # orthographic: pixel = f * x_cam + c, regardless of depth
    _, _, info_ortho = rasterization(*args, packed=False, camera_model="ortho", backend="torch")
    visible = info_ortho["radii"][0] > 0
    expected = means[:, :2] * 30.0 + torch.tensor([12.0, 10.0], dtype=F64)
    assert visible.sum() > 0
    assert torch.allclose(info_ortho["means2d"][0][visible], expected[visible], atol=1e-12)
    with pytest.raises(NotImplementedError):
        rasterization(*args, camera_model="fisheye", backend="torch")


def test_per_camera_colors():
    means, quats, scales, opac, colors = _random_scene(30, seed=29)
    viewmats = _orbit_viewmats(2, torch.float32)
    Ks = _camera(20, 16, 20.0, dtype=torch.float32)[1].repeat(2, 1, 1)
    per_cam = torch.stack([colors, 1 - colors])
    rgb, _, _ = rasterization(means, quats, scales, opac, per_cam, viewmats, Ks, 20, 16, backend="torch")
    rgb1, _, _ = rasterization(means, quats, scales, opac, 1 - colors, viewmats[1:], Ks[1:], 20, 16, backend="torch")
    assert torch.allclose(rgb[1], rgb1[0], atol=1e-6)


def test_chunked_equals_unchunked_and_sub_tile_invariant():
    means, quats, scales, opac, colors = _random_scene(300, seed=31)
    viewmats = _orbit_viewmats(2, torch.float32)
    Ks = _camera(48, 40, 50.0, dtype=torch.float32)[1].repeat(2, 1, 1)
    bg = torch.rand(2, 3, generator=torch.Generator().manual_seed(32))
    results = []
    for sub_tile, chunk_elems in [(16, 1 << 30), (8, 1 << 30), (4, 1 << 30), (4, 64), (8, 1000)]:
        params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        rgb, alpha, info = rasterization(
            *params, viewmats, Ks, 48, 40, backgrounds=bg, packed=False, render_mode="RGB+ED", backend="torch",
            sub_tile=sub_tile, chunk_elems=chunk_elems,
        )  # fmt: skip
        info["means2d"].retain_grad()
        (rgb.square().sum() + alpha.sum()).backward()
        n_chunks = len(info["tile_plan"].chunks)
        results.append((rgb.detach(), alpha.detach(), info["means2d"].grad, [p.grad for p in params], n_chunks))
    ref = results[0]
    assert ref[4] == 1 and results[3][4] > 10
    for rgb, alpha, g2d, grads, _ in results[1:]:
        assert torch.allclose(rgb, ref[0], atol=1e-5) and torch.allclose(alpha, ref[1], atol=1e-6)
        # float32 sums run in a different order, so compare relative to each gradient's scale
        for g, g_ref in zip([g2d] + grads, [ref[2]] + ref[3]):
            assert torch.allclose(g, g_ref, atol=1e-5 * g_ref.abs().max().item(), rtol=1e-4)


def test_binning_prunes_only_invisible_pairs():
    """Smaller work tiles list fewer (tile, Gaussian) pixel-slots than gsplat's 16 px tiles would."""
    means, quats, scales, opac, colors = _random_scene(400, seed=37, scale=(0.005, 0.02))
    viewmats, Ks = _camera(64, 64, 80.0, dtype=torch.float32)
    _, _, info = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 64, 64, packed=False, backend="torch")
    slots = {}
    for sub in (16, 4):
        flat = lambda k: info[k].reshape((400,) + info[k].shape[2:])  # noqa: E731
        plan = build_tile_plan(
            flat("means2d").detach(), flat("conics").detach(), flat("opacities").detach(), flat("radii"),
            flat("depths").detach(), torch.zeros(400, dtype=torch.long), 1, 64, 64, sub_tile=sub,
        )  # fmt: skip
        slots[sub] = plan.n_pairs * sub * sub
    gsplat_slots = int(info["tiles_per_gauss"].sum()) * 256
    assert slots[16] <= gsplat_slots and slots[4] < 0.5 * slots[16]


# ----------------------------------------------------------------------------- dispatch & integration


def test_backend_selection_on_cpu():
    assert resolve_backend(torch.device("cpu"), "auto") == "torch"
    assert resolve_backend(torch.device("cpu"), "torch") == "torch"
    with pytest.raises(RuntimeError):
        resolve_backend(torch.device("cpu"), "gsplat")
    with pytest.raises(ValueError):
        resolve_backend(torch.device("cpu"), "cuda")  # type: ignore[arg-type]
    means, quats, scales, opac, colors = _random_scene(10, seed=41)
    viewmats, Ks = _camera(16, 16, 20.0, dtype=torch.float32)
    a = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 16)[0]
    b = torch_rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 16)[0]
    assert torch.equal(a, b)


def test_import_does_not_load_gsplat_cuda_backend():
    code = "import sys, itergen_ns.render; print('gsplat.cuda._backend' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_strategy_consumes_info():
    """gsplat's DefaultStrategy reads means2d.grad / radii / width / n_cameras from our info dict."""
    from gsplat.strategy import DefaultStrategy

    means, quats, scales, opac, colors = _random_scene(64, seed=43)
    params = torch.nn.ParameterDict(
        {
            "means": means, "quats": quats, "scales": torch.log(scales), "opacities": torch.logit(opac),
            "colors": colors,
        }
    )  # fmt: skip
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=10_000, verbose=False)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmats, Ks = _camera(32, 32, 40.0, dtype=torch.float32)
    rgb, alpha, info = rasterization(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        params["colors"], viewmats, Ks, 32, 32, packed=False, backend="torch",
    )  # fmt: skip
    strategy.step_pre_backward(params, optimizers, state, 0, info)
    (rgb - 0.5).square().mean().backward()
    strategy.step_post_backward(params, optimizers, state, 0, info, packed=False)
    visible = info["radii"][0] > 0
    expected = (info["means2d"].grad[0] * torch.tensor([16.0, 16.0])).norm(dim=-1)
    assert torch.allclose(state["grad2d"][visible], expected[visible])
    assert torch.equal(state["count"], visible.float())


# ----------------------------------------------------------------------------------- GPU parity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with gsplat's extension")
def test_parity_with_gsplat_cuda():
    from itergen_ns.render import gsplat_cuda_available

    if not gsplat_cuda_available():
        pytest.skip("gsplat CUDA extension unavailable")
    dev = torch.device("cuda")
    means, quats, scales, opac, _ = _random_scene(2000, seed=47, scale=(0.005, 0.03))
    sh = torch.randn(2000, 16, 3, generator=torch.Generator().manual_seed(48)) * 0.3
    viewmats = _orbit_viewmats(2, torch.float32)
    Ks = _camera(96, 64, 80.0, dtype=torch.float32)[1].repeat(2, 1, 1)
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    outs = {}
    for backend in ("gsplat", "torch"):
        params = [t.to(dev).requires_grad_(True) for t in (means, quats, scales, opac, sh)]
        rgb, alpha, info = rasterization(
            *params, viewmats.to(dev), Ks.to(dev), 96, 64, sh_degree=3, backgrounds=bg.to(dev), packed=False,
            render_mode="RGB+ED", rasterize_mode="antialiased", backend=backend,
        )  # fmt: skip
        info["means2d"].retain_grad()
        (rgb[..., :3].square().sum() + alpha.sum()).backward()
        outs[backend] = (rgb[..., :3], alpha, info["radii"], info["means2d"].grad, [p.grad for p in params])
    g, t = outs["gsplat"], outs["torch"]
    # integer radii may differ by one where float rounding straddles an integer
    assert (g[2] - t[2]).abs().max() <= 1 and (g[2] != t[2]).float().mean() < 0.01
    assert torch.allclose(g[0], t[0], atol=2e-3) and torch.allclose(g[1], t[1], atol=2e-3)
    for a, b in zip([g[3]] + g[4], [t[3]] + t[4]):  # gradients, relative to each one's scale
        assert (a - b).abs().max() <= 2e-2 * b.abs().max() + 1e-6
