"""Depth losses: the released code's metric MSE + multi-scale gradient matching, and the paper's 1 - Pearson + TV.

All take predicted and target z-depth [B, F, H, W], a validity mask [B, F, H, W] and return one value per scene [B]
(the system multiplies by the per-dataset depth weight).
"""

from __future__ import annotations

from torch import Tensor


def _masked_mean(x: Tensor, mask: Tensor, dims: tuple[int, ...]) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(dims) / m.sum(dims).clamp_min(1.0)


def depth_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:  # -> [B]
    """Masked mean squared error in depth units."""
    return _masked_mean((pred - target).square(), valid, (1, 2, 3))


def gradient_matching(pred: Tensor, target: Tensor, valid: Tensor, scales: int = 4) -> Tensor:  # -> [B]
    """Multi-scale gradient matching on the depth difference (MiDaS; MoVieS's ``GradientLoss`` exactly): at scale s
    the maps are subsampled every 2^s pixels, and the L1 of the x and y finite differences of the masked difference
    over pixel pairs that are both valid is summed, halved and divided by the number of valid pixels; the result is
    the mean over the scales. (MoVieS passes all-one confidences, which double each term before the halving.)"""
    total = pred.new_zeros(pred.shape[0])
    for s in range(scales):
        step = 2**s
        p, t = pred[..., ::step, ::step], target[..., ::step, ::step]
        m = valid[..., ::step, ::step].to(pred.dtype)
        diff = m * (p - t)
        gx = (diff[..., :, 1:] - diff[..., :, :-1]).abs() * (m[..., :, 1:] * m[..., :, :-1])
        gy = (diff[..., 1:, :] - diff[..., :-1, :]).abs() * (m[..., 1:, :] * m[..., :-1, :])
        total = total + (gx.sum((1, 2, 3)) + gy.sum((1, 2, 3))) / (m.sum((1, 2, 3)) + 1e-6)
    return total / scales


def depth_loss_released(pred: Tensor, target: Tensor, valid: Tensor, gradient_weight: float = 1.0) -> Tensor:
    """The released code's DepthLoss (MoVieS's, confidence term off as released): masked MSE + ``gradient_weight`` ×
    4-scale gradient matching. -> [B]"""
    return depth_mse(pred, target, valid) + gradient_weight * gradient_matching(pred, target, valid)


def pearson_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:  # -> [B]
    """1 - Pearson correlation between predicted and target depth over valid pixels (scale and shift invariant)."""
    dims = (1, 2, 3)
    mp, mt = _masked_mean(pred, valid, dims), _masked_mean(target, valid, dims)
    dp = pred - mp.view(-1, 1, 1, 1)
    dt = target - mt.view(-1, 1, 1, 1)
    cov = _masked_mean(dp * dt, valid, dims)
    var_p = _masked_mean(dp.square(), valid, dims)
    var_t = _masked_mean(dt.square(), valid, dims)
    return 1.0 - cov / (var_p * var_t).clamp_min(1e-12).sqrt()


def tv_loss(depth: Tensor) -> Tensor:  # [B, F, H, W] -> [B]
    """Total variation ‖∇D‖₁ (mean absolute finite differences)."""
    gx = (depth[..., :, 1:] - depth[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    gy = (depth[..., 1:, :] - depth[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return gx + gy


def depth_loss_paper(pred: Tensor, target: Tensor, valid: Tensor, tv_weight: float = 0.1) -> Tensor:
    """The paper's L_geo: (1 - Pearson) + ``tv_weight`` × TV of the predicted depth. -> [B]"""
    return pearson_loss(pred, target, valid) + tv_weight * tv_loss(pred)
