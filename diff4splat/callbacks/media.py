"""Media logging: after each validation, a contact sheet (inputs / targets / renders) as PNG and the renders next to
the targets as an mp4, written under the run folder (``media/``) and sent to W&B when a W&B logger is attached.

A system exposes what to show as ``last_media = {"inputs": [F_in, 3, H, W], "target": [V, 3, H, W],
"pred": [V, 3, H, W]}`` (float in [0, 1], CPU), set during its first validation batch. The files are written by
`diff4splat.media`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from diff4splat.media import contact_sheet, to_uint8, write_image, write_video

log = logging.getLogger(__name__)


class MediaLogger(L.Callback):
    def __init__(self, every_n_validations: int = 1, fps: int = 8) -> None:
        self.every = max(1, every_n_validations)
        self.fps = fps
        self._count = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        media = getattr(pl_module, "last_media", None)
        if trainer.sanity_checking or not media or not trainer.is_global_zero:
            return
        self._count += 1
        if (self._count - 1) % self.every:
            return
        out = Path(trainer.default_root_dir) / "media"
        step = trainer.global_step
        png = write_image(contact_sheet([media["inputs"], media["target"], media["pred"]]), out / f"val_{step:07d}.png")
        side = torch.cat([media["target"], media["pred"]], dim=-1)  # [V, 3, H, 2W]
        mp4 = write_video(to_uint8(side), out / f"val_{step:07d}.mp4", self.fps)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/media", [str(png)], step=step, caption=["inputs / targets / renders"])
                logger.log_video("val/render_video", [str(mp4)], step=step, format=["mp4"])
        pl_module.last_media = None
