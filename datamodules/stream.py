"""Streaming clips from shards: shard assignment, tar reading, clip sampling, augmentation, canonicalisation, batching.

`ClipStream` is an `IterableDataset` that yields whole batches (use it with `DataLoader(batch_size=None)`). Its
streaming half, `ShardStream`, is shared with the latent shards (`datamodules.latents.LatentStream`) and runs on
webdataset (`shard_pipeline`: `ResampledShards` / `SimpleShardList`, its tar reader, `shuffle`, `with_epoch`):

1. Shards. Each source's shard list (glob / brace pattern / list, sorted) is split over the (rank, worker) slots of
   the job: slot `rank * num_workers + worker` reads `shards[slot::num_slots]`, so no two workers of the job read the
   same shard (with fewer shards than slots, slots share shards and a warning says so). Training resamples shards
   from the slot's slice with a generator seeded by (seed, rank, worker, epoch); validation reads the slice in order,
   with the same seed every epoch, so it sees the same clips each time.
2. Samples. Tar members are grouped by key (`iter_tar`, WebDataset layout); a per-source shuffle buffer mixes clips
   of different shards (training). The source of each sample is drawn by weight (`datamodules.mix.WeightedChoice`,
   from the slot's seeded generator: webdataset's `RandomMix` draws from the process-wide `random` module).
3. Clips (`ClipTransform`, the reference's `_frame_sample` and augmentation, §8.2-8.3): F_in input frames spread
   uniformly over a random gap, F_out output frames random (or the inputs plus random frames with p=0.25), timestamps
   normalised over the union; for static datasets the output time is one random constant with p=0.5. Per batch one
   output size (random aspect, long side = resolution, multiples of `size_divisor`); per clip a crop of 77-100 % of
   the largest crop of that aspect, resized (bilinear, antialiased; nearest for depth and masks), with intrinsics
   updated by `crop_intrinsics`; optional horizontal flips mirror the scene (x → −x in the first camera's frame),
   so poses stay rotations and cx → 1 − cx. Cameras and tracks are made canonical (first input camera = identity)
   and scale-normalised (`scale_norm`; the depth mean is taken over a regular subsample of ~32k output pixels, see
   `_depth_mean`), and metric cameras are kept. Each unique frame is decoded and resized once; depth and masks are
   cropped and resized by one gather of source pixels per frame. With `augment_on="device"` the worker stops at the
   crop: the per-pixel resize, depth validity and the scene scale (from the resized depth; c2w, tracks, depth and
   metric_scale are scaled there) run batched on the training device (`datamodules.augment`), with the same random
   draws and results (the scale up to float rounding).
4. Batches: clips are written straight into the batch tensors (`datamodules.batch.BatchBuffers`); every rank yields
   exactly `batches_per_epoch` batches (split over its workers by `with_epoch`), so DDP ranks never wait for each
   other at the end of an epoch.

Corrupt data: a sample that fails to decode or validate, and a shard that fails to read, are skipped, counted
(`SkipStats`) and logged; when more than `max_skip_rate` of the samples seen (after `skip_rate_min_samples`) were
skipped, iteration raises `DataSkipRateError`.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import posixpath
import random
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as tnf
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from datamodules.augment import MIN_SCALE_SAMPLES, _gather, _positive_finite, _zero_invalid, scale_sample_stride
from datamodules.batch import BatchBuffers, collate
from datamodules.holdout import Part, check_part, part_of
from datamodules.mix import WeightedChoice
from datamodules.spec import Clip, decode_image, decode_sample, decode_video
from diff4splat.geometry.scale import fallback_mean, scale_from_mean

log = logging.getLogger(__name__)

_LOADED_ARRAYS = ("depth", "depth_valid", "tracks_world", "tracks_visible", "dynamic_mask", "points_world")


# What a corrupt or malformed sample raises while it is decoded and checked: schema errors (SpecError and
# LatentSpecError are ValueErrors), unreadable bytes (numpy, PIL, json, zlib, tar) and missing members. Anything else
# (TypeError, AttributeError, NameError, ...) is a bug in the code and is not counted as bad data.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, KeyError, zlib.error, tarfile.TarError)


class DataSkipRateError(RuntimeError):
    """Too many corrupt samples: training stops instead of silently learning from a broken data set."""


@dataclass
class SourceConfig:
    """One dataset in a mixture (`conf/data/<dataset>.yaml`)."""

    name: str
    shards: str | list[str]  # glob ("…/train-*.tar"), brace pattern ("…/train-{000000..000009}.tar") or a list
    weight: float = 1.0  # sampling weight in a mixture (normalised over the sources)
    val_shards: str | list[str] | None = None  # shards of the validation split (None: not validated)
    min_gap: int | None = None  # frames spanned by the inputs, at least (None: num_input)
    max_gap: int = 34  # ... at most (the reference's max_bounded_gap)
    is_static: bool | None = None  # None: from each clip's meta
    depth_weight: float | None = None  # None: from each clip's meta
    motion_weight: float | None = None


@dataclass
class ClipSamplingConfig:
    """Frame selection, augmentation and normalisation of clips (reference §8.1-8.3 defaults)."""

    num_input: int = 5
    num_output: int = 8
    resolution: int = 224  # long side of the output frames
    size_divisor: int = 14  # both sides are floored to a multiple of this
    random_aspect: bool = True  # per-batch aspect ratio (W/H) drawn log-uniformly from aspect_range
    aspect_range: tuple[float, float] = (0.5, 2.0)
    aspect: float = 1.0  # fixed aspect (W/H) when random_aspect is False, and always for validation
    crop_scale: tuple[float, float] = (0.77, 1.0)  # crop side / largest crop of the output aspect
    crop_position: Literal["center", "random"] = "center"
    flip_prob: float = 0.0
    include_input_prob: float = 0.25
    eval_outputs: Literal["uniform", "held_out"] = "uniform"  # evaluation outputs: reference-uniform or novel only
    static_constant_time_prob: float = 0.5
    scale_norm: Literal["mean_xyz", "mean_depth", "none"] = "mean_xyz"
    max_tracks: int = 1024
    # where the per-pixel crop/resize of images, depth and masks (and depth validity) runs: "worker" = in the
    # DataLoader workers (batches leave them in the contract); "device" = batched on the training device in the
    # DataModule's `on_after_batch_transfer` (`datamodules.augment`): workers send the decoded, cropped source
    # pixels and crop geometry, and batches satisfy the contract after `finish_batch`. See `datamodules.augment`.
    augment_on: Literal["worker", "device"] = "worker"
    # the reference's window filters (§8.2, training only): a window is redrawn when one of its frames has less than
    # this share of valid depth pixels (clips with depth), or when two consecutive input cameras turn by more than
    # max_input_rotation degrees; after window_attempts draws the clip is skipped (counted). 0 / 180 switch them off.
    min_valid_depth_ratio: float = 0.01
    max_input_rotation: float = 45.0
    window_attempts: int = 10

    def __post_init__(self) -> None:
        if self.augment_on not in ("worker", "device"):
            raise ValueError(f"sampling.augment_on: expected 'worker' or 'device', got {self.augment_on!r}")


@dataclass
class SkipStats:
    """Per-worker counters of good and skipped samples."""

    good: int = 0
    skipped: int = 0  # samples that failed to decode/validate/transform (incl. partial ones of broken shards)
    shard_errors: int = 0  # shards that failed to open or read to the end
    reasons: list[str] = field(default_factory=list)  # the first few messages, for reports
    # frame windows redrawn by the reference's filters (`ClipSamplingConfig.min_valid_depth_ratio`,
    # `max_input_rotation`), by reason: "valid_depth", "rotation"
    rejected_windows: dict[str, int] = field(default_factory=lambda: {"valid_depth": 0, "rotation": 0})

    @property
    def seen(self) -> int:
        return self.good + self.skipped

    def rate(self) -> float:
        return self.skipped / max(1, self.seen)


# ------------------------------------------------------------------------------------------------------ shards


def expand_shards(spec: str | list[str] | None) -> list[str]:
    """Sorted shard paths of a glob, a brace pattern (`{000..009}`), a comma-free list, or a list of those."""
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [spec]
    out: list[str] = []
    for s in spec:
        if "{" in s and ".." in s:
            import braceexpand

            out.extend(p for pat in braceexpand.braceexpand(s) for p in (glob.glob(pat) or [pat]))
        elif any(c in s for c in "*?["):
            out.extend(glob.glob(s))
        else:
            out.append(s)
    return sorted(set(out))


def slot_shards(urls: list[str], slot: int, num_slots: int) -> list[str]:
    """The shards of one (rank, worker) slot: disjoint across slots when there are at least as many shards."""
    if not urls:
        return []
    if len(urls) >= num_slots:
        return urls[slot::num_slots]
    return [urls[slot % len(urls)]]


def iter_tar(url: str, stats: SkipStats) -> Iterator[dict[str, Any]]:
    """Samples ({'__key__', '__url__', suffix: bytes}) of one tar shard, grouped by key in member order.

    The members come from webdataset's tar reader (`tar_file_iterator`, names normalised by `posixpath.normpath`) and
    split into key and suffix by its rule (`base_plus_ext`: the key keeps the folder part, the suffix starts at the
    first dot of the file name). A read error ends the shard: it is counted in `stats.shard_errors`, and a partially
    read sample is dropped and counted as skipped. Since the key keeps its folder part (``dir/K.c2w.npy`` has key
    ``dir/K``), a member name that points outside the shard (``../K.meta.json``, ``/abs/K.meta.json``) gives a key
    that the clip schema refuses (`datamodules.spec.KEY_PATTERN`): that sample is skipped and counted, and nothing
    takes a file name from it.
    """
    current: dict[str, Any] | None = None
    try:
        # unbuffered: tarfile's stream reader fetches its own 10 KiB records; a BufferedReader below it would copy
        # every byte once more (reading took 1.27x as long)
        with open(url, "rb", buffering=0) as stream:
            for member in tar_file_iterator(stream, rename_files=posixpath.normpath):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[suffix.lower()] = member["data"]
        if current is not None:
            yield current
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        stats.shard_errors += 1
        if current is not None:
            stats.skipped += 1
        _note(stats, f"shard {url}: {type(e).__name__}: {e}")


def _note(stats: SkipStats, message: str) -> None:
    if len(stats.reasons) < 20:
        stats.reasons.append(message)
    n = stats.skipped + stats.shard_errors
    if n <= 10 or n % 100 == 0:
        log.warning("data: skipped (%d samples, %d shards so far): %s", stats.skipped, stats.shard_errors, message)


# ------------------------------------------------------------------------------------------------------ clips


def sample_frames(
    rng: np.random.Generator,
    num_frames: int,
    num_input: int,
    num_output: int,
    min_gap: int,
    max_gap: int,
    train: bool,
    include_input_prob: float = 0.25,
    eval_outputs: str = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """Input and output frame indices of one clip (reference `_frame_sample`).

    Inputs: uniform over a span of `gap` ∈ [min_gap, max_gap] frames (clamped to the clip) at a random start.
    Outputs (sorted): with p=`include_input_prob` the inputs plus random frames of the span (or a random subset of the
    inputs when F_out ≤ F_in), else F_out random frames of the span (without replacement when the span allows).
    Evaluation: the largest gap from frame 0 and uniform outputs (``eval_outputs="uniform"``, the reference), or
    outputs spread over the frames that are not inputs (``"held_out"``: every output is a novel view and time).
    Returns (F_in,), (F_out,) int arrays.
    """
    hi = min(max_gap, num_frames)
    lo = min(max(min_gap, 1), hi)
    if train:
        gap = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, num_frames - gap + 1))
    else:
        gap, start = hi, 0
    inputs = np.round(np.linspace(start, start + gap - 1, num_input)).astype(np.int64)
    span = np.arange(start, start + gap)
    if not train and eval_outputs == "held_out":
        rest = np.setdiff1d(span, inputs)
        if len(rest) == 0:
            raise ValueError(f"eval_outputs='held_out': a span of {gap} frames has no frame besides the inputs")
        outputs = rest[np.round(np.linspace(0, len(rest) - 1, num_output)).astype(np.int64)]
    elif not train:
        outputs = np.round(np.linspace(start, start + gap - 1, num_output)).astype(np.int64)
    elif rng.random() < include_input_prob:
        if num_output <= num_input:
            outputs = rng.choice(inputs, num_output, replace=False)
        else:
            extra = rng.choice(span, num_output - num_input, replace=num_output - num_input > gap)
            outputs = np.concatenate([inputs, extra])
    else:
        outputs = rng.choice(span, num_output, replace=num_output > gap)
    return inputs, np.sort(outputs)


def window_rejection(clip: Clip, inputs: np.ndarray, outputs: np.ndarray, cfg: ClipSamplingConfig) -> str | None:
    """Why the reference's `_frame_sample` would redraw this window (§8.2), or None: "rotation" when consecutive
    input cameras turn by more than `cfg.max_input_rotation` degrees; "valid_depth" when a frame of a clip with depth
    has less than `cfg.min_valid_depth_ratio` of its pixels valid (finite, > 0, and marked valid), counted on every
    4th row and column of the stored frame."""
    if cfg.max_input_rotation < 180.0 and len(inputs) > 1:
        R = np.asarray(clip.c2w, np.float64)[inputs, :3, :3]
        rel = np.einsum("fji,fjk->fik", R[:-1], R[1:])  # R_f^T R_{f+1}
        cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
        if float(np.degrees(np.arccos(cos)).max()) > cfg.max_input_rotation:
            return "rotation"
    if cfg.min_valid_depth_ratio > 0 and clip.depth is not None:
        frames = np.unique(np.concatenate([inputs, outputs]))
        d = np.asarray(clip.depth[frames, ::4, ::4], np.float32)
        ok = np.isfinite(d) & (d > 0)
        if clip.depth_valid is not None:
            ok &= clip.depth_valid[frames, ::4, ::4]
        if float(ok.reshape(len(frames), -1).mean(1).min()) < cfg.min_valid_depth_ratio:
            return "valid_depth"
    return None


def batch_size_hw(cfg: ClipSamplingConfig, rng: np.random.Generator | None) -> tuple[int, int]:
    """Output (H, W) of one batch: long side `resolution`, aspect random (log-uniform) or fixed."""
    if rng is not None and cfg.random_aspect:
        lo, hi = np.log(cfg.aspect_range[0]), np.log(cfg.aspect_range[1])
        aspect = float(np.exp(rng.uniform(lo, hi)))
    else:
        aspect = cfg.aspect
    d, r = cfg.size_divisor, cfg.resolution
    h, w = (r / aspect, r) if aspect >= 1 else (r, r * aspect)
    return max(d, int(h) // d * d), max(d, int(w) // d * d)


def crop_box(
    height: int, width: int, out_h: int, out_w: int, scale: float, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of a crop with the output aspect covering `scale` of the largest such crop."""
    aspect = out_w / out_h
    if width / height > aspect:
        ch, cw = height, height * aspect
    else:
        ch, cw = width / aspect, width
    ch, cw = max(1, min(height, round(ch * scale))), max(1, min(width, round(cw * scale)))
    if rng is None:
        top, left = (height - ch) // 2, (width - cw) // 2
    else:
        top, left = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
    return top, left, ch, cw


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


