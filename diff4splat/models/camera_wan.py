"""CameraWan: Wan2.2-TI2V (diffusers ``WanTransformer3DModel``) with camera control, without forking diffusers.

Camera control enters through a forward hook on the base transformer's ``patch_embedding``: the hook adds camera
tokens [B, dim, T, h/p, w/p] to the patch-embedded latents, so the base model's code, weights and state-dict keys are
untouched (a diffusers upgrade, LoRA adapters and the original-weight converter keep working).

- ``camera_injection: add`` (default; VGGM's design): Plücker rays at pixel resolution [B, F, 6, H, W] -> a causal
  Conv3d with kernel = stride = VAE stride × patch size ((4, 32, 32) for Wan2.2) straight to the DiT width, weights and
  bias **zero-initialised**, so at initialisation the model is exactly the base model.
- ``camera_injection: concat`` (the released code's design, ablation): rays -> causal Conv3d (6 -> latent channels,
  kernel = stride = VAE stride) -> GroupNorm(1, C) at latent resolution, "concatenated to the latent channels" with
  zero-initialised extra patch-embedding inputs. A patch embedding over [latents ; camera latents] is linear in its
  input channels, so it equals ``patch_embedding(latents) + W_extra * camera_latents``: we keep the base patch
  embedding and hold the extra input channels as their own bias-free, zero-initialised Conv3d (the same function and
  the same parameters as the widened conv, with unchanged base keys).
- ``camera_injection: fun`` (the released Wan2.2-Fun-5B-Control-Camera, ``diff4splat.models.fun_camera``): its
  ``SimpleAdapter`` (PixelUnshuffle, patch conv, one residual block) turns Plücker maps packed four frames per latent
  frame into tokens added at the same point; the transformer's patch embedding is wider (in = 2·out + 4) and
  ``forward`` concatenates ``condition`` (mask ‖ masked-video latents, ``fun_camera.fun_condition``) to the latents.

The causal convs pad the front of time by replicating the first frame ``kt - 1`` times (the reference's ``causal3d``),
so F = 1 + 4k frames give 1 + k latent frames, aligned with the causal VAE. Zeroed cameras (CFG's unconditional
branch) are zero Plücker maps.

TI2V first-frame conditioning: the clean first-frame latent replaces latent frame 0 (``replace_first_frame``) and its
tokens get timestep 0 (``token_timesteps`` -> [B, seq], the per-token timesteps diffusers' Wan2.2 TI2V path takes).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.configs import to_dataclass, to_plain

log = logging.getLogger(__name__)

CAMERA_FORMAT = "diff4splat.camera_wan/1"


@dataclass
class CameraWanConfig:
    """Architecture and weight sources of a CameraWan.

    ``arch`` names a shipped transformer config (``ti2v_5b``) or ``tiny`` (a 2-layer instance of the same class for
    tests and CPU runs); ``arch_overrides`` changes any ``WanTransformer3DModel`` config key. Weights: ``init``
    ``random`` (the config's initialisation), ``pretrained`` (a local diffusers folder: the model root with
    ``transformer/`` or the transformer folder itself) or ``original`` (the original release's DiT safetensors
    shards, a folder or a list of files, converted by key mapping). ``camera_weights`` loads our trained camera
    branch (and LoRA, when present) from a ``.safetensors`` written by ``save_camera_weights``.
    """

    arch: str = "ti2v_5b"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    init: Literal["random", "pretrained", "original"] = "random"
    pretrained_path: str | None = None
    original_paths: list[str] = field(default_factory=list)
    camera_weights: str | None = None
    camera_injection: Literal["add", "concat", "fun"] = "add"  # fun: the Wan2.2-Fun camera release (fun_camera.py)
    vae_stride: tuple[int, int, int] = (4, 16, 16)  # (time, height, width) of the Wan VAE (Wan2.1: (4, 8, 8))
    plucker_channels: int = 6
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters (peft) on attention and FFN, base frozen
    lora_alpha: float | None = None  # default: rank
    lora_targets: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    )
    gradient_checkpointing: bool = False  # every block (the FSDP path checkpoints per ``checkpoint_blocks`` instead)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype of the base transformer


TINY_ARCH: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def transformer_arch(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``WanTransformer3DModel`` config dict: a shipped one by name (``ti2v_5b``) or ``tiny``, with overrides."""
    if name == "tiny":
        cfg = dict(TINY_ARCH)
    else:
        from diff4splat.models import wan_convert

        cfg = dict(wan_convert.transformer_config(name))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(overrides or {})
    return cfg


