"""VGGT's configuration (`VGGTConfig` and its parts: encoder, aggregator, camera head, DPT layers) and how it is
read from a checkpoint's tensor shapes (`infer_*_config`), so one code path builds VGGT-1B, MoVieS and any small
configuration (`diff4splat.models.vggt` builds the modules)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from diff4splat.models.dpt import DPTConfig
from diff4splat.weights import WeightsError

log = logging.getLogger("diff4splat.models.vggt")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGT_LAYERS = (4, 11, 17, 23)  # the aggregator layers VGGT-1B's DPT heads read


def dpt_layers(depth: int) -> tuple[int, int, int, int]:
    """The aggregator layers a DPT head reads by default: VGGT-1B's (4, 11, 17, 23) for its 24 layers, the same
    relative depths otherwise (layer l of 24 -> round((l + 1) depth / 24) - 1; a 4-layer aggregator: 0, 1, 2, 3)."""
    return tuple(min(depth - 1, max(0, math.floor((l + 1) * depth / 24 + 0.5) - 1)) for l in VGGT_LAYERS)


# ----------------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """DINOv2 ViT with registers. Defaults: ViT-L/14 as in VGGT-1B (position grid 37 = 518 / 14)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_size: int = 14
    pos_grid: int = 37  # the learned position embedding covers pos_grid x pos_grid patches (+ CLS)


@dataclass
class AggregatorConfig:
    """Alternating frame / global attention. Defaults: VGGT-1B. ``extra_dim`` / ``time_dim`` > 0 add MoVieS's pose
    token (from a 9-d pose encoding) / input-time token (from a sin-cos time embedding) to every frame."""

    embed_dim: int = 1024
    depth: int = 24  # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    layer_scale_init: float = 0.01
    extra_dim: int = 0
    time_dim: int = 0


@dataclass
class CameraHeadConfig:
    dim_in: int = 2048
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_iterations: int = 4


@dataclass
class VGGTConfig:
    """VGGT without its track head. Defaults: facebook/VGGT-1B."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: CameraHeadConfig | None = field(default_factory=CameraHeadConfig)
    depth_head: DPTConfig | None = field(default_factory=lambda: DPTConfig(output_dim=2, activation="exp"))
    point_head: DPTConfig | None = field(default_factory=lambda: DPTConfig(output_dim=4, activation="inv_log"))


# ----------------------------------------------------------------------------------------------------------------------
# Transformer parts
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# Config inference from tensor shapes, checkpoint reading
# ----------------------------------------------------------------------------------------------------------------------


def _count(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state_dict if (m := regex.match(k))}
    if found != set(range(len(found))):
        raise WeightsError(f"blocks matching {pattern!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _require(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise WeightsError(f"cannot infer the architecture: tensor {key!r} is missing")
    return state_dict[key]


def _mlp_ratio(state_dict: Mapping[str, Tensor], fc1_key: str, dim: int) -> float:
    hidden = _require(state_dict, fc1_key).shape[0]
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise WeightsError(f"{fc1_key}: hidden width {hidden} is not a ratio of {dim}")
    return ratio


def infer_encoder_config(
    state_dict: Mapping[str, Tensor], prefix: str, *, num_heads: int | None = None
) -> EncoderConfig:
    """DINOv2 encoder architecture from ``state_dict[prefix + ...]``; heads default to head dim 64 (DINOv2)."""
    dim = _require(state_dict, prefix + "cls_token").shape[-1]
    grid = math.isqrt(_require(state_dict, prefix + "pos_embed").shape[1] - 1)
    registers = state_dict[prefix + "register_tokens"].shape[1] if prefix + "register_tokens" in state_dict else 0
    return EncoderConfig(
        embed_dim=dim,
        depth=_count(state_dict, re.escape(prefix) + r"blocks\.(\d+)\.norm1\.weight$"),
        num_heads=num_heads or max(dim // 64, 1),
        mlp_ratio=_mlp_ratio(state_dict, prefix + "blocks.0.mlp.fc1.weight", dim),
        num_register_tokens=registers,
        patch_size=_require(state_dict, prefix + "patch_embed.proj.weight").shape[-1],
        pos_grid=grid,
    )


def infer_aggregator_config(state_dict: Mapping[str, Tensor], prefix: str) -> AggregatorConfig:
    """Aggregator architecture; the heads come from the qk-norm width (head dim)."""
    dim = _require(state_dict, prefix + "camera_token").shape[-1]
    q_norm = prefix + "frame_blocks.0.attn.q_norm.weight"
    if q_norm not in state_dict:
        raise WeightsError(f"{q_norm} is missing: an aggregator without qk-norm does not say its number of heads")
    extra, time = prefix + "extra_embed.weight", prefix + "time_embed.weight"
    return AggregatorConfig(
        embed_dim=dim,
        depth=_count(state_dict, re.escape(prefix) + r"frame_blocks\.(\d+)\.norm1\.weight$"),
        num_heads=dim // state_dict[q_norm].shape[0],
        mlp_ratio=_mlp_ratio(state_dict, prefix + "frame_blocks.0.mlp.fc1.weight", dim),
        num_register_tokens=_require(state_dict, prefix + "register_token").shape[2],
        qk_norm=True,
        extra_dim=state_dict[extra].shape[1] if extra in state_dict else 0,
        time_dim=state_dict[time].shape[1] if time in state_dict else 0,
    )


def infer_camera_head_config(state_dict: Mapping[str, Tensor], prefix: str, *, num_heads: int) -> CameraHeadConfig:
    dim = _require(state_dict, prefix + "token_norm.weight").shape[0]
    return CameraHeadConfig(
        dim_in=dim,
        trunk_depth=_count(state_dict, re.escape(prefix) + r"trunk\.(\d+)\.norm1\.weight$"),
        num_heads=num_heads,
        mlp_ratio=_mlp_ratio(state_dict, prefix + "trunk.0.mlp.fc1.weight", dim),
    )


def drop_track_head(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """The state dict without ``track_head.*`` (not implemented here), reported in one log line when present."""
    kept = {k: v for k, v in state_dict.items() if not k.startswith("track_head.")}
    if len(kept) != len(state_dict):
        log.info(
            "%s: dropped %d track_head.* tensors (VGGT's track head is not implemented)",
            source,
            len(state_dict) - len(kept),
        )
    return kept
