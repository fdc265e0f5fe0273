"""The batch contract: what every training/validation batch of `datamodules.datamodule.ClipDataModule` holds.

B clips per batch, F = F_in + F_out frames per clip (inputs first, then outputs; an output frame may repeat an input
frame), H×W pixels (one size per batch), N tracks (the largest count in the batch; shorter ones NaN-padded).

| key              | type / shape              | meaning                                                                  |
|------------------|---------------------------|--------------------------------------------------------------------------|
| images           | float32 (B,F,3,H,W)       | RGB in [0,1] (uint8 inside DataLoader workers; see below)               |
| num_input        | int                       | F_in; frames [:F_in] are the inputs, [F_in:] the outputs                 |
| c2w              | float32 (B,F,4,4)         | OpenCV camera-to-world, canonical (first input = identity), normalised  |
| metric_c2w       | float32 (B,F,4,4)         | the same cameras, translations / meta.metric_scale: metres only where   |
|                  |                           | the clip's scale_source is metric(_estimated) (`geometry.scale`)         |
| fxfycxcy         | float32 (B,F,4)           | normalised intrinsics (fx/W, fy/H, cx/W, cy/H) of the cropped frames    |
| timestamps       | float32 (B,F)             | in [0,1] over the union of the clip's input and output frames           |
| depth            | float32 (B,F,H,W)         | z-depth in normalised units, 0 where absent                             |
| depth_valid      | bool (B,F,H,W)            | True where depth is ground truth                                        |
| tracks_world     | float32 (B,F,N,3)         | canonical, normalised world points; NaN where not visible or padded     |
| tracks_visible   | bool (B,F,N)              | visibility (N = 1 and all False when no clip has tracks)                |
| dynamic_mask     | bool (B,F,H,W)            | True on moving objects (all False where `has_dynamic_mask` is False)    |
| has_dynamic_mask | bool (B,)                 | whether the clip's dataset provides dynamic masks                        |
| metric_scale     | float32 (B,)              | normalised = metric × metric_scale (metric_c2w t = c2w t / metric_scale) |
| depth_weight     | float32 (B,)              | per-dataset depth-loss weight (reference §8.4)                          |
| motion_weight    | float32 (B,)              | per-dataset motion-loss weight                                          |
| is_static        | bool (B,)                 | static scene (no deformation supervision; constant output time allowed) |
| key              | list[str] (B)             | sample ids (`<dataset>/<clip key>`), for logs and NaN reports           |
| dataset          | list[str] (B)             | dataset name per clip                                                    |
| num_skipped      | int                       | corrupt samples skipped so far by the worker that made this batch       |

Scene scale: the reference's `norm_xyz` by default, i.e. the mean distance of the valid input-frame depth points from
the first input camera is 1 (`ClipSamplingConfig.scale_norm="mean_xyz"`; "mean_depth" makes the mean z-depth 1); a
clip without depth gets the same quantity from its sparse points, tracks or cameras (`diff4splat.geometry.scale`).

Images travel through DataLoader workers and pinned memory as uint8 (4× less to copy); `finish_batch` turns them
into float32 [0,1] and the DataModule applies it in `on_after_batch_transfer` (on the GPU in training), so a
LightningModule always sees the float contract above. Code that iterates a loader directly calls `finish_batch`
(or `to_float_images`, the same for every batch).

With `ClipSamplingConfig.augment_on="device"` batches leave the workers without images, depth, depth_valid and
dynamic_mask: they carry `"pixels"` (decoded crops and resampling indices, `datamodules.augment`) instead, and
`finish_batch` makes the per-pixel fields from it on the device the batch was moved to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.augment import PIXELS, augment_pixels, collate_pixels

BATCH_KEYS = (
    "images",
    "num_input",
    "c2w",
    "metric_c2w",
    "fxfycxcy",
    "timestamps",
    "depth",
    "depth_valid",
    "tracks_world",
    "tracks_visible",
    "dynamic_mask",
    "has_dynamic_mask",
    "metric_scale",
    "depth_weight",
    "motion_weight",
    "is_static",
    "key",
    "dataset",
    "num_skipped",
)


def finish_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch contract from a batch as it leaves the DataLoader, in place, on the batch's device: the deferred
    per-pixel augmentation of `augment_on="device"` batches (`datamodules.augment.augment_pixels`), and images
    uint8 → float32 in [0,1] (no-op if already float)."""
    if PIXELS in batch:
        augment_pixels(batch)
    images = batch["images"]
    if images.dtype == torch.uint8:
        batch["images"] = images.float().div_(255.0)
    return batch


to_float_images = finish_batch  # the name the worker-path code and older callers use


