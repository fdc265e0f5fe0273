"""The frozen Wan video VAE (diffusers ``AutoencoderKLWan``) as the LRDM's and camera-control's latent interface.

Frames [B, F, 3, H, W] in [0, 1] (F = 1 + 4k) <-> normalised latents [B, C, T, H/s, W/s] with T = 1 + k, where
normalised = (z - latents_mean) / latents_std from the VAE's config (Wan2.2: C = 48, s = 16; Wan2.1: C = 16, s = 8).
Encoding uses the posterior mode (deterministic).

Weights come from a local diffusers folder (``<Wan2.2-TI2V-5B-Diffusers>/vae`` or the model root with a ``vae``
subfolder). ``WanVAE.tiny()`` builds a randomly initialised instance of the same class with the Wan2.2 interface
(48 channels, 16× spatial, 4× temporal) for tests and CPU smoke runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class WanVAE(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        c = cfg.z_dim
        self.register_buffer(
            "mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, c, 1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, c, 1, 1, 1), persistent=False
        )
        self.latent_channels = c
        self.stride_t = int(cfg.scale_factor_temporal or 4)
        self.stride_s = int(cfg.scale_factor_spatial or 8)

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.bfloat16) -> WanVAE:
        """Load from a local diffusers folder (the VAE folder itself or a model root with ``vae/``)."""
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"Wan VAE: no diffusers config.json in {path} or {path}/vae")
        return cls(AutoencoderKLWan.from_pretrained(str(path), torch_dtype=torch_dtype))

    @classmethod
    def tiny(cls, seed: int = 0, z_dim: int = 48, calibrate: bool = False, base_dim: int | None = None) -> WanVAE:
        """A small random-weight ``AutoencoderKLWan`` with the Wan2.2 interface (or Wan2.1's with ``z_dim=16``).

        ``calibrate``: set the per-channel latent mean/std (``latents_mean``/``latents_std``, which a released VAE
        ships) from a fixed batch of smooth random videos, so normalised latents have unit scale as with the real
        VAE (a random VAE's raw latents have std ~0.2; diffusion on them would be dominated by the noise).
        ``base_dim``: the encoder/decoder width (default 3 for Wan2.2's, 8 for Wan2.1's: fast, but the Wan2.2 one's
        3-channel features keep little of the frames; latent alignment uses a wider one).
        """
        from diffusers import AutoencoderKLWan

        # seeded weights without resetting the caller's random stream (a global reseed here made every run that
        # builds a tiny VAE draw the same noise and initialisation whatever its seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if z_dim == 48:
                vae = AutoencoderKLWan(
                    base_dim=base_dim or 3,
                    z_dim=48,
                    in_channels=12,
                    out_channels=12,
                    is_residual=True,
                    patch_size=2,
                    scale_factor_spatial=16,
                    scale_factor_temporal=4,
                    dim_mult=[1, 1, 1, 1],
                    num_res_blocks=1,
                    temperal_downsample=[False, True, True],
                    latents_mean=[0.0] * 48,
                    latents_std=[1.0] * 48,
                )
            elif z_dim == 16:
                vae = AutoencoderKLWan(
                    base_dim=base_dim or 8,
                    z_dim=16,
                    dim_mult=[1, 1, 1, 1],
                    num_res_blocks=1,
                    temperal_downsample=[False, True, True],
                    latents_mean=[0.0] * 16,
                    latents_std=[1.0] * 16,
                )
            else:
                raise ValueError(f"WanVAE.tiny: z_dim must be 48 (Wan2.2) or 16 (Wan2.1), got {z_dim}")
            out = cls(vae)
            if calibrate:
                out.calibrate(smooth_random_videos(4, 9, 32 * out.stride_s // 8, 32 * out.stride_s // 8, seed=seed))
        return out

    @torch.no_grad()
    def calibrate(self, frames: Tensor) -> None:
        """Per-channel latent mean/std from ``frames`` [B, F, 3, H, W] (used by the normalisation from then on)."""
        self.mean.zero_()
        self.std.fill_(1.0)
        z = self.encode(frames)
        self.mean.copy_(z.mean(dim=(0, 2, 3, 4)).view_as(self.mean))
        self.std.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6).view_as(self.std))

    def check_frames(self, num_frames: int) -> int:
        """Latent frame count for ``num_frames`` frames; a clear error unless num_frames = 1 + 4k."""
        if (num_frames - 1) % self.stride_t:
            raise ValueError(f"Wan VAE encodes 1 + {self.stride_t}k frames, got {num_frames}")
        return 1 + (num_frames - 1) // self.stride_t

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:  # [B, F, 3, H, W] in [0, 1] -> [B, C, T, H/s, W/s]
        self.check_frames(frames.shape[1])
        h, w = frames.shape[-2:]
        if h % self.stride_s or w % self.stride_s:
            raise ValueError(f"Wan VAE: frame size {h}x{w} must be divisible by {self.stride_s}")
        x = (frames.transpose(1, 2) * 2 - 1).to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()
        return (z - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, T, h, w] -> [B, F, 3, H, W] in [0, 1]
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            family = {16: "Wan2.1 (16 channels)", 48: "Wan2.2 (48 channels)"}
            got = family.get(latents.shape[1], f"{latents.shape[1]} channels") if latents.ndim == 5 else "-"
            raise ValueError(
                f"Wan VAE: latents of shape {tuple(latents.shape)} ({got}) do not fit this "
                f"{family.get(self.latent_channels, f'{self.latent_channels}-channel')} VAE; expected "
                f"[B, {self.latent_channels}, T, h, w] latents made by the same VAE family"
            )
        z = (latents.float() * self.std + self.mean).to(self.vae.dtype)
        x = self.vae.decode(z).sample.float()
        return ((x + 1) / 2).clamp(0, 1).transpose(1, 2)


def smooth_random_videos(b: int, f: int, h: int, w: int, seed: int = 0) -> Tensor:
    """[B, F, 3, H, W] in [0, 1]: low-frequency random colour fields drifting over time (a calibration set)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, f, 4, 4, generator=g)
    drift = torch.linspace(0, 1, f).view(1, 1, f, 1, 1)
    coarse = coarse * (1 - 0.5 * drift) + 0.5 * drift * torch.rand(b, 3, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(f, h, w), mode="trilinear", align_corners=False)
    return x.transpose(1, 2).contiguous()
