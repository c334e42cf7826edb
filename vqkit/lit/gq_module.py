"""GQModule: trains the GQ-VAE text tokenizer (``vqkit.modalities.text_gq``) on byte rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from vqkit.lit.run_config import RunConfigMixin, batch_data
from vqkit.metrics.codebook import CodebookUsage
from vqkit.modalities.text_gq import GatedTextAutoencoder, GQOutput
from vqkit.quantizers.base import Quantizer

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
SPLIT_SUMS = ("bytes", "tokens", "tokens_correct", "segment_bytes_correct")


class GQModule(RunConfigMixin, L.LightningModule):
    """Encoder -> quantizer (every byte) -> gate -> segment decoder, trained with the GQ-VAE losses.

    Logs ``train/loss`` and its parts, and on the validation/test splits (aggregated over the split):
    ``bytes_per_token``, ``rec_token_acc`` (tokens whose code alone decodes to their exact bytes and
    length), ``rec_byte_acc`` (bytes of tokens decoded right) and ``codebook/{usage,perplexity,dead}``
    over the codes of the emitted tokens.

    Args:
        encoder: ``ByteEncoder``.
        decoder: ``SegmentDecoder``.
        quantizer: any vqkit quantizer (``quantizer=vq`` / ``ema_vq``).
        gate: ``BoundaryGate`` (None for the fixed-length baseline).
        optimizer: factory over parameter groups (Hydra ``_partial_``).
        scheduler: optional ``(optimizer, total_steps=...) -> LRScheduler``, stepped per step.
        codebook_lr_scale: learning-rate multiplier of the quantizer's parameters (reference: 10).
        data_key: the batch entry with the byte rows.
        **autoencoder: options of ``GatedTextAutoencoder`` (segmentation, fixed_length, alpha, gamma,
            reservoir_size, reservoir_per_step, revive_every).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        quantizer: Quantizer,
        optimizer: OptimizerFactory,
        gate: nn.Module | None = None,
        scheduler: SchedulerFactory | None = None,
        codebook_lr_scale: float = 1.0,
        data_key: str = "bytes",
        **autoencoder: Any,
    ) -> None:
        super().__init__()
        self.model = GatedTextAutoencoder(encoder, quantizer, decoder, gate, **autoencoder)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.codebook_lr_scale = codebook_lr_scale
        self.data_key = data_key
        self.val_usage = CodebookUsage(quantizer.codebook_size)
        self.test_usage = CodebookUsage(quantizer.codebook_size)
        self.split_sums: dict[str, dict[str, Tensor]] = {}

    @property
    def quantizer(self) -> Quantizer:
        return self.model.quantizer

    # --- config in checkpoints (as TokenizerModule) ------------------------------------------
    def _data(self, batch: Any) -> Tensor:
        """The byte rows (B, T) of a batch (the same hook as TokenizerModule._data, used by sample callbacks)."""
        return batch_data(batch, self.data_key)

    def forward(self, byte_ids: Tensor) -> GQOutput:
        return self.model(byte_ids)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        rows = self._data(batch)
        out = self(rows)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step}: "
                f"{({k: float(v) for k, v in out.losses.items()})}. Lower the learning rate or check the data."
            )
        bpt = out.metrics["bytes"] / out.metrics["tokens"].clamp_min(1)
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=rows.shape[0])
        self.log("train/bytes_per_token", bpt, prog_bar=True, batch_size=rows.shape[0])
        self.log_dict({f"train/{k}": v for k, v in out.losses.items()}, batch_size=rows.shape[0])
        self.log_dict({f"train/codebook/batch_{k}": v for k, v in out.quantizer.metrics.items()},
                      batch_size=rows.shape[0])
        return out.loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        rows = self._data(batch)
        out = self(rows)
        self.log(f"{stage}/loss", out.loss, sync_dist=True, batch_size=rows.shape[0])
        self.log_dict({f"{stage}/{k}": v for k, v in out.losses.items()}, sync_dist=True, batch_size=rows.shape[0])
        sums = self.split_sums.setdefault(stage, {k: torch.zeros((), device=rows.device) for k in SPLIT_SUMS})
        for key in SPLIT_SUMS:
            sums[key] += out.metrics[key]
        token_codes = torch.where(out.boundaries, out.indices, torch.full_like(out.indices, -1))  # codes of tokens only
        getattr(self, f"{stage}_usage").update(token_codes)

    def _eval_epoch_end(self, stage: str) -> None:
        from vqkit.quantizers.distributed import all_reduce_sum

        sums = {k: all_reduce_sum(v.clone()) for k, v in self.split_sums.pop(stage, {}).items()}
        values = {f"{stage}/codebook/{k}": v for k, v in getattr(self, f"{stage}_usage").compute().items()}
        if sums:
            tokens = sums["tokens"].clamp_min(1)
            values[f"{stage}/bytes_per_token"] = sums["bytes"] / tokens
            values[f"{stage}/rec_token_acc"] = sums["tokens_correct"] / tokens
            values[f"{stage}/rec_byte_acc"] = sums["segment_bytes_correct"] / sums["bytes"].clamp_min(1)
        self.log_dict(values, prog_bar=stage == "val")
        getattr(self, f"{stage}_usage").reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- optimization -----------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Decay on weight matrices; none on norms, biases and the codebook; codebook LR scaled."""
        decay, no_decay, codebook = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("quantizer."):
                codebook.append(p)
            elif p.ndim < 2 or name.endswith("embed.weight"):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if codebook:
            groups.append({"params": codebook, "weight_decay": 0.0, "lr_scale": self.codebook_lr_scale})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_scale", 1.0)
            group["initial_lr"] = group["lr"]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
