"""Evaluating generated scenes against their own videos (see `diff4splat.pipelines.evaluation`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.frame_codec import decode_video
from diff4splat.cli import InputError
from diff4splat.gaussians.types import Gaussians
from diff4splat.geometry.cameras import unproject_depth
from diff4splat.losses.lpips import LPIPS
from diff4splat.metrics import image_metrics, warp_error
from diff4splat.pipelines.evaluation.results import Results
from diff4splat.pipelines.outputs import SceneOutput
from diff4splat.rendering import render


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
