"""Lightning checkpoints, written atomically, with the trained model's weights exported next to each as
``.safetensors``.

``step_0001000.ckpt`` gets ``step_0001000.safetensors`` (and ``last.ckpt`` gets ``last.safetensors``): the weights
of the system's exported module (``system.export_prefix``, e.g. ``"model."``, stripped from the keys), taken from the
EMA callback when there is one, with the system class, step and config as safetensors metadata. These files are what
``pipelines`` load: no pickles, no Lightning needed. When Lightning deletes a checkpoint (top-k rotation) its
sidecar goes too. Sharded parameters (FSDP2 DTensors) are gathered for the export, so it is a plain single-device
state dict under every strategy.

Atomic writes: every checkpoint is written under a hidden temporary name in its own folder, flushed to disk (fsync)
and renamed over the old one, so an interrupted write (an exception, a full disk, a SIGKILL) leaves the previous
checkpoint intact and the new one absent, never half of it. Lightning's own writer stages files in the system's temp
folder and moves them, which is a copy (not atomic) when that folder is on another disk, as on clusters. A
distributed checkpoint (a folder) replaces the old folder by two renames (old aside, new in place);
`diff4splat.files.recover_interrupted_replace` puts the old one back if a kill falls between them.

``last.ckpt`` is what a restarted run continues from (``ckpt_path=auto``): the ``last_checkpoint`` callback writes it
every ``every_n_train_steps`` steps, at the end of training, and when the run is stopped by a signal (see
`diff4splat.callbacks.preemption`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from diff4splat.callbacks.ema import EMA, full_tensor
from diff4splat.files import fsync_tree, remove_path, replace_path
from diff4splat.weights import save_safetensors

log = logging.getLogger(__name__)


def sidecar_path(ckpt_path: str | os.PathLike) -> Path:
    """The ``.safetensors`` path exported next to a ``.ckpt``."""
    return Path(ckpt_path).with_suffix(".safetensors")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_save_checkpoint(trainer: L.Trainer, filepath: str | os.PathLike, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint(filepath)`` through a temporary name in the same folder, fsync and rename.

    Call it on every rank (distributed strategies write shards from every rank). On failure the temporary file is
    removed and the previous checkpoint at ``filepath`` is untouched."""
    path = Path(filepath)
    tmp = _temp_name(path)
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_path(tmp)  # the leftover of a write that was killed
    trainer.strategy.barrier("atomic_save_checkpoint:start")
    try:
        trainer.save_checkpoint(tmp, weights_only)
    except BaseException:
        if trainer.is_global_zero:
            remove_path(tmp)
        raise
    if trainer.is_global_zero:
        fsync_tree(tmp)
        replace_path(tmp, path)
    trainer.strategy.barrier("atomic_save_checkpoint:end")


def exportable_state_dict(trainer: L.Trainer, system: L.LightningModule, use_ema: bool = True) -> dict[str, Tensor]:
    """The weights to export: EMA values if an EMA callback runs, restricted to ``system.export_prefix``.

    Sharded tensors are gathered, so every rank must call this; the full tensors are kept on rank 0 only (other
    ranks get an empty dict)."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None) if use_ema else None
    state = ema.ema_state_dict(system) if ema is not None and ema.shadow else system.state_dict()
    prefix = getattr(system, "export_prefix", "")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        full = full_tensor(v.detach())  # a collective for DTensors: every rank, same order
        if trainer.is_global_zero:
            # safetensors refuses shared storage and non-contiguous views: give every tensor its own memory.
            out[k] = full.to("cpu").contiguous().clone()
    return out


def export_metadata(trainer: L.Trainer, system: L.LightningModule, used_ema: bool) -> dict[str, str]:
    hparams: Any = dict(system.hparams) if getattr(system, "hparams", None) else {}
    return {
        "format": "diff4splat-weights",
        "system": f"{type(system).__module__}.{type(system).__qualname__}",
        "export_prefix": getattr(system, "export_prefix", ""),
        "global_step": str(trainer.global_step),
        "ema": str(used_ema).lower(),
        "hparams": json.dumps(hparams, default=str),
    }


class CheckpointWithExport(ModelCheckpoint):
    """``ModelCheckpoint`` that writes atomically, exports the (EMA) model weights as ``.safetensors`` beside each
    checkpoint, and (with ``save_last``) leaves ``last.ckpt`` at the final step when training ends."""

    def __init__(self, *args: Any, export_safetensors: bool = True, export_ema: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.export_safetensors = export_safetensors
        self.export_ema = export_ema

    @property
    def state_key(self) -> str:
        # Two callbacks may differ only in what they save (`last` vs top-k): keep their states apart.
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
            save_last=bool(self.save_last),
            save_top_k=self.save_top_k,
        )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # What `diff4splat.checkpoints consolidate` needs to export a checkpoint without the training code.
        checkpoint["diff4splat"] = {
            "system": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "export_prefix": getattr(pl_module, "export_prefix", ""),
        }

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        atomic_save_checkpoint(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        if self.export_safetensors:
            self._export(trainer, filepath)

    def _export(self, trainer: L.Trainer, filepath: str) -> None:
        system = trainer.lightning_module
        state = exportable_state_dict(trainer, system, self.export_ema)
        if trainer.is_global_zero:
            used_ema = self.export_ema and any(isinstance(c, EMA) and c.shadow for c in trainer.callbacks)
            save_safetensors(state, sidecar_path(filepath), export_metadata(trainer, system, used_ema))
        trainer.strategy.barrier("export_safetensors")

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        sidecar = sidecar_path(filepath)
        if trainer.is_global_zero and sidecar.is_file():
            sidecar.unlink()

    def save_last_now(self, trainer: L.Trainer) -> str | None:
        """Write ``last.ckpt`` for the current step unless this callback already saved this step (all ranks)."""
        if not self.save_last or self._last_global_step_saved == trainer.global_step:
            return self.last_model_path or None
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not trainer.fast_dev_run and trainer.global_step > 0:
            self.save_last_now(trainer)


def last_checkpoint_callback(trainer: L.Trainer) -> CheckpointWithExport | None:
    """The callback that writes ``last.ckpt`` (the first `CheckpointWithExport` with ``save_last``)."""
    return next((c for c in trainer.callbacks if isinstance(c, CheckpointWithExport) and c.save_last), None)


__all__ = [
    "CheckpointWithExport",
    "atomic_save_checkpoint",
    "exportable_state_dict",
    "last_checkpoint_callback",
    "sidecar_path",
]
