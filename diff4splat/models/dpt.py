"""DPT dense-prediction head over VGGT aggregator tokens: VGGT's depth / point heads and MoVieS's Gaussian heads.

One class covers both: VGGT's ``DPTHead`` (depth: ``exp``, points: ``inv_log``) and MoVieS's ``GSDPTHead``, which adds
an optional *shortcut* (a small conv net on a per-pixel input map, added to the output before activation: the RGB
image for the Gaussian head, the static Gaussian attributes for the time-conditioned one) and optional *time
conditioning* (AdaLN after the token LayerNorm: ``x * (1 + s) + b`` with ``(s, b) = time_embed(t_emb)``, zero-initialised
so a new time-conditioned head starts time-independent). Parameter names follow the released checkpoints
(``projects``, ``resize_layers``, ``scratch.refinenet*.resConfUnit*``), so VGGT-1B and MoVieS weights load as they are.

Pipeline per frame: 4 token layers -> LayerNorm (+AdaLN) -> 1x1 conv -> + sin-cos position map -> resample to
patch-grid x 4, x 2, x 1, x 1/2 -> 3x3 convs to ``features`` -> RefineNet fusion (coarse to fine) -> 3x3 conv ->
bilinear to the image size -> + position map -> conv 3x3, ReLU, conv 1x1 -> (+ shortcut) -> activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

Activation = Literal["linear", "exp", "inv_log", "norm_exp", "relu", "sigmoid"]
ConfActivation = Literal["expp1", "expp0", "sigmoid"]

# The largest number of output elements one F.interpolate call is given (the reference splits bigger batches: the
# CUDA kernels index with 32-bit integers).
_INTERPOLATE_MAX_ELEMENTS = 1610612736


@dataclass
class DPTConfig:
    """Architecture of a DPT head. Defaults: VGGT-1B's depth head."""

    dim_in: int = 2048  # token channels (2 x aggregator width: frame ‖ global)
    output_dim: int = 2  # prediction channels + 1 confidence channel
    patch_size: int = 14
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    layers: tuple[int, int, int, int] = (4, 11, 17, 23)  # aggregator layers read, fine to coarse
    head_features: int = 32  # hidden channels of the last conv block (and of the shortcut)
    activation: Activation = "exp"
    conf_activation: ConfActivation = "expp1"
    pos_embed: bool = True
    shortcut_dim: int = 0  # channels of the shortcut input map, 0 = none
    time_dim: int = 0  # AdaLN time conditioning input size, 0 = none

    def __post_init__(self) -> None:
        self.out_channels = tuple(self.out_channels)
        self.layers = tuple(self.layers)
        if len(self.out_channels) != 4 or len(self.layers) != 4:
            raise ValueError(f"DPTConfig: 4 out_channels and 4 layers expected, got {self.out_channels}, {self.layers}")


