"""Wan2.2-Fun-5B-Control-Camera (alibaba-pai, VideoX-Fun) as a CameraWan mode (``camera_injection: fun``).

The release is Wan2.2-TI2V-5B with three changes, all read from VideoX-Fun: ``Wan2_2Transformer3DModel``
(``videox_fun/models/wan_transformer3d.py``), ``SimpleAdapter`` (``wan_camera_adapter.py``), the pipeline
(``pipeline/pipeline_wan2_2_fun_control.py``) and the pose reading (``data/utils.py``):

1. **Camera adapter** (``control_adapter.*``, VideoX-Fun's ``SimpleAdapter``): Plücker maps at pixel resolution,
   packed four frames per latent frame (``pack_fun_plucker``: 6 × 4 = 24 channels, channel = 4·c + k), go per latent
   frame through PixelUnshuffle(16) → Conv2d(24·16², dim, kernel = stride = 2) → one residual block
   (x + conv₃ₓ₃(ReLU(conv₃ₓ₃(x)))), and the result is **added to the patch embeddings** [B, dim, T, h/2, w/2] before
   they are flattened: the same injection point as CameraWan's ``add`` mode, so it runs through the same hook.
2. **Wider patch embedding**: 100 input channels = 48 noisy latents ‖ 4 mask channels ‖ 48 latents of the masked
   video (``fun_condition``): the first frame, then mid-grey frames, through the Wan VAE (normalised latents); the
   mask is 1 on latent frame 0 and 0 elsewhere. Everything else has TI2V-5B's shapes and original key names
   (``diff4splat.models.wan_convert`` reads them).
3. **Sampling**: the clean first-frame latent replaces latent frame 0 at the start and after every step, and its
   tokens get timestep 0 (the 5B path of the pipeline, VAE stride ≥ 16); classifier-free guidance drops only the
   prompt: the cameras and the first-frame condition stay in the unconditional branch (``sample_fun_latents``).

Camera conditioning (Plücker maps from RealEstate10K pose rows, VideoX-Fun's ``process_pose_file``): in
``diff4splat.models.fun_poses`` (``fun_plucker``, ``fun_pose_rows_for_frames``, ...), importable from here too.

Numerics: the reference computes the timestep sinusoids in float64 (Wan's ``sinusoidal_embedding_1d``), diffusers in
float32, which moves the embedding by up to 3e-5 at t ≈ 1000; a fun-mode CameraWan computes them in float64 as the
release was trained (``WanSinusoidalTimesteps``, no parameters). Parity with VideoX-Fun to 1e-5 is in
``tests/test_fun_camera.py`` (fixtures in ``tests/fixtures/fun_camera``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.models.fun_poses import (
    FUN_POSE_SIZE,
    fun_intrinsics,
    fun_plucker,
    fun_pose_rows_for_frames,
    fun_relative_c2w,
    fun_rows_to_cameras,
)

if TYPE_CHECKING:
    from diff4splat.models.camera_wan import CameraWan, CameraWanConfig

FUN_MASK_CHANNELS = 4  # the mask's sub-frames per latent frame
WAN_HEAD_DIM = 128  # attention head width of every released Wan DiT (1.3B, 5B, 14B)
ReleaseKind = Literal["fun_camera", "ti2v"]


# ----------------------------------------------------------------------------------------------------------------------
# Inference preset

FUN_NEGATIVE_PROMPT = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"


@dataclass(frozen=True)
class FunCameraPreset:
    """How the release is run (values and their sources in the field comments; VideoX-Fun @ 804a4258)."""

    height: int = 704  # examples/wan2.2_fun/predict_v2v_control_camera_5b.py: sample_size = [704, 1280]
    width: int = 1280
    num_frames: int = 121  # README.md model table: "Trained at 121 frames, 24 FPS" (the example runs 81: its assets)
    fps: int = 24  # same table; the example's fps = 24
    guidance_scale: float = 6.0  # example: guidance_scale = 6.0
    num_inference_steps: int = 50  # example: num_inference_steps = 50
    scheduler: str = "FlowMatchEulerDiscreteScheduler"  # example: sampler_name = "Flow"
    shift: float = 5.0  # config/wan2.2/wan_civitai_5b.yaml scheduler_kwargs.shift
    num_train_timesteps: int = 1000  # same yaml
    text_len: int = 512  # same yaml text_encoder_kwargs.text_length; prompts zero-padded to it
    pose_size: tuple[int, int] = FUN_POSE_SIZE  # data/utils.py process_pose_file(original_pose_width=1280, ...=720)
    boundary: float | None = None  # one transformer (transformer_combination_type: single): no MoE boundary
    negative_prompt: str = FUN_NEGATIVE_PROMPT  # the example's negative_prompt (Wan's default one)


FUN_5B_CAMERA_PRESET = FunCameraPreset()


# ----------------------------------------------------------------------------------------------------------------------
# The camera adapter


class FunResidualBlock(nn.Module):
    """x + conv2(ReLU(conv1(x))), 3×3 convs (no activation after the sum)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def pack_fun_plucker(plucker: Tensor, frames_per_latent: int = 4) -> Tensor:
    """Plücker maps [B, F, C, H, W] (F = 1 + 4k) -> [B, 4·C, 1 + k, H, W]: frame 0 repeated four times, then four
    consecutive frames per latent frame, channel index = 4·c + sub-frame (the pipeline's control_camera_latents)."""
    b, f, c, h, w = plucker.shape
    s = frames_per_latent
    if (f - 1) % s:
        raise ValueError(f"Fun camera: Plücker maps need 1 + {s}k frames, got {f}")
    x = torch.cat([plucker[:, :1].expand(-1, s - 1, -1, -1, -1), plucker], 1)  # [B, s·T, C, H, W]
    x = x.reshape(b, -1, s, c, h, w).transpose(2, 3).reshape(b, -1, c * s, h, w)  # [B, T, C·s, H, W]
    return x.transpose(1, 2)


