"""The training progress bar: Lightning's rich bar, labelled by steps when a run is bounded by steps.

Runs here are bounded by ``trainer.max_steps`` with ``max_epochs: -1`` (streams have no natural epoch), for which
Lightning's bar reads "Epoch 0/-2"; this one reads "Epoch 0 · step 120/1200".
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """`RichProgressBar` whose training description counts optimizer steps when there is no epoch bound."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            description += f" · step {trainer.global_step}/{trainer.max_steps}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None and trainer.max_epochs in (None, -1):
            self.progress.update(
                self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch)
            )
