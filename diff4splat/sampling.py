"""Sampling camera-controlled video latents with a CameraWan: the loop that generation and the diffusion system's
validation videos share (``diff4splat.pipelines.camera_video`` adds the Wan VAE around it).

diffusers' flow-matching schedulers (``UniPCMultistepScheduler`` with flow sigmas, or ``FlowMatchEulerDiscreteScheduler``)
with ``flow_shift``; classifier-free guidance whose unconditional branch is the negative prompt with **zeroed cameras**
(the reference), both branches in one batched forward; TI2V: the clean first-frame latent replaces latent frame 0 at
every step (its tokens at timestep 0) and in the result. Noise is drawn on the CPU from ``seed``, so a seed gives the
same latents on any device.

``mode=distilled`` samples a few-step student (``diff4splat.systems.distill``; FastWan's released DMD transformer is
one): at each of the student's timesteps the model's flow prediction gives x̂₀ = x - σv, and the next input is x̂₀
re-noised to the next timestep with fresh noise, (1 - σ')x̂₀ + σ'ε (the DMD sampler; the student was trained on
exactly these inputs). No guidance: the student learned the teacher's guided distribution, so one branch per step.
The timesteps are ``timesteps`` or, by ``steps``, ``DISTILLED_TIMESTEPS`` (3: FastWan2.2-TI2V-5B's [1000, 757, 522];
4: [1000, 750, 500, 250], the 4-step schedule of Wan DMD students).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from diff4splat.models.camera_wan import CameraWan

# The student's timesteps (of num_train_timesteps = 1000) per step count; σ = t / 1000, no further shift.
DISTILLED_TIMESTEPS: dict[int, list[float]] = {
    1: [1000.0],
    2: [1000.0, 500.0],
    3: [1000.0, 757.0, 522.0],
    4: [1000.0, 750.0, 500.0, 250.0],
}


@dataclass
class SamplingConfig:
    scheduler: Literal["unipc", "euler"] = "unipc"
    steps: int = 25
    guidance_scale: float = 5.0  # 1.0: no guidance (one branch); ignored by mode=distilled
    flow_shift: float = 5.0
    seed: int = 0
    num_train_timesteps: int = 1000
    mode: Literal["scheduler", "distilled"] = "scheduler"  # distilled: a few-step student's DMD sampler
    timesteps: list[float] | None = None  # distilled: the student's timesteps (None: DISTILLED_TIMESTEPS[steps])
    renoise: Literal["fresh", "initial"] = "fresh"  # distilled: x̂₀ re-noised with fresh noise (DMD) or the initial z

    @property
    def guided(self) -> bool:
        """Whether sampling runs the unconditional branch too (never for a distilled student)."""
        return self.mode != "distilled" and self.guidance_scale != 1.0

    def used(self) -> dict:
        """The settings this sampler reads (``meta.json``'s ``sampling``): a distilled student's resolved timesteps and
        re-noising, or the scheduler, its shift and the guidance scale; never a setting the mode ignores."""
        common = {
            "mode": self.mode,
            "steps": self.steps,
            "seed": self.seed,
            "num_train_timesteps": self.num_train_timesteps,
        }
        if self.mode == "distilled":
            return {**common, "timesteps": distilled_timesteps(self), "renoise": self.renoise}
        return {
            **common,
            "scheduler": self.scheduler,
            "flow_shift": self.flow_shift,
            "guidance_scale": self.guidance_scale,
        }


def distilled_timesteps(cfg: SamplingConfig) -> list[float]:
    """The student's timesteps for ``cfg`` (descending, in (0, num_train_timesteps])."""
    if cfg.timesteps:
        ts = [float(t) for t in cfg.timesteps]
    elif cfg.steps in DISTILLED_TIMESTEPS:
        ts = list(DISTILLED_TIMESTEPS[cfg.steps])
    else:
        raise ValueError(
            f"sampling.steps={cfg.steps} with sampling.mode=distilled: give the student's sampling.timesteps "
            f"(known schedules: steps in {sorted(DISTILLED_TIMESTEPS)})"
        )
    if len(ts) != cfg.steps:
        raise ValueError(f"sampling.timesteps has {len(ts)} entries for sampling.steps={cfg.steps}")
    if any(not 0 < t <= cfg.num_train_timesteps for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"sampling.timesteps must descend within (0, {cfg.num_train_timesteps}], got {ts}")
    return ts


def _unshard_root(model: CameraWan) -> None:
    """An FSDP2-sharded CameraWan (training validation) gathers its root unit's parameters, the camera branch among
    them, before ``camera_tokens`` calls that branch outside the model's forward."""
    unshard = getattr(model, "unshard", None)
    if callable(unshard):
        unshard()


def renoise(x0: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """x̂₀ taken back to noise level σ (rectified flow): (1 - σ)x̂₀ + σε."""
    return (1 - sigma) * x0 + sigma * noise


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
    noise: Tensor | None = None,  # [B, C, T, h, w] the initial noise (None: drawn from cfg.seed)
) -> Tensor:  # [B, C, T, h, w]
    cfg = cfg or SamplingConfig()
    b, c, _, h, w = cond_latent.shape
    device = cond_latent.device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator("cpu").manual_seed(cfg.seed)
    shape = (b, c, num_latent_frames, h, w)
    latents = torch.randn(shape, generator=gen, dtype=torch.float32).to(device) if noise is None else noise.float()
    if cfg.mode == "distilled":
        return _sample_distilled(model, cond_latent, latents, prompt_embeds, plucker, cfg, gen)
    scheduler = make_scheduler(cfg)
    scheduler.set_timesteps(cfg.steps, device=device)
    guided = cfg.guided
    if guided:
        neg = negative_embeds if negative_embeds is not None else torch.zeros_like(prompt_embeds)
        text = torch.cat([prompt_embeds, neg.to(prompt_embeds)], 0)
        cams = torch.cat([plucker, torch.zeros_like(plucker)], 0) if plucker is not None else None
    else:
        text, cams = prompt_embeds, plucker
    tokens = None
    if cams is not None:  # the camera tokens do not change over the steps: encode them once
        _unshard_root(model)
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


def _sample_distilled(
    model: CameraWan,
    cond_latent: Tensor,  # [B, C, 1, h, w]
    latents: Tensor,  # [B, C, T, h, w] the initial noise
    prompt_embeds: Tensor,  # [B, L, D]
    plucker: Tensor | None,  # [B, F, 6, H, W]
    cfg: SamplingConfig,
    gen: torch.Generator,
) -> Tensor:  # [B, C, T, h, w]
    """The DMD sampler (see the module docstring); re-noising draws come from ``gen`` after the initial noise."""
    device, dtype = latents.device, next(model.parameters()).dtype
    ts = distilled_timesteps(cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    tokens = None
    if plucker is not None:
        _unshard_root(model)
        with autocast:
            tokens = model.camera_tokens(plucker)
    x0, noise = latents, latents
    for i, t in enumerate(ts):
        sigma = t / cfg.num_train_timesteps
        x = model.replace_first_frame(latents, cond_latent)
        tt = model.token_timesteps(torch.full((x.shape[0],), t, device=device), x.shape)
        with autocast:
            v = model(x.to(dtype), tt, prompt_embeds.to(dtype), camera_tokens=tokens).float()
        x0 = x - sigma * v
        if i + 1 < len(ts):
            if cfg.renoise == "fresh":
                noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(device)
            latents = renoise(x0, ts[i + 1] / cfg.num_train_timesteps, noise)
    return model.replace_first_frame(x0, cond_latent)
