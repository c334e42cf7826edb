"""AdversarialTokenizerModule: TokenizerModule + perceptual loss + PatchGAN discriminator (VQGAN recipe).

Steps. Each training batch makes one generator update and, from ``disc_start`` on, one
discriminator update. Lightning's ``trainer.global_step`` counts the calls to
``LightningOptimizer.step()`` in manual optimization, so stepping both optimizers that
way would advance it by 1 per batch before ``disc_start`` and by 2 after (and
``max_steps`` would stop mid-schedule). This module steps the discriminator's optimizer
through the strategy directly (same precision/strategy handling, no step count), so:

* ``trainer.global_step`` = generator updates = training batches, as with TokenizerModule;
* ``trainer.max_steps`` = training batches; LR schedules, checkpoint names, logging and
  ``disc_start`` all use that count; a resumed run continues from it;
* ``disc_start = N``: batches ``0 .. N-1`` train the generator only (no discriminator
  forward); from batch ``N`` on the generator gets the adversarial term and the
  discriminator is updated. The discriminator scheduler starts at ``disc_start`` and
  spans ``max_steps - disc_start`` steps.

Gradient clipping. Lightning refuses ``Trainer(gradient_clip_val=...)`` with manual
optimization (``MisconfigurationException`` before any module hook runs): run with
``trainer.gradient_clip_val=null``; this module clips both optimizers' gradients by norm
with its own ``gradient_clip_val``.

Distributed. The discriminator update's backward leaves the encoder, quantizer and
decoder without gradients, so DDP needs ``trainer.strategy.find_unused_parameters=true``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim import Optimizer

from vqkit.lit.tokenizer_module import OptimizerFactory, SchedulerFactory, TokenizerModule
from vqkit.losses.adversarial import (
    GAN_LOSSES,
    GanLoss,
    LeCAMRegularizer,
    adaptive_generator_weight,
    discriminator_loss,
    generator_loss,
)
from vqkit.quantizers.base import QuantizerOutput


def _drop_perceptual_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}perceptual.")]:
        del state_dict[key]


def _fill_perceptual_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key, value in module.perceptual.state_dict(prefix=f"{prefix}perceptual.").items():
        state_dict.setdefault(key, value)


class AdversarialTokenizerModule(TokenizerModule):
    """Tokenizer trained on reconstruction + quantizer + perceptual + adversarial losses.

    Generator update (every batch)::

        base  = TokenizerModule's loss (reconstruction + quantizer [+ alignment]) + w_p(step) * perceptual
        total = base + [step >= disc_start] * disc_weight * lambda * g_loss(D(x_hat))
        lambda = ||grad_W base|| / (||grad_W g_loss|| + 1e-4)   (W: decoder's last weight; 1 if not adaptive)

    Only the reconstruction and perceptual terms reach the decoder's output layer, so
    ``grad_W base`` is VQGAN's ``grad_W nll``.

    Discriminator update (from ``disc_start`` on)::

        d_total = d_loss(D(x), D(sg(x_hat))) + lecam_weight * lecam

    ``x_hat`` is the reconstruction of the generator update of the same batch. A weight of
    0 (``disc_weight``, ``perceptual_weight``, ``lecam_weight``) means the term is computed
    and logged but not optimized. The perceptual module is frozen, kept in eval mode and left
    out of state dicts and checkpoints (it is rebuilt from its config; loading keeps its weights).
    Validation/test ``loss`` includes the perceptual term at its full weight (no
    warm-up), so ``val/loss`` is comparable across the run.

    Args:
        discriminator: maps normalized data to logits (e.g. ``NLayerDiscriminator``).
        disc_optimizer: factory of the discriminator's optimizer over its parameters.
        disc_scheduler: optional discriminator LR schedule ``(optimizer, total_steps=...)``,
            over ``max_steps - disc_start`` steps.
        perceptual: optional frozen module ``(x_hat, x) -> per-sample distances`` on the
            normalized data (images in [-1, 1]), e.g. ``vqkit.losses.perceptual.LPIPS``.
        perceptual_weight: weight of the mean perceptual distance.
        perceptual_warmup_steps: the weight ramps linearly from 0 over these many steps.
        disc_weight: weight of the generator's adversarial loss (times the adaptive weight).
        disc_start: first step (training batch) with the adversarial terms.
        gan_loss: ``"hinge"`` or ``"non_saturating"`` (for both networks).
        adaptive_weight: scale the adversarial loss by VQGAN's gradient-norm ratio.
        lecam_weight: weight of the LeCAM regulariser of the discriminator.
        lecam_decay: EMA decay of LeCAM's logit anchors.
        gradient_clip_val: max gradient norm of each optimizer's parameters; None or 0: no clipping.
        last_layer: name of the decoder parameter for the adaptive weight; None: the last
            decoder parameter with 2 or more dimensions (its output convolution).
        **kwargs: TokenizerModule's arguments (encoder, decoder, quantizer, loss, optimizer
            and scheduler of the generator, metrics, data normalization, ...).
    """

    def __init__(
        self,
        discriminator: nn.Module,
        disc_optimizer: OptimizerFactory,
        disc_scheduler: SchedulerFactory | None = None,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        perceptual_warmup_steps: int = 0,
        disc_weight: float = 0.2,
        disc_start: int = 0,
        gan_loss: GanLoss = "hinge",
        adaptive_weight: bool = True,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        gradient_clip_val: float | None = 1.0,
        last_layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if min(perceptual_weight, disc_weight, lecam_weight) < 0:
            raise ValueError(
                f"loss weights must be >= 0, got perceptual_weight={perceptual_weight}, "
                f"disc_weight={disc_weight}, lecam_weight={lecam_weight}"
            )
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown gan_loss {gan_loss!r}; expected one of {GAN_LOSSES}")
        if disc_start < 0 or perceptual_warmup_steps < 0:
            raise ValueError(
                f"disc_start ({disc_start}) and perceptual_warmup_steps ({perceptual_warmup_steps}) must be >= 0"
            )
        self.automatic_optimization = False
        self.discriminator = discriminator
        self.disc_optimizer_factory = disc_optimizer
        self.disc_scheduler_factory = disc_scheduler
        self.perceptual = perceptual
        if perceptual is not None:
            perceptual.requires_grad_(False).eval()
            # Frozen and rebuilt from its own weights file: keep it out of state dicts (a VGG16 LPIPS adds ~60 MB
            # to each checkpoint); loading takes its weights from the live module.
            self.register_state_dict_post_hook(_drop_perceptual_state)
            self.register_load_state_dict_pre_hook(_fill_perceptual_state)
        self.perceptual_weight = perceptual_weight
        self.perceptual_warmup_steps = perceptual_warmup_steps
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.gan_loss = gan_loss
        self.adaptive_weight = adaptive_weight
        self.lecam_weight = lecam_weight
        self.lecam = LeCAMRegularizer(lecam_decay)
        self.gradient_clip_val = gradient_clip_val
        weights = [name for name, p in self.decoder.named_parameters() if p.ndim >= 2]
        if last_layer is None:
            last_layer = weights[-1]
        elif last_layer not in dict(self.decoder.named_parameters()):
            raise ValueError(f"last_layer {last_layer!r} is not a decoder parameter; its weights are {weights}")
        self.last_layer = last_layer

    # --- the model --------------------------------------------------------------------
    def train(self, mode: bool = True) -> AdversarialTokenizerModule:
        """Switch the mode of every submodule except the perceptual network, which stays in eval."""
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def perceptual_weight_at(self, step: int) -> float:
        """The perceptual weight after a linear warm-up of ``perceptual_warmup_steps``."""
        if self.perceptual_warmup_steps == 0:
            return self.perceptual_weight
        return self.perceptual_weight * min(step / self.perceptual_warmup_steps, 1.0)

    def _losses(
        self, x_norm: Tensor, perceptual_weight: float | None = None
    ) -> tuple[Tensor, Tensor, QuantizerOutput, dict[str, Tensor]]:
        """TokenizerModule's losses plus the perceptual term (``perceptual_weight`` None: the full weight)."""
        total, x_hat, q, logs = super()._losses(x_norm)
        if self.perceptual is not None:
            weight = self.perceptual_weight if perceptual_weight is None else perceptual_weight
            distance = self.perceptual(x_hat.float(), x_norm.float()).float().mean()
            logs["perceptual"] = distance.detach()
            if weight > 0:
                total = total + weight * distance
                logs["loss"] = total.detach()
        return total, x_hat, q, logs

    # --- training ---------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # generator updates so far; the generator's step below increments it
        x = self._data(batch)
        x_norm = self.normalize(x)
        opt_g, opt_d = self.optimizers()
        adversarial = step >= self.disc_start

        with self.toggled_optimizer(opt_g):
            w_p = self.perceptual_weight_at(step)
            total, x_hat, _, logs = self._losses(x_norm, w_p)
            if self.perceptual is not None:
                logs["perceptual_weight"] = torch.tensor(w_p)
            if adversarial:
                g_loss = generator_loss(self.discriminator(x_hat), self.gan_loss)
                if self.adaptive_weight:
                    weight = adaptive_generator_weight(total, g_loss, self.decoder.get_parameter(self.last_layer))
                else:
                    weight = torch.ones((), device=g_loss.device)
                if self.disc_weight > 0:
                    total = total + self.disc_weight * weight * g_loss
                logs.update({"g_loss": g_loss.detach(), "adaptive_weight": weight, "loss": total.detach()})
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite generator loss at step {step}: {({k: float(v) for k, v in logs.items()})}. "
                    "Lower the learning rates, the disc_weight, or model.gradient_clip_val, or check the data."
                )
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(total)
            self._clip(opt_g)
            opt_g.step()
        self._step_scheduler(opt_g.optimizer)

        if adversarial:
            logs.update(self._discriminator_step(opt_d.optimizer, x_norm, x_hat.detach(), step))
        self.log("train/loss", logs.pop("loss"), prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=x.shape[0])

    def _discriminator_step(self, optimizer: Optimizer, real: Tensor, fake: Tensor, step: int) -> dict[str, Tensor]:
        """One discriminator update on data and detached reconstructions; returns its logs."""
        with self.toggled_optimizer(optimizer):
            logits_real = self.discriminator(real)
            logits_fake = self.discriminator(fake)
            d_loss = discriminator_loss(logits_real, logits_fake, self.gan_loss)
            d_total = d_loss
            logs = {
                "d_loss": d_loss.detach(),
                "logits_real": logits_real.detach().float().mean(),
                "logits_fake": logits_fake.detach().float().mean(),
            }
            lecam = self.lecam(logits_real, logits_fake)
            logs["lecam"] = lecam.detach()
            if self.lecam_weight > 0:
                d_total = d_total + self.lecam_weight * lecam
            if not torch.isfinite(d_total):
                raise FloatingPointError(
                    f"non-finite discriminator loss at step {step}: {({k: float(v) for k, v in logs.items()})}. "
                    "Lower the discriminator's learning rate (model.disc_optimizer.lr) or enable gradient clipping."
                )
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(d_total)
            self._clip(optimizer)
            # Through the strategy (precision plugin, scaler) but not LightningOptimizer.step(): that would count
            # a second optimizer step per batch in trainer.global_step (see the module docstring).
            self.trainer.strategy.optimizer_step(optimizer, closure=lambda: None)
        self._step_scheduler(optimizer)
        return logs

    def _clip(self, optimizer: Optimizer | LightningOptimizer) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def _step_scheduler(self, optimizer: Optimizer) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                config.scheduler.step()

    # --- optimization -----------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The generator's groups (see TokenizerModule), without the discriminator's parameters."""
        excluded = {id(p) for p in self.discriminator.parameters()}
        return [
            {**group, "params": [p for p in group["params"] if id(p) not in excluded]}
            for group in super().parameter_groups()
        ]

    def configure_optimizers(self) -> Any:
        opt_g = self.optimizer_factory(self.parameter_groups())
        opt_d = self.disc_optimizer_factory(self.discriminator.parameters())
        total = int(self.trainer.estimated_stepping_batches)
        schedulers = []
        if self.scheduler_factory is not None:
            schedulers.append({"scheduler": self.scheduler_factory(opt_g, total_steps=total), "interval": "step"})
        if self.disc_scheduler_factory is not None:
            disc = self.disc_scheduler_factory(opt_d, total_steps=max(total - self.disc_start, 1))
            schedulers.append({"scheduler": disc, "interval": "step", "name": "lr-discriminator"})
        return [opt_g, opt_d], schedulers
