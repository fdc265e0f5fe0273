"""Deferred per-pixel augmentation: the crop + resize of images, depth and masks, and depth validity, applied to a
whole batch on the training device (`ClipSamplingConfig.augment_on="device"`).

Why: in the worker path (`augment_on="worker"`) DataLoader workers resize 13-14 frames of images, depth and two masks
per clip and test depth validity: about 4 ms of memory-bound work per 256² clip on one CPU core, more than half of
what decoding the JPEGs costs (`experiments/benchmarks/results/data.md`). On the GPU the same work is a few small
kernels per clip. With `augment_on="device"` the worker does only what needs the encoded data or the random draws
(reading, decoding, frame sampling, crop boxes, cameras, tracks) and sends

    batch["pixels"] = {
        "images":       list of B uint8 (U_b, h_b, w_b, 3)    decoded crop of clip b's U_b unique frames
        "depth":        list of B float16/32 (U_b, h'_b, w'_b) or None   cropped source depth (as stored)
        "depth_valid":  list of B bool (U_b, h'_b, w'_b) or None
        "dynamic_mask": list of B bool (U_b, h'_b, w'_b) or None
        "frame_index":  int64 (B, F)   frame f of clip b is its unique frame frame_index[b, f]
        "rows", "cols": int64 (B, H), (B, W)   nearest source row/column (in h'_b, w'_b) of every output pixel
        "flip":         list of B bool   horizontal flip (cameras and tracks are already flipped)
        "scale_norm":   str   `ClipSamplingConfig.scale_norm` ("mean_xyz", "mean_depth" or "none")
        "fallback_mean": float64 (B,)  the scene's mean distance without depth (tracks, points or cameras; NaN: none),
                        computed by the worker (`ClipTransform._fallback_mean`)
    }

with c2w, tracks_world and metric_scale not yet scale-normalised (canonical, in the stored units), and
`augment_pixels` (called by `datamodules.batch.finish_batch`, which the DataModule runs in `on_after_batch_transfer`)
writes the contract's images (float32 in [0,1]), depth, depth_valid and dynamic_mask, computes the scene scale s
from the resized input-frame depth (`scene_scale`: the worker path's definition and subsample) and scales c2w
translations, tracks_world, depth and metric_scale by it.
Clips keep their own sizes in the lists, so clips of different native resolutions (a mixture) share a batch without
padding, and the output-frame duplication (an output frame that is also an input) is an index on the device. Only
the crop leaves the worker, and along an axis that shrinks only the source rows/columns that the nearest resize
reads, so the depth and mask payload is never larger than the output along that axis.

Results equal the worker path for the same crop: depth_valid and dynamic_mask exactly (the same nearest source
pixels and validity test); the scene scale up to float rounding (the same pixels and formula, reduced in another
order, from the float32 cameras of the batch instead of the worker's float64 ones: relative differences ~1e-7), so
c2w, tracks_world, depth and metric_scale agree to float32 rounding; images up to the resampling kernel's
arithmetic: the worker
resizes uint8 (fixed-point weights, rounded to uint8); on the CPU this does too (the same bytes), elsewhere it
resizes float32 (CUDA has no uint8 antialiased kernel) without rounding: tests bound the difference by 1.5/255
(max; observed ≤ 1.0/255, mean ≈ 0.3/255) on the CPU with `float_resize=True` (`tests/test_stream.py`).

Why the scale moved here too: the worker otherwise reads a ~34k-pixel subsample of the cold source depth per clip
for it (~0.6-0.8 ms of a ~9 ms clip); here it is a few batched reductions over depth that is already resized.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

PIXELS = "pixels"
MIN_SCALE_SAMPLES = 4096  # valid pixels the subsampled scene scale needs; fewer: every valid pixel is used
SCALE_SAMPLES = 32768  # target size of the subsample of output pixels for the scene scale


def scale_sample_stride(frames: int, height: int, width: int) -> int:
    """Stride (in both image axes) of the output pixels that the scene scale averages: about `SCALE_SAMPLES`."""
    return max(1, math.isqrt(frames * height * width // SCALE_SAMPLES))


def augment_pixels(batch: dict[str, Any], float_resize: bool | None = None) -> dict[str, Any]:
    """Replace `batch["pixels"]` (see the module docstring) by the contract's per-pixel fields, in place, on the
    device the payload is on: images (B,F,3,H,W) (uint8 on the CPU, float32 in [0,1] elsewhere; `finish_batch`
    makes both float); depth float32 (B,F,H,W) × s, 0 where invalid; depth_valid (stored validity & depth > 0 &
    finite) and dynamic_mask bool (B,F,H,W); and the scene scale s (`scene_scale`) applied to c2w translations,
    tracks_world and metric_scale.

    The steps are the same on every device; the kernels differ where the CPU has much faster ones: the images are
    resized in uint8 on the CPU (its vectorised uint8 antialiased kernel: ~10× its float32 one, and the worker path's
    bytes exactly) and in float32 elsewhere (CUDA has no uint8 one) unless `float_resize` says otherwise; depth and
    masks are gathered and tested with the worker path's numpy kernels on the CPU (torch's CPU `isfinite`, 1-byte
    `index_select` and `masked_fill_` are several times slower) and with torch ops elsewhere.
    """
    px = batch.pop(PIXELS)
    index, rows, cols = px["frame_index"], px["rows"], px["cols"]
    (B, F), H, W = index.shape, rows.shape[1], cols.shape[1]
    dev = index.device
    cpu = dev.type == "cpu"
    if float_resize is None:
        float_resize = not cpu
    # (B,F,H,W,3) memory exposed as (B,F,3,H,W), as `BatchBuffers` (interpolation of channels-last frames writes it)
    frames = torch.empty((B, F, H, W, 3), dtype=torch.float32 if float_resize else torch.uint8, device=dev)
    depth = torch.empty((B, F, H * W), dtype=torch.float32, device=dev)
    valid = torch.empty((B, F, H * W), dtype=torch.bool, device=dev)
    dynamic = torch.empty((B, F, H * W), dtype=torch.bool, device=dev)
    for b in range(B):
        f, flip = index[b], bool(px["flip"][b])
        # 1. Images: antialiased bilinear resize of the clip's unique frames, then its F frames by index
        x = px["images"][b].permute(0, 3, 1, 2)  # (U,3,h,w), channels-last memory
        x = tnf.interpolate(
            x.float() if float_resize else x, size=(H, W), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.permute(0, 2, 3, 1)  # (U,H,W,3) contiguous: whole-frame copies below
        torch.index_select(x.flip(2) if flip else x, 0, f, out=frames[b])
        # 2. Depth and masks: nearest resize = one gather of source pixels per frame (flat row/column index; a
        # flip reverses the columns)
        src = px["depth"][b] if px["depth"][b] is not None else px["dynamic_mask"][b]
        lin = None
        if src is not None:
            c = cols[b].flip(0) if flip else cols[b]
            lin = (rows[b][:, None] * src.shape[2] + c[None, :]).reshape(-1)
        if px["depth"][b] is None:
            depth[b], valid[b] = 0.0, False
        else:
            _take(px["depth"][b], f, lin, depth[b], cpu)
            if px["depth_valid"][b] is None:
                valid[b] = True
            else:
                _take(px["depth_valid"][b], f, lin, valid[b], cpu)
        if px["dynamic_mask"][b] is None:
            dynamic[b] = False
        else:
            _take(px["dynamic_mask"][b], f, lin, dynamic[b], cpu)
    # 3. Validity, batched: invalid depth (stored as invalid, <= 0, NaN, inf) becomes 0
    if cpu:
        d, v = depth.numpy(), valid.numpy()
        scratch = np.empty(d.shape, np.uint32)
        v &= _positive_finite(d, np.empty(d.shape, bool), scratch)
        _zero_invalid(d, v, scratch)
    else:
        valid &= (depth > 0) & depth.isfinite()
        depth = torch.where(valid, depth, 0.0)
    # 4. Scene scale from the input frames' depth, then normalised = stored × s (as the worker path scales)
    mode = px["scale_norm"]
    if mode != "none":
        n = batch["num_input"]
        flip = torch.tensor(px["flip"], device=dev)
        s = scene_scale(
            depth.view(B, F, H, W)[:, :n],
            valid.view(B, F, H, W)[:, :n],
            batch["c2w"][:, :n],
            batch["fxfycxcy"][:, :n],
            px["fallback_mean"].to(dev),
            flip,
            mode,
        )
        depth.mul_(s.to(torch.float32)[:, None, None])
        c2w = batch["c2w"].clone()
        c2w[..., :3, 3] = (c2w[..., :3, 3].double() * s[:, None, None]).float()
        batch["c2w"] = c2w
        batch["tracks_world"] = (batch["tracks_world"].double() * s[:, None, None, None]).float()
        batch["metric_scale"] = (batch["metric_scale"].double() * s).float()
    if float_resize:
        frames.div_(255.0).clamp_(0.0, 1.0)
    batch["images"] = frames.permute(0, 1, 4, 2, 3)
    batch["depth"], batch["depth_valid"] = depth.view(B, F, H, W), valid.view(B, F, H, W)
    batch["dynamic_mask"] = dynamic.view(B, F, H, W)
    return batch


def _take(src: torch.Tensor, frames: torch.Tensor, lin: torch.Tensor, out: torch.Tensor, cpu: bool) -> None:
    """out (F, P) = src[frames] (src: (U,h,w)) at the flat pixel indices `lin` (P,) of each frame."""
    if cpu:
        o = out.numpy()
        if src.dtype == out.dtype:
            _gather(src.numpy(), frames.numpy(), lin.numpy(), o)
        else:  # float16 depth: gathered as stored, converted by torch (vectorised float16)
            out.copy_(torch.from_numpy(_gather(src.numpy(), frames.numpy(), lin.numpy(), None)))
        return
    out.copy_(src.reshape(len(src), -1).index_select(1, lin).index_select(0, frames))


def collate_pixels(pixels: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch's `"pixels"` from the per-clip payloads of `ClipTransform` (augment_on="device")."""
    out: dict[str, Any] = {k: [p[k] for p in pixels] for k in ("images", "depth", "depth_valid", "dynamic_mask")}
    for k in ("frame_index", "rows", "cols"):
        out[k] = torch.stack([p[k] for p in pixels])
    out["flip"] = [bool(p["flip"]) for p in pixels]
    out["scale_norm"] = pixels[0]["scale_norm"]
    out["fallback_mean"] = torch.tensor([float(p["fallback_mean"]) for p in pixels], dtype=torch.float64)
    return out