# ------------------------------------------------------------------------------------------------------ stream


def worker_slot(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers): explicit rank/world, else torch.distributed, else env RANK/WORLD."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank, world_size, worker, num_workers


class Slot(NamedTuple):
    """One DataLoader worker of one rank: `index` = rank · workers + worker among `count` = world · workers slots;
    `seed` = the seed sequence of its generators in this pass."""

    index: int
    count: int
    seed: tuple[int, ...]

    def rng(self, stream: int = 0) -> np.random.Generator:
        """Generator `stream` of the slot: 0 draws batches, frames and mixtures; i > 0 belongs to source i - 1."""
        return np.random.default_rng([*self.seed, stream] if stream else list(self.seed))


def _seed_given() -> int:
    """`wds.ResampledShards`'s per-worker seed term: 0, because the seed it is given already holds (seed, rank, worker,
    epoch, pass); its default would read the rank and worker from the environment instead."""
    return 0


def read_shards(
    shards: Iterable[dict[str, Any]],
    stats: SkipStats,
    what: str,
    num_shards: int,
    after_shard: Callable[[], None] | None = None,
    part: Part | None = None,
) -> Iterator[dict[str, Any]]:
    """The raw samples of a stream of webdataset shard items ({'url': path}), read by `iter_tar`; ``after_shard`` runs
    after each shard (skip-rate checks); with ``part``, only the samples of that half of the held-out data
    (`datamodules.holdout.part_of` of their key). Once every one of the slice's ``num_shards`` shards was read without
    giving a sample since the last sample, the slice has none to give: `DataSkipRateError` naming ``what``."""
    dry: set[str] = set()
    for shard in shards:
        url, produced = shard["url"], False
        for sample in iter_tar(url, stats):
            if part is not None and part_of(sample["__key__"]) != part:
                continue
            produced = True
            yield sample
        if produced:
            dry.clear()
        else:
            dry.add(url)
            if len(dry) >= num_shards:
                of = "" if part is None else f" of the {part} half of the held-out clips"
                raise DataSkipRateError(f"{what}: no readable sample{of} in {num_shards} shards {sorted(dry)[:3]}")
        if after_shard is not None:
            after_shard()


