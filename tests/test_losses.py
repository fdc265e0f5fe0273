"""Each loss is 0 on identical inputs, positive otherwise, and has finite gradients; SSIM and LPIPS match their
definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diff4splat.losses.geometry import (
    depth_loss_paper,
    depth_loss_released,
    gradient_matching,
    pearson_loss,
    tv_loss,
)
from diff4splat.losses.lpips import LPIPS
from diff4splat.losses.motion import (
    gram_distribution_loss,
    motion_loss_paper,
    motion_loss_released,
    no_motion_loss,
    track_motion,
)
from diff4splat.losses.photometric import psnr, ssim


def _depth(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 1 + torch.rand(2, 3, 16, 20, generator=g)
    valid = torch.rand(2, 3, 16, 20, generator=g) > 0.2
    return d, valid


@pytest.mark.parametrize("fn", [depth_loss_released, gradient_matching, pearson_loss])
def test_depth_losses_zero_on_identical_and_finite_grads(fn):
    d, valid = _depth()
    assert fn(d, d, valid).abs().max() < 1e-6
    pred = (d + 0.1 * torch.randn_like(d)).requires_grad_()
    loss = fn(pred, d, valid)
    assert (loss > 1e-4).all()
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_pearson_is_scale_and_shift_invariant_and_tv_of_constant_is_zero():
    d, valid = _depth()
    assert pearson_loss(3 * d + 2, d, valid).abs().max() < 1e-5
    assert tv_loss(torch.ones(2, 3, 8, 8)).abs().max() == 0
    assert (
        depth_loss_paper(
            torch.ones(1, 1, 8, 8) * 2,
            torch.ones(1, 1, 8, 8) * 2 + torch.eye(8),
            torch.ones(1, 1, 8, 8, dtype=torch.bool),
        ).item()
        > 0.5
    )


def test_gradient_matching_ignores_a_constant_offset():
    d, valid = _depth()
    assert gradient_matching(d + 0.7, d, valid).abs().max() < 1e-5
    assert depth_loss_released(d + 0.7, d, valid).min() > 0.4  # the MSE part is metric


def test_motion_losses():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 50, 3, generator=g)
    valid = torch.rand(2, 3, 50, generator=g) > 0.3
    assert motion_loss_released(target, target, valid).abs().max() < 1e-6
    assert gram_distribution_loss(target, target, valid).abs().max() == 0
    zero = torch.zeros_like(target)
    assert motion_loss_paper(zero, zero, valid).abs().max() == 0
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    for fn in (motion_loss_released, motion_loss_paper):
        loss = fn(pred, target, valid)
        assert (loss > 0).all()
        loss.sum().backward()
        assert torch.isfinite(pred.grad).all()
        pred.grad = None
    # paper: 2·‖Δx̂ - Δx‖₂ + ‖Δx̂‖₁ on one point
    p, t = torch.tensor([[[[1.0, 0, 0]]]]), torch.tensor([[[[0.0, 0, 0]]]])
    assert motion_loss_paper(p, t, torch.ones(1, 1, 1, dtype=torch.bool)).item() == pytest.approx(3.0)
    assert no_motion_loss(torch.zeros(1, 2, 5, 3)).item() == 0


def test_track_motion_gathers_the_right_cells():
    """A track seen at a known pixel of input frame 0 pairs with that pixel's Gaussian and its true displacement."""
    h, w, fg, t = 4, 6, 1, 2
    c2w = torch.eye(4).repeat(1, 3, 1, 1)
    fx = torch.tensor([1.0, 1.5, 0.5, 0.5]).repeat(1, 3, 1)
    # a point at depth 2 projecting into pixel (row 1, col 4) of frame 0
    u, v = (4 + 0.5) / w, (1 + 0.5) / h
    p0 = torch.tensor([(u - 0.5) / 1.0 * 2, (v - 0.5) / 1.5 * 2, 2.0])
    tracks = torch.stack([p0, p0 + torch.tensor([0.1, 0, 0]), p0 + torch.tensor([0, 0.2, 0])])[None, :, None]
    visible = torch.ones(1, 3, 1, dtype=torch.bool)
    delta = torch.zeros(1, t, fg * h * w, 3)
    delta[0, :, 1 * w + 4] = torch.tensor([7.0, 8.0, 9.0])
    pred, target, valid = track_motion(
        delta, (fg, h, w), torch.tensor([0]), torch.tensor([1, 2]), tracks, visible, c2w, fx, h * 10, w * 10
    )
    assert valid.all()
    torch.testing.assert_close(pred[0, :, 0], torch.tensor([[7.0, 8.0, 9.0]] * 2))
    torch.testing.assert_close(target[0, :, 0], torch.tensor([[0.1, 0, 0], [0, 0.2, 0]]))