class BatchBuffers:
    """The per-pixel tensors of one batch, allocated once: `ClipTransform` writes clip i into `slot(i)`, so that
    collation copies nothing. Images are stored (B,F,H,W,3) and exposed as the (B,F,3,H,W) contract (channels-last
    strides, as interpolation produces them)."""

    def __init__(self, batch_size: int, frames: int, height: int, width: int):
        B, F, H, W = batch_size, frames, height, width
        self.images = torch.empty((B, F, H, W, 3), dtype=torch.uint8)
        self.depth = torch.empty((B, F, H, W), dtype=torch.float32)
        self.depth_valid = torch.empty((B, F, H, W), dtype=torch.bool)
        self.dynamic_mask = torch.empty((B, F, H, W), dtype=torch.bool)

    def slot(self, i: int) -> dict[str, Any]:
        """Clip i: images (F,H,W,3) uint8 tensor; depth (F,H,W) float32, depth_valid and dynamic_mask (F,H,W) bool
        numpy views."""
        return {
            "images": self.images[i],
            "depth": self.depth[i].numpy(),
            "depth_valid": self.depth_valid[i].numpy(),
            "dynamic_mask": self.dynamic_mask[i].numpy(),
        }

    def tensors(self, n: int) -> dict[str, torch.Tensor]:
        """The first n clips in the batch contract's shapes."""
        return {
            "images": self.images[:n].permute(0, 1, 4, 2, 3),
            "depth": self.depth[:n],
            "depth_valid": self.depth_valid[:n],
            "dynamic_mask": self.dynamic_mask[:n],
        }


def collate(
    samples: list[dict[str, Any]], num_input: int, num_skipped: int = 0, buffers: BatchBuffers | None = None
) -> dict[str, Any]:
    """Stack per-clip samples (from `datamodules.transform.ClipTransform`) into the batch contract.

    Every sample must have the same F and H×W; tracks are NaN-padded to the largest N (N = 1 when none has tracks).
    `buffers`: the `BatchBuffers` that sample i was written into (slot i): its per-pixel tensors are used as they are.
    Samples of `augment_on="device"` carry `"pixels"` instead of per-pixel fields: the batch gets `"pixels"`
    (`datamodules.augment.collate_pixels`), made into the per-pixel fields by `finish_batch`.
    """
    out: dict[str, Any] = {"num_input": num_input, "num_skipped": num_skipped}
    for name in ("c2w", "metric_c2w", "fxfycxcy", "timestamps"):
        out[name] = torch.stack([s[name] for s in samples])
    if PIXELS in samples[0]:
        out["pixels"] = collate_pixels([s["pixels"] for s in samples])
    elif buffers is not None:
        out.update(buffers.tensors(len(samples)))
    else:
        for name in ("images", "depth", "depth_valid", "dynamic_mask"):
            out[name] = torch.stack([s[name] for s in samples])
    n = max(1, max(s["tracks_world"].shape[1] for s in samples))
    B, F = len(samples), samples[0]["c2w"].shape[0]
    tracks = torch.full((B, F, n, 3), float("nan"))
    visible = torch.zeros((B, F, n), dtype=torch.bool)
    for i, s in enumerate(samples):
        k = s["tracks_world"].shape[1]
        tracks[i, :, :k] = s["tracks_world"]
        visible[i, :, :k] = s["tracks_visible"]
    out["tracks_world"], out["tracks_visible"] = tracks, visible
    for name, dtype in (
        ("metric_scale", torch.float32),
        ("depth_weight", torch.float32),
        ("motion_weight", torch.float32),
        ("is_static", torch.bool),
        ("has_dynamic_mask", torch.bool),
    ):
        out[name] = torch.tensor([s[name] for s in samples], dtype=dtype)
    out["key"] = [s["key"] for s in samples]
    out["dataset"] = [s["dataset"] for s in samples]
    return out


def check_batch(batch: dict[str, Any]) -> None:
    """Assert the batch contract (keys, shapes, dtypes, ranges); raises `ValueError` naming the key."""
    if PIXELS in batch:
        raise ValueError("batch still holds 'pixels' (augment_on='device'): call datamodules.batch.finish_batch first")
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}")
    B, F, C, H, W = batch["images"].shape
    n = batch["tracks_world"].shape[2]
    expect = {
        "images": (B, F, 3, H, W),
        "c2w": (B, F, 4, 4),
        "metric_c2w": (B, F, 4, 4),
        "fxfycxcy": (B, F, 4),
        "timestamps": (B, F),
        "depth": (B, F, H, W),
        "depth_valid": (B, F, H, W),
        "tracks_world": (B, F, n, 3),
        "tracks_visible": (B, F, n),
        "dynamic_mask": (B, F, H, W),
        "has_dynamic_mask": (B,),
        "metric_scale": (B,),
        "depth_weight": (B,),
        "motion_weight": (B,),
        "is_static": (B,),
    }
    for k, shape in expect.items():
        if tuple(batch[k].shape) != shape:
            raise ValueError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected {shape}")
    for k in ("depth_valid", "tracks_visible", "dynamic_mask", "is_static", "has_dynamic_mask"):
        if batch[k].dtype != torch.bool:
            raise ValueError(f"batch[{k!r}] must be bool, got {batch[k].dtype}")
    t = batch["timestamps"]
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError("batch['timestamps'] must lie in [0, 1]")
    if not 1 <= batch["num_input"] <= F:
        raise ValueError(f"batch['num_input'] = {batch['num_input']} not in [1, {F}]")
    if len(batch["key"]) != B or len(batch["dataset"]) != B:
        raise ValueError("batch['key'] and batch['dataset'] must have B entries")
    eye = torch.eye(4).expand(B, 4, 4)
    if not torch.allclose(batch["c2w"][:, 0].float(), eye, atol=1e-4):
        raise ValueError("batch['c2w'][:, 0] (the first input camera) must be the identity")
    tv = batch["tracks_visible"]
    if not bool(np.isfinite(batch["tracks_world"][tv].numpy()).all()):
        raise ValueError("batch['tracks_world'] must be finite where tracks_visible")