def build_transformer(cfg: CameraWanConfig, device: torch.device | str | None = None) -> nn.Module:
    """The base ``WanTransformer3DModel`` from ``cfg`` (random, a local diffusers folder or original weights)."""
    from diffusers import WanTransformer3DModel

    dtype = getattr(torch, cfg.dtype)
    if cfg.init == "pretrained":
        if not cfg.pretrained_path:
            raise ValueError("model.init=pretrained needs model.pretrained_path (a local diffusers Wan folder)")
        path = Path(cfg.pretrained_path)
        if (path / "transformer" / "config.json").is_file():
            path = path / "transformer"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"CameraWan: no diffusers transformer config.json in {path} or {path}/transformer")
        from diff4splat.models.fastwan import check_transformer_folder

        check_transformer_folder(path)  # strict, as every release loads: each tensor of its config, with its shape
        model = WanTransformer3DModel.from_pretrained(str(path), torch_dtype=dtype)
    elif cfg.init == "original":
        from diff4splat.models import wan_convert

        if not cfg.original_paths:
            raise ValueError("model.init=original needs model.original_paths (DiT safetensors files or their folder)")
        paths = cfg.original_paths[0] if len(cfg.original_paths) == 1 else cfg.original_paths
        model = wan_convert.load_original_transformer(
            paths, config=transformer_arch(cfg.arch, cfg.arch_overrides), dtype=dtype
        )
    else:  # random init; every parameter cast to ``dtype`` (one storage dtype, as FSDP2 wants), buffers (RoPE) kept
        with torch.device(device or "cpu"):
            model = WanTransformer3DModel(**transformer_arch(cfg.arch, cfg.arch_overrides))
        if dtype != torch.float32:
            for p in model.parameters():
                p.data = p.data.to(dtype)
    return model.to(device) if device is not None and cfg.init != "random" else model


class CausalConv3d(nn.Conv3d):
    """Conv3d with kernel = stride whose time axis is made causal by replicating the first frame ``kt - 1`` times.

    With kernel = stride (no padding, dilation or groups) the convolution is a patchify + one matmul, which is how it
    runs: cuDNN picks a slow implicit-GEMM kernel for the (4, 32, 32) kernel of the 5B's camera branch (69 ms of a
    training step on an H100, against ~1 ms as a GEMM). Same parameters and state dict as ``nn.Conv3d``; results equal
    the convolution up to summation order (``tests/test_camera_wan.py``)."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, F, H, W] -> [B, C', 1 + (F - 1) / kt, H / kh, W / kw]
        kt, kh, kw = self.kernel_size
        if kt > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, kt - 1, -1, -1), x], dim=2)
        plain = tuple(self.stride) == (kt, kh, kw) and self.groups == 1 and tuple(self.dilation) == (1, 1, 1)
        if not plain or self.padding != (0, 0, 0) or self.padding_mode != "zeros":
            return super().forward(x)
        B, C, frames, H, W = x.shape
        T, h, w = frames // kt, H // kh, W // kw
        x = x[:, :, : T * kt, : h * kh, : w * kw]  # a conv drops the remainder too
        patches = x.reshape(B, C, T, kt, h, kh, w, kw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, T, h, w, -1)
        y = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)  # [B, T, h, w, C']
        return y.permute(0, 4, 1, 2, 3)


class CameraEncoder(nn.Module):
    """Plücker rays [B, F, 6, H, W] -> camera tokens [B, dim, T, H / (s·p), W / (s·p)] (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        latent_channels: int,
        vae_stride: Sequence[int],
        patch_size: Sequence[int],
        injection: Literal["add", "concat"] = "add",
        plucker_channels: int = 6,
    ) -> None:
        super().__init__()
        st, sh, sw = (int(s) for s in vae_stride)
        pt, ph, pw = (int(p) for p in patch_size)
        self.injection = injection
        self.stride = (st * pt, sh * ph, sw * pw)
        if injection == "add":
            self.plucker = CausalConv3d(plucker_channels, dim, kernel_size=self.stride, stride=self.stride)
            nn.init.zeros_(self.plucker.weight)
            nn.init.zeros_(self.plucker.bias)
        elif injection == "concat":
            self.plucker = CausalConv3d(
                plucker_channels, latent_channels, kernel_size=(st, sh, sw), stride=(st, sh, sw)
            )
            self.norm = nn.GroupNorm(1, latent_channels)
            self.patch_extra = nn.Conv3d(
                latent_channels, dim, kernel_size=(pt, ph, pw), stride=(pt, ph, pw), bias=False
            )
            nn.init.zeros_(self.patch_extra.weight)
        else:
            raise ValueError(f"camera_injection must be 'add' or 'concat', got {injection!r}")

    def forward(self, plucker: Tensor) -> Tensor:
        x = plucker.transpose(1, 2)  # [B, 6, F, H, W]
        dtype = self.plucker.weight.dtype
        x = self.plucker(x.to(dtype))
        if self.injection == "concat":
            x = self.patch_extra(self.norm(x))
        return x