def _ssim_bruteforce(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    g = np.exp(-((np.arange(win) - (win - 1) / 2) ** 2) / (2 * sigma**2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                a, b = x[c, i : i + win, j : j + win], y[c, i : i + win, j : j + win]
                ma, mb = (k * a).sum(), (k * b).sum()
                va, vb = (k * a * a).sum() - ma**2, (k * b * b).sum() - mb**2
                cov = (k * a * b).sum() - ma * mb
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_definition_and_psnr():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 18, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(3, 16, 18, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert ssim(x[None].float(), y[None].float()).item() == pytest.approx(
        _ssim_bruteforce(x.numpy(), y.numpy()), abs=1e-5
    )
    assert ssim(x[None], x[None]).item() == pytest.approx(1.0, abs=1e-6)
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)).item() == pytest.approx(20.0, abs=1e-4)


def test_lpips_zero_on_identical_positive_otherwise_and_missing_weights_error(tmp_path):
    torch.manual_seed(0)
    lp = LPIPS(pretrained=False)
    x = torch.rand(2, 3, 32, 32)
    assert lp(x, x).abs().max() == 0
    y = x.clone().requires_grad_()
    d = lp(y, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="LPIPS weights not found"):
        LPIPS(pretrained=True, vgg_path=tmp_path / "nope.pth", lin_path=tmp_path / "nope2.pth")


def test_lpips_loads_weights_from_files(tmp_path):
    torch.manual_seed(0)
    src = LPIPS(pretrained=False)
    vgg = {f"features.{k}": v for k, v in src.features.state_dict().items()}
    lin = {f"lin{i}.model.1.weight": layer.weight.detach().clone() for i, layer in enumerate(src.lins)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    loaded = LPIPS(pretrained=True, vgg_path=tmp_path / "vgg16.pth", lin_path=tmp_path / "vgg.pth")
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x, y), src(x, y))


def test_ssim_after_inference_mode_still_trains():
    """SSIM's cached window first built under torch.inference_mode (an evaluation loop) must still work in a
    training step that backpropagates through SSIM (it raised "Inference tensors cannot be saved for backward")."""
    from diff4splat.losses.photometric import _gaussian_window, ssim

    _gaussian_window.cache_clear()
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        ssim(a, b)
    x = a.clone().requires_grad_(True)
    (1 - ssim(x, b)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _movies_depth_loss(pred, gt, masks, scales=4):
    """MoVieS's DepthLoss (src/models/losses.py @ b2611f2) as released: confs = ones, depth_conf_alpha = 0,
    depth_grad_weight = 1, written out loop by loop."""
    b = pred.shape[0]
    p, g, m = pred.reshape(b, -1), gt.reshape(b, -1), masks.reshape(b, -1).float()
    loss = ((p - g) ** 2 * m).sum(-1) / (m.sum(1) + 1e-6)
    conf = torch.ones_like(pred)
    total = 0.0
    for s in range(scales):
        st = 2**s
        pr, ta, ma, co = (
            pred[:, :, ::st, ::st],
            gt[:, :, ::st, ::st],
            masks[:, :, ::st, ::st].float(),
            conf[:, :, ::st, ::st],
        )
        summed = ma.sum((-3, -2, -1))
        diff = ma * (pr - ta)
        gx = (
            (diff[..., 1:] - diff[..., :-1]).abs() * torch.mean(co[..., 1:] + co[..., :-1]) * ma[..., 1:] * ma[..., :-1]
        )
        gy = (diff[..., 1:, :] - diff[..., :-1, :]).abs() * torch.mean(co[..., 1:, :] + co[..., :-1, :])
        gy = gy * ma[..., 1:, :] * ma[..., :-1, :]
        total = total + ((gx.sum((-3, -2, -1)) + gy.sum((-3, -2, -1))) / 2.0) / (summed + 1e-6)
    return loss + total / scales


def test_released_losses_are_movies_exactly():
    """depth_loss_released and motion_loss_released equal MoVieS's DepthLoss and MotionLoss (the reference's code
    transcribed above and below; the Gram term over all valid pairs, fewer than its 1000-point sample)."""
    g = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(2, 3, 13, 17, generator=g) + 0.5, torch.rand(2, 3, 13, 17, generator=g) + 0.5
    valid = torch.rand(2, 3, 13, 17, generator=g) > 0.2
    torch.testing.assert_close(depth_loss_released(pred, gt, valid), _movies_depth_loss(pred, gt, valid))
    p, t = torch.randn(2, 4, 30, 3, generator=g), torch.randn(2, 4, 30, 3, generator=g)
    v = torch.rand(2, 4, 30, generator=g) > 0.4
    ours = motion_loss_released(p, t, v)
    for i in range(2):
        a, c = p[i][v[i]], t[i][v[i]]  # (M, 3) valid pairs, as MoVieS gathers them
        l1 = torch.nn.functional.l1_loss(a, c, reduction="none").mean()
        dist = torch.nn.functional.l1_loss(a @ a.T, c @ c.T, reduction="none").mean()
        torch.testing.assert_close(ours[i], l1 + 10.0 * dist)
