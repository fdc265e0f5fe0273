"""Sampling camera-controlled video latents with a CameraWan: the loop that generation and the diffusion system's
validation videos share (``diff4splat.pipelines.camera_video`` adds the Wan VAE around it).

diffusers' flow-matching schedulers (``UniPCMultistepScheduler`` with flow sigmas, or ``FlowMatchEulerDiscreteScheduler``)
with ``flow_shift``; classifier-free guidance whose unconditional branch is the negative prompt with **zeroed cameras**
(the reference), both branches in one batched forward; TI2V: the clean first-frame latent replaces latent frame 0 at
every step (its tokens at timestep 0) and in the result. Noise is drawn on the CPU from ``seed``, so a seed gives the
same latents on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from diff4splat.models.camera_wan import CameraWan


@dataclass
class SamplingConfig:
    scheduler: Literal["unipc", "euler"] = "unipc"
    steps: int = 25
    guidance_scale: float = 5.0  # 1.0: no guidance (one branch)
    flow_shift: float = 5.0
    seed: int = 0
    num_train_timesteps: int = 1000


def make_scheduler(cfg: SamplingConfig) -> Any:
    """A fresh diffusers flow-matching scheduler for ``cfg``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if cfg.scheduler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=cfg.flow_shift,
        )
    if cfg.scheduler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.flow_shift)
    raise ValueError(f"sampling.scheduler must be 'unipc' or 'euler', got {cfg.scheduler!r}")


@torch.no_grad()
def sample_latents(
    model: CameraWan,
    cond_latent: Tensor,  # [B, C, 1, h, w] clean latent of the first frame
    num_latent_frames: int,
    prompt_embeds: Tensor,  # [B, L, D]
    negative_embeds: Tensor | None = None,  # [B, L, D]; None: zeros
    plucker: Tensor | None = None,  # [B, F, 6, H, W]; None: no cameras in either branch
    cfg: SamplingConfig | None = None,
) -> Tensor:  # [B, C, T, h, w]
    cfg = cfg or SamplingConfig()
    b, c, _, h, w = cond_latent.shape
    device = cond_latent.device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator("cpu").manual_seed(cfg.seed)
    latents = torch.randn((b, c, num_latent_frames, h, w), generator=gen, dtype=torch.float32).to(device)
    scheduler = make_scheduler(cfg)
    scheduler.set_timesteps(cfg.steps, device=device)
    guided = cfg.guidance_scale != 1.0
    if guided:
        neg = negative_embeds if negative_embeds is not None else torch.zeros_like(prompt_embeds)
        text = torch.cat([prompt_embeds, neg.to(prompt_embeds)], 0)
        cams = torch.cat([plucker, torch.zeros_like(plucker)], 0) if plucker is not None else None
    else:
        text, cams = prompt_embeds, plucker
    tokens = None
    if cams is not None:  # the camera tokens do not change over the steps: encode them once
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            tokens = model.camera_tokens(cams)
    for t in scheduler.timesteps:
        x = model.replace_first_frame(latents, cond_latent)
        x_in = torch.cat([x, x], 0) if guided else x
        tt = model.token_timesteps(t.float().expand(x_in.shape[0]).to(device), x_in.shape)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            pred = model(x_in.to(dtype), tt, text.to(dtype), camera_tokens=tokens).float()
        if guided:
            cond, uncond = pred.chunk(2)
            pred = uncond + cfg.guidance_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return model.replace_first_frame(latents, cond_latent)
