"""Training throughput and model-FLOP utilisation (MFU), logged as ``perf/*`` every ``window`` optimizer steps.

- ``perf/step_time_s``: wall time per optimizer step (all micro-batches of a gradient-accumulation step);
- ``perf/samples_per_s``: samples per second over all data-parallel ranks;
- ``perf/model_tflops``: model TFLOP/s per device, from the system's ``model_flops(batch)`` called once on the first
  batch's first sample (3 × the forward FLOPs; recomputation by activation checkpointing is not model work and is
  not counted);
- ``perf/mfu``: ``perf/model_tflops`` / ``peak_tflops``, when a peak is given (the project's benchmarks use 798
  TFLOP/s dense bf16 for the H100; set your accelerator's).

The first ``warmup_steps`` optimizer steps (compilation, allocator growth) are left out. Timing needs no per-step
synchronisation: the device is synchronised only at window boundaries, so the wall time of a window is the device's
time for it within one step's queue. Numbers are the local rank's (data-parallel ranks run the same work) and go
straight to the trainer's loggers at the step a window ends, whatever ``log_every_n_steps`` is.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (dicts in insertion order, then sequences)."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else []
    for v in values:
        if torch.is_tensor(v) and v.dim():
            return int(v.shape[0])
    for v in values:
        if isinstance(v, dict | list | tuple) and v:
            return batch_size_of(v)
    raise ValueError(f"throughput: cannot tell the batch size of a {type(batch).__name__} without tensors")


def first_sample(batch: Any) -> Any:
    """The batch cut to its first sample: tensors and lists whose leading size is the batch size (in a dict or a
    tuple/list batch); everything else as is."""
    b = batch_size_of(batch)

    def cut(v: Any) -> Any:
        if torch.is_tensor(v) and v.dim() and v.shape[0] == b or isinstance(v, list) and len(v) == b:
            return v[:1]
        return v

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(cut(v) for v in batch)
    return cut(batch)


class Throughput(L.Callback):
    def __init__(
        self, window: int = 20, warmup_steps: int = 3, peak_tflops: float | None = None, count_flops: bool = True
    ) -> None:
        if window < 1 or warmup_steps < 0:
            raise ValueError(f"throughput: window must be >= 1 and warmup_steps >= 0, got {window}, {warmup_steps}")
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"throughput: peak_tflops must be positive (TFLOP/s per device), got {peak_tflops}")
        self.window, self.warmup_steps, self.peak_tflops = window, warmup_steps, peak_tflops
        self.count_flops = count_flops
        self.flops_per_sample: float | None = None
        self.last: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self._first_step = self._prev_step = self._start_step = self._samples = 0
        self._start: float | None = None
        self._flops_tried = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = self._prev_step = trainer.global_step  # a resumed run warms up again
        self._start = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._flops_tried or not self.count_flops:
            return
        self._flops_tried = True
        fn = getattr(pl_module, "model_flops", None)
        if fn is None:
            log.info("throughput: %s has no model_flops; logging samples/s only", type(pl_module).__name__)
            return
        with trainer.precision_plugin.train_step_context():  # the training step's autocast
            self.flops_per_sample = float(fn(first_sample(batch)))
        log.info("throughput: %.4g TFLOP per training sample (3 x forward)", self.flops_per_sample / 1e12)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # optimizer steps done; it moves at the last micro-batch of a step
        boundary, self._prev_step = step != self._prev_step, step
        if self._start is not None:
            self._samples += batch_size_of(batch)
        if not boundary or step - self._first_step < self.warmup_steps:
            return
        if self._start is None:
            self._sync(pl_module)
            self._start, self._start_step, self._samples = time.perf_counter(), step, 0
            return
        if step - self._start_step < self.window:
            return
        self._sync(pl_module)
        now = time.perf_counter()
        dt, steps = now - self._start, step - self._start_step
        metrics = {"perf/step_time_s": dt / steps, "perf/samples_per_s": self._samples * trainer.world_size / dt}
        if self.flops_per_sample:
            metrics["perf/model_tflops"] = self.flops_per_sample * self._samples / dt / 1e12
            if self.peak_tflops:
                metrics["perf/mfu"] = metrics["perf/model_tflops"] / self.peak_tflops
        self.last = metrics
        self.history.append((step, metrics))
        self._log(trainer, metrics, step)
        self._start, self._start_step, self._samples = now, step, 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    @rank_zero_only
    def _log(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        log.info("throughput at step %d: %s", step, ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in metrics.items()))
