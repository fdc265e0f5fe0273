"""Clip sampling: the per-dataset and sampling configs (`SourceConfig`, `ClipSamplingConfig`) and the random draws
that choose what of a clip a batch uses: its frame window (`sample_frames`, redrawn while the reference's filters
give a reason, `window_rejection`), the batch's output size (`batch_size_hw`) and the clip's crop box (`crop_box`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from datamodules.spec import Clip


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


def source_from_dict(name: str, d: dict[str, Any]) -> SourceConfig:
    """`SourceConfig` from a config mapping (unknown keys fail); `name` defaults to the mapping key."""
    d = dict(d)
    d.setdefault("name", name)
    return SourceConfig(**d)


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
