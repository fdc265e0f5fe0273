"""Evaluation: an LRDM on held-out clips of a shard set, and generated scenes against their own videos; results
tables (markdown + CSV), a summary and plots.

**Clips** (`evaluate_clips`): each clip of the shards, in order, becomes one evaluation sample through the
deterministic evaluation view of the data pipeline (`datamodules.stream.ClipTransform(train=False)`: F_in inputs
spread over the first ``max_gap`` frames, F_out outputs, by default ``eval_outputs="held_out"`` = frames that are
not inputs, so every output is a novel view at a novel time; the whole frame at the clip's own aspect, long side
``resolution``; canonical, scale-normalised cameras). The LRDM predicts Gaussians from the inputs, deformed to each
output's time and rendered from its camera (opacities at or below the pruning threshold zeroed, as inference prunes
them). Per clip: PSNR / SSIM / LPIPS of the renders against the held-out frames (means over views), the PSNR of the
nearest input frame as a baseline (`nearest_input_frames`), depth AbsRel and δ<1.25 of the rendered depth at the
output views where the clip has ground-truth depth, and 3D track end-point errors where it has tracks: ``epe3d``
compares the position of the Gaussian of the pixel a track is seen at in an input frame, at each output time,
with the track's position then (`diff4splat.losses.motion.track_motion` pairs them); ``epe3d_motion`` compares
the displacements only (no depth error in it).

**Scenes** (`evaluate_scene`): an output folder of the generation CLI (``scene.safetensors``, ``video.mp4``,
``meta.json`` with the trajectory). Re-rendering consistency: the Gaussians rendered at each requested camera and
time against the generated frame (PSNR / SSIM / LPIPS). Temporal consistency: the warping error
(`diff4splat.metrics.warp_error`) of consecutive generated frames along the scene's own motion (where the Gaussians
seen at a pixel at time t are at time t+1: a render of their t+1 positions as colours), and the same for the
renders (a reference: what the 4D scene itself achieves).

Metric definitions: `diff4splat.metrics`. Results: `write_results`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.batch import collate, finish_batch
from datamodules.spec import Clip, decode_sample, decode_video
from datamodules.stream import ClipSamplingConfig, ClipTransform, SkipStats, SourceConfig, batch_size_hw, iter_tar
from diff4splat.cli import InputError
from diff4splat.gaussians.types import Gaussians
from diff4splat.geometry.cameras import unproject_depth
from diff4splat.losses.lpips import LPIPS
from diff4splat.losses.motion import track_motion
from diff4splat.metrics import depth_metrics, image_metrics, track_metrics, warp_error
from diff4splat.models.lrdm import LRDM, LRDMOutput, gaussians_at_all_times
from diff4splat.pipelines.outputs import SceneOutput
from diff4splat.rendering import render
from diff4splat.systems.reconstruction import nearest_input_frames

log = logging.getLogger(__name__)

CLIP_COLUMNS = (
    "clip",
    "dataset",
    "views",
    "psnr",
    "ssim",
    "lpips",
    "psnr_nearest_input",
    "depth_abs_rel",
    "depth_delta1",
    "epe3d",
    "epe3d_within_0.10",
    "epe3d_motion",
)
VIEW_COLUMNS = ("clip", "view", "frame", "time", "time_gap", "psnr", "ssim", "lpips")
SCENE_COLUMNS = (
    "scene",
    "frames",
    "gaussians",
    "psnr",
    "ssim",
    "lpips",
    "warp_error_video",
    "warp_error_render",
    "warp_coverage",
)
FRAME_COLUMNS = ("scene", "frame", "time", "psnr", "ssim", "lpips", "warp_error_video", "warp_error_render")
_DECIMALS = {"psnr": 2, "psnr_nearest_input": 2, "time": 3, "time_gap": 3, "views": 1, "frames": 1, "gaussians": 0}


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


@dataclass
class Results:
    """Rows of one evaluation: ``rows`` (one per clip or scene) and ``details`` (one per view or frame)."""

    kind: Literal["clips", "scenes"]
    rows: list[dict[str, Any]]
    details: list[dict[str, Any]]
    source: str  # what was evaluated, for the report's title
    skipped: list[str] = dataclasses.field(default_factory=list)  # clips that could not be evaluated, with reasons

    @property
    def columns(self) -> tuple[str, ...]:
        return CLIP_COLUMNS if self.kind == "clips" else SCENE_COLUMNS

    @property
    def detail_columns(self) -> tuple[str, ...]:
        return VIEW_COLUMNS if self.kind == "clips" else FRAME_COLUMNS

    def summary(self) -> dict[str, Any]:
        """Mean of every numeric column over the rows that have it, and how many rows that is."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "count": len(self.rows),
            "skipped": len(self.skipped),
            "mean": {},
            "rows_with_value": {},
        }
        for col in self.columns:
            values = [r[col] for r in self.rows if isinstance(r.get(col), float | int) and not isinstance(r[col], bool)]
            finite = [float(v) for v in values if math.isfinite(v)]
            if values:
                out["mean"][col] = float(np.mean(finite)) if finite else math.nan
                out["rows_with_value"][col] = len(finite)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------------------------------


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


