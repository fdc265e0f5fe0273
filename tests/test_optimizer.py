"""The one optimiser of the training systems (diff4splat.systems.optimizer): per-group learning rates, the warm-up,
cosine and exponential schedules step by step, group-limited decay, and config errors that name the key."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diff4splat.configs import ConfigError
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config

DEFAULTS = OptimConfig(lr=4e-4, lr_mult={"base": 0.1}, warmup_steps=10, min_lr_ratio=0.1)


def _groups() -> dict[str, list[nn.Parameter]]:
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    return {"camera": [nn.Parameter(torch.zeros(3))], "base": [nn.Parameter(torch.zeros(4)), frozen], "empty": []}


def _lrs(opt: dict, step: int) -> list[float]:
    scheduler = opt["lr_scheduler"]["scheduler"]
    return [g["initial_lr"] * f(step) for g, f in zip(opt["optimizer"].param_groups, scheduler.lr_lambdas)]


def test_groups_warm_up_then_cosine_to_the_floor():
    cfg = optim_config({"lr": 1e-3, "betas": [0.9, 0.95]}, DEFAULTS, ["camera", "base", "empty"])
    opt = configure_optimizer(cfg, _groups(), max_steps=110)
    groups = opt["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["camera", "base"]  # the empty group is dropped
    assert [len(g["params"]) for g in groups] == [1, 1]  # and frozen parameters
    assert groups[0]["betas"] == (0.9, 0.95) and groups[0]["weight_decay"] == 0.01
    assert _lrs(opt, 0) == pytest.approx([1e-4, 1e-5])  # 1/10 of the warm-up
    assert _lrs(opt, 9) == pytest.approx([1e-3, 1e-4])
    assert _lrs(opt, 60) == pytest.approx([1e-3 * 0.55, 1e-4 * 0.55])  # half-way down the cosine: (1 + 0.1) / 2
    assert _lrs(opt, 110) == pytest.approx([1e-4, 1e-5]) == _lrs(opt, 500)
    assert opt["lr_scheduler"]["interval"] == "step"
    assert DEFAULTS.lr == 4e-4 and DEFAULTS.betas == [0.9, 0.999]  # the system's defaults are untouched


def test_exponential_decay_of_some_groups_only():
    cfg = OptimConfig(lr=2e-3, lr_mult={"base": 25.0}, decay="exponential", decay_groups=["camera"], min_lr_ratio=0.05)
    opt = configure_optimizer(cfg, _groups(), max_steps=100)
    for step in (0, 1, 50, 100, 200):
        decayed = 2e-3 * 0.05 ** (min(step, 100) / 100)
        assert _lrs(opt, step) == pytest.approx([decayed, 0.05])


def test_config_errors_name_the_key():
    groups = ["camera", "base"]
    with pytest.raises(
        ConfigError, match=r"system.optim.lr_mult: unknown group\(s\) \['bsae'\]; .*\['camera', 'base'\]"
    ):
        optim_config({"lr_mult": {"bsae": 0.1}}, DEFAULTS, groups)
    with pytest.raises(ConfigError, match=r"system.optim.decay_groups: unknown group\(s\) \['x'\]"):
        optim_config({"decay_groups": ["x"]}, DEFAULTS, groups)
    with pytest.raises(ConfigError, match=r"system.optim.lr_mult: expected numbers"):
        optim_config({"lr_mult": {"base": "fast"}}, DEFAULTS, groups)
    with pytest.raises(ConfigError, match=r"system.optim.min_lr_ratio: exponential decay needs a ratio > 0"):
        optim_config({"decay": "exponential", "min_lr_ratio": 0.0}, DEFAULTS, groups)
    with pytest.raises(ConfigError, match=r"system.optim: unknown key\(s\) \['warmup'\]"):
        optim_config({"warmup": 5}, DEFAULTS, groups)
    frozen = {"camera": [nn.Parameter(torch.zeros(1), requires_grad=False)]}
    with pytest.raises(ValueError, match="nothing to train"):
        configure_optimizer(OptimConfig(), frozen, max_steps=10)


def test_non_finite_loss_names_step_parts_and_samples():
    check_finite_loss({"loss": torch.tensor(1.0)}, 3, ["a"])
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss at step 7: \{'loss': nan, 'mse': 0.5\} for samples \['clip/1'\]"
    ):
        check_finite_loss({"loss": torch.tensor(math.nan), "mse": torch.tensor(0.5)}, 7, ["clip/1"])