def scene_scale(
    depth: torch.Tensor,  # (B,n,H,W) float32 z-depth of the input frames, 0 where not valid
    valid: torch.Tensor,  # (B,n,H,W) bool
    c2w: torch.Tensor,  # (B,n,4,4) canonical cameras (first input = identity), not yet scaled
    fxfycxcy: torch.Tensor,  # (B,n,4) normalised intrinsics
    fallback: torch.Tensor,  # (B,) float64 mean distance without depth (`ClipTransform._fallback_mean`), NaN: none
    flip: torch.Tensor,  # (B,) bool: the clip (depth, cameras, tracks) is mirrored
    mode: str,  # "mean_xyz" | "mean_depth"
) -> torch.Tensor:  # (B,) float64 s, normalised = stored × s
    """The worker path's scene scale (`ClipTransform._scene_scale`), batched on the tensors' device: s = 1 / the mean
    distance of the valid depth points from the first camera ("mean_xyz", the reference's norm_xyz) or 1 / their
    mean z-depth ("mean_depth"), over the output pixels (i, j) ≡ stride // 2 (mod stride) of the unflipped frame
    (`scale_sample_stride`), or over every pixel when that subsample holds fewer than `MIN_SCALE_SAMPLES` valid
    pixels. Without valid depth: `fallback` (the worker's tracks / sparse points / camera heuristic, one rule for
    both paths); s = 1 when that mean is not a positive finite number. A flipped clip is measured on its mirrored pixels with its
    mirrored cameras: the same points, mirrored, at the same distances. float64 arithmetic (as the worker's)."""
    B, n, H, W = depth.shape
    stride = scale_sample_stride(n, H, W)
    total, count = _depth_sum(depth, valid, c2w, fxfycxcy, flip, mode, stride)
    if stride > 1:
        every = count < MIN_SCALE_SAMPLES
        if depth.device.type != "cpu" or bool(every.any()):  # on an accelerator: no sync, both are cheap
            total_all, count_all = _depth_sum(depth, valid, c2w, fxfycxcy, flip, mode, 1)
            total, count = torch.where(every, total_all, total), torch.where(every, count_all, count)
    # without depth: the worker's fallback (mirroring keeps distances)
    dist = torch.where(fallback.isfinite(), fallback.double(), 0.0)
    mean = torch.where(count > 0, total / count.clamp(min=1), dist)
    return torch.where((mean > 1e-8) & mean.isfinite(), 1.0 / mean, 1.0)


