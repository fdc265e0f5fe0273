"""Evaluating an LRDM on held-out clips of a shard set (see `diff4splat.pipelines.evaluation`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.batch import collate, finish_batch
from datamodules.sampling import ClipSamplingConfig, SourceConfig, batch_size_hw
from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import Clip, decode_sample
from datamodules.transform import ClipTransform
from diff4splat.cli import InputError
from diff4splat.losses.lpips import LPIPS
from diff4splat.losses.motion import track_motion
from diff4splat.metrics import depth_metrics, image_metrics, nearest_input_frames, track_metrics
from diff4splat.models.lrdm import LRDM, LRDMOutput, gaussians_at_all_times
from diff4splat.pipelines.evaluation.results import Results
from diff4splat.pipelines.reconstruction import size_multiple
from diff4splat.rendering import render

log = logging.getLogger(__name__)


@dataclass
class ClipEvalConfig:
    """What each clip is turned into (see the module docstring)."""

    num_input: int = 5
    num_output: int = 8
    resolution: int = 224  # long side of the evaluated frames
    max_gap: int = 34  # the inputs and outputs come from the first max_gap frames (the reference's bound)
    eval_outputs: Literal["uniform", "held_out"] = "held_out"
    depth_align: Literal["none", "median"] = "none"
    prune_threshold: float | None = None  # None: the model's
    max_clips: int = 0  # 0 = every clip of the shards
    backend: str = "auto"


def iter_clips(urls: Sequence[str], stats: SkipStats) -> Iterator[tuple[str, Clip | Exception]]:
    """(key, clip) of every sample of the shards in order; a sample that does not decode gives (key, the error)."""
    for url in urls:
        for raw in iter_tar(url, stats):
            key = f"{raw.get('__key__')} ({url})"
            try:
                yield key, decode_sample(raw)
            except Exception as e:  # noqa: BLE001 - any corrupt sample is reported and skipped
                yield key, e


def clip_batch(clip: Clip, transform: ClipTransform, max_gap: int) -> tuple[dict[str, Any], np.ndarray]:
    """The evaluation batch (B = 1, the batch contract) of one clip at its own aspect, and its frame indices."""
    meta = clip.meta
    sampling = dataclasses.replace(transform.cfg, random_aspect=False, aspect=meta.width / meta.height)
    out_hw = batch_size_hw(sampling, None)
    source = SourceConfig(name=meta.dataset, shards=[], max_gap=max_gap)
    sample = transform.transform(clip, np.random.default_rng(0), out_hw, source)
    return finish_batch(collate([sample], transform.cfg.num_input)), sample["frame_indices"]


@torch.no_grad()
def predict_outputs(
    model: LRDM, batch: dict[str, Any], vae: Any = None, prune_threshold: float | None = None, backend: str = "auto"
) -> tuple[LRDMOutput, Tensor, Tensor]:
    """Gaussians from the batch's inputs, rendered at each output camera and time: (output, rgb [B, F_out, 3, H, W],
    depth [B, F_out, H, W]). Gaussians with opacity <= the pruning threshold are left out of the renders."""
    fi = int(batch["num_input"])
    images = batch["images"]
    h, w = images.shape[-2:]
    latents = vae.encode(images[:, :fi]) if model.config.encoder == "latent" else None
    out = model(
        batch["c2w"][:, :fi],
        batch["fxfycxcy"][:, :fi],
        batch["timestamps"][:, :fi],
        batch["timestamps"][:, fi:],
        images=None if latents is not None else images[:, :fi],
        latents=latents,
        image_size=(h, w),
    )
    threshold = model.config.prune_threshold if prune_threshold is None else prune_threshold
    g = gaussians_at_all_times(out.gaussians)  # batch [B, F_out]
    g = dataclasses.replace(g, opacities=g.opacities * (g.opacities > threshold))
    r = render(g, batch["c2w"][:, fi:, None], batch["fxfycxcy"][:, fi:, None], h, w, backend=backend)
    return out, r.rgb[:, :, 0].clamp(0, 1), r.depth[:, :, 0, 0]


def _tracks(out: LRDMOutput, batch: dict[str, Any]) -> dict[str, float]:
    """EPE of predicted track positions (``epe3d``, ``epe3d_within_0.10``) and displacements (``epe3d_motion``)."""
    fi, f = int(batch["num_input"]), batch["c2w"].shape[1]
    h, w = batch["images"].shape[-2:]
    dg = out.gaussians
    query = torch.arange(fi, f, device=dg.device)
    args = (
        out.grid,
        out.frame_indices,
        query,
        batch["tracks_world"],
        batch["tracks_visible"],
        batch["c2w"],
        batch["fxfycxcy"],
        h,
        w,
    )
    pred_pos, gt_disp, valid = track_motion(dg.canonical.means[:, None] + dg.delta_means, *args)
    pred_disp, _, _ = track_motion(dg.delta_means, *args)
    src = torch.nan_to_num(batch["tracks_world"][:, out.frame_indices]).flatten(1, 2)[:, None]  # [B, 1, F_g·M, 3]
    pos = track_metrics(pred_pos, src + gt_disp, valid)
    motion = track_metrics(pred_disp, gt_disp, valid)
    return {"epe3d": pos["epe"], "epe3d_within_0.10": pos["within_0.10"], "epe3d_motion": motion["epe"]}


def evaluate_clip(
    model: LRDM, batch: dict[str, Any], frames: np.ndarray, lpips: LPIPS | None, cfg: ClipEvalConfig, vae: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One clip's row (`CLIP_COLUMNS`) and its per-view rows (`VIEW_COLUMNS`)."""
    fi = int(batch["num_input"])
    out, rgb, depth = predict_outputs(model, batch, vae, cfg.prune_threshold, cfg.backend)
    target = batch["images"][:, fi:]
    m = image_metrics(rgb[0], target[0], lpips)
    nearest = image_metrics(nearest_input_frames(batch)[0], target[0])["psnr"]
    key = batch["key"][0]
    row: dict[str, Any] = {
        "clip": key,
        "dataset": batch["dataset"][0],
        "views": rgb.shape[1],
        "psnr_nearest_input": float(nearest.mean()),
    }
    row.update({k: float(v.mean()) for k, v in m.items()})
    d = depth_metrics(depth, batch["depth"][:, fi:], batch["depth_valid"][:, fi:], cfg.depth_align)
    row["depth_abs_rel"], row["depth_delta1"] = d["abs_rel"], d["delta1"]
    if bool(batch["tracks_visible"].any()):
        row.update(_tracks(out, batch))
    times = batch["timestamps"][0]
    gaps = (times[fi:, None] - times[None, :fi]).abs().min(-1).values
    views = []
    for v in range(rgb.shape[1]):
        views.append(
            {
                "clip": key,
                "view": v,
                "frame": int(frames[fi + v]),
                "time": float(times[fi + v]),
                "time_gap": float(gaps[v]),
                **{k: float(x[v]) for k, x in m.items()},
            }
        )
    return row, views


