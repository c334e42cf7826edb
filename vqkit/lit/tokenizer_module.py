"""TokenizerModule: trains a ``TokenizerModel`` on named, weighted loss terms from config.

    total = sum_{name, weight_at(step) > 0} weight_at(step) * term(batch)  +  quantizer loss

Every term is logged unweighted as ``<stage>/<name>`` (a weight of 0 means computed and logged, not
optimized); the quantizer's own parts as ``<stage>/quantizer/<part>``. Validation and test losses use
the full weights (no warm-up), so ``val/loss`` is comparable across a run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import Metric, MetricCollection

from vqkit.lit.run_config import RunConfigMixin, batch_data
from vqkit.losses.base import LossInputs, LossTerm
from vqkit.metrics.base import ModelOutputMetric
from vqkit.metrics.codebook import CodebookUsage
from vqkit.models.base import ModelOutput, TokenizerModel

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class TokenizerModule(RunConfigMixin, L.LightningModule):
    """Trains any tokenizer model (any modality, any quantizer) on the loss terms of its config.

    Args:
        model: the tokenizer model (``vqkit.models``); it is what the artifact exports.
        optimizer: factory over parameter groups (Hydra ``_partial_``), e.g. AdamW.
        losses: name -> ``LossTerm``; a ``None`` entry is dropped (``module.losses.l2=null``).
        scheduler: optional factory ``(optimizer, total_steps=...) -> LRScheduler``, stepped per optimizer step.
        metrics: name -> metric on the validation and test splits. torchmetrics metrics get
            ``update(reconstruction, data)`` in the data's natural range; ``ModelOutputMetric`` subclasses
            get ``update(model_output, data)``.
        param_groups: overrides of the optimizer settings, a list of ``{match, lr_scale, weight_decay}``:
            the first entry whose regular expression ``match`` is found in a parameter's name (as
            ``model.quantizer.embedding``) sets that parameter's learning-rate multiplier and/or weight decay.
            Parameters no entry matches follow the one rule: weight decay on weight matrices and kernels only,
            none on norms, biases, embeddings, learned positions/tokens (``*pos_embed``, ``*_token(s)``) and the
            quantizer, except the networks a quantizer names in ``network_modules`` (the gated quantizer's
            ``gate``), which follow the rule like the encoder.
        encoder_init: optional callable ``encoder_init(model.encoder) -> report`` run once at the start of a
            fresh ``fit`` (not when resuming from a checkpoint, not in eval/export), e.g. the partial
            ``vqkit.modalities.image_1d.init_encoder_from_timm_vit`` with ``model_name`` and ``weights_path``
            (SoftVQ-VAE starts its encoder from a pretrained ViT). Its report is printed.
    """

    def __init__(
        self,
        model: TokenizerModel,
        optimizer: OptimizerFactory,
        losses: Mapping[str, LossTerm | None] | None = None,
        scheduler: SchedulerFactory | None = None,
        metrics: Mapping[str, Metric] | None = None,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        encoder_init: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder_init = encoder_init
        terms = {name: term for name, term in dict(losses or {}).items() if term is not None}
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise TypeError(f"losses.{name} must be a vqkit.losses.LossTerm, got {type(term).__name__}")
        self.losses = nn.ModuleDict(terms)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_group_rules = [dict(rule) for rule in (param_groups or [])]
        for rule in self.param_group_rules:
            unknown = set(rule) - {"match", "lr_scale", "weight_decay"}
            if "match" not in rule or unknown:
                raise ValueError(f"param_groups entries are {{match, lr_scale, weight_decay}}, got {rule}")
        metrics = dict(metrics or {})
        data_metrics = {k: m for k, m in metrics.items() if not isinstance(m, ModelOutputMetric)}
        output_metrics = {k: m for k, m in metrics.items() if isinstance(m, ModelOutputMetric)}
        self.val_metrics = MetricCollection(data_metrics).clone(prefix="val/")
        self.test_metrics = MetricCollection(data_metrics).clone(prefix="test/")
        self.val_output_metrics = MetricCollection(output_metrics).clone(prefix="val/")
        self.test_output_metrics = MetricCollection(output_metrics).clone(prefix="test/")
        stages = getattr(model.quantizer, "num_stages", None)  # residual quantizers: usage per stage
        self.val_usage = CodebookUsage(model.codebook_size, num_stages=stages)
        self.test_usage = CodebookUsage(model.codebook_size, num_stages=stages)

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint (which then overwrites these weights) and before the
        # optimizer is built; the callbacks' setup (EMA) ran already, but EMA copies the weights on its first update.
        if stage == "fit" and self.encoder_init is not None and self.trainer.ckpt_path is None:
            report = self.encoder_init(self.model.encoder)
            if self.trainer.is_global_zero:
                summary = report.summary() if hasattr(report, "summary") else report
                print(f"encoder initialised from pretrained weights: {summary}")

    # --- data -------------------------------------------------------------------------------------
    def _data(self, batch: Any) -> Tensor:
        """The model's data entry of a batch (used by the sample callbacks too)."""
        return batch_data(batch, self.model.data_key)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Data in its natural range -> reconstruction in the same range (eval mode not forced)."""
        return self.model.reconstruct(x)

    # --- losses -----------------------------------------------------------------------------------
    def compute_losses(self, x: Tensor, step: int | None) -> tuple[Tensor, ModelOutput, dict[str, Tensor]]:
        """``(total, model output, logs)`` for data ``x`` in its natural range.

        Args:
            x: a batch of data in its natural range.
            step: the training step (weights follow their warm-up); None: full weights (validation/test).
        """
        inputs = self.model.normalize(x)
        out = self.model(inputs)
        batch = LossInputs(inputs=inputs, data=x, output=out)
        weighted: list[Tensor] = []
        logs: dict[str, Tensor] = {}
        for name, term in self.losses.items():
            value = term(batch)
            value, parts = value if isinstance(value, tuple) else (value, {})
            logs[name] = value.detach()
            logs.update({f"{name}/{part}": v.detach() for part, v in parts.items()})
            weight = term.weight_at(step)
            if term.warmup_steps and step is not None:
                logs[f"{name}/weight"] = torch.tensor(weight)
            if weight > 0:
                weighted.append(value if weight == 1.0 else weight * value)
        total = out.quantized.loss
        for value in weighted:
            total = value + total
        logs.update({f"quantizer/{k}": v for k, v in out.quantized.losses.items()})
        logs["loss"] = total.detach()
        return total, out, logs

    def check_finite(self, total: Tensor, logs: Mapping[str, Tensor], what: str = "training loss") -> None:
        """Stop with the loss parts named when ``total`` is NaN/Inf."""
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite {what} at step {self.global_step}: {({k: float(v) for k, v in logs.items()})}. "
                "Lower the learning rate, enable gradient clipping (trainer.gradient_clip_val) or check the data."
            )

    def log_train(self, logs: dict[str, Tensor], out: ModelOutput, batch_size: int) -> None:
        self.log("train/loss", logs.pop("loss"), prog_bar=True, batch_size=batch_size)
        logs.update({f"codebook/batch_{k}": v for k, v in out.quantized.metrics.items()})
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch_size)

    # --- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._data(batch)
        total, out, logs = self.compute_losses(x, self.global_step)
        self.check_finite(total, logs)
        self.log_train(logs, out, x.shape[0])
        return total

    def _eval_step(self, batch: Any, stage: str) -> dict[str, Any]:
        """Log the losses, update the metrics; returns the model output and data (for eval callbacks)."""
        x = self._data(batch)
        _, out, logs = self.compute_losses(x, None)
        logs = {k: v for k, v in logs.items() if not k.endswith("/weight")}
        if "tokens_per_position" in out.quantized.metrics:  # variable-length tokens: the realised token rate
            logs["tokens_per_position"] = out.quantized.metrics["tokens_per_position"]
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, sync_dist=True, batch_size=x.shape[0])
        data_metrics = getattr(self, f"{stage}_metrics")
        if len(data_metrics):
            data_metrics.update(self.model.denormalize(out.reconstruction), x.float())
        output_metrics = getattr(self, f"{stage}_output_metrics")
        if len(output_metrics):
            output_metrics.update(out, x)
        getattr(self, f"{stage}_usage").update(out.quantized.indices)
        return {"output": out, "data": x}

    def _eval_epoch_end(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        for name in ("metrics", "output_metrics"):
            collection = getattr(self, f"{stage}_{name}")
            if len(collection):
                values.update(collection.compute())
                collection.reset()
        usage = getattr(self, f"{stage}_usage")
        values.update({f"{stage}/codebook/{k}": v for k, v in usage.compute().items()})
        usage.reset()
        per_stage = {k: v for k, v in values.items() if "/stage" in k}  # residual quantizers: logged, not shown
        # The metrics' compute() already gathered every process, so the values agree across ranks: sync_dist
        # averages equal numbers (exact) and tells Lightning the epoch-level values are global.
        self.log_dict({k: v for k, v in values.items() if k not in per_stage}, prog_bar=stage == "val",
                      sync_dist=True)
        self.log_dict(per_stage, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- optimization -----------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The (name, parameter) pairs the main optimizer trains (subclasses leave out their own networks)."""
        return ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: [decayed, not decayed] by the one rule, then one group per ``param_groups`` entry.

        Each group may carry ``lr_scale`` (applied to its learning rate by ``configure_optimizers``).
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        overridden: list[list[nn.Parameter]] = [[] for _ in self.param_group_rules]
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        # Networks inside the quantizer (the gated quantizer's boundary gate) are trained like the encoder.
        networks = tuple(f"model.quantizer.{m}." for m in getattr(self.model.quantizer, "network_modules", ()))
        for name, p in self.trainable_parameters():
            rule = next((i for i, r in enumerate(self.param_group_rules) if re.search(r["match"], name)), None)
            if rule is not None:
                overridden[rule].append(p)
                continue
            leaf = name.rsplit(".", 1)[-1]
            exempt = (
                p.ndim < 2
                or id(p) in embeddings
                or (name.startswith("model.quantizer.") and not name.startswith(networks))
                or leaf.endswith(("pos_embed", "_token", "_tokens"))
            )
            (no_decay if exempt else decay).append(p)
        groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        for rule, params in zip(self.param_group_rules, overridden, strict=True):
            if params:
                groups.append({"params": params, **{k: v for k, v in rule.items() if k != "match"}})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer(self.optimizer_factory, self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @staticmethod
    def build_optimizer(factory: OptimizerFactory, groups: list[dict[str, Any]]) -> Optimizer:
        """The optimizer over ``groups``, each group's ``lr_scale`` folded into its learning rate."""
        optimizer = factory(groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_scale", 1.0)
            group["initial_lr"] = group["lr"]
        return optimizer
