"""Latent alignment: mappers between Wan VAE latents and a TinyVAE's latent space, and the two paths that use them.

- decode path (``TinyVAEDecoderWrapper``): normalised Wan latents (what the diffusion model produces) → decode mapper
  → TinyVAE decoder → frames [B, F, 3, H, W] in [0, 1];
- encode path (``TinyVAEEncoderWrapper``): frames → TinyVAE encoder → encode mapper → normalised Wan latents.

Latent convention: the TinyVAE works in the **diffusion model's latent space**, the Wan-normalised latents
(z − latents_mean) / latents_std, as the released TAEHV decoders (``taew2_1.pth``, ``taew2_2.pth``) expect. The
evidence (madebyollin/taehv @ 1f14a568; ``tests/fixtures/taehv/README.md``): its README says TAEHV "does not use any
latent scales / shifts (TAEHV encodes / decodes exactly what diffusion models use), whereas Diffusers requires
explicitly applying a latents_mean and latents_std"; its diffusers examples (``examples/TAEW2.2_T2I_Demo.ipynb``,
``TAEW2.1_T2I_Demo.ipynb``) hand TAEHV to ``WanPipeline`` as the VAE with ``latents_mean`` = 0 and ``latents_std`` = 1,
so the pipeline's de-normalisation ``latents / (1 / latents_std) + latents_mean`` (diffusers ``pipeline_wan.py``)
becomes the identity and TAEHV decodes the denoiser's latents as they are; and the real Wan2.1 latent it ships
(``examples/test_latents_wan.pth``) has per-channel means within ±0.8 and standard deviations 0.6–1.2, where raw
Wan2.1 latents have means −0.95…1.55 and deviations 1.1–3.3 (the VAE's ``latents_mean`` / ``latents_std``).
``AlignerConfig.tiny_vae_space = "raw"`` keeps the earlier convention (z · std + mean before the TinyVAE) for
aligners trained with it; exports without the field load as ``raw``.

Mappers act on [B, C, T, h, w] and are residual with a zero-initialised last layer, so a fresh mapper is exactly the
identity and a released TAEHV (trained to match the Wan VAE) starts from its own quality:

- ``LinearMapper``: a per-position linear map of the channels (1×1×1 conv);
- ``MLPMapper``: 1×1×1 conv → GroupNorm → GELU → 1×1×1 conv (the original code's ``LatentAlignmentNet``);
- ``UNetMapper``: a small 3D U-Net (two spatial scales, 3×3×3 convs) for spatially varying corrections.

``LatentAligner`` holds the TinyVAE, both mappers and the Wan normalisation (as persistent buffers, so an exported
aligner decodes diffusion latents without the Wan VAE at hand) and is what the alignment system trains and the
generation pipeline loads (``save`` / ``load``: one ``.safetensors`` with the config in its metadata; ``load`` also
reads the ``.safetensors`` that training checkpoints export, ``diff4splat.callbacks.checkpoint``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.models.tiny_vae import TinyVAE, TinyVAEConfig

MapperKind = Literal["none", "linear", "mlp", "unet"]
TinyVAESpace = Literal["normalised", "raw"]  # the latents the TinyVAE decodes / encodes (module docstring)


class Identity5d(nn.Identity):
    """The ``none`` mapper."""


class LinearMapper(nn.Module):
    """x + W x + b per latent position; W, b start at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(x)


