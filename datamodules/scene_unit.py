"""The scene unit (`diff4splat.geometry.scale`'s one rule) of frames outside the stream: `scene_unit` of the
`SCENE_FRAMES` evenly spaced frames of a window (`scene_frames`), for latent encoding and synthetic videos; and the
subsampled depth mean (`_depth_mean`) that it and the stream's `datamodules.transform.ClipTransform` both take.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.augment import MIN_SCALE_SAMPLES, scale_sample_stride
from diff4splat.geometry.scale import fallback_mean, scale_from_mean

SCENE_FRAMES = 5  # frames of a window whose scene points define its unit outside the stream (the LRDM's input count)


def scene_frames(num_frames: int) -> np.ndarray:
    """Positions of the `SCENE_FRAMES` evenly spaced frames (the first included) of a window of `num_frames`."""
    return np.unique(np.round(np.linspace(0, num_frames - 1, min(SCENE_FRAMES, num_frames))).astype(np.int64))


def scene_unit(
    c2w: np.ndarray,  # (F,4,4) cameras canonical to the first
    fxfycxcy: np.ndarray,  # (F,4) normalised intrinsics of the frames `depth` covers
    depth: np.ndarray | None = None,  # (F,H,W) z-depth
    valid: np.ndarray | None = None,  # (F,H,W) bool (None: finite and > 0)
    tracks: np.ndarray | None = None,  # (F,N,3) canonical, NaN where not visible
    visible: np.ndarray | None = None,  # (F,N) bool
    points: np.ndarray | None = None,  # (P,3) canonical sparse points
) -> tuple[float, str]:
    """(s, method): the one rule's factor (normalised = stored × s; `diff4splat.geometry.scale`) for frames outside
    the stream (latent encoding, synthetic videos): 1 / the mean distance from the first camera of the valid depth
    points (subsampled as the stream does), else of the sparse points seen, else of the visible tracks, else the
    camera heuristic; (1, "none") when nothing measures it."""
    c2w, fxfycxcy = np.asarray(c2w, np.float64), np.asarray(fxfycxcy, np.float64)
    if depth is not None:
        d = np.asarray(depth, np.float32)
        ok = np.isfinite(d) & (d > 0)
        if valid is not None:
            ok &= np.asarray(valid, bool)
        mean = _depth_mean(d, ok, c2w, fxfycxcy, "mean_xyz", scale_sample_stride(*d.shape))
        if mean is not None:
            return scale_from_mean(mean), "depth"
    mean, method = fallback_mean(c2w, fxfycxcy, tracks, visible, points)
    return scale_from_mean(mean), method


def _depth_mean(
    depth: np.ndarray, valid: np.ndarray, c2w: torch.Tensor, K: torch.Tensor, mode: str, stride: int
) -> float | None:
    """Mean z-depth ("mean_depth") or mean distance of the unprojected points from the first camera ("mean_xyz",
    = `unproject_depth(depth, c2w, K)[valid].norm(-1).mean()`) over the valid pixels of the (F,H,W) depth, taken
    on the pixels (i, j) with i ≡ j ≡ stride // 2 (mod stride). The mean over such a regular subsample estimates the
    mean over all pixels (within 1 %, typically 0.2 %, on the benchmark clips at stride 5); when it holds fewer than
    `MIN_SCALE_SAMPLES` valid pixels, every pixel is used (exact). None when no pixel is valid.
    """
    F, H, W = depth.shape
    o = stride // 2
    v = valid[:, o::stride, o::stride]
    if stride > 1 and int(np.count_nonzero(v)) < MIN_SCALE_SAMPLES:
        stride, o, v = 1, 0, valid
    return _sampled_depth_mean(depth[:, o::stride, o::stride], v, (H, W), o, stride, c2w, K, mode)


def _sampled_depth_mean(
    d: np.ndarray,
    v: np.ndarray,
    out_hw: tuple[int, int],
    o: int,
    stride: int,
    c2w: torch.Tensor,
    K: torch.Tensor,
    mode: str,
) -> float | None:
    """`_depth_mean` on its subsample: d, v (F,h,w) = depth and validity of the output pixels (o + stride·i,
    o + stride·j) of (F,H,W) frames; d may hold anything (NaN, inf) where not v. None when no pixel is valid."""
    count = int(np.count_nonzero(v))
    if count == 0:
        return None
    H, W = out_hw
    d = d.astype(np.float64)
    d[~v] = 0.0  # invalid pixels may hold NaN/inf
    if mode == "mean_depth":
        return float(d.sum() / count)
    # |R d r + t| = |d r + Rᵀt| with r = ((u - cx)/fx, (v - cy)/fy, 1): |.|² = d (d|r|² + 2 r·Rᵀt) + |t|², where |r|²
    # and r·Rᵀt are sums of a per-column and a per-row term (no (F,h,w,3) array)
    k, P = np.asarray(K), np.asarray(c2w)
    rx = ((np.arange(o, W, stride) + 0.5) / W - k[:, 2:3]) / k[:, 0:1]  # (F,w)
    ry = ((np.arange(o, H, stride) + 0.5) / H - k[:, 3:4]) / k[:, 1:2]  # (F,h)
    u = np.einsum("fji,fj->fi", P[:, :3, :3], P[:, :3, 3])  # Rᵀt, (F,3)
    sq = (rx * rx + 1.0)[:, None, :] + (ry * ry)[:, :, None]  # |r|²
    sq *= d
    sq += (2.0 * (rx * u[:, 0:1] + u[:, 2:3]))[:, None, :]
    sq += (2.0 * ry * u[:, 1:2])[:, :, None]
    sq *= d
    sq += (P[:, :3, 3] ** 2).sum(-1)[:, None, None]
    np.maximum(sq, 0.0, out=sq)
    return float(np.sqrt(sq, out=sq)[v].sum() / count)
