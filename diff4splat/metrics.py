"""Evaluation metrics: images (PSNR, SSIM, LPIPS), depth (AbsRel, δ<1.25), 3D tracks (EPE) and temporal consistency
(warping error). Plain tensor functions, used by `diff4splat.pipelines.evaluation`.

- PSNR and SSIM are torchmetrics' (data range 1, SSIM with an 11-pixel Gaussian window, σ 1.5), per image.
  PSNR of identical images is infinite; it is capped at ``PSNR_CAP`` dB so that means stay finite.
- LPIPS is `diff4splat.losses.lpips.LPIPS` (VGG, local weights), per image.
- Depth: over the pixels with ground truth, ``AbsRel = mean |d̂ - d| / d`` and ``δ1 = fraction with
  max(d̂/d, d/d̂) < 1.25``. A pixel the prediction leaves empty (d̂ = 0) counts as AbsRel 1 and fails δ1, so a
  model that renders nothing is not rewarded.
- Tracks: ``EPE = mean ‖x̂ - x‖₂`` over the visible (prediction, ground truth) pairs, and the fraction of pairs
  within 0.05 and 0.10 scene units (scenes are normalised to mean depth 1).
- Warping error (temporal consistency): frame t+1 warped into view t along the scene's own motion, compared with
  frame t: ``mean |I_t(p) - I_{t+1}(π_{t+1}(X_{t+1}(p)))|`` over pixels p of view t whose surface point
  ``X_{t+1}(p)`` (where the point seen at p at time t is at time t+1) lands inside view t+1 and is not occluded
  there (its depth within ``occlusion_tol`` of the depth seen at t+1). Colour differences are in [0, 1] units,
  averaged over channels; bilinear sampling. Zero for a video that follows the scene exactly.
- The nearest-input baseline (`nearest_input_frames`): each output view answered by the input frame whose camera is
  nearest, what a reconstruction must beat (``psnr_nearest_input``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diff4splat.geometry.cameras import project_points
from diff4splat.losses.lpips import LPIPS

__all__ = ["PSNR_CAP", "depth_metrics", "image_metrics", "nearest_input_frames", "track_metrics", "warp_error"]

PSNR_CAP = 100.0  # dB: what identical images score (MSE 0)


def image_metrics(
    pred: Tensor,  # [V, 3, H, W] in [0, 1]
    target: Tensor,  # [V, 3, H, W] in [0, 1]
    lpips: LPIPS | None = None,
    chunk: int = 8,
) -> dict[str, Tensor]:  # name -> [V]
    """Per-image ``psnr`` (capped at ``PSNR_CAP``), ``ssim`` and, with an LPIPS network, ``lpips``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"image_metrics: expected equal [V, 3, H, W] shapes, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.float().clamp(0, 1), target.float().clamp(0, 1)
    out = {
        "psnr": peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(
            max=PSNR_CAP
        ),
        "ssim": structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none"),
    }
    if lpips is not None:
        dev = next(lpips.parameters()).device
        with torch.no_grad():
            parts = [
                lpips(pred[i : i + chunk].to(dev), target[i : i + chunk].to(dev)) for i in range(0, len(pred), chunk)
            ]
        out["lpips"] = torch.cat(parts).to(pred.device)
    return out


def depth_metrics(
    pred: Tensor,  # [...] predicted z-depth (0 = nothing rendered)
    gt: Tensor,  # [...] ground-truth z-depth
    valid: Tensor,  # [...] bool, where ground truth exists
    align: str = "none",
) -> dict[str, float]:
    """``abs_rel``, ``delta1`` (NaN when no pixel is valid) and ``pixels`` over the valid pixels (see the module
    docstring). ``align="median"`` first scales the prediction by median(gt) / median(pred) over the valid pixels
    that have a prediction (for models whose scale is not the ground truth's)."""
    if not pred.shape == gt.shape == valid.shape:
        raise ValueError(f"depth_metrics: shapes differ: {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(valid.shape)}")
    if align not in ("none", "median"):
        raise ValueError(f"depth_metrics: align must be 'none' or 'median', got {align!r}")
    m = valid & (gt > 0) & torch.isfinite(gt)
    n = int(m.sum())
    if n == 0:
        return {"abs_rel": math.nan, "delta1": math.nan, "pixels": 0}
    d, g = pred[m].double(), gt[m].double()
    d = torch.where(torch.isfinite(d) & (d > 0), d, torch.zeros_like(d))
    if align == "median" and (d > 0).any():
        d = d * (g[d > 0].median() / d[d > 0].median())
    abs_rel = ((d - g).abs() / g).mean()
    ratio = torch.maximum(d / g, g / d.clamp_min(1e-30))
    delta1 = ((d > 0) & (ratio < 1.25)).double().mean()
    return {"abs_rel": float(abs_rel), "delta1": float(delta1), "pixels": n}