def _depth_sum(
    depth: torch.Tensor,
    valid: torch.Tensor,
    c2w: torch.Tensor,
    fxfycxcy: torch.Tensor,
    flip: torch.Tensor,
    mode: str,
    stride: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) float64 sum of the z-depths ("mean_depth") or point distances ("mean_xyz") and (B,) count of the valid
    pixels (i, j) ≡ stride // 2 (mod stride) of the unflipped (B,n,H,W) frames (column W - 1 - j of a flipped one)."""
    B, n, H, W = depth.shape
    dev, o = depth.device, stride // 2
    rows = torch.arange(o, H, stride, device=dev)
    cols = torch.arange(o, W, stride, device=dev)
    cols = torch.where(flip[:, None], W - 1 - cols, cols)  # (B,w) columns of the (flipped) output frames
    at = cols[:, None, None, :].expand(B, n, len(rows), cols.shape[1])
    d = depth[:, :, o::stride].gather(3, at).double()  # (B,n,h,w), 0 where not valid
    v = valid[:, :, o::stride].gather(3, at)
    count = v.sum((1, 2, 3))
    if mode == "mean_depth":
        return d.sum((1, 2, 3)), count
    # |R d r + t| = |d r + Rᵀt| with r = ((u - cx)/fx, (v - cy)/fy, 1) as in `datamodules.scene_unit._sampled_depth_mean`
    k, P = fxfycxcy.double(), c2w.double()
    rx = ((cols.double()[:, None, :] + 0.5) / W - k[..., 2:3]) / k[..., 0:1]  # (B,n,w)
    ry = ((rows.double() + 0.5) / H - k[..., 3:4]) / k[..., 1:2]  # (B,n,h)
    t = P[..., :3, 3]
    u = torch.einsum("bfji,bfj->bfi", P[..., :3, :3], t)  # Rᵀt, (B,n,3)
    sq = (rx * rx + 1.0)[:, :, None, :] + (ry * ry)[:, :, :, None]
    sq = sq * d + (2.0 * (rx * u[..., 0:1] + u[..., 2:3]))[:, :, None, :] + (2.0 * ry * u[..., 1:2])[:, :, :, None]
    sq = sq * d + (t * t).sum(-1)[:, :, None, None]
    return torch.where(v, sq.clamp(min=0.0).sqrt(), 0.0).sum((1, 2, 3)), count