def shard_pipeline(
    urls: list[str],
    rng: np.random.Generator,
    stats: SkipStats,
    train: bool,
    shuffle_buffer: int,
    what: str,
    after_shard: Callable[[], None] | None = None,
    part: Part | None = None,
) -> wds.DataPipeline:
    """Endless raw samples of a shard slice, as a webdataset pipeline: training draws shards with replacement
    (`wds.ResampledShards`) and mixes their samples in a buffer of ``shuffle_buffer`` (`wds.shuffle`), both seeded
    from ``rng``; evaluation reads the shards in order, again and again (`wds.SimpleShardList`, `.repeat()`). Shards
    are read by `read_shards` (``what``, ``after_shard`` and ``part`` as there)."""
    shard_seed, shuffle_seed = (int(s) for s in rng.integers(0, 2**31, 2))
    if train:
        shards = wds.ResampledShards(urls, seed=shard_seed, worker_seed=_seed_given, deterministic=True)
    else:
        shards = wds.SimpleShardList(urls)
    read = functools.partial(
        read_shards, stats=stats, what=what, num_shards=len(urls), after_shard=after_shard, part=part
    )
    stages = [shards, read]
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(shuffle_seed)))
    pipeline = wds.DataPipeline(*stages)
    return pipeline if train else pipeline.repeat()


