"""Camera-controlled video diffusion training: CameraWan on Wan latents with rectified flow.

Per sample: x₀ = video latents [C, T, h, w] (from latent shards, or encoded online with the frozen Wan VAE from the
batch's ``frames``), σ drawn **per sample** (uniform or logit-normal, then shifted: σ' = sσ / (1 + (s - 1)σ), s = 5),
x_σ = (1 - σ)x₀ + σε, target ε - x₀, MSE over the generated latent frames (frame 0 is the clean TI2V condition with
timestep 0 on its tokens), optionally weighted by the reference's Gaussian-bump timestep weight. CFG dropout drops the
prompt **and** the cameras of 10 % of the samples together (the released code kept them for 10 % instead): the prompt
becomes the null prompt (the negative prompt's cached embedding when a text cache is given, else zeros) and the
Plücker maps become zeros, exactly the unconditional branch of sampling. A ``fun`` CameraWan (fine-tuning the
released Wan2.2-Fun-5B-Control-Camera, ``experiment=camctrl_fun_5b``) trains as that release samples: its condition
channels are the mask and the frozen VAE's latents of the masked video (the batch's first frame, then mid-grey
frames), its cameras are VideoX-Fun's Plücker maps (``CameraWan.camera_maps``), and CFG dropout drops only the prompt.

Optimisation (`diff4splat.systems.optimizer`): AdamW with two groups, ``camera`` (the camera branch and LoRA adapters)
at ``lr`` and ``base`` (the DiT) at ``lr × lr_mult.base`` (the reference: 4e-4 and 0.1×); or LoRA only
(``model.lora_rank`` > 0, base frozen). Under Lightning's ``ModelParallelStrategy`` the model is sharded with FSDP2
per ``WanTransformerBlock`` in ``configure_model`` (activation checkpointing and ``torch.compile`` per block as
configured).

Batches (dicts): ``latents`` [B, C, T, h, w] or ``frames`` [B, F, 3, H, W] in [0, 1]; ``c2w`` [B, F, 4, 4] metric
OpenCV c2w with the first camera = identity; ``fxfycxcy`` [B, F, 4]; optional ``prompt_embeds`` [B, L, D] and
``has_prompt`` [B]; optional ``first_frame`` [B, 3, H, W]; ``key``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.models.camera_wan import (
    CameraWan,
    CameraWanConfig,
    flow_sigmas_shift,
    gaussian_bump_weight,
    masked_flow_loss,
)
from diff4splat.models.parallel import prepare_blocks, shard_wan
from diff4splat.models.wan_vae import WanVAE
from diff4splat.sampling import SamplingConfig, make_scheduler, sample_latents
from diff4splat.systems.frozen import check_latent_interface, frozen_wan_vae
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config

log = logging.getLogger(__name__)


@dataclass
class FlowObjective:
    shift: float = 5.0
    num_train_timesteps: int = 1000
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: Literal["none", "reference"] = "none"  # reference: Gaussian bump centred mid-schedule
    cfg_dropout: float = 0.1  # drop prompt and cameras together
    num_cond_frames: int = 1  # clean latent frames (TI2V: the first)


# Constant lr after the warm-up; the fused AdamW kernel on a GPU.
DEFAULT_OPTIM = OptimConfig(
    lr=4e-4,
    lr_mult={"base": 0.1},
    betas=[0.9, 0.999],
    weight_decay=0.01,
    eps=1e-8,
    warmup_steps=500,
    min_lr_ratio=1.0,
    fused=None,
)
OPTIM_GROUPS = ("camera", "base")  # CameraWan.parameter_groups


@dataclass
class DiffusionScale:
    checkpoint_blocks: int = -1  # FSDP path: -1 every block, 0 none, k: k blocks spread through depth
    checkpoint_mode: Literal["full", "selective", "none"] = "selective"  # see diff4splat.models.parallel
    compile_blocks: bool = False
    compile_inside_checkpoint: bool = True  # compile each block, then checkpoint it (see prepare_blocks)
    param_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # FSDP2 mixed precision: compute dtype
    reduce_dtype: Literal["bfloat16", "float32"] = "float32"


class CameraDiffusionSystem(L.LightningModule):
    export_prefix = "model."

    def __init__(
        self,
        model: dict[str, Any] | DictConfig | CameraWanConfig | None = None,
        objective: dict[str, Any] | DictConfig | FlowObjective | None = None,
        optim: dict[str, Any] | DictConfig | OptimConfig | None = None,
        sampling: dict[str, Any] | DictConfig | SamplingConfig | None = None,
        scale: dict[str, Any] | DictConfig | DiffusionScale | None = None,
        max_steps: int = 100_000,
        vae: Literal["none", "pretrained", "tiny"] = "none",
        vae_path: str | None = None,
        vae_z_dim: int = 48,
        text_cache: str | None = None,
        null_prompt: str | None = None,  # None: the Wan negative prompt (when a cache is given)
        text_len: int = 512,
        sample_every_n_val: int = 1,  # full sampling on the first validation batch every n validations (0: never)
    ) -> None:
        super().__init__()
        self.model_cfg = to_dataclass(CameraWanConfig, model, "system.model")
        self.objective = to_dataclass(FlowObjective, objective, "system.objective")
        self.optim_cfg = optim_config(optim, DEFAULT_OPTIM, OPTIM_GROUPS)
        self.sampling = to_dataclass(SamplingConfig, sampling, "system.sampling")
        self.scale = to_dataclass(DiffusionScale, scale, "system.scale")
        if not 0.0 <= self.objective.cfg_dropout < 1.0:
            raise ValueError(f"system.objective.cfg_dropout must be in [0, 1), got {self.objective.cfg_dropout}")
        self.max_steps = max_steps
        self.save_hyperparameters(
            {
                "model": to_plain(self.model_cfg),
                "objective": to_plain(self.objective),
                "optim": to_plain(self.optim_cfg),
                "sampling": to_plain(self.sampling),
                "scale": to_plain(self.scale),
                "max_steps": max_steps,
                "vae": vae,
                "vae_path": vae_path,
                "text_cache": text_cache,
                "null_prompt": null_prompt,
                "text_len": text_len,
            }
        )
        self.model: CameraWan | None = None
        self.text_len = text_len
        self.sample_every_n_val = sample_every_n_val
        self._text_cache, self._null_prompt = text_cache, null_prompt
        # The frozen VAE is kept outside the module tree (not trained, checkpointed or exported).
        wan = frozen_wan_vae(vae, vae_path, vae_z_dim)
        self._vae: list[WanVAE] = [wan] if wan is not None else []
        self._val_count = 0
        self.last_media: dict[str, Tensor] | None = None

    # --- model construction ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build CameraWan (on the training device directly) and, under ModelParallelStrategy, shard it (FSDP2)."""
        if self.model is not None:
            return
        mesh = getattr(self, "_device_mesh", None)
        try:
            mesh = self.device_mesh if mesh is None else mesh
        except (AttributeError, RuntimeError):
            mesh = None
        device = self.device if self.device.type != "meta" else None
        self.model = CameraWan.from_config(self.model_cfg, device=device)
        if self.model.vae_stride != tuple(self.model_cfg.vae_stride):
            raise ValueError("CameraWan vae_stride mismatch")
        if self._vae:
            st, ss = self.model.vae_stride[:2]
            check_latent_interface(self._vae[0], self.model.latent_channels, ss, st, consumer="the transformer")
        sc = self.scale
        if mesh is not None:
            prepare_blocks(
                self.model.transformer.blocks,
                sc.checkpoint_blocks,
                sc.compile_blocks,
                sc.checkpoint_mode,
                sc.compile_inside_checkpoint,
            )
            dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
            shard_wan(
                self.model,
                self.model.transformer.blocks,
                dp,
                getattr(torch, sc.param_dtype),
                getattr(torch, sc.reduce_dtype),
                storage_dtype=getattr(torch, self.model_cfg.dtype),
            )
        elif sc.compile_blocks:
            prepare_blocks(self.model.transformer.blocks, 0, True, "none")
        self._null_embeds = self._load_null_prompt()

    def _load_null_prompt(self) -> Tensor | None:
        if not self._text_cache:
            return None
        from diff4splat.models.text import NEGATIVE_PROMPT, PromptCache

        prompt = NEGATIVE_PROMPT if self._null_prompt is None else self._null_prompt
        return PromptCache(self._text_cache).load(prompt)

    # --- batch -> training tensors ------------------------------------------------------------------------------
    def batch_latents(self, batch: dict[str, Any]) -> Tensor:
        if batch.get("latents") is not None:
            return batch["latents"].float()
        if not self._vae or batch.get("frames") is None:
            raise ValueError("diffusion batch has no 'latents'; online encoding needs 'frames' and system.vae set")
        vae = self._vae[0].to(batch["frames"].device)
        return vae.encode(batch["frames"].float())

    def batch_text(self, batch: dict[str, Any], b: int, device: torch.device) -> Tensor:
        emb = batch.get("prompt_embeds")
        if emb is None:
            return self.null_text(b, device)
        return emb

    def null_text(self, b: int, device: torch.device) -> Tensor:
        d = self.model.text_dim
        out = torch.zeros(b, self.text_len, d, device=device)
        null = getattr(self, "_null_embeds", None)
        if null is not None:
            n = min(null.shape[0], self.text_len)
            out[:, :n] = null[:n].to(device, out.dtype)
        return out

    def plucker(self, batch: dict[str, Any], latents: Tensor) -> Tensor:
        t, h, w = latents.shape[-3:]
        st, sh, sw = self.model.vae_stride
        frames = 1 + st * (t - 1)
        c2w, k = batch["c2w"], batch["fxfycxcy"]
        if c2w.shape[1] != frames:
            raise ValueError(f"diffusion batch: {c2w.shape[1]} cameras for {t} latent frames (expected {frames})")
        return self.model.camera_maps(c2w, k, h * sh, w * sw)

    @torch.no_grad()
    def fun_condition(self, batch: dict[str, Any], x0: Tensor) -> Tensor | None:
        """A ``fun`` CameraWan's condition channels (mask ‖ Wan latents of the masked video: the first frame, then
        mid-grey frames), encoded with the frozen VAE from the batch's ``first_frame`` (or ``frames[:, 0]``); None for
        the other injections."""
        if not self.model.condition_channels:
            return None
        from diff4splat.models.fun_camera import fun_condition, fun_masked_video

        first = batch.get("first_frame")
        if first is None and batch.get("frames") is not None:
            first = batch["frames"][:, 0]
        if first is None or not self._vae:
            raise ValueError(
                "a fun CameraWan is conditioned on the masked video's latents: the batch needs first_frame (or frames) "
                "and system.vae (pretrained or tiny) to encode them"
            )
        frames = 1 + self.model.vae_stride[0] * (x0.shape[2] - 1)
        z = self._vae[0].to(x0.device).encode(fun_masked_video(first.float(), frames))
        return fun_condition(z.to(x0.dtype))

    @torch.no_grad()
    def model_flops(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of ``batch`` for the throughput callback: 3 × CameraWan's forward FLOPs at σ = 0.5
        (camera branch included; online VAE encoding is not counted)."""
        from diff4splat.models.parallel import forward_flops

        x0 = self.batch_latents(batch)
        b = x0.shape[0]
        cams = self.plucker(batch, x0)
        t = self.model.token_timesteps(
            torch.full((b,), 500.0, device=x0.device), x0.shape, self.objective.num_cond_frames
        )
        text = self.batch_text(batch, b, x0.device)
        cond = self.fun_condition(batch, x0)
        return 3 * forward_flops(lambda: self.model(x0, t, text, cams, condition=cond))

    def sample_sigmas(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        o = self.objective
        if o.timestep_sampling == "uniform":
            u = torch.rand(b, device=device, generator=generator)
        else:
            u = torch.sigmoid(o.logit_mean + o.logit_std * torch.randn(b, device=device, generator=generator))
        return flow_sigmas_shift(u, o.shift)

    def flow_loss(
        self,
        batch: dict[str, Any],
        sigmas: Tensor | None = None,
        noise: Tensor | None = None,
        drop: Tensor | None = None,
        plucker: Tensor | None = None,
        latents: Tensor | None = None,
        condition: Tensor | None = None,  # fun: ``fun_condition`` (computed from the batch when None)
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample flow-matching loss [B] (weighted) and its parts; arguments fix the randomness (tests, eval).
        A ``fun`` CameraWan keeps its cameras in the dropped samples (the release's guidance drops only the prompt)."""
        o = self.objective
        x0 = self.batch_latents(batch) if latents is None else latents
        b, device = x0.shape[0], x0.device
        sigmas = self.sample_sigmas(b, device) if sigmas is None else sigmas
        noise = torch.randn_like(x0) if noise is None else noise
        if drop is None:
            drop = (
                torch.rand(b, device=device) < o.cfg_dropout
                if self.training
                else torch.zeros(b, dtype=torch.bool, device=device)
            )
        s = sigmas.view(-1, 1, 1, 1, 1)
        xt = self.model.replace_first_frame((1 - s) * x0 + s * noise, x0, o.num_cond_frames)
        target = noise - x0
        timesteps = sigmas * o.num_train_timesteps
        tt = self.model.token_timesteps(timesteps, xt.shape, o.num_cond_frames)
        text = self.batch_text(batch, b, device)
        has_prompt = batch.get("has_prompt")
        null = self.null_text(b, device).to(text.dtype)
        drop_text = drop if has_prompt is None else (drop | ~has_prompt.to(device).bool())
        text = torch.where(drop_text.view(-1, 1, 1), null, text)
        cams = self.plucker(batch, x0) if plucker is None else plucker
        condition = self.fun_condition(batch, x0) if condition is None else condition
        if condition is None:
            cams = torch.where(drop.view(-1, 1, 1, 1, 1), torch.zeros_like(cams), cams)
        pred = self.model(xt, tt, text, cams, condition=condition)
        loss = masked_flow_loss(pred, target, o.num_cond_frames)
        if o.weighting == "reference":
            loss = loss * gaussian_bump_weight(timesteps, o.num_train_timesteps).to(loss)
        return loss, {"sigma": sigmas, "dropped": drop.float()}

    # --- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, parts = self.flow_loss(batch)
        total = loss.mean()
        check_finite_loss({"loss": total}, self.global_step, batch.get("key"))
        b = loss.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=b)
        self.log("train/sigma", parts["sigma"].mean(), batch_size=b)
        self.log("train/cfg_dropped", parts["dropped"].mean(), batch_size=b)
        return total

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], prefix: str, batch_idx: int) -> None:
        """Loss at fixed σ ∈ {0.25, 0.5, 0.75} with fixed noise, with the true and with shuffled cameras."""
        x0 = self.batch_latents(batch)
        b = x0.shape[0]
        gen = torch.Generator("cpu").manual_seed(1234 + batch_idx)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        cams = self.plucker(batch, x0)
        cond = self.fun_condition(batch, x0)
        keep = torch.zeros(b, dtype=torch.bool, device=x0.device)
        true, shuffled = [], []
        perm = torch.roll(torch.arange(b), 1) if b > 1 else None
        for sigma in (0.25, 0.5, 0.75):
            s = torch.full((b,), sigma, device=x0.device)
            true.append(self.flow_loss(batch, s, noise, keep, cams, x0, cond)[0])
            if perm is not None:
                shuffled.append(self.flow_loss(batch, s, noise, keep, cams[perm], x0, cond)[0])
        loss = torch.stack(true).mean()
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True, batch_size=b)
        if shuffled:
            self.log(f"{prefix}/loss_shuffled_cameras", torch.stack(shuffled).mean(), sync_dist=True, batch_size=b)
        if batch_idx == 0 and self.sample_every_n_val and self._val_count % self.sample_every_n_val == 0:
            self._sample_media(batch, x0, cams, prefix, cond)

    def _sample_media(
        self, batch: dict[str, Any], x0: Tensor, cams: Tensor, prefix: str, cond: Tensor | None = None
    ) -> None:
        from diff4splat.losses.photometric import psnr

        b = x0.shape[0]
        text = self.batch_text(batch, b, x0.device)
        if cond is None:
            latents = sample_latents(
                self.model, x0[:, :, :1], x0.shape[2], text, self.null_text(b, x0.device), cams, self.sampling
            )
        else:  # the Fun release's loop: its condition channels, guidance on the prompt only
            from diff4splat.models.fun_camera import FUN_5B_CAMERA_PRESET, sample_fun_latents

            sc = self.sampling
            noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(sc.seed)).to(x0)
            preset = replace(FUN_5B_CAMERA_PRESET, shift=sc.flow_shift, num_train_timesteps=sc.num_train_timesteps)
            null = self.null_text(b, x0.device)
            latents = sample_fun_latents(
                self.model, noise, cond, cams, text, null, preset, sc.steps, sc.guidance_scale, make_scheduler(sc)
            )
        self.log(f"{prefix}/latent_mse_sampled", (latents[:, :, 1:] - x0[:, :, 1:]).square().mean(), batch_size=b)
        if self._vae:
            vae = self._vae[0].to(x0.device)
            video, target = vae.decode(latents), vae.decode(x0)
            self.log(f"{prefix}/psnr_sampled", psnr(video[:, 1:], target[:, 1:]), batch_size=b)
            self.last_media = {
                "pred": video[0].float().cpu(),
                "target": target[0].float().cpu(),
                "inputs": target[0, :1].float().cpu(),
            }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._val_count += 1

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return configure_optimizer(self.optim_cfg, self.model.parameter_groups(), self.max_steps)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by the global norm ourselves: Lightning refuses to clip for a fused AdamW under mixed precision (it
        assumes a gradient scaler the optimizer unscales). With bf16 there is no scaler, so the gradients are already
        true; FSDP2's DTensor gradients are reduced across shards by ``clip_grad_norm_``. float16 keeps Lightning's
        path (its scaler must unscale first)."""
        if not gradient_clip_val:
            return
        precision = str(getattr(getattr(self, "_trainer", None), "precision", ""))
        fused = any(g.get("fused") for g in optimizer.param_groups)
        if precision.startswith("16") or not fused or (gradient_clip_algorithm or "norm") != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