def track_metrics(
    pred: Tensor,  # [..., 3] predicted points (or displacements)
    gt: Tensor,  # [..., 3]
    valid: Tensor,  # [...] bool
) -> dict[str, float]:
    """``epe`` (mean end-point error), ``within_0.05`` and ``within_0.10`` (fractions of pairs), ``pairs``; NaN
    when no pair is valid."""
    if pred.shape != gt.shape or pred.shape[:-1] != valid.shape:
        raise ValueError(f"track_metrics: shapes {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(valid.shape)}")
    n = int(valid.sum())
    if n == 0:
        return {"epe": math.nan, "within_0.05": math.nan, "within_0.10": math.nan, "pairs": 0}
    err = (pred[valid].double() - gt[valid].double()).norm(dim=-1)
    return {
        "epe": float(err.mean()),
        "within_0.05": float((err < 0.05).double().mean()),
        "within_0.10": float((err < 0.10).double().mean()),
        "pairs": n,
    }


def warp_error(
    frame: Tensor,  # [3, H, W] frame t
    next_frame: Tensor,  # [3, H, W] frame t+1
    points: Tensor,  # [H, W, 3] world position at t+1 of the surface seen at each pixel of view t
    mask: Tensor,  # [H, W] bool: pixels of view t that see a surface
    next_c2w: Tensor,  # [4, 4] camera t+1
    next_fxfycxcy: Tensor,  # [4]
    next_depth: Tensor | None = None,  # [H, W] z-depth seen by camera t+1 (occlusion test); None: no test
    occlusion_tol: float = 0.05,
) -> tuple[float, float]:
    """(warping error, fraction of view t's pixels it was measured on); NaN error when no pixel qualifies. See the
    module docstring."""
    _, h, w = frame.shape
    proj = project_points(points.reshape(-1, 3).float(), next_c2w.float(), next_fxfycxcy.float(), h, w)
    ok = proj.valid & mask.reshape(-1)
    if next_depth is not None:
        col = proj.uv[:, 0].floor().long().clamp(0, w - 1)
        row = proj.uv[:, 1].floor().long().clamp(0, h - 1)
        seen = next_depth[row, col]
        ok &= (seen > 0) & ((proj.depth - seen).abs() <= occlusion_tol * seen)
    n = int(ok.sum())
    if n == 0:
        return math.nan, 0.0
    grid = torch.stack([proj.uv[:, 0] / w * 2 - 1, proj.uv[:, 1] / h * 2 - 1], -1).view(1, h, w, 2)
    warped = F.grid_sample(
        next_frame[None].float(), grid.nan_to_num(), mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    diff = (frame.float() - warped).abs().mean(0).reshape(-1)
    return float(diff[ok].double().mean()), n / (h * w)


def nearest_input_frames(batch: dict[str, Any]) -> Tensor:
    """For each output view, the input frame whose camera centre is nearest (ties: nearest time). [B, F_out, 3, H, W]"""
    fi = int(batch["num_input"])
    centres = batch["c2w"][..., :3, 3]
    d = torch.cdist(centres[:, fi:], centres[:, :fi])  # [B, F_out, F_in]
    dt = (batch["timestamps"][:, fi:, None] - batch["timestamps"][:, None, :fi]).abs()
    idx = (d + 1e-6 * dt).argmin(-1)  # [B, F_out]
    images = batch["images"][:, :fi]
    return torch.gather(images, 1, idx[..., None, None, None].expand(-1, -1, *images.shape[2:]))
