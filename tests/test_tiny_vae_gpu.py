"""TinyVAE on the GPU: the full Wan2.2-interface TinyVAE in bf16 / fp16 (channels-last) agrees with float32, and the
alignment losses back-propagate through it (run on the device: ``pytest -m gpu tests/test_tiny_vae_gpu.py``)."""

from __future__ import annotations

import pytest
import torch

from diff4splat.losses.photometric import psnr
from diff4splat.models.alignment import AlignerConfig, LatentAligner
from diff4splat.models.wan_vae import smooth_random_videos

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_decode_matches_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ref = LatentAligner(AlignerConfig(version="wan22")).cuda().eval()
    z = torch.randn(1, 48, 13, 22, 40, device="cuda")  # 49 frames at 352x640
    with torch.no_grad():
        want = ref.decode(z, clamp=False)
        half = LatentAligner(AlignerConfig(version="wan22")).cuda().eval()
        half.load_state_dict(ref.state_dict())
        half.to(dtype)
        half.tiny_vae.to(memory_format=torch.channels_last)
        got = half.decode(z, clamp=False)
    assert got.shape == (1, 49, 3, 352, 640) and got.dtype == torch.float32
    assert psnr(got.clamp(0, 1), want.clamp(0, 1)) > 35.0  # half-precision rounding only


def test_alignment_step_on_gpu_lowers_the_pixel_loss() -> None:
    torch.manual_seed(0)
    aligner = LatentAligner(AlignerConfig(version="wan22")).cuda()
    frames = smooth_random_videos(2, 9, 64, 96).cuda()
    latents = torch.randn(2, 48, 3, 4, 6, device="cuda")
    opt = torch.optim.AdamW(aligner.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(aligner.decode(latents, clamp=False), frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
