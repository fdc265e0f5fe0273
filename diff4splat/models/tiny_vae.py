"""TinyVAE: a TAEHV-style temporal autoencoder for Wan video latents (a fast, differentiable latent <-> RGB path).

Architecture (the public TAEHV design, madebyollin/taehv): 2D convolutions applied to every frame, with three kinds
of temporal layers between them, all causal:

- ``MemBlock``: three 3×3 convs over [x_t, x_{t-1}] (the block's input at the previous frame; zeros at t = 0) plus a
  skip of x_t, then ReLU: information flows forward in time only.
- ``TPool(stride s)``: s consecutive frames concatenated along channels, then a 1×1 conv (encoder; time ÷ s).
- ``TGrow(stride s)``: a 1×1 conv to s× the channels, split into s consecutive frames (decoder; time × s).

Encoder: pixel-unshuffle by ``patch_size`` → conv → 3 × [TPool, stride-2 conv, 3 MemBlocks] → conv to the latent
channels (spatial ÷ 8·patch, time ÷ 4). Decoder: tanh(x/3)·3 clamp → conv → 3 × [3 MemBlocks, nearest 2× upsample,
TGrow, conv] → ReLU → conv → pixel-shuffle, clamped to [0, 1] (time × 4, then the first 3 frames are dropped).

Frame counts follow the Wan VAE: T latent frames ↔ F = 4(T − 1) + 1 frames. The decoder makes 4T frames and drops the
first 3 (latent frame 0 → frame 0, latent frame j ≥ 1 → frames 4j − 3 … 4j); the encoder pads F at the end with copies
of the last frame up to a multiple of 4 (TAEHV's convention) and returns ceil(F / 4) latent frames.

Presets: ``TinyVAEConfig.wan21()`` (16 channels, 8× spatial) and ``TinyVAEConfig.wan22()`` (48 channels, 16× spatial:
a 2×2 pixel (un)shuffle around the 8× network). Latents are those the diffusion model works with: the Wan VAE's
latents *after* its ``latents_mean``/``latents_std`` normalisation, which is what the released TAEHV weights decode
and encode (TAEHV "does not use any latent scales / shifts"; the evidence is in ``diff4splat.models.alignment`` and
``tests/fixtures/taehv/README.md``), in the Wan layout [B, C, T, h, w]; frames are [B, F, 3, H, W] in [0, 1] (TAEHV
itself uses NTCHW; the transposes are internal). The decoder and encoder reproduce TAEHV's ``decode_video`` /
``encode_video`` to 1e-6 (``tests/test_taehv.py``).

Weights: ``TinyVAE.from_taehv(path)`` loads the released TAEHV files (``taew2_1.pth`` for Wan2.1, ``taew2_2.pth`` for
Wan2.2; a ``.pth`` state dict or ``.safetensors``). Their state-dict layout, which the module tree here reproduces:

| key                                   | shape (Wan2.2: C = 48, p = 2; Wan2.1: C = 16, p = 1)                       |
|---------------------------------------|-----------------------------------------------------------------------------|
| encoder.0.weight / .bias              | (64, 3p², 3, 3) / (64,)           conv in                                   |
| encoder.{2,7,12}.conv.weight          | (64, 64·s, 1, 1)                   TPool, s = 2, 2, 1                       |
| encoder.{3,8,13}.weight               | (64, 64, 3, 3)                     stride-2 conv, no bias                   |
| encoder.{4-6,9-11,14-16}.conv.{0,2,4} | conv.0: (64, 128, 3, 3), conv.2/4: (64, 64, 3, 3), each with a bias         |
| encoder.17.weight / .bias             | (C, 64, 3, 3) / (C,)               conv out                                 |
| decoder.1.weight / .bias              | (256, C, 3, 3) / (256,)            conv in (decoder.0 is the clamp)         |
| decoder.{3-5,9-11,15-17}.conv.{0,2,4} | MemBlocks of widths 256, 128, 64                                            |
| decoder.{7,13,19}.conv.weight         | (n·s, n, 1, 1)                     TGrow, n = 256, 128, 64; s = 1, 2, 2     |
| decoder.{8,14,20}.weight              | (128, 256, 3, 3), (64, 128, 3, 3), (64, 64, 3, 3)   conv, no bias           |
| decoder.22.weight / .bias             | (3p², 64, 3, 3) / (3p²,)           conv out (decoder.21 is a ReLU)          |

A released file may hold a stride-2 TGrow where the model uses stride 1 (decoder.7: (512, 256, 1, 1)); as TAEHV
does, the last n output rows (the later time step) are kept. MemBlock skips are 1×1 convs only where the width
changes (never in these presets), so they have no keys here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass
class TinyVAEConfig:
    latent_channels: int = 48
    patch_size: int = 2  # pixel (un)shuffle around the network: spatial stride = 8 · patch_size
    encoder_width: int = 64
    decoder_widths: list[int] = field(default_factory=lambda: [256, 128, 64, 64])
    encoder_time_downscale: list[bool] = field(default_factory=lambda: [True, True, False])
    decoder_time_upscale: list[bool] = field(default_factory=lambda: [False, True, True])
    decoder_space_upscale: list[bool] = field(default_factory=lambda: [True, True, True])
    blocks_per_stage: int = 3  # MemBlocks per stage (TAEHV: 3; other counts change the state-dict indices)

    @classmethod
    def wan21(cls, **kw) -> TinyVAEConfig:
        """Wan2.1 latents: 16 channels, 8× spatial, 4× temporal (``taew2_1.pth``)."""
        return cls(latent_channels=16, patch_size=1, **kw)

    @classmethod
    def wan22(cls, **kw) -> TinyVAEConfig:
        """Wan2.2-TI2V-5B latents: 48 channels, 16× spatial, 4× temporal (``taew2_2.pth``)."""
        return cls(latent_channels=48, patch_size=2, **kw)

    @classmethod
    def preset(cls, version: str, **kw) -> TinyVAEConfig:
        if version not in ("wan21", "wan22"):
            raise ValueError(f"TinyVAE version must be 'wan21' or 'wan22', got {version!r}")
        return cls.wan21(**kw) if version == "wan21" else cls.wan22(**kw)

    @property
    def stride_s(self) -> int:
        return 8 * self.patch_size

    @property
    def stride_t(self) -> int:
        return 2 ** sum(bool(u) for u in self.decoder_time_upscale)


def _conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class TanhClamp(nn.Module):
    """Soft clamp of decoder inputs to (−3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block over the current frame and the previous frame's block input (causal memory)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(2 * c_in, c_out),
            nn.ReLU(inplace=True),
            _conv3x3(c_out, c_out),
            nn.ReLU(inplace=True),
            _conv3x3(c_out, c_out),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        # Training from scratch: the residual branch starts at zero (the block passes relu(skip(x))), which keeps the
        # 20-odd unnormalised ReLU layers stable under Adam; released weights overwrite this.
        nn.init.zeros_(self.conv[4].weight)
        nn.init.zeros_(self.conv[4].bias)

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """stride consecutive frames → one (channels concatenated in time order, then a 1×1 conv)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B·T, C, H, W] -> [B·T/s, C, H, W]
        n, c, h, w = x.shape
        return self.conv(x.reshape(n // self.stride, self.stride * c, h, w))


class TGrow(nn.Module):
    """One frame → stride consecutive frames (a 1×1 conv to stride× the channels, split in time order)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B·T, C, H, W] -> [B·T·s, C, H, W]
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


