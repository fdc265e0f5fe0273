"""LRDM: the (latent) dynamic reconstruction model. Frames or video latents + cameras + times -> deformable 3D
Gaussians in one forward pass.

Two input encoders behind one model (``encoder``):

- ``rgb`` (the released code's design): frames [B, F, 3, H, W] are patchified (``patch_size`` pixels per token side);
- ``latent`` (the paper's design): Wan video latents [B, C, T, H/16, W/16] (C = 48 for Wan2.2, 16 for Wan2.1 with a
  stride of 8), one token per latent cell, decoded back to the F = 1 + 4(T - 1) frames by a light 3D-deconvolution
  decoder (causal: latent frame 0 is frame 0, each later latent frame covers 4 frames).

Tokens of each (latent) frame are [pose token, input-time token, patch tokens]; camera conditioning is a Plücker
patch embedding added to the patch tokens plus the pose token's camera part, both zero-initialised, so at init the
trunk's output does not depend on the cameras. The trunk alternates frame and global attention (or global only) with
2D RoPE and qk-norm. Heads predict, per Gaussian-grid cell (one per ``gaussian_stride``² pixels of each Gaussian
frame): z-depth along the pixel ray, colour (or SH), scale, rotation and opacity with the reference's activations;
the deformation head, conditioned on each query time by AdaLN (zero-initialised, final layer zero-initialised),
predicts Δμ (3), Δq (4, composed q ⊗ Δq) and Δs (3, log space), so at init every query time sees the static scene
(``deformation="means"``, an ablation: Δμ only, rotation and scale fixed over time).
Each pixel's Gaussian lives at its own frame's time; Δ(t_q) moves it to the query time (as the reference).

A third encoder, ``vggt``, is the released reconstructor itself: MoVieS's VGGSplaT (`diff4splat.models.movies`; the
VGGT aggregator on DINOv2 patch tokens, DPT heads per pixel, its own activations), held as ``backbone`` so the state
dict has exactly the keys of ``movies_ckpt.safetensors``, with its architecture in ``vggt`` (a `VGGSplatConfig`).
Its outputs map onto the same ``DeformableGaussians`` (`diff4splat.models.movies.deformable_gaussians`), including the
opacity and colour MoVieS re-predicts per query time (``opacities_t`` / ``colors_t``), so every query-time render is
MoVieS's. The rgb/latent fields (dim, depth, heads, decoder, activations) do not apply to it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.gaussians.sh import rgb_to_sh_dc
from diff4splat.geometry.cameras import camera_rays, plucker_rays
from diff4splat.geometry.rotations import matrix_to_quat, quat_multiply, quat_normalize
from diff4splat.models.dpt import DPTConfig
from diff4splat.models.movies import VGGSplat, VGGSplatConfig, deformable_gaussians, movies_config
from diff4splat.models.transformer import AttentionPattern, FrameGlobalTrunk, rope_2d
from diff4splat.models.vggt import AggregatorConfig, EncoderConfig

Encoder = Literal["rgb", "latent", "vggt"]
ScaleMode = Literal["pixel", "reference"]
Deformation = Literal["full", "means"]

GAUSSIAN_CHANNELS = 1 + 3 + 4 + 1  # depth, scale, rotation, opacity (+ colour channels, which depend on SH degree)
DEFORMATION_CHANNELS = 3 + 4 + 3  # Δμ, Δq, Δs


@dataclass
class LRDMConfig:
    """Architecture of the LRDM. Presets: ``lrdm_preset("tiny" | "base" | "large")``."""

    encoder: Encoder = "rgb"
    dim: int = 96
    depth: int = 4  # transformer blocks (alternating: half frame, half global)
    num_heads: int = 4
    mlp_ratio: float = 4.0
    attention: AttentionPattern = "alternating"
    qk_norm: bool = True
    rope_base: float = 100.0
    gradient_checkpointing: bool = False
    patch_size: int = 8  # rgb: pixels per token side
    latent_channels: int = 48  # latent: Wan2.2 = 48, Wan2.1 = 16
    latent_stride_t: int = 4  # latent: frames per latent frame (after the first)
    latent_stride_s: int = 16  # latent: pixels per latent cell side (Wan2.2 = 16, Wan2.1 = 8)
    decoder_channels: int = 32  # features per Gaussian-grid cell before the heads
    gaussian_stride: int = 1  # one Gaussian per gaussian_stride x gaussian_stride pixels
    gaussian_frame_step: int = 1  # every k-th frame emits Gaussians (1 = all frames)
    sh_degree: int = 0
    dynamic: bool = True  # False: static mode, no deformation head
    deformation: Deformation = "full"  # full: Δμ, Δq, Δs per query time (the paper); means: Δμ only (ablation)
    time_freqs: int = 10  # time embedding: sin/cos(2^k π t), k < time_freqs
    image_shortcut: bool = True  # rgb: the input pixels feed the Gaussian head directly (as the reference)
    depth_min: float = 1e-3
    depth_max: float = 100.0
    scale_mode: ScaleMode = (
        "pixel"  # pixel: scale_init·exp(x) × the cell's footprint at its depth; reference: 1e-3·softplus(x)
    )
    scale_init: float = 0.35  # pixel mode: Gaussian std at init as a fraction of the cell footprint (1.0 blurs)
    scale_max: float = 0.3
    opacity_bias: float = -2.0  # opacity = sigmoid(2x + bias); the reference's tanh(x-1)/2+1/2 is bias -2
    prune_threshold: float = 0.005  # inference-time opacity pruning (the paper's value)
    pose_dim: int = 9  # translation 3 + quaternion 4 + 2 fields of view (VGGT pose encoding)
    # vggt encoder: the VGGSplaT architecture (None: VGGT-1B's sizes). `dynamic` and `sh_degree` decide: a config
    # that disagrees gets (or loses) the motion heads and input-time token, or its Gaussian heads resized.
    vggt: VGGSplatConfig | None = None
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the experiment that produced the weights)

    def __post_init__(self) -> None:
        if self.encoder == "vggt":
            self.vggt = _resolve_vggt(self.vggt, self.dynamic, self.sh_degree, 2 * self.time_freqs)


def _resolve_vggt(cfg: VGGSplatConfig | None, dynamic: bool, sh_degree: int, time_dim: int) -> VGGSplatConfig:
    """The VGGSplaT architecture of a ``vggt`` LRDM: ``cfg`` (VGGT-1B's sizes when None), made dynamic or static and
    given ``sh_degree`` as the LRDM config says (rebuilt by `movies_config` only where it disagrees)."""
    if cfg is None:
        return movies_config(
            EncoderConfig(),
            AggregatorConfig(),
            DPTConfig(output_dim=2, activation="exp"),
            dynamic=dynamic,
            sh_degree=sh_degree,
            time_dim=time_dim,
        )
    if (cfg.motion_head is not None) == dynamic and cfg.sh_degree == sh_degree:
        return cfg
    rebuilt = movies_config(
        cfg.encoder,
        cfg.aggregator,
        cfg.depth_head,
        dynamic=dynamic,
        sh_degree=sh_degree,
        time_dim=cfg.time_dim,
        motion=cfg.motion_head,
        plucker=cfg.plucker,
    )
    return dataclasses.replace(
        rebuilt,
        mask_by_motion=cfg.mask_by_motion,
        mask_by_motion_opacity=cfg.mask_by_motion_opacity,
        activation=cfg.activation,
    )


def lrdm_preset(size: Literal["tiny", "base", "large"], **overrides) -> LRDMConfig:
    """Sizes: ``tiny`` (CPU tests and the smoke run), ``base`` (the paper: 16 blocks), ``large`` (24 frame + 24
    global blocks at width 1024, the VGGT-1B trunk shape)."""
    sizes = {
        "tiny": dict(dim=96, depth=4, num_heads=4, patch_size=8, decoder_channels=32),
        # patch 16 at 512² gives 32x32 tokens per frame, the reference's token density (patch 14 at 448-518)
        "base": dict(dim=768, depth=16, num_heads=12, patch_size=16, decoder_channels=64),
        "large": dict(dim=1024, depth=48, num_heads=16, patch_size=14, decoder_channels=64),
    }
    if size not in sizes:
        raise ValueError(f"lrdm size must be one of {sorted(sizes)}, got {size!r}")
    return LRDMConfig(**{**sizes[size], **overrides})


def time_embedding(t: Tensor, num_freqs: int) -> Tensor:  # [...] -> [..., 2 * num_freqs]
    """NeRF-style embedding of times in [0, 1]: sin and cos of 2^k π t for k < num_freqs."""
    freqs = (2.0 ** torch.arange(num_freqs, device=t.device, dtype=torch.float32)) * math.pi
    angles = t.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def pose_encoding(c2w: Tensor, fxfycxcy: Tensor) -> Tensor:  # [..., 4, 4], [..., 4] -> [..., 9]
    """VGGT-style camera encoding: w2c translation (3), w2c rotation quaternion wxyz (4), field of view x and y."""
    R = c2w[..., :3, :3].transpose(-1, -2)
    t = -(R @ c2w[..., :3, 3:4])[..., 0]
    fov = 2 * torch.atan(0.5 / fxfycxcy[..., :2].clamp_min(1e-6))
    return torch.cat([t, matrix_to_quat(R), fov], dim=-1)


def pixel_shuffle_3d(x: Tensor, st: int, ss: int) -> Tensor:
    """[B, C·st·ss·ss, T, h, w] -> [B, C, T·st, h·ss, w·ss]."""
    b, c, t, h, w = x.shape
    c_out = c // (st * ss * ss)
    x = x.view(b, c_out, st, ss, ss, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, t * st, h * ss, w * ss)


class AdaLN(nn.Module):
    """LayerNorm modulated by a condition: ``LN(x)·(1 + s(c)) + b(c)``, with s, b zero-initialised (identity)."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # x [B, ..., D], cond [B, cond_dim]
        scale, shift = self.mod(cond).chunk(2, dim=-1)
        shape = (cond.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return self.norm(x) * (1 + scale.view(shape)) + shift.view(shape)


@dataclass
class LRDMOutput:
    """What the LRDM predicts for a batch of B scenes.

    ``gaussians`` holds N = F_g · h · w Gaussians per scene (F_g Gaussian frames, (h, w) = image / gaussian_stride),
    ordered frame-major then row-major, with deformations at the T query times. ``depth`` is the predicted z-depth
    per cell, ``frame_indices`` which input frames emitted Gaussians.
    """

    gaussians: DeformableGaussians  # batch [B], N, T query times
    depth: Tensor  # [B, F_g, h, w]
    frame_indices: Tensor  # [F_g] long
    grid: tuple[int, int, int]  # (F_g, h, w)


class LRDM(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self, config: LRDMConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.dim
        if c.deformation not in ("full", "means"):
            raise ValueError(f"deformation must be 'full' or 'means', got {c.deformation!r}")
        if c.encoder == "vggt":
            self._init_vggt()
            return
        if c.encoder == "rgb":
            self.patch_embed = nn.Conv2d(3, d, c.patch_size, stride=c.patch_size)
            self.plucker_embed = nn.Conv2d(6, d, c.patch_size, stride=c.patch_size)
            cells = c.patch_size // c.gaussian_stride
            if c.patch_size % c.gaussian_stride:
                raise ValueError(f"patch_size {c.patch_size} must be divisible by gaussian_stride {c.gaussian_stride}")
            self._up = (1, cells)
        elif c.encoder == "latent":
            self.patch_embed = nn.Linear(c.latent_channels, d)
            # Plücker rays at 1/4 resolution, causal conv with kernel = stride = (4, s/4, s/4): one per latent cell
            k = c.latent_stride_s // 4
            self.plucker_embed = nn.Conv3d(6, d, (c.latent_stride_t, k, k), stride=(c.latent_stride_t, k, k))
            if c.latent_stride_s % c.gaussian_stride:
                raise ValueError(
                    f"latent_stride_s {c.latent_stride_s} must be divisible by gaussian_stride {c.gaussian_stride}"
                )
            self._up = (c.latent_stride_t, c.latent_stride_s // c.gaussian_stride)
        else:
            raise ValueError(f"encoder must be 'rgb', 'latent' or 'vggt', got {c.encoder!r}")
        nn.init.zeros_(self.plucker_embed.weight)
        nn.init.zeros_(self.plucker_embed.bias)
        self.pose_token = nn.Parameter(torch.randn(d) * 0.02)
        self.pose_embed = nn.Linear(c.pose_dim, d)
        nn.init.zeros_(self.pose_embed.weight)
        nn.init.zeros_(self.pose_embed.bias)
        self.time_token = nn.Linear(2 * c.time_freqs, d)
        self.trunk = FrameGlobalTrunk(
            d, c.depth, c.num_heads, c.mlp_ratio, c.qk_norm, c.attention, c.gradient_checkpointing
        )

        st, ss = self._up
        ch = c.decoder_channels
        self.color_channels = 3 * (c.sh_degree + 1) ** 2
        self.decoder = nn.Linear(d, st * ss * ss * ch)
        conv = nn.Conv3d if c.encoder == "latent" else nn.Conv2d
        self.refine = nn.Sequential(conv(ch, ch, 3, padding=1), nn.GELU(), conv(ch, ch, 3, padding=1), nn.GELU())
        if c.encoder == "rgb" and c.image_shortcut:
            self.shortcut = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, ch, 1))
        else:
            self.shortcut = None
        self.gaussian_head = nn.Conv2d(ch, GAUSSIAN_CHANNELS + self.color_channels, 1)
        if c.dynamic:
            self.deform_norm = AdaLN(d, 2 * c.time_freqs)
            self.deform_channels = DEFORMATION_CHANNELS if c.deformation == "full" else 3
            self.deform_head = nn.Linear(d, st * ss * ss * self.deform_channels)
            nn.init.zeros_(self.deform_head.weight)
            nn.init.zeros_(self.deform_head.bias)
        else:
            self.deform_norm = None
            self.deform_head = None
            self.deform_channels = 0

    def _init_vggt(self) -> None:
        """The ``vggt`` encoder: a VGGSplaT as ``backbone`` (activation checkpointing per transformer block and per
        DPT head pass when ``gradient_checkpointing``; the wrappers keep the state-dict keys)."""
        c = self.config
        self.backbone = VGGSplat(c.vggt)
        self.deform_head = None  # the motion heads are the backbone's (`dynamic` says whether there are any)
        self.frames_chunk_size = 8  # DPT heads run on this many frames at a time (MoVieS trains with 8)
        self.queries_per_pass = 1  # query times per time-conditioned head pass (1: MoVieS's loop; None: all)
        if c.gradient_checkpointing:
            from diff4splat.models.parallel import wrap_checkpoint

            for blocks in self._block_lists():
                for i in range(len(blocks)):
                    blocks[i] = wrap_checkpoint(blocks[i], "full")
            self.backbone.set_head_checkpointing(True)

    def _block_lists(self) -> list[nn.ModuleList]:
        if self.config.encoder == "vggt":
            agg = self.backbone.backbone
            return [self.backbone.encoder.blocks, agg.frame_blocks, agg.global_blocks]
        return [self.trunk.blocks]

    @property
    def dynamic(self) -> bool:
        """Whether the model deforms the Gaussians over time (a deformation head, or VGGSplaT's motion heads)."""
        if self.config.encoder == "vggt":
            return self.backbone.is_dynamic
        return self.deform_head is not None

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks (each a unit for compilation and FSDP), without checkpoint wrappers."""
        return [getattr(b, "_checkpoint_wrapped_module", b) for blocks in self._block_lists() for b in blocks]

    # ------------------------------------------------------------------------------------------------------------
    def forward(
        self,
        c2w: Tensor,  # [B, F, 4, 4] OpenCV c2w of the input frames (canonical, scale-normalised)
        fxfycxcy: Tensor,  # [B, F, 4]
        input_times: Tensor,  # [B, F] in [0, 1]
        query_times: Tensor,  # [B, T] in [0, 1]
        images: Tensor | None = None,  # [B, F, 3, H, W] in [0, 1] (rgb encoder)
        latents: Tensor | None = None,  # [B, C, T_lat, H/s, W/s] (latent encoder; F = 1 + 4 (T_lat - 1))
        image_size: tuple[int, int] | None = None,  # (H, W), required with latents
        canonical_only: bool = False,  # skip the deformation: the canonical Gaussians, static at the query times
    ) -> LRDMOutput:
        c = self.config
        b, f = c2w.shape[:2]
        if c.encoder == "vggt":
            return self._forward_vggt(c2w, fxfycxcy, input_times, query_times, images, canonical_only)
        # 1. Tokens per (latent) frame: patches + Plücker, pose token, input-time token
        if c.encoder == "rgb":
            if images is None:
                raise ValueError("LRDM(encoder='rgb') needs images [B, F, 3, H, W]")
            if images.shape[:2] != (b, f):
                raise ValueError(f"images {tuple(images.shape)} and c2w {tuple(c2w.shape)} disagree on (B, F)")
            height, width = images.shape[-2:]
            p = c.patch_size
            if height % p or width % p:
                raise ValueError(f"image size {height}x{width} must be divisible by patch_size {p}")
            x = self.patch_embed(images.flatten(0, 1))  # [B·F, D, h, w]
            rays = plucker_rays(c2w, fxfycxcy, height, width).flatten(0, 1).to(x.dtype)
            x = x + self.plucker_embed(rays)
            gh, gw = x.shape[-2:]
            x = x.flatten(2).transpose(1, 2).view(b, f, gh * gw, -1)  # [B, F, P, D]
            token_frames = torch.arange(f, device=c2w.device)
        else:
            if latents is None or image_size is None:
                raise ValueError("LRDM(encoder='latent') needs latents [B, C, T, h, w] and image_size (H, W)")
            height, width = image_size
            t_lat = latents.shape[2]
            if f != 1 + c.latent_stride_t * (t_lat - 1):
                raise ValueError(
                    f"{t_lat} latent frames decode to {1 + c.latent_stride_t * (t_lat - 1)} frames, "
                    f"but {f} cameras were given"
                )
            x = self.patch_embed(latents.permute(0, 2, 3, 4, 1))  # [B, T, h, w, D]
            gh, gw = x.shape[2:4]
            if (gh * c.latent_stride_s, gw * c.latent_stride_s) != (height, width):
                raise ValueError(f"latents of {gh}x{gw} cells do not match image_size {height}x{width}")
            rays = plucker_rays(c2w, fxfycxcy, height, width, stride=4).transpose(1, 2)  # [B, 6, F, H/4, W/4]
            rays = torch.cat([rays[:, :, :1].expand(-1, -1, c.latent_stride_t - 1, -1, -1), rays], dim=2)
            x = x + self.plucker_embed(rays.to(x.dtype)).permute(0, 2, 3, 4, 1)
            x = x.flatten(2, 3)  # [B, T, P, D]
            token_frames = (torch.arange(t_lat, device=c2w.device) * c.latent_stride_t).clamp(max=f - 1)
        pose = pose_encoding(c2w[:, token_frames], fxfycxcy[:, token_frames]).to(x.dtype)
        pose_tok = self.pose_token + self.pose_embed(pose)  # [B, F', D]
        time_tok = self.time_token(time_embedding(input_times[:, token_frames], c.time_freqs).to(x.dtype))
        x = torch.cat([pose_tok[:, :, None], time_tok[:, :, None], x], dim=2)  # [B, F', 2 + P, D]

        # 2. Trunk with 2D RoPE on the patch tokens
        rows, cols = torch.meshgrid(torch.arange(gh, device=x.device), torch.arange(gw, device=x.device), indexing="ij")
        pos = torch.cat([torch.full((2, 2), -1, device=x.device), torch.stack([rows, cols], -1).view(-1, 2)])
        rope = rope_2d(pos, c.dim // c.num_heads, c.rope_base)
        tokens = self.trunk(x, rope)[:, :, 2:]  # [B, F', P, D]

        # 3. Gaussian grid features, then per-cell Gaussian attributes
        feats = self._decode(self.decoder(tokens), gh, gw)  # [B, F, ch, h, w]
        if self.shortcut is not None:
            small = (
                F.adaptive_avg_pool2d(images.flatten(0, 1), feats.shape[-2:])
                if c.gaussian_stride > 1
                else (images.flatten(0, 1))
            )
            feats = feats + self.shortcut(small.to(feats.dtype)).view_as(feats)
        frame_idx = torch.arange(0, f, c.gaussian_frame_step, device=c2w.device)
        feats = feats[:, frame_idx]
        raw = self.gaussian_head(feats.flatten(0, 1)).float()  # [B·F_g, K, h, w]
        fg, (h, w) = len(frame_idx), raw.shape[-2:]
        raw = raw.view(b, fg, -1, h, w).permute(0, 1, 3, 4, 2)  # [B, F_g, h, w, K]
        cam = c2w[:, frame_idx].float()
        intr = fxfycxcy[:, frame_idx].float()
        canonical, depth = self._activate(raw, cam, intr, h, w)

        # 4. Deformation per query time (AdaLN on the tokens), zero at init
        if self.deform_head is None or canonical_only:
            dg = DeformableGaussians.static(canonical, query_times.float())
        else:
            deltas = []
            for k in range(query_times.shape[1]):
                cond = time_embedding(query_times[:, k], c.time_freqs).to(tokens.dtype)
                d_feat = self._decode(self.deform_head(self.deform_norm(tokens, cond)), gh, gw)  # [B, F, 10, h, w]
                deltas.append(d_feat[:, frame_idx].float().permute(0, 1, 3, 4, 2).reshape(b, fg * h * w, -1))
            delta = torch.stack(deltas, dim=1)  # [B, T, N, 10] (full) or [B, T, N, 3] (means)
            identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=delta.device)
            if c.deformation == "full":
                dq, ds = quat_normalize(delta[..., 3:7] + identity), delta[..., 7:10]
            else:  # Δμ only: rotation and scale stay canonical at every query time
                dq, ds = identity.expand(*delta.shape[:-1], 4).contiguous(), delta.new_zeros(*delta.shape[:-1], 3)
            dg = DeformableGaussians(
                canonical=canonical,
                times=query_times.float(),
                delta_means=delta[..., 0:3],
                delta_quats=dq,
                delta_log_scales=ds,
            )
        return LRDMOutput(gaussians=dg, depth=depth, frame_indices=frame_idx, grid=(fg, h, w))

    def _forward_vggt(
        self,
        c2w: Tensor,
        fxfycxcy: Tensor,
        input_times: Tensor,
        query_times: Tensor,
        images: Tensor | None,
        canonical_only: bool = False,
    ) -> LRDMOutput:
        """VGGSplaT's per-pixel Gaussians (one per pixel of every input frame) as ``DeformableGaussians``."""
        if images is None:
            raise ValueError("LRDM(encoder='vggt') needs images [B, F, 3, H, W]")
        if images.shape[:2] != c2w.shape[:2]:
            raise ValueError(f"images {tuple(images.shape)} and c2w {tuple(c2w.shape)} disagree on (B, F)")
        v = self.config.vggt
        out = self.backbone(
            images,
            c2w,
            fxfycxcy,
            input_times,
            query_times if self.backbone.is_dynamic and not canonical_only else None,
            frames_chunk_size=self.frames_chunk_size,
            queries_per_pass=self.queries_per_pass,
            canonical_only=canonical_only,
        )
        gaussians, depth = deformable_gaussians(out, c2w, fxfycxcy, query_times, v.activation, v.sh_degree)
        f, (h, w) = images.shape[1], images.shape[-2:]
        frames = torch.arange(f, device=c2w.device)
        return LRDMOutput(gaussians=gaussians, depth=depth, frame_indices=frames, grid=(f, h, w))

    def _decode(self, x: Tensor, gh: int, gw: int) -> Tensor:
        """Per-token channel blocks [B, F', P, st·ss·ss·C] -> per-frame grids [B, F, C, gh·ss, gw·ss]."""
        b, n, _, k = x.shape
        st, ss = self._up
        x = x.view(b, n, gh, gw, k).permute(0, 4, 1, 2, 3)  # [B, K, F', gh, gw]
        x = pixel_shuffle_3d(x, st, ss)  # [B, C, F'·st, H', W']
        if self.config.encoder == "latent":
            x = x[:, :, st - 1 :]  # causal: latent frame 0 decodes to frame 0 only
        x = x.transpose(1, 2)  # [B, F, C, H', W']
        if x.shape[2] == self.config.decoder_channels:  # Gaussian features: refine
            if self.config.encoder == "latent":
                x = self.refine(x.transpose(1, 2)).transpose(1, 2)
            else:
                bf = x.shape[:2]
                x = self.refine(x.flatten(0, 1)).view(*bf, *x.shape[2:])
        return x

    def _activate(
        self, raw: Tensor, c2w: Tensor, fxfycxcy: Tensor, h: int, w: int
    ) -> tuple[Gaussians, Tensor]:  # raw [B, F_g, h, w, K]
        c = self.config
        b, fg = raw.shape[:2]
        depth_raw, scale_raw, rot_raw, opa_raw, col_raw = raw.split([1, 3, 4, 1, self.color_channels], dim=-1)
        depth = torch.exp(depth_raw[..., 0]).clamp(c.depth_min, c.depth_max)  # [B, F_g, h, w]
        rays = camera_rays(fxfycxcy, h, w)  # [B, F_g, h, w, 3], z = 1
        p_cam = rays * depth[..., None]
        R, t = c2w[:, :, None, None, :3, :3], c2w[:, :, None, None, :3, 3]
        means = (R @ p_cam[..., None])[..., 0] + t
        if c.scale_mode == "pixel":
            footprint = depth / (fxfycxcy[..., 0, None, None] * w)  # world size of one grid cell at that depth
            scales = (footprint[..., None] * c.scale_init * torch.exp(scale_raw.clamp(max=8.0))).clamp(max=c.scale_max)
        elif c.scale_mode == "reference":
            scales = (1e-3 * F.softplus(scale_raw)).clamp(max=c.scale_max)
        else:
            raise ValueError(f"scale_mode must be 'pixel' or 'reference', got {c.scale_mode!r}")
        # rotations are predicted in the camera frame and taken to the world frame
        q_cam = quat_normalize(rot_raw + torch.tensor([1.0, 0, 0, 0], device=raw.device))
        quats = quat_normalize(quat_multiply(matrix_to_quat(c2w[:, :, None, None, :3, :3]), q_cam))
        opacities = torch.sigmoid(2 * opa_raw[..., 0] + c.opacity_bias)
        rgb = torch.tanh(col_raw[..., :3]) * 0.5 + 0.5
        if c.sh_degree == 0:
            colors = rgb.reshape(b, -1, 3)
        else:
            rest = col_raw[..., 3:].reshape(b, -1, (c.sh_degree + 1) ** 2 - 1, 3) * 0.1
            colors = torch.cat([rgb_to_sh_dc(rgb).reshape(b, -1, 1, 3), rest], dim=-2)
        g = Gaussians(
            means=means.reshape(b, -1, 3),
            quats=quats.reshape(b, -1, 4),
            scales=scales.reshape(b, -1, 3),
            opacities=opacities.reshape(b, -1),
            colors=colors,
        )
        return g, depth


def gaussians_at_all_times(dg: DeformableGaussians) -> Gaussians:
    """Static Gaussians at every query time as one batch [..., T, N] (for rendering all query views at once)."""
    c = dg.canonical
    return Gaussians(
        means=c.means[..., None, :, :] + dg.delta_means,
        quats=quat_normalize(quat_multiply(c.quats[..., None, :, :], dg.delta_quats)),
        scales=c.scales[..., None, :, :] * torch.exp(dg.delta_log_scales),
        opacities=dg.opacities_at_times(),
        colors=dg.colors_at_times(),
    )
