"""The configuration of few-step distillation (`diff4splat.systems.distill`): the DMD objective
(``system.objective``), how student and critic adapt the teacher (``system.adaptation``) and the default optimiser of
the two parameter groups (``system.optim``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diff4splat.sampling import DISTILLED_TIMESTEPS
from diff4splat.systems.optimizer import OptimConfig


@dataclass
class DMDObjective:
    steps: int = 4  # student steps
    timesteps: list[float] | None = None  # the student's timesteps (None: sampling.DISTILLED_TIMESTEPS[steps])
    real_guidance: float = 4.0  # teacher CFG v(∅) + g(v(c) - v(∅)); FastVideo's 3.0 is cond + 3(cond - uncond) = 4
    shift: float = 5.0  # σ sampling of the DMD and critic losses: uniform, then shifted
    min_sigma: float = 0.02
    max_sigma: float = 0.98
    generator_update_interval: int = 5  # student steps every n critic steps (DMD2's TTUR)
    simulate: bool = True  # backward simulation (data-free); false: x_{t_k} from the data latents
    renoise: Literal["fresh", "initial"] = "fresh"  # the sampler's re-noising (sampling.renoise): DMD's fresh noise
    regression_weight: float = 0.0  # DMD's paired regression: student(z) vs the teacher's guided sampler from z
    num_train_timesteps: int = 1000
    num_cond_frames: int = 1

    def student_timesteps(self) -> list[float]:
        ts = list(self.timesteps) if self.timesteps else DISTILLED_TIMESTEPS.get(self.steps)
        if not ts or len(ts) != self.steps:
            raise ValueError(
                f"system.objective: {self.steps} student steps need system.objective.timesteps with {self.steps} "
                f"entries (known schedules: steps in {sorted(DISTILLED_TIMESTEPS)})"
            )
        return [float(t) for t in ts]


@dataclass
class Adaptation:
    adapt: Literal["full", "lora"] = "full"  # student and critic: full copies of the teacher, or LoRA on copies
    lora_rank: int = 32
    lora_alpha: float | None = None  # default: rank
    teacher_weights: str | None = None  # a CameraWan training export (.safetensors, the camctrl system's export)


DEFAULT_OPTIM = OptimConfig(
    lr=4e-6,
    lr_mult={"critic": 0.5},
    betas=[0.9, 0.999],
    weight_decay=0.01,
    eps=1e-8,
    warmup_steps=100,
    min_lr_ratio=0.5,
    fused=None,
)
OPTIM_GROUPS = ("student", "critic")