class FunCameraAdapter(nn.Module):
    """VideoX-Fun's ``SimpleAdapter`` behind CameraWan's camera interface: Plücker maps [B, F, 6, H, W] -> tokens
    [B, dim, T, H/(s·p), W/(s·p)] (s = VAE stride, p = patch). State-dict keys are the release's ``control_adapter.*``
    without that prefix (``conv``, ``residual_blocks.{i}.conv{1,2}``)."""

    injection = "fun"

    def __init__(
        self,
        dim: int,
        vae_stride: Sequence[int] = (4, 16, 16),
        patch_size: Sequence[int] = (1, 2, 2),
        plucker_channels: int = 6,
        num_residual_blocks: int = 1,
    ) -> None:
        super().__init__()
        st, sh, sw = (int(s) for s in vae_stride)
        if sh != sw:
            raise ValueError(f"Fun camera adapter: the VAE's spatial strides must be equal, got {sh}, {sw}")
        self.frames_per_latent, self.downscale = st, sh
        self.in_channels = plucker_channels * st
        kernel = tuple(int(p) for p in patch_size[1:])
        self.conv = nn.Conv2d(self.in_channels * sh * sh, dim, kernel_size=kernel, stride=kernel)
        self.residual_blocks = nn.Sequential(*[FunResidualBlock(dim) for _ in range(num_residual_blocks)])

    def forward(self, plucker: Tensor) -> Tensor:  # [B, F, 6, H, W] -> [B, dim, T, h', w']
        return self.adapt(pack_fun_plucker(plucker.to(self.conv.weight.dtype), self.frames_per_latent))

    def adapt(self, packed: Tensor) -> Tensor:  # [B, 4·6, T, H, W] (``pack_fun_plucker``) -> [B, dim, T, h', w']
        b, c, t, h, w = packed.shape
        if h % (self.downscale * self.conv.stride[0]) or w % (self.downscale * self.conv.stride[1]):
            raise ValueError(
                f"Fun camera adapter: Plücker maps of {h}x{w} pixels; height and width must be multiples of "
                f"{self.downscale * self.conv.stride[0]} (VAE stride x patch)"
            )
        x = packed.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.residual_blocks(self.conv(F.pixel_unshuffle(x, self.downscale)))
        return x.reshape(b, t, *x.shape[1:]).transpose(1, 2)