class CameraWan(nn.Module):
    """A ``WanTransformer3DModel`` plus a camera encoder whose tokens are added to its patch embeddings.

    ``transformer`` keeps the diffusers model (its state-dict keys under ``transformer.``); ``camera`` is ours
    (``CameraEncoder``, or ``fun_camera.FunCameraAdapter`` for ``camera_injection="fun"``, whose transformer takes
    ``condition_channels`` more input channels than it predicts and computes Wan's float64 timestep sinusoids).
    """

    def __init__(
        self,
        transformer: nn.Module,
        camera_injection: Literal["add", "concat", "fun"] = "add",
        vae_stride: Sequence[int] = (4, 16, 16),
        plucker_channels: int = 6,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        tcfg = transformer.config
        self.patch_size = tuple(int(p) for p in tcfg.patch_size)
        self.latent_channels = int(tcfg.in_channels)
        self.dim = int(tcfg.num_attention_heads * tcfg.attention_head_dim)
        self.text_dim = int(tcfg.text_dim)
        self.vae_stride = tuple(int(s) for s in vae_stride)
        self.condition_channels = 0
        if camera_injection == "fun":
            from diff4splat.models.fun_camera import FUN_MASK_CHANNELS, FunCameraAdapter, use_wan_timestep_sinusoids

            self.latent_channels = int(tcfg.out_channels or tcfg.in_channels)
            self.condition_channels = int(tcfg.in_channels) - self.latent_channels
            if self.condition_channels != self.latent_channels + FUN_MASK_CHANNELS:
                raise ValueError(
                    f"camera_injection=fun needs a transformer with in_channels = 2 * out_channels + "
                    f"{FUN_MASK_CHANNELS}, got in {tcfg.in_channels}, out {tcfg.out_channels}"
                )
            self.camera = FunCameraAdapter(self.dim, self.vae_stride, self.patch_size, plucker_channels)
            use_wan_timestep_sinusoids(transformer)
        else:
            self.camera = CameraEncoder(
                self.dim, self.latent_channels, self.vae_stride, self.patch_size, camera_injection, plucker_channels
            )
        self._pending: Tensor | None = None
        transformer.patch_embedding.register_forward_hook(self._add_camera_tokens)

    @classmethod
    def from_config(cls, cfg: CameraWanConfig | dict[str, Any], device: torch.device | str | None = None) -> CameraWan:
        cfg = to_dataclass(CameraWanConfig, cfg, "model")
        if cfg.camera_injection == "fun" and cfg.init == "original":  # the release: architecture from its shapes
            from diff4splat.models.fun_camera import load_fun_camera_wan

            if not cfg.original_paths:
                raise ValueError("model.init=original needs model.original_paths (the Wan2.2-Fun release folder)")
            paths = cfg.original_paths[0] if len(cfg.original_paths) == 1 else cfg.original_paths
            model = load_fun_camera_wan(paths, getattr(torch, cfg.dtype), device or "cpu", cfg.arch_overrides)
        else:
            model = cls(build_transformer(cfg, device), cfg.camera_injection, cfg.vae_stride, cfg.plucker_channels)
        model.camera.to(device=device, dtype=getattr(torch, cfg.dtype))
        if cfg.lora_rank > 0:
            model.add_lora(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if cfg.camera_weights:
            model.load_camera_weights(cfg.camera_weights)
        if cfg.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()
        model.config = cfg
        return model

    # --- hook --------------------------------------------------------------------------------------------------
    def _add_camera_tokens(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        tokens = self._pending
        if tokens is None:
            return None
        if tokens.shape != output.shape:
            raise ValueError(
                f"CameraWan: camera tokens {tuple(tokens.shape)} do not match the patch embeddings "
                f"{tuple(output.shape)}; Plücker maps must be [B, 1 + {self.vae_stride[0]}k, 6, "
                f"{self.vae_stride[1]}·h, {self.vae_stride[2]}·w] for latents [B, C, 1 + k, h, w]"
            )
        return output + tokens.to(output.dtype)

    @contextmanager
    def _camera_tokens(self, tokens: Tensor | None):
        self._pending = tokens
        try:
            yield
        finally:
            self._pending = None

    # --- forward -----------------------------------------------------------------------------------------------
    def camera_tokens(self, plucker: Tensor) -> Tensor:  # [B, F, 6, H, W] -> [B, dim, T, h', w']
        return self.camera(plucker)

    def camera_maps(self, c2w: Tensor, fxfycxcy: Tensor, height: int, width: int) -> Tensor:
        """The Plücker maps [B, F, 6, H, W] this model reads for OpenCV c2w [B, F, 4, 4] and normalised intrinsics
        [B, F, 4] of the H x W frame: ours (`plucker_for_latents`) or, for ``fun``, VideoX-Fun's (pixel-unit rays
        relative to the first camera, float64 poses; ``pose_size`` = the frame, so the intrinsics stay as given)."""
        if self.camera.injection != "fun":
            return plucker_for_latents(c2w, fxfycxcy, height, width)
        from diff4splat.models.fun_poses import fun_plucker

        maps = [
            fun_plucker(c, k, height, width, pose_size=(height, width))
            for c, k in zip(c2w.detach().double(), fxfycxcy.detach().double(), strict=True)
        ]
        return torch.stack(maps)

    def forward(
        self,
        latents: Tensor,  # [B, C, T, h, w] (frame 0 already replaced by the condition latent for TI2V)
        timestep: Tensor,  # [B] or per-token [B, T·h'·w'] in [0, 1000]
        prompt_embeds: Tensor,  # [B, L, text_dim]
        plucker: Tensor | None = None,  # [B, F, 6, H, W] with F = 1 + 4(T - 1), H = 16 h, W = 16 w; None: no cameras
        camera_tokens: Tensor | None = None,  # precomputed ``camera_tokens(plucker)`` (constant over sampling steps)
        condition: Tensor | None = None,  # fun: [B, condition_channels, T, h, w] concatenated to the latents
    ) -> Tensor:  # the flow prediction (ε - x₀) [B, C, T, h, w]
        if self.condition_channels:
            if condition is None or condition.shape[1] != self.condition_channels:
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(
                    f"CameraWan (fun): needs condition [B, {self.condition_channels}, T, h, w] (mask and masked-video "
                    f"latents, fun_camera.fun_condition), got {got}"
                )
            latents = torch.cat([latents, condition.to(latents.dtype)], 1)
        elif condition is not None:
            raise ValueError(f"CameraWan ({self.camera.injection}): takes no condition channels")
        tokens = (
            camera_tokens
            if camera_tokens is not None
            else (self.camera_tokens(plucker) if plucker is not None else None)
        )
        with self._camera_tokens(tokens):
            out = self.transformer(latents, timestep, prompt_embeds, return_dict=False)[0]
        return out

    # --- TI2V helpers ------------------------------------------------------------------------------------------
    def token_grid(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        t, h, w = latent_shape[-3:]
        pt, ph, pw = self.patch_size
        return t // pt, h // ph, w // pw

    def token_timesteps(self, t: Tensor, latent_shape: Sequence[int], num_cond_frames: int = 1) -> Tensor:
        """Per-token timesteps [B, T'·h'·w']: ``t`` [B] everywhere except the first ``num_cond_frames`` latent
        frames' tokens, which get 0 (clean condition)."""
        gt, gh, gw = self.token_grid(latent_shape)
        pt = self.patch_size[0]
        keep = (torch.arange(gt, device=t.device) * pt >= num_cond_frames).to(t.dtype)  # [T']
        mask = keep[:, None, None].expand(gt, gh, gw).reshape(-1)
        return t.reshape(-1, 1) * mask[None]

    @staticmethod
    def replace_first_frame(latents: Tensor, cond: Tensor, num_cond_frames: int = 1) -> Tensor:
        """``latents`` with its first latent frame(s) replaced by the clean condition latent ``cond`` [B, C, n, h, w]."""
        return torch.cat([cond[:, :, :num_cond_frames].to(latents.dtype), latents[:, :, num_cond_frames:]], dim=2)

    # --- LoRA and our weights ----------------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float | None = None, targets: Sequence[str] = ()) -> None:
        """LoRA adapters (peft, through diffusers' ``add_adapter``) on ``targets``; the base weights are frozen."""
        from peft import LoraConfig

        self.transformer.requires_grad_(False)
        lora = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=True, target_modules=list(targets))
        self.transformer.add_adapter(lora)

    def camera_state_dict(self) -> dict[str, Tensor]:
        """What we train beyond the base: the camera branch and, when present, the LoRA adapters."""
        sd = {f"camera.{k}": v for k, v in self.camera.state_dict().items()}
        for k, v in self.transformer.state_dict().items():
            if "lora_" in k:
                sd[f"transformer.{k}"] = v
        return sd

    def save_camera_weights(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``camera_state_dict`` as ``.safetensors`` (atomic), with the architecture in its metadata."""
        from diff4splat.weights import save_safetensors

        meta = {
            "format": CAMERA_FORMAT,
            "camera_injection": self.camera.injection,
            "vae_stride": json.dumps(list(self.vae_stride)),
            "dim": str(self.dim),
            "latent_channels": str(self.latent_channels),
        }
        cfg = getattr(self, "config", None)
        if cfg is not None:
            meta["config"] = json.dumps(to_plain(cfg))
        meta.update({k: str(v) for k, v in (extra or {}).items()})
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.camera_state_dict().items()}
        return save_safetensors(tensors, path, meta)

    def load_camera_weights(self, path: str | os.PathLike) -> None:
        """Load a file written by ``save_camera_weights``; a clear error when it does not fit this model."""
        from diff4splat.weights import WeightsError, load_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"camera weights: no file at {path}")
        state, meta = load_safetensors(path, "camera weights")
        if meta.get("format") != CAMERA_FORMAT:
            raise ValueError(f"{path}: not a CameraWan camera-weights file (metadata format {meta.get('format')!r})")
        if meta.get("camera_injection") != self.camera.injection or int(meta.get("dim", -1)) != self.dim:
            raise ValueError(
                f"{path}: camera weights for injection={meta.get('camera_injection')} dim={meta.get('dim')}, "
                f"this model has injection={self.camera.injection} dim={self.dim}"
            )
        own = self.camera_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise WeightsError(
                f"camera weights: {path}: missing {missing[:8]}, unexpected {unexpected[:8]} (LoRA rank differs?)"
            )
        mismatched = sorted(k for k, v in own.items() if v.shape != state[k].shape)
        if mismatched:
            k = mismatched[0]
            raise WeightsError(
                f"camera weights: {path}: {len(mismatched)} tensors of another shape, e.g. {k} "
                f"{tuple(state[k].shape)} vs {tuple(own[k].shape)} here (LoRA rank differs?)"
            )
        cam = {k[len("camera.") :]: v for k, v in state.items() if k.startswith("camera.")}
        self.camera.load_state_dict(cam)
        lora = {k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")}
        if lora:
            result = self.transformer.load_state_dict(lora, strict=False)
            if result.unexpected_keys:
                raise WeightsError(f"camera weights: {path}: unexpected LoRA keys {result.unexpected_keys[:8]}")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into ``camera`` (camera branch and LoRA: full lr) and ``base`` (the DiT)."""
        groups: dict[str, list[nn.Parameter]] = {"camera": [], "base": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups["camera" if name.startswith("camera.") or "lora_" in name else "base"].append(p)
        return groups


def plucker_for_latents(c2w: Tensor, fxfycxcy: Tensor, height: int, width: int) -> Tensor:
    """Plücker rays [B, F, 6, H, W] (moment, direction) at pixel resolution from metric OpenCV c2w [B, F, 4, 4]."""
    from diff4splat.geometry.cameras import plucker_rays

    with torch.autocast(c2w.device.type, enabled=False):  # rays in fp32 even inside bf16 autocast
        return plucker_rays(c2w.float(), fxfycxcy.float(), height, width)


def flow_sigmas_shift(u: Tensor, shift: float) -> Tensor:
    """The flow-matching shift σ = s·u / (1 + (s - 1)·u) (Wan/SD3 ``flow_shift``)."""
    return shift * u / (1 + (shift - 1) * u)


def gaussian_bump_weight(timesteps: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """The reference's training weight (DiffSynth ``FlowMatchScheduler``): a Gaussian bump over the timestep centred
    mid-schedule, shifted to 0 at its minimum over [0, T] and normalised to mean 1 over the uniform schedule."""
    grid = torch.linspace(0, num_train_timesteps, num_train_timesteps, dtype=torch.float64)

    def bump(x: Tensor) -> Tensor:
        return torch.exp(-2 * ((x - num_train_timesteps / 2) / num_train_timesteps) ** 2)

    y = bump(grid)
    lo, mean = y.min(), (y - y.min()).mean()
    w = (bump(timesteps.double()) - lo) / mean
    return w.to(timesteps.dtype if timesteps.is_floating_point() else torch.float32)


def masked_flow_loss(pred: Tensor, target: Tensor, num_cond_frames: int = 1) -> Tensor:
    """Per-sample MSE [B] over the generated latent frames (the clean condition frames carry no target)."""
    return (
        F.mse_loss(pred[:, :, num_cond_frames:].float(), target[:, :, num_cond_frames:].float(), reduction="none")
        .flatten(1)
        .mean(1)
    )
