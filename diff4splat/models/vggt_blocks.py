"""VGGT's transformer building blocks: pre-norm blocks with qk-norm and LayerScale, and the 2D RoPE of patch tokens
(base 100; special tokens unrotated), shared by the DINOv2 encoder, the aggregator and the camera head
(`diff4splat.models.vggt`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out or dim_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def rope_2d_tables(
    positions: Tensor,  # [N, 2] integer (y, x)
    head_dim: int,
    base: float,
) -> tuple[Tensor, Tensor]:  # cos, sin [N, head_dim]
    """cos / sin tables of VGGT's 2D RoPE: the first half of each head rotates with y, the second with x, each half
    as standard rotate-half RoPE with ``head_dim / 4`` frequencies ``base^(-2k / (head_dim / 2))``."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    tables = []
    for axis in (0, 1):
        angles = positions[:, axis].float()[:, None] * inv_freq[None, :]
        tables.append(torch.cat([angles, angles], dim=-1))
    angles = torch.cat(tables, dim=-1)
    return angles.cos(), angles.sin()


def apply_rope_2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # x [..., N, D], cos/sin [N, D]
    """Rotate ``x`` by the tables of `rope_2d_tables` (rotate-half within each of the y and x halves)."""
    quarters = x.unflatten(-1, (2, 2, x.shape[-1] // 4))  # [..., (y|x), (first|second), D/4]
    rotated = torch.stack([-quarters[..., 1, :], quarters[..., 0, :]], dim=-2).flatten(-3)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with optional qk-norm (LayerNorm per head) and 2D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if qk_norm:
            self.q_norm = nn.LayerNorm(self.head_dim)
            self.k_norm = nn.LayerNorm(self.head_dim)
        self.qk_norm = qk_norm
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:  # [B, N, C]
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # rotated in float32 (as under autocast, where qk-norm returns float32), also in bf16
            q, k = apply_rope_2d(q.float(), *rope).to(v.dtype), apply_rope_2d(k.float(), *rope).to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        layer_scale_init: float = 0.01,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


def _init_linear_timm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
