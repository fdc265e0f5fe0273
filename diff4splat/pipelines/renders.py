"""The renders a generation writes (render.mp4, depth.mp4, novel.mp4): the trajectory's views at their times and a
new orbit about the scene at mid time, rasterised by `Diff4SplatPipeline.render`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.geometry.trajectories import make_trajectory

if TYPE_CHECKING:
    from diff4splat.pipelines.generation import Diff4SplatPipeline, Generation
    from diff4splat.pipelines.options import RenderOptions
    from diff4splat.pipelines.stages import Stages


@dataclass
class Renders:
    """The renders that go into render.mp4 / depth.mp4 / novel.mp4."""

    rgb: Tensor  # [F, 3, H, W] along the trajectory, camera k at time k
    depth: Tensor  # [F, 1, H, W]
    novel: Tensor  # [V, 3, H, W] a new orbit at mid time
    novel_c2w: Tensor  # [V, 4, 4]
    novel_info: dict


def render_outputs(pipe: Diff4SplatPipeline, gen: Generation, opts: RenderOptions, stages: Stages) -> Renders:
    """The trajectory renders and a new orbit about the scene centre (median Gaussian depth in camera 0) at t = 0.5."""
    scene = gen.scene
    f = scene.c2w.shape[0]
    n = opts.novel_frames or f
    z = scene.gaussians.canonical.means[:, 2]
    centre = float(z[z > 0].median()) if (z > 0).any() else 1.0
    try:
        orbit = make_trajectory(opts.novel_preset, n, strength=opts.novel_strength, look_at=centre)
    except ValueError as e:
        raise InputError(f"render.novel_preset: {e}") from e
    novel_c2w = orbit.c2w.float()
    with stages("render", total=f + n, unit="view") as bar:
        rgb, depth = pipe.render(scene, scene.c2w, scene.fxfycxcy, scene.input_times, bar)
        novel, _ = pipe.render(scene, novel_c2w, scene.fxfycxcy[:1].expand(n, 4), torch.full((n,), 0.5), bar)
    info = {
        "preset": opts.novel_preset,
        "strength": opts.novel_strength,
        "frames": n,
        "time": 0.5,
        "look_at": centre,
        "c2w": novel_c2w.tolist(),
    }
    return Renders(rgb, depth, novel, novel_c2w, info)
