"""Few-step distillation of a camera-controlled CameraWan teacher: DMD2-style distribution matching (a LightningModule).

A trained teacher (``camctrl_*``) becomes a student that samples in 3 or 4 steps without classifier-free guidance and
keeps the teacher's camera control and TI2V first-frame conditioning (``sampling.mode=distilled``).

Method (DMD2, Yin et al. 2024, as FastVideo distils Wan2.2-TI2V-5B into FastWan2.2-TI2V-5B): three CameraWans,

- ``teacher`` (frozen): the *real* score, with CFG: v_real = v(∅) + g·(v(c) - v(∅)), the unconditional branch the null
  prompt **and zeroed cameras** (what the teacher was trained to drop together), so the student learns the guided
  distribution and needs no CFG;
- ``student`` (the generator): at each of its timesteps t_k (``objective.timesteps``, FastWan's [1000, 757, 522] for
  3 steps) it maps x_{t_k} to x̂₀ = x - σ_k v. Its input at t_k comes from *backward simulation* (DMD2 §4.5,
  FastVideo's ``simulate_generator_forward``): the student's own steps 0..k-1 from pure noise, each x̂₀ re-noised to
  the next timestep, without gradients; only the last step is differentiated. So it trains on exactly what its
  sampler feeds it, and no data latents are needed beyond the first frame and the cameras (data-free);
- ``critic`` (the *fake* score): a flow model trained on the student's samples (flow matching on x̂₀, detached), so it
  tracks the student's current distribution.

The generator loss at a random σ (uniform u, shifted by ``shift``, clamped to [min_sigma, max_sigma]): with
x_σ = (1 - σ)x̂₀ + σε, the DMD gradient (x̂₀^fake - x̂₀^real) / mean|x̂₀ - x̂₀^real| (per sample) is applied through
0.5·‖x̂₀ - sg(x̂₀ - grad)‖². The critic updates every step, the student every ``generator_update_interval`` steps
(DMD2's two time-scale rule; 5 as FastVideo). Losses are over the generated latent frames only (frame 0 is the
clean condition, its tokens at timestep 0, as in every CameraWan forward).

One optimizer, two AdamW groups (``student``, ``critic``): the critic's flow loss and the generator's DMD loss touch
disjoint parameters (the critic and teacher run without gradients inside the DMD loss, and the critic trains on a
detached x̂₀), so one backward of their sum gives each model exactly its own gradient; on critic-only steps the
student has no gradient and AdamW leaves it untouched. Gradients are clipped per model.

Why DMD2 and not consistency distillation (rCM / sCM): DMD2 is the recipe of the released distilled Wan2.2-TI2V-5B
(FastWan, 3 steps, no CFG; Lyra-2 and NeoVerse distil camera-conditioned video models the same way), so our student
shares its timesteps and sampler with the model generation already loads; it needs only forward passes of the
teacher, which FSDP2 and activation checkpointing already serve. Continuous-time consistency (sCM, rCM's backbone)
needs Jacobian-vector products through attention (rCM ships a custom FlashAttention-2 JVP kernel), which diffusers'
Wan attention under FSDP2 does not provide, and rCM's own ablation reports sCM alone loses fine detail and adds
DMD-style score distillation to fix it. The GAN head of DMD2 is not implemented: it needs real video latents at
every step (FastVideo's Wan2.2-5B recipe is data-free and runs without it).

Students and critics are full copies of the teacher (``adapt=full``, FastVideo's full recipe: lr 4e-6, critic 2e-6)
or LoRA adapters on their own frozen copies (``adapt=lora``, FastVideo's LoRA recipe: rank 32, lr 2e-4, critic 1e-5;
the camera branch trains too). The student is exported under ``student.`` with its architecture in the
hyper-parameters (``model``), so ``python -m diff4splat.checkpoints consolidate`` and ``load_camera_wan`` read it,
and ``python -m diff4splat.systems.distill export`` (``diff4splat.systems.distill_export``) writes it as a diffusers
transformer folder plus camera weights, the layout generation loads as ``models.camera_wan.pretrained_path`` /
``camera_weights``.

Memory plan for Wan2.2-TI2V-5B (5.0 B parameters, 80 GB cards; ``trainer=fsdp2``, one FSDP unit per
``WanTransformerBlock``, each model sharded right after it is built so no rank ever holds more than one full copy):

- ``adapt=full``: student and critic each fp32 master weights + fp32 gradients + AdamW moments = 16 B/param = 80 GB,
  the frozen teacher in bf16 = 10 GB: 170 GB of state, sharded over N GPUs: 42.5 GB per GPU at N = 4, 21 GB at
  N = 8, plus the activations of student and critic (selective checkpointing: ~8 GB at batch 1, 2860 tokens, as
  measured with LoRA below) and a few gathered bf16 blocks (0.3 GB each). Needs N >= 4. No EMA shadow (it would add
  20 GB per model).
- ``adapt=lora``: three bf16 copies = 30 GB plus adapters; fits one 80 GB GPU: 37.8 GiB peak on an H100 at batch 1,
  0.92 s per step, 19.8 % MFU (``experiments/benchmarks/results/distill_5b_h100.md``).

Batches: as the diffusion system's (``latents`` or ``frames``, ``c2w``, ``fxfycxcy``, optional ``prompt_embeds``,
``has_prompt``). Only the first latent frame, the shape and the conditions are read for training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig
from torch import Tensor

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.models.camera_wan import CameraWan, CameraWanConfig, flow_sigmas_shift, masked_flow_loss
from diff4splat.models.parallel import prepare_blocks, shard_wan
from diff4splat.sampling import SamplingConfig, renoise, sample_latents
from diff4splat.systems.diffusion import CameraDiffusionSystem, DiffusionScale
from diff4splat.systems.distill_config import DEFAULT_OPTIM, OPTIM_GROUPS, Adaptation, DMDObjective
from diff4splat.systems.distill_export import STUDENT_PREFIX, export_student, main
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config

__all__ = [
    "DEFAULT_OPTIM",
    "OPTIM_GROUPS",
    "Adaptation",
    "DMDObjective",
    "DistillationSystem",
    "export_student",
    "main",
]


class DistillationSystem(CameraDiffusionSystem):
    """DMD2 distillation of a CameraWan teacher (see the module docstring). Reuses the diffusion system's batch
    handling (latents, text, Plücker maps), frozen VAE and null prompt; ``model`` is the teacher's config."""

    export_prefix = STUDENT_PREFIX

    def __init__(
        self,
        model: dict[str, Any] | DictConfig | CameraWanConfig | None = None,
        objective: dict[str, Any] | DictConfig | DMDObjective | None = None,
        adaptation: dict[str, Any] | DictConfig | Adaptation | None = None,
        optim: dict[str, Any] | DictConfig | OptimConfig | None = None,
        scale: dict[str, Any] | DictConfig | DiffusionScale | None = None,
        teacher_sampling: dict[str, Any] | DictConfig | SamplingConfig | None = None,
        max_steps: int = 100_000,
        vae: Literal["none", "pretrained", "tiny"] = "none",
        vae_path: str | None = None,
        vae_z_dim: int = 48,
        text_cache: str | None = None,
        null_prompt: str | None = None,
        text_len: int = 512,
        sample_every_n_val: int = 1,
        seed: int = 0,  # the weights of random-init teachers (every copy is built from this seed)
    ) -> None:
        dmd = to_dataclass(DMDObjective, objective, "system.objective")
        super().__init__(
            model=model,
            objective={"shift": dmd.shift, "num_train_timesteps": dmd.num_train_timesteps, "cfg_dropout": 0.0},
            optim=None,
            sampling=SamplingConfig(
                mode="distilled", steps=dmd.steps, timesteps=dmd.student_timesteps(), renoise=dmd.renoise
            ),
            scale=scale,
            max_steps=max_steps,
            vae=vae,
            vae_path=vae_path,
            vae_z_dim=vae_z_dim,
            text_cache=text_cache,
            null_prompt=null_prompt,
            text_len=text_len,
            sample_every_n_val=sample_every_n_val,
        )
        self.dmd = dmd
        self.adaptation = to_dataclass(Adaptation, adaptation, "system.adaptation")
        self.optim_cfg = optim_config(optim, DEFAULT_OPTIM, OPTIM_GROUPS)
        self.teacher_sampling = to_dataclass(SamplingConfig, teacher_sampling, "system.teacher_sampling")
        d = self.dmd
        if d.generator_update_interval < 1:
            raise ValueError(
                f"system.objective.generator_update_interval must be >= 1, got {d.generator_update_interval}"
            )
        if not 0 <= d.min_sigma < d.max_sigma <= 1:
            raise ValueError(
                f"system.objective: need 0 <= min_sigma < max_sigma <= 1, got {d.min_sigma}, {d.max_sigma}"
            )
        self.timesteps = d.student_timesteps()
        if self.adaptation.adapt not in ("full", "lora"):
            raise ValueError(f"system.adaptation.adapt must be 'full' or 'lora', got {self.adaptation.adapt!r}")
        self.seed = seed
        self.student_cfg = self._student_config()
        self.hparams.clear()
        self.save_hyperparameters(
            {
                "model": to_plain(self.student_cfg),  # what the export holds (checkpoints.load_camera_wan reads it)
                "teacher": to_plain(self.model_cfg),
                "objective": to_plain(self.dmd),
                "adaptation": to_plain(self.adaptation),
                "optim": to_plain(self.optim_cfg),
                "sampling": to_plain(self.sampling),
                "teacher_sampling": to_plain(self.teacher_sampling),
                "scale": to_plain(self.scale),
                "max_steps": max_steps,
                "vae": vae,
                "vae_path": vae_path,
                "text_cache": text_cache,
                "null_prompt": null_prompt,
                "text_len": text_len,
                "seed": seed,
            }
        )
        self.teacher: CameraWan | None = None
        self.student: CameraWan | None = None
        self.critic: CameraWan | None = None

    def _student_config(self) -> CameraWanConfig:
        a = self.adaptation
        lora = {"lora_rank": a.lora_rank, "lora_alpha": a.lora_alpha} if a.adapt == "lora" else {}
        return dataclasses.replace(self.model_cfg, **lora)

    # --- model construction ------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build teacher, student and critic, each sharded (FSDP2, under ModelParallelStrategy) as soon as it is
        built: a rank holds at most one unsharded copy."""
        if self.teacher is not None:
            return
        mesh = getattr(self, "_device_mesh", None)
        try:
            mesh = self.device_mesh if mesh is None else mesh
        except (AttributeError, RuntimeError):
            mesh = None
        device = self.device if self.device.type != "meta" else None
        sc = self.scale
        teacher_state = self._teacher_state()
        built = {}
        for role in ("teacher", "student", "critic"):
            torch.manual_seed(self.seed)  # random-init teachers: every copy the same weights
            m = CameraWan.from_config(self.model_cfg, device=device)
            if teacher_state is not None:
                try:
                    m.load_state_dict(teacher_state, strict=True)
                except RuntimeError as e:
                    first = str(e).strip().splitlines()[1:2] or [str(e)]
                    raise ValueError(
                        f"system.adaptation.teacher_weights={self.adaptation.teacher_weights}: does not fit the "
                        f"teacher's architecture (model.*): {first[0].strip()}"
                    ) from None
            if role == "teacher":
                m.requires_grad_(False)
                if mesh is not None:  # frozen: stored in the compute dtype, no fp32 master copy
                    m.to(getattr(torch, sc.param_dtype))
            elif self.adaptation.adapt == "lora":
                a = self.adaptation
                m.add_lora(a.lora_rank, a.lora_alpha, self.model_cfg.lora_targets)
            m.config = self.student_cfg if role != "teacher" else self.model_cfg
            trainable = role != "teacher"
            if mesh is not None:
                prepare_blocks(
                    m.transformer.blocks,
                    sc.checkpoint_blocks if trainable else 0,
                    sc.compile_blocks,
                    sc.checkpoint_mode if trainable else "none",
                    sc.compile_inside_checkpoint,
                )
                dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
                storage = getattr(torch, sc.param_dtype if role == "teacher" else self.model_cfg.dtype)
                shard_wan(
                    m,
                    m.transformer.blocks,
                    dp,
                    getattr(torch, sc.param_dtype),
                    getattr(torch, sc.reduce_dtype),
                    storage_dtype=storage,
                )
            elif sc.compile_blocks:
                prepare_blocks(m.transformer.blocks, 0, True, "none")
            built[role] = m
        self.teacher, self.student, self.critic = built["teacher"], built["student"], built["critic"]
        self.teacher.eval()
        # the diffusion system's helpers (text width, VAE strides) read ``model``: the teacher, not registered a
        # second time (its weights would be saved twice)
        object.__setattr__(self, "model", self.teacher)
        self._null_embeds = self._load_null_prompt()

    def _teacher_state(self) -> dict[str, Tensor] | None:
        path = self.adaptation.teacher_weights
        if not path:
            return None
        from diff4splat.weights import load_safetensors

        if not Path(path).is_file():
            raise FileNotFoundError(f"system.adaptation.teacher_weights: no file at {path}")
        state, meta = load_safetensors(path, "teacher weights")
        prefix = meta.get("export_prefix", "")
        if prefix and prefix != "model.":
            raise ValueError(f"{path}: a {meta.get('system', '?')} export (prefix {prefix!r}), not a CameraWan one")
        return state

    def train(self, mode: bool = True) -> DistillationSystem:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # --- the three forwards ------------------------------------------------------------------------------------
    def _x0(self, model: CameraWan, x: Tensor, cond: Tensor, t: Tensor, text: Tensor, cams: Tensor | None) -> Tensor:
        """x̂₀ = x - σv of ``model`` at timesteps ``t`` [B] (x's frame 0 replaced by the clean ``cond``)."""
        x = model.replace_first_frame(x, cond, self.dmd.num_cond_frames)
        tt = model.token_timesteps(t, x.shape, self.dmd.num_cond_frames)
        v = model(x, tt, text, cams).float()
        sigma = (t / self.dmd.num_train_timesteps).view(-1, 1, 1, 1, 1)
        return model.replace_first_frame(x.float() - sigma * v, cond, self.dmd.num_cond_frames)

    def student_sample(
        self,
        cond: Tensor,  # [B, C, 1, h, w]
        shape: tuple[int, ...],  # [B, C, T, h, w]
        text: Tensor,
        cams: Tensor,
        x0_data: Tensor | None = None,  # for simulate=False
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,  # the initial noise z (None: drawn)
        k: int | None = None,  # the student step (None: drawn from ``generator``)
    ) -> tuple[Tensor, int]:
        """The student's x̂₀ at a random one of its steps k (returned), its input simulated by its own steps 0..k-1
        (no gradient); gradients flow through the last forward only when grad mode is on."""
        d, dev = self.dmd, cond.device
        if k is None:
            k = int(torch.randint(0, len(self.timesteps), (1,), generator=generator))
        b = shape[0]

        def t_of(i: int) -> Tensor:
            return torch.full((b,), self.timesteps[i], device=dev)

        noise = torch.randn(shape, device=dev, generator=generator) if noise is None else noise
        if d.simulate or x0_data is None:
            x = noise
            with torch.no_grad():
                for i in range(k):
                    x0 = self._x0(self.student, x, cond, t_of(i), text, cams)
                    eps = torch.randn_like(x0) if d.renoise == "fresh" else noise
                    x = renoise(x0, self.timesteps[i + 1] / d.num_train_timesteps, eps)
        else:
            x = renoise(x0_data.float(), self.timesteps[k] / d.num_train_timesteps, noise)
        return self._x0(self.student, x, cond, t_of(k), text, cams), k

    def sample_sigmas(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        d = self.dmd
        u = torch.rand(b, device=device, generator=generator)
        return flow_sigmas_shift(u, d.shift).clamp(d.min_sigma, d.max_sigma)

    def dmd_loss(self, x0: Tensor, cond: Tensor, text: Tensor, null: Tensor, cams: Tensor) -> tuple[Tensor, Tensor]:
        """The DMD generator loss [B] of the student's ``x0`` (with gradient) and the σ it was taken at."""
        d = self.dmd
        b = x0.shape[0]
        sigma = self.sample_sigmas(b, x0.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = renoise(x0.detach(), s, torch.randn_like(x0))
        t = sigma * d.num_train_timesteps
        with torch.no_grad():
            fake = self._x0(self.critic, xt, cond, t, text, cams)
            both = self._x0(
                self.teacher,
                torch.cat([xt, xt]),
                torch.cat([cond, cond]),
                torch.cat([t, t]),
                torch.cat([text, null.to(text.dtype)]),
                torch.cat([cams, torch.zeros_like(cams)]),
            )
            real_c, real_u = both.chunk(2)
            real = real_u + d.real_guidance * (real_c - real_u)
            n = d.num_cond_frames
            norm = (x0.detach() - real)[:, :, n:].abs().flatten(1).mean(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
            grad = torch.nan_to_num((fake - real) / norm)
        target = (x0.detach() - grad).detach()
        loss = 0.5 * masked_flow_loss(x0, target, d.num_cond_frames)
        return loss, sigma

    def critic_loss(self, x0: Tensor, cond: Tensor, text: Tensor, cams: Tensor) -> Tensor:
        """Flow matching [B] of the critic on the student's (detached) samples."""
        d = self.dmd
        b = x0.shape[0]
        sigma = self.sample_sigmas(b, x0.device)
        noise = torch.randn_like(x0)
        xt = self.critic.replace_first_frame(renoise(x0, sigma.view(-1, 1, 1, 1, 1), noise), cond, d.num_cond_frames)
        tt = self.critic.token_timesteps(sigma * d.num_train_timesteps, xt.shape, d.num_cond_frames)
        pred = self.critic(xt, tt, text, cams)
        return masked_flow_loss(pred, noise - x0, d.num_cond_frames)

    def conditions(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Data latents, first-frame condition, text, null text and Plücker maps of ``batch``."""
        x0 = self.batch_latents(batch)
        b = x0.shape[0]
        text = self.batch_text(batch, b, x0.device)
        null = self.null_text(b, x0.device).to(text.dtype)
        has_prompt = batch.get("has_prompt")
        if has_prompt is not None:
            text = torch.where(has_prompt.to(x0.device).bool().view(-1, 1, 1), text, null)
        return x0, x0[:, :, : self.dmd.num_cond_frames], text, null, self.plucker(batch, x0)

    # --- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x0_data, cond, text, null, cams = self.conditions(batch)
        generator_step = self.global_step % self.dmd.generator_update_interval == 0
        noise = torch.randn_like(x0_data, dtype=torch.float32)
        # the same student step on every rank: each simulated step is an FSDP2 forward (collectives must match)
        k = int(
            torch.randint(
                0,
                len(self.timesteps),
                (1,),
                generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.global_step),
            )
        )
        with torch.set_grad_enabled(generator_step):
            x0, k = self.student_sample(cond, x0_data.shape, text, cams, x0_data, noise=noise, k=k)
        b = x0.shape[0]
        total = self.critic_loss(x0.detach(), cond, text, cams).mean()
        parts = {"critic": total.detach()}
        if generator_step:
            dmd, sigma = self.dmd_loss(x0, cond, text, null, cams)
            parts["dmd"] = dmd.mean().detach()
            total = total + dmd.mean()
            if self.dmd.regression_weight > 0:
                target = self.sample_teacher(cond, x0.shape[2], text, null, cams, noise=noise)
                reg = masked_flow_loss(x0, target, self.dmd.num_cond_frames).mean()
                parts["regression"] = reg.detach()
                total = total + self.dmd.regression_weight * reg
                self.log("train/regression", parts["regression"], batch_size=b)
            self.log("train/dmd", parts["dmd"], prog_bar=True, batch_size=b)
            self.log("train/dmd_sigma", sigma.mean(), batch_size=b)
        check_finite_loss({"loss": total, **parts}, self.global_step, batch.get("key"))
        self.log("train/critic", parts["critic"], prog_bar=True, batch_size=b)
        self.log("train/loss", total.detach(), batch_size=b)
        self.log("train/student_step", float(k), batch_size=b)
        return total

    @torch.no_grad()
    def sample_student(self, cond: Tensor, num_latent: int, text: Tensor, cams: Tensor, seed: int = 0) -> Tensor:
        """The student's few-step samples (``sampling.mode=distilled``, the generation sampler)."""
        cfg = dataclasses.replace(self.sampling, seed=seed)
        return sample_latents(self.student, cond, num_latent, text, None, cams, cfg)

    @torch.no_grad()
    def sample_teacher(
        self,
        cond: Tensor,
        num_latent: int,
        text: Tensor,
        null: Tensor,
        cams: Tensor,
        cfg: SamplingConfig | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The teacher's samples (``teacher_sampling``: its many-step guided sampler by default)."""
        return sample_latents(self.teacher, cond, num_latent, text, null, cams, cfg or self.teacher_sampling, noise)

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], prefix: str, batch_idx: int) -> None:
        """The student's 4-step samples against the data latents and, on the first batch every
        ``sample_every_n_val`` validations, against the teacher's guided samples from the same noise."""
        x0, cond, text, null, cams = self.conditions(batch)
        b, n = x0.shape[0], self.dmd.num_cond_frames
        student = self.sample_student(cond, x0.shape[2], text, cams, seed=1234 + batch_idx)
        self.log(
            f"{prefix}/loss", (student - x0)[:, :, n:].square().mean(), prog_bar=True, sync_dist=True, batch_size=b
        )
        if batch_idx == 0 and self.sample_every_n_val and self._val_count % self.sample_every_n_val == 0:
            cfg = dataclasses.replace(self.teacher_sampling, seed=1234 + batch_idx)
            teacher = self.sample_teacher(cond, x0.shape[2], text, null, cams, cfg)
            mse = (student - teacher)[:, :, n:].square().mean()
            self.log(f"{prefix}/latent_mse_to_teacher", mse, sync_dist=True, batch_size=b)

    @torch.no_grad()
    def model_flops(self, batch: dict[str, Any]) -> float:
        """Model FLOPs of one training step on ``batch``, in expectation over the student step k and the generator
        steps, in units of F = one CameraWan forward (all three models cost the same; LoRA adds < 1 %):
        simulation E[k]·F, the student's x̂₀ F, the critic's flow loss F + its backward, and every
        ``generator_update_interval`` steps the DMD forwards (critic F, teacher cond + uncond 2F) and the student's
        backward. A backward is 2F with full copies and F with LoRA (no weight gradients of the frozen base).
        Recomputation under activation checkpointing is not counted."""
        from diff4splat.models.parallel import forward_flops

        x0, cond, text, _, cams = self.conditions(batch)
        b = x0.shape[0]
        t = self.student.token_timesteps(torch.full((b,), 500.0, device=x0.device), x0.shape)
        f = forward_flops(lambda: self.student(x0, t, text, cams))
        n, interval = len(self.timesteps), self.dmd.generator_update_interval
        backward = 2.0 if self.adaptation.adapt == "full" else 1.0
        return f * ((n - 1) / 2 + 1 + (1 + backward) + (3 + backward) / interval)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = {
            "student": [p for p in self.student.parameters() if p.requires_grad],
            "critic": [p for p in self.critic.parameters() if p.requires_grad],
        }
        return configure_optimizer(self.optim_cfg, groups, self.max_steps)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the student's and the critic's gradients by their own global norms (FastVideo clips each model)."""
        if not gradient_clip_val:
            return
        if (gradient_clip_algorithm or "norm") != "norm":
            raise ValueError("distillation clips by norm only (trainer.gradient_clip_algorithm=norm)")
        for model in (self.student, self.critic):
            params = [p for p in model.parameters() if p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


if __name__ == "__main__":
    raise SystemExit(main())