def infer_dpt_config(
    state_dict: dict[str, Tensor],
    prefix: str,
    *,
    patch_size: int,
    layers: Sequence[int] = (4, 11, 17, 23),
    activation: Activation = "linear",
    conf_activation: ConfActivation = "expp1",
) -> DPTConfig:
    """Read a DPT head's architecture from the shapes of ``state_dict[prefix + ...]``.

    Not in the shapes (so given): the patch size, which aggregator layers it reads and the activations.
    """

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state_dict[prefix + key].shape)

    shortcut = prefix + "shortcut.0.weight" in state_dict
    time = prefix + "time_embed.weight" in state_dict
    return DPTConfig(
        dim_in=shape("norm.weight")[0],
        output_dim=shape("scratch.output_conv2.2.weight")[0],
        patch_size=patch_size,
        features=shape("scratch.layer1_rn.weight")[0],
        out_channels=tuple(shape(f"projects.{i}.weight")[0] for i in range(4)),
        layers=tuple(layers),
        head_features=shape("scratch.output_conv2.0.weight")[0],
        activation=activation,
        conf_activation=conf_activation,
        shortcut_dim=shape("shortcut.0.weight")[1] if shortcut else 0,
        time_dim=shape("time_embed.weight")[1] if time else 0,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Position map and activations
# ----------------------------------------------------------------------------------------------------------------------


def uv_position_embedding(
    height: int,
    width: int,
    channels: int,
    aspect_ratio: float,
    dtype: torch.dtype,
    device: torch.device,
    omega_0: float = 100.0,
) -> Tensor:  # [channels, height, width]
    """VGGT's sin-cos map of a centred, diagonal-normalised (u, v) grid (u spans the width, v the height).

    The grid has ``aspect_ratio`` = image W / H; channels are [sin(u w), cos(u w), sin(v w), cos(v w)] with
    ``channels / 4`` frequencies ``w_k = omega_0^(-k / (channels / 4))``, computed in float64 as the reference does.
    """
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(
        -span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device
    )
    quarter = channels // 4
    omega = torch.arange(quarter, dtype=torch.float64, device=device) / quarter
    omega = 1.0 / omega_0**omega

    def sincos(p: Tensor) -> Tensor:  # [n] -> [n, channels / 2]
        angles = p.double()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    emb_u = sincos(u)[None, :, :].expand(height, width, 2 * quarter)
    emb_v = sincos(v)[:, None, :].expand(height, width, 2 * quarter)
    return torch.cat([emb_u, emb_v], dim=-1).float().permute(2, 0, 1)


_POS_CACHE: dict[tuple, Tensor] = {}
_POS_CACHE_SIZE = 64


def cached_uv_position_embedding(
    height: int, width: int, channels: int, aspect_ratio: float, dtype: torch.dtype, device: torch.device
) -> Tensor:  # [channels, height, width], the same numbers as `uv_position_embedding` (then cast to dtype)
    """`uv_position_embedding` cast to ``dtype``, kept per (size, channels, aspect, dtype, device): a head pass adds
    5 of these maps per frame chunk, and building one is ~10 small kernels (float64 on the device)."""
    key = (height, width, channels, aspect_ratio, dtype, device)
    pos = _POS_CACHE.get(key)
    if pos is None:
        if len(_POS_CACHE) >= _POS_CACHE_SIZE:
            _POS_CACHE.clear()
        pos = uv_position_embedding(height, width, channels, aspect_ratio, dtype, device).to(dtype)
        _POS_CACHE[key] = pos
    return pos


def inverse_log(y: Tensor) -> Tensor:
    """sign(y) (exp|y| - 1)."""
    return torch.sign(y) * torch.expm1(y.abs())


def activate_prediction(x: Tensor, activation: Activation) -> Tensor:  # [..., C] -> [..., C]
    if activation == "linear":
        return x
    if activation == "exp":
        return torch.exp(x)
    if activation == "inv_log":
        return inverse_log(x)
    if activation == "norm_exp":
        d = x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return x / d * torch.expm1(d)
    if activation == "relu":
        return F.relu(x)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown DPT activation {activation!r}")


def activate_confidence(x: Tensor, activation: ConfActivation) -> Tensor:
    if activation == "expp1":
        return 1 + x.exp()
    if activation == "expp0":
        return x.exp()
    if activation == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown confidence activation {activation!r}")


def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:  # [N, C, h, w] -> [N, C, *size], bilinear, aligned
    if size[0] * size[1] * x.shape[0] * x.shape[1] <= _INTERPOLATE_MAX_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.shape[0] * x.shape[1] * size[0] * size[1] // _INTERPOLATE_MAX_ELEMENTS + 1
    parts = [F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in x.chunk(chunks, dim=0)]
    return torch.cat(parts, dim=0)


# ----------------------------------------------------------------------------------------------------------------------
# RefineNet fusion
# ----------------------------------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    """x -> relu(x) + conv(relu(conv(relu(x)))).

    The skip carries relu(x), not x: the reference applies an in-place ReLU to its input before the convolutions, so
    its residual addition adds the rectified tensor. The released weights were trained with that.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, h, w]
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FusionBlock(nn.Module):
    """RefineNet step: (coarser + RCU(skip)) -> RCU -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int, has_skip: bool = True) -> None:
        super().__init__()
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size if size is not None else (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(_interpolate(x, size))


class _Scratch(nn.Module):
    """Container under the checkpoints' ``scratch.`` prefix: per-level 3x3 convs, fusion blocks and output convs."""

    def __init__(self, out_channels: Sequence[int], features: int, head_features: int, output_dim: int) -> None:
        super().__init__()
        for i, c in enumerate(out_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_skip=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_features, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_features, output_dim, kernel_size=1),
        )


