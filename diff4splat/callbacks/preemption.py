"""Stopping a run on a signal with a fresh ``last.ckpt``, so that re-running the same command continues it.

- **SIGTERM** (cluster pre-emption, ``scancel``, torchrun or srun forwarding a stop, ``kill``): the run stops after
  the current training step — every rank after the same step: the ranks combine their flags at the end of each step
  (one all-reduce of two numbers), so one rank receiving the signal is enough — writes ``last.ckpt`` (atomically, with its ``.safetensors``) and the process exits with status 143
  (128 + SIGTERM; see ``diff4splat.train``). Nothing is saved mid-step.
- **A requeue signal** (``SIGUSR2``, what submitit and ``#SBATCH --signal=USR2@120`` send before the time limit, and
  ``SIGUSR1``, Lightning's choice): the same, and then rank 0 requeues the SLURM job (``scontrol requeue
  $SLURM_JOB_ID``). The requeued job keeps its job id, hence its run id and run folder, and ``ckpt_path=auto``
  resumes it. ``experiments/slurm/train.sbatch`` (srun → torchrun) instead catches the signal in the batch script,
  forwards SIGTERM and requeues there, because torchrun does not forward user signals to its workers.
- **SIGKILL** cannot be caught: the restart continues from the latest periodic ``last.ckpt``
  (``callbacks.last_checkpoint.every_n_train_steps``).

Lightning's own SIGTERM handler broadcasts from inside the signal handler, which can interleave with the
collectives of the step being computed, and its training loop stops a rank as soon as that rank's flag is set; ours
only sets a flag, and the ranks agree at the end of the step. Lightning's SLURM auto-requeue (a checkpoint written from inside the signal handler, mid-step, to
``hpc_ckpt_N.ckpt``) and submitit's (which exits from inside the handler) are left out: the handlers for the requeue
signals are installed when training is set up, after submitit's and before Lightning's, and Lightning keeps handlers
that are already there.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from diff4splat.callbacks.checkpoint import atomic_save_checkpoint, last_checkpoint_callback

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process stopped by SIGTERM


class Preemption(L.Callback):
    """Save ``last.ckpt`` when a run is stopped by SIGTERM or a requeue signal, and requeue on the latter.

    Args:
        requeue_signals: signal names that mean "save, stop and requeue" (empty: only SIGTERM is handled).
        requeue: run ``scontrol requeue`` on rank 0 after saving, when in a SLURM job.
        save_on_sigterm: write ``last.ckpt`` when stopped by SIGTERM.
    """

    def __init__(
        self,
        requeue_signals: Sequence[str] = ("SIGUSR2", "SIGUSR1"),
        requeue: bool = True,
        save_on_sigterm: bool = True,
    ) -> None:
        bad = [s for s in requeue_signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if bad:
            raise ValueError(f"callbacks.preemption.requeue_signals: no signal named {bad} (expected e.g. SIGUSR2)")
        self.requeue_signals = [getattr(signal, s) for s in requeue_signals]
        self.requeue = requeue
        self.save_on_sigterm = save_on_sigterm
        self.requeue_requested = False
        self.stop_requested = False
        self.saved_path: str | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    # --- signals -------------------------------------------------------------------------------------------------
    def _install(self, signum: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signum not in self._previous:
            self._previous[signum] = signal.getsignal(signum)
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag here; ranks agree on stopping at the end of a step (on_train_batch_end).
        if signum in self.requeue_signals:
            self.requeue_requested = True
        self.stop_requested = True
        log.info("received %s: stopping after this step", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Agree across ranks (a max all-reduce of the flags) and hand the decision to Lightning, whose training loop
        then raises SIGTERMException on every rank after this same step. Lightning's own flag is not set from the
        handler: a rank that saw the signal would stop alone and the others would block in the next collective.

        The flags are only ever raised here, never written back from the copy read before the all-reduce: a signal
        handled while the collective waits (where the ranks spend their waiting, so where torchrun's SIGTERM to all
        of them usually lands) would otherwise be overwritten and lost; it is agreed at the next step instead."""
        stop, requeue = self.stop_requested, self.requeue_requested
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = torch.tensor([int(stop), int(requeue)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            stop, requeue = bool(flags[0]), bool(flags[1])
            self.stop_requested |= stop
            self.requeue_requested |= requeue
        if stop:
            trainer._signal_connector.received_sigterm = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            for signum in self.requeue_signals:
                self._install(signum)  # before Lightning's SLURM handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its SIGTERM handler (in Trainer._run): replace it by the flag-only one.
        self._install(signal.SIGTERM)
        if trainer.global_step > 0 and trainer.is_global_zero:
            log.info("Resumed at global step %d (epoch %d)", trainer.global_step, trainer.current_epoch)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    # --- stopping -----------------------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.save_on_sigterm or self.requeue_requested:
            self.saved_path = self._save_last(trainer)
            log.info("stopped by a signal at global step %d; saved %s", trainer.global_step, self.saved_path)
        if self.requeue_requested and self.requeue and trainer.is_global_zero:
            requeue_slurm_job()
        self.teardown(trainer, pl_module, "fit")

    def _save_last(self, trainer: L.Trainer) -> str | None:
        for cb in trainer.callbacks:  # an EMA swapped in for validation goes out first (EMA.on_exception)
            if hasattr(cb, "_swap_out"):
                cb._swap_out(trainer.lightning_module)
        callback = last_checkpoint_callback(trainer)
        if callback is not None:
            return callback.save_last_now(trainer)
        path = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
        atomic_save_checkpoint(trainer, path)
        return path


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job; False (with a warning) outside SLURM or when it fails."""
    job = slurm_job_id()
    if job is None:
        log.warning("requeue requested but this is not a SLURM job: not requeued")
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("scontrol requeue %s failed: %s", job, e)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True
