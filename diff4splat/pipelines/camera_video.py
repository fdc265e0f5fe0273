"""Image + camera trajectory + prompt embeddings -> a camera-controlled video with CameraWan and the Wan VAE.

The sampling loop itself (flow matching, classifier-free guidance, TI2V first frame) is `diff4splat.sampling`, which the
diffusion system also uses for its validation videos.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diff4splat.models.camera_wan import CameraWan, plucker_for_latents
from diff4splat.sampling import SamplingConfig, sample_latents


@torch.no_grad()
def generate_video(
    model: CameraWan,
    vae: Any,  # diff4splat.models.wan_vae.WanVAE
    image: Tensor,  # [B, 3, H, W] in [0, 1]: the first frame
    c2w: Tensor,  # [B, F, 4, 4] metric OpenCV c2w, first camera = identity
    fxfycxcy: Tensor,  # [B, F, 4] normalised intrinsics
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None = None,
    cfg: SamplingConfig | None = None,
    use_cameras: bool = True,
) -> tuple[Tensor, Tensor]:  # latents [B, C, T, h, w], video [B, F, 3, H, W] in [0, 1]
    """Image + trajectory + prompt embeddings -> (latents, decoded video), F = 1 + 4k frames."""
    num_frames = c2w.shape[1]
    num_latent = vae.check_frames(num_frames)
    h, w = image.shape[-2:]
    cond = vae.encode(image[:, None])  # [B, C, 1, h', w']
    plucker = plucker_for_latents(c2w, fxfycxcy, h, w).to(image.device) if use_cameras else None
    latents = sample_latents(model, cond, num_latent, prompt_embeds, negative_embeds, plucker, cfg)
    return latents, vae.decode(latents)
