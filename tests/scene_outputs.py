"""A small generation-CLI-style output folder for viewer and evaluation tests: a textured, tilted plane of Gaussians
whose upper half slides sideways over time, filmed along a preset trajectory; ``scene.safetensors``, ``meta.json``
(its ``"trajectory"``) and ``video.mp4`` (the scene's own renders, or frames a test passes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.gaussians.io import save_4d
from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.media import to_uint8, write_video
from diff4splat.rendering import render


def moving_plane(n: int = 24, frames: int = 6, seed: int = 0) -> DeformableGaussians:
    """n² Gaussians on a plane about 3 units ahead, tilted (no exact depth ties between neighbours), smooth colours;
    the upper half (y > 0) moves 0.2 units along x from t = 0 to 1."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.meshgrid(torch.linspace(-1.5, 1.5, n), torch.linspace(-1.2, 1.2, n), indexing="xy")
    u, v = u.flatten(), v.flatten()
    means = torch.stack([u, v, 3.0 + 0.3 * u + 0.02 * torch.rand(n * n, generator=g)], -1)
    colors = 0.5 + 0.4 * torch.stack([torch.sin(2 * u), torch.cos(3 * v), torch.sin(u + v)], -1)
    m = means.shape[0]
    canonical = Gaussians(
        means, torch.tensor([1.0, 0, 0, 0]).repeat(m, 1), torch.full((m, 3), 0.08), torch.full((m,), 0.9), colors
    )
    times = torch.linspace(0, 1, frames)
    dm = torch.zeros(frames, m, 3)
    dm[..., 0] = 0.2 * times[:, None] * (v > 0)
    dq = torch.zeros(frames, m, 4)
    dq[..., 0] = 1.0
    return DeformableGaussians(canonical, times, dm, dq, torch.zeros(frames, m, 3))


def write_scene_output(
    folder: Path,
    frames: int = 6,
    height: int = 32,
    width: int = 40,
    preset: str = "orbit",
    strength: float = 0.05,
    video: np.ndarray | None = None,
) -> tuple[Path, torch.Tensor]:
    """Write the folder; returns it and the renders along the trajectory [F, 3, H, W] (what ``video.mp4`` holds
    unless ``video`` (F, H, W, 3) uint8 is given)."""
    scene = moving_plane(frames=frames)
    traj = make_trajectory(preset, frames, strength=strength, look_at=3.0)
    c2w, fx = traj.c2w.float(), traj.fxfycxcy.float()
    times = torch.linspace(0, 1, frames)
    renders = torch.stack(
        [render(scene.at(times[k]), c2w[k : k + 1], fx[k : k + 1], height, width).rgb[0] for k in range(frames)]
    ).clamp(0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    save_4d(scene, folder / "scene.safetensors")
    write_video(to_uint8(renders) if video is None else video, folder / "video.mp4", 8)
    traj_json = {
        "c2w": c2w.tolist(),
        "fxfycxcy": fx.tolist(),
        "times": times.tolist(),
        "height": height,
        "width": width,
    }
    (folder / "meta.json").write_text(json.dumps({"format": "test", "trajectory": traj_json}))
    return folder, renders
