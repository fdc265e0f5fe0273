"""Transformer pieces shared by the models: RMSNorm, 2D rotary embeddings, qk-normed SDPA attention, MLP, blocks,
and the frame/global alternating trunk over per-frame token sets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

AttentionPattern = Literal["alternating", "global"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def rope_2d(
    positions: Tensor,  # [L, 2] integer (row, col) per token; rows of -1 mark tokens without a position
    head_dim: int,
    base: float = 100.0,
) -> tuple[Tensor, Tensor]:  # cos, sin: [L, head_dim]
    """Rotary tables for 2D positions: half the head's channel pairs rotate with the row, half with the column
    (frequency ``base``, as VGGT's RoPE-100). Tokens with position -1 (camera / time tokens) get no rotation."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter))
    angles = torch.cat([positions[:, :1].float() * inv, positions[:, 1:2].float() * inv], dim=-1)  # [L, hd/2]
    angles = torch.where(positions[:, :1] < 0, torch.zeros_like(angles), angles)
    angles = torch.cat([angles, angles], dim=-1)  # [L, hd] (rotate-half layout)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [..., L, hd] by the tables [L, hd] (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:  # x [B, L, D]
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, hd]
        return self.proj(out.transpose(1, 2).reshape(b, l, -1))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (init 0.01, as VGGT) for stable training from scratch."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, layer_scale: float = 0.01
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x), rope)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class FrameGlobalTrunk(nn.Module):
    """Blocks over tokens grouped by frame: ``alternating`` = frame attention (within each frame) then global
    attention (across all frames) per pair of blocks; ``global`` = global attention in every block.

    ``depth`` counts blocks, so ``alternating`` with depth 16 has 8 frame and 8 global blocks.
    """

    _no_split_modules = ["Block"]

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        pattern: AttentionPattern = "alternating",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if pattern not in ("alternating", "global"):
            raise ValueError(f"attention pattern must be 'alternating' or 'global', got {pattern!r}")
        self.pattern = pattern
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.gradient_checkpointing = gradient_checkpointing
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: Tensor,  # [B, F, L, D] tokens per frame
        rope: tuple[Tensor, Tensor] | None = None,  # tables for the L tokens of one frame
    ) -> Tensor:  # [B, F, L, D]
        b, f, l, d = x.shape
        rope_global = None if rope is None else (rope[0].repeat(f, 1), rope[1].repeat(f, 1))
        for i, block in enumerate(self.blocks):
            frame_attention = self.pattern == "alternating" and i % 2 == 0
            if frame_attention:
                h, r = x.reshape(b * f, l, d), rope
            else:
                h, r = x.reshape(b, f * l, d), rope_global
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, r, use_reentrant=False)
            else:
                h = block(h, r)
            x = h.reshape(b, f, l, d)
        return self.norm(x)