def _like_weights(x: Tensor, weight: Tensor) -> Tensor:
    """x in the weights' dtype and memory format (``tiny_vae.to(memory_format=torch.channels_last)`` is faster on GPUs)."""
    fmt = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return x.to(weight.dtype).contiguous(memory_format=fmt)


def run_causal(layers: nn.Sequential, x: Tensor, batch: int) -> Tensor:
    """Apply ``layers`` to all frames at once. x: [B·T, C, H, W] (frames of a clip consecutive) -> [B·T', C', H', W'].

    A MemBlock's memory is its own input one frame earlier within the same clip (zeros for each clip's first frame).
    """
    for layer in layers:
        if isinstance(layer, MemBlock):
            n, c, h, w = x.shape
            seq = x.reshape(batch, n // batch, c, h, w)
            past = torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], 1).reshape(n, c, h, w)
            x = layer(x, past)
        else:
            x = layer(x)
    return x


class TinyVAE(nn.Module):
    """The TAEHV-style autoencoder; see the module docstring for its layout and frame-count convention."""

    def __init__(self, cfg: TinyVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TinyVAEConfig()
        p, c, we, wd = cfg.patch_size, cfg.latent_channels, cfg.encoder_width, list(cfg.decoder_widths)
        if len(wd) != 4 or len(cfg.encoder_time_downscale) != 3 or len(cfg.decoder_time_upscale) != 3:
            raise ValueError("TinyVAEConfig: decoder_widths needs 4 entries, the time flags 3 each")
        n = cfg.blocks_per_stage
        enc: list[nn.Module] = [_conv3x3(3 * p * p, we), nn.ReLU(inplace=True)]
        for down in cfg.encoder_time_downscale:
            enc += [TPool(we, 2 if down else 1), _conv3x3(we, we, stride=2, bias=False)]
            enc += [MemBlock(we, we) for _ in range(n)]
        enc.append(_conv3x3(we, c))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [TanhClamp(), _conv3x3(c, wd[0]), nn.ReLU(inplace=True)]
        for i, (t_up, s_up) in enumerate(zip(cfg.decoder_time_upscale, cfg.decoder_space_upscale, strict=True)):
            dec += [MemBlock(wd[i], wd[i]) for _ in range(n)]
            dec += [
                nn.Upsample(scale_factor=2 if s_up else 1),
                TGrow(wd[i], 2 if t_up else 1),
                _conv3x3(wd[i], wd[i + 1], bias=False),
            ]
        dec += [nn.ReLU(inplace=True), _conv3x3(wd[3], 3 * p * p)]
        self.decoder = nn.Sequential(*dec)
        self.t_down = 2 ** sum(bool(d) for d in cfg.encoder_time_downscale)
        self.t_up = cfg.stride_t
        self.s_down = p * 2**3
        self.s_up = p * 2 ** sum(bool(s) for s in cfg.decoder_space_upscale)

    # --- constructors ----------------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, version: str = "wan22", width: int = 8, seed: int = 0) -> TinyVAE:
        """A narrow random-weight instance of the same layout (tests, CPU runs), seeded by ``seed`` without touching
        the caller's random stream (as ``WanVAE.tiny``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(
                TinyVAEConfig.preset(version, encoder_width=width, decoder_widths=[4 * width, 2 * width, width, width])
            )

    @classmethod
    def from_taehv(cls, path: str | Path, version: str | None = None, **overrides) -> TinyVAE:
        """Load a released TAEHV weight file (``taew2_1.pth`` / ``taew2_2.pth``, or ``.safetensors``).

        ``version`` (``wan21``/``wan22``) is inferred from the weights when omitted (latent channels and patch size);
        ``overrides`` go to ``TinyVAEConfig`` (e.g. ``decoder_time_upscale=[False, False, True]`` for a cheaper
        preview: stride-2 TGrow weights are then cut to their last time step, as TAEHV does).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TinyVAE.from_taehv: no weight file at {path}")
        from diff4splat.weights import read_state_dict

        state = read_state_dict(path, "TinyVAE weights")
        for key in ("encoder.0.weight", "decoder.1.weight"):
            if key not in state:
                raise ValueError(f"{path}: not a TAEHV state dict (no {key!r}; keys start {sorted(state)[:4]})")
        c = int(state["decoder.1.weight"].shape[1])
        p = int(round(math.sqrt(state["encoder.0.weight"].shape[1] / 3)))
        inferred = {(16, 1): "wan21", (48, 2): "wan22"}.get((c, p))
        if version is None:
            if inferred is None:
                raise ValueError(
                    f"{path}: {c} latent channels with patch {p} is neither Wan2.1 (16, 1) nor Wan2.2 "
                    "(48, 2); pass version= and TinyVAEConfig overrides"
                )
            version = inferred
        model = cls(TinyVAEConfig.preset(version, **overrides))
        model.load_taehv_state(state, source=str(path))
        return model

    def load_taehv_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Strictly load a TAEHV-layout state dict (TGrow rows cut to the model's stride where larger)."""
        state = dict(state)
        own = self.state_dict()
        for i, layer in enumerate(self.decoder):
            key = f"decoder.{i}.conv.weight"
            if isinstance(layer, TGrow) and key in state and state[key].shape[0] > own[key].shape[0]:
                state[key] = state[key][-own[key].shape[0] :]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]}
            raise ValueError(
                f"{source}: TAEHV layout mismatch for {self.cfg}: missing {missing[:6]}, unexpected "
                f"{unexpected[:6]}, shape (file, model) {shapes}"
            )
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})

    # --- interface -------------------------------------------------------------------------------------------------
    def num_latent_frames(self, num_frames: int) -> int:
        return -(-num_frames // self.t_down)

    def num_frames(self, num_latent_frames: int) -> int:
        return self.t_up * (num_latent_frames - 1) + 1

    def encode(self, frames: Tensor) -> Tensor:
        """frames [B, F, 3, H, W] in [0, 1] -> latents [B, C, ceil(F/4), H/s, W/s] (Wan-normalised)."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"TinyVAE.encode: expected frames [B, F, 3, H, W], got {tuple(frames.shape)}")
        b, f, _, h, w = frames.shape
        if h % self.s_down or w % self.s_down:
            raise ValueError(f"TinyVAE.encode: frame size {h}x{w} must be divisible by {self.s_down}")
        pad = -f % self.t_down
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], 1)
        x = frames.reshape(-1, 3, h, w).to(self.encoder[0].weight.dtype)
        if self.cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        z = run_causal(self.encoder, _like_weights(x, self.encoder[0].weight), b)
        return z.reshape(b, -1, *z.shape[1:]).transpose(1, 2)

    def check_latents(self, latents: Tensor) -> None:
        """One clear line when ``latents`` are not [B, C, T, h, w] with this TinyVAE's channel count."""
        c = self.cfg.latent_channels
        if latents.ndim != 5 or latents.shape[1] != c:
            family = {16: "Wan2.1 (16 channels, taew2_1)", 48: "Wan2.2-TI2V-5B (48 channels, taew2_2)"}
            got = family.get(latents.shape[1], f"{latents.shape[1]} channels") if latents.ndim == 5 else "not 5-D"
            raise ValueError(
                f"TinyVAE: latents {tuple(latents.shape)} ({got}) do not fit this "
                f"{family.get(c, f'{c}-channel')} decoder; expected latents [B, {c}, T, h, w]"
            )

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """latents [B, C, T, h, w] (Wan-normalised) -> frames [B, 4(T-1)+1, 3, h·s, w·s] in [0, 1] (``clamp=False``:
        unclamped)."""
        self.check_latents(latents)
        b = latents.shape[0]
        z = latents.transpose(1, 2).reshape(-1, *latents.shape[1:2], *latents.shape[3:])
        x = run_causal(self.decoder, _like_weights(z, self.decoder[1].weight), b)
        if self.cfg.patch_size > 1:
            x = F.pixel_shuffle(x, self.cfg.patch_size)
        x = x.reshape(b, -1, *x.shape[1:])[:, self.t_up - 1 :]
        return x.clamp(0, 1) if clamp else x
