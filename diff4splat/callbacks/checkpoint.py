"""Lightning checkpoints with the trained model's weights exported next to each as ``.safetensors``.

``step_0001000.ckpt`` gets ``step_0001000.safetensors`` (and ``last.ckpt`` gets ``last.safetensors``): the weights
of the system's exported module (``system.export_prefix``, e.g. ``"model."``, stripped from the keys), taken from the
EMA callback when there is one, with the system class, step and config as safetensors metadata. These files are what
``pipelines`` load: no pickles, no Lightning needed. When Lightning deletes a checkpoint (top-k rotation) its
sidecar goes too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file
from torch import Tensor

from diff4splat.callbacks.ema import EMA

log = logging.getLogger(__name__)


def sidecar_path(ckpt_path: str | os.PathLike) -> Path:
    """The ``.safetensors`` path exported next to a ``.ckpt``."""
    return Path(ckpt_path).with_suffix(".safetensors")


def exportable_state_dict(trainer: L.Trainer, system: L.LightningModule, use_ema: bool = True) -> dict[str, Tensor]:
    """The weights to export: EMA values if an EMA callback runs, restricted to ``system.export_prefix``."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None) if use_ema else None
    state = ema.ema_state_dict(system) if ema is not None and ema.shadow else system.state_dict()
    prefix = getattr(system, "export_prefix", "")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    # safetensors refuses shared storage and non-contiguous views: give every tensor its own memory.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


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
    """``ModelCheckpoint`` that also writes the (EMA) model weights as ``.safetensors`` beside each checkpoint."""

    def __init__(self, *args: Any, export_safetensors: bool = True, export_ema: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.export_safetensors = export_safetensors
        self.export_ema = export_ema

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not self.export_safetensors:
            return
        system = trainer.lightning_module
        state = exportable_state_dict(trainer, system, self.export_ema)
        if trainer.is_global_zero:
            used_ema = self.export_ema and any(isinstance(c, EMA) and c.shadow for c in trainer.callbacks)
            target = sidecar_path(filepath)
            tmp = target.with_name(target.name + ".tmp")
            save_file(state, str(tmp), metadata=export_metadata(trainer, system, used_ema))
            tmp.replace(target)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        sidecar = sidecar_path(filepath)
        if trainer.is_global_zero and sidecar.is_file():
            sidecar.unlink()
