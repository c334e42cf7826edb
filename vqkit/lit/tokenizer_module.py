"""TokenizerModule: encoder -> quantizer -> decoder, trained on reconstruction + quantizer loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import Metric, MetricCollection

from vqkit.lit.run_config import RunConfigMixin, batch_data
from vqkit.metrics.codebook import CodebookUsage
from vqkit.quantizers.base import Quantizer, QuantizerOutput

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class TokenizerModule(RunConfigMixin, L.LightningModule):
    """Trains any encoder/decoder pair of a modality with any quantizer.

    The encoder maps normalized data to tokens ``(B, N, D)`` plus whatever shape
    information its decoder needs (``encoder(x) -> (tokens, shape)``,
    ``decoder(tokens, shape) -> x_hat``).

    Args:
        encoder: modality encoder.
        decoder: modality decoder.
        quantizer: any backend of the quantizer contract.
        loss: reconstruction loss ``(x_hat, x) -> (total, terms)``.
        optimizer: factory over parameter groups (Hydra ``_partial_``), e.g. AdamW.
        scheduler: optional factory ``(optimizer, total_steps=...) -> LRScheduler``, stepped per optimizer step.
        metrics: reconstruction metrics ``metric(x_hat, x)`` on data in its natural range,
            computed on the validation and test splits.
        data_key: the batch entry holding the data.
        data_mean: subtracted from the data before the encoder.
        data_std: the data is divided by it before the encoder (images: 0.5/0.5 -> [-1, 1]).
        data_range: clamp range of reconstructions in the natural scale, None for no clamp.
        repa: optional representation alignment ``repa(z_q, data) -> loss`` (``vqkit.losses.repa``).
        repa_weight: its weight; 0 = computed and logged only.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        quantizer: Quantizer,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        metrics: Mapping[str, Metric] | None = None,
        data_key: str = "image",
        data_mean: float = 0.5,
        data_std: float = 0.5,
        data_range: tuple[float, float] | None = (0.0, 1.0),
        repa: nn.Module | None = None,
        repa_weight: float = 0.1,
    ) -> None:
        super().__init__()
        latent_dim = getattr(encoder, "latent_dim", quantizer.dim)
        if latent_dim != quantizer.dim:
            raise ValueError(
                f"the encoder's latent_dim ({latent_dim}) differs from the quantizer's dim ({quantizer.dim}); "
                "set quantizer.dim=${model.encoder.latent_dim} (the default) or make them equal."
            )
        self.encoder = encoder
        self.decoder = decoder
        self.quantizer = quantizer
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.data_key = data_key
        self.data_mean = data_mean
        self.data_std = data_std
        self.data_range = tuple(data_range) if data_range is not None else None
        self.repa = repa
        self.repa_weight = repa_weight
        collection = MetricCollection(dict(metrics or {}))
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")
        stages = getattr(quantizer, "num_stages", None)  # residual quantizers: usage per stage
        self.val_usage = CodebookUsage(quantizer.codebook_size, num_stages=stages)
        self.test_usage = CodebookUsage(quantizer.codebook_size, num_stages=stages)

    # --- the model --------------------------------------------------------------------
    def _data(self, batch: Any) -> Tensor:
        return batch_data(batch, self.data_key)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.data_mean) / self.data_std

    def denormalize(self, x: Tensor) -> Tensor:
        x = x.float() * self.data_std + self.data_mean
        return x.clamp(*self.data_range) if self.data_range is not None else x

    def forward(self, x_norm: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Normalized data -> (normalized reconstruction, quantizer output)."""
        tokens, shape = self.encoder(x_norm)
        q = self.quantizer(tokens)
        return self.decoder(q.z_q, shape), q

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Data in its natural range -> reconstruction in the same range (eval mode not forced)."""
        x_hat, _ = self(self.normalize(x))
        return self.denormalize(x_hat)

    # --- steps ------------------------------------------------------------------------
    def _losses(self, x_norm: Tensor) -> tuple[Tensor, Tensor, QuantizerOutput, dict[str, Tensor]]:
        x_hat, q = self(x_norm)
        rec, rec_terms = self.loss(x_hat, x_norm)
        total = rec + q.loss
        logs = {"loss": total.detach(), "rec": rec.detach()}
        logs.update({f"rec/{k}": v for k, v in rec_terms.items()})
        logs.update({f"quantizer/{k}": v for k, v in q.losses.items()})
        logs.update({f"codebook/batch_{k}": v for k, v in q.metrics.items()})
        if self.repa is not None:
            repa = self.repa(q.z_q, x_norm * self.data_std + self.data_mean)
            total = total + self.repa_weight * repa
            logs.update({"repa": repa.detach(), "loss": total.detach()})
        return total, x_hat, q, logs

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._data(batch)
        total, _, _, logs = self._losses(self.normalize(x))
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step}: {({k: float(v) for k, v in logs.items()})}. "
                "Lower the learning rate, enable gradient clipping (trainer.gradient_clip_val) or check the data."
            )
        self.log("train/loss", logs.pop("loss"), prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=x.shape[0])
        return total

    def _eval_step(self, batch: Any, stage: str, metrics: MetricCollection, usage: CodebookUsage) -> None:
        x = self._data(batch)
        _, x_hat, q, logs = self._losses(self.normalize(x))
        keep = ("loss", "rec") + tuple(k for k in logs if k.startswith(("rec/", "quantizer/", "repa", "perceptual")))
        self.log_dict({f"{stage}/{k}": logs[k] for k in keep}, sync_dist=True, batch_size=x.shape[0])
        metrics.update(self.denormalize(x_hat), x.float())
        usage.update(q.indices)

    def _eval_epoch_end(self, stage: str, metrics: MetricCollection, usage: CodebookUsage) -> None:
        values = metrics.compute()
        values.update({f"{stage}/codebook/{k}": v for k, v in usage.compute().items()})
        per_stage = {k: v for k, v in values.items() if "/stage" in k}  # residual quantizers: logged, not shown
        self.log_dict({k: v for k, v in values.items() if k not in per_stage}, prog_bar=stage == "val")
        self.log_dict(per_stage)
        metrics.reset()
        usage.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, self.val_usage)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics, self.val_usage)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics, self.test_usage)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics, self.test_usage)

    # --- optimization -----------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weight decay on weight matrices and kernels only: not on norms, biases, learned
        positional embeddings / tokens (``*pos_embed``, ``*_token(s)``) or the quantizer."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            exempt = p.ndim < 2 or name.startswith("quantizer.") or leaf.endswith(("pos_embed", "_token", "_tokens"))
            (no_decay if exempt else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
