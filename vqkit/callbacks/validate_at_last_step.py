"""Validate at the step training stops, so every run has validation metrics, samples and a monitored checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtLastStep(L.Callback):
    """When ``trainer.max_steps`` is reached, ask Lightning to stop, which validates before it stops.

    Lightning validates at epoch ends (every ``check_val_every_n_epoch`` epochs), so a run whose
    ``max_steps`` ends mid-epoch, or in an epoch that is not validated, would finish without
    ``val/*`` metrics: no sample pictures, and ``ModelCheckpoint(monitor="val/loss")`` without its monitor.
    Setting ``trainer.should_stop`` at the last step makes the training loop run validation, as for early
    stopping; when that epoch is not one Lightning validates, validation is allowed for it. A last step that is
    also a validation point is validated once, as before.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
            return
        trainer.should_stop = True
        every = trainer.check_val_every_n_epoch
        if every is not None and (trainer.current_epoch + 1) % every:
            trainer.check_val_every_n_epoch = None  # this epoch is not a validation epoch: let it validate
