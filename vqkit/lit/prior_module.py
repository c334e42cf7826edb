"""PriorModule: trains a generative prior (``vqkit.prior``) on token batches of ``TokenDataModule``.

The prior's own ``loss`` of the batch entry it models (``prior.input_key``) is minimised: the cross-entropy of
every id for ``ARPrior`` (``train/loss`` / ``val/loss`` in nats per id, and ``val/bits_per_token``), the
flow-matching velocity error for ``FlowPrior``. Labels are replaced by "no class" with probability
``class_dropout`` during training, so one prior samples both conditionally and with classifier-free guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]


class PriorModule(L.LightningModule):
    """Args:
        prior: an ``ARPrior`` or a ``FlowPrior``.
        optimizer: a partial optimizer (``conf/optimizer``); matrices get weight decay, biases/norms/embeddings
            of positions do not.
        scheduler: a partial ``vqkit.lit.schedules`` schedule, or None.
        class_dropout: probability of training a labelled item as unconditional.
    """

    def __init__(self, prior: nn.Module, optimizer: OptimizerFactory, scheduler: Callable[..., Any] | None = None,
                 class_dropout: float = 0.1) -> None:
        super().__init__()
        if not 0 <= class_dropout <= 1:
            raise ValueError(f"module.class_dropout must be in [0, 1], got {class_dropout}")
        self.prior = prior
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_dropout = class_dropout

    def _labels(self, batch: dict[str, Tensor], drop: bool) -> Tensor | None:
        labels = batch.get("label")
        if labels is None or getattr(self.prior, "num_classes", 0) == 0:
            return None
        if drop and self.class_dropout > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = labels.masked_fill(dropped, self.prior.null_class)
        return labels

    def _inputs(self, batch: dict[str, Tensor]) -> Tensor:
        key = self.prior.input_key
        if key not in batch:
            raise KeyError(f"{type(self.prior).__name__} models {key!r}, the batches hold {sorted(batch)}")
        return batch[key]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        inputs = self._inputs(batch)
        loss = self.prior.loss(inputs, self._labels(batch, drop=True))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"prior loss is {loss.item()} at step {self.global_step}: lower the learning "
                                     "rate (module.optimizer.lr) or use precision=32-true")
        self.log("train/loss", loss, prog_bar=True, batch_size=inputs.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        inputs = self._inputs(batch)
        loss = self.prior.loss(inputs, self._labels(batch, drop=False))
        size = inputs.shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if self.prior.input_key == "ids":
            self.log("val/bits_per_token", loss / math.log(2), batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> Any:
        decay = [p for n, p in self.prior.named_parameters() if p.dim() >= 2 and "positions" not in n]
        rest = [p for n, p in self.prior.named_parameters() if p.dim() < 2 or "positions" in n]
        optimizer = self.optimizer_factory([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
