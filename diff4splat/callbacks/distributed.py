"""A check that data-parallel ranks stayed in step: same weights, same number of batches, different data.

At the end of training every rank writes ``<run dir>/ranks/rank<r>.json`` (global step, batches per epoch, a SHA-256
of the parameters' bytes and of the EMA shadow, of the first training batch) and rank 0 compares the gathered
reports: after DDP's all-reduce every rank must hold bitwise the same weights, and with ``with_epoch``-style streams
every rank must have run the same number of batches (otherwise DDP hangs or drifts). A mismatch raises, naming the
ranks. Cheap (one pass over the weights at the end); opt-in with
``+callbacks.rank_check._target_=diff4splat.callbacks.distributed.RankConsistency``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from diff4splat.callbacks.ema import EMA, full_tensor
from diff4splat.files import atomic_write_text

log = logging.getLogger(__name__)


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (sharded tensors gathered: a collective)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = full_tensor(tensors[name].detach()).cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def batch_digest(batch: Any) -> str:
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, Tensor):
            h.update(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                visit(x[k])
        elif isinstance(x, list | tuple):
            for v in x:
                visit(v)
        else:
            h.update(repr(x).encode())

    visit(batch)
    return h.hexdigest()


class RankConsistency(L.Callback):
    def __init__(self, folder: str | None = None, fail: bool = True) -> None:
        self.folder, self.fail = folder, fail
        self.batches: Counter[int] = Counter()
        self.first_batch: str | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches[trainer.current_epoch] += 1
        if self.first_batch is None:
            self.first_batch = batch_digest(batch)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        return {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "batches_per_epoch": {str(k): v for k, v in sorted(self.batches.items())},
            "params": tensors_digest(dict(pl_module.named_parameters())),
            "ema": tensors_digest(ema.shadow) if ema is not None and ema.shadow else None,
            "first_batch": self.first_batch,
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = self.report(trainer, pl_module)
        folder = Path(self.folder or trainer.default_root_dir) / "ranks"
        atomic_write_text(folder / f"rank{trainer.global_rank}.json", json.dumps(report, indent=2, sort_keys=True))
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        reports: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(reports, report)
        problems = []
        for key in ("global_step", "batches_per_epoch", "params", "ema"):
            values = {json.dumps(r[key], sort_keys=True) for r in reports}
            if len(values) > 1:
                problems.append(
                    f"{key} differs across ranks: " + ", ".join(f"rank {r['rank']}: {r[key]}" for r in reports)
                )
        if problems:
            message = "ranks are out of step: " + "; ".join(problems)
            if self.fail:
                raise RuntimeError(message)
            log.error(message)
        elif trainer.is_global_zero:
            log.info(
                "rank check: %d ranks agree on weights, EMA and batch counts %s",
                trainer.world_size,
                report["batches_per_epoch"],
            )