# ------------------------------------------------------------------------------------------------ CPU kernels
# (numpy, shared with the worker path in `datamodules.transform`)


def _gather(a: np.ndarray, frames: np.ndarray, lin: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """out (len(frames), P) = a[frames] at the flat pixel indices `lin` (P,) of each frame; a: (F_src,Hs,Ws)."""
    a2 = np.asarray(a).reshape(len(a), -1)
    if out is None:
        out = np.empty((len(frames), len(lin)), a2.dtype)
    for i, f in enumerate(frames.tolist()):  # one gather per output frame: no copy of whole source frames
        np.take(a2[f], lin, out=out[i], mode="clip")  # mode="clip": unbuffered `out` (lin is in range)
    return out


def _positive_finite(depth: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """out = (depth > 0) & isfinite(depth) for float32 depth, in two passes: the bits of positive finite floats are
    1 ... 0x7F7FFFFF as uint32 (zero, negatives, inf and NaN lie outside), so valid ⟺ bits - 1 < 0x7F7FFFFF."""
    np.subtract(depth.view(np.uint32), np.uint32(1), out=scratch)
    return np.less(scratch, np.uint32(0x7F7FFFFF), out=out)


def _zero_invalid(depth: np.ndarray, valid: np.ndarray, scratch: np.ndarray) -> None:
    """depth[~valid] = 0 in place (float32), branch-free: AND with an all-ones/all-zeros bit mask per pixel (a masked
    store is several times slower on irregular masks, and depth × valid keeps NaN and inf)."""
    np.copyto(scratch, valid)
    np.negative(scratch, out=scratch)  # 1 → 0xFFFFFFFF
    bits = depth.view(np.uint32)
    np.bitwise_and(bits, scratch, out=bits)
