"""The public route on CUDA: the tiny Fun-layout pipeline gives the CPU's latents and video (float32), so the Fun
conditioning (Plücker maps on the cameras' device, masked-video latents) and its loop run on the GPU as on the CPU.

Run on a CUDA machine: ``pytest -m gpu -o addopts="" tests/test_public_route_gpu.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diff4splat.pipelines import Diff4SplatPipeline, public
from diff4splat.pipelines.cameras import resolve_cameras
from diff4splat.pipelines.inputs import fit_frames, read_image
from diff4splat.pipelines.jobs import TrajectoryOptions
from diff4splat.sampling import SamplingConfig

pytestmark = pytest.mark.gpu

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_public_route_on_cuda_matches_the_cpu() -> None:
    cams = resolve_cameras(
        str(FIXTURES / "re10k" / "pose_files" / "0bf152ef84195293.txt"), TrajectoryOptions(), 13, (480, 640)
    )
    image, fx, _ = fit_frames(
        read_image(FIXTURES / "tartanair" / "image_left" / "000009_left.png"), cams.fxfycxcy, size=(96, 160), cover=True
    )
    out = {}
    for device in ("cpu", "cuda"):
        pipe = public.tiny_public(Diff4SplatPipeline, seed=3, device=device)
        g = pipe(
            image,
            cams.c2w.float(),
            fx.float(),
            cams.times.float(),
            "a room",
            sampling=SamplingConfig(scheduler="euler", steps=3, guidance_scale=6.0, seed=1),
        )
        out[device] = (g.latents.cpu(), g.video.cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], atol=5e-3, rtol=0)
