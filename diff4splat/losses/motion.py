"""Motion losses on world tracks: the released code's L1 + Gram distribution loss, and the paper's 2·L2 + L1.

``track_motion`` pairs predictions with ground truth: for a track visible in a Gaussian frame i at pixel (u, v), the
prediction is the Δμ at query time t of the Gaussian of that pixel's grid cell, and the target is
``track(t) - track(t_i)`` (both world points; NaN = not visible).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diff4splat.geometry.cameras import project_points


def track_motion(
    delta_means: Tensor,  # [B, T, N, 3] predicted Δμ per query time, N = F_g·h·w (frame-major, row-major)
    grid: tuple[int, int, int],  # (F_g, h, w)
    frame_indices: Tensor,  # [F_g] batch frame index of each Gaussian frame
    query_frames: Tensor,  # [T] batch frame index whose tracks give the target at each query time
    tracks_world: Tensor,  # [B, F, M, 3] NaN where not visible
    tracks_visible: Tensor,  # [B, F, M] bool
    c2w: Tensor,  # [B, F, 4, 4]
    fxfycxcy: Tensor,  # [B, F, 4]
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:  # pred [B, T, F_g·M, 3], target [B, T, F_g·M, 3], valid [B, T, F_g·M]
    fg, h, w = grid
    b, t = delta_means.shape[:2]
    src = tracks_world[:, frame_indices]  # [B, F_g, M, 3]
    proj = project_points(torch.nan_to_num(src), c2w[:, frame_indices], fxfycxcy[:, frame_indices], height, width)
    vis = tracks_visible[:, frame_indices] & proj.valid & torch.isfinite(src).all(-1)  # [B, F_g, M]
    row = (proj.uv[..., 1] * h / height).long().clamp(0, h - 1)
    col = (proj.uv[..., 0] * w / width).long().clamp(0, w - 1)
    cell = torch.arange(fg, device=src.device)[None, :, None] * (h * w) + row * w + col  # [B, F_g, M]
    cell = cell.reshape(b, 1, -1, 1).expand(b, t, -1, 3)
    pred = torch.gather(delta_means, 2, cell)  # [B, T, F_g·M, 3]
    dst = tracks_world[:, query_frames]  # [B, T, M, 3]
    target = dst[:, :, None] - src[:, None]  # [B, T, F_g, M, 3]
    valid = vis[:, None] & torch.isfinite(target).all(-1)
    return pred, torch.nan_to_num(target).reshape(b, t, -1, 3), valid.reshape(b, t, -1)


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:  # x, valid [B, ...] -> [B]
    m = valid.to(x.dtype)
    return (x * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def gram_distribution_loss(
    pred: Tensor, target: Tensor, valid: Tensor, max_points: int = 1000, generator: torch.Generator | None = None
) -> Tensor:
    """L1 between the Gram matrices Δx̂Δx̂ᵀ and ΔxΔxᵀ over at most ``max_points`` valid points per scene. -> [B]"""
    b = pred.shape[0]
    out = pred.new_zeros(b)
    p, q, v = pred.reshape(b, -1, 3), target.reshape(b, -1, 3), valid.reshape(b, -1)
    for i in range(b):
        idx = v[i].nonzero(as_tuple=True)[0]
        if idx.numel() < 2:
            continue
        if idx.numel() > max_points:
            idx = idx[torch.randperm(idx.numel(), generator=generator, device=idx.device)[:max_points]]
        a, c = p[i, idx], q[i, idx]
        out[i] = (a @ a.T - c @ c.T).abs().mean()
    return out


def motion_loss_released(pred: Tensor, target: Tensor, valid: Tensor, distribution_weight: float = 10.0) -> Tensor:
    """The released MotionLoss (MoVieS's, confidence term off as released): the L1 loss averaged over the valid
    pairs and the 3 coordinates + ``distribution_weight`` × Gram distribution loss. -> [B]"""
    l1 = _masked_mean((pred - target).abs().mean(-1), valid)
    return l1 + distribution_weight * gram_distribution_loss(pred, target, valid)


def motion_loss_paper(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """The paper's L_motion: mean over valid pairs of 2·‖Δx̂ - Δx‖₂ + ‖Δx̂‖₁. -> [B]"""
    per = 2.0 * (pred - target).norm(dim=-1) + pred.abs().sum(-1)
    return _masked_mean(per, valid)


def no_motion_loss(delta_means: Tensor) -> Tensor:  # [B, T, N, 3] -> [B]
    """For scenes without tracks (static datasets): mean ‖Δμ‖, pushing motion to zero (as the released code)."""
    return delta_means.norm(dim=-1).flatten(1).mean(1)
