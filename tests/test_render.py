"""The render API on the CPU (torch backend): analytic cases, a sequential oracle, gsplat's torch steps, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from diff4splat.gaussians import Gaussians
from diff4splat.geometry.cameras import fxfycxcy_to_K, invert_c2w, look_at
from diff4splat.rendering import render, resolve_backend
from diff4splat.rendering.sh import eval_sh
from diff4splat.rendering.torch_backend import project_gaussians, rasterize_tiles

IDENTITY = torch.eye(4)[None]


def single(opacity: float, scale: float = 0.05, z: float = 2.0, color=(0.2, 0.6, 0.9)) -> Gaussians:
    return Gaussians(
        means=torch.tensor([[0.0, 0.0, z]]),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        scales=torch.full((1, 3), scale),
        opacities=torch.tensor([opacity]),
        colors=torch.tensor([color]),
    )


def test_single_gaussian_on_axis():
    H = W = 33  # principal point 16.5 = the centre of pixel 16
    f = torch.tensor([[1.0, 1.0, 0.5, 0.5]])
    out = render(single(0.8), IDENTITY, f, H, W, backend="torch")
    assert out.rgb.shape == (1, 3, H, W) and out.depth.shape == (1, 1, H, W) and out.alpha.shape == (1, 1, H, W)
    peak = out.alpha[0, 0].argmax()
    assert divmod(int(peak), W) == (16, 16)
    assert out.alpha[0, 0, 16, 16].item() == pytest.approx(0.8, abs=1e-6)
    torch.testing.assert_close(out.rgb[0, :, 16, 16], 0.8 * torch.tensor([0.2, 0.6, 0.9]), atol=1e-6, rtol=0)
    # one pixel off-centre: the EWA footprint (focal 33 px, scale 0.05 at z 2) plus the 0.3 px² dilation
    var = (33 * 0.05 / 2.0) ** 2 + 0.3
    assert out.alpha[0, 0, 16, 17].item() == pytest.approx(0.8 * math.exp(-0.5 / var), rel=1e-5)
    covered = out.alpha[0, 0] > 0
    torch.testing.assert_close(out.depth[0, 0][covered], torch.full_like(out.depth[0, 0][covered], 2.0))
    assert (out.depth[0, 0][~covered] == 0).all()


def test_opacity_zero_gives_background():
    bg = torch.tensor([0.1, 0.5, 0.7])
    out = render(single(0.0), IDENTITY, torch.tensor([[1.0, 1.0, 0.5, 0.5]]), 16, 16, backend="torch", background=bg)
    torch.testing.assert_close(out.rgb[0], bg[:, None, None].expand(3, 16, 16))
    assert (out.alpha == 0).all()


def test_behind_camera_and_far_are_culled():
    f = torch.tensor([[1.0, 1.0, 0.5, 0.5]])
    assert render(single(0.9, z=-2.0), IDENTITY, f, 16, 16, backend="torch").alpha.max() == 0
    assert render(single(0.9, z=200.0), IDENTITY, f, 16, 16, backend="torch").alpha.max() == 0


def random_scene(seed: int, B: int = 2, V: int = 2, N: int = 300, sh_degree: int | None = None):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, N, 3, generator=g) * torch.tensor([2.0, 1.6, 2.0]) + torch.tensor([-1.0, -0.8, 2.0])
    colors = (
        torch.rand(B, N, 3, generator=g)
        if sh_degree is None
        else torch.randn(B, N, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    )
    gs = Gaussians(
        means=means,
        quats=torch.randn(B, N, 4, generator=g),
        scales=torch.exp(torch.rand(B, N, 3, generator=g) * 2.0 - 4.5),
        opacities=torch.rand(B, N, generator=g) * 0.98 + 0.01,
        colors=colors,
    )
    eye = (torch.rand(B, V, 3, generator=g) - 0.5) * 0.5
    c2w = look_at(eye, torch.tensor([0.0, 0.0, 3.0]).expand(B, V, 3))
    fxfycxcy = torch.tensor([0.9, 1.1, 0.5, 0.48]).expand(B, V, 4).clone()
    return gs, c2w, fxfycxcy


def sequential_oracle(gs: Gaussians, c2w, fxfycxcy, H, W):
    """Pixel-by-pixel front-to-back compositing in depth order over all projected Gaussians (no tiles)."""
    viewmats, Ks = invert_c2w(c2w), fxfycxcy_to_K(fxfycxcy, H, W)
    m2, con, z, radii = (
        x[0] for x in project_gaussians(gs.means, gs.quats, gs.scales, gs.opacities, viewmats, Ks, W, H)
    )
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    rgb = torch.zeros(3, H, W)
    T = torch.ones(H, W)
    done = torch.zeros(H, W, dtype=torch.bool)
    depth = torch.zeros(H, W)
    for i in torch.argsort(z).tolist():
        if not (radii[i] > 0).all():
            continue
        dx, dy = m2[i, 0] - xs, m2[i, 1] - ys
        sigma = 0.5 * (con[i, 0] * dx * dx + con[i, 2] * dy * dy) + con[i, 1] * dx * dy
        a = torch.clamp(gs.opacities[i] * torch.exp(-sigma), max=0.999)
        ok = (sigma >= 0) & (a >= 1 / 255) & ~done
        nT = T * (1 - a)
        stop = ok & (nT <= 1e-4)
        done |= stop
        ok &= ~stop
        w = torch.where(ok, a * T, torch.zeros_like(a))
        rgb += w * gs.colors[i][:, None, None]
        depth += w * z[i]
        T = torch.where(ok, nT, T)
    return rgb, depth / (1 - T).clamp(min=1e-10), 1 - T


def test_matches_sequential_oracle():
    gs, c2w, f = random_scene(0, B=1, V=1, N=1500)
    H, W = 40, 52
    out = render(gs, c2w, f, H, W, backend="torch", max_elements=1 << 16)  # small chunks: exercises depth blocks
    rgb, depth, alpha = sequential_oracle(
        Gaussians(gs.means[0], gs.quats[0], gs.scales[0], gs.opacities[0], gs.colors[0]), c2w[0], f[0], H, W
    )
    assert alpha.max() > 0.99 and (alpha > 0.5).float().mean() > 0.5
    torch.testing.assert_close(out.rgb[0, 0], rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha[0, 0, 0], alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth[0, 0, 0][alpha > 1e-3], depth[alpha > 1e-3], atol=1e-4, rtol=1e-5)


def test_projection_matches_gsplat_torch_steps():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    gs, c2w, f = random_scene(1, B=1, V=2, N=500)
    H, W = 48, 64
    viewmats, Ks = invert_c2w(c2w[0]), fxfycxcy_to_K(f[0], H, W)
    m2, con, z, radii = project_gaussians(gs.means[0], gs.quats[0], gs.scales[0], gs.opacities[0], viewmats, Ks, W, H)
    covars, _ = _quat_scale_to_covar_preci(gs.quats[0], gs.scales[0], triu=False, compute_preci=False)
    r_ref, m_ref, z_ref, con_ref, _ = _fully_fused_projection(gs.means[0], covars, viewmats, Ks, W, H, near_plane=0.001)
    both = (radii > 0).all(-1) & (r_ref > 0).all(-1)
    assert both.sum() > 500
    torch.testing.assert_close(m2[both], m_ref[both], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(con[both], con_ref[both], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(z[both], z_ref[both])
    # opacity-aware extents are never larger than gsplat-torch's plain 3.33-sigma ones
    assert (radii[both] <= r_ref[both]).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_torch_steps(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    coeffs = torch.randn(50, 16, 3)
    dirs = torch.randn(50, 3)
    torch.testing.assert_close(eval_sh(degree, coeffs, dirs), _spherical_harmonics(degree, dirs, coeffs))


def test_batched_render_equals_per_scene():
    gs, c2w, f = random_scene(2, B=2, V=2, N=200, sh_degree=2)
    out = render(gs, c2w, f, 24, 32, backend="torch")
    for b in range(2):
        one = Gaussians(gs.means[b], gs.quats[b], gs.scales[b], gs.opacities[b], gs.colors[b])
        ref = render(one, c2w[b], f[b], 24, 32, backend="torch")
        torch.testing.assert_close(out.rgb[b], ref.rgb)
        torch.testing.assert_close(out.depth[b], ref.depth, atol=1e-5, rtol=1e-5)  # summation order differs


def test_gradients_reach_every_attribute():
    gs, c2w, f = random_scene(3, B=1, V=2, N=150, sh_degree=1)
    leaves = {
        k: getattr(gs, k).clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "colors")
    }
    out = render(Gaussians(**leaves), c2w, f, 24, 32, backend="torch", background=0.3)
    (out.rgb.square().sum() + out.depth.sum() + out.alpha.sum()).backward()
    for k, v in leaves.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        assert (v.grad.abs().flatten(1).sum(-1) > 0).float().mean() > 0.5, k  # most Gaussians get a gradient


def test_gradients_match_finite_differences():
    gs, c2w, f = random_scene(4, B=1, V=1, N=20)
    gs = gs.to(torch.float64)
    c2w, f = c2w.double(), f.double()
    H, W = 16, 20
    weights = torch.rand(1, 1, 3, H, W, dtype=torch.float64)

    def loss(means, opacities):
        g = Gaussians(means, gs.quats, gs.scales, opacities, gs.colors)
        viewmats, Ks = invert_c2w(c2w), fxfycxcy_to_K(f, H, W)
        from diff4splat.rendering.api import _render_torch

        feat, _ = _render_torch(g, viewmats, Ks, H, W, 0.001, 100.0, 0.3, 16, 1 << 20)
        return (feat[..., :3].movedim(-1, -3) * weights).sum()

    means = gs.means.clone().requires_grad_(True)
    opac = gs.opacities.clone().requires_grad_(True)
    loss(means, opac).backward()
    eps = 1e-6
    for idx in [(0, 3, 0), (0, 7, 1), (0, 11, 2)]:
        d = torch.zeros_like(means)
        d[idx] = eps
        fd = (loss(means.detach() + d, opac.detach()) - loss(means.detach() - d, opac.detach())) / (2 * eps)
        assert means.grad[idx].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)
    for idx in [(0, 2), (0, 9)]:
        d = torch.zeros_like(opac)
        d[idx] = eps
        fd = (loss(means.detach(), opac.detach() + d) - loss(means.detach(), opac.detach() - d)) / (2 * eps)
        assert opac.grad[idx].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)


def _raster_inputs(gs: Gaussians, c2w, fxfycxcy, H: int, W: int):
    """The inputs ``rasterize_tiles`` gets from ``render`` (no SH): means2d, conics, features, opacities, radii,
    depths, flattened over images."""
    viewmats, Ks = invert_c2w(c2w), fxfycxcy_to_K(fxfycxcy, H, W)
    means2d, conics, depths, radii = project_gaussians(gs.means, gs.quats, gs.scales, gs.opacities, viewmats, Ks, W, H)
    lead, N = depths.shape[:-1], gs.num_gaussians
    feats = torch.cat([gs.colors[..., None, :, :].expand(*lead, N, 3), depths[..., None]], -1)
    opac = gs.opacities[..., None, :].expand(*lead, N)
    I = lead.numel()
    return [x.reshape(I, N, -1).squeeze(-1).detach() for x in (means2d, conics, feats, opac, radii, depths)]


@pytest.mark.parametrize("seed,max_elements,opaque", [(0, 1 << 22, False), (1, 1 << 14, False), (2, 1 << 12, True)])
def test_fast_compositing_matches_autograd_reference(seed: int, max_elements: int, opaque: bool):
    """The hand-written backward (default path) against the autograd-traced compositing (reference=True): outputs
    and gradients of means2d, conics, features and opacities; small max_elements exercise several depth blocks,
    opaque Gaussians the alpha clamp at MAX_ALPHA and the early stop."""
    gs, c2w, f = random_scene(seed, N=400)
    if opaque:
        gs.opacities[::2] = 1.0
    H, W = 40, 36
    args = _raster_inputs(gs, c2w, f, H, W)
    g = torch.Generator().manual_seed(seed)
    w_feat, w_alpha = torch.randn(args[0].shape[0], H, W, 4, generator=g), torch.randn(1, H, W, 1, generator=g)
    results = []
    for reference in (True, False):
        leaves = [x.clone().requires_grad_(True) for x in args[:4]]
        feat, alpha = rasterize_tiles(*leaves, *args[4:], W, H, max_elements=max_elements, reference=reference)
        ((feat * w_feat).sum() + (alpha * w_alpha).sum()).backward()
        results.append([feat, alpha] + [x.grad for x in leaves])
    names = ["features", "alphas", "grad means2d", "grad conics", "grad features", "grad opacities"]
    for name, ref, new in zip(names, *results, strict=True):
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item(), msg=name)


def test_fast_compositing_gradcheck():
    """float64 gradcheck of the hand-written backward on a tiny case (two tiles, overlapping Gaussians)."""
    g = torch.Generator().manual_seed(0)
    N, H, W = 6, 6, 10
    means2d = torch.rand(1, N, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H], dtype=torch.float64)
    sx, sy = 1.0 + 2.0 * torch.rand(2, 1, N, generator=g, dtype=torch.float64)
    rho = 0.6 * torch.rand(1, N, generator=g, dtype=torch.float64) - 0.3
    det = (sx * sy) ** 2 * (1 - rho**2)
    conics = torch.stack([sy**2 / det, -rho * sx * sy / det, sx**2 / det], -1)
    features = torch.rand(1, N, 4, generator=g, dtype=torch.float64)
    opacities = 0.3 + 0.6 * torch.rand(1, N, generator=g, dtype=torch.float64)
    radii = torch.full((1, N, 2), 12, dtype=torch.int32)
    depths = torch.rand(1, N, generator=g, dtype=torch.float64)

    def fn(m, c, f, o):
        feat, alpha = rasterize_tiles(m, c, f, o, radii, depths, W, H, tile_size=4, max_elements=4 * 16)
        return feat, alpha

    inputs = [x.clone().requires_grad_(True) for x in (means2d, conics, features, opacities)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("opengl", torch.device("cpu"))  # type: ignore[arg-type]
    gs, c2w, f = random_scene(5, B=1, V=1, N=10)
    with pytest.raises(ValueError, match=r"fxfycxcy must be \[1, 1, 4\]"):
        render(gs, c2w, f[..., :3], 8, 8)
    # bf16 inputs render in float32
    out = render(gs.to(torch.bfloat16), c2w, f, 8, 8)
    assert out.rgb.dtype == torch.float32