class WanSinusoidalTimesteps(nn.Module):
    """Wan's timestep sinusoids, [cos | sin] of t·10000^(-i/half), computed in float64 and returned as float32 (the
    original ``sinusoidal_embedding_1d``); a drop-in for diffusers' float32 ``Timesteps`` in the condition embedder."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"WanSinusoidalTimesteps: num_channels must be even, got {num_channels}")
        self.num_channels = num_channels

    def forward(self, timesteps: Tensor) -> Tensor:  # [N] -> [N, num_channels]
        half = self.num_channels // 2
        t = timesteps.to(torch.float64)
        freqs = torch.pow(10000, -torch.arange(half, device=t.device, dtype=torch.float64).div(half))
        angles = torch.outer(t, freqs)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def use_wan_timestep_sinusoids(transformer: nn.Module) -> None:
    """Swap the diffusers Wan transformer's float32 timestep sinusoids for Wan's float64 ones (no parameters)."""
    embedder = transformer.condition_embedder
    embedder.timesteps_proj = WanSinusoidalTimesteps(int(transformer.config.freq_dim))


# ----------------------------------------------------------------------------------------------------------------------
# The first-frame condition (mask and masked-video latents)


def fun_masked_video(image: Tensor, num_frames: int) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, F, 3, H, W]
    """The video whose latents condition the release: the first frame, then mid-grey frames (0 in [-1, 1])."""
    video = torch.full((image.shape[0], num_frames, *image.shape[1:]), 0.5, dtype=image.dtype, device=image.device)
    video[:, 0] = image
    return video


def fun_condition(masked_video_latents: Tensor) -> Tensor:  # [B, C, T, h, w] -> [B, 4 + C, T, h, w]
    """The channels concatenated to the noisy latents: a 4-channel mask (1 on latent frame 0: the known first frame)
    and the normalised Wan latents of ``fun_masked_video``."""
    b, _, t, h, w = masked_video_latents.shape
    mask = masked_video_latents.new_zeros(b, FUN_MASK_CHANNELS, t, h, w)
    mask[:, :, 0] = 1
    return torch.cat([mask, masked_video_latents], 1)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample_fun_latents(
    model: CameraWan,
    noise: Tensor,  # [B, C, T, h, w] initial noise
    condition: Tensor,  # [B, 4 + C, T, h, w] ``fun_condition``; its latent frame 0 is the clean first frame
    plucker: Tensor,  # [B, F, 6, H, W] ``fun_plucker`` per sample
    prompt_embeds: Tensor,  # [B, text_len, D] zero-padded
    negative_embeds: Tensor | None = None,  # [B, text_len, D]; needed when guidance_scale > 1
    preset: FunCameraPreset = FUN_5B_CAMERA_PRESET,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    scheduler: Any = None,  # a fresh diffusers flow-matching scheduler; None: the release's Euler with preset.shift
) -> Tensor:  # [B, C, T, h, w] denoised latents (Wan-normalised)
    """The release's denoising loop: flow-matching Euler (``preset`` shift), the first latent frame held to the
    condition's and its tokens at t = 0, guidance on the prompt only (both branches see the cameras and condition)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = num_inference_steps or preset.num_inference_steps
    scale = preset.guidance_scale if guidance_scale is None else guidance_scale
    if scheduler is None:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=preset.num_train_timesteps, shift=preset.shift)
    scheduler.set_timesteps(steps, device=noise.device)
    guided = scale > 1.0
    if guided and negative_embeds is None:
        raise ValueError("sample_fun_latents: guidance_scale > 1 needs negative_embeds")
    first = condition[:, FUN_MASK_CHANNELS:, :1]
    dtype = next(model.parameters()).dtype
    tokens = model.camera_tokens(plucker.to(dtype))
    text = torch.cat([negative_embeds, prompt_embeds], 0) if guided else prompt_embeds
    cond = torch.cat([condition, condition], 0) if guided else condition
    tokens = torch.cat([tokens, tokens], 0) if guided else tokens
    latents = model.replace_first_frame(noise.float(), first)
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents], 0) if guided else latents
        tt = model.token_timesteps(t.float().expand(x.shape[0]), x.shape)
        pred = model(x.to(dtype), tt, text.to(dtype), camera_tokens=tokens, condition=cond.to(dtype)).float()
        if guided:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + scale * (cond_pred - uncond)
        latents = model.replace_first_frame(scheduler.step(pred, t, latents, return_dict=False)[0], first)
    return latents


# ----------------------------------------------------------------------------------------------------------------------
# Detection and loading of the release


