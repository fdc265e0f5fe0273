"""The clip transform (`ClipTransform`, the reference's `_frame_sample` and augmentation, §8.2-8.3): one raw shard
sample → one clip of the batch contract.

F_in input frames spread uniformly over a random gap, F_out output frames random (or the inputs plus random frames
with p=0.25), timestamps normalised over the union (`datamodules.sampling.sample_frames`); for static datasets the
output time is one random constant with p=0.5. Per batch one output size (random aspect, long side = resolution,
multiples of `size_divisor`); per clip a crop of 77-100 % of the largest crop of that aspect, resized (bilinear,
antialiased; nearest for depth and masks), with intrinsics updated by `crop_intrinsics`; optional horizontal flips
mirror the scene (x → −x in the first camera's frame), so poses stay rotations and cx → 1 − cx. Cameras and tracks
are made canonical (first input camera = identity) and scale-normalised (`scale_norm`; the depth mean is taken over a
regular subsample of ~32k output pixels, see `datamodules.scene_unit._depth_mean`), and metric cameras are kept. Each
unique frame is decoded and resized once; depth and masks are cropped and resized by one gather of source pixels per
frame. With `augment_on="device"` the worker stops at the crop: the per-pixel resize, depth validity and the scene
scale (from the resized depth; c2w, tracks, depth and metric_scale are scaled there) run batched on the training
device (`datamodules.augment`), with the same random draws and results (the scale up to float rounding).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from datamodules.augment import _gather, _positive_finite, _zero_invalid, scale_sample_stride
from datamodules.batch import BatchBuffers
from datamodules.frame_codec import decode_image, decode_video
from datamodules.sampling import ClipSamplingConfig, SourceConfig, crop_box, sample_frames, window_rejection
from datamodules.scene_unit import _depth_mean
from datamodules.spec import Clip, decode_sample
from diff4splat.geometry.scale import fallback_mean, scale_from_mean

_LOADED_ARRAYS = ("depth", "depth_valid", "tracks_world", "tracks_visible", "dynamic_mask", "points_world")

_FLIP = np.diag([-1.0, 1.0, 1.0, 1.0])


class ClipTransform:
    """One raw shard sample → one clip of the batch contract (numpy/torch, before collation).

    Call with the raw sample, a generator, the batch's output size and the source's config. `train=False` gives the
    deterministic evaluation view (largest gap, uniform outputs, centre crop of the whole frame, no flips).
    """

    def __init__(self, cfg: ClipSamplingConfig, train: bool = True):
        self.cfg, self.train = cfg, train
        self._scratch = _Scratch()
        self.rejected_windows = {"valid_depth": 0, "rotation": 0}  # `ClipStream` points this at its `SkipStats`

    def __call__(
        self,
        sample: dict[str, Any],
        rng: np.random.Generator,
        out_hw: tuple[int, int],
        source: SourceConfig,
        out: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        clip = decode_sample(sample, values=False, arrays=_LOADED_ARRAYS)
        return self.transform(clip, rng, out_hw, source, out)

    def transform(
        self,
        clip: Clip,
        rng: np.random.Generator,
        out_hw: tuple[int, int],
        source: SourceConfig,
        out: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The clip of the batch contract. `out`: a `BatchBuffers.slot` to write the per-pixel fields into (they are
        then views of the batch, and collation copies nothing); fresh tensors when None.

        With `augment_on="device"` the per-pixel fields are replaced by `"pixels"` (see `_deferred_pixels`): the
        decoded crop of the frames, the cropped depth and masks at source resolution, and the resampling indices;
        c2w, tracks_world and metric_scale are left unscaled (scene scale 1): `datamodules.augment.augment_pixels`
        turns a batch of those into the contract, scene scale included. Both paths draw the same random numbers, so
        the same generator gives the same crop, frames, tracks and flip.
        """
        cfg, train = self.cfg, self.train
        meta = clip.meta
        is_static = meta.is_static if source.is_static is None else source.is_static
        F = clip.num_frames
        min_gap = cfg.num_input if source.min_gap is None else source.min_gap
        for _ in range(max(1, cfg.window_attempts) if train else 1):
            inp, outp = sample_frames(
                rng,
                F,
                cfg.num_input,
                cfg.num_output,
                min_gap,
                source.max_gap,
                train,
                cfg.include_input_prob,
                cfg.eval_outputs,
            )
            reason = window_rejection(clip, inp, outp, cfg) if train else None
            if reason is None:
                break
            self.rejected_windows[reason] += 1
        else:
            raise ValueError(
                f"no frame window of {cfg.window_attempts} draws passes the filters (last: {reason}; "
                f"min_valid_depth_ratio={cfg.min_valid_depth_ratio}, max_input_rotation={cfg.max_input_rotation})"
            )
        idx = np.concatenate([inp, outp])
        uniq, pos = np.unique(idx, return_inverse=True)
        H, W = out_hw
        Hs, Ws = meta.height, meta.width
        deferred = self.cfg.augment_on == "device"

        # 1. Crop box in source pixels, then decode only the frames used (JPEG at reduced scale when that is exact)
        scale = float(rng.uniform(*cfg.crop_scale)) if train else 1.0
        top, left, ch, cw = crop_box(Hs, Ws, H, W, scale, rng if train and cfg.crop_position == "random" else None)
        d = self._draft_factor(clip, (Hs, Ws), (ch, cw), (H, W))
        if d > 1:  # snap the crop to the reduced pixel grid so that the intrinsics stay exact
            top, left, ch, cw = top // d * d, left // d * d, ch // d * d, cw // d * d
        box = (top, left, ch, cw)
        if deferred:  # (U,ch/d,cw/d,3) uint8: only the crop leaves the worker; it is resized on the device
            source_images = self._decode_crop(clip, uniq.tolist(), d, (top // d, left // d, ch // d, cw // d))
        else:
            frames = self._decode(clip, uniq.tolist(), d)  # (U,3,Hs/d,Ws/d) uint8, channels-last memory
            crop = frames[:, :, top // d : (top + ch) // d, left // d : (left + cw) // d]
            resized = tnf.interpolate(crop, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
            if out is None:
                out = BatchBuffers(1, len(idx), H, W).slot(0)

        # 2. Cameras: crop intrinsics, canonical frame (first input = identity), metric copies
        # (float64 numpy, as `crop_intrinsics`, `invert_c2w` and `canonicalize` compute them: a few 4×4 matrices,
        # where torch's per-op overhead would cost more than the arithmetic)
        k = np.asarray(clip.fxfycxcy, np.float64)[idx]
        K = np.stack([k[:, 0] * Ws / cw, k[:, 1] * Hs / ch, (k[:, 2] * Ws - left) / cw, (k[:, 3] * Hs - top) / ch], -1)
        c2w_src = np.asarray(clip.c2w, np.float64)[idx]
        w2c_ref = np.eye(4)
        w2c_ref[:3, :3] = c2w_src[0, :3, :3].T
        w2c_ref[:3, 3] = w2c_ref[:3, :3] @ -c2w_src[0, :3, 3]
        c2w = w2c_ref @ c2w_src

        # 3. Depth and masks: crop + nearest resize of the used frames (worker: one gather of source pixels per
        # frame; device: the crop only)
        n = cfg.num_input
        if deferred:
            pixels, has_dyn = self._deferred_pixels(clip, idx, uniq, pos, box, (H, W), source_images)
        else:
            has_dyn = self._worker_pixels(clip, idx, box, (H, W), out)

        tracks, visible = self._tracks(clip, idx, w2c_ref, rng)

        # 4. Scene scale: normalised = stored × s; metric = stored / meta.metric_scale (device: s is computed and
        # applied in `augment_pixels`, from the resized depth)
        fallback = self._fallback_mean(clip, w2c_ref, c2w[:n], K[:n], tracks[:n], visible[:n])
        if deferred:
            s = 1.0
        else:
            s = self._scene_scale(out["depth"][:n], out["depth_valid"][:n], c2w[:n], K[:n], fallback)
        metric_c2w = c2w.copy()
        metric_c2w[:, :3, 3] /= meta.metric_scale
        c2w[:, :3, 3] *= s
        if not deferred and clip.depth is not None:
            depth, valid = out["depth"].reshape(len(idx), -1), out["depth_valid"].reshape(len(idx), -1)
            _zero_invalid(depth, valid, self._scratch.get("u32", depth.shape, np.uint32))
            if s != 1.0:
                np.multiply(depth, s, out=depth)
        tracks *= s

        # 5. Horizontal flip: mirror the scene about the first camera's yz-plane
        flipped = bool(train and cfg.flip_prob > 0 and rng.random() < cfg.flip_prob)
        if flipped:
            if not deferred:
                resized = resized.flip(-1)
                for name in ("depth", "depth_valid", "dynamic_mask"):
                    np.copyto(out[name], out[name][..., ::-1].copy())
            c2w, metric_c2w = _FLIP @ c2w @ _FLIP, _FLIP @ metric_c2w @ _FLIP
            tracks[..., 0] *= -1
            K = K.copy()
            K[:, 2] = 1.0 - K[:, 2]
        if not deferred:
            _take_frames(resized, pos, out["images"])  # each unique frame was decoded and resized once

        # 6. Timestamps over the union of the selected frames; static clips may get one constant output time
        ts = np.asarray(clip.timestamps, np.float64)[idx]
        t0, t1 = ts.min(), ts.max()
        t = (ts - t0) / (t1 - t0) if t1 > t0 else np.zeros_like(ts)
        if train and is_static and rng.random() < cfg.static_constant_time_prob:
            t[cfg.num_input :] = rng.random()

        sample = {
            "c2w": torch.from_numpy(c2w.astype(np.float32)),
            "metric_c2w": torch.from_numpy(metric_c2w.astype(np.float32)),
            "fxfycxcy": torch.from_numpy(K.astype(np.float32)),
            "timestamps": torch.from_numpy(t.astype(np.float32)),
            "tracks_world": torch.from_numpy(tracks.astype(np.float32)),
            "tracks_visible": torch.from_numpy(visible),
            "has_dynamic_mask": has_dyn,
            "metric_scale": meta.metric_scale * s,
            "depth_weight": meta.depth_weight if source.depth_weight is None else source.depth_weight,
            "motion_weight": meta.motion_weight if source.motion_weight is None else source.motion_weight,
            "is_static": bool(is_static),
            "key": f"{meta.dataset}/{clip.key}",
            "dataset": meta.dataset,
            "crop": box,  # diagnostics (not collated): source crop, frames, flip
            "frame_indices": idx,
            "flipped": flipped,
        }
        if deferred:
            pixels["flip"], pixels["scale_norm"] = flipped, cfg.scale_norm
            pixels["fallback_mean"] = math.nan if fallback is None else fallback
            sample["pixels"] = pixels
        else:
            sample.update(
                images=out["images"].permute(0, 3, 1, 2),
                depth=torch.from_numpy(out["depth"]),
                depth_valid=torch.from_numpy(out["depth_valid"]),
                dynamic_mask=torch.from_numpy(out["dynamic_mask"]),
            )
        return sample

    def _worker_pixels(
        self, clip: Clip, idx: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int], out: dict[str, Any]
    ) -> bool:
        """Depth (not yet zeroed where invalid), depth_valid and dynamic_mask of the frames `idx`, cropped to `box`
        and nearest-resized to `out_hw`, written into the `BatchBuffers.slot` `out`; returns has_dynamic_mask."""
        top, left, ch, cw = box
        H, W = out_hw
        scratch = self._scratch
        lin = _crop_resize_index(clip.meta.width, top, left, ch, cw, H, W)
        depth, valid, dyn = out["depth"].reshape(len(idx), -1), out["depth_valid"].reshape(len(idx), -1), None
        if clip.depth is not None:
            if clip.depth.dtype == np.float32:
                _gather(clip.depth, idx, lin, depth)
            else:  # float16 (converters) or float64: gathered as is, converted by torch (vectorised float16)
                depth[:] = torch.from_numpy(_gather(clip.depth, idx, lin, None)).float().numpy()
            _positive_finite(depth, valid, scratch.get("u32", depth.shape, np.uint32))
            masks = []
            if clip.depth_valid is not None:
                masks.append(clip.depth_valid)
            if clip.dynamic_mask is not None:
                masks.append(clip.dynamic_mask)
                dyn = out["dynamic_mask"].reshape(len(idx), -1)
            if len(masks) == 2:  # both masks in one gather of 2-bit codes
                code = _gather_codes(
                    masks[0],
                    masks[1],
                    idx,
                    lin,
                    scratch.get("code", depth.shape, np.uint8),
                    scratch.get("src", masks[0].shape[1:], np.uint8),
                )
                valid &= np.bitwise_and(code, 1, out=scratch.get("tmp", depth.shape, np.uint8)).view(bool)
                np.right_shift(code, 1, out=dyn.view(np.uint8))
            elif clip.depth_valid is not None:
                valid &= _gather(clip.depth_valid, idx, lin, scratch.get("mask", depth.shape, bool))
            elif dyn is not None:
                _gather(clip.dynamic_mask, idx, lin, dyn)
        else:
            depth.fill(0.0)
            valid.fill(False)
            if clip.dynamic_mask is not None:
                dyn = _gather(clip.dynamic_mask, idx, lin, out["dynamic_mask"].reshape(len(idx), -1))
        if dyn is None:
            out["dynamic_mask"].fill(False)
        return dyn is not None

    def _deferred_pixels(
        self,
        clip: Clip,
        idx: np.ndarray,
        uniq: np.ndarray,
        pos: np.ndarray,
        box: tuple[int, int, int, int],
        out_hw: tuple[int, int],
        images: torch.Tensor,
    ) -> tuple[dict[str, Any], bool]:
        """The per-pixel payload of `augment_on="device"` and its has_dynamic_mask.

        The nearest resize of depth and masks is a pair of row and column index maps (`_nearest_source_index`).
        Along an axis that shrinks, the worker keeps only the source rows (columns) that the map picks, so the
        payload is never larger than the output along it; along an axis that grows it keeps the crop, and the
        device applies the map (`rows`, `cols`). When both axes grow and the unique frames are consecutive, the
        stored frames themselves are sent (read-only views of the shard's bytes, no copy in the worker; `rows` and
        `cols` then index whole frames): the DataLoader copies them into shared memory once anyway, as it copies
        every batch of the worker path. Payload: images (U,h,w,3) uint8 (the decoded crop); depth (U,h',w')
        float16/32 as stored, depth_valid and dynamic_mask (U,h',w') bool, each None when the clip has none;
        frame_index (F,) int64 (frame f of the clip is unique frame frame_index[f]); rows (H,), cols (W,) int64 into
        the h', w' axes.
        """
        top, left, ch, cw = box
        H, W = out_hw
        rows, cols = _nearest_source_index(ch, H), _nearest_source_index(cw, W)
        if ch > H:
            rsel, rinv = rows + top, np.arange(H)
        else:
            rsel, rinv = slice(top, top + ch), rows
        if cw > W:
            csel, cinv = cols + left, np.arange(W)
        else:
            csel, cinv = slice(left, left + cw), cols
        whole = ch <= H and cw <= W and uniq[-1] - uniq[0] == len(uniq) - 1
        if whole:
            rinv, cinv = rows + top, cols + left

        def select(a: np.ndarray | None) -> torch.Tensor | None:
            if a is None:
                return None
            if whole:
                with warnings.catch_warnings():  # read-only memory (the shard's bytes): only ever read
                    warnings.simplefilter("ignore", UserWarning)
                    return torch.from_numpy(a[uniq[0] : uniq[-1] + 1])
            if isinstance(rsel, slice) and isinstance(csel, slice):  # one copy of the crop
                return torch.from_numpy(a[uniq, rsel, csel])
            r = np.arange(rsel.start, rsel.stop) if isinstance(rsel, slice) else rsel
            c = np.arange(csel.start, csel.stop) if isinstance(csel, slice) else csel
            return torch.from_numpy(a[np.ix_(uniq, r, c)])

        pixels = {
            "images": images,
            "depth": select(clip.depth),
            "depth_valid": select(clip.depth_valid) if clip.depth is not None else None,
            "dynamic_mask": select(clip.dynamic_mask),
            "frame_index": torch.from_numpy(pos.astype(np.int64)),
            "rows": torch.from_numpy(rinv.astype(np.int64)),
            "cols": torch.from_numpy(cinv.astype(np.int64)),
        }
        return pixels, clip.dynamic_mask is not None

    def _tracks(
        self, clip: Clip, idx: np.ndarray, w2c_ref: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical tracks (F,N,3) float64, NaN where invisible, and visibility (F,N) of the frames `idx` (at most
        `max_tracks` of those visible in some frame, drawn at random); `w2c_ref` (4,4) maps the world to canonical."""
        if clip.tracks_world is None:
            return np.zeros((len(idx), 0, 3)), np.zeros((len(idx), 0), bool)
        tw = np.asarray(clip.tracks_world)[idx]
        tv = np.asarray(clip.tracks_visible)[idx]
        keep = np.flatnonzero(tv.any(0))
        if len(keep) > self.cfg.max_tracks:
            keep = np.sort(rng.choice(keep, self.cfg.max_tracks, replace=False))
        tracks = tw[:, keep].astype(np.float64) @ w2c_ref[:3, :3].T + w2c_ref[:3, 3]
        visible = np.ascontiguousarray(tv[:, keep])
        tracks[~visible] = np.nan
        return tracks, visible

    @staticmethod
    def _draft_factor(clip: Clip, src_hw, crop_hw, out_hw) -> int:
        """JPEG DCT-domain downscale (8, 4, 2 or 1) that still leaves the crop at least the output size."""
        if isinstance(clip.frames, bytes | bytearray) or clip.meta.frame_format != "jpg":
            return 1
        (Hs, Ws), (ch, cw), (H, W) = src_hw, crop_hw, out_hw
        for d in (8, 4, 2):
            if Hs % d == 0 and Ws % d == 0 and ch // d >= H and cw // d >= W:
                return d
        return 1

    @staticmethod
    def _decode_crop(clip: Clip, indices: list[int], d: int, crop: tuple[int, int, int, int]) -> torch.Tensor:
        """(U,h,w,3) uint8 crop (top, left, h, w in pixels of the frames decoded at 1/`d` scale) of frames
        `indices`, copied out of each decoded frame (the stacking copy, on fewer bytes)."""
        t, l, h, w = crop  # noqa: E741
        if isinstance(clip.frames, bytes | bytearray):
            return torch.from_numpy(
                np.ascontiguousarray(decode_video(bytes(clip.frames), indices)[:, t : t + h, l : l + w])
            )
        draft = None if d == 1 else (clip.meta.width // d, clip.meta.height // d)
        expect = (clip.meta.height // d, clip.meta.width // d)
        out = np.empty((len(indices), h, w, 3), np.uint8)
        for k, i in enumerate(indices):
            a = decode_image(clip.frames[i], draft)
            if a.shape[:2] != expect:
                raise ValueError(
                    f"frame {i} decoded {a.shape[:2]}, expected 1/{d} of {clip.meta.height}x{clip.meta.width}"
                )
            out[k] = a[t : t + h, l : l + w]
        return torch.from_numpy(out)

    @staticmethod
    def _decode(clip: Clip, indices: list[int], d: int) -> torch.Tensor:
        """(U,3,H/d,W/d) uint8 frames (`d` > 1 only for JPEG: decoded at reduced scale)."""
        if isinstance(clip.frames, bytes | bytearray):
            arr = decode_video(bytes(clip.frames), indices)
        else:
            draft = None if d == 1 else (clip.meta.width // d, clip.meta.height // d)
            arr = np.stack([decode_image(clip.frames[i], draft) for i in indices])
        if d > 1 and arr.shape[1:3] != (clip.meta.height // d, clip.meta.width // d):
            raise ValueError(
                f"JPEG draft decoded {arr.shape[1:3]}, expected 1/{d} of {clip.meta.height}x{clip.meta.width}"
            )
        return torch.from_numpy(arr).permute(0, 3, 1, 2)

    def _scene_scale(self, depth, valid, c2w, K, fallback: float | None) -> float:
        """Factor s with normalised = stored × s (1 when nothing gives a scale).

        depth, valid: (F_in,H,W) numpy output-frame depth (not yet zeroed where invalid) and validity; c2w (F_in,4,4),
        K (F_in,4) float64 numpy arrays; `fallback`: the scene's mean distance from what a depth-less clip has
        (`_fallback_mean`). The depth mean is taken over a regular subsample of the output pixels
        (`scale_sample_stride`), or over every valid pixel when the subsample has fewer than `MIN_SCALE_SAMPLES` valid
        pixels (sparse depth, small frames): see `_depth_mean`. `augment_on="device"` computes the same on the device:
        `datamodules.augment.scene_scale`.
        """
        mode = self.cfg.scale_norm
        if mode == "none":
            return 1.0
        mean = _depth_mean(depth, valid, c2w, K, mode, scale_sample_stride(*depth.shape))
        return scale_from_mean(fallback if mean is None else mean)

    def _fallback_mean(self, clip: Clip, w2c_ref, c2w, K, tracks, visible) -> float | None:
        """The one rule's quantity without depth (`diff4splat.geometry.scale.fallback_mean`): the mean distance from
        the first input camera of the clip's sparse points the input frames see (in the crop), else of their visible
        tracks, else the camera heuristic; c2w (F_in,4,4), K (F_in,4) canonical, cropped; `w2c_ref` maps
        the world to canonical. With "mean_depth" the same points give their mean distance too (no z-only
        fallback)."""
        points = None
        if clip.points_world is not None:
            points = np.asarray(clip.points_world, np.float64) @ w2c_ref[:3, :3].T + w2c_ref[:3, 3]
        mean, _ = fallback_mean(c2w, K, tracks, visible, points)
        return mean


@functools.lru_cache(maxsize=256)
def _nearest_source_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output index of a 1-D nearest resize n_in → n_out, exactly as
    `tnf.interpolate(mode="nearest-exact")` computes it (floor((i + 0.5) · n_in / n_out), in its float arithmetic)."""
    t = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
    out = tnf.interpolate(t, size=(n_out, 1), mode="nearest-exact").view(n_out).numpy().astype(np.int64)
    out.flags.writeable = False
    return out


def _crop_resize_index(width: int, top: int, left: int, ch: int, cw: int, H: int, W: int) -> np.ndarray:
    """(H*W,) flat source pixel index (row-major in a frame of `width` columns) of every output pixel of the crop
    `[top:top+ch, left:left+cw]` resized to H×W by nearest-exact interpolation."""
    rows = _nearest_source_index(ch, H) + top
    cols = _nearest_source_index(cw, W) + left
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def _gather_codes(
    low: np.ndarray, high: np.ndarray, frames: np.ndarray, lin: np.ndarray, out: np.ndarray, src: np.ndarray
) -> np.ndarray:
    """`_gather` of the 2-bit codes low | high << 1 of two (F_src,Hs,Ws) bool masks (one gather instead of two)."""
    lo, hi = low.reshape(len(low), -1).view(np.uint8), high.reshape(len(high), -1).view(np.uint8)
    src = src.reshape(-1)
    for i, f in enumerate(frames.tolist()):
        np.left_shift(hi[f], 1, out=src)
        np.bitwise_or(src, lo[f], out=src)
        np.take(src, lin, out=out[i], mode="clip")
    return out


def _take_frames(x: torch.Tensor, pos: np.ndarray, out: torch.Tensor) -> None:
    """out (F,H,W,C) = x[pos] for (U,C,H,W) images: a plain copy of whole frames when x is channels-last (the
    indexing kernel is several times slower on that layout)."""
    p = torch.from_numpy(pos)
    if x.is_contiguous(memory_format=torch.channels_last):
        torch.index_select(x.permute(0, 2, 3, 1), 0, p, out=out)
    else:
        out.copy_(x.index_select(0, p).permute(0, 2, 3, 1))


class _Scratch:
    """Reusable work arrays of one transform (one per DataLoader worker), by name; reallocated when the size grows."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        n = math.prod(shape)
        a = self._arrays.get(name)
        if a is None or a.dtype != dtype or a.size < n:
            a = self._arrays[name] = np.empty(n, dtype)
        return a[:n].reshape(shape)
