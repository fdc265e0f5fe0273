"""Learning-rate schedules shared by the training systems."""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float
) -> dict[str, Any]:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``floor`` × lr at ``total_steps`` (constant when
    ``floor`` is 1); the Lightning ``lr_scheduler`` dict, stepped every optimizer step."""
    warmup, total = max(0, warmup_steps), max(1, total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}