def size_multiple(model: LRDM) -> int:
    """Frame sides must be multiples of this (patch size, or the latent stride)."""
    c = model.config
    return c.patch_size if c.encoder == "rgb" else c.latent_stride_s


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


# ----------------------------------------------------------------------------------------------------------------------
# Generated scenes
# ----------------------------------------------------------------------------------------------------------------------


def read_video_frames(scene: SceneOutput) -> Tensor:  # [F, 3, H, W] float in [0, 1]
    """The generated frames of a scene folder, checked against its trajectory. A video one pixel larger than the
    trajectory's height/width in a side (padding to even sizes for H.264) is cropped back."""
    if scene.video is None:
        raise InputError(f"{scene.folder}: no video.mp4 (re-rendering consistency compares the scene with it)")
    cams = scene.cameras
    assert cams is not None
    try:
        frames = decode_video(scene.video.read_bytes())
    except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
        raise InputError(f"{scene.video}: cannot decode video ({e})") from e
    if frames.shape[0] != len(cams):
        raise InputError(f"{scene.video}: {frames.shape[0]} frames, but meta.json's trajectory has {len(cams)} cameras")
    h, w = frames.shape[1:3]
    if (h - cams.height) in (0, 1) and (w - cams.width) in (0, 1):
        frames = frames[:, : cams.height, : cams.width]
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def render_path(
    scene: SceneOutput, height: int, width: int, backend: str = "auto", flow: bool = True
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Camera k at time k of the scene's trajectory: rgb [F, 3, H, W], depth [F, H, W], and with ``flow`` the
    position at time k+1 of the surface seen at each pixel of view k, [F-1, H, W, 3] (the pixel's expected-depth
    point moved by the rendered scene flow), with its coverage mask [F-1, H, W] (alpha > 0.95: pixels at edges
    blend with the background, which does not move with the scene)."""
    cams, dg = scene.cameras, scene.gaussians
    assert cams is not None
    dev = dg.device
    c2w, fx, times = cams.c2w.to(dev), cams.fxfycxcy.to(dev), cams.times.to(dev)
    rgbs, depths, points, masks = [], [], [], []
    for k in range(len(cams)):
        g = dg.at(times[k])
        r = render(g, c2w[k : k + 1], fx[k : k + 1], height, width, backend=backend)
        rgbs.append(r.rgb[0].clamp(0, 1))
        depths.append(r.depth[0, 0])
        if flow and k + 1 < len(cams):
            # scene flow: the Gaussians' displacements to time k+1, composited like colours, moves each pixel's
            # surface point (its expected depth along the pixel's ray)
            motion = Gaussians(g.means, g.quats, g.scales, g.opacities, dg.at(times[k + 1]).means - g.means)
            p = render(motion, c2w[k : k + 1], fx[k : k + 1], height, width, backend=backend)
            alpha = p.alpha[0, 0]
            surface = unproject_depth(r.depth[0, 0], c2w[k], fx[k])  # [H, W, 3]
            points.append(surface + (p.rgb[0] / alpha.clamp_min(1e-6)).permute(1, 2, 0))
            masks.append(alpha > 0.95)
    if not flow or not points:
        return torch.stack(rgbs), torch.stack(depths), None, None
    return torch.stack(rgbs), torch.stack(depths), torch.stack(points), torch.stack(masks)


def evaluate_scene(
    scene: SceneOutput, lpips: LPIPS | None = None, backend: str = "auto", occlusion_tol: float = 0.05
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One generated scene's row (`SCENE_COLUMNS`) and per-frame rows (`FRAME_COLUMNS`): see the module
    docstring. The renders are made at the video's size (normalised intrinsics do not depend on it)."""
    cams = scene.cameras
    if cams is None:
        raise InputError(
            f"{scene.folder}: meta.json has no trajectory (c2w, fxfycxcy, times, height, width); "
            "scenes are evaluated at the cameras they were generated for"
        )
    video = read_video_frames(scene).to(scene.gaussians.device)
    h, w = video.shape[-2:]
    rgb, depth, points, masks = render_path(scene, h, w, backend)
    m = image_metrics(rgb, video, lpips)
    f = len(cams)
    warp_video, warp_render, coverage = [math.nan] * f, [math.nan] * f, []
    c2w, fx = cams.c2w.to(rgb.device), cams.fxfycxcy.to(rgb.device)
    for k in range(f - 1):
        args = (points[k], masks[k], c2w[k + 1], fx[k + 1], depth[k + 1], occlusion_tol)
        warp_video[k], cov = warp_error(video[k], video[k + 1], *args)
        warp_render[k], _ = warp_error(rgb[k], rgb[k + 1], *args)
        coverage.append(cov)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    row: dict[str, Any] = {
        "scene": str(scene.folder),
        "frames": f,
        "gaussians": scene.gaussians.num_gaussians,
        **{k: float(v.mean()) for k, v in m.items()},
        "warp_error_video": mean(warp_video),
        "warp_error_render": mean(warp_render),
        "warp_coverage": mean(coverage),
    }
    frames = [
        {
            "scene": str(scene.folder),
            "frame": k,
            "time": float(cams.times[k]),
            **{n: float(v[k]) for n, v in m.items()},
            "warp_error_video": warp_video[k],
            "warp_error_render": warp_render[k],
        }
        for k in range(f)
    ]
    return row, frames


def evaluate_scenes(
    scenes: Sequence[SceneOutput], lpips: LPIPS | None = None, backend: str = "auto", occlusion_tol: float = 0.05
) -> Results:
    """`evaluate_scene` on each folder (any bad folder is an error naming it: the set is meant to be complete)."""
    if not scenes:
        raise InputError("evaluate: no scene folders given")
    rows, details = [], []
    for scene in scenes:
        row, frames = evaluate_scene(scene, lpips, backend, occlusion_tol)
        rows.append(row)
        details.extend(frames)
    return Results("scenes", rows, details, f"{len(scenes)} generated scenes")


# ----------------------------------------------------------------------------------------------------------------------
# Results: tables, summary, plots
# ----------------------------------------------------------------------------------------------------------------------


def _cell(value: Any, col: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if value is None or math.isnan(value) else str(value)
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(col, 4)}f}"
    return str(value)