def release_kind(shapes: Mapping[str, Sequence[int]]) -> ReleaseKind | None:
    """What a Wan DiT checkpoint is, from its original-layout tensor names and shapes:

    - ``"fun_camera"``: ``control_adapter.conv.weight`` [dim, 24·s², p, p] and its residual blocks are present, and
      the patch embedding takes 2·C + 4 input channels for C output channels (``head.head.weight`` [p³·C, dim]);
    - ``"ti2v"``: no ``control_adapter.*`` tensors and 48 input and output channels (Wan2.2-TI2V-5B);
    - otherwise None.
    """
    patch, head = shapes.get("patch_embedding.weight"), shapes.get("head.head.weight")
    if patch is None or head is None or len(patch) != 5:
        return None
    c_in, c_out = int(patch[1]), int(head[0]) // math.prod(int(p) for p in patch[2:])
    adapter = shapes.get("control_adapter.conv.weight")
    has_adapter = any(k.startswith("control_adapter.") for k in shapes)
    if adapter is not None and "control_adapter.residual_blocks.0.conv1.weight" in shapes:
        per_latent = int(adapter[1])
        s = math.isqrt(per_latent // 24) if per_latent % 24 == 0 else 0
        if c_in == 2 * c_out + FUN_MASK_CHANNELS and s > 0 and 24 * s * s == per_latent:
            return "fun_camera"
        return None
    if not has_adapter and c_in == c_out == 48:
        return "ti2v"
    return None


@dataclass(frozen=True)
class FunCameraArch:
    """A Fun camera release's architecture: the diffusers transformer config and the VAE stride of its adapter."""

    transformer: dict[str, Any]
    vae_stride: tuple[int, int, int]
    num_residual_blocks: int = 1


def fun_arch_from_shapes(shapes: Mapping[str, Sequence[int]], head_dim: int = WAN_HEAD_DIM) -> FunCameraArch:
    """The architecture of a ``fun_camera`` checkpoint from its shapes. Head count = dim / ``head_dim`` (not in the
    shapes; 128 for every released Wan); the adapter's downscale s from its 24·s² input channels (4 frames × 6 Plücker
    channels per latent frame), which is the VAE's spatial stride."""
    if release_kind(shapes) != "fun_camera":
        raise ValueError("fun_arch_from_shapes: not a Wan2.2-Fun camera checkpoint (see release_kind)")
    needed = ("text_embedding.0.weight", "time_embedding.0.weight", "blocks.0.ffn.0.weight")
    if absent := [k for k in needed if k not in shapes]:
        raise ValueError(f"Fun camera checkpoint: no {', '.join(absent)} (the architecture is read from them)")
    patch = [int(v) for v in shapes["patch_embedding.weight"]]
    dim, c_in, p = patch[0], patch[1], patch[2:]
    if dim % head_dim:
        raise ValueError(f"Fun camera checkpoint: dim {dim} is not a multiple of the head width {head_dim}")
    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
    s = math.isqrt(int(shapes["control_adapter.conv.weight"][1]) // 24)
    residual = {int(k.split(".")[2]) for k in shapes if k.startswith("control_adapter.residual_blocks.")}
    config = {
        "patch_size": p,
        "num_attention_heads": dim // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": c_in,
        "out_channels": int(shapes["head.head.weight"][0]) // math.prod(p),
        "text_dim": int(shapes["text_embedding.0.weight"][1]),
        "freq_dim": int(shapes["time_embedding.0.weight"][1]),
        "ffn_dim": int(shapes["blocks.0.ffn.0.weight"][0]),
        "num_layers": len(layers),
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }
    return FunCameraArch(config, (4, s, s), len(residual))


def checkpoint_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The DiT safetensors of a release: a file, a list of files, or a folder holding
    ``diffusion_pytorch_model*.safetensors`` (VideoX-Fun's 5B folders keep them at the root; ``transformer/`` is
    looked in too)."""
    from diff4splat.models import wan_convert

    if isinstance(path, str | Path) and Path(path).is_dir():
        root = Path(path)
        for folder in (root, root / "transformer"):
            if any(folder.glob(wan_convert.SHARD_GLOB)):
                return wan_convert.original_transformer_files(folder)
        raise FileNotFoundError(
            f"{root}: no {wan_convert.SHARD_GLOB} here or in {root / 'transformer'} (expected a Wan2.2-Fun release "
            "folder such as Wan2.2-Fun-5B-Control-Camera/)"
        )
    return wan_convert.original_transformer_files(path)


def detect_release(path: str | Path | Sequence[str | Path]) -> tuple[ReleaseKind, dict[str, tuple[int, ...]]]:
    """(kind, tensor shapes) of the DiT at ``path``, read from the safetensors headers only (no tensor is loaded)."""
    from diff4splat.models import wan_convert

    files = checkpoint_files(path)
    shapes = wan_convert.read_safetensors_shapes(files)
    kind = release_kind(shapes)
    if kind is None:
        patch = shapes.get("patch_embedding.weight")
        adapter = shapes.get("control_adapter.conv.weight")
        raise ValueError(
            f"{', '.join(map(str, files))}: not a Wan2.2-TI2V-5B or Wan2.2-Fun camera DiT in the original layout "
            f"(patch_embedding.weight {patch}, control_adapter.conv.weight {adapter}, {len(shapes)} tensors)"
        )
    return kind, shapes


def camera_wan_config_for(path: str | Path, dtype: str = "bfloat16", head_dim: int = WAN_HEAD_DIM) -> CameraWanConfig:
    """The ``CameraWanConfig`` that loads the release at ``path`` (what ``models.camera_wan=<folder>`` stands for):
    ``camera_injection="fun"``, ``init="original"``, the architecture read from the tensor shapes."""
    from diff4splat.models.camera_wan import CameraWanConfig

    kind, shapes = detect_release(path)
    if kind != "fun_camera":
        raise ValueError(
            f"{path}: a Wan2.2-TI2V-5B DiT without camera control; use init=original with camera_injection add/concat"
        )
    arch = fun_arch_from_shapes(shapes, head_dim)
    return CameraWanConfig(
        arch="fun_5b_control_camera",
        arch_overrides=arch.transformer,
        init="original",
        original_paths=[str(path)],
        camera_injection="fun",
        vae_stride=arch.vae_stride,
        dtype=dtype,
    )


def split_release_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(transformer tensors in the original Wan layout, adapter tensors without the ``control_adapter.`` prefix)."""
    prefix = "control_adapter."
    adapter = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith(prefix)}, adapter


def fun_camera_wan_from_state(
    state: Mapping[str, Tensor],
    arch: FunCameraArch | None = None,
    dtype: torch.dtype = torch.bfloat16,
    source: str = "state dict",
) -> CameraWan:
    """A fun-mode CameraWan holding a release state dict (original key names, ``control_adapter.*`` included), loaded
    strictly: a missing, unexpected or mis-shaped tensor raises and names it. Tensors on the meta device give a model
    on the meta device (``assign``)."""
    from diff4splat.models import wan_convert
    from diff4splat.models.camera_wan import CameraWan
    from diff4splat.weights import WeightsError

    arch = arch or fun_arch_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    base, adapter = split_release_state(state)
    transformer = wan_convert.transformer_from_original_state(base, arch.transformer, dtype, source)
    with torch.device("meta"):
        model = CameraWan(transformer, camera_injection="fun", vae_stride=arch.vae_stride)
    own = model.camera.state_dict()
    missing, unexpected = sorted(set(own) - set(adapter)), sorted(set(adapter) - set(own))
    wrong = sorted(
        f"{k} {tuple(adapter[k].shape)} (model {tuple(own[k].shape)})"
        for k in own
        if k in adapter and adapter[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        raise WeightsError(
            f"Fun camera adapter: {source}: missing control_adapter.{missing[:6]}, unexpected {unexpected[:6]}, "
            f"shape mismatches {wrong[:6]}"
        )
    model.camera.load_state_dict({k: v.to(dtype) for k, v in adapter.items()}, strict=True, assign=True)
    return model.eval()


def load_fun_camera_wan(
    path: str | Path | Sequence[str | Path],
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> CameraWan:
    """The released Wan2.2-Fun camera model from a local folder (or its DiT safetensors) as a fun-mode CameraWan;
    ``overrides``: transformer config keys that the shapes cannot give (e.g. ``num_attention_heads``)."""
    from diff4splat.models import wan_convert

    kind, shapes = detect_release(path)
    if kind != "fun_camera":
        raise ValueError(f"{path}: a Wan DiT without the Fun camera adapter (kind {kind!r})")
    head_dim = int((overrides or {}).get("attention_head_dim", WAN_HEAD_DIM))
    arch = fun_arch_from_shapes(shapes, head_dim)
    arch = FunCameraArch({**arch.transformer, **dict(overrides or {})}, arch.vae_stride, arch.num_residual_blocks)
    files = checkpoint_files(path)
    state = wan_convert.read_safetensors(files)
    return fun_camera_wan_from_state(state, arch, dtype, ", ".join(map(str, files))).to(device)


__all__ = [  # FUN_POSE_SIZE and the fun_* pose functions live in fun_poses
    "FUN_5B_CAMERA_PRESET",
    "FUN_MASK_CHANNELS",
    "FUN_NEGATIVE_PROMPT",
    "FUN_POSE_SIZE",
    "WAN_HEAD_DIM",
    "FunCameraAdapter",
    "FunCameraArch",
    "FunCameraPreset",
    "FunResidualBlock",
    "ReleaseKind",
    "WanSinusoidalTimesteps",
    "camera_wan_config_for",
    "checkpoint_files",
    "detect_release",
    "fun_arch_from_shapes",
    "fun_camera_wan_from_state",
    "fun_condition",
    "fun_intrinsics",
    "fun_masked_video",
    "fun_plucker",
    "fun_pose_rows_for_frames",
    "fun_relative_c2w",
    "fun_rows_to_cameras",
    "load_fun_camera_wan",
    "pack_fun_plucker",
    "release_kind",
    "sample_fun_latents",
    "split_release_state",
    "use_wan_timestep_sinusoids",
]