class ShardStream(IterableDataset):
    """Whole batches from tar shards (use with `DataLoader(batch_size=None)`): what `ClipStream` and
    `datamodules.latents.LatentStream` share.

    - Shards: every shard list is split over the job's (rank, worker) slots (`slot_shards`) and read through
      `shard_pipeline`: resampled and shuffled in training, in order for evaluation.
    - Seeds: a pass draws from generators seeded by (seed, rank, worker, epoch, pass) in training and by
      (seed, rank, worker) for evaluation, which therefore sees the same samples every time (`Slot`).
    - Length: each rank yields exactly `batches_per_epoch` batches per pass, split over its DataLoader workers
      (webdataset's `with_epoch` per worker), so DDP ranks never wait for each other at the end of an epoch.
    - Corrupt data: a sample that `_decode` refuses is skipped, counted (`stats`) and logged; when more than
      `max_skip_rate` of the samples seen (after `skip_rate_min_samples`) were skipped, iteration raises
      `DataSkipRateError`.

    Subclasses give `_samples` (endless (source index, raw sample) pairs, from `_shard_samples`), `_decode` (raw sample
    → item, raising on a corrupt one) and `_collate` (items → batch), and may draw per-batch state in `_start_batch`.

    Args:
        batch_size: samples per batch.
        batches_per_epoch: batches each rank yields per epoch (split over its DataLoader workers).
        train: resampled, shuffled stream; else the fixed evaluation slice.
        seed: base seed; the generators use (seed, rank, worker, epoch, pass).
        shuffle_buffer: raw samples buffered per shard list (train).
        max_skip_rate: stop with `DataSkipRateError` when more than this fraction of samples was skipped ...
        skip_rate_min_samples: ... once this many samples were seen.
        rank, world_size: override the detected distributed rank (tests, custom launchers).
        part: evaluation only: read the clips of this half of the held-out shards (`datamodules.holdout`: "val" or
            "test"); None reads them all.
    """

    what = "data"  # names the stream in errors and logs

    def __init__(
        self,
        batch_size: int,
        batches_per_epoch: int,
        train: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 64,
        max_skip_rate: float = 0.05,
        skip_rate_min_samples: int = 50,
        rank: int | None = None,
        world_size: int | None = None,
        part: Part | None = None,
    ):
        super().__init__()
        if part is not None and train:
            raise ValueError("ShardStream: `part` selects held-out clips; a training stream reads all of its shards")
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.max_skip_rate, self.skip_rate_min_samples = max_skip_rate, skip_rate_min_samples
        self.rank, self.world_size = rank, world_size
        self.part = None if part is None else check_part(part)
        self.epoch = 0  # set by the DataModule/loader before each epoch (workers get a copy)
        self._iterations = 0  # advances per pass inside persistent workers
        self.stats = SkipStats()  # of the latest pass in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self, worker: int, num_workers: int) -> int:
        """Batches yielded by one worker: the rank's total split as evenly as possible."""
        n = self.batches_per_epoch
        return n // num_workers + (1 if worker < n % num_workers else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = worker_slot(self.rank, self.world_size)
        seed = (self.seed, rank, worker, self.epoch, self._iterations) if self.train else (self.seed, rank, worker)
        self._iterations += 1
        slot = Slot(rank * num_workers + worker, world * num_workers, seed)
        self.stats = stats = SkipStats()
        n = self.num_batches(worker, num_workers)
        if n == 0:  # with_epoch(0) would not stop
            return iter(())
        rng = slot.rng()
        pipeline = wds.DataPipeline(
            functools.partial(self._samples, slot, rng, stats),
            functools.partial(self._batches, rng=rng, stats=stats),
        )
        return iter(pipeline.with_epoch(n))

    def _shard_samples(
        self, urls: list[str], slot: Slot, rng: np.random.Generator, stats: SkipStats, what: str
    ) -> wds.DataPipeline:
        """Endless raw samples of the slot's share of ``urls`` (`shard_pipeline`)."""
        if len(urls) < slot.count and self.train:
            log.warning("%s: %d shards for %d (rank, worker) slots: slots share shards", what, len(urls), slot.count)
        after_shard = functools.partial(self._check_rate, stats)
        shards = slot_shards(urls, slot.index, slot.count)
        return shard_pipeline(shards, rng, stats, self.train, self.shuffle_buffer, what, after_shard, self.part)

    def _batches(
        self, samples: Iterator[tuple[int, dict[str, Any]]], rng: np.random.Generator, stats: SkipStats
    ) -> Iterator[dict[str, Any]]:
        """Endless batches of `batch_size` decoded samples (the webdataset stage after `_samples`)."""
        while True:
            state = self._start_batch(rng)
            items: list[Any] = []
            while len(items) < self.batch_size:
                source, raw = next(samples)
                try:
                    items.append(self._decode(raw, source, rng, state, len(items)))
                    stats.good += 1
                except DATA_ERRORS as e:  # a corrupt sample: skip, count, go on (a bug in the code propagates)
                    stats.skipped += 1
                    _note(
                        stats,
                        f"{self._source_name(source)} sample {raw.get('__key__')!r} ({raw.get('__url__')}): "
                        f"{type(e).__name__}: {e}",
                    )
                self._check_rate(stats)
            yield self._collate(items, state, stats)

    def _check_rate(self, stats: SkipStats) -> None:
        if stats.seen >= self.skip_rate_min_samples and stats.rate() > self.max_skip_rate:
            raise DataSkipRateError(
                f"{self.what}: skipped {stats.skipped} of {stats.seen} samples ({stats.rate():.1%} > max_skip_rate "
                f"{self.max_skip_rate:.1%}) and {stats.shard_errors} shards; first reasons: {stats.reasons[:5]}"
            )

    def _samples(self, slot: Slot, rng: np.random.Generator, stats: SkipStats) -> Iterator[tuple[int, dict[str, Any]]]:
        raise NotImplementedError

    def _start_batch(self, rng: np.random.Generator) -> Any:
        return None

    def _decode(self, raw: dict[str, Any], source: int, rng: np.random.Generator, state: Any, index: int) -> Any:
        raise NotImplementedError

    def _collate(self, items: list[Any], state: Any, stats: SkipStats) -> dict[str, Any]:
        raise NotImplementedError

    def _source_name(self, source: int) -> str:
        return self.what