def to_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text: a header and one line per row (missing or NaN values empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r.get(c), c) for c in columns])
    return buf.getvalue()


def to_markdown(results: Results) -> str:
    """The per-row table with a final mean row, under a title; NaN / missing values as "–"."""
    cols = results.columns
    summary = results.summary()
    lines = [
        f"# Evaluation: {results.source}",
        "",
        f"{summary['count']} {results.kind} evaluated, {summary['skipped']} skipped.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in results.rows:
        lines.append("| " + " | ".join(_cell(r.get(c), c) or "–" for c in cols) + " |")
    mean = ["**mean**"] + [
        f"**{_cell(summary['mean'][c], c)}**" if c in summary["mean"] and math.isfinite(summary["mean"][c]) else "–"
        for c in cols[1:]
    ]
    lines.append("| " + " | ".join(mean) + " |")
    if results.skipped:
        lines += ["", "Skipped:", *[f"- {s}" for s in results.skipped]]
    return "\n".join(lines) + "\n"


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plots(results: Results) -> dict[str, bytes]:
    """PNG images by file name: clips → metrics per clip and PSNR against each view's time gap to the nearest
    input; scenes → re-rendering PSNR and warping error per frame."""
    out: dict[str, bytes] = {}
    if results.kind == "clips":
        names = [c for c in ("psnr", "ssim", "lpips") if c in results.rows[0]]
        x = np.arange(len(results.rows))

        def per_clip(fig: Any) -> None:
            for i, name in enumerate(names):
                ax = fig.add_subplot(len(names), 1, i + 1)
                ax.bar(x, [r[name] for r in results.rows], color="tab:blue", label="LRDM")
                if name == "psnr":
                    ax.plot(x, [r["psnr_nearest_input"] for r in results.rows], "k_", ms=12, label="nearest input")
                    ax.legend(fontsize=7)
                ax.set_ylabel(name)
                ax.set_xticks(x)
            ax.set_xlabel("clip")

        def per_view(fig: Any) -> None:
            ax = fig.add_subplot(1, 1, 1)
            ax.scatter([d["time_gap"] for d in results.details], [d["psnr"] for d in results.details], s=8)
            ax.set_xlabel("time gap to the nearest input")
            ax.set_ylabel("PSNR (dB)")

        out["metrics_per_clip.png"] = _figure_png(per_clip, (max(4.0, 0.3 * len(x) + 2), 2.2 * len(names)))
        out["psnr_vs_time_gap.png"] = _figure_png(per_view, (4.5, 3.5))
    else:

        def per_frame(column: str, ylabel: str) -> Callable[[Any], None]:
            def draw(fig: Any) -> None:
                ax = fig.add_subplot(1, 1, 1)
                for r in results.rows:
                    frames = [d for d in results.details if d["scene"] == r["scene"]]
                    ax.plot([d["frame"] for d in frames], [d[column] for d in frames], label=Path(r["scene"]).name)
                    if column == "warp_error_video":
                        ax.plot(
                            [d["frame"] for d in frames],
                            [d["warp_error_render"] for d in frames],
                            "--",
                            color=ax.lines[-1].get_color(),
                        )
                ax.set_xlabel("frame")
                ax.set_ylabel(ylabel)
                if len(results.rows) <= 10:
                    ax.legend(fontsize=7)

            return draw

        out["rerender_psnr.png"] = _figure_png(per_frame("psnr", "re-render PSNR (dB)"), (5, 3.5))
        out["warp_error.png"] = _figure_png(per_frame("warp_error_video", "warp error (video —, render --)"), (5, 3.5))
    return out


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(results: Results, out_dir: str | Path) -> list[Path]:
    """``results.csv`` (one row per clip / scene), ``views.csv`` or ``frames.csv``, ``results.md``,
    ``summary.json`` and the plots, written together: everything is computed first, each file goes to a temporary
    name, and the files are renamed into place only when all are written (a failure, e.g. a full disk, removes the
    temporary files and a folder this made, and leaves earlier results as they were)."""
    out_dir = Path(out_dir)
    detail_name = "views.csv" if results.kind == "clips" else "frames.csv"
    summary = results.summary()
    summary["skipped_reasons"] = results.skipped
    files: dict[str, bytes] = {
        "results.csv": to_csv(results.rows, results.columns).encode(),
        detail_name: to_csv(results.details, results.detail_columns).encode(),
        "results.md": to_markdown(results).encode(),
        "summary.json": json.dumps(_json_safe(summary), indent=1).encode(),
        **plots(results),
    }
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            written.append((Path(tmp), out_dir / name))
            Path(tmp).write_bytes(data)
            Path(tmp).chmod(0o666 & ~umask)  # mkstemp makes 0600 files
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        for p in made:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    for tmp, path in written:
        os.replace(tmp, path)
    return [path for _, path in written]