class MLPMapper(nn.Module):
    """x + conv(GELU(GroupNorm(conv(x)))) with 1×1×1 convs; the last conv starts at zero."""

    def __init__(self, channels: int, hidden: int = 64, groups: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(channels, hidden, 1), nn.GroupNorm(groups, hidden), nn.GELU(), nn.Conv3d(hidden, channels, 1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def _block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv3d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class UNetMapper(nn.Module):
    """x + U(x): a two-level 3D U-Net (spatial down/up by 2, time kept); its output conv starts at zero.

    Odd latent sizes work (the upsampled features are resized to the skip's size).
    """

    def __init__(self, channels: int, width: int = 64, groups: int = 8) -> None:
        super().__init__()
        self.inp = _block(channels, width, groups)
        self.down = nn.Conv3d(width, 2 * width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.mid = _block(2 * width, 2 * width, groups)
        self.up = _block(3 * width, width, groups)
        self.out = nn.Conv3d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.inp(x)
        y = self.mid(self.down(skip))
        y = F.interpolate(y, size=skip.shape[-3:], mode="nearest")
        return x + self.out(self.up(torch.cat([skip, y], 1)))


def build_mapper(kind: MapperKind, channels: int, width: int = 64) -> nn.Module:
    if kind == "none":
        return Identity5d()
    if kind == "linear":
        return LinearMapper(channels)
    if kind == "mlp":
        return MLPMapper(channels, hidden=width)
    if kind == "unet":
        return UNetMapper(channels, width=width)
    raise ValueError(f"mapper kind must be one of none, linear, mlp, unet; got {kind!r}")


class _Normalisation(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("latents_mean", torch.zeros(1, channels, 1, 1, 1))
        self.register_buffer("latents_std", torch.ones(1, channels, 1, 1, 1))

    def set(self, mean: Tensor, std: Tensor) -> None:
        self.latents_mean.copy_(mean.detach().reshape(self.latents_mean.shape))
        self.latents_std.copy_(std.detach().reshape(self.latents_std.shape))


class TinyVAEDecoderWrapper(nn.Module):
    """Normalised Wan latents [B, C, T, h, w] → frames [B, 4(T−1)+1, 3, H, W] (mapper → TinyVAE decoder; with
    ``space="raw"`` the Wan normalisation is undone first). Shares its modules with the ``LatentAligner`` that made
    it."""

    def __init__(self, tiny_vae: TinyVAE, mapper: nn.Module, norm: _Normalisation, space: TinyVAESpace) -> None:
        super().__init__()
        self.tiny_vae, self.mapper, self.norm, self.space = tiny_vae, mapper, norm, space

    def forward(self, latents: Tensor, clamp: bool = True) -> Tensor:
        self.tiny_vae.check_latents(latents)
        z = latents.float()
        if self.space == "raw":
            z = z * self.norm.latents_std + self.norm.latents_mean
        return self.tiny_vae.decode(self.mapper(z.to(_dtype(self.mapper, z))), clamp=clamp).float()


class TinyVAEEncoderWrapper(nn.Module):
    """Frames [B, F, 3, H, W] → normalised Wan latents [B, C, ceil(F/4), h, w] (TinyVAE encoder → mapper; with
    ``space="raw"`` the Wan normalisation is applied last)."""

    def __init__(self, tiny_vae: TinyVAE, mapper: nn.Module, norm: _Normalisation, space: TinyVAESpace) -> None:
        super().__init__()
        self.tiny_vae, self.mapper, self.norm, self.space = tiny_vae, mapper, norm, space

    def forward(self, frames: Tensor) -> Tensor:
        z = self.tiny_vae.encode(frames)
        z = self.mapper(z.to(_dtype(self.mapper, z))).float()
        return (z - self.norm.latents_mean) / self.norm.latents_std if self.space == "raw" else z


def _dtype(module: nn.Module, fallback: Tensor) -> torch.dtype:
    p = next(module.parameters(), None)
    return fallback.dtype if p is None else p.dtype


@dataclass
class AlignerConfig:
    """What ``LatentAligner`` is made of (stored with exported weights)."""

    version: Literal["wan21", "wan22"] = "wan22"
    tiny_vae: dict = field(default_factory=dict)  # TinyVAEConfig overrides (e.g. widths for tests)
    decode_mapper: MapperKind = "linear"
    encode_mapper: MapperKind = "linear"
    mapper_width: int = 64
    tiny_vae_space: TinyVAESpace = "normalised"  # TAEHV's convention; "raw": aligners trained on z · std + mean


class LatentAligner(nn.Module):
    """TinyVAE + decode/encode mappers + the Wan latent normalisation. ``decode`` / ``encode`` are the two paths."""

    def __init__(self, cfg: AlignerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AlignerConfig()
        self.tiny_vae = TinyVAE(TinyVAEConfig.preset(cfg.version, **cfg.tiny_vae))
        c = self.tiny_vae.cfg.latent_channels
        self.decode_mapper = build_mapper(cfg.decode_mapper, c, cfg.mapper_width)
        self.encode_mapper = build_mapper(cfg.encode_mapper, c, cfg.mapper_width)
        self.norm = _Normalisation(c)
        # the two paths share these modules; kept out of the module tree so every tensor has one state-dict key
        if cfg.tiny_vae_space not in ("normalised", "raw"):
            raise ValueError(f"AlignerConfig.tiny_vae_space must be 'normalised' or 'raw', got {cfg.tiny_vae_space!r}")
        self._paths = (
            TinyVAEDecoderWrapper(self.tiny_vae, self.decode_mapper, self.norm, cfg.tiny_vae_space),
            TinyVAEEncoderWrapper(self.tiny_vae, self.encode_mapper, self.norm, cfg.tiny_vae_space),
        )

    @classmethod
    def from_taehv(cls, path: str | Path, version: str | None = None, **tiny_vae: object) -> LatentAligner:
        """A released TAEHV file (``taew2_2.pth`` for Wan2.2-TI2V-5B, ``taew2_1.pth`` for Wan2.1) as an aligner:
        no mappers, the denoiser's latents straight into TAEHV (``tiny_vae``: ``TinyVAEConfig`` overrides, e.g. a
        cheaper ``decoder_time_upscale``)."""
        released = TinyVAE.from_taehv(path, version, **tiny_vae)
        version = "wan22" if released.cfg.latent_channels == 48 else "wan21"
        aligner = cls(
            AlignerConfig(version=version, tiny_vae=dict(tiny_vae), decode_mapper="none", encode_mapper="none")
        )
        aligner.tiny_vae.load_state_dict(released.state_dict())
        return aligner.eval()

    @property
    def decoder(self) -> TinyVAEDecoderWrapper:
        return self._paths[0]

    @property
    def encoder(self) -> TinyVAEEncoderWrapper:
        return self._paths[1]

    @property
    def latent_channels(self) -> int:
        return self.tiny_vae.cfg.latent_channels

    @property
    def stride_s(self) -> int:
        return self.tiny_vae.cfg.stride_s

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        """The Wan VAE's ``latents_mean`` / ``latents_std`` (``WanVAE.mean`` / ``.std``); used by ``raw`` aligners."""
        self.norm.set(mean, std)

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        return self.decoder(latents, clamp=clamp)

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames)

    def save(self, path: str | Path) -> None:
        """One ``.safetensors`` (config in the metadata), written atomically."""
        from diff4splat.weights import save_safetensors

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": "diff4splat.latent_aligner", "config": json.dumps(asdict(self.cfg))}
        save_safetensors(state, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> LatentAligner:
        from diff4splat.weights import load_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LatentAligner.load: no file at {path}")
        state, meta = load_safetensors(path, "LatentAligner weights")
        if meta.get("format") == "diff4splat.latent_aligner":
            cfg = json.loads(meta["config"])
        elif meta.get("format") == "diff4splat-weights" and meta.get("export_prefix") == "aligner.":
            cfg = json.loads(meta["hparams"])["aligner"]  # a checkpoint sidecar of LatentAlignmentSystem
        else:
            raise ValueError(
                f"{path}: not a LatentAligner export (metadata format {meta.get('format')!r}, "
                f"prefix {meta.get('export_prefix')!r})"
            )
        cfg.setdefault("tiny_vae_space", "raw")  # exported before the field existed: trained on raw latents
        model = cls(AlignerConfig(**cfg))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path}: missing {result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}")
        return model
