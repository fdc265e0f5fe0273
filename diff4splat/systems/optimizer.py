"""The optimiser of every training system: AdamW over named parameter groups with a per-step learning-rate schedule,
and the guard that stops training on a non-finite loss before it reaches the optimiser.

A system names its groups (reconstruction: ``trunk``, ``heads``; diffusion: ``camera``, ``base``; alignment:
``aligner``; scene fit: ``means``, ``scales``, ``quats``, ``opacities``, ``colors``, ``deformation``) and its default
`OptimConfig`; ``system.optim`` in the config overrides any of its fields. Group ``g`` trains at
``lr × lr_mult[g]`` (1 for a group not in ``lr_mult``), warmed up linearly over ``warmup_steps`` and then decayed to
``min_lr_ratio`` × that value at ``max_steps``: along a cosine, or exponentially (the 3DGS position schedule).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from diff4splat.configs import ConfigError, to_dataclass

Decay = Literal["cosine", "exponential"]


@dataclass
class OptimConfig:
    """AdamW with per-group learning-rate multipliers, linear warm-up, then cosine or exponential decay."""

    lr: float = 1e-3
    lr_mult: dict[str, float] = field(default_factory=dict)  # group name -> multiple of lr (absent: 1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # lr at max_steps as a fraction of the peak; 1.0: constant after the warm-up
    decay: Decay = "cosine"
    decay_groups: list[str] | None = None  # the groups the schedule applies to (None: all; the others keep their lr)
    fused: bool | None = False  # the fused AdamW kernel; None: when the parameters are on a GPU


def optim_config(
    cfg: Mapping[str, Any] | DictConfig | OptimConfig | None,
    defaults: OptimConfig,
    groups: Sequence[str],
    where: str = "system.optim",
) -> OptimConfig:
    """``defaults`` (a system's own) with the fields ``cfg`` sets, names and types checked as `to_dataclass` does and
    the group names against the system's ``groups``."""
    if isinstance(cfg, OptimConfig):
        out = cfg
    elif cfg is None:
        out = copy.deepcopy(defaults)  # the system's defaults stay untouched whatever is done with the result
    else:
        given = to_dataclass(OptimConfig, cfg, where)
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        out = dataclasses.replace(copy.deepcopy(defaults), **{k: getattr(given, k) for k in data if k != "_target_"})
    check_optim_config(out, groups, where)
    return out


def check_optim_config(cfg: OptimConfig, groups: Sequence[str], where: str = "system.optim") -> None:
    """Every group that ``cfg`` names is one of ``groups`` with a numeric multiplier; an exponential decay has a floor
    above 0."""
    bad = {k: v for k, v in cfg.lr_mult.items() if isinstance(v, bool) or not isinstance(v, int | float)}
    if bad:
        raise ConfigError(f"{where}.lr_mult: expected numbers, got {bad}")
    for key, names in (("lr_mult", list(cfg.lr_mult)), ("decay_groups", cfg.decay_groups or [])):
        unknown = [n for n in names if n not in groups]
        if unknown:
            raise ConfigError(f"{where}.{key}: unknown group(s) {unknown}; this system's groups: {list(groups)}")
    if cfg.decay == "exponential" and not cfg.min_lr_ratio > 0:
        raise ConfigError(f"{where}.min_lr_ratio: exponential decay needs a ratio > 0, got {cfg.min_lr_ratio}")


def lr_schedule(warmup_steps: int, total_steps: int, floor: float, decay: Decay = "cosine") -> Callable[[int], float]:
    """The lr factor at an optimizer step: ``(step + 1) / warmup_steps`` during the warm-up, then from 1 down to
    ``floor`` at ``total_steps`` along a cosine or exponentially (constant when ``floor`` is 1)."""
    warmup, total = max(0, warmup_steps), max(1, total_steps)
    decay_steps = max(1, total - warmup)
    gamma = floor ** (1.0 / decay_steps) if decay == "exponential" else 1.0

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "exponential":
            return gamma ** min(step - warmup, decay_steps)
        progress = min(1.0, (step - warmup) / decay_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def _constant(step: int) -> float:
    return 1.0


def configure_optimizer(
    cfg: OptimConfig,
    groups: Mapping[str, Sequence[nn.Parameter]],  # group name -> parameters, in the system's order
    max_steps: int,
    where: str = "system.optim",
) -> dict[str, Any]:
    """The Lightning ``configure_optimizers`` dict of ``cfg`` over ``groups``: one AdamW parameter group per
    non-empty group (frozen parameters left out) and a ``LambdaLR`` stepped every optimizer step."""
    check_optim_config(cfg, list(groups), where)
    param_groups = []
    for name, params in groups.items():
        trainable = [p for p in params if p.requires_grad]
        if trainable:
            param_groups.append({"params": trainable, "lr": cfg.lr * cfg.lr_mult.get(name, 1.0), "name": name})
    if not param_groups:
        raise ValueError(f"{where}: nothing to train (every parameter of {list(groups)} is frozen)")
    fused = cfg.fused if cfg.fused is not None else param_groups[0]["params"][0].is_cuda
    optimizer = torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True if fused else None,  # None, not False: False would also turn off torch's default foreach kernel
    )
    schedule = lr_schedule(cfg.warmup_steps, max_steps, cfg.min_lr_ratio, cfg.decay)
    if cfg.decay_groups is None:
        lambdas: Callable[[int], float] | list[Callable[[int], float]] = schedule
    else:
        lambdas = [schedule if g["name"] in cfg.decay_groups else _constant for g in param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_finite_loss(losses: Mapping[str, Tensor], step: int, samples: Any) -> None:
    """A ``FloatingPointError`` naming the step, every loss part and the batch's sample keys when ``losses["loss"]``
    is not finite."""
    if not torch.isfinite(losses["loss"]):
        parts = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(f"non-finite loss at step {step}: {parts} for samples {samples}")