class ClipStream(ShardStream):
    """Batches of clips from weighted per-dataset sources (see the module docstring and `ShardStream`).

    Args:
        sources: the datasets; each reads `shards` (train) or `val_shards` (train=False).
        sampling: frame selection, augmentation and normalisation.
        batch_size: clips per batch.
        batches_per_epoch: batches each rank yields per epoch (split over its DataLoader workers).
        sample_sources: optional `{name: callable(rng) -> raw sample}` replacing shard reading (in-process synthetic
            data; see `datamodules.synthetic.SyntheticSource`).
        **stream: the `ShardStream` settings (train: resampled, shuffled, augmented stream, else the fixed validation
            slice; seed, shuffle_buffer per source, max_skip_rate, skip_rate_min_samples, rank, world_size, part).
    """

    what = "clip data"

    def __init__(
        self,
        sources: list[SourceConfig],
        sampling: ClipSamplingConfig,
        batch_size: int,
        batches_per_epoch: int,
        sample_sources: dict[str, Callable[[np.random.Generator], dict[str, Any]]] | None = None,
        **stream: Any,
    ):
        super().__init__(batch_size, batches_per_epoch, **stream)
        if not sources:
            raise ValueError("ClipStream needs at least one source")
        self.sources, self.sampling = sources, sampling
        self.sample_sources = sample_sources or {}
        self.urls = {}
        for s in sources:
            if s.name in self.sample_sources:
                continue
            urls = expand_shards(s.shards if self.train else s.val_shards)
            if not urls:
                raise FileNotFoundError(
                    f"source {s.name!r}: no shards match {s.shards if self.train else s.val_shards!r}"
                )
            self.urls[s.name] = urls
        self.transform = ClipTransform(sampling, train=self.train)

    def _samples(self, slot: Slot, rng: np.random.Generator, stats: SkipStats) -> Iterator[tuple[int, dict[str, Any]]]:
        """Raw samples of the sources, each drawn from a source chosen by weight (`WeightedChoice`)."""
        self.transform.rejected_windows = stats.rejected_windows
        iters = []
        for i, s in enumerate(self.sources):
            if s.name in self.sample_sources:
                iters.append(_generated(self.sample_sources[s.name], slot.rng(i + 1)))
            else:
                shards = self._shard_samples(self.urls[s.name], slot, slot.rng(i + 1), stats, f"source {s.name!r}")
                iters.append(iter(shards))
        choose = WeightedChoice([s.weight for s in self.sources], rng)
        while True:
            i = choose() if len(iters) > 1 else 0
            yield i, next(iters[i])

    def _start_batch(self, rng: np.random.Generator) -> tuple[tuple[int, int], BatchBuffers | None]:
        """The batch's output size and, with `augment_on="worker"`, the tensors its clips are written into in place
        (with "device" the clips are per-clip payloads)."""
        out_hw = batch_size_hw(self.sampling, rng if self.train else None)
        if self.sampling.augment_on != "worker":
            return out_hw, None
        return out_hw, BatchBuffers(self.batch_size, self.sampling.num_input + self.sampling.num_output, *out_hw)

    def _decode(
        self,
        raw: dict[str, Any],
        source: int,
        rng: np.random.Generator,
        state: tuple[tuple[int, int], BatchBuffers | None],
        index: int,
    ) -> dict[str, Any]:
        out_hw, buffers = state
        out = None if buffers is None else buffers.slot(index)
        return self.transform(raw, rng, out_hw, self.sources[source], out)

    def _collate(
        self, items: list[Any], state: tuple[tuple[int, int], BatchBuffers | None], stats: SkipStats
    ) -> dict[str, Any]:
        return collate(items, self.sampling.num_input, num_skipped=stats.skipped, buffers=state[1])

    def _source_name(self, source: int) -> str:
        return self.sources[source].name


def _generated(fn: Callable[[np.random.Generator], dict[str, Any]], rng: np.random.Generator) -> Iterator[dict]:
    while True:
        yield fn(rng)


def source_from_dict(name: str, d: dict[str, Any]) -> SourceConfig:
    """`SourceConfig` from a config mapping (unknown keys fail); `name` defaults to the mapping key."""
    d = dict(d)
    d.setdefault("name", name)
    return SourceConfig(**d)