def evaluate_clips(
    model: LRDM,
    shards: Sequence[str],
    cfg: ClipEvalConfig,
    lpips: LPIPS | None = None,
    vae: Any = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Results:
    """Every clip of ``shards`` (paths, in order; at most ``cfg.max_clips``): see the module docstring. A clip
    that cannot be evaluated (corrupt, too few frames) is skipped and listed in ``Results.skipped``; no clip at all
    is an error."""
    if not shards:
        raise InputError("evaluate: no shards given")
    for s in shards:
        if not Path(s).is_file():
            raise InputError(f"{s}: no such shard file")
    sampling = ClipSamplingConfig(
        num_input=cfg.num_input,
        num_output=cfg.num_output,
        resolution=cfg.resolution,
        size_divisor=size_multiple(model),
        random_aspect=False,
        crop_scale=(1.0, 1.0),
        eval_outputs=cfg.eval_outputs,
    )
    transform = ClipTransform(sampling, train=False)
    stats = SkipStats()
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    skipped: list[str] = []
    model = model.to(device).eval()
    if vae is not None:
        vae = vae.to(device)
    for key, clip in iter_clips(shards, stats):
        if cfg.max_clips and len(rows) >= cfg.max_clips:
            break
        try:
            if isinstance(clip, Exception):
                raise clip
            batch, frames = clip_batch(clip, transform, cfg.max_gap)
        except Exception as e:  # noqa: BLE001 - reported per clip
            skipped.append(f"{key}: {type(e).__name__}: {e}")
            log.warning("evaluate: skipped %s", skipped[-1])
            continue
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        row, views = evaluate_clip(model, batch, frames, lpips, cfg, vae)
        rows.append(row)
        details.extend(views)
        if progress is not None:
            progress(f"{len(rows)}: {row['clip']} psnr {row['psnr']:.2f}")
    skipped += [f"shard error: {r}" for r in stats.reasons if r.startswith("shard ")]
    if not rows:
        raise InputError(f"evaluate: no clip of {len(shards)} shards could be evaluated; first problems: {skipped[:3]}")
    return Results(
        "clips", rows, details, f"{len(shards)} shards ({shards[0]}{' ...' if len(shards) > 1 else ''})", skipped
    )
