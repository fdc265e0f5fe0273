"""VGGT (Visual Geometry Grounded Transformer; facebook/VGGT-1B): the aggregator, the camera head and the DPT depth /
point heads, written from the released design so that ``model.pt`` loads strictly and the numbers match.

- **Encoder** (``aggregator.patch_embed``): DINOv2 ViT-L/14 with 4 registers; per frame, 14x14 patches + CLS +
  registers + learned (interpolated) position embedding, 24 pre-norm blocks with LayerScale, final LayerNorm; its
  normalised patch tokens are the aggregator's input.
- **Aggregator**: per frame [camera token, 4 register tokens, patch tokens] (the first frame uses its own learned
  camera and register tokens, the others share a second set), then ``depth`` pairs of blocks, a *frame* block
  (attention inside each frame) followed by a *global* block (attention over all frames' tokens). Blocks use qk-norm,
  LayerScale (init 0.01) and 2D RoPE (base 100) on patch tokens (special tokens sit at position 0, i.e. unrotated).
  Layer ``i``'s output is ``frame_i ‖ global_i`` [B, S, P, 2C].
- **Camera head**: the last layer's camera tokens through a 4-block trunk, refined 4 times with AdaLN from the
  previous pose encoding; output [B, S, 9] = (translation 3, quaternion xyzw 4, FoV h, FoV w) of the W2C pose.
- **Depth / point heads**: `diff4splat.models.dpt.DPTHead` on layers (4, 11, 17, 23).

The track head of the release is not implemented: its ``track_head.*`` tensors are dropped (and reported) when a
VGGT-1B checkpoint loads. MoVieS (`diff4splat.models.movies`) reuses the encoder, the aggregator (with a pose token
and a time token) and the DPT heads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.models.dpt import DPTHead, infer_dpt_config
from diff4splat.models.vggt_blocks import (
    Block,
    Mlp,
    _init_linear_timm,
    rope_2d_tables,
)
from diff4splat.models.vggt_config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGT_LAYERS,
    AggregatorConfig,
    CameraHeadConfig,
    EncoderConfig,
    VGGTConfig,
    dpt_layers,
    drop_track_head,
    infer_aggregator_config,
    infer_camera_head_config,
    infer_encoder_config,
)
from diff4splat.weights import load_state_checked, read_state_dict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder, aggregator, camera head
# ----------------------------------------------------------------------------------------------------------------------


class PatchProjection(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:  # [N, 3, H, W] -> [N, h*w, C]
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoEncoder(nn.Module):
    """DINOv2 ViT with registers (the release's ``DinoVisionTransformer``), inference path.

    Input [N, 3, H, W] ImageNet-normalised, H and W multiples of the patch size; output the final-normed patch tokens
    [N, (H/p)(W/p), C]. The learned position embedding is resized bicubically (antialiased) to the patch grid unless
    the image is square with exactly ``pos_grid``² patches.
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        patch_size: int = 14,
        pos_grid: int = 37,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pos_grid = pos_grid
        self.num_register_tokens = num_register_tokens
        self.patch_embed = PatchProjection(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # unused at inference (DINOv2's masked-token training) but part of the checkpoints; frozen as released
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qk_norm=False, layer_scale_init=1.0, norm_eps=1e-6)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        self.apply(_init_linear_timm)

    @classmethod
    def from_config(cls, config: EncoderConfig) -> DinoEncoder:
        return cls(
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            num_register_tokens=config.num_register_tokens,
            patch_size=config.patch_size,
            pos_grid=config.pos_grid,
        )

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:  # [1, 1 + h*w, C]
        if grid_h * grid_w == self.pos_grid**2 and grid_h == grid_w:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, self.pos_grid, self.pos_grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        n, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"DinoEncoder: image size {height}x{width} is not a multiple of {self.patch_size}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height // self.patch_size, width // self.patch_size, tokens.dtype)
        if self.num_register_tokens:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(n, -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 1 + self.num_register_tokens :]


def first_and_rest(tokens: Tensor, batch: int, frames: int) -> Tensor:  # [1, 2, X, C] -> [B*S, X, C]
    """Frame 0 gets the first learned set of special tokens, every other frame the second."""
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    rest = tokens[:, 1:].expand(batch, frames - 1, *tokens.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *tokens.shape[2:])


class Aggregator(nn.Module):
    """VGGT's alternating-attention aggregator (optionally with MoVieS's pose and time tokens).

    Tokens per frame: [time token?, pose token?, camera token, register tokens, patch tokens]; ``patch_start_idx``
    counts the special tokens. With ``patch_embed=None`` (MoVieS keeps the encoder outside) the patch tokens of
    ``patch_size`` pixel patches are passed to `forward`.
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        qk_norm: bool = True,
        rope_freq: float = 100.0,
        layer_scale_init: float = 0.01,
        extra_dim: int = 0,
        time_dim: int = 0,
        patch_size: int = 14,
        patch_embed: DinoEncoder | None = None,
    ) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.patch_size = patch_embed.patch_size if patch_embed is not None else patch_size
        self.depth = depth
        self.rope_freq = rope_freq
        self.head_dim = embed_dim // num_heads
        if rope_freq > 0 and self.head_dim % 4:
            raise ValueError(f"Aggregator: 2D RoPE needs a head dim divisible by 4, got {self.head_dim}")

        def block() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qk_norm=qk_norm, layer_scale_init=layer_scale_init)

        self.frame_blocks = nn.ModuleList([block() for _ in range(depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(depth)])
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)
        self.extra_dim, self.time_dim = extra_dim, time_dim
        if extra_dim > 0:
            self.extra_embed = nn.Linear(extra_dim, embed_dim)
        if time_dim > 0:
            self.time_embed = nn.Linear(time_dim, embed_dim)
        self.patch_start_idx = 1 + num_register_tokens + (extra_dim > 0) + (time_dim > 0)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(
        cls, config: AggregatorConfig, patch_embed: DinoEncoder | None = None, patch_size: int = 14
    ) -> Aggregator:
        return cls(
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            num_register_tokens=config.num_register_tokens,
            qk_norm=config.qk_norm,
            rope_freq=config.rope_freq,
            layer_scale_init=config.layer_scale_init,
            extra_dim=config.extra_dim,
            time_dim=config.time_dim,
            patch_size=patch_size,
            patch_embed=patch_embed,
        )

    def normalize(self, images: Tensor) -> Tensor:  # [B, S, 3, H, W] in [0, 1] -> ImageNet-normalised
        return (images - self.image_mean) / self.image_std

    def forward(
        self,
        images: Tensor,  # [B, S, 3, H, W] in [0, 1] (only its shape is used when patch_tokens are given)
        patch_tokens: Tensor | None = None,  # [B*S, h*w, C]
        extra: Tensor | None = None,  # [B, S, extra_dim] (MoVieS: the pose encoding)
        time: Tensor | None = None,  # [B, S, time_dim] (MoVieS: the input-time embedding)
        keep_layers: Iterable[int] | None = None,
    ) -> tuple[list[Tensor | None], int]:
        """Per layer ``frame ‖ global`` outputs [B, S, P, 2C] (None for layers not in ``keep_layers``; all kept by
        default) and ``patch_start_idx``."""
        batch, frames, _, height, width = images.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        # 1. Patch tokens and special tokens
        if patch_tokens is None:
            if self.patch_embed is None:
                raise ValueError("Aggregator: no patch_embed, so pass patch_tokens")
            patch_tokens = self.patch_embed(self.normalize(images).flatten(0, 1))
        special = [first_and_rest(self.camera_token, batch, frames), first_and_rest(self.register_token, batch, frames)]
        if self.extra_dim > 0:
            if extra is None:
                raise ValueError("Aggregator: this aggregator has a pose token; pass `extra` [B, S, extra_dim]")
            special.insert(0, self.extra_embed(extra.reshape(batch * frames, -1))[:, None])
        if self.time_dim > 0:
            if time is None:
                raise ValueError("Aggregator: this aggregator has a time token; pass `time` [B, S, time_dim]")
            special.insert(0, self.time_embed(time.reshape(batch * frames, -1))[:, None])
        tokens = torch.cat([*special, patch_tokens], dim=1)  # [B*S, P, C]
        num_tokens, dim = tokens.shape[1:]
        # 2. RoPE tables: patch (y, x) at 1-based grid positions, special tokens at 0 (identity rotation)
        frame_rope = global_rope = None
        if self.rope_freq > 0:
            ys, xs = torch.meshgrid(
                torch.arange(grid_h, device=tokens.device), torch.arange(grid_w, device=tokens.device), indexing="ij"
            )
            pos = torch.stack([ys.flatten(), xs.flatten()], dim=-1) + 1
            pos = torch.cat([pos.new_zeros(self.patch_start_idx, 2), pos], dim=0)
            cos, sin = rope_2d_tables(pos, self.head_dim, self.rope_freq)
            frame_rope, global_rope = (cos, sin), (cos.repeat(frames, 1), sin.repeat(frames, 1))
        # 3. Alternating frame / global blocks
        keep = set(range(self.depth)) if keep_layers is None else {i % self.depth for i in keep_layers}
        outputs: list[Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(batch * frames, num_tokens, dim), frame_rope)
            frame_out = tokens.reshape(batch, frames, num_tokens, dim)
            tokens = self.global_blocks[i](tokens.reshape(batch, frames * num_tokens, dim), global_rope)
            global_out = tokens.reshape(batch, frames, num_tokens, dim)
            outputs.append(torch.cat([frame_out, global_out], dim=-1) if i in keep else None)
        return outputs, self.patch_start_idx


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class CameraHead(nn.Module):
    """VGGT's camera head: camera tokens of the last layer -> pose encoding [B, S, 9] (T 3, quat xyzw 4, FoV h, w),
    refined ``num_iterations`` times (each step embeds the previous, detached estimate and modulates the tokens)."""

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_iterations: int = 4,
    ) -> None:
        super().__init__()
        self.target_dim = 9
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(
            *[Block(dim_in, num_heads, mlp_ratio, qk_norm=False, layer_scale_init=0.01) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    @classmethod
    def from_config(cls, config: CameraHeadConfig) -> CameraHead:
        return cls(config.dim_in, config.trunk_depth, config.num_heads, config.mlp_ratio, config.num_iterations)

    def forward(self, last_layer: Tensor) -> list[Tensor]:  # [B, S, P, 2C] -> num_iterations x [B, S, 9]
        tokens = self.token_norm(last_layer[:, :, 0])
        batch, frames, _ = tokens.shape
        estimate = None
        estimates = []
        for _ in range(self.num_iterations):
            if estimate is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                cond = self.embed_pose(estimate.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * _modulate(self.adaln_norm(tokens), shift, scale) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            estimate = delta if estimate is None else estimate + delta
            # activations: translation and quaternion linear, field of view ReLU
            estimates.append(torch.cat([estimate[..., :7], F.relu(estimate[..., 7:])], dim=-1))
        return estimates


# ----------------------------------------------------------------------------------------------------------------------
# VGGT
# ----------------------------------------------------------------------------------------------------------------------


class VGGT(nn.Module):
    """VGGT-1B without the track head: images -> aggregator tokens -> camera, depth and point maps.

    Parameter names are the release's (``aggregator.patch_embed.*``, ``aggregator.frame_blocks.*``,
    ``camera_head.*``, ``depth_head.*``, ``point_head.*``); heads are None when their config is None.
    """

    def __init__(self, config: VGGTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VGGTConfig()
        if config.encoder.embed_dim != config.aggregator.embed_dim:
            raise ValueError("VGGTConfig: the encoder and aggregator widths must match")
        self.aggregator = Aggregator.from_config(config.aggregator, DinoEncoder.from_config(config.encoder))
        self.camera_head = CameraHead.from_config(config.camera_head) if config.camera_head else None
        self.depth_head = DPTHead.from_config(config.depth_head) if config.depth_head else None
        self.point_head = DPTHead.from_config(config.point_head) if config.point_head else None

    def forward(self, images: Tensor, frames_chunk_size: int | None = 8) -> dict[str, Tensor | list[Tensor]]:
        """images [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1], H and W multiples of 14. Returns (as the release):

        - ``pose_enc`` [B, S, 9] (and ``pose_enc_list``, one per refinement): W2C translation, quaternion (xyzw),
          FoV h, FoV w, in the first camera's frame;
        - ``depth`` [B, S, H, W, 1], ``depth_conf`` [B, S, H, W];
        - ``world_points`` [B, S, H, W, 3], ``world_points_conf`` [B, S, H, W].
        """
        if images.ndim == 4:
            images = images[None]
        keep = {self.aggregator.depth - 1}
        for head in (self.depth_head, self.point_head):
            if head is not None:
                keep.update(head.layers)
        tokens, patch_start_idx = self.aggregator(images, keep_layers=keep)
        out: dict[str, Tensor | list[Tensor]] = {}
        size = tuple(images.shape[-2:])
        if self.camera_head is not None:
            out["pose_enc_list"] = self.camera_head(tokens[-1])
            out["pose_enc"] = out["pose_enc_list"][-1]
        if self.depth_head is not None:
            out["depth"], out["depth_conf"] = self.depth_head(
                tokens, patch_start_idx, size, frames_chunk_size=frames_chunk_size
            )
        if self.point_head is not None:
            out["world_points"], out["world_points_conf"] = self.point_head(
                tokens, patch_start_idx, size, frames_chunk_size=frames_chunk_size
            )
        return out

    # -- config inference and loading ---------------------------------------------------------------------------------

    @classmethod
    def config_from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        encoder_num_heads: int | None = None,
        camera_num_heads: int | None = None,
        layers: Sequence[int] | None = None,
    ) -> VGGTConfig:
        """The architecture of a VGGT state dict, read from its tensor shapes.

        What the shapes cannot say: the DINO encoder's heads (default: head dim 64, as every DINOv2), the camera
        head's heads (default: the aggregator's, as VGGT-1B) and the DPT heads' layers (default: `dpt_layers`, VGGT-1B's
        at 24 layers).
        """
        encoder = infer_encoder_config(state_dict, "aggregator.patch_embed.", num_heads=encoder_num_heads)
        aggregator = infer_aggregator_config(state_dict, "aggregator.")
        layers = dpt_layers(aggregator.depth) if layers is None else tuple(layers)
        camera = None
        if "camera_head.token_norm.weight" in state_dict:
            camera = infer_camera_head_config(
                state_dict, "camera_head.", num_heads=camera_num_heads or aggregator.num_heads
            )
        heads = {}
        for name, activation in (("depth_head", "exp"), ("point_head", "inv_log")):
            if f"{name}.norm.weight" in state_dict:
                heads[name] = infer_dpt_config(
                    dict(state_dict), f"{name}.", patch_size=encoder.patch_size, layers=layers, activation=activation
                )
        return VGGTConfig(
            encoder=encoder,
            aggregator=aggregator,
            camera_head=camera,
            depth_head=heads.get("depth_head"),
            point_head=heads.get("point_head"),
        )

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], source: str = "state dict", **facts) -> VGGT:
        """A VGGT built from the shapes of ``state_dict`` and loaded from it strictly (track head tensors, which this
        implementation lacks, are dropped and reported). ``facts``: see `config_from_state_dict`."""
        state_dict = drop_track_head(state_dict, source)
        model = cls(cls.config_from_state_dict(state_dict, **facts))
        load_state_checked(model, state_dict, source, "VGGT")
        return model

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **facts) -> VGGT:
        """``facebook/VGGT-1B``'s ``model.pt`` (``torch.load(weights_only=True)``) or ``model.safetensors``."""
        return cls.from_state_dict(read_state_dict(path, "VGGT checkpoint"), source=str(path), **facts)


__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "CameraHead",
    "CameraHeadConfig",
    "DinoEncoder",
    "EncoderConfig",
    "VGGT",
    "VGGTConfig",
    "VGGT_LAYERS",
    "dpt_layers",
    "drop_track_head",
    "infer_aggregator_config",
    "infer_camera_head_config",
    "infer_encoder_config",
    "read_state_dict",
]