# ----------------------------------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------------------------------


class DPTHead(nn.Module):
    """Dense prediction from 4 aggregator layers (VGGT's DPTHead; with a shortcut and AdaLN time, MoVieS's GSDPTHead).

    Args:
        dim_in: token channels; output_dim: predicted channels + 1 confidence channel; patch_size: pixels per token
        side; features / out_channels / head_features: widths (VGGT: 256 / (256, 512, 1024, 1024) / 32); layers: the
        4 aggregator layers read (fine to coarse); activation / conf_activation: output activations; pos_embed: add
        the sin-cos position map; shortcut_dim: channels of a per-pixel input map whose 2-layer conv output is added
        before activation (0 = none); time_dim: size of the time embedding for AdaLN (0 = none, zero-initialised).
    """

    def __init__(
        self,
        dim_in: int,
        output_dim: int,
        patch_size: int = 14,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layers: Sequence[int] = (4, 11, 17, 23),
        head_features: int = 32,
        activation: Activation = "linear",
        conf_activation: ConfActivation = "expp1",
        pos_embed: bool = True,
        shortcut_dim: int = 0,
        time_dim: int = 0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.layers = tuple(layers)
        self.activation = activation
        self.conf_activation = conf_activation
        self.use_pos_embed = pos_embed
        self.time_dim = time_dim
        self.checkpointing = False
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, kernel_size=1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = _Scratch(oc, features, head_features, output_dim)
        if shortcut_dim > 0:
            self.shortcut = nn.Sequential(
                nn.Conv2d(shortcut_dim, head_features, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(head_features, output_dim, kernel_size=1),
            )
        if time_dim > 0:
            self.time_embed = nn.Linear(time_dim, 2 * dim_in)
            nn.init.zeros_(self.time_embed.weight)
            nn.init.zeros_(self.time_embed.bias)

    @classmethod
    def from_config(cls, config: DPTConfig) -> DPTHead:
        return cls(
            dim_in=config.dim_in,
            output_dim=config.output_dim,
            patch_size=config.patch_size,
            features=config.features,
            out_channels=config.out_channels,
            layers=config.layers,
            head_features=config.head_features,
            activation=config.activation,
            conf_activation=config.conf_activation,
            pos_embed=config.pos_embed,
            shortcut_dim=config.shortcut_dim,
            time_dim=config.time_dim,
        )

    def forward(
        self,
        tokens: Sequence[Tensor | None],  # per aggregator layer [B, S, P, dim_in] (None where not kept)
        patch_start_idx: int,
        image_size: tuple[int, int],  # (H, W)
        shortcut: Tensor | None = None,  # [B, S, shortcut_dim, H, W]
        time_embedding: Tensor | None = None,  # [B, time_dim], or [B, Q, time_dim]: Q times in one pass
        frames_chunk_size: int | None = 8,
    ) -> tuple[Tensor, Tensor]:  # prediction [B, (Q,) S, H, W, output_dim - 1], confidence [B, (Q,) S, H, W]
        """Per-pixel prediction and confidence, computed ``frames_chunk_size`` frames at a time (same numbers).

        With Q time embeddings [B, Q, time_dim] the head runs once on a batch of B x Q (the token LayerNorm once, the
        AdaLN and everything after it per time; the shortcut map is shared), as Q calls with [B, time_dim] would
        give up to floating-point rounding, with fewer and larger kernels."""
        if (shortcut is None) != (not hasattr(self, "shortcut")):
            raise ValueError("DPTHead: pass a shortcut map exactly when the head has a shortcut")
        if (time_embedding is None) != (self.time_dim == 0):
            raise ValueError("DPTHead: pass a time embedding exactly when the head is time-conditioned")
        num_frames = tokens[self.layers[0]].shape[1]
        chunk = num_frames if not frames_chunk_size or frames_chunk_size >= num_frames else frames_chunk_size
        preds, confs = [], []
        for start in range(0, num_frames, chunk):
            frames = slice(start, min(start + chunk, num_frames))
            args = (
                tokens,
                patch_start_idx,
                image_size,
                frames,
                None if shortcut is None else shortcut[:, frames],
                time_embedding,
            )
            if self.checkpointing and torch.is_grad_enabled():
                p, c = torch.utils.checkpoint.checkpoint(self._forward_frames, *args, use_reentrant=False)
            else:
                p, c = self._forward_frames(*args)
            preds.append(p)
            confs.append(c)
        pred, conf = torch.cat(preds, dim=1), torch.cat(confs, dim=1)
        if time_embedding is not None and time_embedding.dim() == 3:  # [B·Q, S, ...] -> [B, Q, S, ...]
            shape = time_embedding.shape[:2]
            pred, conf = pred.unflatten(0, shape), conf.unflatten(0, shape)
        return pred, conf

    def _forward_frames(
        self,
        tokens: Sequence[Tensor | None],
        patch_start_idx: int,
        image_size: tuple[int, int],
        frames: slice,
        shortcut: Tensor | None,
        time_embedding: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        height, width = image_size
        ph, pw = height // self.patch_size, width // self.patch_size
        queries = time_embedding is not None and time_embedding.dim() == 3  # Q times: a batch of B x Q
        if time_embedding is not None:
            mod = self.time_embed(time_embedding.to(self.time_embed.weight.dtype))  # [B, (Q,) 2 dim_in]
            scale, shift = mod[..., None, None, :].chunk(2, dim=-1)  # [B, (Q,) 1, 1, dim_in]
        # 1. Token layers -> multi-scale feature maps
        maps = []
        for level, layer in enumerate(self.layers):
            x = self.norm(tokens[layer][:, frames, patch_start_idx:])  # [B, s, ph*pw, C]
            if queries:
                x = (x[:, None] * (1 + scale) + shift).flatten(0, 1)  # [B·Q, s, ph*pw, C]
            elif time_embedding is not None:
                x = x * (1 + scale) + shift
            batch, s = x.shape[:2]
            x = x.reshape(batch * s, ph, pw, -1).permute(0, 3, 1, 2)
            x = self.projects[level](x)
            if self.use_pos_embed:
                x = self._add_pos_embed(x, width / height)
            maps.append(self.resize_layers[level](x))
        # 2. RefineNet fusion, coarse to fine
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i + 1}_rn")(m) for i, m in enumerate(maps))
        out = sc.refinenet4(l4, size=tuple(l3.shape[-2:]))
        out = sc.refinenet3(out, l3, size=tuple(l2.shape[-2:]))
        out = sc.refinenet2(out, l2, size=tuple(l1.shape[-2:]))
        out = sc.refinenet1(out, l1)
        out = sc.output_conv1(out)
        # 3. Full resolution output
        out = _interpolate(out, (ph * self.patch_size, pw * self.patch_size))
        if self.use_pos_embed:
            out = self._add_pos_embed(out, width / height)
        out = sc.output_conv2(out)
        if shortcut is not None:
            short = self.shortcut(shortcut.flatten(0, 1).to(out.dtype))  # [B*s, C, H, W]
            if queries:  # the same map for every time: computed once, added to each
                out = (out.unflatten(0, (-1, time_embedding.shape[1], s)) + short.unflatten(0, (-1, 1, s))).flatten(
                    0, 2
                )
            else:
                out = out + short
        # float32 from here (the activations, e.g. exp for depth, as autocast runs them), also with bf16 weights
        out = out.permute(0, 2, 3, 1).float()  # [B*s, H, W, C]
        pred = activate_prediction(out[..., :-1], self.activation)
        conf = activate_confidence(out[..., -1], self.conf_activation)
        return pred.unflatten(0, (batch, s)), conf.unflatten(0, (batch, s))

    @staticmethod
    def _add_pos_embed(x: Tensor, aspect_ratio: float, ratio: float = 0.1) -> Tensor:  # [N, C, h, w]
        pos = cached_uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, x.dtype, x.device)
        return (x + ratio * pos).to(x.dtype)


__all__ = [
    "DPTConfig",
    "DPTHead",
    "activate_confidence",
    "activate_prediction",
    "infer_dpt_config",
    "inverse_log",
    "uv_position_embedding",
]
